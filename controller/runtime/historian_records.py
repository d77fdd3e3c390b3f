"""What the historian stores: runs, cycles and events, as plain records, and their encoding.

A cycle is a :class:`CycleRecord` of plain floats and strings (:func:`cycle_record` flattens one
cycle's objects into one), so that every backend stores the same JSON and returns records
equal to the ones recorded; :func:`encode_cycle` and :func:`decode_cycle` are that row format.
A run starts with a :class:`RunInfo` (see :mod:`controller.runtime.historian_run`); events
(:class:`HistorianEvent`) are what the twin noticed and a person should see on a timeline.
Failures raise :class:`HistorianError`.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, NamedTuple

import numpy as np

from controller.errors import PharmaTwinError, Problem, brief
from controller.ports.base import Quality

if TYPE_CHECKING:
    from controller.core.estimate import Estimate
    from controller.core.mpc import Decision
    from controller.core.safety import SafetyOutcome
    from controller.ports.base import Snapshot

DEFAULT_PREDICT_STEPS = 5


class HistorianError(PharmaTwinError):
    """The historian cannot be opened, written, read or exported."""


class HistorianRecordError(HistorianError):
    """A stored run or cycle is malformed: ``location`` (``runs.<id>.cycles.<n>.<column>``
    or ``runs.<id>.info``), what is wrong and the bad ``value``; whoever knows the file adds it
    (see :meth:`problem`)."""

    def __init__(self, location: str, message: str, value: object) -> None:
        self.location, self.message, self.value = location, message, value
        super().__init__(f"{location}: {message} (got {brief(value)})")

    def problem(self, file: str) -> Problem:
        """This error as a :class:`~controller.errors.Problem` of ``file``."""
        return Problem(file, self.location, self.message, self.value)


class Measurement(NamedTuple):
    """One measured tag as stored: engineering value, quality name, source time [s]."""

    value: float
    quality: str
    source_time: float


@dataclass(frozen=True)
class RunInfo:
    """What was running: enough to reproduce a run (21 CFR Part 11, GAMP 5).

    ``config_hashes`` maps each config file name to the SHA-256 of its bytes (as
    ``sha256sum`` prints it); ``model_version`` is :func:`model_version` of the plant model.
    """

    run_id: str
    started_utc: str
    site: str
    mode: str
    software_version: str
    git_commit: str | None
    config_hashes: dict[str, str]
    model: str
    model_version: str
    python_version: str
    library_versions: dict[str, str]


@dataclass(frozen=True)
class CycleRecord:
    """One control cycle. ``t`` is process time [s]; ``utc`` an ISO 8601 time.

    ``measurements``: tag -> (value, quality, source time [s]). ``estimates`` and
    ``estimate_std``: states and estimated parameters. ``predicted``: name -> the first
    steps of the planned trajectory (states from the current time on, then inputs).
    ``decision``: the MPC's inputs, status, return_status, iterations, solve_time_s and
    objective. ``setpoints``: what was written (empty when nothing was). ``safety``: the
    interventions (name, proposed, applied, reason, detail). ``estimate_ok``: whether the
    estimator succeeded this cycle (None: unknown, no estimate or a file written before this
    was recorded); ``estimate_reason`` why not. They are stored inside the ``decision`` JSON
    under the key ``estimate`` (no new column: see :func:`encode_cycle`).
    """

    run_id: str
    cycle: int
    t: float
    utc: str
    state: str
    measurements: dict[str, Measurement] = field(default_factory=dict)
    estimates: dict[str, float] = field(default_factory=dict)
    estimate_std: dict[str, float] = field(default_factory=dict)
    predicted: dict[str, list[float]] = field(default_factory=dict)
    decision: dict[str, Any] = field(default_factory=dict)
    setpoints: dict[str, float] = field(default_factory=dict)
    safety: list[dict[str, Any]] = field(default_factory=list)
    wrote: bool = False
    monitor: dict[str, float] = field(default_factory=dict)
    estimate_ok: bool | None = None
    estimate_reason: str = ""


@dataclass(frozen=True)
class HistorianEvent:
    """Something the twin noticed during a run (``t`` process time [s], ``utc`` ISO 8601).

    ``kind`` is a dotted category (``drift.alarm``, ``drift.clear``, ...), ``key`` what it is
    about (e.g. a chart key), ``message`` one line for a person, ``detail`` plain JSON data.
    """

    run_id: str
    t: float
    kind: str
    key: str
    message: str
    detail: dict[str, Any] = field(default_factory=dict)
    utc: str = ""


def utc_now() -> str:
    """Now, as an ISO 8601 UTC time to the microsecond."""
    return dt.datetime.now(dt.UTC).isoformat(timespec="microseconds")


def cycle_record(
    run_id: str,
    cycle: int,
    *,
    t: float,
    state: str,
    snapshot: Snapshot | None = None,
    estimate: Estimate | None = None,
    decision: Decision | None = None,
    outcome: SafetyOutcome | None = None,
    setpoints: Mapping[str, float] | None = None,
    wrote: bool = False,
    utc: str | None = None,
    predict_steps: int = DEFAULT_PREDICT_STEPS,
    monitor: Mapping[str, float] | None = None,
) -> CycleRecord:
    """Flatten one cycle's objects into a :class:`CycleRecord`.

    ``predicted`` keeps states at steps 0..predict_steps and inputs at 0..predict_steps-1.
    """
    est, std = _estimates(estimate)
    predicted, solve = _plan(decision, predict_steps)
    return CycleRecord(
        run_id=run_id,
        cycle=cycle,
        t=float(t),
        utc=utc or utc_now(),
        state=state,
        measurements=_measurements(snapshot),
        estimates={k: float(v) for k, v in est.items()},
        estimate_std={k: float(v) for k, v in std.items()},
        predicted=predicted,
        decision=solve,
        setpoints={k: float(v) for k, v in (setpoints or {}).items()},
        safety=_interventions(outcome),
        wrote=wrote,
        monitor={k: float(v) for k, v in (monitor or {}).items()},
        estimate_ok=None if estimate is None else bool(estimate.ok),
        estimate_reason="" if estimate is None else str(estimate.reason),
    )


#: each quality's name as stored (an enum's ``.value`` is a slow property: 22 tags a cycle)
_QUALITY_NAME = {q: q.value for q in Quality}


def _measurements(snapshot: Snapshot | None) -> dict[str, Measurement]:
    name = _QUALITY_NAME
    return {
        tag: Measurement(
            float(v.value), name.get(v.quality) or v.quality.value, float(v.source_time)
        )
        for tag, v in (snapshot.values.items() if snapshot else ())
    }


def _estimates(estimate: Estimate | None) -> tuple[dict[str, float], dict[str, float]]:
    """The states and the estimated parameters, and their standard deviations."""
    if estimate is None:
        return {}, {}
    estimated = estimate.parameter_std
    est = {**estimate.states, **{p: estimate.parameters[p] for p in estimated}}
    return est, {**estimate.state_std, **estimated}


def _plan(
    decision: Decision | None, predict_steps: int
) -> tuple[dict[str, list[float]], dict[str, Any]]:
    """The first steps of the planned trajectory, and the solve's figures."""
    if decision is None:
        return {}, {}
    # ``asarray(..., float).tolist()``: the floats ``[float(v) for v in ...]`` gives, made in C
    # (some 120 a cycle; numpy scalars one by one cost ~20 us)
    predicted: dict[str, list[float]] = {}
    for name, arr in decision.predicted_states.items():
        predicted[name] = np.asarray(arr[: predict_steps + 1], dtype=float).tolist()
    for name, arr in decision.predicted_inputs.items():
        predicted[name] = np.asarray(arr[:predict_steps], dtype=float).tolist()
    solve = {
        "inputs": {k: float(v) for k, v in decision.inputs.items()},
        "status": decision.status.value,
        "return_status": decision.return_status,
        "iterations": int(decision.iterations),
        "solve_time_s": float(decision.solve_time_s),
        "objective": float(decision.objective),
    }
    return predicted, solve


def _interventions(outcome: SafetyOutcome | None) -> list[dict[str, Any]]:
    return [
        {
            "name": i.name,
            "proposed": i.proposed,
            "applied": i.applied,
            "reason": i.reason.value,
            "detail": i.detail,
        }
        for i in (outcome.interventions if outcome else ())
    ]


# ---------------------------------------------------------------------- encoding
# Both backends store a cycle as this row; the dict fields as JSON text.
SCALARS = ("run_id", "cycle", "t", "utc", "state", "wrote")
JSON_FIELDS = ("measurements", "estimates", "estimate_std", "predicted", "decision", "setpoints")
COLUMNS = (*SCALARS, *JSON_FIELDS, "safety", "monitor")
Row = tuple[Any, ...]


_BLOBS = (*JSON_FIELDS, "safety", "monitor")


def _compact_encoder() -> Callable[[Any], str]:
    """``json.dumps(x, separators=(",", ":"))`` of a record's fields: the same text.

    ``JSONEncoder.encode`` builds a C encoder for every call (eight a cycle); this one is
    built once. It skips the circular-reference check (``check_circular=False``): a record
    holds plain numbers, strings, lists and dicts (:func:`cycle_record` builds them), never
    a cycle. Without the C accelerator, the plain encoder."""
    compact = json.JSONEncoder(separators=(",", ":"))
    make = json.encoder.c_make_encoder  # type: ignore[attr-defined]
    if make is None:
        return compact.encode
    iterencode = make(
        None,  # markers: no circular check
        compact.default,
        json.encoder.encode_basestring_ascii,  # ensure_ascii, as json.dumps
        None,  # indent
        compact.key_separator,
        compact.item_separator,
        False,  # sort_keys
        False,  # skipkeys
        True,  # allow_nan (NaN, Infinity)
    )
    join = "".join

    def encode(o: Any) -> str:
        return join(iterencode(o, 0))

    return encode


_COMPACT = _compact_encoder()


#: the key of the ``decision`` JSON that holds the estimate's ok and reason (a record's
#: ``estimate_ok`` / ``estimate_reason``): a field added without a new column, so files
#: written before it stay readable (no key: unknown) and older readers ignore it
ESTIMATE_KEY = "estimate"


def encode_cycle(c: CycleRecord) -> Row:
    """The row every backend stores for a cycle (its dict fields as JSON text)."""
    encode = _COMPACT
    decision = c.decision
    if c.estimate_ok is not None:
        estimate: dict[str, Any] = {"ok": bool(c.estimate_ok)}
        if c.estimate_reason:
            estimate["reason"] = c.estimate_reason
        decision = {**decision, ESTIMATE_KEY: estimate}
    return (
        c.run_id,
        int(c.cycle),
        float(c.t),
        c.utc,
        c.state,
        int(c.wrote),
        *[encode(decision if name == "decision" else getattr(c, name)) for name in _BLOBS],
    )


def _bad(where: str, why: str, value: Any) -> HistorianRecordError:
    return HistorianRecordError(where, why, value)


def _text_dict(where: str, name: str, text: Any) -> Any:
    """The JSON a column holds, which must be an object (a list for ``safety``)."""
    try:
        value = json.loads(text)
    except (TypeError, ValueError) as exc:
        raise _bad(f"{where}.{name}", f"not JSON: {exc}", text) from exc
    kind, what = (list, "array") if name == "safety" else (dict, "object")
    if not isinstance(value, kind):
        raise _bad(f"{where}.{name}", f"not a JSON {what}", text)
    return value


#: the types of a JSON number as :func:`json.loads` gives them (not bool: ``type`` is exact)
_NUMBER = frozenset((int, float))


def _measurement(where: str, m: Any) -> Measurement:
    """A stored measurement that is not plain ``[number, str, number]``: null numbers read as
    NaN; anything else raises."""
    if not (isinstance(m, list) and len(m) == 3):
        raise _bad(where, "not a [value, quality, source time] triple", m)
    value, quality, source_time = m
    if not isinstance(quality, str):
        raise _bad(where, "quality is not a string", m)
    try:
        return Measurement(_number(value), quality, _number(source_time))
    except TypeError as exc:
        raise _bad(where, "value and source time must be numbers", m) from exc


def _measurements_of(where: str, raw: dict[str, Any]) -> dict[str, Measurement]:
    number = _NUMBER
    out = {}
    for k, m in raw.items():
        if (
            type(m) is list
            and len(m) == 3
            and type(m[0]) in number
            and type(m[1]) is str
            and type(m[2]) in number
        ):
            out[k] = Measurement(*m)  # the common case, checked fast (22 tags a cycle)
        else:
            out[k] = _measurement(f"{where}.measurements.{k}", m)
    return out


def _number(v: Any) -> float:
    """A stored number: a JSON number (NaN and infinities included), or null (NaN)."""
    if v is None:
        return math.nan
    if type(v) not in _NUMBER:
        raise TypeError(f"not a number: {v!r}")
    return float(v)


def _numbers(where: str, values: dict[str, Any]) -> dict[str, float]:
    number = _NUMBER
    if all(type(v) in number for v in values.values()):
        return values
    out = {}
    for k, v in values.items():
        try:
            out[k] = _number(v)
        except TypeError as exc:
            raise _bad(f"{where}.{k}", "not a number", v) from exc
    return out


def decode_cycle(row: Row) -> CycleRecord:
    """The cycle a stored row holds (the inverse of :func:`encode_cycle`).

    A malformed row raises HistorianError naming ``cycles.<n>.<column>`` (the row's cycle
    number, with its run) and the bad value; the caller adds the file."""
    values = dict(zip(COLUMNS, row, strict=True))
    where = f"runs.{values['run_id']}.cycles.{values['cycle']}"
    for name in (*JSON_FIELDS, "safety", "monitor"):
        values[name] = _text_dict(where, name, values[name])
    values["measurements"] = _measurements_of(where, values["measurements"])
    for name in ("estimates", "estimate_std", "setpoints", "monitor"):
        values[name] = _numbers(f"{where}.{name}", values[name])
    estimate = values["decision"].pop(ESTIMATE_KEY, None)
    if estimate is not None:
        ok = estimate.get("ok") if isinstance(estimate, dict) else None
        reason = estimate.get("reason", "") if isinstance(estimate, dict) else None
        if not isinstance(ok, bool) or not isinstance(reason, str):
            raise _bad(f"{where}.decision.{ESTIMATE_KEY}", "not {ok: bool, reason: str}", estimate)
        values["estimate_ok"], values["estimate_reason"] = ok, reason
    values["wrote"] = bool(values["wrote"])
    t = values["t"]
    if t is not None and (isinstance(t, bool) or not isinstance(t, int | float)):
        raise _bad(f"{where}.t", "not a number", t)
    values["t"] = math.nan if t is None else float(t)  # SQLite: NaN -> NULL
    return CycleRecord(**values)


def dump_run(info: RunInfo) -> str:
    return json.dumps(dataclasses.asdict(info), sort_keys=True)


_RUN_FIELDS = tuple(f.name for f in dataclasses.fields(RunInfo))


def load_run(text: str) -> RunInfo:
    """The run a stored ``runs.info`` holds; a malformed one raises HistorianError naming
    ``runs.<id>`` (``runs.?`` when even its id is unreadable) and the bad value."""
    try:
        data = json.loads(text)
    except (TypeError, ValueError) as exc:
        raise _bad("runs.?.info", f"not JSON: {exc}", text) from exc
    if not isinstance(data, dict):
        raise _bad("runs.?.info", "not a JSON object", text)
    where = f"runs.{data.get('run_id', '?')}.info"
    missing = [f for f in _RUN_FIELDS if f not in data]
    unknown = sorted(set(data) - set(_RUN_FIELDS))
    if missing or unknown:
        why = f"missing field(s) {missing}" if missing else f"unknown field(s) {unknown}"
        raise _bad(where, why, text)
    if not isinstance(data["run_id"], str) or not isinstance(data["model"], str):
        raise _bad(where, "run_id and model must be strings", text)
    return RunInfo(**data)
