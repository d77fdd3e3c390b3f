"""An append-only, tamper-evident audit trail in SQLite (21 CFR Part 11, EU GMP Annex 11).

Every record says who, what, when (UTC), the old and new value and why, with the software
version and the hash of the configuration in force. Records are hash-chained (each hash
covers the previous one); triggers refuse UPDATE and DELETE. The database runs in WAL mode
with ``synchronous=FULL``, so a record is on disk before the call returns: callers write the
audit record *before* they send a value to a PLC.

A chain alone cannot show that its end was cut off, or that a record was edited and every
hash after it recomputed. So the chain is anchored outside the database. After its first
write, every ``anchor_every`` records and at close, the writer appends one line to the anchor
file (``<db>.anchor`` unless told otherwise): the trail's first hash, the record count, the
last id and hash (the head) and the UTC time, signed with HMAC-SHA256 by a key held outside
the database (``anchor_key``, or the file named by ``$PHARMATWIN_AUDIT_KEY``: 64 or more hex
digits, readable by its owner only; ``pharmatwin audit keygen FILE`` makes one). Without a
key the anchors are unsigned, and :func:`verify_file` says so: they still catch a cut or a
recomputed chain, but not one whose anchor file was rewritten as well.

:func:`verify_file` opens the database read-only and checks the chain against every anchor.
The records written after the newest anchor (fewer than ``anchor_every`` plus one batch,
unless the writer died) are not covered: a cut there cannot be seen. Errors::

    AuditError            cannot write or read the trail; a file that is not an audit trail;
     |                    a key file that is missing, malformed or readable by others
     +-- AuditMismatch    the trail does not verify: a record altered, removed or inserted,
                          a deleted tail, a recomputed chain, a forged or foreign anchor
"""

from __future__ import annotations

import datetime as dt
import fcntl
import functools
import hashlib
import json
import logging
import os
import re
import secrets
import sqlite3
import stat
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from importlib import metadata
from pathlib import Path
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, hmac

from controller.errors import PharmaTwinError

log = logging.getLogger("pharmatwin.audit")

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
_COLUMNS = ("id", *_FIELDS, "prev_hash", "hash")
_NULLABLE = frozenset({"old_value", "new_value"})
_TRIGGERS = ("audit_no_update", "audit_no_delete")
_INSERT = (
    f"INSERT INTO audit ({', '.join(_FIELDS)}, prev_hash, hash) "
    f"VALUES ({', '.join('?' * (len(_FIELDS) + 2))})"
)
GENESIS = "0" * 64
KEY_ENV = "PHARMATWIN_AUDIT_KEY"
ANCHOR_SUFFIX = ".anchor"
DEFAULT_ANCHOR_EVERY = 16
_SQLITE_HEADER = b"SQLite format 3\x00"
_HEX64 = re.compile(r"[0-9a-f]{64}")
_ANCHOR_KEYS = frozenset({"v", "trail", "count", "last_id", "head", "ts_utc", "key_id", "mac"})


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


def _utc_now() -> str:
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


# ---------------------------------------------------------------- the anchor key


@dataclass(frozen=True)
class AnchorKey:
    """The secret that signs anchors (HMAC-SHA256); ``key_id`` names it without revealing it."""

    path: Path
    secret: bytes = field(repr=False)

    @property
    def key_id(self) -> str:
        return hashlib.sha256(b"pharmatwin audit anchor key\x00" + self.secret).hexdigest()[:16]

    def sign(self, payload: bytes) -> str:
        mac = hmac.HMAC(self.secret, hashes.SHA256())
        mac.update(payload)
        return mac.finalize().hex()

    def matches(self, payload: bytes, signature: str) -> bool:
        mac = hmac.HMAC(self.secret, hashes.SHA256())
        mac.update(payload)
        try:
            mac.verify(bytes.fromhex(signature))
        except (InvalidSignature, ValueError):
            return False
        return True


def load_key(path: Path) -> AnchorKey:
    """Read an anchor key file: 64+ hex digits, owner-only permissions. Raises AuditError."""
    try:
        mode = path.stat().st_mode
        if not stat.S_ISREG(mode):
            raise AuditError(f"audit key file {path}: not a regular file")
        if mode & 0o077:
            raise AuditError(
                f"audit key file {path} has mode {mode & 0o777:03o}: group or others may "
                f"read it; allowed: readable by its owner only (chmod 600 {path})"
            )
        raw = path.read_bytes()
    except OSError as exc:
        raise AuditError(
            f"audit key file {path}: cannot read it ({exc.strerror}); "
            f"make one with 'pharmatwin audit keygen {path}'"
        ) from exc
    try:
        secret = bytes.fromhex(raw.decode("ascii").strip())
    except ValueError:  # UnicodeDecodeError is a ValueError too
        secret = b""
    if len(secret) < 32:
        raise AuditError(
            f"audit key file {path}: must hold 64 or more hex digits (32 bytes); "
            "'pharmatwin audit keygen FILE' makes one"
        )
    return AnchorKey(path, secret)


def resolve_key(path: Path | None) -> AnchorKey | None:
    """The key file given, else the one ``$PHARMATWIN_AUDIT_KEY`` names, else None."""
    named = path or (Path(os.environ[KEY_ENV]) if os.environ.get(KEY_ENV) else None)
    return load_key(named) if named else None


def create_key(path: Path) -> AnchorKey:
    """Write a new random key to ``path`` (mode 600); never overwrites. Raises AuditError."""
    text = (secrets.token_hex(32) + "\n").encode()
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            os.fchmod(fd, 0o600)
            os.write(fd, text)
            os.fsync(fd)
        finally:
            os.close(fd)
    except FileExistsError as exc:
        raise AuditError(
            f"audit key file {path} exists: refusing to overwrite it (the anchors signed "
            "with it could no longer be checked)"
        ) from exc
    except OSError as exc:
        raise AuditError(f"cannot write the audit key file {path}: {exc.strerror}") from exc
    return load_key(path)


# ---------------------------------------------------------------- anchors


def anchor_path_for(db: Path) -> Path:
    """Where the anchors of ``db`` go unless told otherwise: ``<db>.anchor``."""
    return db.with_name(db.name + ANCHOR_SUFFIX)


@dataclass(frozen=True)
class Anchor:
    """A checkpoint: the trail whose first record hashes to ``trail`` held ``count`` records,
    the last with id ``last_id`` and hash ``head``, at ``ts_utc``. ``mac`` signs the rest with
    the key ``key_id`` (both None: unsigned). ``line``: where it was read (1-based)."""

    trail: str
    count: int
    last_id: int
    head: str
    ts_utc: str
    key_id: str | None = None
    mac: str | None = None
    line: int = 0

    def payload(self) -> bytes:
        body = {
            "v": 1,
            "trail": self.trail,
            "count": self.count,
            "last_id": self.last_id,
            "head": self.head,
            "ts_utc": self.ts_utc,
            "key_id": self.key_id,
        }
        return json.dumps(body, sort_keys=True, separators=(",", ":")).encode()

    def signed(self, key: AnchorKey | None) -> Anchor:
        if key is None:
            return self
        unsigned = replace(self, key_id=key.key_id, mac=None)
        return replace(unsigned, mac=key.sign(unsigned.payload()))

    def to_line(self) -> bytes:
        body = json.loads(self.payload()) | {"mac": self.mac}
        return (json.dumps(body, sort_keys=True, separators=(",", ":")) + "\n").encode()

    def where(self, anchor_file: Path) -> str:
        return f"anchor line {self.line} of {anchor_file} ({self.ts_utc})"


def parse_anchor(text: str, line: int = 0) -> Anchor:
    """One anchor line; raises ValueError saying what is wrong with it."""
    data = json.loads(text)
    if not isinstance(data, dict) or set(data) != _ANCHOR_KEYS or data["v"] != 1:
        raise ValueError(f"expected a JSON object with v=1 and the keys {sorted(_ANCHOR_KEYS)}")
    for name in ("trail", "head"):
        if not (isinstance(data[name], str) and _HEX64.fullmatch(data[name])):
            raise ValueError(f"{name} must be 64 lowercase hex digits")
    for name in ("count", "last_id"):
        if type(data[name]) is not int or data[name] < 1:
            raise ValueError(f"{name} must be a whole number >= 1")
    signature = (data["key_id"], data["mac"])
    if not isinstance(data["ts_utc"], str) or not (
        signature == (None, None) or all(isinstance(s, str) for s in signature)
    ):
        raise ValueError("ts_utc must be text, and key_id and mac both text or both null")
    fields = {k: data[k] for k in ("trail", "count", "last_id", "head", "ts_utc", "key_id")}
    return Anchor(**fields, mac=data["mac"], line=line)


def _parse_line(anchor_file: Path, raw: bytes, line: int) -> Anchor:
    try:
        return parse_anchor(raw.decode("utf-8"), line)
    except ValueError as exc:
        raise AuditMismatch(
            f"anchor file {anchor_file} line {line} is not an anchor: {exc}"
        ) from exc


def read_anchors(anchor_file: Path) -> tuple[list[Anchor], list[str]]:
    """Every anchor in the file (none if it does not exist), and warnings: an incomplete last
    line (a write cut by a crash) is ignored. Raises AuditMismatch for any other bad line."""
    try:
        raw = anchor_file.read_bytes()
    except FileNotFoundError:
        return [], []
    except OSError as exc:
        raise AuditError(f"cannot read the anchor file {anchor_file}: {exc.strerror}") from exc
    lines = raw.split(b"\n")
    torn = lines.pop()  # b"" when the file ends with a newline
    anchors = [_parse_line(anchor_file, text, n) for n, text in enumerate(lines, 1)]
    warnings = []
    if torn:
        try:
            anchors.append(_parse_line(anchor_file, torn, len(lines) + 1))
        except AuditMismatch:
            warnings.append(
                f"the last line of {anchor_file} is incomplete (a write cut short): ignored"
            )
    return anchors, warnings


def _cut_torn_tail(fd: int, anchor_file: Path) -> None:
    """Cut an incomplete last line (a writer died mid-write), so the next anchor starts a
    line of its own. Called under the file lock, so no live writer is mid-write."""
    size = os.fstat(fd).st_size
    if not size or os.pread(fd, 1, size - 1) == b"\n":
        return
    start = max(0, size - 4096)
    tail = os.pread(fd, size - start, start)
    if start and b"\n" not in tail:
        raise AuditError(f"anchor file {anchor_file}: its last 4096 bytes are not an anchor line")
    keep = start + tail.rfind(b"\n") + 1
    log.warning("%s: cutting an incomplete last line %r", anchor_file, tail[keep - start :][:80])
    os.ftruncate(fd, keep)


def append_anchor(anchor_file: Path, anchor: Anchor) -> None:
    """Append one anchor line in a single write under an exclusive lock, and fsync it; the
    folder is synced too when the file is new. Raises AuditError."""
    data = anchor.to_line()
    try:
        created = not anchor_file.exists()
        fd = os.open(anchor_file, os.O_RDWR | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)  # writers of one trail anchor one at a time
            _cut_torn_tail(fd, anchor_file)
            written = os.write(fd, data)
            os.fsync(fd)
        finally:
            os.close(fd)
        if created:
            folder = os.open(anchor_file.parent, os.O_RDONLY)
            try:
                os.fsync(folder)
            finally:
                os.close(folder)
    except OSError as exc:
        raise AuditError(f"cannot append to the anchor file {anchor_file}: {exc}") from exc
    if written != len(data):
        raise AuditError(f"anchor file {anchor_file}: short write ({written} of {len(data)} B)")


# ---------------------------------------------------------------- verification


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
        values = {f: getattr(rec, f) for f in _FIELDS}
        if rec.prev_hash != self.prev or _digest(self.prev, values) != rec.hash:
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
    for name in _COLUMNS:
        value = getattr(rec, name)
        ok = isinstance(value, int) if name == "id" else isinstance(value, str)
        if not ok and not (value is None and name in _NULLABLE):
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
    for a in anchors:
        where = a.where(anchor_file)
        if a.mac is None:
            raise AuditMismatch(f"{where} is not signed, but {key.path} signs this trail")
        if a.key_id != key.key_id:
            raise AuditMismatch(
                f"{where} is signed with key {a.key_id}, not with {key.key_id} ({key.path}): "
                "a wrong key file, or a forged anchor"
            )
        if not key.matches(a.payload(), a.mac):
            raise AuditMismatch(f"{where}: the signature does not match: the anchor was altered")
    return key.key_id


def _records(conn: sqlite3.Connection, db: Path) -> Iterator[AuditRecord]:
    """Every record in id order; a read error names the last record read."""
    last = 0
    try:
        cursor = conn.execute(f"SELECT {', '.join(_COLUMNS)} FROM audit ORDER BY id")
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


def _verify(
    conn: sqlite3.Connection, db: Path, anchor_file: Path, key: AnchorKey | None
) -> VerifyReport:
    # the anchors first: a writer anchors only what it has committed, so every anchor read
    # here is covered by the database snapshot read next
    anchors, warnings = read_anchors(anchor_file)
    key_id = _check_signatures(anchors, anchor_file, key)
    check = _ChainCheck(db, anchor_file, anchors)
    for rec in _records(conn, db):
        check.add(rec)
    check.finish()
    if check.count and not anchors:
        state = "is empty" if anchor_file.exists() else "does not exist"
        raise AuditMismatch(
            f"audit trail {db}: its anchor file {anchor_file} {state}: the hash chain of "
            f"{check.count} records is intact, but a deleted tail or a recomputed chain "
            "cannot be ruled out"
        )
    newest = max(anchors, key=lambda a: a.count, default=None)
    found = (*warnings, *check.warnings)
    return VerifyReport(db, anchor_file, check.count, len(anchors), newest, key_id, found)


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


def _open_read_only(db: Path) -> sqlite3.Connection:
    try:
        conn = sqlite3.connect(db.resolve().as_uri() + "?mode=ro", uri=True, isolation_level=None)
        conn.execute("PRAGMA query_only=ON")
    except sqlite3.Error as exc:
        raise AuditError(f"cannot open {db} read-only: {exc}") from exc
    return conn


def _check_schema(conn: sqlite3.Connection, db: Path) -> list[str]:
    """Raise AuditError unless ``db`` has an audit table; return the missing triggers."""
    query = "SELECT type, name FROM sqlite_master WHERE type IN ('table', 'trigger')"
    names = conn.execute(query).fetchall()
    tables = sorted(n for t, n in names if t == "table")
    if "audit" not in tables:
        listed = ", ".join(tables) or "none"
        raise AuditError(
            f"{db} is an SQLite database but not an audit trail: it has no table 'audit' "
            f"(tables: {listed})"
        )
    columns = {row[1] for row in conn.execute("PRAGMA table_info(audit)")}
    missing = [c for c in _COLUMNS if c not in columns]
    if missing:
        raise AuditError(
            f"{db} is not an audit trail: its table 'audit' lacks {', '.join(missing)}"
        )
    return [t for t in _TRIGGERS if ("trigger", t) not in names]


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
    conn = _open_read_only(db)
    try:
        missing = _check_schema(conn, db)
        report = _verify(conn, db, anchor_file, key)
    except AuditError:
        raise
    except sqlite3.Error as exc:
        raise AuditError(f"{db}: cannot read it as an audit database: {exc}") from exc
    finally:
        conn.close()
    if report.records == 0:
        raise AuditError(f"audit trail {db} holds no records: nothing to verify")
    if missing:
        dropped = f"the append-only triggers {', '.join(missing)} are missing (dropped)"
        report = replace(report, warnings=(*report.warnings, dropped))
    return report


def read_records(db: Path) -> list[AuditRecord]:
    """Every record of the audit trail in ``db``, read-only (for exports; not a verification).
    Raises AuditError for a file that is not an audit trail or cannot be read."""
    _check_is_sqlite(db, anchor_path_for(db))
    conn = _open_read_only(db)
    try:
        _check_schema(conn, db)
        return list(_records(conn, db))
    except sqlite3.Error as exc:
        raise AuditError(f"{db}: cannot read it as an audit database: {exc}") from exc
    finally:
        conn.close()


# ---------------------------------------------------------------- the writer


@dataclass
class _Head:
    """What a writer knows of the chain: its length, first hash, newest id and hash, and how
    many records the newest anchor covers."""

    count: int
    first: str
    last_id: int
    head: str
    anchored: int


class AuditTrail:
    """The audit table of one SQLite database file, anchored in ``anchor_file``.

    ``anchor_key``: the key file that signs anchors (default: ``$PHARMATWIN_AUDIT_KEY``; none:
    unsigned anchors). ``anchor_file``: default ``<path>.anchor``. ``anchor_every``: records
    between anchors (an anchor costs one small append and one fsync). Opening writes nothing;
    the first write checks the chain against its newest anchor and refuses a cut or rewritten
    trail (AuditMismatch), and :meth:`close` anchors what is not anchored yet.
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
    ) -> None:
        if anchor_every < 1:
            raise AuditError(f"anchor_every: {anchor_every!r} is not allowed; allowed: >= 1")
        self.path = path
        self.config_hash = config_hash
        self.actor = actor
        self.anchor_file = anchor_file or anchor_path_for(path)
        self.anchor_every = anchor_every
        self.key = resolve_key(anchor_key)
        self._head: _Head | None = None  # learnt at the first write
        path.parent.mkdir(parents=True, exist_ok=True)
        self.anchor_file.parent.mkdir(parents=True, exist_ok=True)
        try:
            self._db = sqlite3.connect(path, isolation_level=None)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=FULL")
            self._db.executescript(_SCHEMA)
        except sqlite3.Error as exc:
            raise AuditError(f"cannot open the audit trail {path}: {exc}") from exc

    def close(self) -> None:
        """Anchor the records this writer has not anchored yet, then close. Raises AuditError."""
        try:
            if self._head is not None and self._head.count > self._head.anchored:
                self._anchor(self._head)
        finally:
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
        or none is written. Anchors after the commit when due. Raises AuditError (AuditMismatch:
        the trail no longer matches its anchor); callers must not go on."""
        for e in entries:
            if not e.reason.strip():
                raise AuditError(f"audit record for {e.action} {e.target}: a reason is required")
        try:
            self._db.execute("BEGIN IMMEDIATE")
            head, prologue, moved = self._sync()
            out = self._insert(head, self._rows([*prologue, *entries]))
            self._db.execute("COMMIT")
        except (sqlite3.Error, AuditError) as exc:
            if self._db.in_transaction:
                self._db.execute("ROLLBACK")
            if isinstance(exc, AuditError):
                raise
            raise AuditError(f"cannot append to the audit trail {self.path}: {exc}") from exc
        self._after_commit(head, moved)
        return out[len(prologue) :]

    def _rows(self, entries: Sequence[AuditEntry]) -> list[dict[str, Any]]:
        return [
            {
                "ts_utc": _utc_now(),
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
            for e in entries
        ]

    def _insert(self, head: _Head, rows: Sequence[dict[str, Any]]) -> list[AuditRecord]:
        out = []
        for values in rows:
            digest = _digest(head.head, values)
            cur = self._db.execute(_INSERT, [*(values[f] for f in _FIELDS), head.head, digest])
            rec = AuditRecord(int(cur.lastrowid or 0), **values, prev_hash=head.head, hash=digest)
            out.append(rec)
            head.count, head.last_id, head.head = head.count + 1, rec.id, digest
            head.first = head.first or digest
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
        anchor = Anchor(head.first, head.count, head.last_id, head.head, _utc_now())
        append_anchor(self.anchor_file, anchor.signed(self.key))
        head.anchored = head.count

    def records(self) -> Iterator[AuditRecord]:
        yield from _records(self._db, self.path)

    def verify(self) -> int:
        """Recompute the hash chain and check it against every anchor (and their signatures
        with this writer's key); returns the number of records. Raises AuditMismatch naming
        the first record altered, removed or inserted, a deleted tail or a rewritten chain."""
        try:
            return _verify(self._db, self.path, self.anchor_file, self.key).records
        except sqlite3.Error as exc:
            raise AuditError(f"cannot read the audit trail {self.path}: {exc}") from exc
