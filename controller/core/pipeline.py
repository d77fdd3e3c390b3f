"""One control cycle as a pure step: measurements -> estimator -> policy -> safety -> setpoints.

:class:`ControlPipeline` joins the computing core. It does no I/O: the caller (the offline
loop, and later the supervisor) reads a snapshot from a port, hands the numbers and their
quality verdict to :meth:`ControlPipeline.step`, and writes ``outcome.setpoints`` back.
Data flow is one way: port -> estimator -> MPC (or recipe) -> safety -> port.

Nothing the estimator could not vouch for reaches the policy: a failed estimator (an
``Estimate`` with ``ok=False``, or any exception it raises) is a problem that holds the cycle,
and so is a measurement its innovation gate rejected (``Estimate.rejected``) in
:meth:`ControlPipeline.step`; the supervisor applies each measurement's own bad-data policy
instead (:mod:`controller.runtime.trust`).

What the PLC has is one fact with one owner, the pipeline (:attr:`ControlPipeline.working`):
:meth:`~ControlPipeline.start` and :meth:`~ControlPipeline.resync` set it, and with it the
estimator's applied inputs and the safety filter's reference for the move limits. Between
:meth:`~ControlPipeline.guard` and the caller's resync the safety filter's reference runs
ahead: it counts the outcome it let through as applied.

A write whose outcome is unknown (no answer, a failed read-back: the PLC may or may not have
applied it) leaves what the PLC has unknown for its inputs (:meth:`~ControlPipeline.unknown`,
:attr:`~ControlPipeline.unsure`): the move limits have no origin for them until the PLC's
trusted working setpoints say what it has (:meth:`~ControlPipeline.settle`, or
:meth:`~ControlPipeline.start` on engaging), and nothing may be written from them meanwhile.
"""

from __future__ import annotations

import math
from collections.abc import Collection, Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Protocol

from controller.config import ControllerConfig
from controller.core.estimate import Estimate, Estimator
from controller.core.limits import Grid
from controller.core.mpc import Decision, SolveStatus
from controller.core.safety import InputLimit, SafetyFilter, SafetyOutcome
from controller.errors import EstimatorError, SafetyOrderError
from plant_models import PlantModel


class Policy(Protocol):
    """Anything that proposes inputs: the MPC or an open-loop recipe."""

    def step(
        self,
        t: float,
        x_hat: Mapping[str, float],
        params: Mapping[str, float] | None = None,
        u_prev: Mapping[str, float] | None = None,
    ) -> Decision: ...

    def reset(self, u_prev: Mapping[str, float]) -> None: ...


def open_loop(policy: Policy) -> bool:
    """The policy sets its inputs from a table alone (an open-loop recipe: its class says
    ``open_loop = True``): neither the data nor the estimate go into what it sets."""
    return bool(getattr(policy, "open_loop", False))


#: How :meth:`ControlPipeline.estimate` words an estimator failure (the problem's start).
ESTIMATOR_FAILED = "estimator"


@dataclass(frozen=True)
class CycleResult:
    """What one cycle saw, decided and let through.

    ``rejected``: the outputs the estimator's innovation gate rejected (the cycle held);
    ``estimator_failed``: the estimator failed (the cycle held). An open-loop policy
    (:func:`open_loop`) is held by neither, nor by bad or stale data: they are still reported.
    """

    t: float
    estimate: Estimate | None
    decision: Decision
    outcome: SafetyOutcome
    data_ok: bool
    data_fresh: bool
    rejected: tuple[str, ...] = ()
    estimator_failed: bool = False


def rejected_outputs(estimate: Estimate | None) -> tuple[str, ...]:
    """The outputs the estimator's innovation gate rejected in this estimate."""
    return tuple(getattr(estimate, "rejected", ()) or ()) if estimate is not None else ()


def input_limits(
    cfg: ControllerConfig, grids: Mapping[str, Grid] | None = None
) -> dict[str, InputLimit]:
    """The safety layer's limits: the same input limits the MPC is built with; ``grids``:
    per input, the values the PLC can hold (the runtime's, from its setpoint tags)."""
    grids = grids or {}
    return {
        n: InputLimit(n, s.lower, s.upper, s.max_move, s.max_rise, s.max_fall, grids.get(n))
        for n, s in cfg.inputs.items()
    }


class ControlPipeline:
    """Estimator, policy and safety filter for one plant model."""

    def __init__(
        self,
        model: PlantModel,
        estimator: Estimator,
        policy: Policy,
        limits: Mapping[str, InputLimit],
    ) -> None:
        self.model = model
        self.estimator = estimator
        self.policy = policy
        self.safety = SafetyFilter(limits)
        #: what the PLC has (None before :meth:`start`)
        self._working: dict[str, float] | None = None
        #: False from :meth:`start` to the next :meth:`resync` / :meth:`applied`: no sample
        #: with known inputs precedes the estimator's next update (it does not predict)
        self._in_place = False
        self._estimate: Estimate | None = None
        #: inputs whose value at the PLC is unknown (a write of them had an unknown outcome)
        self._unsure: set[str] = set()

    @property
    def working(self) -> Mapping[str, float]:
        """What the PLC has: the inputs in place by name (empty before :meth:`start`)."""
        return MappingProxyType(dict(self._working or {}))

    def start(self, working_setpoints: Mapping[str, float]) -> None:
        """Bumpless start from the setpoints the PLC is working with: they are what the PLC
        has and the move limits' origin, the policy starts from them, and the estimator's
        next update does not predict (no sample under known inputs precedes it)."""
        self.safety.reset(working_setpoints)
        self.policy.reset(working_setpoints)
        self._working = _finite(working_setpoints)
        self._in_place = False
        self._unsure.clear()

    @property
    def unsure(self) -> frozenset[str]:
        """The inputs whose value at the PLC is unknown (:meth:`unknown`): their move limits
        have no origin, nothing may be written until :meth:`settle` or :meth:`start`."""
        return frozenset(self._unsure)

    def unknown(self, names: Collection[str]) -> None:
        """The outcome of a write of ``names`` is unknown: the PLC may have applied it or not.
        :attr:`working` keeps their last known values (the estimator's best guess) until
        :meth:`settle` learns what the PLC has; :meth:`resync` does not clear this."""
        self._unsure.update(names)

    def settle(self, read: Mapping[str, float]) -> frozenset[str]:
        """What the PLC has, from its trusted working setpoints as read this cycle (``read``):
        where it differs from what the pipeline holds (a write of unknown outcome, a PLC or
        operator that moved a setpoint while the MPC held control, a register's resolution),
        it becomes what the PLC has: the move limits' origin and the estimator's inputs.
        Returns the inputs still unknown (a write of unknown outcome, and not in ``read`` or
        not finite there); nothing changes when ``read`` says what the pipeline holds."""
        known = {n: float(v) for n, v in read.items() if math.isfinite(v)}
        working = dict(self._working or {})
        if any(working.get(n) != v for n, v in known.items()):
            self.resync({**working, **known})
        self._unsure.difference_update(known)
        return frozenset(self._unsure)

    def resync(self, working: Mapping[str, float]) -> None:
        """The PLC has ``working`` (read back, written, or its own working setpoints): the
        estimator's inputs over the coming sample and the move limits' origin.

        Raises ValueError (from the safety filter) when a limited input is missing or not
        finite; nothing changes then.
        """
        self.safety.reset(working)
        self.applied(working)

    def step(
        self,
        t: float,
        y: Mapping[str, float],
        *,
        data_ok: bool = True,
        data_fresh: bool = True,
        states: Mapping[str, float] | None = None,
    ) -> CycleResult:
        """Run one cycle at process time ``t`` (model time unit) on measured outputs ``y``.

        Bad or stale data hold the last safe setpoints and skip the solve. A failed
        estimator, a measurement rejected by the innovation gate and a failed solve hold too.
        An open-loop recipe (:func:`open_loop`) is held by none of them but a failed decision
        (its inputs come from its table, not from the data or the estimate: the estimator is
        a bystander, whose troubles are still reported); the safety filter's limits and move
        limits still apply. Raises SafetyOrderError when :meth:`start` was not called.
        """
        estimate, problem = self.estimate(y, data_ok=data_ok, data_fresh=data_fresh, states=states)
        failed = problem.startswith(ESTIMATOR_FAILED)
        rejected = () if problem else rejected_outputs(estimate)
        if open_loop(self.policy):
            decision = self.policy.step(t, {}, None, u_prev=dict(self.safety.last))
            outcome = self.guard(decision, data_ok=True, data_fresh=True)
            return CycleResult(
                t, estimate, decision, outcome, data_ok, data_fresh, rejected, failed
            )
        if rejected:
            problem = f"measurement(s) {list(rejected)} rejected by the innovation gate"
        if problem or estimate is None:
            decision = Decision(t, {}, SolveStatus.ERROR, problem or "no estimate yet", 0, 0.0)
            data_ok = data_ok and not failed and not rejected
        else:
            decision = self.decide(t, estimate)
        outcome = self.guard(decision, data_ok=data_ok, data_fresh=data_fresh)
        return CycleResult(t, estimate, decision, outcome, data_ok, data_fresh, rejected, failed)

    # The three stages, for callers that run the solve elsewhere: the supervisor runs
    # :meth:`decide` in a worker thread with a deadline; the other two stay on its task.
    def estimate(
        self,
        y: Mapping[str, float],
        *,
        data_ok: bool = True,
        data_fresh: bool = True,
        states: Mapping[str, float] | None = None,
        exclude: Collection[str] = (),
    ) -> tuple[Estimate | None, str]:
        """Update the estimator on good, fresh data; returns (estimate, problem or "").

        ``exclude`` names outputs not to correct with this cycle (untrusted: the estimator
        rides on its prediction for them; ``y`` need not hold them). The problem starts with
        :data:`ESTIMATOR_FAILED` when the estimator failed: an ``Estimate`` with ``ok=False``
        (returned, for the record; it must not be acted on) or any exception (the last good
        estimate is returned). Never raises for the estimator's sake.
        """
        if self._working is None:
            raise SafetyOrderError("ControlPipeline used before start(working_setpoints)")
        if not (data_ok and data_fresh):
            why = "bad-quality data" if not data_ok else "stale data"
            return self._estimate, f"no solve: {why}"
        try:
            u = self._working if self._in_place else None
            est = self.estimator.update(u, y, states, exclude=exclude)
        except EstimatorError as exc:
            return self._estimate, f"{ESTIMATOR_FAILED}: {exc}"
        except Exception as exc:  # an estimator that raised fails this cycle, never the loop
            return self._estimate, f"{ESTIMATOR_FAILED} raised {type(exc).__name__}: {exc}"
        if not getattr(est, "ok", True):
            return est, f"{ESTIMATOR_FAILED} failed: {getattr(est, 'reason', '') or 'no reason'}"
        self._estimate = est
        return est, ""

    def decide(self, t: float, estimate: Estimate) -> Decision:
        """Ask the policy (MPC or recipe); touches neither the estimator nor the safety filter."""
        return self.policy.step(
            t, estimate.states, estimate.parameters, u_prev=dict(self.safety.last)
        )

    def guard(self, decision: Decision, *, data_ok: bool, data_fresh: bool) -> SafetyOutcome:
        """Pass a decision through the safety filter (holds on a failed decision or bad data)."""
        return self.safety.step(
            dict(decision.inputs) if decision.inputs else None,
            solve_ok=decision.ok,
            data_ok=data_ok,
            data_fresh=data_fresh,
        )

    def applied(self, setpoints: Mapping[str, float]) -> None:
        """The inputs really in place over the coming sample (what the PLC has), for the
        estimator; the safety filter keeps the reference it advanced in :meth:`guard` (the
        offline loop, whose writes cannot be refused). Non-finite values are left out."""
        self._working = _finite(setpoints)
        self._in_place = True


def _finite(values: Mapping[str, float]) -> dict[str, float]:
    """The finite values as floats."""
    return {k: float(v) for k, v in values.items() if math.isfinite(v)}
