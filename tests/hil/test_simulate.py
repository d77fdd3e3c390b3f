"""The offline digital model end to end: every shipped scenario runs, and matches its golden master.

After an intended change, rewrite ``tests/golden/*.json`` with ``python tests/hil/regen_golden.py``.
"""

from __future__ import annotations

import asyncio
import json
import math
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from hil.cli import main as hil_main
from hil.kpis import compute_kpis
from hil.simulate import ScenarioRun, run_scenario

ROOT = Path(__file__).resolve().parents[2]
SCENARIOS = ROOT / "configs" / "scenarios"
GOLDEN = Path(__file__).resolve().parents[1] / "golden"
#: Shortened runs: samples per scenario (the full runs are reported in the closing notes).
STEPS = {
    "lyophilizer-nominal-recipe": 20,
    "lyophilizer-mpc": 10,
    "bioreactor-mpc": 15,
    "crystallizer-mpc": 8,
    "cstr-mpc": 15,
    "bioreactor-hil": 10,
    "crystallizer-hil": 8,
    "cstr-hil": 10,
    "lyophilizer-hil": 10,
}
RTOL = 1e-3  # relative to each variable's scale: solver round-off may differ across CPUs


def run_short(name: str) -> ScenarioRun:
    return asyncio.run(run_scenario(SCENARIOS / f"{name}.yaml", max_steps=STEPS[name]))


@pytest.fixture(scope="module", params=sorted(STEPS))
def run(request: pytest.FixtureRequest) -> ScenarioRun:
    return run_short(request.param)


def test_every_shipped_scenario_is_covered() -> None:
    assert {p.stem for p in SCENARIOS.glob("*.yaml")} == set(STEPS)


def trajectory(run: ScenarioRun) -> dict[str, list[float]]:
    keys = [k for k in run.rows[0] if k.startswith(("x.", "u."))]
    return {k: [float(r[k]) for r in run.rows] for k in keys}


def test_closed_loop_matches_golden_master(run: ScenarioRun) -> None:
    path = GOLDEN / f"{run.scenario.name}.json"
    got = trajectory(run)
    want = json.loads(path.read_text())
    assert set(got) == set(want)
    for key, values in want.items():
        name = key.split(".", 1)[1]
        scale = run.model.variable(name).scale
        np.testing.assert_allclose(
            got[key], values, rtol=RTOL, atol=RTOL * scale, err_msg=f"{run.scenario.name}: {key}"
        )


def test_setpoints_stay_within_limits_and_move_limits(run: ScenarioRun) -> None:
    for name, lim in run.limits.items():
        u = np.array([r[f"u.{name}"] for r in run.rows])
        assert np.all(u >= lim.lower) and np.all(u <= lim.upper), name
        moves = np.diff(u[:-1])
        assert np.all(moves <= lim.max_up + 1e-12), name
        assert np.all(-moves <= lim.max_down + 1e-12), name


def test_kpis_are_complete_and_sane(run: ScenarioRun) -> None:
    k = compute_kpis(run)
    assert k.steps == STEPS[run.scenario.name] or k.finished_at is not None
    assert set(k.cqas) == set(run.scenario.cqas)
    assert all(math.isfinite(v) for v in k.cqas.values())
    assert k.failed_solves == 0
    if run.controller is not None:
        assert math.isfinite(k.objective)
        assert 0 < k.solve_time_median_ms <= k.solve_time_p95_ms


def test_cli_writes_parquet_plot_and_kpis(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code = hil_main(
        [
            "simulate",
            str(SCENARIOS / "cstr-mpc.yaml"),
            "--max-steps",
            "5",
            "--out",
            str(tmp_path),
            "--quiet",
        ]
    )
    assert code == 0
    out = capsys.readouterr().out
    assert "KPIs: cstr-mpc" in out and "solve_time_median_ms" in out and "cqa.C_b" in out
    table = pq.read_table(tmp_path / "trajectory.parquet")
    assert table.num_rows == 6  # 5 samples and the final state
    for col in ("t", "x.C_b", "y.C_b_meas", "u.F", "u.Q_dot", "xhat.C_b", "solve.status"):
        assert col in table.column_names
    png = (tmp_path / "trajectory.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 10_000
    kpis = json.loads((tmp_path / "kpis.json").read_text())
    assert kpis["steps"] == 5 and kpis["failed_solves"] == 0


def test_cli_progress_bar_runs(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["simulate", str(SCENARIOS / "lyophilizer-nominal-recipe.yaml"), "--max-steps", "3"]
    assert hil_main([*argv, "--out", str(tmp_path), "--no-plot"]) == 0
    out = capsys.readouterr().out
    assert "lyophilizer-nominal-recipe" in out and "t = 0.3 h" in out
    assert not (tmp_path / "trajectory.png").exists()


def test_cli_reports_config_errors_with_location(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: bad\nplant: ../nowhere.yaml\nduration: -1\nrecipe_typo: 1\n")
    assert hil_main(["simulate", str(bad), "--quiet"]) == 2
    out = capsys.readouterr().out
    assert "duration" in out and "recipe_typo" in out and str(bad) in out
