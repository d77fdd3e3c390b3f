"""An append-only, tamper-evident audit trail in SQLite (21 CFR Part 11, EU GMP Annex 11).

Every record says who, what, when (UTC), the old and new value and why, with the software
version and the hash of the configuration in force. Records are hash-chained (each hash
covers the previous one); triggers refuse UPDATE and DELETE; :meth:`AuditTrail.verify`
recomputes the chain and names the first record that does not match. The database runs in
WAL mode with ``synchronous=FULL``, so a record is on disk before the call returns: callers
write the audit record *before* they send a value to a PLC.
"""

from __future__ import annotations

import datetime as dt
import functools
import hashlib
import json
import sqlite3
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

from controller.errors import PharmaTwinError

_SCHEMA = """
CREATE TABLE IF NOT EXISTS audit (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    ts_utc TEXT NOT NULL,
    actor TEXT NOT NULL,
    action TEXT NOT NULL,
    target TEXT NOT NULL,
    old_value TEXT,
    new_value TEXT,
    reason TEXT NOT NULL,
    software_version TEXT NOT NULL,
    config_hash TEXT NOT NULL,
    detail TEXT NOT NULL,
    prev_hash TEXT NOT NULL,
    hash TEXT NOT NULL
);
CREATE TRIGGER IF NOT EXISTS audit_no_update BEFORE UPDATE ON audit
BEGIN SELECT RAISE(ABORT, 'the audit trail is append-only: UPDATE refused'); END;
CREATE TRIGGER IF NOT EXISTS audit_no_delete BEFORE DELETE ON audit
BEGIN SELECT RAISE(ABORT, 'the audit trail is append-only: DELETE refused'); END;
"""
_FIELDS = (
    "ts_utc",
    "actor",
    "action",
    "target",
    "old_value",
    "new_value",
    "reason",
    "software_version",
    "config_hash",
    "detail",
)
GENESIS = "0" * 64


class AuditError(PharmaTwinError):
    """The audit trail cannot be written, or fails verification."""


@functools.cache
def software_version() -> str:
    """The installed version (looked up once: importlib.metadata costs ~0.2 ms a call)."""
    try:
        return f"pharmatwin {metadata.version('pharmatwin')}"
    except metadata.PackageNotFoundError:
        return "pharmatwin (not installed)"


def file_hash(*paths: Path) -> str:
    """SHA-256 over the bytes of the given files, in order (the configuration in force)."""
    h = hashlib.sha256()
    for p in paths:
        h.update(str(p.name).encode())
        h.update(p.read_bytes())
    return h.hexdigest()


@dataclass(frozen=True)
class AuditRecord:
    id: int
    ts_utc: str
    actor: str
    action: str
    target: str
    old_value: str | None
    new_value: str | None
    reason: str
    software_version: str
    config_hash: str
    detail: str
    prev_hash: str
    hash: str


def _digest(prev_hash: str, values: Mapping[str, Any]) -> str:
    body = json.dumps([prev_hash, *[values[f] for f in _FIELDS]], separators=(",", ":"))
    return hashlib.sha256(body.encode()).hexdigest()


@dataclass(frozen=True)
class AuditEntry:
    """One record to append (see :meth:`AuditTrail.record`)."""

    action: str
    target: str
    reason: str
    old_value: object = None
    new_value: object = None
    actor: str | None = None
    detail: Mapping[str, Any] | None = None


class AuditTrail:
    """The audit table of one SQLite database file."""

    def __init__(self, path: Path, *, config_hash: str = "", actor: str = "system") -> None:
        self.path = path
        self.config_hash = config_hash
        self.actor = actor
        path.parent.mkdir(parents=True, exist_ok=True)
        try:
            self._db = sqlite3.connect(path, isolation_level=None)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=FULL")
            self._db.executescript(_SCHEMA)
        except sqlite3.Error as exc:
            raise AuditError(f"cannot open the audit trail {path}: {exc}") from exc

    def close(self) -> None:
        self._db.close()

    def record(
        self,
        action: str,
        target: str,
        *,
        reason: str,
        old_value: object = None,
        new_value: object = None,
        actor: str | None = None,
        detail: Mapping[str, Any] | None = None,
    ) -> AuditRecord:
        """Append one record (durable on return). Raises AuditError; callers must not go on."""
        entry = AuditEntry(action, target, reason, old_value, new_value, actor, detail)
        return self.record_all([entry])[0]

    def record_all(self, entries: Sequence[AuditEntry]) -> list[AuditRecord]:
        """Append several records in one transaction: all are durable on return (one fsync),
        or none is written. Raises AuditError; callers must not go on."""
        rows: list[dict[str, Any]] = []
        for e in entries:
            if not e.reason.strip():
                raise AuditError(f"audit record for {e.action} {e.target}: a reason is required")
            rows.append(
                {
                    "ts_utc": dt.datetime.now(dt.UTC).isoformat(timespec="microseconds"),
                    "actor": e.actor or self.actor,
                    "action": e.action,
                    "target": e.target,
                    "old_value": None if e.old_value is None else str(e.old_value),
                    "new_value": None if e.new_value is None else str(e.new_value),
                    "reason": e.reason,
                    "software_version": software_version(),
                    "config_hash": self.config_hash,
                    "detail": json.dumps(dict(e.detail or {}), sort_keys=True, default=str),
                }
            )
        out = []
        insert = (
            f"INSERT INTO audit ({', '.join(_FIELDS)}, prev_hash, hash) "
            f"VALUES ({', '.join('?' * (len(_FIELDS) + 2))})"
        )
        try:
            self._db.execute("BEGIN IMMEDIATE")
            row = self._db.execute("SELECT hash FROM audit ORDER BY id DESC LIMIT 1").fetchone()
            prev = row[0] if row else GENESIS
            for values in rows:
                digest = _digest(prev, values)
                cur = self._db.execute(insert, [*(values[f] for f in _FIELDS), prev, digest])
                out.append(
                    AuditRecord(int(cur.lastrowid or 0), **values, prev_hash=prev, hash=digest)
                )
                prev = digest
            self._db.execute("COMMIT")
        except sqlite3.Error as exc:
            if self._db.in_transaction:
                self._db.execute("ROLLBACK")
            raise AuditError(f"cannot append to the audit trail {self.path}: {exc}") from exc
        return out

    def records(self) -> Iterator[AuditRecord]:
        cols = ", ".join(("id", *_FIELDS, "prev_hash", "hash"))
        for row in self._db.execute(f"SELECT {cols} FROM audit ORDER BY id"):
            yield AuditRecord(*row)

    def verify(self) -> int:
        """Recompute the hash chain; returns the number of records, raises AuditError naming
        the first record that was altered, removed or inserted out of chain."""
        prev = GENESIS
        count = 0
        for rec in self.records():
            values = {f: getattr(rec, f) for f in _FIELDS}
            if rec.prev_hash != prev or _digest(prev, values) != rec.hash:
                raise AuditError(
                    f"audit trail {self.path}: record {rec.id} ({rec.action} {rec.target} at "
                    f"{rec.ts_utc}) does not match its hash chain: it was altered or a record "
                    "before it was removed"
                )
            prev = rec.hash
            count += 1
        return count
