"""The probabilistic design space (issue 19): N draws of the uncertain parameters per point.

Checked on the freeze dryer: with no uncertain parameter the probability map is the
deterministic design space (every probability 0 or 1, matching the grid's verdicts); with the
plausible ranges drawn, points near the edge of the deterministic region lose probability
while points deep inside keep it; the CLI prints the map and refuses bad arguments.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
import yaml

from hil.cli import main as hil_main
from hil.design_space import run_design_space
from hil.design_space_mc import draw, run_probabilistic, uncertain_parameters, wilson
from hil.design_space_spec import load_design_space

ROOT = Path(__file__).resolve().parents[2]
SHIPPED = ROOT / "configs" / "design-space" / "lyophilizer.yaml"
pytestmark = pytest.mark.slow


def _small(tmp_path: Path, uncertainty: dict[str, object] | None = None) -> Path:
    """A 3 x 2 grid across the acceptable region: too cool (slow), middle, too hot."""
    data = yaml.safe_load(SHIPPED.read_text())
    data["scenario"] = str((SHIPPED.parent / data["scenario"]).resolve())
    data["factors"][0]["values"] = [20.0, 50.0, 100.0]
    data["factors"][1]["values"] = [0.05, 0.1]
    data["duration"] = 12.0
    if uncertainty is not None:
        data["uncertainty"] = uncertainty
    path = tmp_path / "small.yaml"
    path.write_text(yaml.safe_dump(data), encoding="utf-8")
    return path


def test_without_uncertainty_the_map_is_the_deterministic_design_space(tmp_path: Path) -> None:
    space = load_design_space(_small(tmp_path, {"parameters": []}))
    det = run_design_space(space, tmp_path / "det", workers=2, progress=False)
    prob = run_probabilistic(space, tmp_path / "mc", 2, workers=2, progress=False)
    verdicts = [r["acceptable"] for r in det.rows]
    assert any(verdicts) and not all(verdicts)  # the grid crosses the edge
    assert [r["probability"] for r in prob.rows] == [1.0 if v else 0.0 for v in verdicts]
    # nothing drawn: every run is the same run, so the verdicts are the grid's own
    assert [r["verdict"] == "inside" for r in prob.rows] == verdicts


def test_drawn_parameters_turn_the_edge_into_probabilities(tmp_path: Path) -> None:
    space = load_design_space(_small(tmp_path, {"parameters": ["KC", "R0"], "seed": 3}))
    assert set(uncertain_parameters(space)) == {"KC", "R0"}
    prob = run_probabilistic(space, tmp_path / "mc", 6, workers=2, progress=False)
    p = {(r["Tsh_hold"], r["Pch"]): r["probability"] for r in prob.rows}
    for pch in (0.05, 0.1):
        # the middle of the region keeps most draws; too cool is too slow, too hot overheats
        assert p[(50.0, pch)] > p[(20.0, pch)] and p[(50.0, pch)] > p[(100.0, pch)]
    assert any(0.0 < v < 1.0 for v in p.values())  # the edge became a probability
    for r in prob.rows:
        assert r["ci_low"] <= r["probability"] <= r["ci_high"]
        assert r["draws"] == 6 and r["errors"] == 0
    saved = json.loads((tmp_path / "mc" / "design_space_probability.json").read_text())
    assert len(saved["draws"]) == 6 and saved["n_points"] == 6
    # each run's evidence: its draw, its CQAs, its verdict and why (only the aggregates and
    # the first error per point were kept)
    with (tmp_path / "mc" / "design_space_runs.csv").open(encoding="utf-8") as fh:
        runs = list(csv.DictReader(fh))
    assert len(runs) == 36 and {"KC", "R0", "max_Tbot", "reasons"} <= set(runs[0])
    for r in prob.rows:
        mine = [x for x in runs if x["point"] == r["id"]]
        assert sum(x["acceptable"] == "True" for x in mine) == r["acceptable_draws"]
        assert [float(x["KC"]) for x in mine] == [d["KC"] for d in prob.draws]
        assert all(x["reasons"] for x in mine if x["acceptable"] == "False")
    assert (tmp_path / "mc" / "design_space_probability.png").stat().st_size > 10_000


def test_a_second_sweep_into_the_same_folder_leaves_nothing_of_the_first(tmp_path: Path) -> None:
    """Run again with fewer draws into the same --out: the first sweep's extra run folders
    were left beside the new ones (d002 of 3 draws read as part of a 2-draw map) and each
    run's log held both sweeps' output."""
    space = load_design_space(_small(tmp_path, {"parameters": ["KC"], "seed": 3}))
    out = tmp_path / "mc"
    run_probabilistic(space, out, 3, workers=2, progress=False)
    assert (out / "runs" / "p00-00-d002").is_dir()
    # what is not exactly an earlier sweep's run folder is left alone: another name, a
    # name a Monte Carlo sweep never writes, a run folder holding the user's own file
    user = {"notes": "", "p03-07": "", "p00-00-d099": "", "p00-01-d002": "mine.txt"}
    for name, extra in user.items():
        (out / "runs" / name).mkdir(exist_ok=True)
        (out / "runs" / name / (extra or "notes.txt")).write_text("my analysis\n")
    run_probabilistic(space, out, 2, workers=2, progress=False)
    runs = sorted(d.name for d in (out / "runs").iterdir())
    mine = sorted(user)
    assert runs == sorted({f"{p.id}-d{k:03d}" for p in space.points for k in range(2)} | set(mine))
    assert (out / "runs" / "p00-01-d002" / "mine.txt").is_file()
    assert not (out / "runs" / "p00-00-d002").exists()  # the earlier sweep's own: removed
    log = (out / "runs" / "p00-00-d000" / "run.log").read_text(encoding="utf-8")
    assert log.count("--- p00-00-d000") == 1
    det = tmp_path / "det"
    run_design_space(space, det, workers=2, progress=False)
    (det / "points" / "p09-09").mkdir()  # as an earlier, bigger grid left it
    (det / "points" / "p09-09" / "scenario.yaml").write_text("name: p09-09\n")
    (det / "points" / "p08-08").symlink_to(tmp_path)  # a link: left (it was a traceback)
    (det / "points" / "p00-00-d001").mkdir()  # a Monte Carlo name: not this sweep's
    run_design_space(space, det, workers=2, progress=False)
    left = sorted(d.name for d in (det / "points").iterdir())
    assert left == sorted([p.id for p in space.points] + ["p00-00-d001", "p08-08"])


def test_draws_cover_the_plausible_ranges_and_repeat_with_the_seed() -> None:
    ranges = {"KC": (1.5e-4, 2.75e-4, 4.0e-4), "R0": (0.5, 1.4, 3.0)}
    a = draw(ranges, 20, "uniform", seed=5)
    assert a == draw(ranges, 20, "uniform", seed=5)
    kc = sorted(d["KC"] for d in a)
    assert 1.5e-4 <= kc[0] < 1.5e-4 + 1.25e-5 and 4.0e-4 - 1.25e-5 < kc[-1] <= 4.0e-4  # LHS strata
    tri = draw(ranges, 400, "triangular", seed=1)
    assert all(0.5 <= d["R0"] <= 3.0 for d in tri)
    mean = sum(d["R0"] for d in tri) / len(tri)
    assert mean == pytest.approx((0.5 + 1.4 + 3.0) / 3, rel=0.03)  # the triangular mean
    assert wilson(10, 10)[0] > 0.69 and wilson(0, 10)[1] < 0.31


def test_the_cli_prints_the_map_and_refuses_bad_arguments(
    tmp_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    path = _small(tmp_path, {"parameters": []})
    bad = hil_main(
        ["design-space", str(path), "--monte-carlo", "2", "--probability", "1.5", "--quiet"]
    )
    assert bad == 2 and "strictly between 0 and 1" in capfd.readouterr().out
    out = tmp_path / "cli"
    code = hil_main(
        ["design-space", str(path), "--monte-carlo", "1", "--workers", "2", "--quiet",
         "--out", str(out)]
    )  # fmt: skip
    text = capfd.readouterr().out
    assert "P(every CQA limit holds)" in text and code == 0
    assert "no uncertain parameter (uncertainty.parameters: [])" in text
    assert (out / "design_space_probability.csv").exists()
    # drawn parameters, few draws: the estimate may reach 0.95, no point is shown inside
    drawn = _small(tmp_path, {"parameters": ["KC"], "seed": 1})
    code = hil_main(
        ["design-space", str(drawn), "--monte-carlo", "2", "--workers", "2", "--quiet",
         "--out", str(tmp_path / "few")]
    )  # fmt: skip
    text = capfd.readouterr().out
    assert code == 1 and "0/6 points meet every limit with probability >= 0.95" in text
    assert "with 2 draws no point can be shown inside at 0.95" in text
    assert "from 73 draws on" in text
    saved = json.loads((tmp_path / "few" / "design_space_probability.json").read_text())
    assert saved["n_inside"] == 0 and saved["min_draws_to_show_inside"] == 73
    # the solvers' prints (from C, in the workers) are in each run's log, not on the terminal
    logs = sorted((tmp_path / "few" / "runs").glob("*/run.log"))
    assert len(logs) == 12 and all(p.read_text().startswith("--- p") for p in logs)
    assert "linesearch" not in text and "IDAS" not in text
    assert {r["verdict"] for r in saved["points"]} <= {"outside", "undecided"}
