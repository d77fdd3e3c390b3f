"""B2's runtime under test: the CSTR site's supervisor wired as ``run_site`` wires it.

:func:`runtime_for` builds the supervisor on a memory, Modbus or OPC UA port against the HIL
rig on loopback, with a :class:`FixedDecision` policy in place of the solve and
:class:`Phases` timing the named calls of each cycle. B2 (``bench/b2_cycle.py``), B5 and
B7 time cycles of it.

Over Modbus and OPC UA the rig and its server run on a thread and event loop of their own
(:class:`plc_thread.PlcThread`), as a PLC answers from its own CPU: the timed loop runs the
controller's code only, and waits on the wire for the PLC's answers. The rig's scan between
two cycles is handed to that thread and awaited (untimed). The memory port has no server:
its PLC is a tag table the controller's calls reach directly, in the same loop.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import functools
import os
import secrets
import threading
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine, Mapping
from contextlib import AsyncExitStack, asynccontextmanager
from pathlib import Path
from typing import Any, Literal, ParamSpec, TypeVar

from plc_thread import PlcThread
from run import ROOT, git_commit

from controller.clock import SteppedClock
from controller.core.mpc import Decision
from controller.core.policy import build_policy
from controller.ports.base import Port
from controller.runtime.audit import AuditTrail
from controller.runtime.audit_chain import file_hash, software_version
from controller.runtime.audit_writer import Pending
from controller.runtime.historian import DEFAULT_MAX_CYCLES, Historian, SqliteHistorian
from controller.runtime.historian_records import RunInfo
from controller.runtime.historian_run import library_versions, model_version
from controller.runtime.site import Site, load_site, port_for_site
from controller.runtime.solver_cache import LibraryCache
from controller.runtime.supervisor import CycleView, Mode, Supervisor
from controller.runtime.wiring import build_pipeline, config_files, historian_sink
from controller.timebase import TimeBase
from hil.net import LOOPBACK, free_port
from hil.rig import HilRig
from hil.servers.base import PlcServer
from hil.servers.memory import MemoryPlcServer
from hil.site import hil_section, with_hil

PortKind = Literal["memory", "modbus", "opcua"]
SITES = ROOT / "configs" / "sites"
MODEL = "cstr"
PASSWORD_ENV = "PHARMATWIN_OPCUA_PASSWORD"
P = ParamSpec("P")
T = TypeVar("T")


# ---------------------------------------------------------------------- the fixed policy
class FixedDecision:
    """A :class:`~controller.core.pipeline.Policy` returning one precomputed decision (no solve)."""

    def __init__(self, decision: Decision) -> None:
        self.decision = decision
        self.calls = 0

    def reset(self, u_prev: Mapping[str, float]) -> None:
        pass

    def step(
        self,
        t: float,
        x_hat: Mapping[str, float],
        params: Mapping[str, float] | None = None,
        u_prev: Mapping[str, float] | None = None,
    ) -> Decision:
        self.calls += 1
        return dataclasses.replace(self.decision, t=t)


def precomputed_decision(site: Site, hold: Mapping[str, float]) -> Decision:
    """One real MPC solve at the model's initial state; its inputs replaced by ``hold``."""
    model = site.model
    mpc = build_policy(site.controller, model, compile=LibraryCache(), source=str(site.path))
    mpc.reset(hold)
    decision = mpc.step(0.0, model.initial_state, model.parameters, u_prev=hold)
    if not decision.ok:
        raise RuntimeError(f"the MPC could not solve at the initial state: {decision}")
    return dataclasses.replace(decision, inputs=dict(hold))


# ---------------------------------------------------------------------- timing helpers
class Phases:
    """Wall time spent in named calls during the current cycle (ms), summed per cycle."""

    def __init__(self) -> None:
        self.current: dict[str, float] = {}
        self.per_cycle: list[dict[str, float]] = []

    def add(self, name: str, seconds: float) -> None:
        self.current[name] = self.current.get(name, 0.0) + seconds * 1e3

    def close_cycle(self, keep: bool) -> None:
        if keep:
            self.per_cycle.append(self.current)
        self.current = {}

    def wrap(self, name: str, fn: Callable[P, T]) -> Callable[P, T]:
        @functools.wraps(fn)
        def timed(*args: P.args, **kwargs: P.kwargs) -> T:
            started = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                self.add(name, time.perf_counter() - started)

        return timed

    def wrap_async(
        self, name: str, fn: Callable[P, Coroutine[Any, Any, T]]
    ) -> Callable[P, Coroutine[Any, Any, T]]:
        @functools.wraps(fn)
        async def timed(*args: P.args, **kwargs: P.kwargs) -> T:
            started = time.perf_counter()
            try:
                return await fn(*args, **kwargs)
            finally:
                self.add(name, time.perf_counter() - started)

        return timed

    def wrap_submit(self, name: str, fn: Callable[P, Pending[T]]) -> Callable[P, TimedPending]:
        """``fn`` submits work and returns a :class:`Pending`: time the call and the waits."""

        @functools.wraps(fn)
        def timed(*args: P.args, **kwargs: P.kwargs) -> TimedPending:
            started = time.perf_counter()
            try:
                pending = fn(*args, **kwargs)
            finally:
                self.add(name, time.perf_counter() - started)
            return TimedPending(pending, functools.partial(self.add, name))

        return timed


class TimedPending:
    """A submitted audit group (:class:`Pending`) whose waits add to a phase of :class:`Phases`."""

    def __init__(self, pending: Pending[Any], add: Callable[[float], None]) -> None:
        self.pending, self.add = pending, add

    def result(self) -> Any:
        started = time.perf_counter()
        try:
            return self.pending.result()
        finally:
            self.add(time.perf_counter() - started)

    async def durable(self) -> Any:
        started = time.perf_counter()
        try:
            return await self.pending.durable()
        finally:
            self.add(time.perf_counter() - started)

    def done(self) -> bool:
        return self.pending.done()


def filesystem_of(path: Path) -> str:
    """``<fstype> on <mount point>`` for the filesystem holding ``path`` (from /proc/mounts)."""
    best, fstype = "", "unknown"
    try:
        mounts = Path("/proc/mounts").read_text().splitlines()
    except OSError:
        return fstype
    target = str(path.resolve())
    for line in mounts:
        parts = line.split()
        if len(parts) > 2 and target.startswith(parts[1]) and len(parts[1]) > len(best):
            best, fstype = parts[1], parts[2]
    return f"{fstype} on {best}"


# ---------------------------------------------------------------------- the runtime under test
@dataclasses.dataclass
class Runtime:
    """A supervisor wired as ``run_site`` wires it, plus the rig standing in for the PLC."""

    site: Site
    clock: SteppedClock
    rig: HilRig
    supervisor: Supervisor
    port: Port
    audit: AuditTrail
    historian: Historian
    policy: Any
    phases: Phases
    dt_s: float
    scan: Callable[[], Awaitable[None]] | None = None  # the PLC's scan (default: the rig's)
    #: the thread the rig and its server run on (None: the memory PLC, on the timed loop)
    plc_thread: threading.Thread | None = None
    #: per cycle, the CPU time [ms] within the timed window of the timed loop's thread and of
    #: the PLC's thread (None without one)
    cpu_ms: list[tuple[float, float | None]] = dataclasses.field(default_factory=list)
    #: the PLC server's count of requests so far (None: the memory PLC, no wire)
    plc_requests: Callable[[], int] | None = None
    #: per cycle, the requests the PLC's server received within the timed window
    requests: list[int] = dataclasses.field(default_factory=list)

    async def cycle(self, k: int) -> tuple[float, CycleView]:
        """Scan the PLC (untimed), run cycle ``k`` (timed, seconds), advance one sample."""
        await (self.scan or self.rig.scan)()
        t = self.clock.now()
        plc_cpu = _cpu_clock(self.plc_thread)
        count = self.plc_requests or (lambda: 0)
        requests0 = count()
        cpu0, plc0 = time.thread_time(), plc_cpu()
        started = time.perf_counter()
        view = await self.supervisor.cycle(k, t)
        elapsed = time.perf_counter() - started
        cpu, plc = time.thread_time() - cpu0, plc_cpu()
        self.requests.append(count() - requests0)
        plc_ms = None if plc is None or plc0 is None else (plc - plc0) * 1e3
        self.cpu_ms.append((cpu * 1e3, plc_ms))
        self.clock.advance(self.dt_s)
        return elapsed, view


def _cpu_clock(thread: threading.Thread | None) -> Callable[[], float | None]:
    """The CPU time [s] of ``thread`` so far, as a function (None without a thread)."""
    if thread is None or thread.ident is None:
        return lambda: None
    clock_id = time.pthread_getcpuclockid(thread.ident)
    return lambda: time.clock_gettime(clock_id)


def site_for(kind: PortKind) -> Site:
    protocol = "opcua" if kind == "opcua" else "modbus"
    return load_site(SITES / f"{MODEL}-{protocol}.yaml")


def _on_port(site: Site, port: int) -> Site:
    return dataclasses.replace(site, connection=site.connection.model_copy(update={"port": port}))


def _run_info(site: Site, run_id: str) -> RunInfo:
    """The run record ``run_site`` stores (built here without running git)."""
    import hashlib
    import platform

    hashes = {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in config_files(site)}
    return RunInfo(
        run_id=run_id,
        started_utc=dt.datetime.now(dt.UTC).isoformat(timespec="microseconds"),
        site=site.name,
        mode=Mode.CLOSED_LOOP.value,
        software_version=software_version(),
        git_commit=git_commit(),
        config_hashes=hashes,
        model=site.model.name,
        model_version=model_version(site.model),
        python_version=f"{platform.python_implementation()} {platform.python_version()}",
        library_versions=library_versions(),
    )


async def _plc_server(kind: PortKind, site: Site, tmp: Path, stack: AsyncExitStack) -> PlcServer:
    """The site's Modbus or OPC UA server on a free loopback port, entered on ``stack``."""
    if kind == "modbus":
        from hil.servers.modbus import modbus_server_for_site

        server: PlcServer = modbus_server_for_site(site, port=free_port(), host=LOOPBACK)
    else:
        from hil.servers.opcua import opcua_server_for_site

        server = await opcua_server_for_site(
            site, port=free_port(), host=LOOPBACK, state_dir=tmp / "hil", shelf=tmp
        )
    await stack.enter_async_context(server)
    return server


def request_counter(server: PlcServer) -> Callable[[], int]:
    """The server's requests so far: Modbus requests, or OPC UA Read and Write calls (those
    touching the site's nodes)."""
    from hil.servers.modbus import ModbusPlcServer
    from hil.servers.opcua import OpcUaPlcServer

    if isinstance(server, ModbusPlcServer):
        modbus = server
        return lambda: modbus.request_count
    if isinstance(server, OpcUaPlcServer):
        opcua = server
        return lambda: opcua.read_requests + opcua.write_requests
    raise TypeError(f"no request count for a {type(server).__name__}")


async def _served_rig(
    kind: PortKind, site: Site, clock: SteppedClock, tmp: Path, stack: AsyncExitStack
) -> tuple[PlcServer, HilRig, Callable[[], Awaitable[None]], threading.Thread]:
    """The server and the rig on a :class:`PlcThread` of their own (closed by ``stack``), and
    the scan to await from the timed loop. The rig only reads the clock (``now``), which the
    timed loop advances between cycles, while no scan runs."""
    plc = PlcThread(f"hil-plc-{kind}").start()
    served = AsyncExitStack()  # entered and closed on the PLC's loop

    async def close() -> None:
        try:
            await plc.run(served.aclose())
        finally:
            await plc.close()

    stack.push_async_callback(close)

    async def serve() -> tuple[PlcServer, HilRig]:
        server = await _plc_server(kind, site, tmp, served)
        return server, HilRig(site, clock, [server])

    server, rig = await plc.run(serve())

    async def scan() -> None:
        await plc.run(rig.scan())

    return server, rig, scan, plc.thread


@asynccontextmanager
async def runtime_for(
    kind: PortKind,
    tmp: Path,
    policy: Any,
    *,
    plant_substeps: int | None = None,
    historian_max_cycles: int = DEFAULT_MAX_CYCLES,
) -> AsyncIterator[Runtime]:
    """The CSTR site's runtime on ``kind``, its audit trail and historian in ``tmp``.

    ``plant_substeps``: the rig's plant steps per sample (default: the site's, 5).
    ``historian_max_cycles``: the historian's retention (default: the runtime's).
    """
    os.environ.setdefault(PASSWORD_ENV, secrets.token_hex(12))  # loopback test bench only
    site = site_for(kind)
    hil = hil_section(site)
    if plant_substeps is not None and hil is not None:
        step = site.controller.sample_time / plant_substeps
        site = with_hil(site, hil.model_copy(update={"plant_step": step}))
    clock = SteppedClock()
    async with AsyncExitStack() as stack:
        scan: Callable[[], Awaitable[None]] | None = None
        plc_thread: threading.Thread | None = None
        requests: Callable[[], int] | None = None
        if kind == "memory":
            memory = MemoryPlcServer(site.tags, clock)  # the campaigns' fast-mode PLC
            await memory.start()
            port: Port = memory.port()
            rig = HilRig(site, clock, [memory])
        else:
            server, rig, scan, plc_thread = await _served_rig(kind, site, clock, tmp, stack)
            requests = request_counter(server)
            port = port_for_site(_on_port(site, getattr(server, "port", 0)), clock)
        files = config_files(site)
        audit = AuditTrail(
            tmp / "audit.db", config_hash=file_hash(*files), actor=site.runtime.service_identity
        )
        stack.callback(audit.close)
        run_id = f"bench-{uuid.uuid4().hex[:8]}"
        historian: Historian = SqliteHistorian(tmp / "history.db", max_cycles=historian_max_cycles)
        stack.callback(historian.close)
        historian.start_run(_run_info(site, run_id))
        phases = Phases()
        pipeline = build_pipeline(site, policy)
        pipeline.estimate = phases.wrap("estimate", pipeline.estimate)  # type: ignore[method-assign]
        pipeline.guard = phases.wrap("safety", pipeline.guard)  # type: ignore[method-assign]
        # every audit record goes through record_all (record() calls it): time it there once
        audit.record_all = phases.wrap("audit", audit.record_all)  # type: ignore[method-assign]
        # ... or go to the writer thread: the submission and the wait for durability, timed
        audit.submit_all = phases.wrap_submit("audit", audit.submit_all)  # type: ignore[method-assign]
        sink = phases.wrap("historian", historian_sink(historian, site.runtime.predicted_steps))
        sup = Supervisor(
            site, port, clock, pipeline, mode=Mode.CLOSED_LOOP, audit=audit, historian=sink,
            run_id=run_id,
        )  # fmt: skip
        await stack.enter_async_context(port)
        port.read = phases.wrap_async("read", port.read)  # type: ignore[method-assign]
        port.write = phases.wrap_async("write", port.write)  # type: ignore[method-assign]
        if port.batches_writes:  # else write_each calls the timed write per group
            port.write_each = phases.wrap_async("write", port.write_each)  # type: ignore[method-assign]
        dt_s = TimeBase.of(site.model).seconds(site.controller.sample_time)
        yield Runtime(
            site, clock, rig, sup, port, audit, historian, policy, phases, dt_s, scan, plc_thread,
            plc_requests=requests,
        )  # fmt: skip


def working_setpoints(kind: PortKind) -> dict[str, float]:
    """The PLC's local setpoints at the start (the HIL scenario's recipe at t = 0)."""
    site = site_for(kind)
    clock = SteppedClock()
    rig = HilRig(site, clock, [MemoryPlcServer(site.tags, clock)])
    return {k: float(v) for k, v in rig.summary()["applied"].items()}
