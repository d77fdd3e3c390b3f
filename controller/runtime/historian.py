"""The process historian: what the controller saw, estimated, planned and wrote, every cycle.

One storage interface, :class:`Historian`, with two backends that pass the same tests:
:class:`MemoryHistorian` (offline runs and tests) and :class:`SqliteHistorian` (the edge PC;
WAL mode with ``synchronous=NORMAL``, about 93k rows/s here). Like the audit trail, the
historian is a sink the supervisor reports to; it never sits on the control path.

A run starts with a :class:`RunInfo` (software version, git commit, config hashes, model
version, Python and library versions); then one :class:`CycleRecord` per control cycle.
Records hold plain floats and strings so that both backends store the same JSON and return
records equal to the ones recorded. Retention is bounded: beyond ``max_cycles`` cycles (all
runs together) the oldest are deleted. :func:`export_parquet` writes one flat row per cycle.

Besides the cycles, a run has *events* (:class:`HistorianEvent`): what the twin noticed and a
person should see on a timeline, e.g. a drift alarm raised or cleared. Events are few and are
never pruned with the cycles. A cycle's ``monitor`` holds the twin's monitoring figures (drift
chart statistics, maintenance forecasts, published soft-sensor values).

Failures raise :class:`HistorianError` (storage errors are translated with ``from exc``).
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import hashlib
import inspect
import json
import platform
import re
import sqlite3
import subprocess
import threading
import uuid
from abc import ABC, abstractmethod
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any, NamedTuple

from controller.errors import PharmaTwinError
from controller.runtime.audit import software_version

if TYPE_CHECKING:
    from controller.core.estimator import Estimate
    from controller.core.mpc import Decision
    from controller.core.safety import SafetyOutcome
    from controller.ports.base import Snapshot
    from plant_models import PlantModel

DEFAULT_MAX_CYCLES = 100_000
DEFAULT_PREDICT_STEPS = 5
LIBRARIES = ("casadi", "do-mpc", "numpy", "pymodbus", "asyncua", "pydantic")
_GIT_COMMIT = re.compile(r"[0-9a-f]{40}|[0-9a-f]{64}")


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


# ---------------------------------------------------------------------- building records
def utc_now() -> str:
    return dt.datetime.now(dt.UTC).isoformat(timespec="microseconds")


def model_version(model: PlantModel) -> str:
    """SHA-256 over the model's declaration, source, parameter data and options.

    Changes when an equation, a variable, a bound, a unit or a parameter value changes.
    """
    ps = model.parameter_set
    try:
        source = inspect.getsource(type(model))
    except (OSError, TypeError):  # no source (frozen build): the declaration still counts
        source = ""
    body = {
        "name": model.name,
        "time_unit": model.time_unit,
        "variables": [dataclasses.asdict(v) for v in model.all_variables.values()],
        "parameters": [dataclasses.asdict(p) for p in ps.parameters.values()],
        "initial_state": dict(ps.initial_state),
        "nominal_inputs": dict(ps.nominal_inputs),
        "initial_algebraic": dict(ps.initial_algebraic),
        "smooth": model.smooth,
        "source": source,
    }
    text = json.dumps(body, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()


def git_commit(folder: Path | None = None) -> str | None:
    """``git rev-parse HEAD`` in ``folder`` (default: this package's), or None if unknown."""
    where = folder or Path(__file__).resolve().parent
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"],
            cwd=where,
            capture_output=True,
            text=True,
            timeout=5,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return out if _GIT_COMMIT.fullmatch(out) else None


def library_versions(names: Sequence[str] = LIBRARIES) -> dict[str, str]:
    out = {}
    for name in names:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = "not installed"
    return out


def run_info(
    site_name: str,
    mode: str,
    config_paths: Sequence[Path],
    model: PlantModel,
    *,
    run_id: str | None = None,
) -> RunInfo:
    """Fill a :class:`RunInfo` for a run starting now.

    Raises HistorianError when a config file cannot be read.
    """
    now = dt.datetime.now(dt.UTC)
    hashes: dict[str, str] = {}
    for p in map(Path, config_paths):
        try:
            digest = hashlib.sha256(p.read_bytes()).hexdigest()
        except OSError as exc:
            raise HistorianError(f"cannot hash the config file {p}: {exc}") from exc
        hashes[p.name if p.name not in hashes else str(p)] = digest
    return RunInfo(
        run_id=run_id or f"{now:%Y%m%dT%H%M%SZ}-{uuid.uuid4().hex[:8]}",
        started_utc=now.isoformat(timespec="microseconds"),
        site=site_name,
        mode=mode,
        software_version=software_version(),
        git_commit=git_commit(),
        config_hashes=hashes,
        model=model.name,
        model_version=model_version(model),
        python_version=f"{platform.python_implementation()} {platform.python_version()}",
        library_versions=library_versions(),
    )


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
    meas = {
        tag: Measurement(float(v.value), v.quality.value, float(v.source_time))
        for tag, v in (snapshot.values.items() if snapshot else ())
    }
    est: dict[str, float] = {}
    std: dict[str, float] = {}
    if estimate is not None:
        estimated = estimate.parameter_std
        est = {**estimate.states, **{p: estimate.parameters[p] for p in estimated}}
        std = {**estimate.state_std, **estimated}
    predicted: dict[str, list[float]] = {}
    solve: dict[str, Any] = {}
    if decision is not None:
        for name, arr in decision.predicted_states.items():
            predicted[name] = [float(v) for v in arr[: predict_steps + 1]]
        for name, arr in decision.predicted_inputs.items():
            predicted[name] = [float(v) for v in arr[:predict_steps]]
        solve = {
            "inputs": {k: float(v) for k, v in decision.inputs.items()},
            "status": decision.status.value,
            "return_status": decision.return_status,
            "iterations": int(decision.iterations),
            "solve_time_s": float(decision.solve_time_s),
            "objective": float(decision.objective),
        }
    interventions = [
        {
            "name": i.name,
            "proposed": i.proposed,
            "applied": i.applied,
            "reason": i.reason.value,
            "detail": i.detail,
        }
        for i in (outcome.interventions if outcome else ())
    ]
    return CycleRecord(
        run_id=run_id,
        cycle=cycle,
        t=float(t),
        utc=utc or utc_now(),
        state=state,
        measurements=meas,
        estimates={k: float(v) for k, v in est.items()},
        estimate_std={k: float(v) for k, v in std.items()},
        predicted=predicted,
        decision=solve,
        setpoints={k: float(v) for k, v in (setpoints or {}).items()},
        safety=interventions,
        wrote=wrote,
        monitor={k: float(v) for k, v in (monitor or {}).items()},
    )


# ---------------------------------------------------------------------- encoding
# Both backends store a cycle as this row; the dict fields as JSON text.
_SCALARS = ("run_id", "cycle", "t", "utc", "state", "wrote")
_JSON = ("measurements", "estimates", "estimate_std", "predicted", "decision", "setpoints")
_COLUMNS = (*_SCALARS, *_JSON, "safety", "monitor")
Row = tuple[Any, ...]


def _encode(c: CycleRecord) -> Row:
    scalars = (c.run_id, int(c.cycle), float(c.t), c.utc, c.state, int(c.wrote))
    blobs = (
        json.dumps(getattr(c, name), separators=(",", ":"))
        for name in (*_JSON, "safety", "monitor")
    )
    return (*scalars, *blobs)


def _decode(row: Row) -> CycleRecord:
    values = dict(zip(_COLUMNS, row, strict=True))
    for name in (*_JSON, "safety", "monitor"):
        values[name] = json.loads(values[name])
    values["measurements"] = {k: Measurement(*m) for k, m in values["measurements"].items()}
    values["wrote"] = bool(values["wrote"])
    values["t"] = float("nan") if values["t"] is None else values["t"]  # SQLite: NaN -> NULL
    return CycleRecord(**values)


def _dump_run(info: RunInfo) -> str:
    return json.dumps(dataclasses.asdict(info), sort_keys=True)


def _load_run(text: str) -> RunInfo:
    return RunInfo(**json.loads(text))


# ---------------------------------------------------------------------- the interface
class Historian(ABC):
    """Runs and their cycles. Thread-safe; a context manager that closes on exit."""

    def __init__(self, *, max_cycles: int = DEFAULT_MAX_CYCLES) -> None:
        if max_cycles < 1:
            raise HistorianError(f"max_cycles must be at least 1, got {max_cycles}")
        self.max_cycles = max_cycles
        self._lock = threading.Lock()

    def __enter__(self) -> Historian:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def start_run(self, info: RunInfo) -> None:
        """Store a run; raises HistorianError if its run_id is already stored."""
        with self._lock:
            if self._has_run(info.run_id):
                raise HistorianError(f"run {info.run_id!r} is already in the historian")
            self._store_run(info.run_id, _dump_run(info))

    def record(self, cycle: CycleRecord) -> None:
        """Store one cycle of a started run, then drop the oldest beyond ``max_cycles``."""
        row = _encode(cycle)
        with self._lock:
            if not self._has_run(cycle.run_id):
                raise HistorianError(
                    f"cycle {cycle.cycle} names run {cycle.run_id!r}, which was not started"
                )
            self._store_cycle(row)

    def cycles(self, run_id: str | None = None, limit: int | None = None) -> list[CycleRecord]:
        """The newest ``limit`` cycles (all when None) of one run or of all, oldest first."""
        if limit is not None and limit < 0:
            raise HistorianError(f"limit must not be negative, got {limit}")
        with self._lock:
            rows = self._load_cycles(run_id, limit)
        return [_decode(r) for r in rows]

    def runs(self) -> list[RunInfo]:
        """Every stored run, in the order they were started."""
        with self._lock:
            return [_load_run(text) for text in self._load_runs()]

    def record_event(self, event: HistorianEvent) -> None:
        """Store one event of a started run (stamped with the UTC time if it has none)."""
        if not event.utc:
            event = dataclasses.replace(event, utc=utc_now())
        row = (
            event.run_id,
            float(event.t),
            event.utc,
            event.kind,
            event.key,
            event.message,
            json.dumps(event.detail, separators=(",", ":"), default=str),
        )
        with self._lock:
            if not self._has_run(event.run_id):
                raise HistorianError(
                    f"event {event.kind!r} names run {event.run_id!r}, which was not started"
                )
            self._store_event(row)

    def events(self, run_id: str | None = None, kind: str | None = None) -> list[HistorianEvent]:
        """Events of one run (or all), optionally of one ``kind``, oldest first."""
        with self._lock:
            rows = self._load_events()
        out = []
        for run, t, utc, k, key, message, detail in rows:
            if (run_id is None or run == run_id) and (kind is None or k == kind):
                t = float("nan") if t is None else t
                out.append(HistorianEvent(run, t, k, key, message, json.loads(detail), utc))
        return out

    @abstractmethod
    def close(self) -> None:
        """Release the storage; never raises."""

    @abstractmethod
    def _has_run(self, run_id: str) -> bool: ...

    @abstractmethod
    def _store_run(self, run_id: str, info: str) -> None: ...

    @abstractmethod
    def _store_cycle(self, row: Row) -> None: ...

    @abstractmethod
    def _load_cycles(self, run_id: str | None, limit: int | None) -> list[Row]: ...

    @abstractmethod
    def _load_runs(self) -> list[str]: ...

    @abstractmethod
    def _store_event(self, row: Row) -> None: ...

    @abstractmethod
    def _load_events(self) -> list[Row]: ...


class MemoryHistorian(Historian):
    """In memory, for offline runs and tests: the same rows as SQLite, in a bounded deque."""

    def __init__(self, *, max_cycles: int = DEFAULT_MAX_CYCLES) -> None:
        super().__init__(max_cycles=max_cycles)
        self._runs: dict[str, str] = {}
        self._cycles: deque[Row] = deque(maxlen=max_cycles)
        self._events: list[Row] = []

    def close(self) -> None:
        pass

    def _has_run(self, run_id: str) -> bool:
        return run_id in self._runs

    def _store_run(self, run_id: str, info: str) -> None:
        self._runs[run_id] = info

    def _store_cycle(self, row: Row) -> None:
        self._cycles.append(row)

    def _load_cycles(self, run_id: str | None, limit: int | None) -> list[Row]:
        rows = [r for r in self._cycles if run_id is None or r[0] == run_id]
        return rows[len(rows) - limit :] if limit is not None else rows

    def _load_runs(self) -> list[str]:
        return list(self._runs.values())

    def _store_event(self, row: Row) -> None:
        self._events.append(row)

    def _load_events(self) -> list[Row]:
        return list(self._events)


_SCHEMA = f"""
CREATE TABLE IF NOT EXISTS runs (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    run_id TEXT NOT NULL UNIQUE,
    info TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS cycles (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    run_id TEXT NOT NULL, cycle INTEGER NOT NULL, t REAL, utc TEXT NOT NULL,
    state TEXT NOT NULL, wrote INTEGER NOT NULL,
    {", ".join(f"{name} TEXT NOT NULL" for name in (*_JSON, "safety"))},
    monitor TEXT NOT NULL DEFAULT '{{}}'
);
CREATE INDEX IF NOT EXISTS cycles_run_cycle ON cycles (run_id, cycle);
CREATE TABLE IF NOT EXISTS events (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    run_id TEXT NOT NULL, t REAL, utc TEXT NOT NULL, kind TEXT NOT NULL, key TEXT NOT NULL,
    message TEXT NOT NULL, detail TEXT NOT NULL
);
"""
_EVENT_COLUMNS = "run_id, t, utc, kind, key, message, detail"
# Delete every cycle older than the newest max_cycles. Ids only grow, one per insert
# (AUTOINCREMENT; a rolled-back insert rolls its id back too), so the newest max_cycles rows are
# the ids above lastrowid - max_cycles: a range delete on the primary key, whatever the table's
# size (an OFFSET scan cost grew with every retained row: 63 ms an insert at 10^5 rows).
_PRUNE = "DELETE FROM cycles WHERE id <= ?"


class SqliteHistorian(Historian):
    """One SQLite file in WAL mode, ``synchronous=NORMAL`` (fast; the audit trail is FULL).

    Old cycles are deleted only by :meth:`record`: opening a file to read or export it
    never deletes anything, whatever ``max_cycles`` is.
    """

    def __init__(self, path: Path, *, max_cycles: int = DEFAULT_MAX_CYCLES) -> None:
        super().__init__(max_cycles=max_cycles)
        self.path = Path(path)
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=NORMAL")
            self._db.executescript(_SCHEMA)
            columns = {r[1] for r in self._db.execute("PRAGMA table_info(cycles)")}
            if "monitor" not in columns:  # a file written before cycles had monitor figures
                self._db.execute("ALTER TABLE cycles ADD COLUMN monitor TEXT NOT NULL DEFAULT '{}'")
        except (OSError, sqlite3.Error) as exc:
            raise HistorianError(f"cannot open the historian {self.path}: {exc}") from exc

    def close(self) -> None:
        self._db.close()

    def _run(self, what: str, sql: str, *params: Any) -> list[Any]:
        try:
            return self._db.execute(sql, params).fetchall()
        except sqlite3.Error as exc:
            raise HistorianError(f"historian {self.path}: cannot {what}: {exc}") from exc

    def _has_run(self, run_id: str) -> bool:
        return bool(self._run("read runs", "SELECT 1 FROM runs WHERE run_id = ?", run_id))

    def _store_run(self, run_id: str, info: str) -> None:
        self._run("store a run", "INSERT INTO runs (run_id, info) VALUES (?, ?)", run_id, info)

    def _store_cycle(self, row: Row) -> None:
        insert = f"INSERT INTO cycles ({', '.join(_COLUMNS)}) VALUES ({', '.join('?' * len(row))})"
        try:
            self._db.execute("BEGIN")
            newest = self._db.execute(insert, row).lastrowid or 0
            self._db.execute(_PRUNE, (newest - self.max_cycles,))
            self._db.execute("COMMIT")
        except sqlite3.Error as exc:
            if self._db.in_transaction:
                self._db.execute("ROLLBACK")
            raise HistorianError(f"historian {self.path}: cannot store a cycle: {exc}") from exc

    def _load_cycles(self, run_id: str | None, limit: int | None) -> list[Row]:
        where = "" if run_id is None else "WHERE run_id = ?"
        params = () if run_id is None else (run_id,)
        sql = (
            f"SELECT {', '.join(_COLUMNS)} FROM (SELECT * FROM cycles {where} "
            "ORDER BY id DESC LIMIT ?) ORDER BY id"
        )
        return [
            tuple(r) for r in self._run("read cycles", sql, *params, -1 if limit is None else limit)
        ]

    def _load_runs(self) -> list[str]:
        return [r[0] for r in self._run("read runs", "SELECT info FROM runs ORDER BY seq")]

    def _store_event(self, row: Row) -> None:
        sql = f"INSERT INTO events ({_EVENT_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?)"
        self._run("store an event", sql, *row)

    def _load_events(self) -> list[Row]:
        sql = f"SELECT {_EVENT_COLUMNS} FROM events ORDER BY id"
        return [tuple(r) for r in self._run("read events", sql)]


def open_historian(path: Path | None, max_cycles: int = DEFAULT_MAX_CYCLES) -> Historian:
    """A SQLite historian at ``path``, or a memory one when ``path`` is None."""
    if path is None:
        return MemoryHistorian(max_cycles=max_cycles)
    return SqliteHistorian(path, max_cycles=max_cycles)


# ---------------------------------------------------------------------- Parquet export
# (column, Arrow type, value of one cycle) and (prefix, Arrow type, name -> value per cycle).
_Getter = Callable[[CycleRecord], Any]
_FIXED: tuple[tuple[str, str, _Getter], ...] = (
    ("run_id", "string", lambda c: c.run_id),
    ("cycle", "int64", lambda c: c.cycle),
    ("t", "float64", lambda c: c.t),
    ("utc", "string", lambda c: c.utc),
    ("state", "string", lambda c: c.state),
    ("wrote", "bool", lambda c: c.wrote),
    ("solve.status", "string", lambda c: c.decision.get("status")),
    ("solve.return_status", "string", lambda c: c.decision.get("return_status")),
    ("solve.iterations", "int64", lambda c: c.decision.get("iterations")),
    ("solve.time_s", "float64", lambda c: c.decision.get("solve_time_s")),
    ("solve.objective", "float64", lambda c: c.decision.get("objective")),
    ("interventions", "string", lambda c: json.dumps(c.safety)),
)
_GROUPS: tuple[tuple[str, str, _Getter], ...] = (
    ("meas.", "float64", lambda c: {k: m[0] for k, m in c.measurements.items()}),
    ("quality.", "string", lambda c: {k: m[1] for k, m in c.measurements.items()}),
    ("source_time.", "float64", lambda c: {k: m[2] for k, m in c.measurements.items()}),
    ("est.", "float64", lambda c: c.estimates),
    ("std.", "float64", lambda c: c.estimate_std),
    ("pred.", "list<float64>", lambda c: c.predicted),
    ("mpc.", "float64", lambda c: c.decision.get("inputs", {})),
    ("u.", "float64", lambda c: c.setpoints),
    ("safety.", "string", lambda c: {i["name"]: i["reason"] for i in c.safety}),
    ("mon.", "float64", lambda c: c.monitor),
)


def _flatten(cycles: Sequence[CycleRecord]) -> list[tuple[str, str, list[Any]]]:
    """(column, type, values): the fixed columns, then each group's names in first-seen order."""
    columns = [(name, kind, [get(c) for c in cycles]) for name, kind, get in _FIXED]
    for prefix, kind, get in _GROUPS:
        per_cycle = [get(c) for c in cycles]
        names = dict.fromkeys(n for values in per_cycle for n in values)
        columns += [(prefix + n, kind, [v.get(n) for v in per_cycle]) for n in names]
    return columns


def export_parquet(historian: Historian, path: Path, run_id: str | None = None) -> Path:
    """Write one flat row per cycle (of ``run_id``, or of all runs) to a Parquet file.

    The schema metadata holds ``pharmatwin.runs`` (a JSON list of the exported runs'
    :class:`RunInfo`), ``pharmatwin.run`` (the one RunInfo, when one run is exported) and
    the exporting software version. Raises HistorianError for an unknown run.
    """
    import pyarrow as pa
    import pyarrow.parquet as pq

    runs = [r for r in historian.runs() if run_id is None or r.run_id == run_id]
    if run_id is not None and not runs:
        known = [r.run_id for r in historian.runs()]
        raise HistorianError(f"no run {run_id!r} in the historian; known: {known}")
    types = {
        "string": pa.string(),
        "int64": pa.int64(),
        "float64": pa.float64(),
        "bool": pa.bool_(),
        "list<float64>": pa.list_(pa.float64()),
    }
    columns = _flatten(historian.cycles(run_id))
    meta = {
        "pharmatwin.runs": json.dumps([dataclasses.asdict(r) for r in runs]),
        "pharmatwin.exported_by": software_version(),
        "pharmatwin.exported_utc": utc_now(),
    }
    if len(runs) == 1:
        meta["pharmatwin.run"] = json.dumps(dataclasses.asdict(runs[0]))
    path = Path(path)
    try:
        table = pa.table(
            {name: pa.array(values, type=types[kind]) for name, kind, values in columns},
        ).replace_schema_metadata(meta)
        path.parent.mkdir(parents=True, exist_ok=True)
        pq.write_table(table, path)
    except (OSError, pa.ArrowException) as exc:
        raise HistorianError(f"cannot export the historian to {path}: {exc}") from exc
    return path


def read_run_metadata(path: Path) -> list[RunInfo]:
    """The :class:`RunInfo` records stored in a Parquet export's schema metadata."""
    import pyarrow.parquet as pq

    meta = pq.read_schema(path).metadata or {}
    return [RunInfo(**r) for r in json.loads(meta.get(b"pharmatwin.runs", b"[]"))]
