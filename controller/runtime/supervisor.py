"""The supervisor: the one long-running loop of the edge runtime, with an explicit state.

States (:class:`State`)::

    INIT --(working setpoints read)--> SHADOW                      (mode shadow: never writes)
    INIT --> REQUESTING --(PLC: mpc_active)--> RUNNING <--> HOLD   (mode closed-loop)
    RUNNING/HOLD --(too many bad cycles | PLC dropped us)--> FALLBACK --(PLC permits)--> REQUESTING
    REQUESTING/RUNNING/HOLD/FALLBACK --(operator release)--> RELEASED
    RELEASED/FALLBACK --(operator request)--> REQUESTING
    any --(SIGINT/SIGTERM/stop)--> STOPPED

Every cycle, on the clock (:mod:`~controller.runtime.schedule`: after a stall the missed
cycles are skipped, not run back to back): read a snapshot; judge every tag the decision
depends on (:mod:`controller.runtime.trust`); update the estimator with the trusted
measurements only and apply each measurement's bad-data policy
(:mod:`~controller.runtime.trust_cycle`: counted, logged, historian events; untrusted working
setpoints at start keep it in INIT); the twin's drift charts and maintenance forecasts
(:mod:`~controller.runtime.twin_cycle`); solve in a worker thread with a deadline, never two
at once (:mod:`~controller.runtime.solve`); pass the result through the safety layer; write
the heartbeat and the setpoints (in one write), audited before they are sent, never twice
within ``min_write_interval``, their read-back checked (:mod:`~controller.runtime.writes`); then
the twin's publications, audited first too (in shadow mode only if
``runtime.publish_in_shadow``; a failed one never holds control). Bad or stale data, a failed
estimator, a failed or late solve, a failed write, an untrusted ``mpc_active`` while RUNNING,
or a write of unknown outcome whose working setpoints cannot be trusted yet (the move limits'
origin: ``ControlWriter.settle``) hold the last safe setpoints and count (:class:`Counters`);
after ``max_bad_cycles`` in a row the supervisor releases ``mpc_request`` so that the PLC takes
over, and goes to FALLBACK. Every transition is logged and audited with its cause.

What the PLC has is the pipeline's (:attr:`ControlPipeline.working`), not a copy here.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import Callable, Sequence

from controller.binding import Binding
from controller.clock import Clock
from controller.core.estimate import Estimate
from controller.core.pipeline import ControlPipeline
from controller.errors import ConfigError, PortError
from controller.ports.base import Port
from controller.runtime import cycle as cycles
from controller.runtime.audit import AuditTrail
from controller.runtime.audit_chain import AuditError
from controller.runtime.cycle import Counters, CycleView, Mode, State, flag, flag_reading
from controller.runtime.historian_run import model_version
from controller.runtime.live_forecast import Live, live_forecast
from controller.runtime.operator import Action, ControlRefused, record, refusal
from controller.runtime.reengage import TAKEN, Reengagement, Takeover, not_applied
from controller.runtime.schedule import stall_shift, wait_until
from controller.runtime.site import Site
from controller.runtime.solve import SolveRunner
from controller.runtime.trust import BadMeasurementPolicy, DataTrust, Judgement, MeasurementPolicy
from controller.runtime.trust_cycle import TrustCycle
from controller.runtime.twin_cycle import TwinCycleWork
from controller.runtime.writes import ControlWriter
from controller.timebase import TimeBase
from controller.twin.forecast import Forecast
from controller.twin.forecast_spec import Plan
from controller.twin.services import TwinServices

__all__ = ["ControlRefused", "Counters", "CycleView", "Mode", "State", "Supervisor"]

log = logging.getLogger("pharmatwin.supervisor")


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
        self.timebase = TimeBase.of(self.model)
        self.dt_s = self.timebase.seconds(site.controller.sample_time)
        tags = site.tags.tags
        tm = site.tags
        binding = Binding.of(tm, self.model)
        self.sp_tags = binding.setpoint_tags()
        self.pv_tags = binding.working_setpoint_tags()
        self.y_tags = binding.output_tags()
        problems = binding.bad_data_problems(str(site.referenced("tags")))
        if problems:
            raise ConfigError(problems)
        self._validity_order = binding.measurement_tags()[:16]
        working = {i: self.pv_tags.get(i) or self.sp_tags[i] for i in self.model.input_names}
        self.trust = DataTrust(tm, self.y_tags, working, self._validity_order)
        self.trust.rate = float(getattr(clock, "rate", 1.0))  # the wall-time staleness floor
        self.policy = BadMeasurementPolicy(
            {o: MeasurementPolicy.of(tags[tag]) for o, tag in self.y_tags.items()}
        )
        self._working_now: dict[str, float] = {}  # this cycle's trusted working setpoints
        intervals = [tags[t].min_write_interval for t in self.sp_tags.values()]
        given = [i for i in intervals if i is not None]
        self.min_write_interval_s = max(given) if given else self.dt_s / 2
        self.read_tags = [n for n, t in tags.items() if t.readable]
        # _asked: mpc_request 1 sent, maybe applied (until a 0 is confirmed); _taken: an
        # mpc_active this runtime did not ask for
        self._requested = self._asked = self._taken = False
        self._pending_release = False
        self.views: list[CycleView] = []  # the last few cycles, for inspection
        self.actor = self.settings.service_identity
        self.reengage, self.takeover = Reengagement.of(self.settings), Takeover()
        self.model_version = model_version(self.model)
        who = {"run_id": self.run_id, "actor": self.actor}
        self.trust_cycle = TrustCycle(
            pipeline, self.y_tags, self.policy, self.counters, audit, problem=self._problem, **who
        )
        self.writer = ControlWriter(
            port,
            clock,
            pipeline,
            tm,
            self.sp_tags,
            self.counters,
            audit,
            min_write_interval_s=self.min_write_interval_s,
            model_version=self.model_version,
            problem=self._problem,
            **who,
        )
        self.twin = TwinServices(
            site.model,
            site.tags,
            site.controller.monitoring,
            site.controller.estimator.estimated,
            source=str(site.referenced("controller")),
        )
        publishes = mode is not Mode.SHADOW or site.runtime.publish_in_shadow
        self.twin_work = TwinCycleWork(
            self.twin, port, self.counters, audit, **who, publishes=publishes
        )
        self.solver = SolveRunner(
            pipeline,
            clock,
            self.counters,
            sample_s=self.dt_s,
            deadline_fraction=self.settings.solve_deadline_fraction,
            problem=self._problem,
        )
        self._live: Live | None = None  # for forecast()

    # ------------------------------------------------------------------ transitions
    def _to(self, state: State, cause: str) -> None:
        if state is self.state:
            return
        old = self.state
        self.state = state
        if state is State.FALLBACK:
            self.reengage.fell_back()
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
        from controller.runtime.run_end import abort_cause

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
        stopper = asyncio.ensure_future(stop.wait())  # one for the run, not one per cycle
        try:
            while not stop.is_set():
                due = t0 + k * self.dt_s
                if cycles is not None and k >= cycles:
                    break
                if duration_s is not None and due - start >= duration_s:
                    break
                if not await wait_until(self.clock, due, stop, stopper):
                    break
                t0 += stall_shift(self.clock, self.counters, k, due, self.dt_s)
                await self.cycle(k, t0 + k * self.dt_s)
                k += 1
        except BaseException as exc:  # aborted: the stop says so and why, never "run complete"
            stopper.cancel()
            await self.shutdown(abort_cause(exc, k), exc)
            raise
        stopper.cancel()
        await self.shutdown("stop requested" if stop.is_set() else "run complete")
        return self.counters

    async def cycle(self, k: int, t: float) -> CycleView:
        self.counters.cycles += 1
        view = CycleView(k, t, self.state, None)
        self.trust_cycle.audit_policy(view)
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
        if self.state in (State.RUNNING, State.HOLD):  # after a write of unknown outcome
            self.writer.settle(self._working_now, view)
        estimate, problem, data_ok, fresh = self.trust_cycle.estimate(judged, view)
        view.estimate = estimate
        try:
            self._watch(view, estimate, data_good=data_ok and fresh and not problem)
        except AuditError:
            raise  # the audit trail is broken: nothing may go on (as for setpoints)
        except Exception:  # the twin's own work never stops the control loop
            self.counters.twin_failures += 1
            self.twin_work.last = None
            log.exception("cycle %d: drift monitor / publications failed", view.cycle)
        decision = await self.solver.solve(self.timebase.model_time(t), estimate, problem, view)
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
            t_model = self.timebase.model_time(t)
            self._live = (t_model, estimate, dict(self.pipeline.working))
        return self._done(view)

    def _done(self, view: CycleView) -> CycleView:
        view.state = self.state
        self._taken = False
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
            self.trust_cycle.count(judged.inputs.values())
            why = "; ".join(str(d) for d in judged.inputs.values())
            self._problem(view, f"working setpoints not trusted, staying in INIT: {why}")
            self.trust_cycle.record(view, judged.inputs.values(), {})
            return False
        working = dict(judged.working)
        self.pipeline.start(working)
        self.pipeline.resync(working)  # the estimator predicts from the first cycle on
        self._to(
            State.SHADOW if self.mode is Mode.SHADOW else State.REQUESTING,
            f"initialized from the PLC's working setpoints {working}",
        )
        return True

    def _follow_plc(self, judged: Judgement, view: CycleView) -> None:
        """React to what the PLC reports: activation, or being dropped. A flag that cannot be
        trusted grants nothing; while RUNNING/HOLD an untrusted ``mpc_active`` is a problem of
        the cycle (held: nobody can tell whether the PLC still gives the MPC control)."""
        snap = judged.snapshot
        active = flag(snap, "mpc_active")
        # "active" counts only as the answer to our own request: a PLC that claims it before
        # we asked (another controller has it, a stale flag, a rogue PLC) is not handing over
        # control, and the handshake is not ours to touch: nothing is written (_send)
        requesting = self.state is State.REQUESTING
        view.taken, release = self.takeover.judge(requesting, active, self._asked)
        self._taken, self._pending_release = view.taken, self._pending_release or release
        if self._taken:
            self.counters.taken_cycles += 1
            self._problem(view, TAKEN)
        elif self.state is State.REQUESTING and active and self._requested:
            unknown = [n for n in self.model.input_names if n not in judged.working]
            if unknown:
                self._problem(view, f"working setpoints of {unknown} not trusted; not engaging")
                return
            working = dict(judged.working)
            self.pipeline.start(working)  # bumpless: start from what the PLC is doing
            # the process ran under these over the last sample: the estimator predicts over it
            self.pipeline.resync(working)
            self.writer.engaged()
            self.counters.bad_in_a_row = 0  # not the cycles it spent asking
            self._to(State.RUNNING, "the PLC reports mpc_active")
        elif self.state in (State.RUNNING, State.HOLD) and active is False:
            self.counters.fallbacks += 1
            self._to(State.FALLBACK, "the PLC dropped the MPC (mpc_active cleared)")
            self._pending_release = True  # cycle the request, as the PLC's rules ask
        elif self.state in (State.RUNNING, State.HOLD) and active is None:
            why = flag_reading(snap, "mpc_active")
            self._problem(view, f"mpc_active {why}: not known whether the MPC has control, held")
        elif self.state is State.FALLBACK:
            clean = self.counters.bad_in_a_row == 0  # the last cycle
            if self.reengage.ready(flag(snap, "mpc_permissive"), clean, self.clock.now()):
                self._to(State.REQUESTING, self.reengage.why())

    # ------------------------------------------------------------------ the twin
    def _watch(self, view: CycleView, estimate: Estimate | None, *, data_good: bool) -> None:
        """Drift charts, maintenance forecasts and publications on this cycle's estimate."""
        if self.state is State.INIT:
            return
        inputs = self.pipeline.working or self.model.nominal_inputs
        t_model = self.timebase.model_time(view.t)
        self.twin_work.watch(view, t_model, estimate, inputs, data_good=data_good)

    async def _publish(self, view: CycleView) -> None:
        """The twin's publications, except before initialization, once stopped, and in
        shadow mode unless ``runtime.publish_in_shadow``."""
        if self.state in (State.INIT, State.STOPPED):
            return
        if not self.twin_work.publishes:
            return
        await self.twin_work.publish(view)

    # ------------------------------------------------------------------ writing
    async def _act(self, view: CycleView) -> None:
        stuck = cycles.unreachable(view.outcome)  # an input it cannot set: no clean cycle
        if stuck and self.state in (State.RUNNING, State.HOLD) and not view.problems:
            self._problem(view, stuck)
        if view.problems and not self._taken:  # waiting for another controller: no bad cycle
            self._after_problem(view)
        elif self.state is State.HOLD:
            self._to(State.RUNNING, "inputs and solve are good again")
        await self._send(view)
        if not view.problems:  # only a clean cycle ends a run of bad ones (failed writes count)
            self.counters.bad_in_a_row = 0

    def _follow_working(self, view: CycleView) -> None:
        """While the PLC drives the inputs (shadow, fallback, before engaging), the estimator
        predicts with its working setpoints as read (else a shadow run's estimate drifts
        away); in shadow mode the move limits count from them too."""
        if view.snapshot is None or self.state is State.INIT:
            return
        working = {**self.pipeline.working, **self._working_now}  # the trusted ones only
        if set(working) >= set(self.model.input_names):
            if self.mode is Mode.SHADOW:
                self.pipeline.resync(working)
            else:
                self.pipeline.applied(working)

    async def _send(self, view: CycleView) -> None:
        if self.mode is Mode.SHADOW or self.state in (State.INIT, State.STOPPED):
            self._follow_working(view)
            await self.writer.advise(view, self.settings.advisory_tags)
            return
        if self.state in (State.FALLBACK, State.RELEASED):
            self._follow_working(view)
            await self._write_request(False, view)
            return
        if self.state is State.RUNNING and view.outcome is not None and not view.outcome.held:
            # the heartbeat goes in the setpoints' write (ControlWriter.setpoints)
            beat = self.writer.next_heartbeat()
            if self.writer.too_soon(view):
                await self.writer.heartbeat(view, beat)
                self._after_problem(view)
            elif not await self.writer.setpoints(view, self.mode, self.state, beat):
                self._after_problem(view)
            return
        if self._taken:  # another controller's heartbeat and request: not ours to write
            self._follow_working(view)
            return
        await self.writer.heartbeat(view)
        if self.state is State.REQUESTING:
            self._follow_working(view)
            if not view.problems:  # asked on a clean cycle only (after a release owed)
                await self._write_request(not self._pending_release, view)
            return
        if view.outcome is not None:
            self.pipeline.resync(self.pipeline.working)  # nothing written: moves count from it

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
        asked, self._asked = self._asked, self._asked or value  # a lost answer: maybe applied
        report = await self.writer.write({"mpc_request": float(value)}, view)
        if report is not None and report.ok:
            self._requested = self._asked = value
            self._pending_release = False
            self.counters.writes += 1
            view.written["mpc_request"] = float(value)
        elif report is not None and not_applied(report, "mpc_request"):
            self._asked = asked  # refused, or never sent: certainly not applied

    # ------------------------------------------------------------------ operator control
    def release_control(self, user: str, reason: str) -> str:
        """An operator hands control back to the PLC without stopping the runtime: RELEASED,
        ``mpc_request`` cleared on the next cycle, no setpoint written until an operator
        requests again. Audited (``operator.release``, the user, the reason) whether carried
        out or refused; call it on the control loop's thread. Raises :class:`ControlRefused`
        in shadow mode, before initialization, when stopped, or when already released."""
        self._operator("release", user, reason, (State.RELEASED,))
        self._pending_release = self._asked  # cleared, unless it never asked (taken)
        self._to(State.RELEASED, f"operator {user} released control: {reason}")
        return "control released to the PLC: mpc_request is cleared on the next cycle"

    def request_control(self, user: str, reason: str) -> str:
        """An operator asks for MPC control again after a release or a fallback: REQUESTING;
        the supervisor engages (bumplessly, from trusted working setpoints) only when the PLC
        reports ``mpc_active``. Audited like :meth:`release_control`; raises
        :class:`ControlRefused` unless RELEASED or in FALLBACK in closed-loop mode."""
        self._operator("request", user, reason, (State.REQUESTING, State.RUNNING, State.HOLD))
        self._to(State.REQUESTING, f"operator {user} requested control: {reason}")
        return "requesting control: the MPC engages when the PLC reports mpc_active"

    def _operator(self, action: Action, user: str, reason: str, already: tuple[State, ...]) -> None:
        """Audit an operator's action; raises ControlRefused when it may not be carried out."""
        why = refusal(self.mode, self.state, action, already)
        old, detail = self.state, {"run_id": self.run_id, "mode": self.mode.value}
        record(self.audit, self.site.name, action, user, reason, old, why, detail)

    # ------------------------------------------------------------------ what if
    def forecast(self, plans: Sequence[Plan] | None = None) -> Forecast:
        """What-if from the live estimate: the batch to its end under each plan (default: the
        MPC's, the PLC's local recipe). Seconds of CPU for a whole batch: call it off the
        control loop (``asyncio.to_thread``); it reads the estimate and changes nothing."""
        return live_forecast(self.site, self._live, plans)  # taken at the end of a cycle

    # ------------------------------------------------------------------ stopping
    async def shutdown(self, cause: str, failure: BaseException | None = None) -> None:
        """Release control so the PLC takes over bumplessly; final audit record. After a
        ``failure`` (the run aborted) a step that fails is logged, not raised (StopSteps)."""
        from controller.runtime.run_end import StopSteps

        if self.state is State.STOPPED:
            return
        await self.solver.settle(5.0)
        step = StopSteps(cause, failure)
        if self.mode is Mode.CLOSED_LOOP and self._asked:  # a request, even unconfirmed
            view = CycleView(-1, self.clock.now(), self.state, None)
            self._pending_release = True
            await step.wait("the release of mpc_request", self._write_request(False, view))
        step("the mode.change to STOPPED", self._to, State.STOPPED, cause)
        who = {"old_value": self.run_id, "actor": self.actor, "detail": dict(vars(self.counters))}
        step("run.stop", self.audit.record, "run.stop", self.site.name, reason=cause, **who)
