"""The process historian: what the controller saw, estimated, planned and wrote, every cycle.

One storage interface, :class:`Historian`, with two backends that pass the same tests:
:class:`MemoryHistorian` (offline runs and tests) and :class:`SqliteHistorian` (the edge PC;
WAL mode with ``synchronous=NORMAL``, about 93k rows/s here). Like the audit trail, the
historian is a sink the supervisor reports to; it never sits on the control path.

A run starts with a :class:`RunInfo` (software version, git commit, config hashes, model
version, Python and library versions); then one :class:`CycleRecord` per control cycle.
Records hold plain floats and strings so that both backends store the same JSON and return
records equal to the ones recorded. Retention is bounded: beyond ``max_cycles`` cycles (all
runs together) the oldest are deleted.

This module is the storage (the interface, both backends, queries and retention); the records
and their row format are in ``historian_records``, the run metadata (:class:`RunInfo`'s
versions and hashes) in ``historian_run``, the Parquet export in ``historian_export``.

Besides the cycles, a run has *events* (:class:`HistorianEvent`): what the twin noticed and a
person should see on a timeline, e.g. a drift alarm raised or cleared. Events are few and are
never pruned with the cycles. A cycle's ``monitor`` holds the twin's monitoring figures (drift
chart statistics, maintenance forecasts, published soft-sensor values).

Failures raise :class:`HistorianError` (storage errors are translated with ``from exc``).
"""

from __future__ import annotations

import dataclasses
import json
import sqlite3
import threading
from abc import ABC, abstractmethod
from collections import deque
from pathlib import Path
from types import TracebackType
from typing import Any

from controller.runtime.historian_batch import Batch, check_commit_every
from controller.runtime.historian_records import (
    COLUMNS,
    JSON_FIELDS,
    CycleRecord,
    HistorianError,
    HistorianEvent,
    Row,
    RunInfo,
    decode_cycle,
    dump_run,
    encode_cycle,
    load_run,
    utc_now,
)
from controller.runtime.sqlite_ro import AsIsReader

DEFAULT_MAX_CYCLES = 100_000


# ---------------------------------------------------------------------- the interface
class Historian(ABC):
    """Runs and their cycles. Thread-safe; a context manager that closes on exit."""

    def __init__(self, *, max_cycles: int = DEFAULT_MAX_CYCLES) -> None:
        if max_cycles < 1:
            raise HistorianError(f"max_cycles must be at least 1, got {max_cycles}")
        self.max_cycles = max_cycles
        self._lock = threading.Lock()
        #: run ids known to be stored (runs are never deleted): no lookup per cycle
        self._started: set[str] = set()

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
            self._store_run(info.run_id, dump_run(info))
            self._started.add(info.run_id)

    def record(self, cycle: CycleRecord) -> None:
        """Store one cycle of a started run, then drop the oldest beyond ``max_cycles``."""
        row = encode_cycle(cycle)
        with self._lock:
            if not self._run_started(cycle.run_id):
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
        return [decode_cycle(r) for r in rows]

    def runs(self) -> list[RunInfo]:
        """Every stored run, in the order they were started."""
        with self._lock:
            return [load_run(text) for text in self._load_runs()]

    def _run_started(self, run_id: str) -> bool:
        """Under the lock: is the run stored (asked of the backend once per run)?"""
        if run_id in self._started:
            return True
        if self._has_run(run_id):
            self._started.add(run_id)
            return True
        return False

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
            if not self._run_started(event.run_id):
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
        """Release the storage. Never raises, except a SQLite historian that batches its
        commits (``commit_every`` > 1) and cannot commit its last batch (HistorianError)."""

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
    {", ".join(f"{name} TEXT NOT NULL" for name in (*JSON_FIELDS, "safety"))},
    monitor TEXT NOT NULL DEFAULT '{{}}'
);
CREATE INDEX IF NOT EXISTS cycles_run_cycle ON cycles (run_id, cycle);
CREATE TABLE IF NOT EXISTS events (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    run_id TEXT NOT NULL, t REAL, utc TEXT NOT NULL, kind TEXT NOT NULL, key TEXT NOT NULL,
    message TEXT NOT NULL, detail TEXT NOT NULL
);
"""
#: The tables a file already holds (SQLite's own excluded): one query when it opens.
_TABLES = "SELECT name FROM sqlite_master WHERE type='table' AND name NOT LIKE 'sqlite%'"
_OWN = frozenset({"runs", "cycles", "events"})
_EVENT_COLUMNS = "run_id, t, utc, kind, key, message, detail"
# Delete every cycle older than the newest max_cycles. Ids only grow, one per insert
# (AUTOINCREMENT; a rolled-back insert rolls its id back too), so the newest max_cycles rows are
# the ids above lastrowid - max_cycles: a range delete on the primary key, whatever the table's
# size (an OFFSET scan cost grew with every retained row: 63 ms an insert at 10^5 rows).
_PRUNE = "DELETE FROM cycles WHERE id <= ?"
_INSERT_CYCLE = (
    f"INSERT INTO cycles ({', '.join(COLUMNS)}) VALUES ({', '.join('?' * len(COLUMNS))})"
)


#: the ``synchronous`` settings a historian file may be written with (see :class:`SqliteHistorian`)
HISTORIAN_SYNCHRONOUS = ("NORMAL", "OFF")


class SqliteHistorian(Historian):
    """One SQLite file in WAL mode, ``synchronous=NORMAL`` (fast; the audit trail is FULL).

    ``synchronous="OFF"``: nothing is ever fsynced, not even when the file is closed (SQLite's
    closing checkpoint copies the WAL into the file unsynced). A process that dies loses
    nothing the OS was handed; a power cut can lose or tear the file, also after a case's
    ``result.json`` was written (itself unsynced). For a fast-mode campaign case, whose other
    evidence besides the audit trail (recordings, result) is written unsynced too: a case
    that did not finish runs again from a clean folder, and a finished one is not protected
    against a power cut beyond its audit trail
    (:data:`hil.campaign.drive.HISTORIAN_SYNCHRONOUS`); the historian's two fsyncs at close
    were about a fifth of a freeze-dryer case's SQLite cost.

    ``commit_every`` > 1: cycles are committed in batches of that many (and the open batch
    at :meth:`close` or :meth:`flush`), not one transaction each: a commit rewrites the
    table's last page and its index's, and batching cut a CSTR cycle's historian time from
    0.125-0.130 to 0.088 ms (B6). A failure inside a batch rolls the whole batch back, and
    the error counts the cycles lost with it (:mod:`controller.runtime.historian_batch`).
    Until its batch commits, a cycle is seen by this object's queries but not by other
    connections, and a process that dies loses it; meanwhile the file's write lock is held.
    For a fast-mode campaign case (:data:`hil.campaign.drive.HISTORIAN_COMMIT_EVERY`), whose
    unfinished run is rerun from a fresh historian; never for a historian read live.

    Old cycles are deleted only by :meth:`record`: opening a file to read or export it
    never deletes anything, whatever ``max_cycles`` is.
    """

    _reader: AsIsReader | None = None  # read_only: queries made again if a writer appears

    def __init__(
        self,
        path: Path,
        *,
        max_cycles: int = DEFAULT_MAX_CYCLES,
        synchronous: str = "NORMAL",
        commit_every: int = 1,
        read_only: bool = False,
    ) -> None:
        super().__init__(max_cycles=max_cycles)
        if read_only:
            self._open_read_only(Path(path))
            return
        if synchronous not in HISTORIAN_SYNCHRONOUS:
            raise HistorianError(
                f"historian {path}: synchronous {synchronous!r} is not allowed; allowed: "
                f"{', '.join(HISTORIAN_SYNCHRONOUS)}"
            )
        check_commit_every(commit_every, f"historian {path}")
        self.path = Path(path)
        self.synchronous = synchronous
        self.commit_every = commit_every
        self._closed = False
        db: sqlite3.Connection | None = None
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._db = db = sqlite3.connect(
                self.path, isolation_level=None, check_same_thread=False
            )
            tables = {r[0] for r in db.execute(_TABLES)}
            if tables and tables.isdisjoint(_OWN):  # another kind of database: left untouched
                db.close()
                raise HistorianError(
                    f"{self.path} is not a historian: it holds other tables "
                    f"({', '.join(sorted(tables))}), e.g. an audit trail; allowed: a historian "
                    "or a new file of its own (not the --audit file)"
                )
            # synchronous before the switch to WAL: at SQLite's default (FULL) the switch
            # itself is fsynced. The schema is one transaction (one commit, not one a table).
            self._db.execute(f"PRAGMA synchronous={synchronous}")
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.executescript(f"BEGIN;{_SCHEMA}COMMIT;")
            columns = {r[1] for r in self._db.execute("PRAGMA table_info(cycles)")}
            if "monitor" not in columns:  # a file written before cycles had monitor figures
                self._db.execute("ALTER TABLE cycles ADD COLUMN monitor TEXT NOT NULL DEFAULT '{}'")
            self._monitor_column = "monitor"
            #: the id the next insert is expected to get (ids only grow, one per insert)
            self._next_id = self._db.execute(
                "SELECT coalesce(max(id), 0) + 1 FROM cycles"
            ).fetchone()[0]
        except (OSError, sqlite3.Error) as exc:
            if db is not None:
                db.close()  # rolls back a schema transaction left open: no lock held
            raise HistorianError(f"cannot open the historian {self.path}: {exc}") from exc
        # a lost batch may have held a run's row: the runs known to be stored are asked again
        lost = self._started.clear
        #: the open transaction of batched commits (None: each cycle commits alone)
        self._batch = Batch(db, self.path, commit_every, lost) if commit_every > 1 else None

    def _open_read_only(self, path: Path) -> None:
        """``read_only``: the file as it is (:class:`AsIsReader`): nothing created, changed,
        converted or stored (an export must not touch the evidence it reads), a live writer's
        rows read; a file that is not a historian (no ``runs``, ``cycles``) is a HistorianError."""
        self.path, self.synchronous, self.commit_every = path, "OFF", 1
        self._closed, self._batch, self._next_id = False, None, 0
        if not path.is_file():
            raise HistorianError(f"no historian database at {path} (no such file)")
        try:
            self._reader = reader = AsIsReader(path, check_same_thread=False)
        except sqlite3.Error as exc:
            raise HistorianError(f"cannot read the historian {path}: {exc}") from exc
        self._db = reader.conn
        tables, columns = set(reader.tables), reader.tables.get("cycles", set())
        missing = sorted({"runs", "cycles", "events"} - tables)
        #: a file written before cycles had monitor figures: read them as none (not added)
        self._monitor_column = "monitor" if "monitor" in columns else "'{}' AS monitor"
        if missing:
            reader.close()
            what = f"no {', '.join(missing)} table"
            raise HistorianError(
                f"{path} is not a PharmaTwin historian database that can be read as it is "
                f"({what}; tables found: {', '.join(sorted(tables)) or 'none'}): give the "
                "historian file of a run (runtime.historian in the site file)"
            )

    def close(self) -> None:
        """Commit the open batch (``commit_every`` > 1) and close; a second call does
        nothing. Raises HistorianError when that last commit fails (the connection is closed
        all the same, and the error counts what was lost); never otherwise."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            try:
                if self._batch is not None:
                    self._batch.commit()
            finally:
                (self._reader or self._db).close()

    def flush(self) -> None:
        """Commit the open batch now (nothing to do with ``commit_every`` 1). Raises
        HistorianError when the commit fails (the error counts what was lost)."""
        with self._lock:
            self._check_open()
            if self._batch is not None:
                self._batch.commit()

    def _check_open(self, store: str = "") -> None:  # ``store``: what is to be stored, if any
        if self._closed:
            raise HistorianError(f"historian {self.path} is closed")
        if store and self._reader is not None:
            raise HistorianError(f"historian {self.path} is opened read-only: cannot {store}")

    def _run(self, what: str, sql: str, *params: Any) -> list[Any]:
        self._check_open()
        try:
            if self._reader is not None:  # read-only: made again if a writer appears
                return self._reader.query(sql, params)
            return self._db.execute(sql, params).fetchall()
        except sqlite3.Error as exc:
            raise HistorianError(f"historian {self.path}: cannot {what}: {exc}") from exc

    def _has_run(self, run_id: str) -> bool:
        return bool(self._run("read runs", "SELECT 1 FROM runs WHERE run_id = ?", run_id))

    def _store_run(self, run_id: str, info: str) -> None:
        self._check_open("store a run")
        sql = "INSERT INTO runs (run_id, info) VALUES (?, ?)"
        if self._batch is not None:
            self._batch.write(
                "store a run", "record", lambda: self._db.execute(sql, (run_id, info))
            )
            return
        self._run("store a run", sql, run_id, info)

    def _store_cycle(self, row: Row) -> None:
        self._check_open("store a cycle")
        if self._batch is not None:
            self._batch.write("store a cycle", "cycle", lambda: self._insert_and_prune(row))
            if self._batch.due:
                self._batch.commit()
            return
        # Until an id above ``max_cycles`` is due nothing can be pruned: the insert commits
        # alone (autocommit, two statements fewer). Then the insert and its prune commit together.
        if self._next_id <= self.max_cycles:
            self._insert_alone(row)
            return
        try:
            self._db.execute("BEGIN")
            newest = self._db.execute(_INSERT_CYCLE, row).lastrowid or 0
            if newest > self.max_cycles:  # ids start at 1: below this none is old enough
                self._db.execute(_PRUNE, (newest - self.max_cycles,))
            self._db.execute("COMMIT")
            self._next_id = newest + 1
        except sqlite3.Error as exc:
            if self._db.in_transaction:
                self._db.execute("ROLLBACK")
            raise HistorianError(f"historian {self.path}: cannot store a cycle: {exc}") from exc

    def _insert_and_prune(self, row: Row) -> None:
        """In the open batch: the insert, and the prune when an id above ``max_cycles`` came
        out (raises sqlite3.Error; the batch then rolls back whole)."""
        newest = self._db.execute(_INSERT_CYCLE, row).lastrowid or 0
        if newest > self.max_cycles:
            self._db.execute(_PRUNE, (newest - self.max_cycles,))
        self._next_id = newest + 1

    def _insert_alone(self, row: Row) -> None:
        """One insert in its own transaction; a prune after it if its id came out above
        ``max_cycles`` after all (another writer of the file took ids meanwhile)."""
        try:
            newest = self._db.execute(_INSERT_CYCLE, row).lastrowid or 0
            self._next_id = newest + 1
            if newest > self.max_cycles:
                self._db.execute(_PRUNE, (newest - self.max_cycles,))
        except sqlite3.Error as exc:
            raise HistorianError(f"historian {self.path}: cannot store a cycle: {exc}") from exc

    def _load_cycles(self, run_id: str | None, limit: int | None) -> list[Row]:
        where = "" if run_id is None else "WHERE run_id = ?"
        params = () if run_id is None else (run_id,)
        columns = [self._monitor_column if c == "monitor" else c for c in COLUMNS]
        sql = (
            f"SELECT {', '.join(columns)} FROM (SELECT * FROM cycles {where} "
            "ORDER BY id DESC LIMIT ?) ORDER BY id"
        )
        return [
            tuple(r) for r in self._run("read cycles", sql, *params, -1 if limit is None else limit)
        ]

    def _load_runs(self) -> list[str]:
        return [r[0] for r in self._run("read runs", "SELECT info FROM runs ORDER BY seq")]

    def _store_event(self, row: Row) -> None:
        self._check_open("store an event")
        sql = f"INSERT INTO events ({_EVENT_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?)"
        if self._batch is not None:
            self._batch.write("store an event", "record", lambda: self._db.execute(sql, row))
            return
        self._run("store an event", sql, *row)

    def _load_events(self) -> list[Row]:
        sql = f"SELECT {_EVENT_COLUMNS} FROM events ORDER BY id"
        return [tuple(r) for r in self._run("read events", sql)]


def open_historian(
    path: Path | None,
    max_cycles: int = DEFAULT_MAX_CYCLES,
    synchronous: str = "NORMAL",
    commit_every: int = 1,
) -> Historian:
    """A SQLite historian at ``path`` (``synchronous``, ``commit_every``: see
    :class:`SqliteHistorian`), or a memory one when ``path`` is None."""
    if path is None:
        check_commit_every(commit_every, "in-memory historian")
        return MemoryHistorian(max_cycles=max_cycles)
    return SqliteHistorian(
        path, max_cycles=max_cycles, synchronous=synchronous, commit_every=commit_every
    )
