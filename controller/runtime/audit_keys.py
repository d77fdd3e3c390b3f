"""The anchor key: the secret held outside the audit database that signs its anchors.

A key file holds 64 or more hex digits and is readable by its owner only;
``pharmatwin audit keygen FILE`` makes one (:func:`create_key`). The runtime finds it through
``$PHARMATWIN_AUDIT_KEY`` (:data:`KEY_ENV`) unless it is given one (:func:`resolve_key`).
Failures raise :class:`~controller.runtime.audit_chain.AuditError`.
"""

from __future__ import annotations

import hashlib
import os
import secrets
import stat
from dataclasses import dataclass, field
from pathlib import Path

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, hmac

from controller.runtime.audit_chain import AuditError

KEY_ENV = "PHARMATWIN_AUDIT_KEY"


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


def _make_folders(folder: Path) -> None:
    """Make ``folder`` and each missing one above it, mode 700 (raises OSError)."""
    missing: list[Path] = []
    while not _exists(folder) and folder.parent != folder:
        missing.append(folder)
        folder = folder.parent
    for made in reversed(missing):
        made.mkdir(mode=0o700, exist_ok=True)


def _exists(path: Path) -> bool:
    """``path.exists()``, whose PermissionError on Python 3.11 is raised as the OSError it is."""
    try:
        path.stat()
    except FileNotFoundError:
        return False
    return True


def create_key(path: Path) -> AnchorKey:
    """Write a new random key to ``path`` (mode 600; each missing folder above it is made,
    mode 700); never overwrites. Raises AuditError."""
    text = (secrets.token_hex(32) + "\n").encode()
    path = Path(os.path.normpath(path))  # "a/../k.key" is "k.key": no folder "a" made
    try:
        _make_folders(path.parent)
    except OSError as exc:
        why = f"cannot make the folder {exc.filename} for the audit key file {path}"
        raise AuditError(f"{why}: {exc.strerror}") from exc
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
