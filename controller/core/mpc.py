"""Nonlinear MPC: the shared problem definition and the controller interface.

:class:`ModelPredictiveController` is the interface every backend implements (:meth:`step`,
:meth:`reset`, :meth:`set_parameters`); :func:`controller.core.policy.build_policy` builds
the one ``cfg.solver.backend`` asks for: :class:`controller.core.dompc.DoMpcController`
(``do-mpc``, the reference) or :class:`controller.core.fast_mpc.FastController` (``fast``).
Both take the same objective, bounds, move limits and soft constraints (built here, once, by
:func:`objective_terms`, :func:`move_limits` and :func:`nl_constraints`) and return the same
:class:`Decision`; a failed solve is a Decision whose ``status`` is not SUCCESS, never a
silently returned input.

Pure computing: no I/O. Times are in the plant model's time unit; values are physical.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

import numpy as np

from controller.config import ControllerConfig
from controller.errors import ConfigError, Problem, SolverError, unknown_name
from plant_models import PlantModel, Role

#: IPOPT return statuses that count as a usable solution.
ACCEPTED_STATUSES = frozenset({"Solve_Succeeded", "Solved_To_Acceptable_Level"})

DEFAULT_IPOPT: dict[str, Any] = {
    "ipopt.linear_solver": "mumps",
    "ipopt.print_level": 0,
    "ipopt.sb": "yes",
    "ipopt.max_iter": 300,
    "ipopt.tol": 1e-8,
    "ipopt.acceptable_tol": 1e-5,
    "print_time": False,
}


def ipopt_options(cfg: ControllerConfig) -> dict[str, Any]:
    """IPOPT options: :data:`DEFAULT_IPOPT` updated by the config's ``ipopt`` section."""
    opts = dict(DEFAULT_IPOPT)
    opts.update(
        {f"ipopt.{k}" if "." not in k and k != "print_time" else k: v for k, v in cfg.ipopt.items()}
    )
    return opts


class SolveStatus(StrEnum):
    SUCCESS = "success"
    FAILED = "failed"  # the solver reported failure (infeasible, max_iter, ...)
    INVALID = "invalid"  # the solver claimed success but the input is unusable
    ERROR = "error"  # the solver raised


@dataclass(frozen=True)
class Decision:
    """One MPC result.

    ``inputs`` is the first move of the plan (physical units). When ``status`` is not
    SUCCESS the inputs must not be applied; the safety layer holds instead.
    ``predicted_states[name]`` has ``horizon + 1`` entries, ``predicted_inputs[name]``
    ``horizon``; ``soft_slack`` gives the planned slack of every soft constraint (> 0 means
    the plan violates it). ``fallback`` is True when the fast path's SQP did not converge
    and IPOPT produced this result within the same cycle (its ``return_status`` then names
    both). ``end_time`` is the planned time of the batch end (``objective.min_time``; NaN
    otherwise), in the model's time unit.
    """

    t: float
    inputs: Mapping[str, float]
    status: SolveStatus
    return_status: str
    iterations: int
    solve_time_s: float
    objective: float = math.nan
    predicted_states: Mapping[str, np.ndarray] = field(default_factory=dict)
    predicted_inputs: Mapping[str, np.ndarray] = field(default_factory=dict)
    soft_slack: Mapping[str, float] = field(default_factory=dict)
    fallback: bool = False
    end_time: float = math.nan

    @property
    def ok(self) -> bool:
        return self.status is SolveStatus.SUCCESS


@dataclass(frozen=True)
class NlConstraint:
    """One side of a configured constraint, as ``sign * expression <= sign * bound``."""

    name: str
    expression: str
    sign: float
    bound: float
    soft: bool
    penalty: float


def nl_constraints(config: ControllerConfig) -> list[NlConstraint]:
    """Every constraint side of ``config``, named as in the Decision's ``soft_slack``."""
    out: list[NlConstraint] = []
    for i, c in enumerate(config.constraints):
        for side, bound in (("upper", c.upper), ("lower", c.lower)):
            if bound is None:
                continue
            sign = 1.0 if side == "upper" else -1.0
            name = f"{c.expression}_{side}_{i}"
            out.append(NlConstraint(name, c.expression, sign, bound, c.soft, c.penalty))
    return out


def move_limits(config: ControllerConfig, name: str) -> tuple[float, float]:
    """(largest fall, largest rise) per sample of input ``name``; ``inf`` when unlimited."""
    spec = config.inputs[name]
    up = min(spec.max_move, spec.max_rise if spec.max_rise is not None else math.inf)
    down = min(spec.max_move, spec.max_fall if spec.max_fall is not None else math.inf)
    return down, up


def objective_terms(
    config: ControllerConfig,
    model: PlantModel,
    source: str,
    symbol: Callable[[str], Any],
    depends_on_u_or_z: Callable[[Any], bool],
) -> tuple[Any, Any]:
    """(stage term, terminal term) of the configured objective, in the symbols ``symbol``
    gives for a variable or expression name. Raises ConfigError when a terminal term
    depends on inputs or algebraic states.
    """
    obj = config.objective
    lterm: Any = 0
    mterm: Any = 0
    problems: list[Problem] = []
    for i, e in enumerate(obj.economic):
        expr = symbol(e.expression)
        sign = -1.0 if e.sense == "maximize" else 1.0
        if e.where in ("stage", "both"):
            lterm += sign * e.weight * expr
        if e.where in ("terminal", "both"):
            if depends_on_u_or_z(expr):
                problems.append(
                    Problem(
                        source,
                        f"objective.economic.{i}.where",
                        "a terminal term may only depend on states and parameters; "
                        "use where: stage",
                        e.expression,
                    )
                )
                continue
            mterm += sign * e.weight * expr
    for i, t in enumerate(obj.tracking):
        expr = symbol(t.variable)
        scale = model.all_variables.get(t.variable)
        err = (expr - t.setpoint) / (scale.scale if scale else 1.0)
        lterm += t.weight * err**2
        if t.terminal_weight > 0:
            if depends_on_u_or_z(expr):
                problems.append(
                    Problem(
                        source,
                        f"objective.tracking.{i}.terminal_weight",
                        "a terminal term may only depend on states and parameters",
                        t.variable,
                    )
                )
                continue
            mterm += t.terminal_weight * err**2
    if problems:
        raise ConfigError(problems)
    return lterm, mterm


class ModelPredictiveController:
    """The MPC interface for one plant model, built from a :class:`ControllerConfig`.

    A backend subclass implements :meth:`step` and :meth:`reset`; build one with
    :func:`controller.core.policy.build_policy`. ``fallbacks`` counts the cycles in which the
    fast path handed over to IPOPT (always 0 for do-mpc).
    """

    config: ControllerConfig
    model: PlantModel
    source: str
    fallbacks: int = 0

    def __init__(self, config: ControllerConfig, model: PlantModel, source: str = "<config>"):
        self.config = config
        self.model = model
        self.source = source
        self._params = model.parameters
        self._u_prev = model.vector(Role.INPUT, model.nominal_inputs)

    def step(
        self,
        t: float,
        x_hat: Mapping[str, float],
        params: Mapping[str, float] | None = None,
        u_prev: Mapping[str, float] | None = None,
    ) -> Decision:
        """Solve the MPC from state ``x_hat`` at time ``t``; never raises on a failed solve."""
        raise NotImplementedError

    def reset(self, u_prev: Mapping[str, float]) -> None:
        """Forget the warm start; the next step starts from the working setpoints ``u_prev``."""
        raise NotImplementedError

    def set_parameters(self, values: Mapping[str, float]) -> None:
        """Use new parameter values (e.g. online estimates) from the next solve on. Raises
        SolverError, nothing changed, for an unknown name or a value that is not a finite
        number (a solve would fail on it, or worse, carry it on to a later step)."""
        unknown = sorted(set(values) - set(self.model.parameter_names))
        if unknown:
            names = self.model.parameter_names
            raise SolverError("; ".join(unknown_name("parameter", n, names) for n in unknown))
        new = {k: float(v) for k, v in values.items()}
        bad = _non_finite(new)
        if bad:
            raise SolverError(f"parameters must be finite numbers; got {bad}")
        self._params = {**self._params, **new}

    def _within_input_limits(self, inputs: Mapping[str, float], tol: float = 1e-6) -> bool:
        for name, value in inputs.items():
            spec = self.config.inputs[name]
            span = max(1.0, abs(spec.upper - spec.lower))
            if value < spec.lower - tol * span or value > spec.upper + tol * span:
                return False
        return True

    def _failed(self, t: float, status: SolveStatus, why: str) -> Decision:
        return Decision(t, {}, status, why, 0, 0.0)

    def _begin(
        self,
        t: float,
        x_hat: Mapping[str, float],
        params: Mapping[str, float] | None,
        u_prev: Mapping[str, float] | None,
    ) -> np.ndarray | Decision:
        """What every backend's step starts with: the state as a vector (a non-finite one is
        an INVALID Decision, returned instead), new parameters, the setpoint in force."""
        x0 = self.model.vector(Role.STATE, x_hat)
        if not np.all(np.isfinite(x0)):
            return self._failed(t, SolveStatus.INVALID, f"non-finite state estimate {x0}")
        if params:
            bad = _non_finite(params)
            if bad:  # kept from the solver, and from the parameters of the next steps
                return self._failed(t, SolveStatus.INVALID, f"non-finite parameters {bad}")
            self.set_parameters(params)
        if u_prev is not None:
            self._u_prev = self.model.vector(Role.INPUT, u_prev)
        return x0


def _non_finite(values: Mapping[str, float]) -> dict[str, float]:
    """The entries of ``values`` that are not finite numbers."""
    return {k: float(v) for k, v in values.items() if not math.isfinite(v)}
