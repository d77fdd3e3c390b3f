"""An append-only, tamper-evident audit trail in SQLite (21 CFR Part 11, EU GMP Annex 11).

Every record says who, what, when (UTC), the old and new value and why, with the software
version and the hash of the configuration in force. Records are hash-chained (each hash
covers the previous one); triggers refuse UPDATE and DELETE. The database runs in WAL mode
with ``synchronous=FULL``, so a record is on disk before the call returns: callers write the
audit record *before* they send a value to a PLC. A trail opened with ``synchronous="NORMAL"``
(a fast-mode campaign case only: its PLC is virtual, in the same process) commits each record
before the call returns as well, into the WAL without an fsync (its anchors likewise): it
survives a crash of the process, not of the machine, until :meth:`AuditTrail.make_durable`
(also run by :meth:`AuditTrail.close`) checkpoints the WAL into the database file and fsyncs
it and the anchor file.

One connection per trail, used under a lock. :meth:`AuditTrail.record_all` commits on the
caller's thread (measured: a hop to another thread only adds its wake-up to the fsync when
the CPUs are busy); :meth:`AuditTrail.submit_all` hands the records to the trail's writer
thread (:mod:`~controller.runtime.audit_writer`), so an asyncio caller awaits durability
without blocking its loop, and groups submitted while a commit is in flight share the next
transaction (group commit, one fsync). Commit order is chain order. WAL checkpoints run on a
second thread and connection (passive: they never block a commit), never inside a commit,
every :data:`CHECKPOINT_EVERY` commits, so that the WAL is mostly rewritten in place.

A chain alone cannot show that its end was cut off, or that a record was edited and every
hash after it recomputed. So the chain is anchored outside the database. After its first
write, every ``anchor_every`` records and at close, the writer appends one line to the anchor
file (``<db>.anchor`` unless told otherwise): the trail's first hash, the record count, the
last id and hash (the head) and the UTC time, signed with HMAC-SHA256 by a key held outside
the database (``anchor_key``, or the file named by ``$PHARMATWIN_AUDIT_KEY``: 64 or more hex
digits, readable by its owner only; ``pharmatwin audit keygen FILE`` makes one). Without a
key the anchors are unsigned, and ``verify_file`` says so: they still catch a cut or a
recomputed chain, but not one whose anchor file was rewritten as well.

This module is the writer (:class:`AuditTrail`). The rest of the trail lives beside it:
``audit_chain`` (the record, its hash, the errors), ``audit_keys`` (the anchor key),
``audit_anchors`` (the anchor file), ``audit_verify`` (``verify_file``: the chain checked
read-only against every anchor; ``read_records``) and ``audit_export`` (``pharmatwin audit
export``). Errors (defined in ``audit_chain``)::

    AuditError            cannot write or read the trail; a file that is not an audit trail;
     |                    a key file that is missing, malformed or readable by others
     +-- AuditMismatch    the trail does not verify: a record altered, removed or inserted,
                          a deleted tail, a recomputed chain, a forged or foreign anchor
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import os
import sqlite3
import threading
import unicodedata
import weakref
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from controller.runtime.audit_anchors import (
    Anchor,
    anchor_path_for,
    append_anchor,
    read_anchors,
)
from controller.runtime.audit_chain import (
    FIELDS,
    GENESIS,
    INSERT,
    SCHEMA,
    AuditEntry,
    AuditError,
    AuditMismatch,
    AuditRecord,
    digest,
    software_version,
    utc_now,
)
from controller.runtime.audit_keys import resolve_key
from controller.runtime.audit_verify import iter_records, verify_chain
from controller.runtime.audit_writer import Pending, WriterThread

DEFAULT_ANCHOR_EVERY = 16
#: commits between two background WAL checkpoints. Few: once a checkpoint has copied the whole
#: WAL, the next commit starts the WAL over (one more fdatasync, for its header) and overwrites
#: frames in place, and the fdatasync of an overwrite carries no file-size change for the
#: filesystem's journal. Measured in B6 (cstr, ext4): an overwriting commit about 0.1 ms less
#: than an appending one on a quiet disk, 0.4-0.8 ms against 2-5 ms while other processes load
#: the disk. Of a case's ~100 commits 0-43 % overwrote with 64, 63-86 % with 8.
CHECKPOINT_EVERY = 8
#: the ``synchronous`` settings a trail accepts (NORMAL: see :meth:`AuditTrail.make_durable`)
SYNCHRONOUS = ("FULL", "NORMAL")

log = logging.getLogger("pharmatwin.audit")
#: ``json.dumps(x, sort_keys=True, default=str)``, built once (the same text, less per call)
_DETAIL = json.JSONEncoder(sort_keys=True, default=str)


@dataclass
class _Head:
    """What a writer knows of the chain: its length, first hash, newest id and hash, and how
    many records the newest anchor covers."""

    count: int
    first: str
    last_id: int
    head: str
    anchored: int


#: The tables a file already holds (SQLite's own excluded): one query when a trail opens.
_TABLES = "SELECT name FROM sqlite_master WHERE type='table' AND name NOT LIKE 'sqlite%'"


class AuditTrail:
    """The audit table of one SQLite database file, anchored in ``anchor_file``.

    ``anchor_key``: the key file that signs anchors (default: ``$PHARMATWIN_AUDIT_KEY``; none:
    unsigned anchors). ``anchor_file``: default ``<path>.anchor``. ``anchor_every``: records
    between anchors (an anchor costs one small append and one fsync). Opening writes nothing;
    the first write checks the chain against its newest anchor and refuses a cut or rewritten
    trail (AuditMismatch), and :meth:`close` anchors what is not anchored yet.
    ``synchronous``: ``"FULL"`` (default: every commit fsynced) or ``"NORMAL"`` (commits
    unsynced until :meth:`make_durable` or :meth:`close`; see the module's docstring).
    """

    def __init__(
        self,
        path: Path,
        *,
        config_hash: str = "",
        actor: str = "system",
        anchor_key: Path | None = None,
        anchor_file: Path | None = None,
        anchor_every: int = DEFAULT_ANCHOR_EVERY,
        synchronous: str = "FULL",
    ) -> None:
        if anchor_every < 1:
            raise AuditError(f"anchor_every: {anchor_every!r} is not allowed; allowed: >= 1")
        if synchronous not in SYNCHRONOUS:
            raise AuditError(
                f"synchronous: {synchronous!r} is not allowed; allowed: {', '.join(SYNCHRONOUS)}"
            )
        self.synchronous = synchronous
        self.path = path
        self.config_hash = config_hash
        self.actor = actor
        self.anchor_file = anchor_file or anchor_path_for(path)
        self.anchor_every = anchor_every
        self.key = resolve_key(anchor_key)
        self._head: _Head | None = None  # learnt at the first write
        self._commits = 0
        self._closed = False
        path.parent.mkdir(parents=True, exist_ok=True)
        self.anchor_file.parent.mkdir(parents=True, exist_ok=True)
        self._writer = WriterThread(f"audit-writer {path.name}")
        self._checkpointer = WriterThread(f"audit-checkpoint {path.name}")
        self._ckpt_db: sqlite3.Connection | None = None
        for thread in (self._writer, self._checkpointer):
            weakref.finalize(self, thread.stop)
        self._lock = threading.Lock()
        self._db = self._open()

    def _open(self) -> sqlite3.Connection:
        """The connection (any thread), WAL, ``synchronous`` (FULL unless told), no
        auto-checkpoint (the checkpoint thread takes them). ``synchronous`` is set before the
        switch to WAL (at SQLite's default, FULL, the switch is fsynced: a NORMAL trail's
        first durable point is its :meth:`make_durable`), and the schema is created in one
        transaction (one commit, one fsync on a FULL trail, not one a statement)."""
        db: sqlite3.Connection | None = None
        try:
            db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
            tables = {r[0] for r in db.execute(_TABLES)}
            if tables and "audit" not in tables:  # another kind of database: leave it untouched
                db.close()
                raise AuditError(
                    f"{self.path} is not an audit trail: it holds other tables "
                    f"({', '.join(sorted(tables))}), e.g. a historian; allowed: an audit trail "
                    "or a new file of its own (not the --historian file)"
                )
            db.execute(f"PRAGMA synchronous={self.synchronous}")
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA wal_autocheckpoint=0")
            db.executescript(f"BEGIN;{SCHEMA}COMMIT;")
        except sqlite3.Error as exc:
            if db is not None:
                db.close()  # rolls back a schema transaction left open: no lock held
            raise AuditError(f"cannot open the audit trail {self.path}: {exc}") from exc
        return db

    def close(self) -> None:
        """Anchor the records this writer has not anchored yet, then close (a second call does
        nothing). Raises AuditError."""
        if self._closed:
            return
        self._closed = True
        try:
            with self._lock:
                self._close_db()
        finally:
            self._writer.stop()
            if self._commits >= CHECKPOINT_EVERY:  # the checkpoint thread was started
                self._checkpointer.call(self._close_checkpointer)
            self._checkpointer.stop()

    def _close_db(self) -> None:
        try:
            if self._head is not None and self._head.count > self._head.anchored:
                self._anchor(self._head)
            if self.synchronous != "FULL":
                self._make_durable()
        finally:
            self._db.close()

    def make_durable(self) -> None:
        """Every record committed so far durable now: the WAL checkpointed into the database
        file (and truncated), the file, the anchor file and their folder fsynced (the file
        whole: background checkpoints of a NORMAL trail copied pages unsynced). Raises
        AuditError. With ``synchronous="FULL"`` every commit already is durable (this costs
        one checkpoint more); a closed trail already is (nothing to do)."""
        if self._closed:
            return
        with self._lock:
            self._make_durable()

    def _make_durable(self) -> None:
        """Under the lock (no commit, hence no new background checkpoint, can start)."""
        if self._commits >= CHECKPOINT_EVERY:  # a background checkpoint may be running
            self._checkpointer.call(lambda: None)
        try:
            busy, _, _ = self._db.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()
            if busy:
                raise AuditError(
                    f"audit trail {self.path}: the WAL could not be checkpointed (another "
                    "connection kept it busy): its newest records may not be durable"
                )
            targets = [self.path, self.anchor_file, self.path.parent, self.anchor_file.parent]
            for target in dict.fromkeys(targets):  # files first, then their folders
                if target.exists():  # no anchor file before the first record
                    _fsync(target)
        except (sqlite3.Error, OSError) as exc:
            raise AuditError(f"cannot make the audit trail {self.path} durable: {exc}") from exc

    def _checkpoint(self) -> None:
        """On the checkpoint thread: a passive WAL checkpoint (it never blocks the writer)."""
        try:
            if self._ckpt_db is None:
                self._ckpt_db = sqlite3.connect(self.path, isolation_level=None)
                # NORMAL: nothing is synced before make_durable, which syncs all (its own
                # checkpoint and an fsync of the whole file); these checkpoints only bound
                # the WAL's size
                sync = "FULL" if self.synchronous == "FULL" else "OFF"
                self._ckpt_db.execute(f"PRAGMA synchronous={sync}")
            self._ckpt_db.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
        except sqlite3.Error as exc:  # a later checkpoint (or the close) copies the WAL
            log.warning("audit trail %s: WAL checkpoint failed: %s", self.path, exc)

    def _close_checkpointer(self) -> None:
        if self._ckpt_db is not None:
            self._ckpt_db.close()
            self._ckpt_db = None

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
        or none is written. Anchors after the commit when due. Raises AuditError (AuditMismatch:
        the trail no longer matches its anchor); callers must not go on."""
        _check_reasons(entries)
        with self._lock:
            return self._commit([list(entries)])[0]

    def submit_all(self, entries: Sequence[AuditEntry]) -> Pending[list[AuditRecord]]:
        """Queue ``entries`` for the writer thread; the :class:`Pending` resolves (``result()``,
        ``await durable()``) once they are committed, durable, in one transaction (possibly
        with other groups queued meanwhile), and raises AuditError if they are not. Send
        nothing they cover before it resolved. A missing reason raises here, nothing queued."""
        _check_reasons(entries)
        return self._writer.submit_group(list(entries), self._commit_locked)

    def _commit_locked(self, groups: list[list[AuditEntry]]) -> list[list[AuditRecord]]:
        with self._lock:
            return self._commit(groups)

    def _commit(self, groups: list[list[AuditEntry]]) -> list[list[AuditRecord]]:
        """Under the lock: every group in one transaction; the records per group."""
        try:
            self._db.execute("BEGIN IMMEDIATE")
            head, prologue, moved = self._sync()
            out = self._insert(head, self._rows([*prologue, *(e for g in groups for e in g)]))
            self._db.execute("COMMIT")
        except (sqlite3.Error, AuditError) as exc:
            if self._db.in_transaction:
                self._db.execute("ROLLBACK")
            if isinstance(exc, AuditError):
                raise
            raise AuditError(f"cannot append to the audit trail {self.path}: {exc}") from exc
        self._after_commit(head, moved)
        self._commits += 1
        if self._commits % CHECKPOINT_EVERY == 0:
            self._checkpointer.submit_call(self._checkpoint)
        per_group, at = [], len(prologue)
        for g in groups:
            per_group.append(out[at : at + len(g)])
            at += len(g)
        return per_group

    def _rows(self, entries: Sequence[AuditEntry]) -> list[dict[str, Any]]:
        return [
            {
                "ts_utc": utc_now(),
                "actor": e.actor or self.actor,
                "action": e.action,
                "target": e.target,
                "old_value": None if e.old_value is None else str(e.old_value),
                "new_value": None if e.new_value is None else str(e.new_value),
                "reason": e.reason,
                "software_version": software_version(),
                "config_hash": self.config_hash,
                "detail": _DETAIL.encode(dict(e.detail or {})),
            }
            for e in entries
        ]

    def _insert(self, head: _Head, rows: Sequence[dict[str, Any]]) -> list[AuditRecord]:
        out = []
        for values in rows:
            hashed = digest(head.head, values)
            cur = self._db.execute(INSERT, [*(values[f] for f in FIELDS), head.head, hashed])
            rec_id = int(cur.lastrowid or 0)
            if rec_id <= head.last_id:  # the chain is read in id order: ids only increase
                raise AuditError(
                    f"audit trail {self.path}: the new record got id {rec_id}, not above the "
                    f"newest id {head.last_id} (ids must increase); nothing was written"
                )
            rec = AuditRecord(rec_id, **values, prev_hash=head.head, hash=hashed)
            out.append(rec)
            head.count, head.last_id, head.head = head.count + 1, rec.id, hashed
            head.first = head.first or hashed
        return out

    def _sync(self) -> tuple[_Head, list[AuditEntry], Path | None]:
        """Inside the write transaction: the chain as it is now (another writer may have
        appended), records to put first, and where to move a superseded anchor file."""
        if self._head is None:
            return self._adopt()
        head = replace(self._head)
        query = "SELECT count(*), max(id) FROM audit WHERE id > ?"
        added, last_id = self._db.execute(query, (head.last_id,)).fetchone()
        if added:
            row = self._db.execute("SELECT hash FROM audit WHERE id = ?", (last_id,)).fetchone()
            head.count, head.last_id, head.head = head.count + added, last_id, row[0]
        return head, [], None

    def _adopt(self) -> tuple[_Head, list[AuditEntry], Path | None]:
        """First write: learn the chain and check it against the newest anchor."""
        count, last_id = self._db.execute("SELECT count(*), max(id) FROM audit").fetchone()
        first = self._db.execute("SELECT hash FROM audit ORDER BY id LIMIT 1").fetchone()
        last = self._db.execute("SELECT hash FROM audit WHERE id = ?", (last_id,)).fetchone()
        head = _Head(
            count, first[0] if first else "", last_id or 0, last[0] if last else GENESIS, 0
        )
        anchors, _ = read_anchors(self.anchor_file)
        if not anchors:
            return head, self._start_entries(count), None
        newest = max(anchors, key=lambda a: a.count)
        if count == 0:
            entries, moved = self._supersede(newest)
            return head, entries, moved
        self._check_same_key(newest)
        self._check_anchor(newest, head)
        head.anchored = newest.count
        return head, [], None

    def _start_entries(self, count: int) -> list[AuditEntry]:
        if count == 0:
            return []
        reason = (
            f"anchoring begins: the trail held {count} records and no anchor file "
            f"{self.anchor_file}; the records before this one are not anchored"
        )
        detail = {"unanchored_records": count, "anchor_file": str(self.anchor_file)}
        return [AuditEntry("audit.anchor.start", self.path.name, reason, detail=detail)]

    def _supersede(self, newest: Anchor) -> tuple[list[AuditEntry], Path]:
        stamp = dt.datetime.now(dt.UTC).strftime("%Y%m%dT%H%M%S%fZ")
        moved = self.anchor_file.with_name(f"{self.anchor_file.name}.superseded-{stamp}")
        reason = (
            f"a new trail starts in an empty database; the anchor file of the trail that was "
            f"here ({newest.count} records, last anchored {newest.ts_utc}) moves to {moved.name}"
        )
        detail = {"moved_to": str(moved), "anchored_records": newest.count, "head": newest.head}
        entry = AuditEntry("audit.anchor.superseded", self.path.name, reason, detail=detail)
        return [entry], moved

    def _check_same_key(self, newest: Anchor) -> None:
        ours = self.key.key_id if self.key else None
        if newest.key_id != ours:
            theirs = f"signed with key {newest.key_id}" if newest.key_id else "unsigned"
            mine = f"key {ours} ({self.key.path})" if self.key else "no key"
            raise AuditError(
                f"the anchors of {self.path} are {theirs}, this writer has {mine}: one trail "
                "keeps one key (start a new database to change it); nothing was written"
            )
        if self.key and newest.mac and not self.key.matches(newest.payload(), newest.mac):
            raise AuditMismatch(
                f"{newest.where(self.anchor_file)}: the signature does not match: the anchor "
                "was altered; nothing was written"
            )

    def _check_anchor(self, newest: Anchor, head: _Head) -> None:
        query = "SELECT id, hash FROM audit ORDER BY id LIMIT 1 OFFSET ?"
        row = self._db.execute(query, (newest.count - 1,)).fetchone()
        if newest.trail != head.first or row is None or tuple(row) != (newest.last_id, newest.head):
            raise AuditMismatch(
                f"audit trail {self.path} does not match {newest.where(self.anchor_file)} "
                f"({newest.count} records up to id {newest.last_id}; the database holds "
                f"{head.count} up to id {head.last_id}): it was cut or rewritten; nothing was "
                f"written. Run 'pharmatwin audit verify {self.path}'"
            )

    def _after_commit(self, head: _Head, moved: Path | None) -> None:
        """Move a superseded anchor file aside and anchor when due; then adopt ``head``."""
        if moved is not None:
            try:
                self.anchor_file.rename(moved)
            except OSError as exc:
                raise AuditError(
                    f"cannot move the superseded anchor file {self.anchor_file}: {exc}"
                ) from exc
        if head.count and (head.anchored == 0 or head.count - head.anchored >= self.anchor_every):
            self._anchor(head)
        self._head = head

    def _anchor(self, head: _Head) -> None:
        anchor = Anchor(head.first, head.count, head.last_id, head.head, utc_now())
        append_anchor(self.anchor_file, anchor.signed(self.key), sync=self.synchronous == "FULL")
        head.anchored = head.count

    def records(self) -> Iterator[AuditRecord]:
        with self._lock:
            records = list(iter_records(self._db, self.path))
        yield from records

    def verify(self) -> int:
        """Recompute the hash chain and check it against every anchor (and their signatures
        with this writer's key); returns the number of records. Raises AuditMismatch naming
        the first record altered, removed or inserted, a deleted tail or a rewritten chain."""
        try:
            with self._lock:
                return verify_chain(self._db, self.path, self.anchor_file, self.key).records
        except sqlite3.Error as exc:
            raise AuditError(f"cannot read the audit trail {self.path}: {exc}") from exc


def _fsync(path: Path) -> None:
    """fsync a file or a folder (its entries)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def reason_is_blank(reason: str) -> bool:
    """True when ``reason`` says nothing: no letter or digit once whitespace and Unicode
    format characters (category Cf: U+200B zero-width space, U+2060, ...) are removed."""
    return not any(ch.isalnum() for ch in reason if unicodedata.category(ch) != "Cf")


def _check_reasons(entries: Sequence[AuditEntry]) -> None:
    for e in entries:
        if reason_is_blank(e.reason):
            raise AuditError(
                f"audit record for {e.action} {e.target}: a reason is required "
                "(at least one letter or digit)"
            )
