"""The operator view: a Starlette app served by uvicorn in its own thread, fed as a sink.

The control loop only appends each :class:`CycleView` to a bounded deque (:meth:`cycle`);
everything else (turning views into rows, reading the audit trail read-only, serving pages
and Server-Sent Events) runs in the UI thread, off the control path. Operator actions
(acknowledging an alarm, requesting or releasing control) need a login with the role for it
and are audited on the control loop's thread (the audit trail's own connection), refused ones
too (``refused: <why>``). Sessions, the users file and cross-site refusals: :mod:`.access`.

Liveness: every snapshot and, while no cycle comes, a ``live`` event each second say how long
ago the newest cycle reached the view (``age_s``, wall seconds) and whether that is more than
the stall rule of :mod:`controller.runtime.liveness`: a stalled loop shows as stalled on the
page, never as its last state alone.
"""

from __future__ import annotations

import asyncio
import collections
import json
import logging
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from controller.errors import ConfigError, PharmaTwinError, unknown_name
from controller.runtime.audit import reason_is_blank
from controller.runtime.audit_chain import AuditError
from controller.runtime.audit_verify import read_tail
from controller.runtime.liveness import cycle_period_s, liveness
from controller.runtime.ui.access import (
    SESSION_S,
    Attempts,
    SecurityHeaders,
    Session,
    Sessions,
    audit_failed,
    cross_site_refusal,
    own_origins,
    read_json,
    refuse,
)
from controller.runtime.ui.bind import Bind, ThreadedServer, is_loopback, start_in_thread
from controller.runtime.ui.content import (
    HANDSHAKE,
    asset,
    describe,
    forecast_table,
    num,
    plotly_js,
)
from controller.runtime.users import Users
from controller.timebase import TimeBase
from controller.twin.forecast_spec import ForecastError

if TYPE_CHECKING:
    from controller.runtime.supervisor import CycleView, Supervisor

log = logging.getLogger("pharmatwin.ui")

SESSION_COOKIE = "pt_session"
REASON_NEEDED = "a reason is needed (it goes into the audit trail): at least one letter or digit"
PUSH_PERIOD_S = 0.25  # at most four updates a second per browser
LIVE_EVERY = 4  # pushes: while no cycle comes, a liveness event each second


class Refused(PharmaTwinError):
    """An operator action the runtime will not carry out (the message says why)."""


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
        self.bind = bind
        self._now = now
        self._last_cycle_at: float | None = None  # ``now()`` when the newest cycle came
        self._stop: asyncio.Event | None = None
        self._views: collections.deque[CycleView] = collections.deque(maxlen=history)
        self._rows: collections.deque[dict[str, Any]] = collections.deque(maxlen=history)
        self._seq = 0  # rows made so far
        self._status: dict[str, Any] = {}
        self._acked: dict[str, str] = {}  # alarm key -> who acknowledged it
        self._alarms: dict[str, dict[str, Any]] = {}  # active drift alarms by key
        self._sessions = Sessions(users)
        self._attempts = Attempts()
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
        self.meta["cycle_period_s"] = cycle_period_s(sup)  # wall seconds between cycles
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
        return liveness(self._last_cycle_at, self._now(), period)

    def close(self) -> None:
        if self._web is not None:
            self._web.close()

    @property
    def url(self) -> str:
        return self._web.url if self._web is not None else self.bind.url

    @property
    def users(self) -> Users | None:
        """Who may log in: the users file as last loaded (None: no --users, read-only)."""
        return self._sessions.users

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
        return Starlette(
            routes=routes,
            middleware=[Middleware(SecurityHeaders)],
            exception_handlers={AuditError: audit_failed},
        )

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
        forged = self._forged(request, need_json=False)
        if forged:
            return refuse(403, forged)
        sup = self._sup
        if sup is None:
            return refuse(503, "the operator view is not attached to a running supervisor")
        if not self._forecasting.acquire(blocking=False):
            return refuse(409, "a forecast is already being computed; wait for it")
        try:
            fc = await asyncio.to_thread(sup.forecast)
        except ForecastError as exc:
            return refuse(409, str(exc))
        finally:
            self._forecasting.release()
        return JSONResponse(forecast_table(fc))

    # ------------------------------------------------------------------ access
    def _forged(self, request: Request, *, need_json: bool = True) -> str:
        """Why a POST is refused as a possible cross-site request ("" when it is not)."""
        remote = not is_loopback(self.bind.host)
        own = own_origins(self.url, loopback=not remote)
        return cross_site_refusal(request, own, remote=remote, need_json=need_json)

    def _session(self, request: Request) -> Session | None:
        return self._sessions.get(request.cookies.get(SESSION_COOKIE, ""))

    async def _whoami(self, request: Request) -> Response:
        locked = self._sessions.refresh()
        if locked:
            return refuse(503, locked)
        s = self._session(request)
        return JSONResponse({"user": s.user, "roles": sorted(s.roles)} if s else {"user": None})

    async def _login(self, request: Request) -> Response:
        forged = self._forged(request)
        if forged:
            return refuse(403, forged)
        body = await read_json(request)
        locked = self._sessions.refresh()
        if locked:
            return refuse(503, locked)
        users = self.users
        if users is None:
            return refuse(403, "no users file was given (--users FILE): the view is read-only")
        name, password = str(body.get("user", "")), str(body.get("password", ""))
        user = await asyncio.to_thread(users.login, name, password)
        if user is None:
            await self._anonymous(
                request, "login.failed", name[:64], "unknown user or wrong password"
            )
            return refuse(401, "unknown user or wrong password")
        token = self._sessions.login(user, request.cookies.get(SESSION_COOKIE, ""))
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
        forged = self._forged(request)
        if forged:
            return refuse(403, forged)
        self._sessions.logout(request.cookies.get(SESSION_COOKIE, ""))
        resp = JSONResponse({"user": None})
        resp.delete_cookie(SESSION_COOKIE)
        return resp

    async def _authorize(
        self, request: Request, role: str
    ) -> tuple[Session, dict[str, Any]] | Response:
        """The session and the JSON body of an action, or the refusal (403 cross-site, 503
        users file locked, 401 no login: audited, throttled; 400 no reason: not audited)."""
        forged = self._forged(request)
        if forged:
            return refuse(403, forged)
        locked = self._sessions.refresh()
        if locked:
            return refuse(503, locked)
        s = self._session(request)
        if s is None:
            action = "operator" + request.url.path.removeprefix("/api").replace("/", ".")
            await self._anonymous(request, action, role, "no login")
            return refuse(401, "log in first: this action needs a user with the role " + role)
        body = await read_json(request)
        body["reason"] = str(body.get("reason", "")).strip()
        if reason_is_blank(body["reason"]):
            return refuse(400, REASON_NEEDED)
        return s, body

    async def _ack(self, request: Request) -> Response:
        got = await self._authorize(request, "operator")
        if isinstance(got, Response):
            return got
        s, body = got
        key, reason = str(body.get("key", "")), body["reason"]
        why, code = "", 200
        if "operator" not in s.roles:
            why, code = f"user {s.user!r} lacks the role 'operator'", 403
        elif key not in self._alarms:
            why, code = f"no active alarm {key!r}; active: {sorted(self._alarms)}", 404
        new = f"refused: {why}" if why else None
        await self._on_control_loop(self._audit("alarm.ack", key, s.user, reason, new))
        if why:
            return refuse(code, why)
        self._acked[key] = s.user
        return JSONResponse({"acknowledged": key, "by": s.user})

    async def _control(self, request: Request) -> Response:
        got = await self._authorize(request, "control")
        if isinstance(got, Response):
            return got
        s, body = got
        action, reason = str(body.get("action", "")), body["reason"]
        if action not in ("request", "release"):
            return refuse(400, unknown_name("action", action, ["request", "release"]))
        if "control" not in s.roles:
            why = f"user {s.user!r} lacks the role 'control'"
            sup = self._sup
            site, old = (sup.site.name, sup.state.value) if sup is not None else ("", None)
            refused = self._audit(
                f"operator.{action}", site, s.user, reason, f"refused: {why}", old
            )
            await self._on_control_loop(refused)
            return refuse(403, why)
        try:
            done = await self._on_control_loop(self._command(action, s.user, reason))
        except Refused as exc:
            return refuse(409, str(exc))
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

    async def _audit(
        self, action: str, target: str, user: str, reason: str, new: str | None, old: Any = None
    ) -> str:
        """Record an operator's action (``new``: ``refused: <why>`` when refused). Raises
        AuditError, which answers 500 (:func:`_audit_failed`): nothing was done."""
        sup = self._sup
        if sup is None:
            raise RuntimeError("the operator view is not started: no supervisor")
        sup.audit.record(action, target, reason=reason, old_value=old, new_value=new, actor=user)
        return action

    async def _anonymous(self, request: Request, action: str, target: str, why: str) -> None:
        note = self._attempts.note(request, action, why, self._now())  # see access.Attempts
        if note is not None and self._sup is not None:
            await self._on_control_loop(self._audit(action, target, "anonymous", note, note))

    async def _on_control_loop(self, coro: Awaitable[str]) -> str:
        if not (self._control_loop is not None):
            raise RuntimeError("the operator view is not started: self._control_loop is not None")
        fut = asyncio.run_coroutine_threadsafe(_await(coro), self._control_loop)
        return await asyncio.wrap_future(fut)


async def _await(coro: Awaitable[str]) -> str:
    return await coro
