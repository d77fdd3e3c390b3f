"""Offline tuning (``pharmatwin-hil tune``) and ``compare``: real closed loops on the CSTR.

Every run is real: the campaign machinery (HIL rig, virtual PLC, edge runtime, MPC) runs each
candidate on a short CSTR scenario (0.05 h, 10 controller cycles). The known optimum: tracking
C_b at a setpoint, the integral of |C_b - 0.7| is smallest for the setpoint 0.7.
"""

from __future__ import annotations

import ctypes
import dataclasses
import io
import json
import math
import os
import shutil
from pathlib import Path
from typing import Any

import optuna
import pytest
import yaml
from rich.console import Console

from controller.controllerfile import load_controller
from controller.errors import ConfigError
from hil.campaign.runner import run_case
from hil.cli import main as hil_main
from hil.tuning.evaluate import TRIAL_LOG, ExecutorSettings, case_jobs, output_to
from hil.tuning.search import TuneSettings, open_study, suggest, tune
from hil.tuning.spec import candidate_config, load_tuning, portable_path

ROOT = Path(__file__).resolve().parents[2]
SETPOINT = "objective.tracking.0.setpoint"


@pytest.fixture(scope="module")
def start(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The shipped CSTR controller, uncompiled (no 10 s jit build per candidate)."""
    raw = yaml.safe_load((ROOT / "configs/controllers/cstr.yaml").read_text())
    raw["plant"] = str(ROOT / "configs/plants/cstr.yaml")
    raw["solver"]["jit"] = False
    path = tmp_path_factory.mktemp("start") / "cstr.yaml"
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    return path


def _tuning(folder: Path, start: Path, **over: Any) -> Path:
    data: dict[str, Any] = {
        "name": "cstr-setpoint",
        "start": str(start),
        "parameters": [{"path": SETPOINT, "low": 0.5, "high": 0.7, "values": [0.5, 0.6, 0.7]}],
        "scenarios": {
            "site": str(ROOT / "configs/sites/cstr-modbus.yaml"),
            "duration": 0.05,
            "matrix": [{"factors": {"mismatch": {"site": {}}}, "seeds": [1]}],
        },
        "objectives": [{"terms": [{"signal": "C_b", "stat": "iae", "target": 0.7}]}],
        "search": {"sampler": "grid", "trials": 3},
    }
    data |= over
    path = folder / "tuning.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def _study(out: Path) -> optuna.Study:
    return optuna.load_study(study_name="cstr-setpoint", storage=f"sqlite:///{out / 'study.db'}")


@pytest.fixture(scope="module")
def grid_run(start: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The grid search through the command line, on 2 worker processes."""
    folder = tmp_path_factory.mktemp("grid")
    tfile = _tuning(folder, start)
    out = folder / "out"
    assert hil_main(["tune", str(tfile), "--workers", "2", "--out", str(out)]) == 0
    return out


@pytest.mark.slow
def test_the_search_finds_the_known_optimum(grid_run: Path) -> None:
    study = _study(grid_run)
    assert len(study.trials) == 3
    assert study.best_trial.params[SETPOINT] == pytest.approx(0.7)
    values: dict[float, float] = {}
    for t in study.trials:
        assert t.value is not None, t  # every trial was scored
        values[t.params[SETPOINT]] = t.value
    assert values[0.7] < values[0.6] < values[0.5]
    ranking = json.loads((grid_run / "ranking.json").read_text())
    assert [r["param." + SETPOINT] for r in ranking] == pytest.approx([0.7, 0.6, 0.5])
    assert ranking[0]["kpi.iae(C_b-0.7)"] == pytest.approx(values[0.7])
    for name in ("ranking.csv", "history.png", "importance.png", "trajectories.png"):
        assert (grid_run / name).stat().st_size > 0
    html = (grid_run / "report.html").read_text()
    assert html.count("data:image/png;base64,") == 3 and "Before / after" in html


@pytest.mark.slow
def test_the_tuned_config_says_how_it_was_made_loads_and_runs(grid_run: Path) -> None:
    tuned = grid_run / "cstr-setpoint-tuned.yaml"
    text = tuned.read_text()
    header = [line for line in text.splitlines() if line.startswith("#")]
    assert any("sha256" in h for h in header) and any("trial" in h for h in header)
    assert any("git commit" in h for h in header) and any("date" in h for h in header)
    cfg, _ = load_controller(tuned)
    assert cfg.objective.tracking[0].setpoint == pytest.approx(0.7)
    tuning = load_tuning(grid_run.parent / "tuning.yaml")
    job = case_jobs(tuning.campaign, tuned, grid_run / "rerun")[0]
    result = run_case(job)
    assert result["status"] == "passed", result.get("error")
    assert result["kpis"]["solves.failed"] == 0
    assert abs(result["kpis"]["final.C_b"] - 0.7) < abs(result["kpis"]["final.C_b"] - 0.6)


def test_the_tuned_config_names_its_plant_relative_to_itself(start: Path, tmp_path: Path) -> None:
    # a tuned config written in the project's runs/ names the plant file relative to itself:
    # the project cloned or moved elsewhere still loads it (an absolute path pointed into
    # the old place, and the config no longer loaded there)
    tuning = load_tuning(_tuning(tmp_path, start))
    project = tmp_path / "project"
    plant = project / "configs" / "plants" / "cstr.yaml"
    plant.parent.mkdir(parents=True)
    shutil.copy(tuning.start_raw["plant"], plant)
    tuning = dataclasses.replace(tuning, start_raw={**tuning.start_raw, "plant": str(plant)})
    out = project / "runs" / "tuning" / "cstr"
    out.mkdir(parents=True)
    text = candidate_config(tuning, {SETPOINT: 0.65}, jit=None, folder=out)
    assert yaml.safe_load(text)["plant"] == "../../../configs/plants/cstr.yaml"
    (out / "tuned.yaml").write_text(text)
    moved = shutil.move(project, tmp_path / "clone")
    cfg, model = load_controller(Path(moved) / "runs" / "tuning" / "cstr" / "tuned.yaml")
    assert cfg.objective.tracking[0].setpoint == 0.65 and model.name == "cstr"
    # with nothing in common but the root, the path stays absolute (no climb to "/")
    assert portable_path(plant, Path("/var")) == str(plant)


@pytest.mark.slow
def test_compare_runs_both_configs_on_the_same_scenarios(
    grid_run: Path, start: Path, tmp_path: Path
) -> None:
    tuned = grid_run / "cstr-setpoint-tuned.yaml"
    out = tmp_path / "cmp"
    argv = ["compare", str(start), str(tuned), "--scenarios", str(grid_run.parent / "tuning.yaml")]
    assert hil_main([*argv, "--out", str(out)]) == 0
    data = json.loads((out / "compare.json").read_text())
    assert data["mean"]["A"]["final.C_b"] < data["mean"]["B"]["final.C_b"]
    assert set(data["cases"]["A"]) == set(data["cases"]["B"])
    assert "data:image/png;base64," in (out / "compare.html").read_text()


@pytest.mark.slow
def test_compare_fails_when_a_configs_cases_errored(
    grid_run: Path, start: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # B is the freeze dryer's controller on the CSTR's scenarios: every B case errors (no
    # KPIs), which is no comparison: before, the table showed "-" and the exit code was 0
    other = ROOT / "configs" / "controllers" / "lyophilizer.yaml"
    out = tmp_path / "cmp"
    argv = ["compare", str(start), str(other), "--scenarios", str(grid_run.parent / "tuning.yaml")]
    assert hil_main([*argv, "--out", str(out)]) == 1
    text = " ".join(capsys.readouterr().out.split())
    assert f"B ({other}): errored" in text and "A (" not in text
    data = json.loads((out / "compare.json").read_text())
    assert data["errored"]["A"] == {} and len(data["errored"]["B"]) == len(data["cases"]["B"]) > 0
    assert all("ConfigError" in why for why in data["errored"]["B"].values())


@pytest.mark.slow
def test_rejected_candidates_never_win(start: Path, tmp_path: Path) -> None:
    # the best-tracking setpoint (0.7) overshoots a C_b bound: it must not be reported as best
    reject = {"kpis": [{"kpi": "final.C_b", "at_most": 0.68}]}
    tuning = load_tuning(_tuning(tmp_path, start, reject=reject))
    out = tmp_path / "out"
    outcome = tune(tuning, TuneSettings(out, executor=ExecutorSettings(workers=2)), Console())
    states = {t.params[SETPOINT]: t.state for t in outcome.study.trials}
    assert states[0.7] == optuna.trial.TrialState.PRUNED
    assert outcome.best is not None and outcome.best.params[SETPOINT] == pytest.approx(0.6)
    ranking = json.loads((out / "ranking.json").read_text())
    assert ranking[0]["param." + SETPOINT] == pytest.approx(0.6)
    rejected = [r for r in ranking if r["status"] == "rejected"]
    assert len(rejected) == 1 and rejected[0]["rank"] is None
    assert "final.C_b" in rejected[0]["rejected"]
    assert (
        load_controller(out / "cstr-setpoint-tuned.yaml")[0].objective.tracking[0].setpoint == 0.6
    )


@pytest.mark.slow
def test_resume_continues_the_stored_study(start: Path, tmp_path: Path) -> None:
    search = {"sampler": "tpe", "trials": 4, "seed": 3}
    params = [{"path": SETPOINT, "low": 0.5, "high": 0.75}]
    tfile = _tuning(tmp_path, start, search=search, parameters=params)
    out = tmp_path / "out"
    assert hil_main(["tune", str(tfile), "--trials", "2", "--out", str(out)]) == 0
    first = [(t.number, t.params, t.values) for t in _study(out).trials]
    assert len(first) == 2
    assert first[0][1][SETPOINT] == pytest.approx(0.6)  # the start config is tried first
    assert hil_main(["tune", str(tfile), "--out", str(out)]) == 0  # the file's 4 in all
    study = _study(out)
    assert len(study.trials) == 4
    assert [(t.number, t.params, t.values) for t in study.trials[:2]] == first
    assert json.loads((out / "tuning.json").read_text())["trials_run_now"] == 2


@pytest.mark.slow
def test_resume_draws_new_candidates_reproducibly(
    start: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # before: the loaded study got a sampler with the same seed, which replayed its draws:
    # trial 3 had trial 1's setpoint and trial 4 trial 2's, and both were simulated again
    search = {"sampler": "tpe", "trials": 3, "seed": 3}
    params = [{"path": SETPOINT, "low": 0.5, "high": 0.75}]
    tfile = _tuning(tmp_path, start, search=search, parameters=params)
    out = tmp_path / "out"
    argv = ["tune", str(tfile), "--workers", "2", "--out", str(out)]
    assert hil_main([*argv, "--trials", "3"]) == 0
    stopped = tmp_path / "stopped"
    stopped.mkdir()
    shutil.copy(out / "study.db", stopped / "study.db")  # the history the resume starts from
    assert hil_main([*argv, "--trials", "5"]) == 0
    trials = _study(out).trials
    assert len(trials) == 5 and trials[0].params[SETPOINT] == pytest.approx(0.6)
    drawn = [t.params[SETPOINT] for t in trials[1:]]
    assert len(set(drawn)) == 4, drawn
    # reproducible: the same history and seed give the same next candidates
    tuning = load_tuning(tfile)
    again = open_study(tuning, stopped)
    asked = [again.ask() for _ in range(2)]  # one round of 2 workers, as the resume asked
    assert [suggest(t, tuning.spec.parameters[0]) for t in asked] == drawn[2:]
    # asking for fewer trials than the study holds says so (before: a silent "0/0")
    capsys.readouterr()
    assert hil_main([*argv, "--trials", "3"]) == 0
    said = " ".join(capsys.readouterr().out.split())
    assert "the study already has 5 finished trials" in said and "nothing more is run" in said
    assert len(_study(out).trials) == 5
    assert json.loads((out / "tuning.json").read_text())["trials_run_now"] == 0


@pytest.mark.slow
def test_several_objectives_use_nsga2_on_dask(start: Path, tmp_path: Path) -> None:
    objectives = [
        {"name": "tracking", "terms": [{"signal": "C_b", "stat": "iae", "target": 0.7}]},
        {"name": "effort", "aggregate": "worst", "terms": [{"signal": "F", "stat": "mean"}]},
    ]
    search = {"trials": 3, "seed": 1}
    tfile = _tuning(tmp_path, start, objectives=objectives, search=search)
    tuning = load_tuning(tfile)
    assert tuning.sampler == "nsga2"
    settings = TuneSettings(tmp_path / "out", executor=ExecutorSettings("dask", workers=2))
    outcome = tune(tuning, settings, Console())
    assert isinstance(outcome.study.sampler, optuna.samplers.NSGAIISampler)
    done = [t for t in outcome.study.trials if t.values is not None]
    assert len(done) == 3 and all(
        len(t.values) == 2 and all(map(math.isfinite, t.values)) for t in done
    )
    assert (tmp_path / "out" / "pareto.png").stat().st_size > 0


def _problems(path: Path) -> dict[str, str]:
    with pytest.raises(ConfigError) as err:
        load_tuning(path)
    return {p.location: str(p.value) for p in err.value.problems}


def test_tuning_file_errors_name_the_key(start: Path, tmp_path: Path) -> None:
    bad = _tuning(
        tmp_path,
        start,
        parameters=[
            {"path": "objective.tracking.3.setpoint", "low": 0.5, "high": 0.7},
            {"path": "description", "low": 0.5, "high": 0.7},
            {"path": "horizon", "low": 5, "high": 30, "type": "int"},
        ],
        objectives=[{"terms": [{"kpi": "final.Z"}, {"signal": "nope"}]}],
        reject={"requirements": ["REQ-NOPE-01"], "kpis": [{"kpi": "solves.fail", "at_most": 0}]},
    )
    problems = _problems(bad)
    assert problems["parameters.0.path"] == "objective.tracking.3.setpoint"
    assert problems["parameters.1.path"] == "description"
    assert "parameters.2.path" not in problems
    assert problems["objectives.0.terms.0.kpi"] == "final.Z"
    assert problems["objectives.0.terms.1.signal"] == "nope"
    assert problems["reject.requirements"] == "REQ-NOPE-01"
    assert problems["reject.kpis.0.kpi"] == "solves.fail"
    schema = _tuning(
        tmp_path,
        start,
        parameters=[{"path": "horizon", "low": 0, "high": 30, "scale": "log"}],
        search={"sampler": "annealing"},
        steps=2,
    )
    with pytest.raises(ConfigError) as err:
        load_tuning(schema)
    where = {p.location: p.message for p in err.value.problems}
    assert "log scale needs low > 0" in where["parameters.0"]
    assert "search.sampler" in where and where["steps"].startswith("unknown key")
    assert all(p.file == str(schema) for p in err.value.problems)


@pytest.mark.parametrize("path", sorted((ROOT / "configs" / "tuning").glob("*.yaml")), ids=str)
def test_shipped_tuning_files_load(path: Path) -> None:
    tuning = load_tuning(path)
    assert tuning.campaign.cases and tuning.campaign.spec.mode == "fast"
    values = tuning.start_values()
    assert all(p.low <= values[p.path] <= p.high for p in tuning.spec.parameters)


def test_zero_trials_or_workers_are_errors(
    start: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    tfile = _tuning(tmp_path, start)
    out = tmp_path / "out"
    # before: --trials 0 fell back to the file's trials and ran them
    assert hil_main(["tune", str(tfile), "--trials", "0", "--out", str(out)]) == 2
    said = capsys.readouterr().out
    assert "command line: --trials: must be 1 or more (got 0)" in said
    assert "Traceback" not in said and not out.exists()
    settings = TuneSettings(out, None, ExecutorSettings("process", 0))
    with pytest.raises(ConfigError, match="--workers: must be 1 or more"):
        tune(load_tuning(tfile), settings, Console(file=io.StringIO()))
    assert not out.exists()


def test_output_from_c_goes_to_the_trial_log(
    tmp_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    log = tmp_path / "trial" / TRIAL_LOG
    libc = ctypes.CDLL(None)
    with output_to(log, "--- case c1\n"):
        libc.printf(b"This is Ipopt (from C stdio)\n")  # buffered in C: flushed by output_to
        os.write(2, b"EXIT: Optimal Solution Found.\n")
    print("after the trial", flush=True)
    shown = capfd.readouterr()
    assert "Ipopt" not in shown.out + shown.err and "EXIT" not in shown.out + shown.err
    assert "after the trial" in shown.out
    kept = log.read_text()
    assert kept.startswith("--- case c1\n")
    for line in ("This is Ipopt (from C stdio)", "EXIT: Optimal Solution Found."):
        assert line in kept


@pytest.mark.slow
def test_grid_trials_keep_their_solver_output(grid_run: Path) -> None:
    for trial in sorted((grid_run / "trials").iterdir()):
        assert (trial / TRIAL_LOG).read_text().startswith("--- case "), trial


def test_a_study_is_continued_only_with_its_own_definition(start: Path, tmp_path: Path) -> None:
    # before: `tune` silently added trials to a study made with another tuning file; its
    # ranking then mixed rules (old rejections, old parameter ranges) under the new file's name
    params = [{"path": SETPOINT, "low": 0.5, "high": 0.75}]
    search = {"sampler": "tpe", "trials": 2, "seed": 3}
    first = load_tuning(_tuning(tmp_path, start, search=search, parameters=params))
    out = tmp_path / "out"
    study = open_study(first, out)
    dist = optuna.distributions.FloatDistribution(0.5, 0.75)
    study.add_trial(
        optuna.trial.create_trial(params={SETPOINT: 0.6}, distributions={SETPOINT: dist}, value=1.0)
    )
    # a change of search: only (more trials, another seed) continues the study
    more = load_tuning(
        _tuning(tmp_path, start, search=search | {"trials": 5, "seed": 4}, parameters=params)
    )
    assert len(open_study(more, out).trials) == 1
    # another range of the tuned parameter: refused, naming the study and what is allowed
    other = [{"path": SETPOINT, "low": 0.6, "high": 0.9}]
    changed = load_tuning(_tuning(tmp_path, start, search=search, parameters=other))
    with pytest.raises(ConfigError) as info:
        open_study(changed, out)
    text = str(info.value)
    assert "study.db" in text and "another tuning definition" in text and "another --out" in text
