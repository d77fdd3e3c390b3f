"""Verification of an audit trail: the hash chain, checked against every anchor.

:func:`verify_file` opens the database read-only and checks the chain against every anchor.
Every read here (:func:`read_as_is`) leaves the trail's folder as it was found: SQLite's
read-only reader of a WAL database would otherwise make a ``-wal`` and a ``-shm`` file beside
a closed trail and leave them there, in the evidence it was asked to check.
The records written after the newest anchor (fewer than ``anchor_every`` plus one batch,
unless the writer died) are not covered: a cut there cannot be seen. :func:`read_records`
reads the records for an export and :func:`read_tail` the newest ones for the operator view
(neither is a verification). Failures raise AuditError (the trail cannot be checked) or
AuditMismatch (it does not verify).
"""

from __future__ import annotations

import re
import sqlite3
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, TypeVar

from controller.runtime import sqlite_ro
from controller.runtime.audit_anchors import Anchor, anchor_path_for, read_anchors
from controller.runtime.audit_chain import (
    COLUMNS,
    FIELDS,
    GENESIS,
    NULLABLE,
    SCHEMA,
    TRIGGERS,
    AuditError,
    AuditMismatch,
    AuditRecord,
    digest,
)
from controller.runtime.audit_keys import KEY_ENV, AnchorKey

_SQLITE_HEADER = b"SQLite format 3\x00"
_T = TypeVar("_T")


@dataclass(frozen=True)
class VerifyReport:
    """What a verification checked (a failure raises instead)."""

    db: Path
    anchor_file: Path
    records: int
    anchors: int
    newest: Anchor | None  # the anchor with the highest count
    key_id: str | None  # the key every anchor was checked with; None: unsigned anchors
    warnings: tuple[str, ...] = ()

    @property
    def unanchored(self) -> int:
        """Records after the newest anchor: a cut among them could not be seen."""
        return self.records - (self.newest.count if self.newest else 0)

    def summary(self) -> str:
        signed = (
            f"signed with key {self.key_id}"
            if self.key_id
            else "UNSIGNED (no key: a rewritten anchor file would not be noticed)"
        )
        text = f"{self.db}: {self.records} records, hash chain intact; {self.anchors} anchors "
        text += f"match, {signed}"
        if self.newest:
            text += f"; the newest covers {self.newest.count} records ({self.newest.ts_utc})"
        if self.unanchored:
            text += (
                f"; {self.unanchored} newer records are not anchored yet (a writer still "
                "running, or one that stopped without closing)"
            )
        return text


class _ChainCheck:
    """Walks the records in id order, checking the hash chain and each anchor on the way."""

    def __init__(self, db: Path, anchor_file: Path, anchors: Sequence[Anchor]) -> None:
        self.db, self.anchor_file = db, anchor_file
        self.pending = sorted(anchors, key=lambda a: a.count)  # consumed from the front
        self.count = 0
        self.prev = GENESIS
        self.first = ""
        self.last: AuditRecord | None = None
        self.warnings: list[str] = []

    def add(self, rec: AuditRecord) -> None:
        _check_types(self.db, rec)
        values = {f: getattr(rec, f) for f in FIELDS}
        if rec.prev_hash != self.prev or digest(self.prev, values) != rec.hash:
            raise AuditMismatch(
                f"audit trail {self.db}: record {rec.id} ({rec.action} {rec.target} at "
                f"{rec.ts_utc}) does not match its hash chain: it was altered or a record "
                "before it was removed"
            )
        self.count += 1
        self.prev, self.first, self.last = rec.hash, self.first or rec.hash, rec
        self._note(rec)
        while self.pending and self.pending[0].count == self.count:
            self._match(self.pending.pop(0), rec)

    def _match(self, anchor: Anchor, rec: AuditRecord) -> None:
        where = anchor.where(self.anchor_file)
        if anchor.trail != self.first:
            raise AuditMismatch(
                f"audit trail {self.db}: {where} belongs to another trail (first hash "
                f"{anchor.trail[:12]}..., this database's is {self.first[:12]}...): the "
                "database was replaced, or rewritten from its first record"
            )
        if (anchor.last_id, anchor.head) != (rec.id, rec.hash):
            raise AuditMismatch(
                f"audit trail {self.db}: record number {self.count} is id {rec.id} with hash "
                f"{rec.hash[:12]}..., but {where} anchored it as id {anchor.last_id} with "
                f"hash {anchor.head[:12]}...: the chain was rewritten after it was anchored "
                "(records edited, removed or inserted, and the hashes recomputed)"
            )

    def _note(self, rec: AuditRecord) -> None:
        if rec.action == "audit.anchor.start":
            self.warnings.append(
                f"record {rec.id} ({rec.ts_utc}): anchoring began here; the {self.count - 1} "
                "records before it were written without an anchor file (an old trail, or its "
                "anchor file was lost)"
            )
        elif rec.action == "audit.anchor.superseded":
            self.warnings.append(f"record {rec.id} ({rec.ts_utc}): {rec.reason} ({rec.detail})")

    def finish(self) -> None:
        if self.pending:
            anchor = self.pending[-1]
            last = f"the last is id {self.last.id}" if self.last else "none"
            raise AuditMismatch(
                f"audit trail {self.db} holds {self.count} records ({last}), but "
                f"{anchor.where(self.anchor_file)} anchored {anchor.count} records up to id "
                f"{anchor.last_id}: records were deleted from the end of the trail"
            )


def _check_types(db: Path, rec: AuditRecord) -> None:
    for name in COLUMNS:
        value = getattr(rec, name)
        ok = isinstance(value, int) if name == "id" else isinstance(value, str)
        if not ok and not (value is None and name in NULLABLE):
            raise AuditMismatch(
                f"audit trail {db}: record {rec.id}: {name} holds {type(value).__name__} "
                f"{value!r:.40}, not text: it was written outside the audit trail"
            )


def _check_signatures(
    anchors: Sequence[Anchor], anchor_file: Path, key: AnchorKey | None
) -> str | None:
    """The key id every anchor was checked with (None: all unsigned, no key given)."""
    if key is None:
        signed = [a for a in anchors if a.key_id is not None]
        if signed:
            raise AuditError(
                f"the anchors in {anchor_file} are signed (key {signed[0].key_id}): give "
                f"the key file with --key or ${KEY_ENV} to check them"
            )
        return None
    if anchors and all(a.mac is None for a in anchors):  # it cannot tell which: it says both
        raise AuditMismatch(
            f"no anchor of {anchor_file} is signed, but a key was given ({key.path}): a trail "
            f"written before that key was set up is verified without it (no --key, ${KEY_ENV} "
            "unset); if this trail was written with the key, its signatures were removed"
        )
    for a in anchors:
        where = a.where(anchor_file)
        if a.mac is None:
            raise AuditMismatch(f"{where} is not signed, while other anchors of it are")
        if a.key_id != key.key_id:
            raise AuditMismatch(
                f"{where} is signed with key {a.key_id}, not with {key.key_id} ({key.path}): "
                "a wrong key file, or a forged anchor"
            )
        if not key.matches(a.payload(), a.mac):
            raise AuditMismatch(f"{where}: the signature does not match: the anchor was altered")
    return key.key_id


def iter_records(conn: sqlite3.Connection, db: Path) -> Iterator[AuditRecord]:
    """Every record in id order; a read error names the last record read."""
    last = 0
    try:
        cursor = conn.execute(f"SELECT {', '.join(COLUMNS)} FROM audit ORDER BY id")
        while (row := cursor.fetchone()) is not None:
            rec = AuditRecord(*row)
            last = rec.id
            yield rec
    except sqlite3.Error as exc:
        read = f"the last readable is id {last}" if last else "none is readable"
        raise AuditMismatch(
            f"audit trail {db}: cannot read its records ({read}): {exc}: the database is "
            "damaged or was altered outside the audit trail"
        ) from exc


def verify_chain(
    conn: sqlite3.Connection, db: Path, anchor_file: Path, key: AnchorKey | None
) -> VerifyReport:
    """Check the chain read through ``conn`` against the anchors of ``anchor_file`` (and their
    signatures with ``key``). Raises AuditMismatch or AuditError; sqlite3.Error passes."""
    # the anchors first: a writer anchors only what it has committed, so every anchor read
    # here is covered by the database snapshot read next
    anchors, warnings = read_anchors(anchor_file)
    key_id = _check_signatures(anchors, anchor_file, key)
    check = _ChainCheck(db, anchor_file, anchors)
    for rec in iter_records(conn, db):
        check.add(rec)
    check.finish()
    if check.count and not anchors:
        raise AuditMismatch(
            f"audit trail {db}: its anchor file {anchor_file} {_anchor_state(anchor_file)}: "
            f"the hash chain of {check.count} records is intact, but a deleted tail or a "
            "recomputed chain cannot be ruled out" + "".join(f"; {w}" for w in warnings)
        )
    newest = max(anchors, key=lambda a: a.count, default=None)
    found = (*warnings, *check.warnings)
    return VerifyReport(db, anchor_file, check.count, len(anchors), newest, key_id, found)


def _anchor_state(anchor_file: Path) -> str:
    """What an anchor file without one anchor holds, for the message that says so."""
    try:
        size = anchor_file.stat().st_size
    except FileNotFoundError:
        return "does not exist"
    except OSError as exc:
        return f"cannot be read ({exc.strerror})"
    return "is empty (0 bytes)" if not size else f"holds {size} bytes but no complete anchor line"


def _check_is_sqlite(db: Path, anchor_file: Path) -> None:
    try:
        if db.is_dir():
            raise AuditError(f"{db} is a folder, not an audit database")
        with db.open("rb") as f:
            head = f.read(len(_SQLITE_HEADER))
    except FileNotFoundError as exc:
        if anchor_file.exists():
            raise AuditMismatch(
                f"no audit database at {db}, but its anchor file {anchor_file} exists: the "
                "audit trail it anchors was deleted"
            ) from exc
        raise AuditError(f"no audit database at {db}") from exc
    except OSError as exc:
        raise AuditError(f"cannot read {db}: {exc.strerror}") from exc
    if not head and anchor_file.exists():
        raise AuditMismatch(
            f"{db} is empty (0 bytes), but its anchor file {anchor_file} exists: the audit "
            "trail it anchors was deleted"
        )
    if not head:
        raise AuditError(f"{db} is empty (0 bytes): not an audit trail")
    if head != _SQLITE_HEADER:
        kind = "a text file" if _is_text(db) else "binary data"
        raise AuditError(f"{db} is not an audit trail: not an SQLite database ({kind})")


def _is_text(path: Path) -> bool:
    try:
        path.read_bytes()[:4096].decode("utf-8")
    except (OSError, UnicodeDecodeError):
        return False
    return True


def read_as_is(db: Path, read: Callable[[sqlite3.Connection], _T]) -> _T:
    """``read(conn)`` on ``db`` opened read-only, its folder left as it was found: a closed
    trail (no writer's file beside it) is read ``immutable``, and read again the usual way if
    a writer changed it meanwhile (:func:`controller.runtime.sqlite_ro.read_as_is`). Raises
    AuditError when ``db`` cannot be opened; whatever ``read`` raises otherwise."""
    return sqlite_ro.read_as_is(db, read, _open_read_only)


def _open_read_only(db: Path, immutable: bool) -> sqlite3.Connection:
    try:
        return sqlite_ro.connect_read_only(db, immutable)
    except sqlite3.Error as exc:
        raise AuditError(f"cannot open {db} read-only: {exc}") from exc


def _normal_sql(text: str) -> str:
    """A CREATE statement as SQLite keeps it in ``sqlite_master`` (without IF NOT EXISTS and
    the final semicolon), its whitespace collapsed."""
    return " ".join(text.replace(" IF NOT EXISTS ", " ").split()).rstrip(";").rstrip()


#: the append-only triggers as the writer creates them (:data:`audit_chain.SCHEMA`)
_TRIGGER_SQL = {
    name: _normal_sql(text)
    for text, name in re.findall(r"(CREATE TRIGGER IF NOT EXISTS (\w+) .*?END;)", SCHEMA, re.S)
}


def _check_schema(conn: sqlite3.Connection, db: Path) -> list[str]:
    """Raise AuditError unless ``db`` has an audit table; return what is wrong with its
    append-only triggers: each one missing (dropped) or not the writer's own (replaced: a
    trigger of that name that may let an UPDATE or a DELETE through)."""
    query = "SELECT type, name, sql FROM sqlite_master WHERE type IN ('table', 'trigger')"
    rows = conn.execute(query).fetchall()
    names = {(t, n) for t, n, _ in rows}
    triggers = {n: sql or "" for t, n, sql in rows if t == "trigger"}
    tables = sorted(n for t, n in names if t == "table")
    if "audit" not in tables:
        listed = ", ".join(tables) or "none"
        raise AuditError(
            f"{db} is an SQLite database but not an audit trail: it has no table 'audit' "
            f"(tables: {listed})"
        )
    columns = {row[1] for row in conn.execute("PRAGMA table_info(audit)")}
    missing = [c for c in COLUMNS if c not in columns]
    if missing:
        raise AuditError(
            f"{db} is not an audit trail: its table 'audit' lacks {', '.join(missing)}"
        )
    dropped = [t for t in TRIGGERS if t not in triggers]
    replaced = [
        t for t in TRIGGERS if t in triggers and _normal_sql(triggers[t]) != _TRIGGER_SQL[t]
    ]
    out = (
        [f"the append-only triggers {', '.join(dropped)} are missing (dropped)"] if dropped else []
    )
    out += [
        f"the append-only trigger {t} is not the writer's own (replaced): it may let "
        f"{'an UPDATE' if 'update' in t else 'a DELETE'} through; it reads "
        f"{_normal_sql(triggers[t])!r}"
        for t in replaced
    ]
    return out


def verify_file(
    db: Path, *, key: AnchorKey | None = None, anchor_file: Path | None = None
) -> VerifyReport:
    """Verify the audit trail in ``db`` without changing it: opened read-only, no table made.

    Checks the hash chain, then every anchor of ``anchor_file`` (default ``<db>.anchor``)
    against it, their signatures with ``key``. Raises AuditMismatch when the trail does not
    verify, AuditError when it cannot be checked (no file, an empty file, not an audit trail,
    an unreadable database, signed anchors and no key, a trail without records).
    """
    anchor_file = anchor_file or anchor_path_for(db)
    _check_is_sqlite(db, anchor_file)

    def check(conn: sqlite3.Connection) -> tuple[list[str], VerifyReport]:
        try:
            return _check_schema(conn, db), verify_chain(conn, db, anchor_file, key)
        except sqlite3.Error as exc:
            raise AuditError(f"{db}: cannot read it as an audit database: {exc}") from exc

    missing, report = read_as_is(db, check)
    if report.records == 0:
        raise AuditError(f"audit trail {db} holds no records: nothing to verify")
    if missing:
        report = replace(report, warnings=(*report.warnings, *missing))
    return report


def read_records(db: Path) -> list[AuditRecord]:
    """Every record of the audit trail in ``db``, read-only (for exports; not a verification).
    Raises AuditError for a file that is not an audit trail or cannot be read."""
    _check_is_sqlite(db, anchor_path_for(db))

    def records(conn: sqlite3.Connection) -> list[AuditRecord]:
        try:
            _check_schema(conn, db)
            return list(iter_records(conn, db))
        except sqlite3.Error as exc:
            raise AuditError(f"{db}: cannot read it as an audit database: {exc}") from exc

    return read_as_is(db, records)


#: The fields of a record the operator view shows (not the hashes, not the detail JSON).
TAIL_FIELDS = ("id", "ts_utc", "actor", "action", "target", "old_value", "new_value", "reason")


def read_tail(db: Path, n: int) -> tuple[str, list[dict[str, Any]]]:
    """The newest mode change's reason ("" when none) and the newest ``n`` records, newest
    first, with :data:`TAIL_FIELDS` (for a display, read-only; not a verification). Raises
    AuditError when the trail cannot be opened or read (a read error: the database's own
    text)."""

    def tail(conn: sqlite3.Connection) -> tuple[list[Any], Any]:
        query = f"SELECT {', '.join(TAIL_FIELDS)} FROM audit ORDER BY id DESC LIMIT ?"
        rows = conn.execute(query, (n,)).fetchall()
        why = conn.execute(
            "SELECT reason FROM audit WHERE action = 'mode.change' ORDER BY id DESC LIMIT 1"
        ).fetchone()
        return rows, why

    try:
        rows, why = read_as_is(db, tail)
    except sqlite3.Error as exc:
        raise AuditError(str(exc)) from exc
    records = [dict(zip(TAIL_FIELDS, r, strict=True)) for r in rows]
    return (why[0] if why else ""), records
