"""The users file's scrypt hashes: weak parameters are refused when the file is loaded (naming
the user, the value and what is allowed), and a login costs one scrypt whether the user
exists or not (no timing oracle for user names)."""

from __future__ import annotations

import base64
import hashlib
from pathlib import Path
from typing import Any

import pytest
import yaml

from controller.errors import ConfigError
from controller.runtime import users as users_module
from controller.runtime.users import hash_password, load_users

GOOD = {"n": 2**14, "r": 8, "p": 1, "salt": 16, "dklen": 32}
WEAK = [
    ({"n": 2}, "N=2"),
    ({"n": 2**13}, "N=8192"),
    ({"n": 3 * 2**13}, "N=24576"),
    ({"r": 1}, "r=1"),
    ({"salt": 1}, "salt of 1 bytes"),
    ({"salt": 8}, "salt of 8 bytes"),
    ({"dklen": 4}, "hash of 4 bytes"),
]


def _hash(password: str, n: int, r: int, p: int, salt: int, dklen: int) -> str:
    """A stored hash with these parameters (the digest of N=16384 when ``n`` is no power of
    2, which hashlib refuses: the file still says ``n``)."""
    salt_bytes = b"s" * salt
    real_n = n if n & (n - 1) == 0 else 2**14
    digest = hashlib.scrypt(password.encode(), salt=salt_bytes, n=real_n, r=r, p=p, dklen=dklen)
    b64 = base64.b64encode
    return f"scrypt${n}${r}${p}${b64(salt_bytes).decode()}${b64(digest).decode()}"


def _file(tmp_path: Path, password: str) -> Path:
    path = tmp_path / "users.yaml"
    data = {"users": {"eve": {"roles": ["operator", "control"], "password": password}}}
    path.write_text(yaml.safe_dump(data))
    path.chmod(0o600)
    return path


@pytest.mark.parametrize(("weaker", "shown"), WEAK)
def test_weak_scrypt_parameters_are_refused(
    tmp_path: Path, weaker: dict[str, int], shown: str
) -> None:
    path = _file(tmp_path, _hash("pw", **(GOOD | weaker)))
    with pytest.raises(ConfigError) as info:
        load_users(path)
    text = str(info.value)
    assert "users.eve.password" in text and shown in text and "allowed:" in text, text


def test_the_minimum_parameters_load(tmp_path: Path) -> None:
    users = load_users(_file(tmp_path, _hash("pw", **GOOD)))
    assert users.login("eve", "pw") is not None


def test_a_login_costs_one_scrypt_known_user_or_not(monkeypatch: pytest.MonkeyPatch) -> None:
    from controller.runtime.users import User, Users

    users = Users({"olga": User("olga", frozenset({"operator"}), hash_password("olga-pass-1"))})
    calls: list[int] = []
    real = hashlib.scrypt

    def counting(*args: Any, **kwargs: Any) -> bytes:
        calls.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(users_module.hashlib, "scrypt", counting)
    costs = {}
    for name in ("nobody", "olga", "nobody", "olga"):
        calls.clear()
        assert users.login(name, "wrong-pass") is None
        costs[name] = len(calls)
    assert costs == {"nobody": 1, "olga": 1}, costs


def _strong_hash(password: str, n: int, r: int = 8, p: int = 1) -> str:
    salt = b"s" * 16
    digest = hashlib.scrypt(
        password.encode(), salt=salt, n=n, r=r, p=p, maxmem=130 * r * (n + p + 2), dklen=32
    )
    b64 = base64.b64encode
    return f"scrypt${n}${r}${p}${b64(salt).decode()}${b64(digest).decode()}"


@pytest.mark.parametrize("n", [2**15, 2**16])
def test_stronger_parameters_than_the_minimum_log_in(tmp_path: Path, n: int) -> None:
    # such a hash loaded, then every login failed: OpenSSL's default scrypt memory limit
    # (32 MiB) refused N >= 2^15 at r = 8, and the error was taken as a wrong password
    users = load_users(_file(tmp_path, _strong_hash("pw", n)))
    assert users.login("eve", "pw") is not None
    assert users.login("eve", "not-pw") is None


def test_parameters_too_costly_for_a_login_are_refused(tmp_path: Path) -> None:
    # N = 2^24 at r = 8 needs 16 GiB per login: refused when loaded, naming what is allowed
    fake = base64.b64encode(b"d" * 32).decode()
    salt = base64.b64encode(b"s" * 16).decode()
    path = _file(tmp_path, f"scrypt${2**24}$8$1${salt}${fake}")
    with pytest.raises(ConfigError) as info:
        load_users(path)
    text = str(info.value)
    assert "users.eve.password" in text and "N=16777216" in text and "1024 MiB" in text, text


def test_users_without_the_operator_view_is_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # `run --users FILE` without --ui ran on and read nothing, not even a missing file: the
    # operator thought the users file was in force
    from controller.runtime.cli import main

    site = Path(__file__).resolve().parents[3] / "configs" / "sites" / "cstr-modbus.yaml"
    argv = ["run", str(site), "--mode", "shadow", "--cycles", "1", "--users", "missing.yaml"]
    assert main(argv) == 2
    out = " ".join(capsys.readouterr().out.split())
    assert "--users" in out and "--ui" in out and "missing.yaml" in out and "Traceback" not in out
