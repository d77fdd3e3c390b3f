"""How the probabilistic design space judges a point (no simulation: runs are given).

A point is inside only when its 95 % interval lies at or above the level, not when its
estimate does (19 of 20 draws at 0.95 is undecided); failed and lost runs count as not
acceptable and stay in the denominator; a CQA's worst value is the one nearest its limit; the
contour of ``P >= level`` encloses a point exactly at the level; the uncertainty section is
checked when the file is loaded, and a plant with no range is no silent map of nothing.
"""

from __future__ import annotations

import copy
import dataclasses
import math
import os
from pathlib import Path

import numpy as np
import pytest
import yaml

from controller.errors import ConfigError
from controller.plantfile import build_model
from hil.cli import main as hil_main
from hil.design_space import judge
from hil.design_space_exec import DRAW_FOLDER, clear_stale, lost, run_point
from hil.design_space_mc import (
    ProbabilisticOutcome,
    contour_level,
    min_draws,
    percent,
    point_row,
    share,
    uncertain_parameters,
    verdict,
    wilson,
    worst,
    write_probability_plot,
)
from hil.design_space_spec import Uncertainty, load_design_space, uncertainty_problems

ROOT = Path(__file__).resolve().parents[2]
SHIPPED = ROOT / "configs" / "design-space" / "lyophilizer.yaml"


def _file(tmp_path: Path, **changes: object) -> Path:
    """The shipped design space on a 3 x 2 grid, with ``changes`` to its top-level keys."""
    data = yaml.safe_load(SHIPPED.read_text())
    data["scenario"] = str((SHIPPED.parent / data["scenario"]).resolve())
    data["factors"][0]["values"] = [20.0, 50.0, 100.0]
    data["factors"][1]["values"] = [0.05, 0.1]
    data.update(changes)
    path = tmp_path / "small.yaml"
    path.write_text(yaml.safe_dump(data), encoding="utf-8")
    return path


def test_the_verdict_rests_on_the_interval_not_on_the_estimate() -> None:
    # 19/20 = 0.95 is the level, but its 95 % Wilson interval is 0.764..0.991
    lo, hi = wilson(19, 20)
    assert lo == pytest.approx(0.7639, abs=1e-4) and hi == pytest.approx(0.9911, abs=1e-4)
    assert verdict(19, 20, 0.95) == "undecided"
    assert verdict(20, 20, 0.95) == "undecided"  # 20 draws cannot show 0.95
    assert verdict(15, 20, 0.95) == "outside"  # the whole interval is below
    assert verdict(0, 20, 0.5) == "outside"
    assert min_draws(0.95) == 73
    assert verdict(73, 73, 0.95) == "inside" and verdict(72, 72, 0.95) == "undecided"
    for level in (0.5, 0.8, 0.9, 0.95, 0.99):
        n = min_draws(level)
        assert wilson(n, n)[0] >= level > wilson(n - 1, n - 1)[0]


def _run(pid: str, tbot: float, time_h: float, dried: float) -> dict[str, object]:
    return {"id": pid, "status": "ok", "max_Tbot": tbot, "drying_time": time_h,
            "final_percent_dried": dried, "finished": True, "run_end": time_h}  # fmt: skip


def test_failed_and_lost_runs_count_against_the_point(tmp_path: Path) -> None:
    space = load_design_space(_file(tmp_path))
    p = space.points[0]
    good = [_run(f"d{k}", -30.0 + k, 5.0, 99.95) for k in range(6)]
    failed = {"id": "d6", "status": "error", "error": "ScenarioError: the integrator failed"}
    runs = [*good, failed, lost("d7", RuntimeError("no result"))]
    row = point_row(space, p, runs, 0.95)
    assert (row["draws"], row["acceptable_draws"], row["errors"]) == (8, 6, 2)
    assert row["probability"] == 6 / 8 and row["verdict"] == "outside"
    assert row["first_error"] == "ScenarioError: the integrator failed"
    assert row["failed_limits"] == {"run": 2}
    # the same share with nothing drawn (every run the same run) is no estimate
    exact = point_row(space, p, good, 0.95, exact=True)
    assert (exact["ci_low"], exact["ci_high"], exact["verdict"]) == (1.0, 1.0, "inside")
    # ... and with nothing drawn one failed run decides the point (before: 19 good runs and
    # 1 failed one made 0.95, "inside", though every run is the same run)
    many = [_run(f"d{k}", -30.0, 5.0, 99.95) for k in range(19)]
    exact = point_row(space, p, [*many, failed], 0.95, exact=True)
    assert (exact["probability"], exact["errors"], exact["verdict"]) == (0.95, 1, "outside")


def test_the_worst_value_is_the_one_nearest_its_limit(tmp_path: Path) -> None:
    space = load_design_space(_file(tmp_path))
    runs = [_run(f"d{k}", t, h, d) for k, (t, h, d) in
            enumerate([(-35.0, 4.0, 99.99), (-31.0, 5.5, 99.2), (-33.0, 3.0, 99.95)])]  # fmt: skip
    row = point_row(space, space.points[0], runs, 0.95)
    assert row["worst_max_Tbot"] == -31.0  # an upper limit: the largest
    assert row["worst_drying_time"] == 5.5
    assert row["worst_final_percent_dried"] == 99.2  # a lower limit: the smallest
    assert worst([1.0, 5.0, 9.5], (0.0, 10.0)) == 9.5  # both: the least margin
    assert worst([1.0, 5.0, 9.5], (2.0, 10.0)) == 1.0  # past the lower limit
    assert math.isnan(worst([1.0, 2.0], None)) and math.isnan(worst([], (0.0, 1.0)))


def _outcome(tmp_path: Path, probabilities: list[float], n: int) -> ProbabilisticOutcome:
    space = load_design_space(_file(tmp_path))
    out = ProbabilisticOutcome(space, tmp_path, n, 0.95, "process", 1, [{"KC": 3e-4}] * n)
    for p, prob in zip(space.points, probabilities, strict=True):
        ok = round(prob * n)
        lo, hi = wilson(ok, n)
        out.rows.append({"id": p.id, **p.values, "probability": prob, "ci_low": lo,
                         "ci_high": hi, "verdict": verdict(ok, n, 0.95), "draws": n,
                         "acceptable_draws": ok, "errors": 0})  # fmt: skip
    return out


def test_the_contour_encloses_a_point_exactly_at_the_level(tmp_path: Path) -> None:
    z = np.array([[0.2, 0.5, 0.95], [0.1, 0.4, 0.6]])
    at = contour_level(z, 0.95)
    assert at is not None and at < 0.95 and 0.95 - at < 1e-15
    assert contour_level(z, 0.96) is None  # no point reaches it
    assert contour_level(np.full((2, 3), 1.0), 0.95) is None  # every point does
    outcome = _outcome(tmp_path, [0.2, 0.5, 0.95, 0.1, 0.4, 0.6], 20)
    write_probability_plot(outcome, tmp_path / "at.png")
    assert outcome.contour.startswith("drawn")
    assert [r["verdict"] for r in outcome.rows].count("undecided") == 1
    low = _outcome(tmp_path, [0.2, 0.5, 0.9, 0.1, 0.4, 0.6], 20)
    write_probability_plot(low, tmp_path / "low.png")
    assert low.contour == "none: no point's estimate reaches P = 95 %"


def test_a_plant_without_ranges_is_no_map_of_nothing(tmp_path: Path) -> None:
    space = load_design_space(_file(tmp_path))
    plant = build_model(Path(space.points[0].scenario["plant"]))
    ps = plant.parameter_set
    flat = {
        k: dataclasses.replace(v, lower=-math.inf, upper=math.inf) for k, v in ps.parameters.items()
    }
    bare = type(plant)(dataclasses.replace(ps, parameters=flat))
    (problem,) = uncertainty_problems(Uncertainty(), bare, "ds.yaml", drawing=True)
    assert problem.location == "uncertainty.parameters" and "nothing to draw" in problem.message
    assert uncertainty_problems(Uncertainty(), bare, "ds.yaml") == []  # not drawing: fine
    assert uncertainty_problems(Uncertainty(parameters=()), bare, "ds.yaml", drawing=True) == []
    assert set(uncertain_parameters(space)) == {"R0", "A1", "KC", "KP"}


def test_check_config_refuses_an_unknown_or_rangeless_uncertain_parameter(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = _file(tmp_path, uncertainty={"parameters": ["KCC", "T_crit"]})
    with pytest.raises(ConfigError) as info:
        load_design_space(path)
    where = {p.location: p for p in info.value.problems}
    assert "did you mean 'KC'" in where["uncertainty.parameters.0"].message
    # it offers only what can be drawn: the parameters with a range
    assert "T_crit" not in where["uncertainty.parameters.0"].message
    assert "range: [low, high]" in where["uncertainty.parameters.1"].message
    assert hil_main(["check-config", str(path)]) != 0
    text = capsys.readouterr().out
    assert "uncertainty.parameters.0" in text and "KCC" in text
    # the error as the design-space command prints it: brackets are text, not markup
    assert hil_main(["design-space", str(path), "--monte-carlo", "2", "--quiet"]) == 2
    assert "range: [low, high]" in capsys.readouterr().out


def test_the_cli_refuses_each_bad_flag_on_its_own(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = str(_file(tmp_path))
    assert hil_main(["design-space", path, "--monte-carlo", "0", "--quiet"]) == 2
    text = capsys.readouterr().out
    assert "--monte-carlo 0: allowed: 1 to 100000 draws a point" in text
    assert "--probability" not in text
    assert hil_main(["design-space", path, "--monte-carlo", "100001", "--quiet"]) == 2
    assert "--monte-carlo 100001: allowed: 1 to 100000" in capsys.readouterr().out
    assert hil_main(["design-space", path, "--monte-carlo", "2", "--probability", "0"]) == 2
    text = capsys.readouterr().out
    assert "--probability 0: must lie strictly between 0 and 1" in text
    assert "--monte-carlo" not in text
    assert hil_main(["design-space", path, "--probability", "0.9", "--quiet"]) == 2
    assert "applies to --monte-carlo N runs only" in capsys.readouterr().out


def test_a_run_that_melted_back_is_not_acceptable(tmp_path: Path) -> None:
    """A draw whose true plant melts back (Tbot above 0 degC: the run stops there, its
    plant outside its validity domain) is not acceptable, even against a drying-time limit
    alone: it was an acceptable run that "dried" in 3.4 h."""
    space = load_design_space(_file(tmp_path))
    point = space.points[-1]  # Tsh held at 100 degC, Pch 0.1 Torr
    scenario = copy.deepcopy(point.scenario)
    scenario["true_plant"]["parameters"] = {"A1": 28.0, "KC": 3.1e-4, "KP": 7.0e-4, "R0": 2.0}
    job = {"id": "melt", "scenario": scenario, "cqas": space.spec.cqas.model_dump()}
    result = run_point(job | {"scenario_file": str(tmp_path / "melt" / "scenario.yaml")})
    assert result["status"] == "ok" and "meltback" in result["plant_fault"]
    assert result["finished"] is False and math.isnan(result["drying_time"])
    ok, why = judge(result, {"drying_time": (None, 6.0)})
    assert not ok and why[0].startswith("plant_fault: the true plant left its validity domain")
    row = point_row(space, point, [result, result], 0.5)
    assert row["acceptable_draws"] == 0 and row["failed_limits"]["plant_fault"] == 2


def test_a_limit_named_by_a_drawn_parameter_follows_each_draw(tmp_path: Path) -> None:
    """``max_Tbot: {upper: T_crit}`` with T_crit drawn: each draw is judged against its own
    collapse temperature (it was judged against the plant file's -5 degC: a draw collapsing
    at -9.5 degC with the product at -8.5 degC passed)."""
    space = load_design_space(_file(tmp_path))
    assert space.limits["max_Tbot"] == (None, -5.0)
    assert space.limits_for({"T_crit": -9.5})["max_Tbot"] == (None, -9.5)
    assert space.limits_for({"KC": 3e-4}) == space.limits  # not a limit's parameter
    runs = [_run(f"d{k}", -8.5, 4.0, 100.0) for k in range(3)]
    draws = [{"T_crit": -9.5}, {"T_crit": -5.0}, {"T_crit": -8.0}]
    row = point_row(space, space.points[0], runs, 0.5, draws=draws)
    assert row["acceptable_draws"] == 2 and row["failed_limits"] == {"max_Tbot": 1}
    assert point_row(space, space.points[0], runs, 0.5)["acceptable_draws"] == 3  # nominal


def test_a_design_space_without_limits_is_refused(tmp_path: Path) -> None:
    """With no limit every point was acceptable: "4/4 points meet every limit" of none."""
    for limits in ({}, None):
        path = _file(tmp_path, limits=limits) if limits is not None else _file(tmp_path)
        if limits is None:
            data = yaml.safe_load(path.read_text())
            del data["limits"]
            path.write_text(yaml.safe_dump(data), encoding="utf-8")
        with pytest.raises(ConfigError) as err:
            load_design_space(path)
        (problem,) = err.value.problems
        assert problem.location == "limits", problem  # the key, not the whole file
        assert "required" in problem.message or "no limit" in problem.message


def test_a_share_is_never_rounded_to_all_or_none_and_failed_draws_show() -> None:
    """249 of 250 acceptable draws showed as "1.00" in the table (the same as 250 of 250),
    and a point whose every draw failed as a plain "0.00", like a measured zero."""

    def row(ok: int, n: int, errors: int = 0) -> dict[str, int]:
        return {"acceptable_draws": ok, "draws": n, "errors": errors}

    assert share(row(249, 250)) == ">0.99" and share(row(250, 250)) == "1"
    assert share(row(1, 250)) == "<0.01" and share(row(0, 250)) == "0"
    assert share(row(125, 250)) == "0.50" and share(row(0, 3, errors=3)) == "0!"
    assert share(row(200, 250, errors=1)) == "0.80!"
    assert percent(0.95) == "95 %" and percent(0.9999999) == "99.99999 %"


def test_the_uncertainty_section_refuses_a_boolean_seed_and_a_parameter_named_twice(
    tmp_path: Path,
) -> None:
    """``seed: true`` was read as seed 1 and ``[KC, KC]`` was taken silently."""
    for uncertainty, key, text in (
        (
            {"parameters": ["KC"], "seed": True},
            "uncertainty.seed",
            "true (a YAML true/false) is not a number",
        ),
        ({"parameters": ["KC", "R0", "KC"]}, "uncertainty.parameters", "more than once: KC"),
    ):
        with pytest.raises(ConfigError) as err:
            load_design_space(_file(tmp_path, uncertainty=uncertainty))
        problems = {p.location: p.message for p in err.value.problems}
        assert key in problems and text in problems[key], problems


def test_clear_stale_removes_only_exact_removable_run_folders(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An earlier sweep's run folder is removed only when it is exactly one and removable;
    anything else is left and named, and nothing raises once the sweep's runs are done (a
    PermissionError there lost the finished sweep's tables)."""
    runs = tmp_path / "runs"
    folders = {
        "p00-00-d000": ["scenario.yaml", "run.log"],  # this sweep's: kept
        "p00-00-d005": ["scenario.yaml", "run.log"],  # an earlier sweep's: removed
        "p00-00-d006": ["scenario.yaml"],  # removed too
        "p00-00-d007": [],  # empty: not known to be a run folder
        "p00-00-d008": ["scenario.yaml", ".notes"],  # the user's file in it
        "p00-00-d009": ["scenario.yaml", "run.log"],  # not removable
        "p01-01": ["scenario.yaml"],  # not a Monte Carlo run's name
    }
    for name, files in folders.items():
        (runs / name).mkdir(parents=True)
        for f in files:
            (runs / name / f).write_text("x\n")
    real_access = os.access

    def access(path: object, mode: int) -> bool:  # as a folder another user owns
        return False if str(path).endswith("p00-00-d009") else real_access(path, mode)

    monkeypatch.setattr(os, "access", access)
    jobs = [{"scenario_file": str(runs / "p00-00-d000" / "scenario.yaml")}]
    removed, left = clear_stale(runs, jobs, DRAW_FOLDER)
    assert removed == ["p00-00-d005", "p00-00-d006"]
    assert left == ["p00-00-d007", "p00-00-d008", "p00-00-d009"]
    assert sorted(d.name for d in runs.iterdir()) == sorted(set(folders) - set(removed))
    assert (runs / "p00-00-d009" / "run.log").is_file()  # nothing of it deleted
    assert clear_stale(tmp_path / "none", jobs, DRAW_FOLDER) == ([], [])
