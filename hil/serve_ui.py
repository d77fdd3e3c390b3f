"""``pharmatwin-hil serve --ui HOST:PORT``: a read-only page of the HIL rig.

What the test bench really does, next to what the controller sees: the true plant's states,
outputs and inputs over time (Plotly, served from the installed ``plotly`` package), the
virtual PLC's mode, handshake and alarm, the batch (held, repeated), and the active faults.
It is a sink of the rig (``on_scan``): each scan only appends a small dict to a bounded
deque; the page's work runs in the UI's own thread (uvicorn). Read-only: nothing on it can
change the rig (faults are injected with ``pharmatwin-hil fault``). Loopback unless
``--allow-remote``, and then only with TLS, as the controller's view.
"""

from __future__ import annotations

import asyncio
import collections
import json
import logging
import threading
from importlib import resources
from typing import TYPE_CHECKING, Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from controller.runtime.ui.bind import Bind, ThreadedServer, start_in_thread

if TYPE_CHECKING:
    from collections.abc import AsyncIterator

    from hil.rig import HilRig

log = logging.getLogger("pharmatwin.hil.ui")


class RigView:
    """Serves the rig's page; :meth:`scan` is the rig's ``on_scan`` (the only call in the
    rig's loop)."""

    def __init__(self, bind: Bind, *, history: int = 3000) -> None:
        self.bind = bind
        self.port = bind.port
        self._rows: collections.deque[dict[str, Any]] = collections.deque(maxlen=history)
        self._status: dict[str, Any] = {}
        self._seq = 0
        self._lock = threading.Lock()
        self._web: ThreadedServer | None = None
        self.meta: dict[str, Any] = {}
        self.app = Starlette(
            routes=[
                Route("/", self._index),
                Route("/static/plotly.js", self._plotly),
                Route("/api/state", self._state),
                Route("/api/events", self._events),
            ]
        )

    # ------------------------------------------------------------------ the rig's side
    def attach(self, rig: HilRig) -> None:
        m = rig.model
        self.meta = {
            "site": rig.site.name,
            "time_unit": m.time_unit,
            "series": {n: m.unit_of(n) for n in (*m.state_names, *m.output_names, *m.input_names)},
        }
        rig.on_scan = self.scan

    def scan(self, rig: HilRig) -> None:
        truth = rig.truth
        row = {"t": truth.t, **truth.states, **truth.outputs, **truth.inputs}
        status = {
            "t": truth.t,
            "time_unit": rig.model.time_unit,
            "plc_mode": rig.vplc.mode.value,
            "alarm": bool(rig.vplc.alarm),
            "applied": dict(rig.applied),
            "batch_over": rig.batch_over,
            "batches": rig.batches,
            "plant_fault": rig.plant_fault.describe() if rig.plant_fault else None,
            "faults": [f.model_dump() for f in rig.faults.active(rig.plant.t)],
        }
        with self._lock:
            self._rows.append(row)
            self._status = status
            self._seq += 1

    # ------------------------------------------------------------------ serving
    def start(self) -> None:
        self._web = start_in_thread(self.app, self.bind, "pharmatwin-hil-ui")
        self.port = self._web.port
        log.info("HIL view at %s", self.url)

    def close(self) -> None:
        if self._web is not None:
            self._web.close()

    @property
    def url(self) -> str:
        return self._web.url if self._web is not None else self.bind.url

    def snapshot(self, since: int = 0) -> dict[str, Any]:
        with self._lock:
            rows = list(self._rows)
            new = rows[max(0, len(rows) - (self._seq - since)) :] if since else rows
            return {"seq": self._seq, "status": dict(self._status), "rows": new}

    async def _index(self, request: Request) -> Response:
        page = (resources.files("hil") / "ui_static" / "rig.html").read_text(encoding="utf-8")
        return HTMLResponse(page)

    async def _plotly(self, request: Request) -> Response:
        from controller.runtime.ui.content import plotly_js

        return Response(plotly_js(), media_type="application/javascript")

    async def _state(self, request: Request) -> Response:
        return JSONResponse({"meta": self.meta, **self.snapshot()})

    async def _events(self, request: Request) -> Response:
        try:
            start = int(request.query_params.get("since", "0"))
        except ValueError:
            start = 0

        async def stream() -> AsyncIterator[str]:
            seq = start
            while self._web is None or not self._web.exiting:
                if await request.is_disconnected():
                    return
                snap = self.snapshot(seq)
                if snap["seq"] != seq:
                    seq = snap["seq"]
                    yield f"data: {json.dumps(snap)}\n\n"
                await asyncio.sleep(0.5)

        return StreamingResponse(stream(), media_type="text/event-stream")
