"""B2's runtime under test: the CSTR site's supervisor wired as ``run_site`` wires it.

:func:`runtime_for` builds the supervisor on a memory, Modbus or OPC UA port against the HIL
rig (in this process, on loopback), with a :class:`FixedDecision` policy in place of the solve
and :class:`Phases` timing the named calls of each cycle. B2 (``bench/b2_cycle.py``), B5 and
B7 time cycles of it.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import functools
import os
import secrets
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine, Mapping
from contextlib import AsyncExitStack, asynccontextmanager
from pathlib import Path
from typing import Any, Literal, ParamSpec, TypeVar

from run import ROOT, git_commit

from controller.clock import SteppedClock
from controller.core.mpc import Decision
from controller.core.policy import build_policy
from controller.ports.base import Port
from controller.runtime.audit import AuditTrail
from controller.runtime.audit_chain import file_hash, software_version
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

    async def cycle(self, k: int) -> tuple[float, CycleView]:
        """Scan the PLC (untimed), run cycle ``k`` (timed, seconds), advance one sample."""
        await (self.scan or self.rig.scan)()
        t = self.clock.now()
        started = time.perf_counter()
        view = await self.supervisor.cycle(k, t)
        elapsed = time.perf_counter() - started
        self.clock.advance(self.dt_s)
        return elapsed, view


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
        if kind == "memory":
            memory = MemoryPlcServer(site.tags, clock)  # the campaigns' fast-mode PLC
            await memory.start()
            server: PlcServer = memory
            port: Port = memory.port()
        else:
            server = await _plc_server(kind, site, tmp, stack)
            port = port_for_site(_on_port(site, getattr(server, "port", 0)), clock)
        rig = HilRig(site, clock, [server])
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
        sink = phases.wrap("historian", historian_sink(historian, site.runtime.predicted_steps))
        sup = Supervisor(
            site, port, clock, pipeline, mode=Mode.CLOSED_LOOP, audit=audit, historian=sink,
            run_id=run_id,
        )  # fmt: skip
        await stack.enter_async_context(port)
        port.read = phases.wrap_async("read", port.read)  # type: ignore[method-assign]
        port.write = phases.wrap_async("write", port.write)  # type: ignore[method-assign]
        dt_s = TimeBase.of(site.model).seconds(site.controller.sample_time)
        yield Runtime(site, clock, rig, sup, port, audit, historian, policy, phases, dt_s)


def working_setpoints(kind: PortKind) -> dict[str, float]:
    """The PLC's local setpoints at the start (the HIL scenario's recipe at t = 0)."""
    site = site_for(kind)
    clock = SteppedClock()
    rig = HilRig(site, clock, [MemoryPlcServer(site.tags, clock)])
    return {k: float(v) for k, v in rig.summary()["applied"].items()}
