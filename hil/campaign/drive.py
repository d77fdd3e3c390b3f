"""Driving one campaign case: the HIL rig and the edge runtime, to the end of the scenario.

Both modes run the same HIL rig (true plant, virtual PLC, faults) and the same edge runtime
(:func:`controller.runtime.wiring.run_site`: supervisor, estimator, MPC, safety, audit trail)
on one case's files; they differ only in the port and the clock:

* ``fast``: a :class:`DrivenClock` (stepped) and the in-memory PLC image
  (:class:`~hil.servers.memory.MemoryPlcServer`). The driver scans the PLC at the plant step,
  lets the supervisor finish whatever is due at that instant (:func:`settle`), then advances
  the clock: fully deterministic, as fast as the solver allows;
* ``hil``: the site's own protocol (Modbus TCP or OPC UA) on a free loopback port, with the
  rig scanning on a :class:`~controller.clock.ScaledClock` (process time is scaled wall time,
  so a process the machine does not schedule loses process time too).

A controller loss severs the runtime's port and cancels it, as when its process dies.
:func:`execute` returns the :class:`~hil.campaign.criteria.Recording` and the runtime's
counters.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from pathlib import Path
from typing import Any

from controller.clock import Clock, Gate, ScaledClock, SteppedClock
from controller.ports.base import Port
from controller.runtime.site import Site, port_for_site
from controller.runtime.supervisor import Mode
from controller.runtime.wiring import RunOptions, run_site
from hil.campaign.cases import Case
from hil.campaign.criteria import Recording
from hil.campaign.recorder import Recorder, RecordingPort
from hil.rig import HilRig
from hil.servers.base import PlcServer
from hil.servers.memory import MemoryPlcServer
from hil.site import load_hil_site_and_scenario

LOOPBACK = "127.0.0.1"
#: the audit trail's commits per mode. fast: the PLC is virtual and in this process, so a
#: crash loses both and the case (no ``result.json``) is run again; each record is committed
#: (in the WAL) before its write is sent, and the trail is made durable (checkpointed, fsynced)
#: when it closes, before the case's ``result.json`` is written. hil: every commit fsynced,
#: as on site.
AUDIT_SYNCHRONOUS = {"fast": "NORMAL", "hil": "FULL"}
#: the historian file's ``synchronous`` per mode. fast: never fsynced, like the case's other
#: evidence besides its audit trail (recordings, ``result.json``); a case that did not finish
#: runs again with a fresh historian (:data:`hil.campaign.runner.STALE_FILES`), a finished
#: case's files other than its audit trail are not protected against a power cut. hil: as on
#: site.
HISTORIAN_SYNCHRONOUS = {"fast": "OFF", "hil": "NORMAL"}
#: cycles per historian commit per mode. fast: in batches (a case is read after it ends, and
#: one that did not finish runs again with a fresh historian); hil: each cycle, as on site.
HISTORIAN_COMMIT_EVERY = {"fast": 64, "hil": 1}


class DrivenClock(SteppedClock):
    """A stepped clock that tells its driver when a task parks on it (no polling)."""

    def __init__(self) -> None:
        super().__init__()
        self._on_park: asyncio.Future[None] | None = None

    def on_park(self) -> asyncio.Future[None]:
        """A future done when the next task parks on the clock (one per caller)."""
        self._on_park = asyncio.get_running_loop().create_future()
        return self._on_park

    async def sleep_until(self, t: float) -> None:
        # the sleeper registers (below) before the woken driver runs
        if t > self.now() and self._on_park is not None and not self._on_park.done():
            self._on_park.set_result(None)
        await super().sleep_until(t)


async def settle(clock: DrivenClock, task: asyncio.Task[Any]) -> None:
    """Let the runtime finish all it has to do at this instant (until it sleeps on the clock).

    Waits on one future that the clock (a task parks) or the runtime's end completes: no
    helper task per wait."""
    while clock.waiting == 0 and not task.done():
        parked = clock.on_park()

        def wake(_: object, parked: asyncio.Future[None] = parked) -> None:
            if not parked.done():
                parked.set_result(None)

        task.add_done_callback(wake)
        try:
            await parked
        finally:
            task.remove_done_callback(wake)


async def _lose(task: asyncio.Task[Any], port: RecordingPort) -> None:
    """The controller's process dies: its link goes first, so nothing more reaches the PLC.
    The recording notes when (the planned time is a lower bound)."""
    port.rec.lost_at = port.rec.timebase.model_time(port.clock.now())
    port.severed = True
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task


async def _drive_stepped(
    rig: HilRig,
    clock: DrivenClock,
    task: asyncio.Task[Any],
    port: RecordingPort,
    loss_at: float | None,
    duration: float,
) -> None:
    scan_s = rig.timebase.seconds(rig.plant_step)
    end = duration - 1e-9
    k = 0
    while True:
        await rig.scan()
        if rig.plant_fault is not None:
            return
        if rig.plant.t >= end or (rig.scenario.stop_when_finished and rig.plant.finished()):
            return
        if loss_at is not None and not task.done() and rig.plant.t >= loss_at - 1e-9:
            await _lose(task, port)
        if not task.done():
            await settle(clock, task)
        elif task.cancelled() is False and task.exception() is not None:
            raise task.exception()  # type: ignore[misc]
        k += 1
        clock.advance_to(k * scan_s)


async def _drive_scaled(
    rig: HilRig,
    clock: Clock,
    task: asyncio.Task[Any],
    port: RecordingPort,
    loss_at: float | None,
    duration: float,
) -> None:
    stop = asyncio.Event()

    async def lose_later() -> None:
        if loss_at is None:  # only scheduled for a planned loss
            raise RuntimeError("controller loss scheduled without a time")
        await clock.sleep_until(rig.timebase.seconds(loss_at))
        await _lose(task, port)

    loser = asyncio.ensure_future(lose_later()) if loss_at is not None else None
    runner = asyncio.ensure_future(rig.run(stop, duration_s=rig.timebase.seconds(duration)))
    try:
        waiting: set[asyncio.Future[Any]] = {runner, task}
        done, _ = await asyncio.wait(waiting, return_when=asyncio.FIRST_COMPLETED)
        if task in done and not task.cancelled() and task.exception() is not None:
            raise task.exception()  # type: ignore[misc]
        if task in done:  # lost: the rig goes on to the end of the run
            await runner
    finally:
        stop.set()
        with contextlib.suppress(asyncio.CancelledError):
            await runner
        if loser is not None:
            loser.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await loser


async def _servers(site: Site, mode: str, clock: Clock, case_dir: Path) -> list[PlcServer]:
    if mode == "fast":
        return [MemoryPlcServer(site.tags, clock)]
    if site.connection.protocol == "modbus":
        from hil.servers.modbus import modbus_server_for_site

        return [modbus_server_for_site(site, port=site.connection.port, host=LOOPBACK)]
    from hil.servers.opcua import opcua_server_for_site

    return [
        await opcua_server_for_site(
            site, port=site.connection.port, host=LOOPBACK, state_dir=case_dir / "hil-state"
        )
    ]


async def _first_cycle(rec: Recording, task: asyncio.Task[Any], timeout_s: float = 60.0) -> None:
    """Wait (wall time) until the runtime has completed a cycle, or has ended."""
    deadline = time.monotonic() + timeout_s
    while not rec.cycles and not task.done() and time.monotonic() < deadline:
        await asyncio.sleep(0.01)


async def execute(
    site_path: Path, case: Case, case_dir: Path, mode: str, rate: float
) -> tuple[Recording, dict[str, Any]]:
    """Run one case's files to the end; return the recording and the runtime's counters."""
    site, scenario = load_hil_site_and_scenario(site_path)
    gate = Gate()
    clock: Clock = DrivenClock() if mode == "fast" else ScaledClock(rate, monotonic=gate)
    servers = await _servers(site, mode, clock, case_dir)
    recorder = Recorder(site, clock)
    fast = mode == "fast"
    rig = HilRig(site, clock, servers, on_scan=recorder.scan, scenario=scenario, lookahead=fast)
    first = servers[0]
    inner: Port = first.port() if isinstance(first, MemoryPlcServer) else port_for_site(site, clock)
    port = RecordingPort(inner, site, clock, recorder.rec)
    recorder.rec.loss_at = case.controller_loss_at
    opts = RunOptions(
        mode=Mode.CLOSED_LOOP,
        rate=rate if mode == "hil" else 1.0,
        audit_path=case_dir / "audit.db",
        audit_synchronous=AUDIT_SYNCHRONOUS.get(mode, "FULL"),  # FULL unless fast
        historian_path=case_dir / "history.db",  # cycles and the twin's events, as on site
        historian_synchronous=HISTORIAN_SYNCHRONOUS.get(mode, "NORMAL"),
        historian_commit_every=HISTORIAN_COMMIT_EVERY.get(mode, 1),
    )
    try:
        for server in servers:
            await server.start()
        counters = await _run(site, opts, rig, clock, gate, port, recorder, case.controller_loss_at)
    finally:
        for server in servers:
            await server.close()
    return recorder.rec, counters


async def _run(
    site: Site,
    opts: RunOptions,
    rig: HilRig,
    clock: Clock,
    gate: Gate,
    port: RecordingPort,
    recorder: Recorder,
    loss_at: float | None,
) -> dict[str, Any]:
    """Start the runtime on ``port`` and drive the rig to the end; the runtime's counters."""
    stop = asyncio.Event()
    counters: dict[str, Any] = {}
    if not isinstance(clock, DrivenClock):
        await rig.scan()  # the PLC image at t = 0, for the controller's first read
    task = asyncio.ensure_future(
        run_site(site, opts, port=port, clock=clock, stop=stop, observer=recorder.cycle)
    )
    try:
        if isinstance(clock, DrivenClock):
            await _drive_stepped(rig, clock, task, port, loss_at, rig.scenario.duration)
        else:
            await _first_cycle(recorder.rec, task)
            gate.open()
            await _drive_scaled(rig, clock, task, port, loss_at, rig.scenario.duration)
    finally:
        stop.set()
        if not task.done() and isinstance(clock, DrivenClock):
            await settle(clock, task)
        with contextlib.suppress(asyncio.CancelledError):
            sup = await task
            counters = {k: v for k, v in vars(sup.counters).items()}
    return counters
