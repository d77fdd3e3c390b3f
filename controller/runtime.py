"""The edge runtime behind ``pharmatwin run SITE --mode shadow|closed-loop``.

It wires a site into one supervised loop: the port the site asks for, the EKF, the MPC, the
safety limits, the audit trail and the historian; records the run (software version, git
commit, config and model hashes, library versions); and handles SIGINT/SIGTERM by
releasing control to the PLC and writing a final audit record.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from controller.audit import AuditTrail, file_hash
from controller.clock import Clock, RealClock, ScaledClock
from controller.config import resolve
from controller.errors import PortError
from controller.estimator import make_estimator
from controller.historian import Historian, cycle_record, open_historian, run_info
from controller.mpc import ModelPredictiveController
from controller.pipeline import ControlPipeline, Policy, input_limits
from controller.ports.base import Port
from controller.ports.factory import make_port
from controller.site import Site, load_site
from controller.supervisor import Counters, CycleView, Mode, Supervisor

log = logging.getLogger("pharmatwin.runtime")


@dataclass(frozen=True)
class RunOptions:
    mode: Mode
    rate: float = 1.0  # process time per wall time; 1 on a real plant
    cycles: int | None = None
    duration_s: float | None = None  # process seconds
    audit_path: Path = Path("pharmatwin-audit.db")
    historian_path: Path | None = Path("pharmatwin-history.db")


def config_files(site: Site) -> list[Path]:
    """Every file that defines the deployment (hashed into the audit trail and the run record)."""
    ctl = site.referenced("controller")
    return [site.path, ctl, resolve(ctl, site.controller.plant), site.referenced("tags")]


def build_pipeline(site: Site, policy: Policy | None = None) -> ControlPipeline:
    """Estimator, MPC (or the given policy) and safety limits for a site."""
    cfg, model = site.controller, site.model
    mpc = policy or ModelPredictiveController(cfg, model, str(site.path))
    estimator = make_estimator(model, cfg.estimator, cfg.sample_time)
    return ControlPipeline(model, estimator, mpc, input_limits(cfg))


def historian_sink(historian: Historian, predict_steps: int) -> Any:
    def sink(sup: Supervisor, view: CycleView) -> None:
        historian.record(
            cycle_record(
                sup.run_id,
                view.cycle,
                t=view.t,
                state=view.state.value,
                snapshot=view.snapshot,
                estimate=view.estimate,
                decision=view.decision,
                outcome=view.outcome,
                setpoints=view.written,
                wrote=bool(view.written),
                predict_steps=predict_steps,
                monitor=view.monitor,
            )
        )
        for event in view.events:
            historian.record_event(event)

    return sink


def _sinks(
    sink: Callable[[Supervisor, CycleView], None], observer: Callable[[CycleView], None] | None
) -> Callable[[Supervisor, CycleView], None]:
    if observer is None:
        return sink

    def both(sup: Supervisor, view: CycleView) -> None:
        sink(sup, view)
        observer(view)

    return both


async def run_site(
    site: Site,
    opts: RunOptions,
    *,
    port: Port | None = None,
    clock: Clock | None = None,
    policy: Policy | None = None,
    stop: asyncio.Event | None = None,
    observer: Callable[[CycleView], None] | None = None,
) -> Supervisor:
    """Run the supervised loop until stopped; returns the supervisor (state, counters).

    ``observer`` sees every cycle after the historian (a campaign records its run there).
    """
    clock = clock or (RealClock() if opts.rate == 1.0 else ScaledClock(opts.rate))
    files = config_files(site)
    audit = AuditTrail(
        opts.audit_path,
        config_hash=file_hash(*files),
        actor=site.runtime.service_identity,
    )
    historian = open_historian(opts.historian_path)
    info = run_info(site.name, opts.mode.value, files, site.model)
    historian.start_run(info)
    audit.record(
        "config.load",
        site.name,
        reason=f"pharmatwin run --mode {opts.mode.value}",
        new_value=info.run_id,
        detail={"config_hashes": info.config_hashes, "model_version": info.model_version},
    )
    pipeline = build_pipeline(site, policy)
    port = port or make_port(site, clock)
    stop = stop or asyncio.Event()
    sup = Supervisor(
        site,
        port,
        clock,
        pipeline,
        mode=opts.mode,
        audit=audit,
        historian=_sinks(historian_sink(historian, site.runtime.predicted_steps), observer),
        run_id=info.run_id,
    )
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
            loop.add_signal_handler(sig, stop.set)
    try:
        try:
            await port.connect()
        except PortError as exc:  # the loop keeps trying, with the port's backoff
            log.warning("cannot connect at start: %s; retrying every cycle with backoff", exc)
        await sup.run(stop, cycles=opts.cycles, duration_s=opts.duration_s)
    finally:
        await port.close()
        for sig in (signal.SIGINT, signal.SIGTERM):
            with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
                loop.remove_signal_handler(sig)
        historian.close()
        audit.close()
    return sup


async def run(site_path: Path, opts: RunOptions) -> Counters:
    site = load_site(site_path)
    sup = await run_site(site, opts)
    return sup.counters
