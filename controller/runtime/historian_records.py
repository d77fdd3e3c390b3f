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
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, NamedTuple

import numpy as np

from controller.errors import PharmaTwinError
from controller.ports.base import Quality

if TYPE_CHECKING:
    from controller.core.estimate import Estimate
    from controller.core.mpc import Decision
    from controller.core.safety import SafetyOutcome
    from controller.ports.base import Snapshot

DEFAULT_PREDICT_STEPS = 5


class HistorianError(PharmaTwinError):
    """The historian cannot be opened, written, read or exported."""


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
    interventions (name, proposed, applied, reason, detail).
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


def encode_cycle(c: CycleRecord) -> Row:
    """The row every backend stores for a cycle (its dict fields as JSON text)."""
    encode = _COMPACT
    return (
        c.run_id,
        int(c.cycle),
        float(c.t),
        c.utc,
        c.state,
        int(c.wrote),
        *[encode(getattr(c, name)) for name in _BLOBS],
    )


def decode_cycle(row: Row) -> CycleRecord:
    """The cycle a stored row holds (the inverse of :func:`encode_cycle`)."""
    values = dict(zip(COLUMNS, row, strict=True))
    for name in (*JSON_FIELDS, "safety", "monitor"):
        values[name] = json.loads(values[name])
    values["measurements"] = {k: Measurement(*m) for k, m in values["measurements"].items()}
    values["wrote"] = bool(values["wrote"])
    values["t"] = float("nan") if values["t"] is None else values["t"]  # SQLite: NaN -> NULL
    return CycleRecord(**values)


def dump_run(info: RunInfo) -> str:
    return json.dumps(dataclasses.asdict(info), sort_keys=True)


def load_run(text: str) -> RunInfo:
    return RunInfo(**json.loads(text))
