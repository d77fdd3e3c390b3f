"""The operator view: a Starlette app served by uvicorn in its own thread, fed as a sink.

The control loop only appends each :class:`CycleView` to a bounded deque (:meth:`cycle`);
everything else (turning views into rows, reading the audit trail read-only, serving pages
and Server-Sent Events) runs in the UI thread, off the control path. Operator actions
(acknowledging an alarm, requesting or releasing control) need a login with the role for it
and are audited on the control loop's thread (the audit trail's own connection).

Liveness: every snapshot and, while no cycle comes, a ``live`` event each second say how long
ago the newest cycle reached the view (``age_s``, wall seconds) and whether that is more than
:data:`STALE_CYCLES` cycle periods (and at least :data:`STALE_MIN_S`): a stalled loop shows as
stalled on the page, never as its last state alone.
"""

from __future__ import annotations

import asyncio
import collections
import json
import logging
import secrets
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from controller.errors import ConfigError, PharmaTwinError, unknown_name
from controller.runtime.audit_chain import AuditError
from controller.runtime.audit_verify import read_tail
from controller.runtime.ui.bind import Bind, ThreadedServer, start_in_thread
from controller.runtime.ui.content import HANDSHAKE, asset, describe, forecast_table, num, plotly_js
from controller.runtime.users import Users
from controller.timebase import TimeBase
from controller.twin.forecast_spec import ForecastError

if TYPE_CHECKING:
    from controller.runtime.supervisor import CycleView, Supervisor

log = logging.getLogger("pharmatwin.ui")

SESSION_COOKIE = "pt_session"
SESSION_S = 8 * 3600.0
PUSH_PERIOD_S = 0.25  # at most four updates a second per browser
LIVE_EVERY = 4  # pushes: while no cycle comes, a liveness event each second
STALE_CYCLES = 3.0  # the loop is stalled after this many cycle periods without a cycle
STALE_MIN_S = 2.0  # ... and never sooner (a fast scaled clock)


class Refused(PharmaTwinError):
    """An operator action the runtime will not carry out (the message says why)."""


@dataclass
class _Session:
    user: str
    roles: frozenset[str]
    expires: float


class OperatorView:
    """A runtime sink that serves the operator page (see the module docstring)."""

    def __init__(
        self,
        bind: Bind,
        *,
        users: Users | None = None,
        history: int = 2000,
        now: Callable[[], float] = time.monotonic,
    ) -> None:
        """``now``: the wall-clock source (seconds) of the liveness figures."""
        self.bind, self.users = bind, users
        self._now = now
        self._last_cycle_at: float | None = None  # ``now()`` when the newest cycle came
        self._stop: asyncio.Event | None = None
        self._views: collections.deque[CycleView] = collections.deque(maxlen=history)
        self._rows: collections.deque[dict[str, Any]] = collections.deque(maxlen=history)
        self._seq = 0  # rows made so far
        self._status: dict[str, Any] = {}
        self._acked: dict[str, str] = {}  # alarm key -> who acknowledged it
        self._alarms: dict[str, dict[str, Any]] = {}  # active drift alarms by key
        self._sessions: dict[str, _Session] = {}
        self._lock = threading.Lock()
        self._forecasting = threading.Lock()
        self._sup: Supervisor | None = None
        self._control_loop: asyncio.AbstractEventLoop | None = None
        self._web: ThreadedServer | None = None
        self.meta: dict[str, Any] = {}
        self._time = TimeBase("s", 1.0)  # the model's time base, once started
        self.port = bind.port
        self.app = self._app()

    # ------------------------------------------------------------------ sink side
    def start(self, sup: Supervisor, stop: asyncio.Event) -> None:
        """Remember the supervisor, describe the site, and serve (returns once listening)."""
        self._sup, self._stop = sup, stop
        self._control_loop = asyncio.get_running_loop()
        self.meta = describe(sup)
        # wall seconds between cycles: the sample time over the clock's rate (a scaled HIL)
        self.meta["cycle_period_s"] = sup.dt_s / float(getattr(sup.clock, "rate", 1.0))
        self._time = TimeBase.of(sup.model)
        try:
            self._web = start_in_thread(self.app, self.bind, "pharmatwin-ui")
        except ConfigError as exc:
            raise Refused(f"--ui {self.bind.host}:{self.bind.port}: cannot listen there") from exc
        self.port = self._web.port
        log.info("operator view at %s", self.url)

    def cycle(self, sup: Supervisor, view: CycleView) -> None:
        """The only call on the control path: keep a reference to the view (and when)."""
        self._views.append(view)
        self._last_cycle_at = self._now()

    def liveness(self) -> dict[str, Any]:
        """``age_s``: wall seconds since the newest cycle came (None before the first);
        ``stale_after_s``; ``stalled``: the age is beyond it (the loop may be stuck)."""
        period = float(self.meta.get("cycle_period_s", 1.0))
        after = max(STALE_CYCLES * period, STALE_MIN_S)
        last = self._last_cycle_at
        age = None if last is None else max(self._now() - last, 0.0)
        return {"age_s": age, "stale_after_s": after, "stalled": age is not None and age > after}

    def close(self) -> None:
        if self._web is not None:
            self._web.close()

    @property
    def url(self) -> str:
        return self._web.url if self._web is not None else self.bind.url

    # ------------------------------------------------------------------ rows (UI thread)
    def drain(self) -> int:
        """Turn the views appended since the last call into rows; returns the sequence."""
        with self._lock:
            fresh = []
            while self._views:
                fresh.append(self._views.popleft())
            for view in fresh:
                self._rows.append(self._row(view))
                self._seq += 1
            if fresh:
                self._status = self._make_status(fresh[-1])
            return self._seq

    def _row(self, view: CycleView) -> dict[str, Any]:
        snap = view.snapshot
        values: dict[str, float | None] = {}
        if snap is not None:
            for tag in self.meta.get("trend_tags", ()):
                tv = snap.values.get(tag)
                values[tag] = num(tv.value) if tv is not None else None
        outcome = view.outcome
        for event in view.events:
            if event.kind == "drift.alarm":
                self._alarms[event.key] = {"key": event.key, "message": event.message, "t": view.t}
                self._acked.pop(event.key, None)
            elif event.kind == "drift.clear":
                self._alarms.pop(event.key, None)
        return {
            "cycle": view.cycle,
            "t": self._time.model_time(view.t),
            "state": view.state.value,
            "values": values,
            "written": {k: num(v) for k, v in view.written.items()},
            "recommended": (
                {k: num(v) for k, v in outcome.setpoints.items()} if outcome is not None else {}
            ),
            "held": bool(outcome.held) if outcome is not None else None,
            "drift": {k: num(v) for k, v in view.monitor.items() if k.startswith("chart.")},
        }

    def _make_status(self, view: CycleView) -> dict[str, Any]:
        sup = self._sup
        status: dict[str, Any] = {
            "cycle": view.cycle,
            "t": self._time.model_time(view.t),
            "state": view.state.value,
            "problems": list(view.problems),
            "mode": sup.mode.value if sup is not None else "",
            "counters": dict(vars(sup.counters)) if sup is not None else {},
        }
        snap = view.snapshot
        status["handshake"] = {
            tag: (num(snap.values[tag].value) if snap is not None and tag in snap.values else None)
            for tag in HANDSHAKE
        }
        est = view.estimate
        status["parameters"] = (
            {k: [num(est.parameters.get(k)), num(s)] for k, s in est.parameter_std.items()}
            if est is not None
            else {}
        )
        status["plan"] = self._plan(view)
        status["maintenance"] = {
            k: num(v) for k, v in view.monitor.items() if k.startswith("maintenance.")
        }
        status["alarms"] = [
            a | {"acked_by": self._acked.get(a["key"])} for a in self._alarms.values()
        ]
        status["why"], status["audit"] = self._audit_tail()
        return status

    def _plan(self, view: CycleView) -> dict[str, Any]:
        d = view.decision
        if d is None or not d.predicted_states:
            return {}
        dt = self.meta.get("sample_time", 1.0)
        t0 = self._time.model_time(view.t)
        out: dict[str, Any] = {"status": d.status.value, "series": {}}
        for name, arr in (*d.predicted_states.items(), *d.predicted_inputs.items()):
            out["series"][name] = {
                "t": [t0 + k * dt for k in range(len(arr))],
                "v": [num(x) for x in arr],
            }
        return out

    def _audit_tail(self, n: int = 12) -> tuple[str, list[dict[str, Any]]]:
        """The newest mode change's reason, and the newest ``n`` audit records (read-only)."""
        sup = self._sup
        if sup is None:
            return "", []
        try:
            return read_tail(Path(sup.audit.path), n)
        except AuditError as exc:
            return f"(audit trail not readable: {exc})", []

    def snapshot(self, since: int = 0) -> dict[str, Any]:
        """Rows after sequence ``since`` (all kept ones for 0), and the newest status."""
        seq = self.drain()
        with self._lock:
            rows = list(self._rows)
            first = seq - len(rows)
            new = rows[max(0, since - first) :]
            return {"seq": seq, "rows": new, "status": self._status, "live": self.liveness()}

    # ------------------------------------------------------------------ web (UI thread)
    def _app(self) -> Starlette:
        routes = [
            Route("/", self._index),
            Route("/static/{name}", self._static),
            Route("/api/meta", self._meta),
            Route("/api/state", self._state),
            Route("/api/events", self._events),
            Route("/api/whoami", self._whoami),
            Route("/api/login", self._login, methods=["POST"]),
            Route("/api/logout", self._logout, methods=["POST"]),
            Route("/api/alarms/ack", self._ack, methods=["POST"]),
            Route("/api/control", self._control, methods=["POST"]),
            Route("/api/forecast", self._forecast, methods=["POST"]),
        ]
        return Starlette(routes=routes)

    async def _index(self, request: Request) -> Response:
        return HTMLResponse(asset("index.html"))

    async def _static(self, request: Request) -> Response:
        name = request.path_params["name"]
        if name == "plotly.min.js":
            return Response(plotly_js(), media_type="text/javascript")
        if name == "app.js":
            return Response(asset("app.js"), media_type="text/javascript")
        return JSONResponse({"error": f"unknown file {name!r}"}, status_code=404)

    async def _meta(self, request: Request) -> Response:
        return JSONResponse(self.meta)

    async def _state(self, request: Request) -> Response:
        return JSONResponse(self.snapshot(0))

    async def _events(self, request: Request) -> Response:
        async def stream() -> AsyncIterator[str]:
            sent, idle = 0, 0
            while self._web is None or not self._web.exiting:
                if await request.is_disconnected():
                    return
                seq = self.drain()
                if seq != sent:
                    data = self.snapshot(sent)
                    sent, idle = data["seq"], 0
                    yield f"data: {json.dumps(data)}\n\n"
                elif idle % LIVE_EVERY == 0:  # no new cycle: how long since the last one
                    idle += 1
                    yield f"event: live\ndata: {json.dumps(self.liveness())}\n\n"
                else:
                    idle += 1
                    yield ": idle\n\n"
                await asyncio.sleep(PUSH_PERIOD_S)

        headers = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
        return StreamingResponse(stream(), media_type="text/event-stream", headers=headers)

    async def _forecast(self, request: Request) -> Response:
        """The what-if forecast from the live estimate (read-only: no login), computed in a
        worker thread of the UI's loop; one at a time (409 while one runs)."""
        sup = self._sup
        if sup is None:
            return _refuse(503, "the operator view is not attached to a running supervisor")
        if not self._forecasting.acquire(blocking=False):
            return _refuse(409, "a forecast is already being computed; wait for it")
        try:
            fc = await asyncio.to_thread(sup.forecast)
        except ForecastError as exc:
            return _refuse(409, str(exc))
        finally:
            self._forecasting.release()
        return JSONResponse(forecast_table(fc))

    # ------------------------------------------------------------------ access
    def _session(self, request: Request) -> _Session | None:
        token = request.cookies.get(SESSION_COOKIE, "")
        s = self._sessions.get(token)
        if s is None or s.expires < time.monotonic():
            return None
        return s

    async def _whoami(self, request: Request) -> Response:
        s = self._session(request)
        return JSONResponse({"user": s.user, "roles": sorted(s.roles)} if s else {"user": None})

    async def _login(self, request: Request) -> Response:
        body = await _json(request)
        if self.users is None:
            return _refuse(403, "no users file was given (--users FILE): the view is read-only")
        name, password = str(body.get("user", "")), str(body.get("password", ""))
        user = await asyncio.to_thread(self.users.login, name, password)
        if user is None:
            return _refuse(401, "unknown user or wrong password")
        token = secrets.token_urlsafe(32)
        self._sessions[token] = _Session(user.name, user.roles, time.monotonic() + SESSION_S)
        resp = JSONResponse({"user": user.name, "roles": sorted(user.roles)})
        resp.set_cookie(
            SESSION_COOKIE,
            token,
            httponly=True,
            samesite="strict",
            secure=self.bind.tls_cert is not None,
            max_age=int(SESSION_S),
        )
        return resp

    async def _logout(self, request: Request) -> Response:
        self._sessions.pop(request.cookies.get(SESSION_COOKIE, ""), None)
        resp = JSONResponse({"user": None})
        resp.delete_cookie(SESSION_COOKIE)
        return resp

    def _authorize(self, request: Request, role: str) -> _Session | Response:
        s = self._session(request)
        if s is None:
            return _refuse(401, "log in first: this action needs a user with the role " + role)
        if role not in s.roles:
            return _refuse(403, f"user {s.user!r} lacks the role {role!r}")
        return s

    async def _ack(self, request: Request) -> Response:
        s = self._authorize(request, "operator")
        if isinstance(s, Response):
            return s
        body = await _json(request)
        key, reason = str(body.get("key", "")), str(body.get("reason", "")).strip()
        if not reason:
            return _refuse(400, "a reason is needed (it goes into the audit trail)")
        if key not in self._alarms:
            return _refuse(404, f"no active alarm {key!r}; active: {sorted(self._alarms)}")
        await self._on_control_loop(self._audit("alarm.ack", key, s.user, reason))
        self._acked[key] = s.user
        return JSONResponse({"acknowledged": key, "by": s.user})

    async def _control(self, request: Request) -> Response:
        s = self._authorize(request, "control")
        if isinstance(s, Response):
            return s
        body = await _json(request)
        action, reason = str(body.get("action", "")), str(body.get("reason", "")).strip()
        if action not in ("request", "release"):
            return _refuse(400, unknown_name("action", action, ["request", "release"]))
        if not reason:
            return _refuse(400, "a reason is needed (it goes into the audit trail)")
        try:
            done = await self._on_control_loop(self._command(action, s.user, reason))
        except Refused as exc:
            return _refuse(409, str(exc))
        return JSONResponse({"action": action, "by": s.user, "result": done})

    async def _command(self, action: str, user: str, reason: str) -> str:
        """Carry out (or refuse) an operator's control action on the control loop: the
        supervisor audits it either way, and its own cycle honours it (a release clears
        mpc_request and keeps the runtime recommending; a request engages only when the PLC
        reports mpc_active)."""
        from controller.runtime.supervisor import ControlRefused

        sup = self._sup
        if sup is None:
            raise RuntimeError("the operator view is not attached to a running supervisor")
        act = sup.release_control if action == "release" else sup.request_control
        try:
            return act(user, reason)
        except ControlRefused as exc:
            raise Refused(str(exc)) from exc

    async def _audit(self, action: str, target: str, user: str, reason: str) -> str:
        if not (self._sup is not None):
            raise RuntimeError("the operator view is not started: self._sup is not None")
        self._sup.audit.record(action, target, reason=reason, actor=user)
        return action

    async def _on_control_loop(self, coro: Awaitable[str]) -> str:
        if not (self._control_loop is not None):
            raise RuntimeError("the operator view is not started: self._control_loop is not None")
        fut = asyncio.run_coroutine_threadsafe(_await(coro), self._control_loop)
        return await asyncio.wrap_future(fut)


async def _await(coro: Awaitable[str]) -> str:
    return await coro


async def _json(request: Request) -> dict[str, Any]:
    try:
        body = await request.json()
    except ValueError:
        return {}
    return body if isinstance(body, dict) else {}


def _refuse(code: int, message: str) -> Response:
    return JSONResponse({"error": message}, status_code=code)
