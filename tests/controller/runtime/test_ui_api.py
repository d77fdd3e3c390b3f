"""The operator view over HTTP against a running twin: the in-memory HIL (true CSTR plant and
virtual PLC) and the runtime on one scaled clock, the view served by uvicorn on a free
loopback port. Checks access control (read-only without a login, roles, audit records),
the data the page is built from, and the bind rules of ``--ui``."""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from controller.clock import ScaledClock
from controller.errors import ConfigError
from controller.runtime.audit_verify import read_records
from controller.runtime.cli import main
from controller.runtime.site import load_site
from controller.runtime.supervisor import Mode, Supervisor
from controller.runtime.ui import OperatorView, parse_bind
from controller.runtime.users import hash_password, load_users
from controller.runtime.wiring import RunOptions, Sink, run_site
from hil.rig import HilRig
from hil.servers.memory import MemoryPlcServer

ROOT = Path(__file__).resolve().parents[3]
CSTR = ROOT / "configs" / "sites" / "cstr-modbus.yaml"
RATE = 60.0  # the CSTR samples every 18 s of process time: 0.3 s of wall time a cycle
pytestmark = pytest.mark.timeout(90)


@dataclass
class Twin:
    view: OperatorView
    sup: Supervisor | None
    stop: asyncio.Event
    audit: Path
    first_cycle: asyncio.Event


class _FirstCycle:
    """A sink that tells the test when the runtime has run ``n`` cycles."""

    def __init__(self, n: int) -> None:
        self.n, self.event, self.sup = n, asyncio.Event(), None

    def start(self, sup: Supervisor, stop: asyncio.Event) -> None:
        self.sup = sup

    def cycle(self, sup: Supervisor, view: object) -> None:
        if sup.counters.cycles >= self.n:
            self.event.set()

    def close(self) -> None:
        return None


def users_file(tmp: Path) -> Path:
    path = tmp / "users.yaml"
    data = {
        "users": {
            "olga": {"roles": ["operator"], "password": hash_password("olga-pass-1")},
            "carl": {"roles": ["operator", "control"], "password": hash_password("carl-pass-1")},
        }
    }
    path.write_text(yaml.safe_dump(data))
    path.chmod(0o600)
    return path


class Pausable:
    """A monotonic time source the test can hold still (the process clock stops: no cycle
    comes, as when the control loop is stuck) and let go again."""

    def __init__(self) -> None:
        self._offset = 0.0
        self._held_at: float | None = None

    def __call__(self) -> float:
        held = self._held_at
        return held if held is not None else time.monotonic() - self._offset

    def hold(self) -> None:
        self._held_at = self()

    def release(self) -> None:
        held = self._held_at
        if held is not None:
            self._offset, self._held_at = time.monotonic() - held, None


@contextlib.asynccontextmanager
async def running_twin(
    tmp: Path,
    *,
    mode: Mode = Mode.CLOSED_LOOP,
    extra: tuple[Sink, ...] = (),
    cycles: int = 3,
    monotonic: Callable[[], float] = time.monotonic,
    ui_now: Callable[[], float] = time.monotonic,
    rate: float = RATE,
) -> AsyncIterator[Twin]:
    """The in-memory HIL and the runtime with an operator view, until the block ends;
    ``monotonic``: the source of the process clock, ``ui_now``: the view's wall clock;
    ``rate``: process seconds per wall second (a solve's deadline is half a sample of it)."""
    site = load_site(CSTR)
    clock = ScaledClock(rate, monotonic=monotonic)
    server = MemoryPlcServer(site.tags, clock)
    rig = HilRig(site, clock, [server])
    users = load_users(users_file(tmp))
    view = OperatorView(parse_bind("--ui", "127.0.0.1:0"), users=users, now=ui_now)
    first = _FirstCycle(cycles)
    opts = RunOptions(mode=mode, audit_path=tmp / "audit.db", historian_path=tmp / "h.db")
    stop = asyncio.Event()
    await server.start()
    await rig.scan()
    plant = asyncio.ensure_future(rig.run(stop))
    sinks = (view, first, *extra)
    task = asyncio.ensure_future(
        run_site(site, opts, port=server.port(), clock=clock, stop=stop, sinks=sinks)
    )
    try:
        await asyncio.wait_for(first.event.wait(), 60)
        yield Twin(view, first.sup, stop, opts.audit_path, first.event)
    finally:
        stop.set()
        await task
        await plant
        await server.close()


async def _login(client: httpx.AsyncClient, user: str, password: str) -> httpx.Response:
    return await client.post("/api/login", json={"user": user, "password": password})


@pytest.mark.slow
@pytest.mark.serial
async def test_read_only_without_login_and_roles_with_audit(tmp_path: Path) -> None:
    async with running_twin(tmp_path) as twin, httpx.AsyncClient(base_url=twin.view.url) as c:
        meta = (await c.get("/api/meta")).json()
        assert meta["site"] == "cstr-modbus"
        limits = {t["tag"]: t["limits"] for t in meta["trends"]}
        assert all(lim is not None and lim[0] < lim[1] for lim in limits.values()), limits
        state = (await c.get("/api/state")).json()
        assert state["rows"] and state["status"]["state"] in ("REQUESTING", "RUNNING", "HOLD")
        assert "mpc_active" in state["status"]["why"] or "initialized" in state["status"]["why"]
        assert state["status"]["audit"][0]["id"] > 1
        # a review: after an interlock trip the block showed only mpc_permissive 0, not why
        handshake = state["status"]["handshake"]
        assert handshake["mpc_fallback_alarm"] == 0 and handshake["interlock_active"] == 0
        # acting without a login is refused, and so is acting without the role
        ack = await c.post("/api/alarms/ack", json={"key": "x", "reason": "seen"})
        assert ack.status_code == 401 and "log in" in ack.json()["error"]
        assert (await _login(c, "olga", "wrong")).status_code == 401
        assert (await _login(c, "olga", "olga-pass-1")).status_code == 200
        release = await c.post("/api/control", json={"action": "release", "reason": "test"})
        assert release.status_code == 403 and "control" in release.json()["error"]
        missing = await c.post("/api/alarms/ack", json={"key": "nope", "reason": "seen"})
        assert missing.status_code == 404
        assert (await c.post("/api/alarms/ack", json={"key": "nope"})).status_code == 400
        # a request while requesting or in control is refused, and audited with the user
        assert (await _login(c, "carl", "carl-pass-1")).status_code == 200
        req = await c.post("/api/control", json={"action": "request", "reason": "try"})
        assert req.status_code == 409 and "nothing to request" in req.json()["error"]
        await wait_state(twin, "RUNNING")
        rel = await c.post("/api/control", json={"action": "release", "reason": "lab check"})
        assert rel.status_code == 200 and "released" in rel.json()["result"], rel.text
        sup = twin.sup
        assert sup is not None and sup.state.value == "RELEASED"
        # released: the runtime keeps cycling, clears mpc_request, and writes no setpoint
        n = sup.counters.cycles
        await wait_until(lambda: not sup._requested and sup.counters.cycles >= n + 2)
        assert sup.state.value == "RELEASED"
        assert not twin.stop.is_set()
        again = await c.post("/api/control", json={"action": "release", "reason": "twice"})
        assert again.status_code == 409
        req = await c.post("/api/control", json={"action": "request", "reason": "lab done"})
        assert req.status_code == 200, req.text
        await wait_state(twin, "RUNNING")  # the PLC granted it again: the MPC writes again
        n = sup.counters.cycles
        await wait_until(lambda: sup.counters.cycles >= n + 2)
    records = read_records(twin.audit)
    refused = [r for r in records if r.actor == "olga"]  # olga's refusals are audited too
    assert [(r.action, r.new_value[:8]) for r in refused] == [
        ("operator.release", "refused:"),
        ("alarm.ack", "refused:"),
    ]
    anonymous = [(r.action, r.target) for r in records if r.actor == "anonymous"]
    assert anonymous == [("operator.alarms.ack", "operator"), ("login.failed", "olga")]
    records = [r for r in records if r.actor not in ("olga", "anonymous")]
    ours = [(r.actor, r.action, r.reason) for r in records if r.action.startswith("operator.")]
    assert ours == [
        ("carl", "operator.request", "try"),
        ("carl", "operator.release", "lab check"),
        ("carl", "operator.release", "twice"),
        ("carl", "operator.request", "lab done"),
    ]
    ops = [r for r in records if r.action.startswith("operator.")]
    assert ops[0].new_value.startswith("refused") and ops[2].new_value.startswith("refused")
    assert (ops[1].old_value, ops[1].new_value) == ("RUNNING", "RELEASED")
    assert (ops[3].old_value, ops[3].new_value) == ("RELEASED", "REQUESTING")
    between = [r for r in records if ops[1].id < r.id < ops[3].id]
    assert not [r for r in between if r.action == "setpoint.write"], "written while released"
    cleared = [r for r in between if r.target == "mpc_request"]
    assert cleared and cleared[0].new_value in ("0", "0.0"), cleared
    after = [r for r in records if r.id > ops[3].id]
    assert [r for r in after if r.action == "setpoint.write"], "no write after the re-request"
    # the end of the run cleared the request again
    assert records[-1].action == "run.stop"
    requests = [r.new_value for r in records if r.target == "mpc_request"]
    assert requests[-1] in ("0", "0.0"), requests


async def test_release_in_shadow_mode_is_refused_and_audited(tmp_path: Path) -> None:
    twin_cm = running_twin(tmp_path, mode=Mode.SHADOW)
    async with twin_cm as twin, httpx.AsyncClient(base_url=twin.view.url) as c:
        assert (await _login(c, "carl", "carl-pass-1")).status_code == 200
        rel = await c.post("/api/control", json={"action": "release", "reason": "x"})
        assert rel.status_code == 409 and "shadow" in rel.json()["error"]
        assert not twin.stop.is_set()
    ops = [r for r in read_records(twin.audit) if r.action.startswith("operator.")]
    assert [(r.actor, r.new_value[:8]) for r in ops] == [("carl", "refused:")]


async def test_what_if_forecast_on_demand_without_login(tmp_path: Path) -> None:
    site = load_site(CSTR)
    if not (site.forecast is not None):
        raise AssertionError("the CSTR site has no forecast section")
    async with running_twin(tmp_path) as twin, httpx.AsyncClient(base_url=twin.view.url) as c:
        resp = await c.post("/api/forecast", timeout=60)
        assert resp.status_code == 200, resp.text
        data = resp.json()
        assert [q["name"] for q in data["cqas"]] == [q.name for q in site.forecast.cqas]
        plans = {r["plan"]: r for r in data["rows"]}
        assert "mpc" in plans, plans
        mpc = plans["mpc"]
        assert mpc["status"] == "ok", mpc
        assert all(isinstance(mpc[q["name"]], float) for q in data["cqas"]), mpc
        assert data["start_t"] is not None and data["start_t"] >= 0
        # read-only: nothing the forecast did is an operator action or a write
        assert twin.sup is not None and twin.sup.state.value in ("REQUESTING", "RUNNING", "HOLD")
    assert not [r for r in read_records(twin.audit) if r.action.startswith("operator.")]


async def wait_until(cond: Callable[[], bool], timeout: float = 30.0) -> None:
    """Poll ``cond`` every 20 ms of wall time (the twin runs on its own clock)."""
    async with asyncio.timeout(timeout):
        while not cond():
            await asyncio.sleep(0.02)


async def wait_state(twin: Twin, state: str) -> None:
    await wait_until(lambda: twin.sup is not None and twin.sup.state.value == state)


async def test_sse_pushes_new_cycles(tmp_path: Path) -> None:
    async with running_twin(tmp_path) as twin, httpx.AsyncClient(base_url=twin.view.url) as c:
        seen: list[int] = []
        async with c.stream("GET", "/api/events") as resp:
            assert resp.headers["content-type"].startswith("text/event-stream")
            event = "message"
            async for line in resp.aiter_lines():
                if line.startswith("event: "):
                    event = line[len("event: ") :]
                elif line.startswith("data: ") and event != "message":
                    event = "message"  # a liveness event between cycles: not a cycle
                elif line.startswith("data: "):
                    data = json.loads(line[6:])
                    seen.append(data["status"]["cycle"])
                    if len(seen) == 3:
                        break
        assert seen == sorted(seen) and seen[-1] > seen[0]


async def test_a_raising_sink_does_not_stop_control(tmp_path: Path) -> None:
    class Broken(_FirstCycle):
        def cycle(self, sup: Supervisor, view: object) -> None:
            raise RuntimeError("display broken")

    async with running_twin(tmp_path, extra=(Broken(1),), cycles=4) as twin:
        assert twin.sup is not None and twin.sup.counters.cycles >= 4


def test_users_file_readable_by_others_is_refused(tmp_path: Path) -> None:
    path = users_file(tmp_path)
    path.chmod(0o644)
    with pytest.raises(ConfigError, match="0o644"):
        load_users(path)
    path.chmod(0o600)
    assert load_users(path).login("carl", "carl-pass-1") is not None
    assert load_users(path).login("carl", "carl-pass-2") is None


def test_remote_bind_needs_allow_remote_and_tls(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(ConfigError, match="--allow-remote"):
        parse_bind("--ui", "0.0.0.0:8080")
    with pytest.raises(ConfigError, match="TLS"):
        parse_bind("--ui", "0.0.0.0:8080", allow_remote=True)
    with pytest.raises(ConfigError, match="HOST:PORT"):
        parse_bind("--ui", "8080")
    argv = ["run", str(CSTR), "--mode", "shadow", "--ui", "0.0.0.0:8080"]
    assert main(argv) == 2
    out = capsys.readouterr().out
    assert "--allow-remote" in out and "Traceback" not in out


async def stalled_view(twin: Twin, hold: Pausable, wall: list[float]) -> dict[str, Any]:
    """Hold the process clock (no cycle comes any more), then move the view's wall clock on
    until the view calls the loop stalled: a catch-up cycle may still come after the hold and
    reset the age (each try moves it on again, so this ends once the loop is parked)."""
    hold.hold()
    for _ in range(200):
        wall[0] += 1000.0
        live = twin.view.liveness()
        if live["stalled"]:
            return live
        await asyncio.sleep(0.01)  # a turn of the loop for a cycle still on its way
    raise AssertionError(f"the view never called the held loop stalled: {live}")


async def shown_stalled(
    twin: Twin, hold: Pausable, wall: list[float], shown: Callable[[], Awaitable[bool]]
) -> dict[str, Any]:
    """:func:`stalled_view`, then ``shown()`` (what a client sees); a cycle still on its way
    when the clock was held (a solve in its worker thread, on a busy machine) can come after
    the view called the loop stalled and reset the age to 0, with the wall clock then still:
    each try moves the wall clock on again. Fails if a client never sees the stall."""
    for _ in range(20):
        live = await stalled_view(twin, hold, wall)
        if await shown():
            return live
    raise AssertionError(f"no client ever saw the held loop stalled: {twin.view.liveness()}")


async def test_a_stalled_loop_is_shown_stalled_not_as_its_last_state(tmp_path: Path) -> None:
    # the page kept showing the last state (RUNNING) of a loop that had stopped cycling
    wall, hold = [0.0], Pausable()
    async with running_twin(tmp_path, monotonic=hold, ui_now=lambda: wall[0]) as twin:
        live = twin.view.snapshot()["live"]
        assert live == {"age_s": 0.0, "stale_after_s": live["stale_after_s"], "stalled": False}
        period = twin.view.meta["cycle_period_s"]
        assert period == pytest.approx(18.0 / RATE)
        assert live["stale_after_s"] == max(3 * period, 2.0)
        async with httpx.AsyncClient(base_url=twin.view.url) as c:

            async def clients_see_it() -> bool:
                state = (await c.get("/api/state")).json()["live"]
                async with c.stream("GET", "/api/events") as resp:
                    lines = resp.aiter_lines()
                    async for line in lines:  # no new cycle: the stream says how long since
                        if line == "event: live":
                            event = json.loads((await anext(lines))[len("data: ") :])
                            break
                return bool(state["stalled"] and event["stalled"] and event["age_s"] >= 1000.0)

            stalled = await shown_stalled(twin, hold, wall, clients_see_it)
        assert stalled["age_s"] >= 1000.0
        hold.release()  # cycles come again: no longer stalled
        # (the counter moves at a cycle's start, the view hears of it at its end: wait for that)
        await wait_until(lambda: not twin.view.liveness()["stalled"])
        assert twin.view.liveness()["stalled"] is False
