"""Design space (QbD): the shipped file loads; a small real sweep runs in parallel and is judged."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path
from typing import Any

import pytest
import yaml

from controller.errors import ConfigError
from hil.cli import main as hil_main
from hil.design_space import judge, run_design_space
from hil.design_space_exec import point_cqas
from hil.design_space_spec import load_design_space

ROOT = Path(__file__).resolve().parents[2]
DESIGN_SPACES = sorted((ROOT / "configs" / "design-space").glob("*.yaml"))
RECIPE = ROOT / "configs" / "scenarios" / "lyophilizer-nominal-recipe.yaml"
T_CRIT = -5.0
DRYING_LIMIT = 6.0

SMALL: dict[str, Any] = {
    "description": "3 x 2 test grid",
    "scenario": str(RECIPE),
    "duration": 14.0,
    "factors": [
        {
            "name": "Tsh_hold",
            "input": "Tsh",
            "set": "hold",
            "ramp_rate": 60.0,
            "values": [0.0, 40.0, 100.0],
        },
        {"name": "Pch", "input": "Pch", "set": "constant", "values": [0.05, 0.15]},
    ],
    "cqas": {"temperature": "Tbot", "progress": "percent_dried", "complete_at": 100.0},
    "limits": {
        "max_Tbot": {"upper": "T_crit"},
        "drying_time": {"upper": DRYING_LIMIT},
        "final_percent_dried": {"lower": 99.9},
    },
}


def _write(tmp: Path, data: dict[str, Any], name: str = "small.yaml") -> Path:
    path = tmp / name
    path.write_text(yaml.safe_dump(data, sort_keys=False), encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def swept(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """The small grid through the CLI on a spawned process pool of 2."""
    tmp = tmp_path_factory.mktemp("ds")
    path = _write(tmp, SMALL)
    out = tmp / "out"
    code = hil_main(["design-space", str(path), "--workers", "2", "--out", str(out), "--quiet"])
    data = json.loads((out / "design_space.json").read_text(encoding="utf-8"))
    return {"code": code, "out": out, "data": data, "path": path}


@pytest.mark.parametrize("path", DESIGN_SPACES, ids=lambda p: p.stem)
def test_shipped_design_space_loads(path: Path) -> None:
    space = load_design_space(path)
    fx, fy = space.spec.factors
    assert len(space.points) == len(fx.values) * len(fy.values) >= 4
    assert space.limits["max_Tbot"] == (None, T_CRIT)  # T_crit resolved from the plant
    for p in space.points:  # each point is its recipe with the knob values in place
        table = p.scenario["recipe"]["table"]
        assert table[-1]["inputs"][fx.input] == p.values[fx.name]
        assert all(row["inputs"][fy.input] == p.values[fy.name] for row in table)


def test_shipped_lyophilizer_exists() -> None:
    assert ROOT / "configs" / "design-space" / "lyophilizer.yaml" in DESIGN_SPACES


@pytest.mark.slow
def test_sweep_writes_table_and_plot(swept: dict[str, Any]) -> None:
    out: Path = swept["out"]
    data = swept["data"]
    assert swept["code"] == 0  # some point acceptable, none errored
    assert data["n_points"] == 6 and data["n_errors"] == 0
    assert data["executor"] == "process" and data["workers"] == 2
    with (out / "design_space.csv").open(encoding="utf-8") as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) == 6
    assert {"Tsh_hold", "Pch", "max_Tbot", "drying_time", "final_percent_dried"} <= set(rows[0])
    assert {"acceptable", "reasons"} <= set(rows[0])
    png = (out / "design_space.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 10_000
    assert all((out / "points" / p["id"] / "scenario.yaml").is_file() for p in data["points"])
    for p in data["points"]:
        assert p["status"] == "ok" and p["finished"]
        assert p["final_percent_dried"] == pytest.approx(100.0)


@pytest.mark.slow
def test_physics_hotter_shelf_hotter_product_faster_drying(swept: dict[str, Any]) -> None:
    points = swept["data"]["points"]
    for pch in SMALL["factors"][1]["values"]:
        line = sorted((p for p in points if p["Pch"] == pch), key=lambda p: p["Tsh_hold"])
        temps = [p["max_Tbot"] for p in line]
        times = [p["drying_time"] for p in line]
        assert temps == sorted(temps) and len(set(temps)) == len(temps)
        assert times == sorted(times, reverse=True) and len(set(times)) == len(times)
    # a higher chamber pressure conducts more heat: the product runs warmer
    by = {(p["Tsh_hold"], p["Pch"]): p for p in points}
    assert by[(100.0, 0.15)]["max_Tbot"] > by[(100.0, 0.05)]["max_Tbot"]


@pytest.mark.slow
def test_acceptability_matches_limits(swept: dict[str, Any]) -> None:
    data = swept["data"]
    points = data["points"]
    for p in points:
        expected = (
            p["max_Tbot"] <= T_CRIT
            and p["drying_time"] <= DRYING_LIMIT
            and p["final_percent_dried"] >= 99.9
        )
        assert p["acceptable"] is expected, p
        assert bool(p["reasons"]) is not expected
        if p["max_Tbot"] > T_CRIT:
            assert any(r.startswith("max_Tbot") for r in p["reasons"])
        if p["drying_time"] > DRYING_LIMIT:
            assert any(r.startswith("drying_time") for r in p["reasons"])
    flags = {p["acceptable"] for p in points}
    assert flags == {True, False}  # the small grid crosses both limits
    ok = [p for p in points if p["acceptable"]]
    best = min(ok, key=lambda p: p["drying_time"])
    assert data["n_acceptable"] == len(ok)
    assert data["best"]["id"] == best["id"]
    assert data["limits"]["max_Tbot"] == {"lower": None, "upper": T_CRIT}


@pytest.mark.slow
def test_dask_local_cluster_gives_the_same_table(swept: dict[str, Any], tmp_path: Path) -> None:
    space = load_design_space(swept["path"])
    outcome = run_design_space(space, tmp_path / "dask", executor="dask", workers=2, progress=False)
    assert not outcome.errors
    by_id = {p["id"]: p for p in swept["data"]["points"]}
    for row in outcome.rows:
        assert row["max_Tbot"] == pytest.approx(by_id[row["id"]]["max_Tbot"], abs=1e-9)
        assert row["acceptable"] is by_id[row["id"]]["acceptable"]


def test_cqas_of_an_unfinished_run() -> None:
    rows = [
        {"t": 0.0, "y.Tbot": -30.0, "e.percent_dried": 0.0},
        {"t": 1.0, "y.Tbot": -20.0, "e.percent_dried": 40.0},
        {"t": 2.0, "y.Tbot": -25.0, "e.percent_dried": 80.0},
    ]
    cqas = point_cqas(rows, "Tbot", "percent_dried", 100.0)
    # its drying time is not known (it was reported as the run's end, 2.0: a time the batch
    # did not dry in, which passed a drying-time limit)
    assert cqas["max_Tbot"] == -20.0 and math.isnan(cqas["drying_time"])
    assert cqas["run_end"] == 2.0
    assert cqas["final_percent_dried"] == 80.0 and cqas["finished"] is False
    unfinished = "unfinished: drying did not finish by the end of the run (t = 2)"
    ok, why = judge(cqas, {"final_percent_dried": (99.9, None), "max_Tbot": (None, -5.0)})
    assert not ok and why == [unfinished, "final_percent_dried 80 < 99.9"]
    # an unfinished run is not acceptable whatever limits are given (it passed with these)
    ok, why = judge(cqas, {"drying_time": (None, 6.0), "max_Tbot": (None, -5.0)})
    assert not ok and why == [unfinished]
    # a run stopped by a plant fault (meltback) reached a state that is no batch at all
    melted = point_cqas(
        [*rows[:2], {**rows[2], "e.percent_dried": 100.0}], "Tbot", "percent_dried", 100.0
    )
    melted["plant_fault"] = "true plant left its validity domain at t=2 h: Tbot 0.06 > 0"
    ok, why = judge(melted, {"drying_time": (None, 6.0)})
    assert not ok and why == [
        "plant_fault: the true plant left its validity domain at t=2 h: Tbot 0.06 > 0"
    ]
    del melted["plant_fault"]
    assert judge(melted, {"drying_time": (None, 6.0)}) == (True, [])
    ok, why = judge({"status": "error", "error": "boom"}, {})
    assert not ok and "boom" in why[0]
    assert math.isnan(point_cqas([], "Tbot", "percent_dried", 100.0)["max_Tbot"])


@pytest.mark.parametrize(
    ("change", "key", "value"),
    [
        ({"grid": 1}, "grid", "1"),
        ({"duration": -1.0}, "duration", "-1"),
        ({"factors.0.input": "Tshelf"}, "factors.0.input", "Tshelf"),
        ({"factors.1.values": [0.05, 0.9]}, "factors.1.values.1", "0.9"),
        ({"factors.1.values": [0.1, 0.05]}, "factors.1.values", "0.05"),
        ({"factors.1.set": "ramp"}, "factors.1.set", "ramp"),
        ({"factors.0.values": [0.0, 150.0]}, "factors.0.values.1", "150"),
        ({"factors.0.ramp_rate": 0.5}, "factors.0.values", "100"),
        ({"cqas.temperature": "Tprod"}, "cqas.temperature", "Tprod"),
        ({"limits.max_Tprod": {"upper": 0.0}}, "limits.max_Tprod", "max_Tprod"),
        ({"limits.max_Tbot": {"upper": "T_collapse"}}, "limits.max_Tbot.upper", "T_collapse"),
        ({"limits.drying_time": {}}, "limits.drying_time", ""),
        (
            {"scenario": str(ROOT / "configs" / "scenarios" / "lyophilizer-mpc.yaml")},
            "scenario",
            "lyophilizer-mpc",
        ),
    ],
)
def test_config_errors_name_the_key(
    tmp_path: Path, change: dict[str, Any], key: str, value: str
) -> None:
    data = json.loads(json.dumps(SMALL))
    for dotted, new in change.items():
        *parents, last = dotted.split(".")
        node: Any = data
        for part in parents:
            node = node[int(part)] if isinstance(node, list) else node[part]
        node[last] = new
    path = _write(tmp_path, data)
    with pytest.raises(ConfigError) as err:
        load_design_space(path)
    text = str(err.value)
    assert str(path) in text and key in text and value in text, text


def test_missing_scenario_names_the_file(tmp_path: Path) -> None:
    path = _write(tmp_path, {**SMALL, "scenario": "nowhere.yaml"})
    with pytest.raises(ConfigError, match=r"nowhere\.yaml"):
        load_design_space(path)
