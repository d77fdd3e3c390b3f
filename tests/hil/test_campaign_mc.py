"""Monte Carlo blocks of a campaign: reproducible draws, inside their ranges, recorded with
every case, and a clear error for every bad block (:mod:`hil.campaign.montecarlo`)."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pytest
import yaml

from controller.errors import ConfigError
from hil.campaign.montecarlo import Law, draw
from hil.campaign.runner import run_case
from hil.campaign.spec import Campaign, load_campaign
from hil.design_space_mc import draw as design_space_draw

ROOT = Path(__file__).resolve().parents[2]
MC = ROOT / "configs" / "campaigns" / "lyophilizer-mc.yaml"
SITE = ROOT / "configs" / "sites" / "lyophilizer-modbus.yaml"
PLAUSIBLE = {"R0": (0.5, 3.0), "A1": (8.0, 30.0), "KC": (1.5e-4, 4.0e-4), "KP": (5.0e-4, 1.3e-3)}


def _campaign(tmp_path: Path, block: dict[str, Any], name: str = "mc.yaml") -> Path:
    raw = yaml.safe_load(MC.read_text())
    raw["site"] = str(SITE)
    raw["duration"] = 0.6
    raw["matrix"] = [block]
    if "factors" not in block:  # no factor 'faults' to apply REQ-ROB-02 to
        for c in raw["criteria"]:
            c.pop("applies_to", None)
    path = tmp_path / name
    path.write_text(yaml.safe_dump(raw, sort_keys=False), encoding="utf-8")
    return path


def _problems(tmp_path: Path, block: dict[str, Any]) -> str:
    with pytest.raises(ConfigError) as err:
        load_campaign(_campaign(tmp_path, block))
    return str(err.value)


def test_the_shipped_mc_campaign_draws_1000_cases_over_the_plausible_ranges() -> None:
    campaign = load_campaign(MC)
    assert len(campaign.cases) == 1000
    assert len({c.seed for c in campaign.cases}) == 1000  # a seed of its own per draw
    for case in campaign.cases:
        assert case.draw is not None and set(case.draw["parameters"]) == set(PLAUSIBLE)
        assert case.scenario["true_plant"]["seed"] == case.seed == case.draw["seed"]
        for name, value in case.draw["parameters"].items():
            lo, hi = PLAUSIBLE[name]
            assert lo <= value <= hi
            assert case.scenario["true_plant"]["parameters"][name] == value
        assert not case.scenario.get("faults") and case.controller_loss_at is None
        assert "REQ-ROB-02" in case.criteria and "REQ-SAFE-02" not in case.criteria


def test_the_draws_are_a_latin_hypercube_every_stratum_once() -> None:
    cases = load_campaign(MC).cases
    for name, (lo, hi) in PLAUSIBLE.items():
        values = [c.draw["parameters"][name] for c in cases if c.draw is not None]
        strata = sorted(min(int((v - lo) / (hi - lo) * len(values)), 999) for v in values)
        assert strata == list(range(len(values)))


def test_the_same_seed_gives_the_same_cases_another_seed_others(tmp_path: Path) -> None:
    mc: dict[str, Any] = {"draws": 5, "seed": 3}
    block = {"factors": {"faults": {"none": {}}}, "monte_carlo": mc}
    a = load_campaign(_campaign(tmp_path, block, "a.yaml"))
    b = load_campaign(_campaign(tmp_path, block, "b.yaml"))
    assert [c.digest for c in a.cases] == [c.digest for c in b.cases]
    mc["seed"] = 4
    c = load_campaign(_campaign(tmp_path, block, "c.yaml"))
    assert {x.seed for x in c.cases}.isdisjoint({x.seed for x in a.cases})
    assert [x.draw for x in c.cases] != [x.draw for x in a.cases]


def test_explicit_laws_stay_inside_their_ranges(tmp_path: Path) -> None:
    params = {
        "R0": [1.0, 2.0],
        "KC": "plausible",
        "KP": {"distribution": "normal", "low": 6.0e-4, "high": 1.2e-3, "std": 2.0e-4},
        "A1": {"distribution": "triangular", "low": 10.0, "high": 20.0, "mode": 12.0},
    }
    block = {"monte_carlo": {"draws": 200, "seed": 1, "parameters": params}}
    cases = load_campaign(_campaign(tmp_path, block)).cases
    assert [c.id for c in cases[:2]] == ["c000-mc-d000", "c001-mc-d001"]
    bounds = {"R0": (1.0, 2.0), "KC": PLAUSIBLE["KC"], "KP": (6.0e-4, 1.2e-3), "A1": (10.0, 20.0)}
    for name, (lo, hi) in bounds.items():
        values = [c.draw["parameters"][name] for c in cases if c.draw is not None]
        assert all(lo <= v <= hi for v in values), name
    a1 = sorted(c.draw["parameters"]["A1"] for c in cases if c.draw is not None)
    assert 12.5 < a1[100] < 14.5  # the triangle's median: 20 - sqrt(50) = 12.93, its mode 12


def test_the_design_space_draws_are_unchanged_by_the_shared_code() -> None:
    ranges = {"R0": (0.5, 1.4, 3.0), "KC": (1.5e-4, 2.75e-4, 4.0e-4)}
    for distribution in ("uniform", "triangular"):
        laws = {n: Law(distribution, lo, hi, mode) for n, (lo, mode, hi) in ranges.items()}
        assert design_space_draw(ranges, 7, distribution, 11) == draw(laws, 7, 11)
        q = 0.3
        lo, mode, hi = ranges["R0"]
        expected = (
            lo + math.sqrt(q * (hi - lo) * (mode - lo))
            if distribution == "triangular"
            else lo + q * (hi - lo)
        )
        assert laws["R0"].quantile(q) == expected


@pytest.mark.parametrize(
    ("block", "needles"),
    [
        (
            {"monte_carlo": {"draws": 3, "parameters": {"R00": [0.5, 1.0]}}},
            ["matrix.0.monte_carlo.parameters.R00", "unknown parameter", "R0"],
        ),
        (
            {"monte_carlo": {"draws": 3, "parameters": {"R0": [0.1, 1.0]}}},
            ["matrix.0.monte_carlo.parameters.R0", "leaves the plausible range", "[0.5, 3]"],
        ),
        (
            {"monte_carlo": {"draws": 3, "parameters": {"T_crit": "plausible"}}},
            ["monte_carlo.parameters.T_crit", "no plausible range"],
        ),
        (
            {"monte_carlo": {"draws": 3, "parameters": {"R0": [2.0, 1.0]}}},
            ["matrix.0.monte_carlo", "low < high", "[2.0, 1.0]"],
        ),
        ({"monte_carlo": {"draws": 0}}, ["matrix.0.monte_carlo.draws", "greater than or equal"]),
        (
            {"monte_carlo": {"draws": 3, "parameters": "all"}},
            ["matrix.0.monte_carlo.parameters", "plausible"],
        ),
        (
            {
                "monte_carlo": {
                    "draws": 3,
                    "parameters": {"KP": {"distribution": "normal", "low": 6e-4, "high": 1e-3}},
                }
            },
            ["monte_carlo.parameters.KP", "std"],
        ),
        (
            {"monte_carlo": {"draws": 3}, "seeds": [1, 2]},
            ["matrix.0", "drop 'seeds'"],
        ),
        (
            {
                "factors": {"mismatch": {"hi": {"parameters": {"R0": 3.0}}}},
                "monte_carlo": {"draws": 3},
            },
            ["matrix.0.factors.mismatch.hi", "'R0' is drawn by monte_carlo"],
        ),
        ({"description": "no factors"}, ["matrix.0", "'factors' or 'monte_carlo'"]),
    ],
    ids=lambda v: str(v)[:40],
)
def test_a_bad_monte_carlo_block_names_the_key_the_value_and_what_is_allowed(
    tmp_path: Path, block: dict[str, Any], needles: list[str]
) -> None:
    text = _problems(tmp_path, block)
    for needle in needles:
        assert needle in text, (needle, text)


def test_a_case_records_its_draw_in_spec_and_result(tmp_path: Path) -> None:
    campaign: Campaign = load_campaign(
        _campaign(tmp_path, {"monte_carlo": {"draws": 2, "seed": 9}})
    )
    case = campaign.cases[1]
    job = {
        "case": case.to_json(),
        "criteria": [c.model_dump(mode="json") for c in campaign.spec.criteria],
        "out": str(tmp_path / "out"),
        "site": str(campaign.site_path),
        "controller": None,
        "mode": "fast",
        "rate": 1000.0,
    }
    result = run_case(job)
    folder = tmp_path / "out" / "cases" / case.id
    spec = json.loads((folder / "spec.json").read_text())
    on_disk = json.loads((folder / "result.json").read_text())
    assert spec["draw"] == on_disk["draw"] == result["draw"] == case.draw
    assert case.draw is not None and spec["seed"] == case.draw["seed"]
    assert spec["digest"] == case.digest
    assert result["status"] in ("passed", "failed"), result.get("error")
    for evidence in ("audit.db", "trajectory.parquet", "cycles.parquet", "run.log"):
        assert (folder / evidence).is_file(), evidence
