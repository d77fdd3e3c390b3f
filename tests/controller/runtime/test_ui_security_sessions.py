"""Sessions of the operator view: the users file is read again when it changes (a removed
user, or one whose roles changed, loses their session at once; a file that no longer loads
locks every action, never falling back to the old users); a login ends the browser's previous
session and purges expired ones; a logout ends every session of that user. Through the view's
Starlette app in process (httpx's ASGITransport, no socket; no supervisor: whoami, login and
logout only), and one running twin."""

from __future__ import annotations

import logging
import os
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import httpx
import pytest
import yaml
from test_ui_api import _login, running_twin, users_file

from controller.runtime.ui import OperatorView, parse_bind
from controller.runtime.users import hash_password, load_users

pytestmark = pytest.mark.timeout(90)
OLGA = {"user": "olga", "password": "olga-pass-1"}
CARL = {"user": "carl", "password": "carl-pass-1"}


def _write(path: Path, users: dict[str, list[str]], mode: int = 0o600) -> None:
    """Rewrite the users file (fresh hashes: each password is the name + "-pass-1")."""
    data = {u: {"roles": r, "password": hash_password(f"{u}-pass-1")} for u, r in users.items()}
    path.write_text(yaml.safe_dump({"users": data}))
    path.chmod(mode)
    st = path.stat()  # a new mtime, even within the file system's time granularity
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 10_000_000))


def _view(tmp_path: Path) -> tuple[OperatorView, Path]:
    path = users_file(tmp_path)
    return OperatorView(parse_bind("--ui", "127.0.0.1:0"), users=load_users(path)), path


#: a new client (its own cookie jar: one browser) of a view's app, closed after the test
Clients = Callable[..., httpx.AsyncClient]


@pytest.fixture
async def clients() -> AsyncIterator[Clients]:
    opened: list[httpx.AsyncClient] = []

    def new(view: OperatorView, cookies: dict[str, str] | None = None) -> httpx.AsyncClient:
        transport = httpx.ASGITransport(app=view.app)  # the app in process, no socket
        client = httpx.AsyncClient(
            transport=transport, base_url="http://127.0.0.1", cookies=cookies
        )
        opened.append(client)
        return client

    yield new
    for client in opened:
        await client.aclose()


async def _client(clients: Clients, view: OperatorView, user: dict[str, str]) -> httpx.AsyncClient:
    """A new browser of ``view`` logged in as ``user``."""
    client = clients(view)
    assert (await client.post("/api/login", json=user)).status_code == 200
    return client


async def _whoami(client: httpx.AsyncClient) -> dict[str, object]:
    resp = await client.get("/api/whoami")
    body: dict[str, object] = resp.json()
    return body


async def test_a_removed_user_loses_the_session_and_cannot_log_in(
    tmp_path: Path, clients: Clients
) -> None:
    view, path = _view(tmp_path)
    carl, olga = await _client(clients, view, CARL), await _client(clients, view, OLGA)
    _write(path, {"olga": ["operator"], "carl": ["operator", "control"]})  # new hashes
    assert (await _whoami(carl))["user"] is None  # the password changed
    carl = await _client(clients, view, CARL)
    olga = await _client(clients, view, OLGA)
    _write(path, {"olga": ["operator"]})
    assert await _whoami(carl) == {"user": None}
    assert (await carl.post("/api/login", json=CARL)).status_code == 401
    olga_now = await _whoami(olga)
    assert olga_now["user"] is None  # rewritten with a new hash: logged out too
    olga = await _client(clients, view, OLGA)
    assert (await _whoami(olga))["user"] == "olga"


async def test_a_role_change_ends_the_session(tmp_path: Path, clients: Clients) -> None:
    view, path = _view(tmp_path)
    carl = await _client(clients, view, CARL)
    data = yaml.safe_load(path.read_text())
    data["users"]["carl"]["roles"] = ["operator"]  # same password hash, one role less
    path.write_text(yaml.safe_dump(data))
    assert await _whoami(carl) == {"user": None}
    assert (await carl.post("/api/login", json=CARL)).json()["roles"] == ["operator"]


async def test_a_users_file_that_no_longer_loads_locks_every_action(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, clients: Clients
) -> None:
    view, path = _view(tmp_path)
    carl = await _client(clients, view, CARL)
    for broken in ("mode", "garbage", "missing"):
        if broken == "mode":
            path.chmod(0o644)
        elif broken == "garbage":
            path.chmod(0o600)
            path.write_text("users: [not, a, mapping]\n")
        else:
            path.unlink()
        with caplog.at_level(logging.ERROR, logger="pharmatwin.ui"):
            who = await carl.get("/api/whoami")
            login = await carl.post("/api/login", json=OLGA)
            ack = await carl.post("/api/alarms/ack", json={"key": "k", "reason": "seen"})
            control = await carl.post("/api/control", json={"action": "release", "reason": "r"})
        for resp in (who, login, ack, control):
            assert resp.status_code == 503, (broken, resp.status_code, resp.text)
            assert "no longer loads" in resp.json()["error"] and str(path) in resp.json()["error"]
    assert any("no longer loads" in r.getMessage() for r in caplog.records), caplog.text
    _write(path, {"olga": ["operator"], "carl": ["operator", "control"]})
    assert (await carl.get("/api/whoami")).status_code == 200
    assert (await carl.post("/api/login", json=CARL)).status_code == 200


async def test_login_ends_the_previous_session_and_logout_ends_them_all(
    tmp_path: Path, clients: Clients
) -> None:
    view, _ = _view(tmp_path)
    browser = await _client(clients, view, OLGA)
    first = browser.cookies["pt_session"]
    assert (await browser.post("/api/login", json=OLGA)).status_code == 200
    assert browser.cookies["pt_session"] != first
    stale = clients(view, cookies={"pt_session": first})
    assert await _whoami(stale) == {"user": None}
    other = await _client(clients, view, OLGA)  # olga in a second browser
    carl = await _client(clients, view, CARL)
    assert (await browser.post("/api/logout", json={})).status_code == 200
    assert await _whoami(other) == {"user": None}
    assert (await _whoami(carl))["user"] == "carl"
    assert len(view._sessions) == 1


def test_expired_sessions_are_purged_on_login(tmp_path: Path) -> None:
    from controller.runtime.ui.access import SESSION_S, Sessions

    clock = [0.0]
    users = load_users(users_file(tmp_path))
    sessions = Sessions(users, now=lambda: clock[0])
    olga = users.by_name["olga"]
    old = [sessions.login(olga, "") for _ in range(3)]
    clock[0] = SESSION_S + 1.0
    assert all(sessions.get(t) is None for t in old)
    fresh = sessions.login(users.by_name["carl"], "")
    assert len(sessions) == 1 and sessions.get(fresh) is not None


async def test_a_removed_user_cannot_act_in_the_running_twin(tmp_path: Path) -> None:
    async with running_twin(tmp_path) as twin, httpx.AsyncClient(base_url=twin.view.url) as c:
        assert (await _login(c, "carl", "carl-pass-1")).status_code == 200
        _write(tmp_path / "users.yaml", {"olga": ["operator"]})
        req = await c.post("/api/control", json={"action": "release", "reason": "removed"})
        assert req.status_code == 401, req.text
        assert twin.sup is not None and twin.sup.state.value != "RELEASED"
