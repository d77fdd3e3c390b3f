"""Operator-view users: a credentials file of scrypt password hashes and roles.

The file (YAML) is read at start, and again by the operator view whenever it changed (see
:attr:`Users.stamp`); it must not be readable or writable by group or others (like an SSH
key), or it is refused::

    users:
      alice: {roles: [operator], password: "scrypt$16384$8$1$<salt b64>$<hash b64>"}
      bob:   {roles: [operator, control], password: "scrypt$..."}

Roles: ``operator`` acknowledges alarms; ``control`` requests and releases MPC control.
Make a hash with ``python -m controller.runtime.users`` (it prompts; a password never goes in argv).
A hash weaker than ``scrypt$16384$8$1`` with a 16-byte salt and a 32-byte digest is refused,
and so is one that needs more than :data:`MAX_KDF_MEMORY` per login.
"""

from __future__ import annotations

import base64
import getpass
import hashlib
import hmac
import os
import stat
import sys
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Literal

from controller.configfile import read_yaml
from controller.errors import ConfigError, Problem, unknown_name

Role = Literal["operator", "control"]
ROLES: tuple[Role, ...] = ("operator", "control")
_N, _R, _P = 2**14, 8, 1
_SALT_MIN, _DIGEST = 16, 32  # bytes
#: the most memory one login's scrypt may take (N, r and p set it: ``128 r (N + p + 2)``)
MAX_KDF_MEMORY = 1 << 30
#: (st_mtime_ns, st_ctime_ns, st_size, st_ino) of a users file: when it differs, the file
#: changed (its text, its mode, or it was replaced).
Stamp = tuple[int, int, int, int]


def hash_password(password: str, *, salt: bytes | None = None) -> str:
    """``scrypt$N$r$p$salt$hash`` (base64) of ``password``."""
    salt = salt or os.urandom(16)
    digest = hashlib.scrypt(password.encode(), salt=salt, n=_N, r=_R, p=_P, dklen=32)
    b64 = base64.b64encode
    return f"scrypt${_N}${_R}${_P}${b64(salt).decode()}${b64(digest).decode()}"


def kdf_memory(n: int, r: int, p: int) -> int:
    """Bytes one scrypt with these parameters needs (OpenSSL's own estimate), with 1 MiB to
    spare. Passed as ``maxmem``: OpenSSL's default limit, 32 MiB, refuses N >= 2^15 at r = 8
    (every login with such a hash failed)."""
    return 128 * r * (n + p + 2) + (1 << 20)


def check_password(password: str, stored: str) -> bool:
    """True when ``password`` matches the stored scrypt hash (constant-time compare)."""
    try:
        kind, n_text, r_text, p_text, salt, digest = stored.split("$")
        if kind != "scrypt":
            return False
        n, r, p = int(n_text), int(r_text), int(p_text)
        got = hashlib.scrypt(
            password.encode(),
            salt=base64.b64decode(salt),
            n=n,
            r=r,
            p=p,
            maxmem=min(kdf_memory(n, r, p), MAX_KDF_MEMORY),
            dklen=len(base64.b64decode(digest)),
        )
    except (ValueError, TypeError):
        return False
    return hmac.compare_digest(got, base64.b64decode(digest))


@cache
def _dummy_hash() -> str:
    """A hash no password is checked against except for an unknown user (computed once)."""
    return hash_password(os.urandom(16).hex())


def _kdf_problem(stored: str) -> tuple[str, str] | None:
    """Why a ``scrypt$N$r$p$salt$hash`` is too weak or malformed, as (message, value shown);
    None when it is at least ``scrypt$16384$8$1`` with a 16-byte salt and a 32-byte digest."""
    _, n_text, r_text, p_text, salt_b64, digest_b64 = stored.split("$")
    try:
        n, r, p = int(n_text), int(r_text), int(p_text)
        salt = base64.b64decode(salt_b64, validate=True)
        digest = base64.b64decode(digest_b64, validate=True)
    except ValueError:
        return "N, r and p must be integers, the salt and hash base64", "(not shown)"
    checks = (
        (n >= _N and n & (n - 1) == 0, f"N={n}", f"N a power of 2 >= {_N}"),
        (r >= _R, f"r={r}", f"r >= {_R}"),
        (p >= _P, f"p={p}", f"p >= {_P}"),
        (len(salt) >= _SALT_MIN, f"salt of {len(salt)} bytes", f"a salt of >= {_SALT_MIN} bytes"),
        (len(digest) == _DIGEST, f"hash of {len(digest)} bytes", f"a hash of {_DIGEST} bytes"),
    )
    for ok, value, allowed in checks:
        if not ok:
            return f"scrypt parameters too weak; allowed: {allowed}", value
    if kdf_memory(n, r, p) > MAX_KDF_MEMORY:
        mib = kdf_memory(n, r, p) / (1 << 20)
        allowed = f"N, r and p that need at most {MAX_KDF_MEMORY >> 20} MiB (128 r (N + p + 2))"
        return f"scrypt parameters too costly for every login; allowed: {allowed}", (
            f"N={n}, r={r}, p={p} ({mib:.0f} MiB)"
        )
    return None


@dataclass(frozen=True)
class User:
    name: str
    roles: frozenset[str]
    password_hash: str


@dataclass(frozen=True)
class Users:
    """``source``: the file read (None when made in code); ``stamp``: its stat at that read."""

    by_name: dict[str, User]
    source: Path | None = None
    stamp: Stamp | None = None

    def __post_init__(self) -> None:
        _dummy_hash()  # made now, so that no login pays for it (one scrypt per login)

    def login(self, name: str, password: str) -> User | None:
        """The user when name and password match; None otherwise (one scrypt either way)."""
        user = self.by_name.get(name)
        stored = user.password_hash if user else _dummy_hash()
        ok = check_password(password, stored)
        return user if ok and user is not None else None


def file_stamp(path: Path) -> Stamp | None:
    """The file's :data:`Stamp`; None when it cannot be stat'ed."""
    try:
        st = path.stat()
    except OSError:
        return None
    return st.st_mtime_ns, st.st_ctime_ns, st.st_size, st.st_ino


def load_users(path: Path) -> Users:
    """Read and check a credentials file. Raises ConfigError naming the file, key and value
    (a weak scrypt hash names the user, the parameter and what is allowed)."""
    where = str(path)
    try:
        st = path.stat()
        mode, stamp = st.st_mode, (st.st_mtime_ns, st.st_ctime_ns, st.st_size, st.st_ino)
    except OSError as exc:
        raise ConfigError([Problem(where, "", f"cannot read the users file: {exc}", None)]) from exc
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        msg = "group or others may access this credentials file; allowed: mode 0600 or 0400"
        raise ConfigError([Problem(where, "(file mode)", msg, oct(mode & 0o777))])
    data = read_yaml(path)  # UTF-8 YAML mapping, or a ConfigError naming file, line and byte
    problems: list[Problem] = []
    entries = data.get("users") if isinstance(data, dict) else None
    if not isinstance(entries, dict) or not entries:
        raise ConfigError([Problem(where, "users", "must be a mapping of user names", entries)])
    users: dict[str, User] = {}
    for name, entry in entries.items():
        key = f"users.{name}"
        if not isinstance(entry, dict):
            problems.append(Problem(where, key, "allowed keys: [roles, password]", entry))
            continue
        extra = sorted(str(k) for k in set(entry) - {"roles", "password"})
        if extra:
            message = unknown_name("key", extra[0], ["roles", "password"])
            problems.append(Problem(where, f"{key}.{extra[0]}", message, entry))
            continue
        roles = entry.get("roles") or []
        if not isinstance(roles, list):
            message = f"must be a list of roles; allowed: {list(ROLES)}"
            problems.append(Problem(where, f"{key}.roles", message, [roles]))
        elif bad := [r for r in roles if r not in ROLES]:
            message = "; ".join(unknown_name("role", r, ROLES) for r in bad)
            problems.append(Problem(where, f"{key}.roles", message, bad))
        pw = entry.get("password")
        if not isinstance(pw, str) or not pw.startswith("scrypt$") or pw.count("$") != 5:
            msg = "must be a scrypt hash from `python -m controller.runtime.users`"
            problems.append(Problem(where, f"{key}.password", msg, "(not shown)"))
            continue
        weak = _kdf_problem(pw)
        if weak is not None:
            problems.append(Problem(where, f"{key}.password", weak[0], weak[1]))
            continue
        users[str(name)] = User(str(name), frozenset(roles), pw)
    if problems:
        raise ConfigError(problems)
    return Users(users, path, stamp)


def main() -> int:
    """Prompt for a password twice and print its hash for a users file."""
    first = getpass.getpass("password: ")
    if len(first) < 8 or first != getpass.getpass("again: "):
        print("error: the passwords differ or are shorter than 8 characters", file=sys.stderr)
        return 2
    print(hash_password(first))
    return 0


if __name__ == "__main__":
    sys.exit(main())
