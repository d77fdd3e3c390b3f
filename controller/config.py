"""Controller configs (``configs/controllers/<name>.yaml``) as frozen, typed objects.

:class:`ControllerConfig` and its sections are the schema of one MPC strategy for one plant
model: the objective, the input limits the MPC and the safety layer share, constraints, the
estimator, the solver, robust scenarios and monitoring (:mod:`controller.monitoringspec`).
:func:`robust_values` and :func:`robust_scenarios` derive a robust MPC's scenario tree from
it. :class:`Recipe` is an open-loop input table (a scenario's, a forecast's plan, the PLC's
local recipe), checked against a model by :func:`recipe_input_problems` (every input given)
and :func:`recipe_range_problems` (each value within its input's physical range).

Loading a controller file and checking its names against its plant model is
:mod:`controller.controllerfile`; reading and validating YAML is :mod:`controller.configfile`.
"""

from __future__ import annotations

import itertools
from typing import Annotated, Literal

from pydantic import Field, field_validator, model_validator

from controller.configfile import Finite, PositiveFinite, Strict
from controller.errors import Problem
from controller.monitoringspec import MonitoringSpec
from plant_models import PlantModel


class Collocation(Strict):
    type: Literal["radau", "legendre"] = "radau"
    degree: Annotated[int, Field(ge=1, le=5)] = 2
    finite_elements: Annotated[int, Field(ge=1, le=5)] = 1


class EconomicTerm(Strict):
    """Maximize or minimize a named expression (state, output or model expression)."""

    expression: str
    sense: Literal["maximize", "minimize"]
    where: Literal["terminal", "stage", "both"] = "terminal"
    weight: PositiveFinite = 1.0


class TrackingTerm(Strict):
    """Track a named variable or expression to a setpoint with a weight."""

    variable: str
    setpoint: Finite
    weight: PositiveFinite = 1.0
    terminal_weight: Annotated[float, Field(ge=0, allow_inf_nan=False)] = 0.0


class MinTime(Strict):
    """Minimum time to the batch end (times in the model's time unit).

    The batch ends when ``expression`` (a state, or an expression of states and parameters)
    reaches ``target`` (a number, or the name of such an expression, e.g. ``Lpr0``): a hard
    condition at the end of the plan. The plan's cost is ``weight`` per time unit to that
    end, plus the other objective terms and the move penalties.

    ``mode: free_end``: the time to the end is a decision of every solve; the first interval
    lasts one sample (it is the move that is applied), the other ``horizon - 1`` share the
    rest equally. ``max_time`` bounds the time to the end (none: unbounded).
    ``mode: shrinking``: the plan runs on the sample grid to the batch end: every interval
    lasts one sample but the last, which ends at the batch end, and the intervals after it
    last nothing; sample by sample the plan's intervals shrink in number. The ``horizon``
    must reach the batch end from the start (a plan that cannot is a failed solve).
    """

    mode: Literal["free_end", "shrinking"]
    expression: str
    target: Finite | str
    weight: PositiveFinite = 1.0
    max_time: PositiveFinite | None = None


class Objective(Strict):
    """What the plan minimizes: economic and tracking terms, and/or the time to the batch end
    (``min_time``); the inputs' move penalties are added."""

    economic: tuple[EconomicTerm, ...] = ()
    tracking: tuple[TrackingTerm, ...] = ()
    min_time: MinTime | None = None

    @model_validator(mode="after")
    def _not_empty(self) -> Objective:
        if not self.economic and not self.tracking and self.min_time is None:
            raise ValueError("give at least one 'economic' or 'tracking' term, or 'min_time'")
        return self


class InputSpec(Strict):
    """Operating limits of a manipulated input, shared by the MPC and the safety layer."""

    lower: Finite
    upper: Finite
    max_move: PositiveFinite
    max_rise: Annotated[float, Field(ge=0, allow_inf_nan=False)] | None = None
    max_fall: Annotated[float, Field(ge=0, allow_inf_nan=False)] | None = None
    move_penalty: Annotated[float, Field(ge=0, allow_inf_nan=False)] = 0.0

    @model_validator(mode="after")
    def _ordered(self) -> InputSpec:
        if self.lower > self.upper:
            raise ValueError(f"lower {self.lower} is above upper {self.upper}")
        return self


class Constraint(Strict):
    """A bound on a named variable or expression; soft ones carry a penalty."""

    expression: str
    lower: Finite | None = None
    upper: Finite | None = None
    soft: bool = False
    penalty: PositiveFinite = 1e3
    #: the fast path's typical magnitude of the row (and its slack), in the expression's unit;
    #: None: the derived one (``controller.core.ocp_stage.constraint_scales``). The NLP is the
    #: same; only the QP's coefficients change (the do-mpc backend ignores it).
    scale: PositiveFinite | None = None

    @model_validator(mode="after")
    def _some_bound(self) -> Constraint:
        if self.lower is None and self.upper is None:
            raise ValueError("give 'lower', 'upper' or both")
        if self.lower is not None and self.upper is not None and self.lower > self.upper:
            raise ValueError(f"lower {self.lower} is above upper {self.upper}")
        return self


class EstimatorSpec(Strict):
    """State (and parameter) estimation. Standard deviations are in physical units.

    ``kind``: ``ekf`` (extended Kalman filter), ``mhe`` (moving-horizon estimation over the
    last ``horizon`` samples, bounded by the states' validity domain and the parameters'
    plausible ranges, solved by SQP; the EKF's recursion carries its arrival cost) or
    ``full_state`` (measured states passed through).
    ``prediction``: ``compiled`` (``integrator_steps`` RK4 steps per sample, a DAE's
    algebraic states solved by Newton inside; generated as C code and compiled when ``jit``)
    or ``reference`` (CVODES/IDAS). Either way a failed prediction is retried with CVODES/IDAS
    from algebraic states solved at the new input, then in substeps, before the estimate is
    reported as failed.
    ``innovation_gate``: a measurement whose normalized innovation ``|y - y_pred| /
    sqrt(H P H' + R)`` exceeds this many standard deviations is not used in that cycle's
    correction (``Estimate.rejected``); ``null`` turns the gate off. The gate is armed after
    the first ``innovation_gate_warmup`` corrections (before, the measurements are compared
    with the configured initial guess, not with a prediction). After
    ``innovation_gate_cycles`` rejections in a row an output is used again (the filter
    re-acquires it instead of locking itself out), and the estimate is not ``ok`` while it
    still fails the gate.
    ``horizon`` and ``max_iter`` (SQP iterations per sample) apply to ``mhe`` only.
    """

    kind: Literal["ekf", "full_state", "mhe"] = "ekf"
    parameters: tuple[str, ...] = ()
    process_noise_std: dict[str, Annotated[float, Field(gt=0, allow_inf_nan=False)]] = Field(
        default_factory=dict
    )
    measurement_noise_std: dict[str, Annotated[float, Field(gt=0, allow_inf_nan=False)]] = Field(
        default_factory=dict
    )
    initial_std: dict[str, Annotated[float, Field(gt=0, allow_inf_nan=False)]] = Field(
        default_factory=dict
    )
    default_relative_std: PositiveFinite = 0.01
    prediction: Literal["compiled", "reference"] = "compiled"
    integrator_steps: Annotated[int, Field(ge=1, le=50)] = 4
    jit: bool = True
    innovation_gate: PositiveFinite | None = 5.0
    innovation_gate_cycles: Annotated[int, Field(ge=1, le=1000)] = 3
    innovation_gate_warmup: Annotated[int, Field(ge=0, le=1000)] = 3
    horizon: Annotated[int, Field(ge=2, le=100)] = 10
    max_iter: Annotated[int, Field(ge=1, le=200)] = 20

    @property
    def estimated(self) -> tuple[str, ...]:
        """The parameters really estimated (none with full-state feedback)."""
        return self.parameters if self.kind != "full_state" else ()


class SolverSpec(Strict):
    """Which NMPC implementation solves the controller's problem, and its options.

    ``backend: do-mpc`` (the default) is the reference: do-mpc's collocation solved by IPOPT.
    ``backend: fast`` is :mod:`controller.core.fast_mpc`: SQP with the QP solver ``qpsol`` on a
    multiple-shooting transcription (``integrator_steps`` RK4 steps per sample), compiled
    with the system C compiler when ``jit`` (cached on disk), falling back to warm-started
    IPOPT within the same cycle when the SQP does not converge (``fallback: ipopt``).
    ``hessian``: ``gauss-newton`` (tracking residuals J'J and move penalties, no constraint
    curvature: always convex, so the active-set QP never meets an indefinite Hessian) or
    ``exact`` (the Lagrangian's; converges faster on economic objectives, where the
    Gauss-Newton model has no curvature left but the move penalties). ``regularization`` is
    added to the Gauss-Newton diagonal (scaled variables). ``cold_start: ipopt`` solves a step
    without a warm start (the first, or after a failure) with IPOPT, whose solution then
    warm-starts the SQP; ``sqp-ipopt`` tries the SQP from the same guess first (IPOPT when it
    does not converge; :mod:`controller.core.fast_guess`). ``line_search`` enables
    sqpmethod's line search (off: full steps).
    The other options are ignored by the do-mpc backend.
    """

    backend: Literal["do-mpc", "fast"] = "do-mpc"
    qpsol: Literal["qpoases", "qrqp"] = "qrqp"
    max_iter: Annotated[int, Field(ge=1, le=1000)] = 20
    tol: Annotated[float, Field(gt=0, le=1e-2, allow_inf_nan=False)] = 1e-6
    #: the SQP's stationarity (dual infeasibility) tolerance; None: ``tol``
    tol_du: Annotated[float | None, Field(gt=0, le=1e-2, allow_inf_nan=False)] = None
    integrator_steps: Annotated[int, Field(ge=1, le=20)] = 2
    jit: bool = True
    fallback: Literal["ipopt", "none"] = "ipopt"
    hessian: Literal["gauss-newton", "exact"] = "gauss-newton"
    regularization: Annotated[float, Field(ge=0, le=1.0, allow_inf_nan=False)] = 1e-4
    cold_start: Literal["ipopt", "sqp", "sqp-ipopt"] = "ipopt"
    line_search: bool = False


#: Most scenarios (branches) a robust multi-stage MPC may have: combinations ** n_robust.
MAX_ROBUST_SCENARIOS = 100


class RobustSpec(Strict):
    """Robust multi-stage NMPC (do-mpc's ``n_robust`` and ``set_uncertainty_values``).

    ``parameters`` maps each uncertain model parameter to its values, the first being the
    nominal one (as in do-mpc), or to ``range``: the plant file's value, then the low and
    high ends of its plausible ``range`` (values equal to the nominal one are dropped). The
    scenario tree branches on every combination of the values (their product) at each of the
    first ``n_robust`` intervals; the inputs of those intervals are shared by every scenario
    with the same past (non-anticipativity), and the uncertain parameters are held at their
    scenario values (online estimates of them are not used).
    """

    parameters: dict[str, Annotated[tuple[Finite, ...], Field(min_length=1)] | Literal["range"]]
    n_robust: Annotated[int, Field(ge=1, le=3)] = 1

    @model_validator(mode="after")
    def _not_empty(self) -> RobustSpec:
        if not self.parameters:
            raise ValueError("give at least one uncertain parameter")
        for name, values in self.parameters.items():
            if values != "range" and len(set(values)) != len(values):
                raise ValueError(f"the values of {name} repeat: {list(values)}")
        return self


#: the shortest sample time (in the model's time unit, hours or seconds): a microsecond of
#: seconds already is far below any PLC cycle; a shorter one would make a run's step count
#: (duration / sample_time) overflow or never end
MIN_SAMPLE_TIME = 1e-6


def sample_time_long_enough(value: float) -> float:
    """``value``, a sample time; ValueError (for a pydantic validator) below the minimum."""
    if value < MIN_SAMPLE_TIME:
        raise ValueError(
            "too short: a run could not count its steps; allowed: "
            f"{MIN_SAMPLE_TIME:g} or more (in the model's time unit)"
        )
    return value


class ControllerConfig(Strict):
    """An MPC strategy for one plant model (times in the model's time unit).

    ``constraints`` are path constraints: both backends hold them at the start and at the end
    of every interval of the horizon (with that interval's input), and at
    ``constraint_points`` equally spaced points inside it (0: none), so that the plan keeps
    them between samples, not only at the sample instants.
    """

    plant: str
    description: str = ""
    sample_time: PositiveFinite
    horizon: Annotated[int, Field(ge=1, le=500)]
    collocation: Collocation = Collocation()
    objective: Objective
    inputs: dict[str, InputSpec]
    state_bounds: dict[str, tuple[Finite | None, Finite | None]] = Field(default_factory=dict)
    constraints: tuple[Constraint, ...] = ()
    constraint_points: Annotated[int, Field(ge=0, le=20)] = 0
    estimator: EstimatorSpec = EstimatorSpec()
    ipopt: dict[str, str | int | float] = Field(default_factory=dict)
    history_limit: Annotated[int, Field(ge=1, le=100_000)] = 200
    solver: SolverSpec = SolverSpec()
    robust: RobustSpec | None = None
    monitoring: MonitoringSpec | None = None

    @field_validator("sample_time")
    @classmethod
    def _not_too_short(cls, value: float) -> float:
        return sample_time_long_enough(value)


class RecipeRow(Strict):
    t: Annotated[float, Field(ge=0, allow_inf_nan=False)]
    inputs: dict[str, Finite]


class Recipe(Strict):
    """An open-loop input table; values between rows are interpolated."""

    interpolation: Literal["linear", "previous"] = "linear"
    table: tuple[RecipeRow, ...]

    @model_validator(mode="after")
    def _sorted(self) -> Recipe:
        times = [r.t for r in self.table]
        if not times or times[0] != 0.0:
            raise ValueError("the table must start at t: 0")
        if any(b <= a for a, b in itertools.pairwise(times)):
            raise ValueError(f"times must increase strictly, got {times}")
        return self


def robust_values(cfg: ControllerConfig, model: PlantModel) -> dict[str, tuple[float, ...]]:
    """The values of every uncertain parameter of ``cfg.robust`` (nominal first); ``{}`` for
    a nominal MPC. ``range`` is resolved from the plant file (see :class:`RobustSpec`)."""
    if cfg.robust is None:
        return {}
    out: dict[str, tuple[float, ...]] = {}
    for name, values in cfg.robust.parameters.items():
        if values == "range":
            par = model.parameter_set.parameters[name]
            ends = [v for v in (par.lower, par.upper) if v != par.value]
            out[name] = (par.value, *dict.fromkeys(ends))
        else:
            out[name] = tuple(float(v) for v in values)
    return out


def robust_scenarios(cfg: ControllerConfig, model: PlantModel) -> list[dict[str, float]]:
    """Every combination of the uncertain parameters' values, in do-mpc's order
    (``itertools.product`` of the values in the config's order; the first is nominal)."""
    values = robust_values(cfg, model)
    return [dict(zip(values, combo, strict=True)) for combo in itertools.product(*values.values())]


def recipe_input_problems(
    recipe: Recipe, model: PlantModel, source: str, prefix: str = ""
) -> list[Problem]:
    """Every row of a recipe the PLC applies must give every input of the model."""
    allowed = list(model.input_names)
    return [
        Problem(
            source,
            f"{prefix}table.{j}.inputs",
            f"each row must give exactly the inputs {allowed}",
            sorted(row.inputs),
        )
        for j, row in enumerate(recipe.table)
        if set(row.inputs) != set(allowed)
    ]


def recipe_range_problems(
    recipe: Recipe, model: PlantModel, source: str, prefix: str = ""
) -> list[Problem]:
    """Recipe values outside their input's physical (actuator) range: the limits a recipe
    run enforces (safety would clip the value, so the plant would not get what the recipe
    says), and where the true plant's equations hold; the PLC's local recipe of a
    forecast too. One problem per value."""
    problems: list[Problem] = []
    for j, row in enumerate(recipe.table):
        for name, value in row.inputs.items():
            if name not in model.input_names:
                continue  # recipe_input_problems names it
            var = model.variable(name)
            if var.lower <= value <= var.upper:
                continue
            lo, hi, unit = var.lower, var.upper, var.unit
            why = (
                f"{name} = {value:g} {unit} at t={row.t:g} {model.time_unit} is outside "
                f"{name}'s physical (actuator) range [{lo:g}, {hi:g}] {unit}, the limits a "
                f"recipe run enforces; allowed: {lo:g} to {hi:g} {unit}"
            )
            problems.append(Problem(source, f"{prefix}table.{j}.inputs.{name}", why, value))
    return problems
