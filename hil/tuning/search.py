"""The search: an Optuna study stored in SQLite in the output folder, resumable.

Each round asks the sampler for as many candidates as there are workers, writes each one's
controller YAML under ``trials/<number>/candidate.yaml``, runs every scenario for all of them
on one :class:`~hil.tuning.evaluate.CaseExecutor`, and tells Optuna the objective values. A
rejected candidate (a case errored, a named requirement failed, a KPI bound was broken, the
candidate config is invalid) is told as PRUNED with its reasons in the trial's user
attributes: Optuna never reports a pruned trial as best. ``trials`` is the study's total, so
rerunning the same command after an interruption continues where it stopped; trials left
RUNNING by a killed run are marked FAIL. A loaded study's sampler is seeded from the file's
seed and the number of trials stored (:func:`resumed_seed`), so the continued run draws new
candidates, the same ones for the same history.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import optuna
from optuna.trial import FrozenTrial, Trial, TrialState
from rich.console import Console
from rich.markup import escape
from rich.progress import (
    Progress,
)

from controller.errors import ConfigError, Problem
from controller.jsonfile import json_safe
from controller.runtime.site import load_checked_controller
from hil.tuning.evaluate import CaseExecutor, ExecutorSettings, Score, case_jobs, score
from hil.tuning.report import TuneOutcome, write_outputs
from hil.tuning.spec import ParameterSpec, Tuning, candidate_config, grid_values

log = logging.getLogger("pharmatwin.hil.tuning")


@dataclass(frozen=True)
class TuneSettings:
    out: Path
    trials: int | None = None  # the study's total; default: the file's search.trials
    executor: ExecutorSettings = field(default_factory=ExecutorSettings)


def resumed_seed(seed: int, history: int) -> int:
    """The sampler's seed for a study that already holds ``history`` trials.

    A new study uses ``seed`` itself. A loaded one gets a seed drawn from (seed, history):
    a sampler seeded as the first run's would replay that run's draws, so a resumed run
    would repeat its candidates. Only the stored trials and the seed decide it, so the
    same history and seed give the same next candidates (even after a killed run, which
    saving the sampler's state between rounds would not).
    """
    if history == 0:
        return seed
    return int(np.random.SeedSequence([seed, history]).generate_state(1)[0])


def make_sampler(tuning: Tuning, history: int = 0) -> optuna.samplers.BaseSampler:
    """The file's sampler, for a study already holding ``history`` trials."""
    seed = resumed_seed(tuning.spec.search.seed, history)
    match tuning.sampler:
        case "grid":
            space = {
                p.path: _grid(p, tuning.spec.search.grid_points) for p in tuning.spec.parameters
            }
            return optuna.samplers.GridSampler(space, seed=seed)
        case "random":
            return optuna.samplers.RandomSampler(seed=seed)
        case "nsga2":
            return optuna.samplers.NSGAIISampler(seed=seed)
    return optuna.samplers.TPESampler(seed=seed, constant_liar=True)


def _grid(p: ParameterSpec, points: int) -> list[float | int]:
    values = grid_values(p, points)
    return [int(v) for v in values] if p.type == "int" else values


def grid_size(tuning: Tuning) -> int:
    n = 1
    for p in tuning.spec.parameters:
        n *= len(grid_values(p, tuning.spec.search.grid_points))
    return n


def open_study(tuning: Tuning, out: Path) -> optuna.Study:
    """The study in ``out/study.db`` (made, or loaded to continue)."""
    out.mkdir(parents=True, exist_ok=True)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(
        storage=f"sqlite:///{(out / 'study.db').resolve()}",
        study_name=tuning.name,
        sampler=make_sampler(tuning),
        directions=["minimize"] * len(tuning.spec.objectives),
        load_if_exists=True,
    )
    for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        log.warning("trial %d was left running by an earlier run: marked failed", t.number)
        study.tell(t.number, state=TrialState.FAIL)
    made_with = study.user_attrs.get("definition")
    if study.trials and made_with != definition(tuning):
        why = "another tuning definition" if made_with else "a definition it did not record"
        raise ConfigError([Problem(
            str(out / "study.db"), "",
            f"its {len(study.trials)} trials were made with {why} "
            f"({study.user_attrs.get('tuning_file', 'unknown file')}): their scores do not "
            f"belong to {tuning.path}'s parameters, objectives, scenarios and start config; "
            "allowed: the same definition (only search: may change), or another --out",
        )])  # fmt: skip
    if study.trials:  # a loaded study continues with new draws (see resumed_seed)
        study.sampler = make_sampler(tuning, len(study.trials))
    if not study.user_attrs:
        study.set_user_attr("tuning_file", str(tuning.path))
        study.set_user_attr("objectives", [o.name for o in tuning.spec.objectives])
        study.set_user_attr("definition", definition(tuning))
    return study


def definition(tuning: Tuning) -> str:
    """What a trial's score depends on: the tuning file less its ``search`` section (the
    sampler and the number of trials may change between runs of one study), the start
    config and the files of its scenario campaign."""
    spec = tuning.spec.model_dump(mode="json")
    spec.pop("search", None)
    own = tuning.path.resolve()  # its campaign is made from the tuning file: spec covers it
    files = {
        str(p): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in tuning.campaign.files()
        if p != own
    }
    start = hashlib.sha256(tuning.start_path.read_bytes()).hexdigest()
    body = json.dumps({"spec": spec, "start": start, "files": files}, sort_keys=True)
    return hashlib.sha256(body.encode()).hexdigest()


def suggest(trial: Trial, p: ParameterSpec) -> float:
    log_scale = p.scale == "log"
    if p.type == "int":
        return float(trial.suggest_int(p.path, int(p.low), int(p.high), log=log_scale))
    return trial.suggest_float(p.path, p.low, p.high, log=log_scale)


def _write_candidate(
    tuning: Tuning, values: dict[str, float], folder: Path, jit: bool | None
) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "candidate.yaml"
    path.write_text(candidate_config(tuning, values, jit=jit), encoding="utf-8")
    return path


def _invalid(tuning: Tuning, exc: ConfigError) -> Score:
    values = [math.inf] * len(tuning.spec.objectives)
    return Score(values, {}, {}, [f"invalid candidate: {p}" for p in exc.problems])


def evaluate_many(
    tuning: Tuning,
    candidates: list[tuple[dict[str, float], Path]],
    executor: CaseExecutor,
    jit: bool | None,
) -> list[Score]:
    """Run every scenario for each (values, folder) candidate at once; score each."""
    jobs: list[dict[str, Any]] = []
    spans: list[tuple[int, int] | ConfigError] = []
    for values, folder in candidates:
        path = _write_candidate(tuning, values, folder, jit)
        try:
            load_checked_controller(path)
        except ConfigError as exc:
            spans.append(exc)
            continue
        more = case_jobs(tuning.campaign, path, folder)
        spans.append((len(jobs), len(jobs) + len(more)))
        jobs += more
    results = executor.run(jobs) if jobs else []
    scores = []
    for (_, folder), span in zip(candidates, spans, strict=True):
        if isinstance(span, ConfigError):
            scores.append(_invalid(tuning, span))
            continue
        s = score(results[span[0] : span[1]], folder, tuning.spec.objectives, tuning.spec.reject)
        (folder / "score.json").write_text(
            json.dumps(_score_json(s), indent=2, default=str), encoding="utf-8"
        )
        scores.append(s)
    return scores


def _score_json(s: Score) -> dict[str, Any]:
    return {
        "values": json_safe(s.values),
        "kpis": json_safe(s.kpis),
        "per_case": json_safe(s.per_case),
        "rejected": s.rejected,
    }


def _record(study: optuna.Study, trial: Trial, s: Score) -> None:
    trial.set_user_attr("kpis", json_safe(s.kpis))
    trial.set_user_attr("objective_values", json_safe(s.values))
    if s.rejected:
        trial.set_user_attr("rejected", s.rejected[:20])
    try:
        if s.rejected:
            study.tell(trial, state=TrialState.PRUNED)
        else:
            study.tell(trial, s.values)
    except RuntimeError as exc:
        # The grid sampler calls study.stop() once the grid is covered, which only works
        # inside study.optimize; the trial is stored before that (optuna's _tell, finally:).
        if "Study.stop" not in str(exc):
            raise


def baseline(tuning: Tuning, out: Path, executor: CaseExecutor) -> Score:
    """The start config on the same scenarios (reused when already run for this file)."""
    folder = out / "baseline"
    stamp = folder / "tuning.sha256"
    done = folder / "score.json"
    if stamp.exists() and done.exists() and stamp.read_text() == tuning.sha256:
        d = json.loads(done.read_text(encoding="utf-8"))
        nan = math.nan
        return Score(
            [nan if v is None else v for v in d["values"]],
            {k: nan if v is None else v for k, v in d["kpis"].items()},
            {
                c: {k: nan if v is None else v for k, v in kp.items()}
                for c, kp in d["per_case"].items()
            },
            d["rejected"],
        )
    s = evaluate_many(tuning, [(tuning.start_values(), folder)], executor, tuning.spec.search.jit)[
        0
    ]
    stamp.write_text(tuning.sha256)
    return s


def _enqueue_start(tuning: Tuning, study: optuna.Study) -> None:
    if tuning.sampler == "grid" or not tuning.spec.search.start_first or study.trials:
        return
    start = tuning.start_values()
    if all(p.low <= start[p.path] <= p.high for p in tuning.spec.parameters):
        study.enqueue_trial(
            {
                p.path: int(start[p.path]) if p.type == "int" else start[p.path]
                for p in tuning.spec.parameters
            }
        )


def best_trial(study: optuna.Study) -> FrozenTrial | None:
    """The best accepted trial (of several objectives: the Pareto trial best on the first)."""
    done = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    if not done:
        return None
    if len(study.directions) == 1:
        return study.best_trial
    return min(study.best_trials, key=lambda t: (t.values[0], t.number))


def _trial_progress(console: Console, total: int) -> Progress:
    from hil.campaign.execute import tally_progress

    return tally_progress(console)


def _tally(counts: dict[str, int], best: float) -> str:
    shown = f" best {best:.6g}" if math.isfinite(best) else ""
    return f"[green]{counts['accepted']} accepted[/] [red]{counts['rejected']} rejected[/]{shown}"


def _nothing_to_run(tuning: Tuning, settings: TuneSettings, already: int, total: int) -> str:
    asked = settings.trials or tuning.spec.search.trials
    if tuning.sampler == "grid" and total < asked:
        return (
            f"the grid's {total} points are all tried ({already} finished trials in the "
            "study): nothing more is run"
        )
    return (
        f"the study already has {already} finished trials and {asked} were asked for in all "
        f"(--trials is the study's total): nothing more is run; ask for more than {already} "
        "to continue"
    )


def run_search(
    tuning: Tuning, settings: TuneSettings, executor: CaseExecutor, console: Console
) -> tuple[optuna.Study, int]:
    """Ask, evaluate, tell until the study holds ``trials`` finished trials; a progress bar
    counts them (each trial's solver output is in its folder's trial.log, not here)."""
    study = open_study(tuning, settings.out)
    total = settings.trials or tuning.spec.search.trials
    if tuning.sampler == "grid":
        total = min(total, grid_size(tuning))
    _enqueue_start(tuning, study)
    batch = max(1, settings.executor.workers)
    ran = 0
    counts = {"accepted": 0, "rejected": 0}
    best = math.inf
    done = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL)
    already = len(study.get_trials(deepcopy=False, states=done))
    if already >= total:
        console.print(_nothing_to_run(tuning, settings, already, total), highlight=False)
        return study, 0
    with warnings.catch_warnings(), _trial_progress(console, total) as bar:
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        task = bar.add_task("trials", total=max(0, total - already), tally=_tally(counts, best))
        # the start config's enqueued (waiting) trial is not finished: it runs with the others
        while (finished := len(study.get_trials(deepcopy=False, states=done))) < total:
            trials = [study.ask() for _ in range(min(batch, total - finished))]
            candidates = []
            for t in trials:
                values = {p.path: suggest(t, p) for p in tuning.spec.parameters}
                candidates.append((values, settings.out / "trials" / f"{t.number:04d}"))
            scores = evaluate_many(tuning, candidates, executor, tuning.spec.search.jit)
            for t, s in zip(trials, scores, strict=True):
                _record(study, t, s)
                ran += 1
                counts["rejected" if s.rejected else "accepted"] += 1
                if not s.rejected and s.values:
                    best = min(best, s.values[0])
                shown = ", ".join(f"{v:.6g}" for v in s.values)
                verdict = "accepted"
                if s.rejected:
                    verdict = f"[red]rejected[/red]: {escape(s.rejected[0])}"
                bar.console.print(
                    f"trial {t.number}: {escape(str(t.params))} -> {shown} ({verdict})",
                    highlight=False,
                )
                bar.update(task, advance=1, tally=_tally(counts, best))
    return study, ran


def check_settings(settings: TuneSettings) -> None:
    """``--trials`` and ``--workers`` of 0 (or less) are errors, not the file's default."""
    problems = []
    if settings.trials is not None and settings.trials < 1:
        problems.append(Problem("command line", "--trials", "must be 1 or more", settings.trials))
    if settings.executor.workers < 1:
        workers = settings.executor.workers
        problems.append(Problem("command line", "--workers", "must be 1 or more", workers))
    if problems:
        raise ConfigError(problems)


def tune(tuning: Tuning, settings: TuneSettings, console: Console | None = None) -> TuneOutcome:
    """Run (or continue) the search, then write the table, plots, tuned config and HTML."""

    check_settings(settings)
    console = console or Console(stderr=True)
    t0 = time.perf_counter()
    retries = tuning.campaign.spec.retries
    with CaseExecutor(settings.executor, retries) as executor:
        base = baseline(tuning, settings.out, executor)
        study, ran = run_search(tuning, settings, executor, console)
    outcome = TuneOutcome(settings.out, study, base, best_trial(study), trials_run=ran)
    outcome.wall_time_s = time.perf_counter() - t0
    outcome.files = write_outputs(tuning, outcome, console)
    (settings.out / "tuning.json").write_text(
        json.dumps(
            {
                "tuning_file": str(tuning.path),
                "sha256": tuning.sha256,
                "trials_in_study": len(study.trials),
                "trials_run_now": ran,
                "wall_time_s": outcome.wall_time_s,
                "best_trial": outcome.best.number if outcome.best else None,
                "start_values": tuning.start_values(),
                "best_params": outcome.best.params if outcome.best else None,
            },
            indent=2,
        ),
        encoding="utf-8",
    )
    return outcome
