"""Liveness in the Prometheus metrics: when the loop last completed a cycle, whether (and when
last) its read of the PLC worked, and whether the loop is stalled, by the operator view's rule.

A real supervisor (shadow mode, on the in-memory port and a stepped process clock) feeds a
real :class:`MetricsSink`, scraped over HTTP on a free loopback port. Without these metrics a
PLC gone in shadow mode left ``pharmatwin_state{state="SHADOW"} 1`` on while every read
failed, and a loop stalled on a held audit trail lock showed its last state and a frozen
``cycles_total``, with nothing saying the loop had stopped.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path

import httpx
from test_metrics import _samples
from test_supervisor import DT, Plc, RecordingPort, StubPolicy, _table, site  # noqa: F401 - a fixture

from controller.clock import SteppedClock
from controller.runtime.audit import AuditTrail
from controller.runtime.cycle import CycleView
from controller.runtime.metrics import MetricsSink
from controller.runtime.site import Site
from controller.runtime.supervisor import Mode, Supervisor
from controller.runtime.ui import OperatorView, parse_bind
from controller.runtime.wiring import Sink, build_pipeline


@dataclass
class Rig:
    sup: Supervisor
    plc: Plc
    port: RecordingPort
    clock: SteppedClock
    sink: MetricsSink
    cycles: int = 0

    async def cycle(self) -> CycleView:
        """One PLC scan, one controller cycle, then a sample of process time."""
        self.plc.scan()
        view = await self.sup.cycle(self.cycles, self.clock.now())
        self.cycles += 1
        self.clock.advance(DT)
        return view

    async def scrape(self) -> dict[str, float]:
        """The unlabelled samples and the current state of a scrape of ``/metrics``."""
        async with httpx.AsyncClient() as client:
            resp = await client.get(f"http://127.0.0.1:{self.sink.port}/metrics")
        assert resp.status_code == 200
        got = _samples(resp.text)
        out = {name: v for (name, labels), v in got.items() if not labels}
        (current,) = [
            dict(lab)["state"]
            for (n, lab), v in got.items()
            if n == "pharmatwin_state" and v == 1.0
        ]
        out["state=" + current] = 1.0
        return out


@contextlib.asynccontextmanager
async def rig(
    where: Site,
    tmp: Path,
    *,
    sinks: tuple[OperatorView, ...] = (),
    now: Callable[[], float] | None = None,
) -> AsyncIterator[Rig]:
    """A shadow-mode supervisor whose cycles go to a metrics sink (and ``sinks``), listening;
    ``now``: the sink's wall clock (its default when None)."""
    clock = SteppedClock()
    table = _table(where)
    port = RecordingPort(table, clock)
    await port.connect()
    audit = AuditTrail(tmp / "audit.db", config_hash="cfg", actor="pharmatwin-service")
    port.audit = audit
    bind = parse_bind("--metrics", "127.0.0.1:0")
    sink = MetricsSink(bind) if now is None else MetricsSink(bind, now=now)

    every_sink: tuple[Sink, ...] = (sink, *sinks)

    def every(sup: Supervisor, view: CycleView) -> None:
        for s in every_sink:
            s.cycle(sup, view)

    policy = StubPolicy({"Tsh": 100.0, "Pch": 0.3})
    sup = Supervisor(
        where,
        port,
        clock,
        build_pipeline(where, policy),
        mode=Mode.SHADOW,
        audit=audit,
        historian=every,
    )
    stop = asyncio.Event()
    started: list[Sink] = []
    try:
        for s in every_sink:
            s.start(sup, stop)
            started.append(s)
        yield Rig(sup, Plc(table, clock), port, clock, sink)
    finally:
        for s in started:
            s.close()
        await port.close()
        audit.close()


async def test_a_failed_plc_read_shows_and_the_last_good_read_stays(
    site: Site,  # noqa: F811 - the fixture
    tmp_path: Path,
) -> None:
    async with rig(site, tmp_path) as r:
        await r.cycle()
        good = await r.scrape()
        assert good["state=SHADOW"] == 1.0
        assert good["pharmatwin_plc_read_ok"] == 1.0
        good_at = good["pharmatwin_last_good_read_timestamp_seconds"]
        assert good["pharmatwin_last_cycle_timestamp_seconds"] == good_at
        assert good_at > 1.6e9  # unix seconds (after September 2020), not process time
        await r.port.close()  # the PLC is gone: every read fails
        view = await r.cycle()
        assert view.snapshot is None and any("read failed" in p for p in view.problems)
        gone = await r.scrape()
        assert gone["state=SHADOW"] == 1.0  # the state alone still says all is well ...
        assert gone["pharmatwin_read_failures_total"] == 1.0
        assert gone["pharmatwin_plc_read_ok"] == 0.0  # ... this does not
        assert gone["pharmatwin_last_good_read_timestamp_seconds"] == good_at
        assert gone["pharmatwin_last_cycle_timestamp_seconds"] >= good_at
        await r.port.connect()  # back
        await r.cycle()
        back = await r.scrape()
        assert back["pharmatwin_plc_read_ok"] == 1.0
        good_again = back["pharmatwin_last_good_read_timestamp_seconds"]
        assert good_again == back["pharmatwin_last_cycle_timestamp_seconds"] >= good_at


async def test_stalled_on_the_injected_clock_as_the_operator_view_says(
    site: Site,  # noqa: F811 - the fixture
    tmp_path: Path,
) -> None:
    wall = [1_700_000_000.0]
    now = lambda: wall[0]  # noqa: E731
    ui = OperatorView(parse_bind("--ui", "127.0.0.1:0"), now=now)
    async with rig(site, tmp_path, sinks=(ui,), now=now) as r, httpx.AsyncClient() as client:

        async def view_says() -> bool:
            live = (await client.get(f"{ui.url}/api/state")).json()["live"]
            return bool(live["stalled"])

        before = await r.scrape()
        assert before["pharmatwin_stalled"] == 0.0  # no cycle yet: not stalled (as the view)
        assert "pharmatwin_last_cycle_timestamp_seconds" not in before
        assert not await view_says()
        await r.cycle()
        first = await r.scrape()
        assert first["pharmatwin_last_cycle_timestamp_seconds"] == wall[0]
        assert first["pharmatwin_stalled"] == 0.0
        after_s = ui.liveness()["stale_after_s"]
        assert after_s == 3 * DT  # a stepped clock runs at rate 1: three sample times
        wall[0] += after_s  # at the limit: not yet
        assert (await r.scrape())["pharmatwin_stalled"] == 0.0
        assert not await view_says()
        wall[0] += 1.0  # beyond it: stalled, on the metrics as on the page
        stuck = await r.scrape()
        assert stuck["pharmatwin_stalled"] == 1.0
        assert await view_says()
        assert stuck["state=SHADOW"] == 1.0  # its last state, as before
        assert stuck["pharmatwin_cycles_total"] == first["pharmatwin_cycles_total"]
        await r.cycle()  # the loop goes on
        again = await r.scrape()
        assert again["pharmatwin_stalled"] == 0.0
        assert not await view_says()
        assert again["pharmatwin_last_cycle_timestamp_seconds"] == wall[0]
