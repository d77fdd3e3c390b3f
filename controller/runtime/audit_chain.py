"""The audit record and its hash chain: what a record holds and how its hash is computed.

Each record's hash is SHA-256 over the JSON list ``[prev_hash, *FIELDS]`` (the record's
fields in :data:`FIELDS` order); the first record's ``prev_hash`` is :data:`GENESIS`. The
writer (:mod:`controller.runtime.audit`) and the verifier (:mod:`controller.runtime.audit_verify`)
both hash with :func:`digest`, so the chain has one definition. Errors::

    AuditError            cannot write or read the trail; a file that is not an audit trail;
     |                    a key file that is missing, malformed or readable by others
     +-- AuditMismatch    the trail does not verify: a record altered, removed or inserted,
                          a deleted tail, a recomputed chain, a forged or foreign anchor
"""

from __future__ import annotations

import datetime as dt
import functools
import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

from controller.errors import PharmaTwinError

#: The table a new trail gets. ``id`` is the rowid (no AUTOINCREMENT: its ``sqlite_sequence``
#: row cost every commit a second page and fsync'd bytes); the trail is append-only (the
#: triggers refuse DELETE), so a new id is the largest so far plus one, and the writer refuses
#: one that is not (:meth:`~controller.runtime.audit.AuditTrail.record_all`). A trail created
#: with ``id INTEGER PRIMARY KEY AUTOINCREMENT`` (before issue 19) keeps its table and is read,
#: appended to and verified the same way.
SCHEMA = """
CREATE TABLE IF NOT EXISTS audit (
    id INTEGER PRIMARY KEY,
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
FIELDS = (
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
COLUMNS = ("id", *FIELDS, "prev_hash", "hash")
NULLABLE = frozenset({"old_value", "new_value"})
TRIGGERS = ("audit_no_update", "audit_no_delete")
INSERT = (
    f"INSERT INTO audit ({', '.join(FIELDS)}, prev_hash, hash) "
    f"VALUES ({', '.join('?' * (len(FIELDS) + 2))})"
)
GENESIS = "0" * 64


class AuditError(PharmaTwinError):
    """The audit trail cannot be written or read, or a file is not an audit trail."""


class AuditMismatch(AuditError):
    """The trail does not verify: altered, cut, rewritten, or its anchors do not match."""


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


def utc_now() -> str:
    """Now, as an ISO 8601 UTC time to the microsecond (every record's ``ts_utc``)."""
    return dt.datetime.now(dt.UTC).isoformat(timespec="microseconds")


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


#: ``json.dumps(x, separators=(",", ":"))``, built once (the same text, less per call)
_COMPACT = json.JSONEncoder(separators=(",", ":"))


def digest(prev_hash: str, values: Mapping[str, Any]) -> str:
    """The hash of one record whose predecessor's hash is ``prev_hash``."""
    body = _COMPACT.encode([prev_hash, *[values[f] for f in FIELDS]])
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
