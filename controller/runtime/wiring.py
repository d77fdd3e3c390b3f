"""The edge runtime behind ``pharmatwin run SITE --mode shadow|closed-loop``.

It wires a site into one supervised loop: the port the site asks for, the EKF, the MPC, the
safety limits, the audit trail and the historian; records the run (software version, git
commit, config and model hashes, library versions); and handles SIGINT/SIGTERM by
releasing control to the PLC and writing a final audit record.

A run ends with a verdict (:class:`~controller.runtime.engagement.Engagement`: what fails a
run, and why, is said there in one sentence).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import signal
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from controller.binding import Binding
from controller.clock import Clock, RealClock, ScaledClock
from controller.configfile import resolve
from controller.core.estimator import make_estimator
from controller.core.jit import LibraryBuilder
from controller.core.limits import Grid
from controller.core.pipeline import ControlPipeline, Policy, input_limits
from controller.core.policy import build_policy
from controller.errors import ConfigError, PharmaTwinError, PortError, Problem
from controller.ports.base import Port
from controller.ports.wire import grid_for
from controller.runtime.audit import AuditTrail
from controller.runtime.audit_chain import file_hash
from controller.runtime.engagement import Engagement
from controller.runtime.historian import Historian, open_historian
from controller.runtime.historian_records import HistorianError, cycle_record
from controller.runtime.historian_run import run_info
from controller.runtime.site import Site, load_site, port_for_site
from controller.runtime.solver_cache import build_compiled
from controller.runtime.supervisor import Counters, CycleView, Mode, Supervisor
from controller.runtime.ui.bind import Bind

if TYPE_CHECKING:
    from rich.console import Console

log = logging.getLogger("pharmatwin.runtime")


@dataclass(frozen=True)
class RunOptions:
    mode: Mode
    rate: float = 1.0  # process time per wall time; 1 on a real plant
    cycles: int | None = None
    duration_s: float | None = None  # process seconds
    audit_path: Path = Path("pharmatwin-audit.db")
    #: the audit trail's commits: "FULL" (each fsynced: the edge runtime, hil mode) or "NORMAL"
    #: (a fast-mode campaign case: durable when the trail closes; see controller.runtime.audit)
    audit_synchronous: str = "FULL"
    historian_path: Path | None = Path("pharmatwin-history.db")
    #: the historian file's ``synchronous``: "NORMAL" (the edge runtime) or "OFF" (a fast-mode
    #: campaign case; see :class:`controller.runtime.historian.SqliteHistorian`)
    historian_synchronous: str = "NORMAL"
    #: cycles per historian commit: 1 (the edge runtime: each cycle visible to readers at
    #: once) or more (a fast-mode campaign case; see
    #: :class:`controller.runtime.historian.SqliteHistorian`)
    historian_commit_every: int = 1
    #: the operator side, never on the control path (see :class:`Sink`)
    ui: Bind | None = None  # the web view (controller.runtime.ui)
    users_path: Path | None = None  # who may act in the web view (controller.runtime.users)
    metrics: Bind | None = None  # Prometheus (controller.runtime.metrics)
    sd_notify: bool = True  # READY=1 and WATCHDOG=1 when systemd gives NOTIFY_SOCKET
    #: the live status table's console (controller.runtime.status); None: no table (--quiet)
    status: Console | None = None


class Sink(Protocol):
    """The operator side of a run (web view, metrics, systemd watchdog): started with the
    supervisor, handed every cycle's view after the historian, closed at the end. A sink that
    raises is logged and counted; it never stops the control loop."""

    def start(self, sup: Supervisor, stop: asyncio.Event) -> None: ...

    def cycle(self, sup: Supervisor, view: CycleView) -> None: ...

    def close(self) -> None: ...


#: cycles whose sinks raised (a broken display must not touch control; it is logged)
SINK_FAILURES: dict[str, int] = {}


def config_files(site: Site) -> list[Path]:
    """Every file that defines the deployment (hashed into the audit trail and the run record)."""
    ctl = site.referenced("controller")
    return [site.path, ctl, resolve(ctl, site.controller.plant), site.referenced("tags")]


def build_pipeline(site: Site, policy: Policy | None = None) -> ControlPipeline:
    """Estimator, MPC (or the given policy) and safety limits for a site.

    Their solver libraries come from the runtime's cache; on a first start the missing ones
    are compiled all at once (:func:`build_compiled`), not one after the other."""
    cfg, model = site.controller, site.model

    def build(compile: LibraryBuilder) -> ControlPipeline:
        mpc = policy or build_policy(cfg, model, compile=compile, source=str(site.path))
        estimator = make_estimator(model, cfg.estimator, cfg.sample_time, compile=compile)
        return ControlPipeline(model, estimator, mpc, input_limits(cfg, setpoint_grids(site)))

    return build_compiled(build)


def setpoint_grids(site: Site) -> dict[str, Grid]:
    """Per input, the values its setpoint tag holds over the site's protocol (see
    :mod:`controller.ports.wire`): the safety layer writes only those."""
    tags = Binding.of_inputs(site.tags, tuple(site.controller.inputs)).setpoint_tags()
    proto = site.connection.protocol
    grids = {inp: grid_for(name, site.tags.tags[name], proto) for inp, name in tags.items()}
    return {inp: grid for inp, grid in grids.items() if grid is not None}


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
    sink: Callable[[Supervisor, CycleView], None],
    observer: Callable[[CycleView], None] | None,
    sinks: Sequence[Sink] = (),
) -> Callable[[Supervisor, CycleView], None]:
    if observer is None and not sinks:
        return sink

    def every(sup: Supervisor, view: CycleView) -> None:
        sink(sup, view)
        if observer is not None:
            observer(view)
        for s in sinks:
            try:
                s.cycle(sup, view)
            except Exception:
                name = type(s).__name__
                SINK_FAILURES[name] = SINK_FAILURES.get(name, 0) + 1
                log.exception("cycle %d: the %s sink failed (control goes on)", view.cycle, name)

    return every


async def run_site(
    site: Site,
    opts: RunOptions,
    *,
    port: Port | None = None,
    clock: Clock | None = None,
    policy: Policy | None = None,
    stop: asyncio.Event | None = None,
    observer: Callable[[CycleView], None] | None = None,
    sinks: Sequence[Sink] = (),
) -> Supervisor:
    """Run the supervised loop until stopped; returns the supervisor (state, counters).

    ``observer`` sees every cycle after the historian (a campaign records its run there);
    ``sinks`` are the operator side (:class:`Sink`), started before the first cycle.
    """
    clock = clock or (RealClock() if opts.rate == 1.0 else ScaledClock(opts.rate))
    files = config_files(site)
    # built before anything is recorded: an interrupted compile leaves no trail of a start
    pipeline = build_pipeline(site, policy)
    port = port or port_for_site(site, clock)
    audit = AuditTrail(
        opts.audit_path,
        config_hash=file_hash(*files),
        actor=site.runtime.service_identity,
        synchronous=opts.audit_synchronous,
    )
    try:
        historian = open_historian(
            opts.historian_path,
            synchronous=opts.historian_synchronous,
            commit_every=opts.historian_commit_every,
        )
    except BaseException:  # a refused historian (another kind of database): no trail left open
        audit.close()
        raise
    info = run_info(site.name, opts.mode.value, files, site.model)
    try:  # the supervisor first (it refuses some sites), then audited, then the historian's
        stop = stop or asyncio.Event()
        sup = Supervisor(
            site,
            port,
            clock,
            pipeline,
            mode=opts.mode,
            audit=audit,
            historian=_sinks(
                historian_sink(historian, site.runtime.predicted_steps), observer, sinks
            ),
            run_id=info.run_id,
        )
        audit.record(  # a start the trail refuses leaves no run in the historian
            "config.load",
            site.name,
            reason=f"pharmatwin run --mode {opts.mode.value}",
            new_value=info.run_id,
            detail={"config_hashes": info.config_hashes, "model_version": info.model_version},
        )
        historian.start_run(info)
    except BaseException:  # nothing left open
        historian.close()
        audit.close()
        raise
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
            loop.add_signal_handler(sig, stop.set)
    started: list[Sink] = []
    failure: BaseException | None = None
    try:
        for s in sinks:
            s.start(sup, stop)
            started.append(s)
        try:
            await port.connect()
        except PortError as exc:  # the loop keeps trying, with the port's backoff
            log.warning("cannot connect at start: %s; retrying every cycle with backoff", exc)
        await sup.run(stop, cycles=opts.cycles, duration_s=opts.duration_s)
    except BaseException as exc:
        failure = exc
        raise
    finally:
        await port.close()
        for s in started:
            try:
                s.close()
            except Exception:
                log.exception("closing the %s sink failed", type(s).__name__)
        for sig in (signal.SIGINT, signal.SIGTERM):
            with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
                loop.remove_signal_handler(sig)
        try:
            close_historian(historian, failure)
        finally:
            audit.close()
    return sup


def close_historian(historian: Historian, failure: BaseException | None) -> None:
    """Close the historian (a batched one commits its last cycles here). A failure to close
    is raised; when the run has already failed (``failure``), it is logged and noted on that
    error instead, which stays the one raised."""
    try:
        historian.close()
    except HistorianError as exc:
        if failure is None:
            raise
        failure.add_note(f"closing the historian failed too: {exc}")
        log.error("closing the historian failed too: %s", exc)


@dataclass(frozen=True)
class RunResult:
    """How a ``pharmatwin run`` ended: its counters and its verdict (None: it did its job)."""

    counters: Counters
    engagement: Engagement

    @property
    def verdict(self) -> str | None:
        return self.engagement.verdict()


def check_options(site: Site, opts: RunOptions) -> list[Problem]:
    """Options a run cannot honour: a closed loop on a shadow-only site, a rate, cycle count
    or duration that is not a positive finite number, one file for audit and historian."""
    problems = []
    if opts.mode is Mode.CLOSED_LOOP and site.runtime.shadow_only:
        problems.append(
            Problem(
                str(site.path),
                "runtime.shadow_only",
                "this site is shadow-only (no PLC contract): run it with --mode shadow",
                True,
            )
        )
    for flag, value in (("--rate", opts.rate), ("--duration", opts.duration_s)):
        if value is not None and not (math.isfinite(value) and value > 0):
            message = "must be a positive finite number"
            problems.append(Problem("command line", flag, message, value))
    if opts.cycles is not None and opts.cycles < 1:
        problems.append(Problem("command line", "--cycles", "must be 1 or more", opts.cycles))
    hist = opts.historian_path
    if hist is not None and hist.resolve() == opts.audit_path.resolve():
        message = f"{hist} is given for both; allowed: two different files"
        problems.append(Problem("command line", "--audit/--historian", message))
    return problems


def operator_sinks(opts: RunOptions) -> list[Sink]:
    """The sinks ``opts`` asks for (the users file is checked here: ConfigError)."""
    sinks: list[Sink] = []
    if opts.sd_notify:
        from controller.runtime.sdnotify import WatchdogSink

        sinks.append(WatchdogSink.from_environment())
    if opts.metrics is not None:
        from controller.runtime.metrics import MetricsSink

        sinks.append(MetricsSink(opts.metrics))
    if opts.ui is not None:
        from controller.runtime.ui import OperatorView
        from controller.runtime.users import load_users

        users = load_users(opts.users_path) if opts.users_path is not None else None
        sinks.append(OperatorView(opts.ui, users=users))
    if opts.status is not None:
        from controller.runtime.status import StatusSink

        sinks.append(StatusSink(opts.status))
    return sinks


async def run(site_path: Path, opts: RunOptions) -> RunResult:
    """Load the site, run it until stopped, and judge the run (:meth:`Engagement.verdict`,
    with the site's ``runtime.max_bad_cycles`` in its rules).

    A :class:`PharmaTwinError` before the run started (the site, the options, the audit trail
    or historian refused, ...) is raised: bad input. One after it started (e.g. the audit
    trail could not be written) aborted the run: its verdict says so (:attr:`Engagement.aborted`)
    and the result is returned, for the summary and exit 1."""
    site = load_site(site_path)
    problems = check_options(site, opts)
    if problems:
        raise ConfigError(problems)
    bad = site.runtime.max_bad_cycles
    engagement = Engagement(opts.mode, site.connection.url, max_bad_cycles=bad)
    started = Started()  # the last sink: started once everything before the loop was
    sinks = [*operator_sinks(opts), started]
    try:
        sup = await run_site(site, opts, observer=engagement.observe, sinks=sinks)
    except PharmaTwinError as exc:
        if started.sup is None:
            raise
        engagement.aborted = str(exc) or type(exc).__name__
        return RunResult(started.sup.counters, engagement)
    return RunResult(sup.counters, engagement)


class Started:
    """A sink of the run that notes only that it started (the supervisor built, the audit
    trail and historian open and recorded, the other sinks started): a failure after that is
    the run's (exit 1), not bad input (exit 2)."""

    def __init__(self) -> None:
        self.sup: Supervisor | None = None

    def start(self, sup: Supervisor, stop: asyncio.Event) -> None:
        self.sup = sup

    def cycle(self, sup: Supervisor, view: CycleView) -> None:
        pass

    def close(self) -> None:
        pass
