"""Anchors: signed checkpoints of the audit trail, kept outside its database.

An anchor line records the trail's first hash, its record count, the last id and hash (the
head) and the UTC time, signed with HMAC-SHA256 by the anchor key (or unsigned without one).
Lines are appended under an exclusive lock and fsynced (:func:`append_anchor`); an incomplete
last line (a writer that died mid-write) is ignored when read and cut before the next append.
Failures raise AuditError; a line that is not an anchor raises AuditMismatch.
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import re
from dataclasses import dataclass, replace
from pathlib import Path

from controller.runtime.audit_chain import AuditError, AuditMismatch
from controller.runtime.audit_keys import AnchorKey

log = logging.getLogger("pharmatwin.audit")

ANCHOR_SUFFIX = ".anchor"
_HEX64 = re.compile(r"[0-9a-f]{64}")
_ANCHOR_KEYS = frozenset({"v", "trail", "count", "last_id", "head", "ts_utc", "key_id", "mac"})


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


def append_anchor(anchor_file: Path, anchor: Anchor, *, sync: bool = True) -> None:
    """Append one anchor line in a single write under an exclusive lock, and fsync it; the
    folder is synced too when the file is new. ``sync=False`` (a trail with
    ``synchronous="NORMAL"``): no fsync here, the trail's ``make_durable`` syncs the file.
    Raises AuditError."""
    data = anchor.to_line()
    try:
        created = not anchor_file.exists()
        fd = os.open(anchor_file, os.O_RDWR | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)  # writers of one trail anchor one at a time
            _cut_torn_tail(fd, anchor_file)
            written = os.write(fd, data)
            if sync:
                os.fsync(fd)
        finally:
            os.close(fd)
        if created and sync:
            folder = os.open(anchor_file.parent, os.O_RDONLY)
            try:
                os.fsync(folder)
            finally:
                os.close(folder)
    except OSError as exc:
        raise AuditError(f"cannot append to the anchor file {anchor_file}: {exc}") from exc
    if written != len(data):
        raise AuditError(f"anchor file {anchor_file}: short write ({written} of {len(data)} B)")
