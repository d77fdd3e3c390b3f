"""B2: one cycle of the edge runtime without the solve, over the memory, Modbus and OPC UA ports.

What one timed cycle is: :meth:`controller.runtime.supervisor.Supervisor.cycle` of the CSTR site in
closed loop, RUNNING under the virtual PLC's handshake, exactly as ``pharmatwin run`` runs it
(:func:`runtime_for` mirrors :func:`controller.runtime.wiring.run_site`): read every readable tag,
check quality and staleness, EKF update, the "solve" (a worker-thread hop to a policy that
returns a precomputed decision, so the solve itself is excluded), safety, the heartbeat write,
one ``setpoint.write`` audit record per input, all in one transaction (SQLite, hash-chained,
``synchronous=FULL``: one fsync per cycle), the setpoint write with read-back, and the
historian record (SQLite, WAL).

The PLC side is the real HIL rig (true plant, virtual PLC, the Modbus server or the secured
OPC UA server, Basic256Sha256 SignAndEncrypt with the test-bench CA in ``configs/pki``) on
127.0.0.1 free ports, in this process. The rig scans *between* cycles on a stepped clock
(one controller sample per cycle), outside the timed window, so the plant's integration is
not counted; the servers' handling of the cycle's requests is (they share this process's
event loop, as in ``bench/port_latency.py``). The memory case uses the campaigns' fast-mode
PLC (``hil.servers.memory``): a tag table that the PLC's range check and write hook guard.

The historian prunes by id range, so its cost per record does not grow with the rows it
keeps (it did before: 0.8 ms per record with 10^3 rows, 7 ms with 10^4).

The precomputed decision is one real MPC solve at the plant's initial state (so it carries
the predicted trajectories the historian stores), with its inputs set to the PLC's working
setpoints, which hold the plant at its operating point for as many cycles as asked.

The estimate phase per model (:func:`estimate_phase`): the same call the runtime's estimate
phase is (``ControlPipeline.estimate``) on each shipped controller's estimator, fed the
noisy outputs of the true plant (the plant file's exact model, simulated beforehand with
cvodes/idas, outside the timed window) under constant inputs, batch after batch for the
batch processes (:data:`ESTIMATE_MODELS`). Target: median <= 0.2 ms.

    python bench/b2_cycle.py [--quick] [--port memory ...] [--estimate-only]
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import datetime as dt
import functools
import os
import secrets
import tempfile
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Collection, Coroutine, Mapping
from contextlib import AsyncExitStack, asynccontextmanager
from pathlib import Path
from typing import Any, Literal, ParamSpec, TypeVar

from run import ROOT, case_failed, git_commit, latency_stats, markdown_table, row

from controller.clock import SteppedClock
from controller.controllerfile import load_controller
from controller.core.estimator import make_estimator
from controller.core.mpc import Decision
from controller.core.pipeline import ControlPipeline, input_limits
from controller.core.policy import build_policy
from controller.plantfile import build_model
from controller.ports.base import Port
from controller.runtime.audit import AuditTrail
from controller.runtime.audit_chain import file_hash, software_version
from controller.runtime.historian import DEFAULT_MAX_CYCLES, Historian, SqliteHistorian
from controller.runtime.historian_records import RunInfo
from controller.runtime.historian_run import library_versions, model_version
from controller.runtime.site import Site, load_site, port_for_site
from controller.runtime.solver_cache import LibraryCache
from controller.runtime.supervisor import CycleView, Mode, State, Supervisor
from controller.runtime.wiring import build_pipeline, config_files, historian_sink
from hil.net import LOOPBACK, free_port
from hil.rig import HilRig
from hil.servers.base import PlcServer
from hil.servers.memory import MemoryPlcServer
from hil.site import hil_section, with_hil

PortKind = Literal["memory", "modbus", "opcua"]
SITES = ROOT / "configs" / "sites"
MODEL = "cstr"
PASSWORD_ENV = "PHARMATWIN_OPCUA_PASSWORD"
TARGETS_MS: dict[PortKind, float] = {"modbus": 2.0, "opcua": 5.0}
CASES: dict[PortKind, str] = {
    "memory": "memory port",
    "modbus": "Modbus TCP",
    "opcua": "OPC UA SignAndEncrypt",
}
FULL = {"cycles": 2000, "warmup": 100}
QUICK = {"cycles": 150, "warmup": 30}
#: The models whose estimate phase is timed: the inputs held meanwhile (else nominal), and
#: the samples of one batch (None: a continuous process). A batch model's plant and
#: estimator start again every batch (outside the timed window): the bioreactor fed for
#: 2000 h leaves every range it was built for (X = 14 g/L) and becomes stiff.
ESTIMATE_MODELS: dict[str, tuple[dict[str, float], int | None]] = {
    "bioreactor": ({"u": 0.05}, 150),
    "crystallizer": ({}, 30),
    "cstr": ({}, None),
    "lyophilizer": ({"Tsh": -10.0, "Pch": 0.1}, 40),
}
ESTIMATE_TARGET_MS = 0.2
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
        dt_s = site.controller.sample_time * site.model.seconds_per_unit
        yield Runtime(site, clock, rig, sup, port, audit, historian, policy, phases, dt_s)


def working_setpoints(kind: PortKind) -> dict[str, float]:
    """The PLC's local setpoints at the start (the HIL scenario's recipe at t = 0)."""
    site = site_for(kind)
    clock = SteppedClock()
    rig = HilRig(site, clock, [MemoryPlcServer(site.tags, clock)])
    return {k: float(v) for k, v in rig.summary()["applied"].items()}


# ---------------------------------------------------------------------- measuring
async def measure(kind: PortKind, cycles: int, warmup: int, decision: Decision) -> dict[str, Any]:
    """Time ``cycles`` supervisor cycles on ``kind`` after ``warmup``; figures in ms."""
    with tempfile.TemporaryDirectory(prefix="pharmatwin-b2-") as tmp_name:
        tmp = Path(tmp_name)
        async with runtime_for(kind, tmp, FixedDecision(decision)) as rt:
            times, states, wrote = [], [], 0
            for k in range(warmup + cycles):
                elapsed, view = await rt.cycle(k)
                keep = k >= warmup
                rt.phases.close_cycle(keep)
                if keep:
                    times.append(elapsed * 1e3)
                    states.append(view.state)
                    wrote += any(tag in view.written for tag in rt.supervisor.sp_tags.values())
            c = rt.supervisor.counters
            counters = dataclasses.asdict(c)
            plc_events = [(e.t, e.what, e.detail) for e in rt.rig.log.plc_events]
            fs = filesystem_of(tmp)
            phases = rt.phases.per_cycle
    running = sum(s is State.RUNNING for s in states)
    if running < 0.99 * cycles or wrote < 0.99 * cycles:
        raise RuntimeError(
            f"{kind}: only {running}/{cycles} timed cycles RUNNING and {wrote} with a setpoint "
            f"write; counters {counters}; PLC events {plc_events}"
        )
    names = ["read", "estimate", "safety", "write", "audit", "historian"]
    phase_stats = {n: latency_stats([p.get(n, 0.0) for p in phases]) for n in names}
    other = [t - sum(p.values()) for t, p in zip(times, phases, strict=True)]
    phase_stats["other"] = latency_stats(other)
    return {
        "port": kind,
        "cycles": cycles,
        "warmup": warmup,
        "cycle_ms": latency_stats(times),
        "phase_ms": phase_stats,
        "running_cycles": running,
        "cycles_with_setpoint_write": wrote,
        "counters": counters,
        "plc_events": plc_events,
        "storage_filesystem": fs,
    }


def _breakdown(m: Mapping[str, Any]) -> str:
    parts = [f"{n} {s['median']:.2f}" for n, s in m["phase_ms"].items()]
    return " / ".join(parts)


def rows_for(m: Mapping[str, Any]) -> list[dict[str, Any]]:
    kind: PortKind = m["port"]
    case = f"{CASES[kind]} ({m['cycles']} cycles)"
    s = m["cycle_ms"]
    target_ms = TARGETS_MS.get(kind)
    target = f"p99 <= {target_ms:g} ms" if target_ms is not None else ""
    met = s["p99"] <= target_ms if target_ms is not None else None
    return [
        row(case, "cycle median", s["median"], "ms"),
        row(case, "cycle p95", s["p95"], "ms"),
        row(case, "cycle p99", s["p99"], "ms", target, met),
        row(case, "median per phase", _breakdown(m), "ms"),
    ]


def _true_outputs(name: str, inputs: Mapping[str, float], n: int) -> list[dict[str, float]]:
    """``n`` noisy samples of the true plant's outputs (cvodes/idas), seeded."""
    import numpy as np

    from plant_models import Role

    cfg, _ = load_controller(ROOT / "configs" / "controllers" / f"{name}.yaml")
    plant = build_model(ROOT / "configs" / "plants" / f"{name}.yaml")
    step, solve_z = plant.integrator(cfg.sample_time), plant.algebraic_solver()
    p, u = plant.parameter_vector(), plant.vector(Role.INPUT, inputs)
    x = plant.vector(Role.STATE, plant.initial_state)
    z = plant.vector(Role.ALGEBRAIC, plant.initial_algebraic)
    spec, rng = cfg.estimator, np.random.default_rng(0)
    std = {
        o: spec.measurement_noise_std.get(o, spec.default_relative_std * plant.variable(o).scale)
        for o in plant.output_names
    }
    out = []
    for k in range(n):
        if k:
            xf, zf = step(x, z, u, p)
            x, z = np.asarray(xf).ravel(), np.asarray(zf).ravel()
        if solve_z is not None:
            z = np.asarray(solve_z(z, x, u, p)).ravel()
        y = np.asarray(plant.function(x, z, u, p)[2]).ravel()
        out.append(
            {
                o: float(v) + rng.normal(0.0, std[o])
                for o, v in zip(plant.output_names, y, strict=True)
            }
        )
    return out


def estimate_phase(name: str, cycles: int, warmup: int) -> dict[str, Any]:
    """Time ``ControlPipeline.estimate`` of model ``name``'s shipped estimator (ms)."""
    cfg, model = load_controller(ROOT / "configs" / "controllers" / f"{name}.yaml")
    held, batch = ESTIMATE_MODELS[name]
    inputs = {**model.nominal_inputs, **held}
    ys = _true_outputs(name, inputs, min(batch or cycles + warmup, cycles + warmup))
    times, problems, rejected, recovered = [], [], 0, 0
    k = 0
    while k < cycles + warmup:
        estimator = make_estimator(model, cfg.estimator, cfg.sample_time, compile=LibraryCache())
        decision = FixedDecision(_no_decision())
        pipeline = ControlPipeline(model, estimator, decision, input_limits(cfg))
        pipeline.start(inputs)
        for y in ys[: cycles + warmup - k]:
            started = time.perf_counter()
            estimate, problem = pipeline.estimate(y)
            elapsed = time.perf_counter() - started
            pipeline.applied(inputs)
            if problem or estimate is None or not estimate.ok:
                why = problem or (estimate.reason if estimate is not None else "no estimate")
                problems.append(f"cycle {k}: {why}")
            elif k >= warmup:
                rejected += len(estimate.rejected)
            if k >= warmup:
                times.append(elapsed * 1e3)
            k += 1
        recovered += getattr(estimator, "recoveries", 0)
    if problems:
        raise RuntimeError(f"{name}: the estimator failed: {problems[:3]}")
    return {
        "model": name,
        "estimator": cfg.estimator.kind,
        "prediction": cfg.estimator.prediction,
        "inputs": inputs,
        "batch_samples": batch,
        "cycles": cycles,
        "warmup": warmup,
        "estimate_ms": latency_stats(times),
        "rejected_measurements": rejected,
        "recovered_predictions": recovered,
    }


def _no_decision() -> Decision:
    from controller.core.mpc import SolveStatus

    return Decision(0.0, {}, SolveStatus.ERROR, "estimate phase only", 0, 0.0)


def estimate_rows(m: Mapping[str, Any]) -> list[dict[str, Any]]:
    what = f"{m['estimator']}, {m['prediction']} prediction, {m['cycles']} cycles"
    case = f"estimate phase, {m['model']} ({what})"
    s = m["estimate_ms"]
    target = f"median <= {ESTIMATE_TARGET_MS:g} ms"
    return [
        row(case, "median", s["median"], "ms", target, s["median"] <= ESTIMATE_TARGET_MS),
        row(case, "p99", s["p99"], "ms"),
        row(case, "measurements rejected by the innovation gate", m["rejected_measurements"]),
        row(case, "predictions recovered by cvodes/idas", m["recovered_predictions"]),
    ]


def port_only_rows(quick: bool) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """The port alone (bench/port_latency.py): read 20 tags + write 4 with read-back."""
    import port_latency

    size = QUICK if quick else FULL
    measured = port_latency.measure(size["cycles"], size["warmup"] // 2)
    rows = []
    for name, s in measured["protocols"].items():
        case = f"port I/O only, {port_latency.LABELS[name]} ({s['n']} cycles)"
        rows.append(row(case, "median", s["median"], "ms"))
        rows.append(row(case, "p99", s["p99"], "ms"))
    return rows, measured


def _port_cases(
    kinds: Collection[PortKind], size: Mapping[str, int], rows: list[dict[str, Any]], raw: dict
) -> bool:
    """The runtime cycle on each port in ``kinds``; rows and raw figures appended. Failed?"""
    decision = precomputed_decision(site_for("memory"), working_setpoints("memory"))
    failed = False
    for kind in kinds:
        try:
            m = asyncio.run(measure(kind, size["cycles"], size["warmup"], decision))
        except Exception as exc:
            bad, raw["measurements"][kind] = case_failed(CASES[kind], exc)
            rows.append(bad)
            failed = True
            continue
        raw["measurements"][kind] = m
        rows += rows_for(m)
    return failed


def run(
    quick: bool = False,
    kinds: Collection[PortKind] = ("memory", "modbus", "opcua"),
    models: Collection[str] = tuple(ESTIMATE_MODELS),
) -> dict:
    """B2 over each port in ``kinds``, the estimate phase of each model in ``models`` (and
    the port-only baseline unless quick or no port is asked for)."""
    size = QUICK if quick else FULL
    rows: list[dict[str, Any]] = []
    raw: dict[str, Any] = {
        "what": (__doc__ or "").split("\n\n")[1],
        "measurements": {},
        "estimate_phase": {},
    }
    failed = False
    for name in models:
        try:
            e = estimate_phase(name, size["cycles"], size["warmup"])
        except Exception as exc:
            bad, raw["estimate_phase"][name] = case_failed(f"estimate phase, {name}", exc)
            rows.append(bad)
            failed = True
            continue
        raw["estimate_phase"][name] = e
        rows += estimate_rows(e)
    if kinds:
        failed = _port_cases(kinds, size, rows, raw) or failed
    if not quick and kinds:
        more, raw["port_only"] = port_only_rows(quick)
        rows += more
    return {
        "name": "B2",
        "title": "one runtime cycle without the solve (CSTR site); estimate phase per model",
        "rows": rows,
        "raw": raw,
        **({"status": "error"} if failed else {}),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--port", choices=["memory", "modbus", "opcua"], action="append")
    ap.add_argument(
        "--estimate-only", action="store_true", help="only the estimate phase of every model"
    )
    args = ap.parse_args()
    every: tuple[PortKind, ...] = ("memory", "modbus", "opcua")
    kinds: tuple[PortKind, ...] = () if args.estimate_only else tuple(args.port or every)
    result = run(args.quick, kinds)
    print(markdown_table([result]))


if __name__ == "__main__":
    main()
