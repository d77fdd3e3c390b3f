"""The supervisor: the one long-running loop of the edge runtime, with an explicit state.

States (:class:`State`)::

    INIT --(working setpoints read)--> SHADOW                      (mode shadow: never writes)
    INIT --> REQUESTING --(PLC: mpc_active)--> RUNNING <--> HOLD   (mode closed-loop)
    RUNNING/HOLD --(too many bad cycles | PLC dropped us)--> FALLBACK --(PLC permits)--> REQUESTING
    REQUESTING/RUNNING/HOLD/FALLBACK --(operator release)--> RELEASED
    RELEASED/FALLBACK --(operator request)--> REQUESTING
    any --(SIGINT/SIGTERM/stop)--> STOPPED

Every cycle, on the clock: read a snapshot; judge every tag the decision depends on
(:mod:`controller.runtime.trust`: measurements and working setpoints for quality, finiteness,
engineering limits, physical ``valid_range``, validity bits, a frozen PLC scan counter, source
age and frozen values); update the estimator with the trusted measurements only; apply each
measurement's bad-data policy (``on_bad: hold`` or ``predict``; a measurement the estimator's
innovation gate rejected counts as bad); solve the MPC in a worker thread with a deadline
(never two at once: an overrun skips the cycle and holds); pass the result through the safety
layer; write the heartbeat, then the setpoints (each audited *before* it is sent, never twice
within ``min_write_interval``), and check the read-back (one that is not a finite number
within the tag's limits is a problem, never the new move origin); then the twin's own work
(:mod:`controller.twin.services`): drift charts and maintenance forecasts on the estimate (fed only
with good, fresh data; an alarm raised or cleared is audited, logged with what a person needs
to act, and handed to the historian as an event; an alarm tag, if configured, is written after
its audit record), and the soft-sensor publications (written every cycle in closed loop; in
shadow mode only if ``runtime.publish_in_shadow``; a failed publication is logged and
counted, never a reason to hold control). Bad or stale data, a failed estimator, a failed or
late solve, or a failed write hold the last safe setpoints and count; after
``max_bad_cycles`` in a row the supervisor releases ``mpc_request`` so that the PLC takes over,
and goes to FALLBACK. A lost connection holds too: no heartbeat reaches the PLC, which falls
back by itself. Every transition is logged and audited with its cause.

Untrusted data are counted (:class:`Counters`), logged, and recorded in the historian as
events (``data.<reason>``: the tag, its value and why); how each measurement is used
(measured, riding on the prediction, held) is a figure of every cycle (``data.use.<tag>``: 0,
1, 2), and a change of use is audited (``data.use``), as is the policy in force at the first
cycle (``data.policy``). Working setpoints that cannot be trusted at start keep the supervisor
in INIT (nothing is estimated, decided or written). After a stall (the process stopped or
starved for more than half a sample) the missed cycles are skipped, not run back to back: the
schedule restarts from the moment the loop wakes up.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import uuid
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum

from controller.clock import Clock
from controller.core.estimator import Estimate
from controller.core.mpc import Decision, SolveStatus
from controller.core.pipeline import ESTIMATOR_FAILED, ControlPipeline, rejected_outputs
from controller.core.safety import SafetyOutcome
from controller.errors import ConfigError, PharmaTwinError, PortError, Problem
from controller.ports.base import Port, Quality, Snapshot, WriteReport, WriteStatus
from controller.runtime.audit import AuditEntry, AuditError, AuditTrail
from controller.runtime.historian import HistorianEvent, model_version
from controller.runtime.site import Site
from controller.runtime.trust import (
    USE_CODE,
    BadMeasurementPolicy,
    DataTrust,
    Distrust,
    Judgement,
    MeasurementPolicy,
    PolicyStep,
    Reason,
    Use,
)
from controller.tags import bad_data_problems
from controller.twin.forecast import (
    Forecast,
    ForecastError,
    Plan,
    default_plans,
    forecast,
    start_from_estimate,
)
from controller.twin.monitoring import Alarm
from controller.twin.services import TwinCycle, TwinServices

log = logging.getLogger("pharmatwin.supervisor")

_WRAP = 65536


class State(StrEnum):
    INIT = "INIT"
    SHADOW = "SHADOW"
    REQUESTING = "REQUESTING"
    RUNNING = "RUNNING"
    HOLD = "HOLD"
    FALLBACK = "FALLBACK"
    #: an operator released control (:meth:`Supervisor.release_control`): ``mpc_request``
    #: cleared, the PLC drives, the MPC only recommends, until an operator requests again
    RELEASED = "RELEASED"
    STOPPED = "STOPPED"


class ControlRefused(PharmaTwinError):
    """An operator's request or release of control the supervisor will not carry out."""


class Mode(StrEnum):
    SHADOW = "shadow"
    CLOSED_LOOP = "closed-loop"


@dataclass
class Counters:
    cycles: int = 0
    bad_in_a_row: int = 0
    bad_data: int = 0
    stale_data: int = 0
    failed_solves: int = 0
    late_solves: int = 0
    overruns: int = 0
    failed_writes: int = 0
    read_failures: int = 0
    writes: int = 0
    fallbacks: int = 0
    drift_alarms: int = 0
    publish_failures: int = 0
    twin_failures: int = 0
    #: data trust (see :mod:`controller.runtime.trust`): values outside their tag's ``valid_range``,
    #: values that are not finite numbers, measurements the innovation gate rejected, cycles
    #: riding on the model's prediction for a measurement, working setpoints not trusted
    implausible_values: int = 0
    non_finite_values: int = 0
    gate_rejections: int = 0
    predicted_cycles: int = 0
    untrusted_working: int = 0
    estimator_failures: int = 0
    #: read-backs that were not a finite number within the tag's limits
    readback_failures: int = 0
    #: stalls (woke up more than half a sample late), the whole cycles they skipped, and
    #: setpoint writes held because the last one was less than ``min_write_interval`` ago
    stalls: int = 0
    skipped_cycles: int = 0
    write_spacing_holds: int = 0


@dataclass
class CycleView:
    """What one cycle saw and did (handed to the historian and to tests)."""

    cycle: int
    t: float
    state: State
    snapshot: Snapshot | None
    estimate: Estimate | None = None
    decision: Decision | None = None
    outcome: SafetyOutcome | None = None
    written: dict[str, float] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)
    #: the twin's figures this cycle (drift statistics, maintenance forecasts, publications)
    monitor: dict[str, float] = field(default_factory=dict)
    #: what the twin noticed this cycle (drift alarms raised and cleared), for the historian
    events: list[HistorianEvent] = field(default_factory=list)


class Supervisor:
    """Drives one site: port -> estimator -> MPC -> safety -> port, on the clock."""

    def __init__(
        self,
        site: Site,
        port: Port,
        clock: Clock,
        pipeline: ControlPipeline,
        *,
        mode: Mode,
        audit: AuditTrail,
        historian: Callable[[Supervisor, CycleView], None] | None = None,
        run_id: str | None = None,
    ) -> None:
        self.site, self.port, self.clock, self.pipeline = site, port, clock, pipeline
        self.mode, self.audit, self.historian = mode, audit, historian
        self.run_id = run_id or uuid.uuid4().hex[:12]
        self.settings = site.runtime
        self.state = State.INIT
        self.counters = Counters()
        self.model = pipeline.model
        self.dt_s = site.controller.sample_time * self.model.seconds_per_unit
        tags = site.tags.tags
        tm = site.tags
        readings = tm.reading_tags()
        self.sp_tags = {i: tag for i in self.model.input_names if (tag := tm.setpoint_tag(i))}
        self.pv_tags = {i: readings[i] for i in self.model.input_names if i in readings}
        self.y_tags = {o: readings[o] for o in self.model.output_names if o in readings}
        problems = bad_data_problems(tm, self.model.input_names, str(site.referenced("tags")))
        if problems:
            raise ConfigError(problems)
        self._validity_order = tm.measurement_tags(self.model.input_names)[:16]
        working = {i: self.pv_tags.get(i) or self.sp_tags[i] for i in self.model.input_names}
        self.trust = DataTrust(tm, self.y_tags, working, self._validity_order)
        self.trust.rate = float(getattr(clock, "rate", 1.0))  # the wall-time staleness floor
        self.policy = BadMeasurementPolicy(
            {o: MeasurementPolicy.of(tags[tag]) for o, tag in self.y_tags.items()}
        )
        self._policy_audited = False
        self._working_now: dict[str, float] = {}  # this cycle's trusted working setpoints
        intervals = [tags[t].min_write_interval for t in self.sp_tags.values()]
        given = [i for i in intervals if i is not None]
        self.min_write_interval_s = max(given) if given else self.dt_s / 2
        self._last_write_t: float | None = None
        self.read_tags = [n for n, t in tags.items() if t.readable]
        self._heartbeat = 0
        self._solving: asyncio.Task[Decision] | None = None
        self._requested = False
        self._pending_release = False
        self._written: dict[str, float] = {}
        self.views: list[CycleView] = []  # the last few cycles, for inspection
        self.actor = self.settings.service_identity
        self.model_version = model_version(self.model)
        self.twin = TwinServices(site, str(site.referenced("controller")))
        self._twin: TwinCycle | None = None
        self._alarm_written: float | None = None
        self._alarm_audited: float | None = None
        self._live: tuple[float, Estimate, dict[str, float]] | None = None  # for forecast()
        self._publish_warned: set[str] = set()

    # ------------------------------------------------------------------ transitions
    def _to(self, state: State, cause: str) -> None:
        if state is self.state:
            return
        old = self.state
        self.state = state
        level = logging.WARNING if state in (State.FALLBACK, State.HOLD) else logging.INFO
        log.log(level, "state %s -> %s: %s", old, state, cause)
        self.audit.record(
            "mode.change",
            "supervisor",
            reason=cause,
            old_value=old.value,
            new_value=state.value,
            actor=self.actor,
            detail={"run_id": self.run_id, "site": self.site.name, "mode": self.mode.value},
        )

    # ------------------------------------------------------------------ loop
    async def run(
        self, stop: asyncio.Event, *, cycles: int | None = None, duration_s: float | None = None
    ) -> Counters:
        """Cycle on the clock until ``stop`` (or ``cycles`` / ``duration_s`` process seconds)."""
        self.audit.record(
            "run.start",
            self.site.name,
            reason=f"pharmatwin run --mode {self.mode.value}",
            new_value=self.run_id,
            actor=self.actor,
            detail={"site": str(self.site.path), "sample_time_s": self.dt_s},
        )
        start = t0 = self.clock.now()
        k = 0
        try:
            while not stop.is_set():
                due = t0 + k * self.dt_s
                if cycles is not None and k >= cycles:
                    break
                if duration_s is not None and due - start >= duration_s:
                    break
                if not await self._wait(due, stop):
                    break
                t0 += self._stalled(k, due)
                await self.cycle(k, t0 + k * self.dt_s)
                k += 1
        finally:
            await self.shutdown("stop requested" if stop.is_set() else "run complete")
        return self.counters

    def _stalled(self, k: int, due: float) -> float:
        """How far to move the schedule: after a stall (woken more than half a sample late:
        the process was stopped or starved) the missed cycles are skipped, not run back to
        back, and the schedule restarts from now; 0 on time."""
        late = self.clock.now() - due
        if late <= self.dt_s / 2:
            return 0.0
        missed = int(late // self.dt_s)
        self.counters.stalls += 1
        self.counters.skipped_cycles += missed
        log.warning(
            "cycle %d: woke %.3g s late (sample %.3g s): stalled; %d missed cycle(s) skipped, "
            "the schedule restarts now",
            k,
            late,
            self.dt_s,
            missed,
        )
        return late

    async def _wait(self, t: float, stop: asyncio.Event) -> bool:
        """Sleep until process time ``t``; False when ``stop`` was set meanwhile."""
        sleeper = asyncio.ensure_future(self.clock.sleep_until(t))
        stopper = asyncio.ensure_future(stop.wait())
        done, pending = await asyncio.wait({sleeper, stopper}, return_when=asyncio.FIRST_COMPLETED)
        for task in pending:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        return sleeper in done and not stop.is_set()

    async def cycle(self, k: int, t: float) -> CycleView:
        self.counters.cycles += 1
        view = CycleView(k, t, self.state, None)
        if not self._policy_audited:
            self._audit_policy(view)
        try:
            snap = await self.port.read(self.read_tags)
        except PortError as exc:
            self.counters.read_failures += 1
            self._problem(view, f"read failed: {exc}")
            self._after_problem(view)
            return self._done(view)
        judged = self.trust.judge(snap)
        view.snapshot = judged.snapshot  # as judged: non-finite BAD, outside limits UNCERTAIN
        self._working_now = judged.working
        if self.state is State.INIT and not self._initialize(judged, view):
            return self._done(view)
        self._follow_plc(judged, view)
        estimate, problem, data_ok, fresh = self._estimate(judged, view)
        view.estimate = estimate
        try:
            self._watch(view, estimate, data_good=data_ok and fresh and not problem)
        except AuditError:
            raise  # the audit trail is broken: nothing may go on (as for setpoints)
        except Exception:  # the twin's own work never stops the control loop
            self.counters.twin_failures += 1
            self._twin = None
            log.exception("cycle %d: drift monitor / publications failed", view.cycle)
        decision = await self._solve(t, estimate, problem, view)
        view.decision = decision
        view.outcome = self.pipeline.guard(decision, data_ok=data_ok, data_fresh=fresh)
        await self._act(view)
        try:
            await self._publish(view)
        except AuditError:
            raise
        except Exception:
            self.counters.twin_failures += 1
            log.exception("cycle %d: publishing failed", view.cycle)
        if estimate is not None and not problem:
            self._live = (t / self.model.seconds_per_unit, estimate, dict(self._written))
        return self._done(view)

    def _done(self, view: CycleView) -> CycleView:
        view.state = self.state
        self.views = [*self.views[-9:], view]
        if self.historian is not None:
            self.historian(self, view)
        return view

    # ------------------------------------------------------------------ steps
    def _initialize(self, judged: Judgement, view: CycleView) -> bool:
        """Bumpless start: the PLC's working setpoints become the safety layer's last values.

        Working setpoints that cannot be trusted (bad, not finite, implausible) keep the
        supervisor in INIT: a problem of the cycle, nothing estimated, decided or written."""
        if judged.inputs:
            self.counters.untrusted_working += 1
            self._count(judged.inputs.values())
            why = "; ".join(str(d) for d in judged.inputs.values())
            self._problem(view, f"working setpoints not trusted, staying in INIT: {why}")
            self._record(view, judged.inputs.values(), {})
            return False
        working = dict(judged.working)
        self.pipeline.start(working)
        self.pipeline.applied(working)
        self._written = dict(working)
        self._to(
            State.SHADOW if self.mode is Mode.SHADOW else State.REQUESTING,
            f"initialized from the PLC's working setpoints {working}",
        )
        return True

    def _follow_plc(self, judged: Judgement, view: CycleView) -> None:
        """React to what the PLC reports: activation, or being dropped."""
        snap = judged.snapshot
        active = self._flag(snap, "mpc_active")
        # "active" counts only as the answer to our own request: a PLC that claims it before
        # we asked (a stale flag, a rogue PLC) is not handing over control
        if self.state is State.REQUESTING and active and self._requested:
            unknown = [n for n in self.model.input_names if n not in judged.working]
            if unknown:
                self._problem(view, f"working setpoints of {unknown} not trusted; not engaging")
                return
            working = dict(judged.working)
            self.pipeline.start(working)  # bumpless: start from what the PLC is doing
            self._written = dict(working)
            self._to(State.RUNNING, "the PLC reports mpc_active")
        elif self.state in (State.RUNNING, State.HOLD) and active is False:
            self.counters.fallbacks += 1
            self._to(State.FALLBACK, "the PLC dropped the MPC (mpc_active cleared)")
            self._pending_release = True  # cycle the request, as the PLC's rules ask
        elif self.state is State.FALLBACK and self.settings.reengage:
            permissive = self._flag(snap, "mpc_permissive")
            if permissive and self.counters.bad_in_a_row == 0:
                self._to(State.REQUESTING, "the PLC permits re-engaging")

    @staticmethod
    def _flag(snap: Snapshot, tag: str) -> bool | None:
        """A contract flag as the PLC reports it; None when it cannot be trusted."""
        tv = snap.values.get(tag)
        if tv is None or tv.quality is not Quality.GOOD or tv.value not in (0.0, 1.0):
            return None
        return bool(tv.value)

    # ------------------------------------------------------------------ data trust
    def _estimate(
        self, judged: Judgement, view: CycleView
    ) -> tuple[Estimate | None, str, bool, bool]:
        """Estimate from the trusted measurements only, then apply each measurement's policy.

        Returns ``(estimate, problem, data_ok, data_fresh)``; the cycle may act on the
        estimate only when there is no problem. Untrusted measurements (and those the
        innovation gate rejects) are left out of the correction: the estimator rides on its
        prediction for them; one whose policy is ``hold`` (or whose ``predict_cycles`` ran
        out) holds the cycle, as do untrusted working setpoints.
        """
        untrusted = set(judged.outputs)
        estimate, problem = self.pipeline.estimate(judged.measured, exclude=sorted(untrusted))
        rejected = () if problem else rejected_outputs(estimate)
        gated = {
            o: Distrust(self.y_tags[o], Reason.REJECTED, judged.measured[o], _gate(estimate, o))
            for o in rejected
            if o in self.y_tags and o in judged.measured
        }
        step = self.policy.step(untrusted | set(gated))
        distrust = {**judged.outputs, **gated}
        self._count([*distrust.values(), *judged.inputs.values()])
        self.counters.gate_rejections += len(gated)
        self._record(view, [*judged.contract, *distrust.values(), *judged.inputs.values()], step)
        if problem.startswith(ESTIMATOR_FAILED):
            self.counters.estimator_failures += 1
            self._problem(view, problem)
        stale = {
            o: d for o in step.held if (d := distrust[o]).reason in (Reason.STALE, Reason.FROZEN)
        }
        bad = {o: distrust[o] for o in step.held if o not in stale}
        if bad:
            self.counters.bad_data += 1
            self._problem(view, f"bad-quality inputs {_tags(bad.values())}")
        if stale:
            self.counters.stale_data += 1
            self._problem(view, f"stale inputs {_tags(stale.values())}")
        if judged.inputs:
            self.counters.untrusted_working += 1
            self._problem(view, f"untrusted working setpoints {_tags(judged.inputs.values())}")
        if step.predicted:
            self.counters.predicted_cycles += 1
            log.warning(
                "cycle %d: riding on the model's prediction for %s",
                view.cycle,
                {
                    self.y_tags[o]: f"{n} of {self.policy.policies[o].predict_cycles}"
                    for o, n in step.riding.items()
                },
            )
        data_ok, fresh = not bad and not judged.inputs, not stale
        if not problem and not (data_ok and fresh):
            problem = "no solve: untrusted data"
        return estimate, problem, data_ok, fresh

    def _count(self, distrusted: Iterable[Distrust]) -> None:
        for d in distrusted:
            if d.reason is Reason.IMPLAUSIBLE:
                self.counters.implausible_values += 1
            elif d.reason is Reason.NON_FINITE or not math.isfinite(d.value):
                self.counters.non_finite_values += 1

    def _record(
        self, view: CycleView, distrusted: Iterable[Distrust], step: PolicyStep | Mapping[str, Use]
    ) -> None:
        """Every distrusted value is a historian event; a change of use is audited too; the
        use of every measurement is a figure of the cycle."""
        use = step.use if isinstance(step, PolicyStep) else step
        for d in distrusted:
            kind = f"data.{d.reason.name.lower()}"
            detail = {"value": d.value, "reason": d.reason.value, "detail": d.detail}
            view.events.append(HistorianEvent(self.run_id, view.t, kind, d.tag, str(d), detail))
            log.warning("cycle %d: not trusted: %s", view.cycle, d)
        view.monitor = {
            **view.monitor,
            **{f"data.use.{self.y_tags[o]}": USE_CODE[u] for o, u in use.items()},
        }
        if not isinstance(step, PolicyStep):
            return
        for output, (old, new) in step.changes.items():
            tag, policy = self.y_tags[output], self.policy.policies[output]
            why = f"{tag} is now {new.value} ({policy.describe()})"
            self.audit.record(
                "data.use",
                tag,
                reason=why,
                old_value=old.value,
                new_value=new.value,
                actor=self.actor,
                detail={"run_id": self.run_id, "cycle": view.cycle, "output": output},
            )
            log.warning("cycle %d: %s", view.cycle, why)
            detail = {"old": old.value, "new": new.value, "policy": policy.describe()}
            view.events.append(HistorianEvent(self.run_id, view.t, "data.use", tag, why, detail))

    def _audit_policy(self, view: CycleView) -> None:
        """The bad-measurement policy in force, once per run (its first cycle): audited, and
        an event for the historian."""
        self._policy_audited = True
        for output, policy in self.policy.policies.items():
            tag = self.y_tags[output]
            detail = {
                "output": output,
                "on_bad": policy.on_bad,
                "predict_cycles": policy.predict_cycles,
                "uncertain_is_good": policy.uncertain_is_good,
            }
            self.audit.record(
                "data.policy",
                tag,
                reason=policy.describe(),
                new_value=policy.on_bad,
                actor=self.actor,
                detail={"run_id": self.run_id, **detail},
            )
            message = f"{tag}: {policy.describe()}"
            view.events.append(
                HistorianEvent(self.run_id, view.t, "data.policy", tag, message, detail)
            )

    async def _solve(
        self, t: float, estimate: Estimate | None, problem: str, view: CycleView
    ) -> Decision:
        t_model = t / self.model.seconds_per_unit
        if problem or estimate is None:
            return Decision(t_model, {}, SolveStatus.ERROR, problem or "no estimate", 0, 0.0)
        if self._solving is not None and not self._solving.done():
            self.counters.overruns += 1
            self._problem(view, "overrun: the previous solve is still running; cycle skipped")
            return Decision(t_model, {}, SolveStatus.ERROR, "overrun", 0, 0.0)
        self._solving = asyncio.ensure_future(
            asyncio.to_thread(self.pipeline.decide, t_model, estimate)
        )
        deadline = self._deadline_s()
        try:
            decision = await asyncio.wait_for(asyncio.shield(self._solving), deadline)
        except TimeoutError:
            self.counters.late_solves += 1
            self._problem(view, f"solve missed its deadline of {deadline:.3g} s")
            return Decision(t_model, {}, SolveStatus.ERROR, "late solve", 0, 0.0)
        except Exception as exc:  # a solver that raised is a failed decision, never a crash
            self.counters.failed_solves += 1
            self._problem(view, f"solver raised {type(exc).__name__}: {exc}")
            return Decision(t_model, {}, SolveStatus.ERROR, f"solver raised: {exc}", 0, 0.0)
        if not decision.ok:
            self.counters.failed_solves += 1
            self._problem(view, f"solve failed: {decision.status} {decision.return_status}")
        return decision

    def _deadline_s(self) -> float | None:
        """The solve deadline in wall seconds (None on a stepped clock)."""
        rate = getattr(self.clock, "rate", None)
        if rate is None:
            return None
        return self.settings.solve_deadline_fraction * self.dt_s / float(rate)

    # ------------------------------------------------------------------ the twin
    def _watch(self, view: CycleView, estimate: Estimate | None, *, data_good: bool) -> None:
        """Drift charts, maintenance forecasts and publications on this cycle's estimate."""
        if not self.twin.enabled or self.state is State.INIT:
            return
        inputs = self._written or self.model.nominal_inputs
        tc = self.twin.update(
            view.t / self.model.seconds_per_unit, estimate, inputs, data_good=data_good
        )
        self._twin = tc
        view.monitor = {**view.monitor, **tc.monitor}  # after the data-trust figures
        for kind, alarms in (("drift.alarm", tc.raised), ("drift.clear", tc.cleared)):
            for alarm in alarms:
                self._alarm_event(kind, alarm, view)
        for problem in tc.publication.problems():
            tag = problem.split(":", 1)[0]
            if tag not in self._publish_warned:  # once per tag, not every cycle
                self._publish_warned.add(tag)
                log.info("publication %s", problem)

    def _alarm_event(self, kind: str, alarm: Alarm, view: CycleView) -> None:
        detail = {
            "run_id": self.run_id,
            "cycle": view.cycle,
            "signal": alarm.signal,
            "side": alarm.side,
            "chart": alarm.chart,
            "statistic": alarm.statistic,
            "limit": alarm.limit,
            "value": alarm.value,
            "reference": alarm.reference,
            "raised_at": alarm.raised_at,
            "since": alarm.since,
        }
        message = alarm.message
        self.audit.record(
            kind,
            alarm.signal,
            reason=message,
            new_value=alarm.statistic,
            actor=self.actor,
            detail=detail,
        )
        if kind == "drift.alarm":
            self.counters.drift_alarms += 1
            log.warning("%s", message)
        else:
            log.info("%s", message)
        view.events.append(HistorianEvent(self.run_id, view.t, kind, alarm.key, message, detail))

    async def _publish(self, view: CycleView) -> None:
        """Write the soft sensors, then (in its own request) the alarm tag when it changed,
        audited first. The historian's ``pub.<tag>`` figures are what the PLC accepted."""
        tc = self._twin
        if tc is None or self.state in (State.INIT, State.STOPPED):
            return
        if self.mode is Mode.SHADOW and not self.settings.publish_in_shadow:
            return
        values = dict(tc.publication.values)
        tag = self.twin.alarm_tag
        alarm = values.pop(tag, None) if tag is not None else None
        if values:
            report = await self._try_write(values, view, "publishing")
            for name, written in report.results.items() if report is not None else ():
                if written.status is WriteStatus.OK:
                    view.monitor[f"pub.{name}"] = values[name]
        if tag is None or alarm is None or alarm == self._alarm_written:
            return
        if alarm != self._alarm_audited:  # one record per change, not one per retry
            self.audit.record(
                "tag.write.alarm",
                tag,
                reason="drift alarm state changed",
                old_value=self._alarm_written,
                new_value=alarm,
                actor=self.actor,
                detail={
                    "run_id": self.run_id,
                    "cycle": view.cycle,
                    "active": [a.key for a in tc.active],
                },
            )
            self._alarm_audited = alarm
        alarm_report = await self._try_write({tag: alarm}, view, "the alarm tag")
        result = alarm_report.results.get(tag) if alarm_report is not None else None
        if result is not None and result.status is WriteStatus.OK:
            self._alarm_written = alarm
            view.monitor[f"pub.{tag}"] = alarm
        elif result is not None and result.status is WriteStatus.MISMATCH:
            self._alarm_written = result.readback  # retried next cycle: the PLC has another

    async def _try_write(
        self, values: Mapping[str, float], view: CycleView, what: str
    ) -> WriteReport | None:
        """A write of the twin's own tags: a failure is logged and counted, never a problem
        of the control cycle."""
        try:
            report = await self.port.write(values)
        except PortError as exc:
            self.counters.publish_failures += 1
            log.warning("cycle %d: %s %s failed: %s", view.cycle, what, sorted(values), exc)
            return None
        if not report.ok:
            self.counters.publish_failures += 1
            log.warning(
                "cycle %d: %s refused: %s", view.cycle, what, [r.detail for r in report.failed()]
            )
        return report

    # ------------------------------------------------------------------ writing
    async def _act(self, view: CycleView) -> None:
        if view.problems:
            self._after_problem(view)
        elif self.state is State.HOLD:
            self._to(State.RUNNING, "inputs and solve are good again")
        await self._send(view)
        if not view.problems:  # only a clean cycle ends a run of bad ones (failed writes count)
            self.counters.bad_in_a_row = 0

    def _follow_working(self, view: CycleView) -> None:
        """While the PLC drives the inputs (shadow, fallback, before engaging), the estimator
        predicts with the PLC's working setpoints as read, not with what the twin last wrote
        (without this a shadow run's estimate drifts away: it thinks the inputs never moved).
        In shadow mode the safety filter follows them too, so that the recommendations are
        moves from where the plant is."""
        if view.snapshot is None or self.state is State.INIT:
            return
        working = {**self._written, **self._working_now}  # the trusted ones only
        if set(working) >= set(self.model.input_names):
            self._written = working
            self.pipeline.applied(working)
            if self.mode is Mode.SHADOW:
                self.pipeline.safety.reset(working)

    async def _send(self, view: CycleView) -> None:
        if self.mode is Mode.SHADOW or self.state in (State.INIT, State.STOPPED):
            self._follow_working(view)
            await self._advise(view)
            return
        if self.state in (State.FALLBACK, State.RELEASED):
            self._follow_working(view)
            await self._write_request(False, view)
            return
        await self._write_heartbeat(view)
        if self.state is State.REQUESTING:
            self._follow_working(view)
            await self._write_request(True, view)
            return
        if self.state is State.RUNNING and view.outcome is not None and not view.outcome.held:
            if self._too_soon(view):
                return
            await self._write_setpoints(view)
        elif view.outcome is not None:
            self.pipeline.applied(self._written)
            self.pipeline.safety.reset(self._written)  # nothing written: moves count from it

    def _too_soon(self, view: CycleView) -> bool:
        """Two setpoint writes are never closer than ``min_write_interval``: a held cycle."""
        now = self.clock.now()
        last = self._last_write_t
        if last is None or now - last >= self.min_write_interval_s:
            return False
        self.counters.write_spacing_holds += 1
        self._problem(
            view,
            f"setpoints last written {now - last:.3g} s ago, less than the minimum interval "
            f"of {self.min_write_interval_s:.3g} s: held",
        )
        self.pipeline.applied(self._written)
        self.pipeline.safety.reset(self._written)
        self._after_problem(view)
        return True

    def _problem(self, view: CycleView, text: str) -> None:
        view.problems.append(text)
        log.warning("cycle %d (%s): %s", view.cycle, self.state, text)

    def _after_problem(self, view: CycleView) -> None:
        self.counters.bad_in_a_row += 1
        if self.state is State.RUNNING:
            self._to(State.HOLD, "; ".join(view.problems))
        if (
            self.state in (State.HOLD, State.REQUESTING)
            and self.counters.bad_in_a_row >= self.settings.max_bad_cycles
        ):
            self.counters.fallbacks += 1
            self._to(
                State.FALLBACK,
                f"{self.counters.bad_in_a_row} bad cycles in a row (limit "
                f"{self.settings.max_bad_cycles}): releasing mpc_request",
            )

    async def _write(self, values: Mapping[str, float], view: CycleView) -> WriteReport | None:
        try:
            report = await self.port.write(values)
        except PortError as exc:
            self.counters.failed_writes += 1
            self._problem(view, f"write failed: {exc}")
            return None
        if not report.ok:
            self.counters.failed_writes += 1
            self._problem(view, f"write refused: {[r.detail for r in report.failed()]}")
        return report

    async def _write_heartbeat(self, view: CycleView) -> None:
        self._heartbeat = (self._heartbeat + 1) % _WRAP
        await self._write({"mpc_heartbeat": float(self._heartbeat)}, view)

    async def _write_request(self, value: bool, view: CycleView) -> None:
        if self._requested == value and not (self._pending_release and not value):
            return
        self.audit.record(
            "tag.write.request",
            "mpc_request",
            reason=f"state {self.state.value}",
            old_value=float(self._requested),
            new_value=float(value),
            actor=self.actor,
            detail={"run_id": self.run_id, "cycle": view.cycle},
        )
        report = await self._write({"mpc_request": float(value)}, view)
        if report is not None and report.ok:
            self._requested = value
            self._pending_release = False
            self.counters.writes += 1
            view.written["mpc_request"] = float(value)

    async def _write_setpoints(self, view: CycleView) -> None:
        if view.outcome is None or view.decision is None:
            return
        values = {self.sp_tags[n]: v for n, v in view.outcome.setpoints.items()}
        if not values:
            return
        decision_id = f"{self.run_id}:{view.cycle}"
        changes = [
            {
                "input": i.name,
                "proposed": i.proposed,
                "applied": i.applied,
                "reason": i.reason.value,
            }
            for i in view.outcome.interventions
        ]
        self.audit.record_all(  # one transaction: every setpoint durable before the write
            [
                AuditEntry(
                    "setpoint.write",
                    self.sp_tags[name],
                    f"MPC decision {decision_id}",
                    old_value=self._written.get(name),
                    new_value=value,
                    actor=self.actor,
                    detail={
                        "decision_id": decision_id,
                        "mode": self.mode.value,
                        "state": self.state.value,
                        "solver_status": view.decision.status.value,
                        "return_status": view.decision.return_status,
                        "safety_changes": changes,
                        "config_hash": self.audit.config_hash,
                        "model": self.model.name,
                        "model_version": self.model_version,
                    },
                )
                for name, value in view.outcome.setpoints.items()
            ]
        )
        self._last_write_t = self.clock.now()
        report = await self._write(values, view)
        trusted = True
        for name, value in view.outcome.setpoints.items():
            result = report.results.get(self.sp_tags[name]) if report is not None else None
            if result is not None and result.status is WriteStatus.OK:
                self._written[name] = float(value)
            elif result is not None and result.status is WriteStatus.MISMATCH:
                trusted = self._take_readback(name, result.readback, view) and trusted
        self.pipeline.applied(self._written)
        if report is None or not report.ok or not trusted:
            # The safety layer took its outcome as applied; it was not (or not all of it):
            # move limits must count from what the PLC really has, or held cycles add up.
            self.pipeline.safety.reset(self._written)
            self._after_problem(view)
            return
        self.counters.writes += 1
        view.written.update(values)

    def _take_readback(self, name: str, readback: float | None, view: CycleView) -> bool:
        """What the PLC reports it has (a write answered MISMATCH) becomes the move limits'
        origin, if it can be trusted: a finite number within the setpoint tag's limits.
        Otherwise the last trusted value stays, and the cycle has a problem."""
        tag = self.sp_tags[name]
        limits = self.site.tags.tags[tag].limits
        value = math.nan if readback is None else float(readback)
        if math.isfinite(value) and (limits is None or limits[0] <= value <= limits[1]):
            self._written[name] = value
            return True
        self.counters.readback_failures += 1
        allowed = f"within {list(limits)}" if limits is not None else "finite"
        self._problem(
            view,
            f"read-back of {tag} is {value!r}, not a number the PLC can hold ({allowed}); "
            f"keeping {self._written.get(name)!r} as its value",
        )
        return False

    async def _advise(self, view: CycleView) -> None:
        """Shadow mode: recommendations go to the historian and, if configured, advisory tags."""
        if view.outcome is None or not view.outcome.setpoints:
            return
        advisory = {
            tag: view.outcome.setpoints[i]
            for i, tag in self.settings.advisory_tags.items()
            if i in view.outcome.setpoints
        }
        if advisory:
            await self._write(advisory, view)
        log.info("cycle %d recommendation: %s", view.cycle, dict(view.outcome.setpoints))

    # ------------------------------------------------------------------ operator control
    def release_control(self, user: str, reason: str) -> str:
        """An operator hands control back to the PLC without stopping the runtime: RELEASED,
        ``mpc_request`` cleared on the next cycle, no setpoint written until an operator
        requests again. Audited (``operator.release``, the user, the reason) whether carried
        out or refused; call it on the control loop's thread. Raises :class:`ControlRefused`
        in shadow mode, before initialization, when stopped, or when already released."""
        why = self._operator_refusal("release", (State.RELEASED,))
        old = self.state
        self._operator_record("release", user, reason, old, why)
        self._pending_release = True  # written as cleared, whatever we think the PLC has
        self._to(State.RELEASED, f"operator {user} released control: {reason}")
        return "control released to the PLC: mpc_request is cleared on the next cycle"

    def request_control(self, user: str, reason: str) -> str:
        """An operator asks for MPC control again after a release or a fallback: REQUESTING;
        the supervisor engages (bumplessly, from trusted working setpoints) only when the PLC
        reports ``mpc_active``. Audited like :meth:`release_control`; raises
        :class:`ControlRefused` unless RELEASED or in FALLBACK in closed-loop mode."""
        busy = (State.REQUESTING, State.RUNNING, State.HOLD)
        why = self._operator_refusal("request", busy)
        old = self.state
        self._operator_record("request", user, reason, old, why)
        self._to(State.REQUESTING, f"operator {user} requested control: {reason}")
        return "requesting control: the MPC engages when the PLC reports mpc_active"

    def _operator_refusal(self, action: str, already: tuple[State, ...]) -> str:
        if self.mode is Mode.SHADOW:
            return f"shadow mode: the MPC never has control to {action}"
        if self.state in (State.INIT, State.STOPPED):
            return f"state {self.state.value}: no control to {action}"
        if self.state in already:
            return f"state {self.state.value}: nothing to {action}"
        return ""

    def _operator_record(self, action: str, user: str, reason: str, old: State, why: str) -> None:
        """The audit record of an operator's action; raises ControlRefused after a refusal."""
        new = State.RELEASED if action == "release" else State.REQUESTING
        self.audit.record(
            f"operator.{action}",
            self.site.name,
            reason=reason,
            old_value=old.value,
            new_value=f"refused: {why}" if why else new.value,
            actor=user,
            detail={"run_id": self.run_id, "mode": self.mode.value},
        )
        if why:
            log.warning("operator %s's %s refused: %s", user, action, why)
            raise ControlRefused(why)

    # ------------------------------------------------------------------ what if
    def forecast(self, plans: Sequence[Plan] | None = None) -> Forecast:
        """What-if from the live estimate: the batch to its end under each plan (default: the
        MPC's, the PLC's local recipe). Seconds of CPU for a whole batch: call it off the
        control loop (``asyncio.to_thread``); it reads the estimate and changes nothing."""
        if self._live is None:
            raise ForecastError(
                [
                    Problem(
                        self.site.name,
                        "forecast",
                        "no estimate yet: the runtime has not completed a good cycle",
                        None,
                    )
                ]
            )
        t, estimate, inputs = self._live  # taken on the loop's thread at the end of a cycle
        start = start_from_estimate(t, estimate, inputs or self.model.nominal_inputs)
        return forecast(
            self.site, start, plans if plans is not None else default_plans(self.site, None)
        )

    # ------------------------------------------------------------------ stopping
    async def shutdown(self, cause: str) -> None:
        """Release control so the PLC takes over bumplessly; final audit record."""
        if self.state is State.STOPPED:
            return
        if self._solving is not None and not self._solving.done():
            with contextlib.suppress(Exception):
                await asyncio.wait_for(asyncio.shield(self._solving), 5.0)
        if self.mode is Mode.CLOSED_LOOP and self._requested:
            view = CycleView(-1, self.clock.now(), self.state, None)
            self._pending_release = True
            await self._write_request(False, view)
        self._to(State.STOPPED, cause)
        self.audit.record(
            "run.stop",
            self.site.name,
            reason=cause,
            old_value=self.run_id,
            actor=self.actor,
            detail={k: v for k, v in vars(self.counters).items()},
        )


def _tags(distrusted: Iterable[Distrust]) -> list[str]:
    """The tags, sorted (each one's reason is logged and is a historian event)."""
    return sorted({d.tag for d in distrusted})


def _gate(estimate: Estimate | None, output: str) -> str:
    """The normalized innovation that made the gate reject ``output``, in words."""
    if estimate is None:
        return ""
    innovation = estimate.innovation.get(output)
    std = estimate.innovation_std.get(output)
    if innovation is None or not std:
        return ""
    return f"innovation {innovation:.4g}, {abs(innovation) / std:.3g} standard deviations"
