"""One control cycle as a pure step: measurements -> estimator -> policy -> safety -> setpoints.

:class:`ControlPipeline` joins the computing core. It does no I/O: the caller (the offline
loop, and later the supervisor) reads a snapshot from a port, hands the numbers and their
quality verdict to :meth:`ControlPipeline.step`, and writes ``outcome.setpoints`` back.
Data flow is one way: port -> estimator -> MPC (or recipe) -> safety -> port.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Protocol

from controller.errors import EstimatorError, SafetyOrderError
from controller.estimator import Estimate, ExtendedKalmanFilter, FullStateFeedback
from controller.mpc import Decision, SolveStatus
from controller.safety import InputLimit, SafetyFilter, SafetyOutcome
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


@dataclass(frozen=True)
class CycleResult:
    """What one cycle saw, decided and let through."""

    t: float
    estimate: Estimate | None
    decision: Decision
    outcome: SafetyOutcome
    data_ok: bool
    data_fresh: bool


class ControlPipeline:
    """Estimator, policy and safety filter for one plant model."""

    def __init__(
        self,
        model: PlantModel,
        estimator: ExtendedKalmanFilter | FullStateFeedback,
        policy: Policy,
        limits: Mapping[str, InputLimit],
    ) -> None:
        self.model = model
        self.estimator = estimator
        self.policy = policy
        self.safety = SafetyFilter(limits)
        self._applied: dict[str, float] | None = None
        self._estimate: Estimate | None = None

    def start(self, working_setpoints: Mapping[str, float]) -> None:
        """Bumpless start from the setpoints the PLC is working with."""
        self.safety.reset(working_setpoints)
        self.policy.reset(working_setpoints)
        self._applied = None

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

        Bad or stale data hold the last safe setpoints and skip the solve. A failed solve
        holds too. Raises SafetyOrderError when :meth:`start` was not called.
        """
        if not self.safety.last:
            raise SafetyOrderError("ControlPipeline.step called before start(working_setpoints)")
        estimate = self._estimate
        if data_ok and data_fresh:
            try:
                if isinstance(self.estimator, FullStateFeedback):
                    estimate = self.estimator.update(self._applied, y, states or {})
                else:
                    estimate = self.estimator.update(self._applied, y)
            except EstimatorError as exc:
                estimate = None
                decision = Decision(t, {}, SolveStatus.ERROR, f"estimator: {exc}", 0, 0.0)
                return self._finish(t, estimate, decision, data_ok=False, data_fresh=data_fresh)
        if estimate is None or not (data_ok and data_fresh):
            why = "bad-quality data" if not data_ok else "stale data"
            decision = Decision(t, {}, SolveStatus.ERROR, f"no solve: {why}", 0, 0.0)
            return self._finish(t, estimate, decision, data_ok=data_ok, data_fresh=data_fresh)
        decision = self.policy.step(
            t, estimate.states, estimate.parameters, u_prev=dict(self.safety.last)
        )
        return self._finish(t, estimate, decision, data_ok=True, data_fresh=True)

    def _finish(
        self,
        t: float,
        estimate: Estimate | None,
        decision: Decision,
        *,
        data_ok: bool,
        data_fresh: bool,
    ) -> CycleResult:
        outcome = self.safety.step(
            dict(decision.inputs) if decision.inputs else None,
            solve_ok=decision.ok,
            data_ok=data_ok,
            data_fresh=data_fresh,
        )
        self._estimate = estimate
        return CycleResult(t, estimate, decision, outcome, data_ok, data_fresh)

    def applied(self, setpoints: Mapping[str, float]) -> None:
        """Tell the estimator which inputs were really in place over the coming interval."""
        self._applied = {k: float(v) for k, v in setpoints.items() if math.isfinite(v)}
