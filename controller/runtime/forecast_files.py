"""The forecast's files: plan and recipe files, and the historian a forecast starts from.

The I/O half of the what-if forecast (:mod:`controller.twin.forecast` computes it):

* :func:`load_plan` reads an alternative plan (``--plan FILE``, a :class:`PlanFile`);
  :func:`recipe_problems` / :func:`load_recipe` read the PLC's local recipe (a scenario file's
  ``recipe:`` or a bare recipe file); :func:`default_plans` gives the plans a forecast compares
  (the MPC, the site's local recipe, the plan file's plan);
* :func:`read_start` (:func:`start_from_historian`) reads a runtime's historian (SQLite) for
  the newest cycle with an estimate that did not fail: the
  :class:`~controller.twin.forecast_spec.ForecastStart` (and notes on the cycles skipped).

Every problem raises :class:`~controller.twin.forecast_spec.ForecastError` naming the file,
key and value.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from controller.binding import Binding
from controller.config import Recipe, recipe_input_problems, recipe_range_problems
from controller.configfile import parse, read_yaml, resolve
from controller.errors import ConfigError, Problem, unknown_name
from controller.outpaths import input_file_problem
from controller.runtime.cli_common import HISTORIAN_FILE, RECIPE_FILE
from controller.runtime.historian import SqliteHistorian
from controller.runtime.historian_records import (
    CycleRecord,
    HistorianError,
    HistorianRecordError,
    RunInfo,
)
from controller.tags import TagMap
from controller.timebase import TimeBase
from controller.twin.forecast_spec import (
    ForecastError,
    ForecastSection,
    ForecastStart,
    Plan,
    table_problems,
)
from plant_models import PlantModel

__all__ = [
    "HistorianStart",
    "PlanFile",
    "default_plans",
    "load_plan",
    "load_recipe",
    "read_start",
    "recipe_problems",
    "start_from_historian",
]


# ---------------------------------------------------------------------- plans and recipes
class PlanFile(Recipe):
    """An alternative plan (``--plan FILE``): a named input table.

    ``time_base: now`` (the default): t = 0 is the forecast start; ``batch``: batch time.
    Inputs the table does not name hold their value at the start.
    """

    name: str
    description: str = ""
    time_base: Literal["now", "batch"] = "now"


def _config_problems(exc: ConfigError, prefix: str) -> list[Problem]:
    return [
        Problem(
            p.file,
            f"{prefix}{p.location}" if p.location else prefix.rstrip("."),
            p.message,
            p.value,
        )
        for p in exc.problems
    ]


def recipe_problems(path: Path, model: PlantModel) -> tuple[Recipe | None, list[Problem]]:
    """Read a recipe from a scenario file (its ``recipe:`` key) or a bare recipe file.

    Every row must give every input of ``model`` (it is what the PLC applies), each within
    its physical (actuator) range. Returns the
    recipe (None when it does not validate) and the problems found.
    """
    try:
        data = read_yaml(path)
    except ConfigError as exc:
        return None, list(exc.problems)
    scenario = "recipe" in data or "plant" in data  # else a bare recipe file
    raw, prefix = (data.get("recipe"), "recipe.") if scenario else (data, "")
    if not isinstance(raw, Mapping):
        why = "a scenario used as a recipe needs a 'recipe' table (interpolation, table)"
        return None, [Problem(str(path), "recipe", why, raw)]
    try:
        recipe = parse(Recipe, raw, str(path))
    except ConfigError as exc:
        return None, _config_problems(exc, prefix)
    problems = recipe_input_problems(recipe, model, str(path), prefix)
    problems += recipe_range_problems(recipe, model, str(path), prefix)
    return (None if problems else recipe), problems


def load_recipe(path: Path, model: PlantModel) -> Recipe:
    """:func:`recipe_problems`, raising ForecastError when there are any."""
    why = input_file_problem(Path(path), RECIPE_FILE)
    if why is not None:
        raise ForecastError([Problem(str(path), "", why)])
    if not Path(path).is_file():
        raise ForecastError([Problem(str(path), "", "recipe file not found", str(path))])
    recipe, problems = recipe_problems(Path(path), model)
    if problems or recipe is None:
        raise ForecastError(problems)
    return recipe


def load_plan(path: Path, model: PlantModel) -> Plan:
    """Read ``--plan FILE`` (see :class:`PlanFile`); ForecastError names file, key and value."""
    why = input_file_problem(Path(path), "a YAML plan file (name, time_base, table)")
    if why is not None:
        raise ForecastError([Problem(str(path), "--plan", why)])
    try:
        pf = parse(PlanFile, read_yaml(Path(path)), str(path))
    except ConfigError as exc:
        raise ForecastError(exc.problems) from exc
    recipe = Recipe(interpolation=pf.interpolation, table=pf.table)
    problems = table_problems(recipe, model, str(path), "")
    if problems:
        raise ForecastError(problems)
    return Plan(pf.name, "table", recipe, pf.time_base)


def default_plans(
    model: PlantModel,
    section: ForecastSection | None,
    site_path: Path,
    plan_file: Path | None = None,
) -> list[Plan]:
    """``mpc``, ``recipe`` (the site's local recipe, if its forecast ``section`` names one;
    relative to ``site_path``, the site file) and the plan file's plan."""
    plans = [Plan("mpc", "mpc")]
    if section is not None and section.local_recipe is not None:
        path = resolve(site_path, section.local_recipe)
        why = input_file_problem(path, RECIPE_FILE)
        if why is not None:
            where, value = "forecast.local_recipe", section.local_recipe
            raise ForecastError([Problem(str(site_path), where, f"{path} {why}", value)])
        if not path.is_file():
            why = f"file not found: {path}"
            where = "forecast.local_recipe"
            raise ForecastError([Problem(str(site_path), where, why, section.local_recipe)])
        plans.append(Plan("recipe", "recipe", load_recipe(path, model)))
    if plan_file is not None:
        plan = load_plan(plan_file, model)
        taken = [p.name for p in plans]
        if plan.name in taken:
            raise ForecastError(
                [Problem(str(plan_file), "name", f"taken by a built-in plan {taken}", plan.name)]
            )
        plans.append(plan)
    return plans


# ---------------------------------------------------------------------- the historian
@dataclass(frozen=True)
class HistorianStart:
    """Where a forecast starts in a historian: the start, the cycle it was taken from, and
    ``notes`` for the console (newer cycles skipped and why; an estimate of unknown status)."""

    start: ForecastStart
    record: CycleRecord
    notes: tuple[str, ...] = ()


@dataclass
class _Scan:
    """The newest usable cycle of a run, and the newer ones passed over."""

    record: CycleRecord | None = None
    newest: CycleRecord | None = None
    failed: list[CycleRecord] = field(default_factory=list)
    no_estimate: int = 0


def _usable(record: CycleRecord) -> bool:
    """A cycle a forecast may start from: it has an estimate, not known to have failed."""
    return bool(record.estimates) and record.estimate_ok is not False


def _last_estimated(hist: SqliteHistorian, run_id: str) -> _Scan:
    """The newest cycle of ``run_id`` with an estimate that did not fail, and the newer cycles
    passed over (reading back in growing chunks)."""
    limit = 64
    while True:
        cycles = hist.cycles(run_id, limit=limit)
        scan = _Scan(newest=cycles[-1] if cycles else None)
        for record in reversed(cycles):
            if _usable(record):
                scan.record = record
                return scan
            if record.estimates:
                scan.failed.append(record)
            else:
                scan.no_estimate += 1
        if len(cycles) < limit:
            return scan
        limit *= 4


def _skipped(scan: _Scan, unit: str, timebase: TimeBase) -> str:
    """Why the cycles newer than the start were passed over."""
    parts = []
    if scan.failed:
        newest = scan.failed[0]
        reason = newest.estimate_reason or "no reason recorded"
        parts.append(
            f"{len(scan.failed)} with a failed estimate (newest: cycle {newest.cycle} at "
            f"t = {timebase.model_time(newest.t):.4g} {unit}, state {newest.state}: {reason})"
        )
    if scan.no_estimate:
        parts.append(f"{scan.no_estimate} without an estimate")
    return " and ".join(parts)


def _input_value(binding: Binding, record: CycleRecord, name: str) -> float | None:
    """The input in place from the record's time on: the setpoint written in that cycle (closed
    loop), else its PV tag, else its setpoint tag as read (both of good quality)."""
    candidates = []
    pv = binding.working_setpoint_tag(name)
    if pv is not None:
        candidates.append(record.measurements.get(pv))
    sp = binding.setpoint_tag(name)
    if sp is not None and sp in record.setpoints:
        return float(record.setpoints[sp])
    if sp is not None:
        candidates.append(record.measurements.get(sp))
    for m in candidates:
        if m is not None and m.quality == "good" and math.isfinite(m.value):
            return float(m.value)
    return None


def start_from_historian(
    model: PlantModel, tags: TagMap, historian_path: Path, run_id: str | None = None
) -> ForecastStart:
    """The start of a forecast from a runtime's historian: :func:`read_start`'s start."""
    return read_start(model, tags, historian_path, run_id).start


def read_start(
    model: PlantModel, tags: TagMap, historian_path: Path, run_id: str | None = None
) -> HistorianStart:
    """The start of a forecast from a runtime's historian (a running one is fine: read only).

    Takes the newest cycle of ``run_id`` (default: the newest run) with an estimate that did
    not fail (``estimate_ok`` False: the estimator failed and held its last states, which
    must not be acted on; a file that did not record it counts as unknown, is used and said
    so in the notes): states and estimated parameters from it (the others from the plant
    file), inputs in place (the setpoints written in that cycle, else the input PV tags of
    the tag map ``tags``, else the setpoint tags as read), ``t``: ``record.t`` (process
    seconds since the run started) as model time. Newer cycles passed over are said in the
    notes. Raises ForecastError naming the file, the key (``runs.<id>.cycles.<n>.<column>``)
    and the value: a file that cannot be read, a malformed run or cycle, no usable cycle, a
    value that is not a finite number.
    """
    path = Path(historian_path)
    src = str(path)
    why = input_file_problem(path, HISTORIAN_FILE)
    if why is not None:
        raise ForecastError([Problem(src, "", why)])
    if not path.is_file():
        raise ForecastError([Problem(src, "", "historian file not found", src)])
    try:
        hist = SqliteHistorian(path, read_only=True)  # a forecast never changes the file
    except HistorianError as exc:
        raise ForecastError([Problem(src, "", f"cannot open the historian: {exc}", src)]) from exc
    try:
        with hist:
            info, scan = _read_run(hist, model, src, run_id)
    except HistorianRecordError as exc:
        raise ForecastError([exc.problem(src)]) from exc
    except HistorianError as exc:
        raise ForecastError([Problem(src, "", f"cannot read the historian: {exc}", src)]) from exc
    record = scan.record
    timebase = TimeBase.of(model)
    unit = model.time_unit
    if record is None:
        where = f"runs.{info.run_id}.cycles"
        if not scan.failed:
            raise ForecastError([Problem(src, where, "no cycle with an estimate yet", None)])
        why = f"no cycle with a usable estimate: {_skipped(scan, unit, timebase)}"
        raise ForecastError([Problem(src, where, why, None)])
    start = _start_from_record(model, tags, record, src)
    notes = []
    if scan.newest is not None and scan.newest is not record:
        notes.append(
            f"starting from cycle {record.cycle} at t = {start.t:.4g} {unit}, not from the "
            f"newest cycle {scan.newest.cycle} at t = {timebase.model_time(scan.newest.t):.4g} "
            f"{unit}: the {len(scan.failed) + scan.no_estimate} newer cycle(s) were skipped, "
            f"{_skipped(scan, unit, timebase)}"
        )
    if record.estimate_ok is None:
        notes.append(
            f"cycle {record.cycle}: the historian does not say whether this estimate was ok "
            "(written before estimate status was recorded); it is used as it is"
        )
    return HistorianStart(start, record, tuple(notes))


def _read_run(
    hist: SqliteHistorian, model: PlantModel, src: str, run_id: str | None
) -> tuple[RunInfo, _Scan]:
    """The run asked for (default: the newest) and its newest usable cycle."""
    runs = hist.runs()
    if not runs:
        raise ForecastError([Problem(src, "runs", "the historian holds no run", [])])
    known = [r.run_id for r in runs]
    if run_id is None:
        info = runs[-1]
    else:
        found = [r for r in runs if r.run_id == run_id]
        if not found:
            why = unknown_name("run", run_id, known)
            raise ForecastError([Problem(src, "run_id", why, run_id)])
        info = found[0]
    if info.model != model.name:
        why = f"the run is of another model than the site's {model.name!r}"
        raise ForecastError([Problem(src, f"runs.{info.run_id}.model", why, info.model)])
    return info, _last_estimated(hist, info.run_id)


def _finite_values(
    src: str, key: str, values: Mapping[str, float], names: Sequence[str]
) -> list[Problem]:
    """Problems for the ``names`` in ``values`` that are not finite numbers."""
    problems = []
    for n in names:
        v = values.get(n)
        if v is not None and not (isinstance(v, int | float) and math.isfinite(v)):
            problems.append(Problem(src, f"{key}.{n}", "not a finite number", v))
    return problems


def _start_from_record(
    model: PlantModel, tags: TagMap, record: CycleRecord, src: str
) -> ForecastStart:
    key = f"runs.{record.run_id}.cycles.{record.cycle}"
    missing = [n for n in model.state_names if n not in record.estimates]
    if missing:
        raise ForecastError(
            [
                Problem(
                    src, f"{key}.estimates", f"missing state(s) {missing}", sorted(record.estimates)
                )
            ]
        )
    params = model.parameters
    estimated = [k for k in record.estimates if k in params or k in model.state_names]
    problems = _finite_values(src, f"{key}.estimates", record.estimates, estimated)
    if not math.isfinite(record.t):
        problems.append(Problem(src, f"{key}.t", "not a finite number", record.t))
    if problems:
        raise ForecastError(problems)
    binding = Binding.of(tags, model)
    inputs = {n: _input_value(binding, record, n) for n in model.input_names}
    unknown = [n for n, v in inputs.items() if v is None]
    if unknown:
        raise ForecastError(
            [
                Problem(
                    src,
                    f"{key}.measurements",
                    f"no good PV or setpoint of the input(s) {unknown}",
                    sorted(record.measurements),
                )
            ]
        )
    params.update({k: float(v) for k, v in record.estimates.items() if k in params})
    return ForecastStart(
        TimeBase.of(model).model_time(record.t),
        {n: float(record.estimates[n]) for n in model.state_names},
        params,
        {n: float(v) for n, v in inputs.items() if v is not None},
    )
