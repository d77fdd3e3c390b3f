"""Configuration: YAML files validated at the edge into frozen, typed objects.

Three kinds of file are read here:

* ``configs/plants/<name>.yaml``: a plant model's parameter values (with units), nominal
  start and bound overrides -> :class:`plant_models.ParameterSet`;
* ``configs/controllers/<name>.yaml``: the MPC, estimator and safety limits ->
  :class:`ControllerConfig`;
* ``configs/scenarios/<name>.yaml``: a run of the closed or open loop against a "true"
  plant -> :class:`ScenarioConfig`.

Unknown keys are rejected. Every problem (schema and cross-references against the plant
model) is collected and raised at once as one :class:`~controller.errors.ConfigError` whose
problems each name the file, the key path, the bad value and what is allowed. Validation
never uses ``assert``.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, Literal, TypeVar

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from controller.errors import ConfigError, Problem
from plant_models import MODELS, Parameter, ParameterSet, PlantModel, Role

Finite = Annotated[float, Field(allow_inf_nan=False)]
PositiveFinite = Annotated[float, Field(gt=0, allow_inf_nan=False)]


class Strict(BaseModel):
    """Base of every config object: frozen, unknown keys rejected."""

    model_config = ConfigDict(extra="forbid", frozen=True)


# ---------------------------------------------------------------------- plant files
class ParameterEntry(Strict):
    value: Finite
    unit: str
    description: str = ""
    range: tuple[Finite, Finite] | None = None

    @model_validator(mode="after")
    def _range_contains_value(self) -> ParameterEntry:
        if self.range is not None:
            lo, hi = self.range
            if lo > hi:
                raise ValueError(f"range lower {lo} is above upper {hi}")
            if not lo <= self.value <= hi:
                raise ValueError(f"value {self.value} is outside its plausible range [{lo}, {hi}]")
        return self


class PlantFile(Strict):
    model: str
    description: str = ""
    parameters: dict[str, ParameterEntry]
    initial_state: dict[str, Finite]
    nominal_inputs: dict[str, Finite]
    initial_algebraic: dict[str, Finite] = Field(default_factory=dict)
    bounds: dict[str, tuple[Finite, Finite]] = Field(default_factory=dict)


# ---------------------------------------------------------------------- controller files
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


class Objective(Strict):
    economic: tuple[EconomicTerm, ...] = ()
    tracking: tuple[TrackingTerm, ...] = ()

    @model_validator(mode="after")
    def _not_empty(self) -> Objective:
        if not self.economic and not self.tracking:
            raise ValueError("give at least one 'economic' or 'tracking' term")
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

    @model_validator(mode="after")
    def _some_bound(self) -> Constraint:
        if self.lower is None and self.upper is None:
            raise ValueError("give 'lower', 'upper' or both")
        if self.lower is not None and self.upper is not None and self.lower > self.upper:
            raise ValueError(f"lower {self.lower} is above upper {self.upper}")
        return self


class EstimatorSpec(Strict):
    """State (and parameter) estimation. Standard deviations are in physical units."""

    kind: Literal["ekf", "full_state"] = "ekf"
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

    @property
    def estimated(self) -> tuple[str, ...]:
        """The parameters really estimated (none with full-state feedback)."""
        return self.parameters if self.kind == "ekf" else ()


class SolverSpec(Strict):
    """Which NMPC implementation solves the controller's problem, and its options.

    ``backend: do-mpc`` (the default) is the reference: do-mpc's collocation solved by IPOPT.
    ``backend: fast`` is :mod:`controller.fast_mpc`: SQP with the QP solver ``qpsol`` on a
    multiple-shooting transcription (``integrator_steps`` RK4 steps per sample), compiled
    with the system C compiler when ``jit`` (cached on disk), falling back to warm-started
    IPOPT within the same cycle when the SQP does not converge (``fallback: ipopt``).
    ``hessian``: ``gauss-newton`` (tracking residuals J'J and move penalties, no constraint
    curvature: always convex, so the active-set QP never meets an indefinite Hessian) or
    ``exact`` (the Lagrangian's; converges faster on economic objectives, where the
    Gauss-Newton model has no curvature left but the move penalties). ``regularization`` is
    added to the Gauss-Newton diagonal (scaled variables). ``cold_start: ipopt`` solves a step
    without a warm start (the first, or after a failure) with IPOPT, whose solution then
    warm-starts the SQP. ``line_search`` enables sqpmethod's line search (off: full steps).
    The other options are ignored by the do-mpc backend.
    """

    backend: Literal["do-mpc", "fast"] = "do-mpc"
    qpsol: Literal["qpoases", "qrqp"] = "qrqp"
    max_iter: Annotated[int, Field(ge=1, le=1000)] = 20
    tol: Annotated[float, Field(gt=0, le=1e-2, allow_inf_nan=False)] = 1e-6
    integrator_steps: Annotated[int, Field(ge=1, le=20)] = 2
    jit: bool = True
    fallback: Literal["ipopt", "none"] = "ipopt"
    hessian: Literal["gauss-newton", "exact"] = "gauss-newton"
    regularization: Annotated[float, Field(ge=0, le=1.0, allow_inf_nan=False)] = 1e-4
    cold_start: Literal["ipopt", "sqp"] = "ipopt"
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


_EWMA_ONLY = frozenset({"lam", "limit"})
_CUSUM_ONLY = frozenset({"k", "h"})


class ChartSpec(Strict):
    """One drift chart (see :mod:`controller.monitoring` for the statistics and defaults).

    ``signal`` is a measured output (a residual chart on ``innovation / innovation_std``) or
    an estimated parameter (a parameter chart on ``(estimate - reference) / sigma``, with
    ``sigma`` in physical units or ``sigma_relative`` times ``|reference|``: exactly one).
    ``lambda``/``limit`` apply to EWMA charts, ``k``/``h`` to CUSUM charts (sigma units);
    ``warmup`` is in model time units after the monitor's first update.
    """

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)  # lam/lambda

    signal: Annotated[str, Field(min_length=1)]
    chart: Literal["ewma", "cusum"]
    lam: Annotated[float, Field(alias="lambda", gt=0, le=1, allow_inf_nan=False)] = 0.05
    limit: PositiveFinite = 4.8
    k: Annotated[float, Field(ge=0, allow_inf_nan=False)] = 0.5
    h: PositiveFinite = 13.0
    sides: Literal["both", "high", "low"] = "both"
    reference: Finite | None = None
    sigma: PositiveFinite | None = None
    sigma_relative: PositiveFinite | None = None
    warmup: Annotated[float, Field(ge=0, allow_inf_nan=False)] = 0.0
    #: parameter charts: learn the reference as the mean estimate over this long (model time)
    #: after the warm-up: drift is then a change from this run's own start (the commissioned
    #: plant), not from the plant file's value
    baseline: Annotated[float, Field(gt=0, allow_inf_nan=False)] | None = None
    description: str = ""

    @model_validator(mode="after")
    def _consistent(self) -> ChartSpec:
        foreign = _CUSUM_ONLY if self.chart == "ewma" else _EWMA_ONLY
        fields = type(self).model_fields
        changed = [f for f in foreign if getattr(self, f) != fields[f].default]
        given = sorted("lambda" if f == "lam" else f for f in changed)
        if given:  # a default (as in a dumped config) is accepted: it changes nothing
            other = "cusum" if self.chart == "ewma" else "ewma"
            raise ValueError(f"{given} apply to {other} charts only (this chart is {self.chart})")
        if self.sigma is not None and self.sigma_relative is not None:
            raise ValueError("give 'sigma' or 'sigma_relative', not both")
        if self.baseline is not None and self.reference is not None:
            raise ValueError("give 'reference' or 'baseline' (learn it), not both")
        return self


class MaintenanceSpec(Strict):
    """Forecast when an estimated parameter crosses a maintenance threshold.

    ``threshold`` is in the parameter's unit; ``window`` (model time units) is the history
    used for the trend fit; ``confidence`` is the two-sided level of the crossing interval.
    """

    parameter: Annotated[str, Field(min_length=1)]
    threshold: Finite
    direction: Literal["falling", "rising"]
    window: PositiveFinite
    min_points: Annotated[int, Field(ge=3, le=1_000_000)] = 10
    confidence: Annotated[float, Field(gt=0, lt=1, allow_inf_nan=False)] = 0.9
    label: str = ""


class MonitoringSpec(Strict):
    """Drift charts and maintenance forecasts run on every estimate (controller.monitoring).

    An active alarm clears when its statistic falls below ``clear_fraction`` times its limit.
    ``alarm_tag`` names the tag that carries the alarm state to the PLC/SCADA.
    """

    charts: tuple[ChartSpec, ...] = ()
    maintenance: tuple[MaintenanceSpec, ...] = ()
    alarm_tag: Annotated[str, Field(min_length=1)] | None = None
    clear_fraction: Annotated[float, Field(gt=0, lt=1, allow_inf_nan=False)] = 0.5


class ControllerConfig(Strict):
    """An MPC strategy for one plant model (times in the model's time unit)."""

    plant: str
    description: str = ""
    sample_time: PositiveFinite
    horizon: Annotated[int, Field(ge=1, le=500)]
    collocation: Collocation = Collocation()
    objective: Objective
    inputs: dict[str, InputSpec]
    state_bounds: dict[str, tuple[Finite | None, Finite | None]] = Field(default_factory=dict)
    constraints: tuple[Constraint, ...] = ()
    estimator: EstimatorSpec = EstimatorSpec()
    ipopt: dict[str, str | int | float] = Field(default_factory=dict)
    history_limit: Annotated[int, Field(ge=1, le=100_000)] = 200
    solver: SolverSpec = SolverSpec()
    robust: RobustSpec | None = None
    monitoring: MonitoringSpec | None = None


# ---------------------------------------------------------------------- scenario files
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


class Disturbance(Strict):
    """An additive input disturbance acting on the true plant from ``start`` to ``end``."""

    input: str
    start: Annotated[float, Field(ge=0, allow_inf_nan=False)]
    end: Finite = math.inf
    offset: Finite


FaultKind = Literal[
    # sensors (target: a measured output of the model)
    "sensor_bias",  # magnitude: added offset
    "sensor_drift",  # rate: offset growing per time unit from start
    "sensor_noise",  # magnitude: extra Gaussian noise std
    "sensor_stuck",  # the value freezes at its value at start
    "sensor_dropout",  # the value goes bad quality
    # actuators (target: a model input)
    "actuator_stuck",  # the input freezes at its value at start
    "actuator_saturation",  # magnitude: the input cannot exceed this value
    "actuator_lag",  # magnitude: first-order time constant [model time unit]
    # communications (target: a tag name, or "*" for the whole server)
    "comm_latency",  # magnitude: seconds added to every answer
    "comm_drop",  # every client connection is dropped at start
    "comm_restart",  # the servers stop at start and come back after duration
    "comm_bad_status",  # reads of the tag answer Modbus exception 04 / OPC UA Bad
    # equipment degradation (target: a model parameter)
    "parameter_drift",  # rate: relative change per time unit from start (e.g. -0.01 = -1 %/h)
]


class FaultSpec(Strict):
    """One scheduled fault of the HIL simulator (times in the model's time unit)."""

    kind: FaultKind
    target: str
    start: Annotated[float, Field(ge=0, allow_inf_nan=False)]
    duration: PositiveFinite | None = None  # None: until the end of the run
    magnitude: Finite = 0.0
    rate: Finite = 0.0
    description: str = ""

    @model_validator(mode="after")
    def _needs(self) -> FaultSpec:
        needs_magnitude = {
            "sensor_bias",
            "sensor_noise",
            "actuator_saturation",
            "actuator_lag",
            "comm_latency",
        }
        if self.kind in needs_magnitude and self.magnitude == 0.0:
            raise ValueError(f"a {self.kind} fault needs a non-zero 'magnitude'")
        if self.kind in {"sensor_drift", "parameter_drift"} and self.rate == 0.0:
            raise ValueError(f"a {self.kind} fault needs a non-zero 'rate'")
        if self.kind in {"sensor_noise", "actuator_lag", "comm_latency"} and self.magnitude < 0:
            raise ValueError(f"a {self.kind} fault needs a positive 'magnitude'")
        if self.kind == "comm_restart" and self.duration is None:
            raise ValueError(
                "a comm_restart fault needs a 'duration' (the time the servers are down)"
            )
        return self

    def active(self, t: float) -> bool:
        return self.start <= t and (self.duration is None or t < self.start + self.duration)


class TruePlant(Strict):
    parameters: dict[str, Finite] = Field(default_factory=dict)
    initial_state: dict[str, Finite] = Field(default_factory=dict)
    noise_std: dict[str, Annotated[float, Field(ge=0, allow_inf_nan=False)]] = Field(
        default_factory=dict
    )
    disturbances: tuple[Disturbance, ...] = ()
    seed: Annotated[int, Field(ge=0)] = 0


class ScenarioConfig(Strict):
    """A closed-loop (``controller``) or open-loop (``recipe``) run against a true plant."""

    name: str
    description: str = ""
    plant: str
    controller: str | None = None
    recipe: Recipe | None = None
    sample_time: PositiveFinite | None = None
    duration: PositiveFinite
    true_plant: TruePlant = TruePlant()
    cqas: tuple[str, ...] = ()
    checks: tuple[Constraint, ...] = ()
    faults: tuple[FaultSpec, ...] = ()
    stop_when_finished: bool = True

    @model_validator(mode="after")
    def _one_driver(self) -> ScenarioConfig:
        if (self.controller is None) == (self.recipe is None):
            raise ValueError("give exactly one of 'controller' (closed loop) or 'recipe'")
        if self.recipe is not None and self.sample_time is None:
            raise ValueError("an open-loop recipe needs 'sample_time'")
        return self


# ---------------------------------------------------------------------- loading
S = TypeVar("S", bound=BaseModel)


def read_yaml(path: Path) -> dict[str, Any]:
    """Read one YAML mapping; raise ConfigError naming the file (and line) on failure."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError([Problem(str(path), "", f"cannot read file: {exc.strerror}")]) from exc
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        raise ConfigError([Problem(str(path), where, f"invalid YAML: {exc}")]) from exc
    if not isinstance(data, dict):
        raise ConfigError(
            [Problem(str(path), "", "the file must hold a YAML mapping", type(data).__name__)]
        )
    return data


def _problems_from(exc: ValidationError, source: str) -> list[Problem]:
    problems = []
    for err in exc.errors():
        loc = ".".join(str(part) for part in err["loc"])
        msg = err["msg"]
        if err["type"] == "extra_forbidden":
            msg = "unknown key (not allowed here)"
        problems.append(Problem(source, loc, msg, err.get("input")))
    return problems


def parse(schema: type[S], data: Mapping[str, Any], source: str) -> S:
    """Validate ``data`` against ``schema``; every problem goes into one ConfigError."""
    try:
        return schema.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(_problems_from(exc, source)) from exc


def load_parameter_set(path: Path) -> ParameterSet:
    """Load ``configs/plants/<name>.yaml`` and check it against its model's declaration."""
    pf = parse(PlantFile, read_yaml(path), str(path))
    problems: list[Problem] = []
    cls = MODELS.get(pf.model)
    if cls is None:
        raise ConfigError(
            [Problem(str(path), "model", f"unknown model; allowed: {sorted(MODELS)}", pf.model)]
        )
    for name, entry in pf.parameters.items():
        unit = cls.parameter_units.get(name)
        if unit is None:
            problems.append(
                Problem(
                    str(path),
                    f"parameters.{name}",
                    f"unknown parameter; allowed: {sorted(cls.parameter_units)}",
                    name,
                )
            )
        elif entry.unit != unit:
            problems.append(
                Problem(str(path), f"parameters.{name}.unit", f"unit must be {unit!r}", entry.unit)
            )
    for name in sorted(set(cls.parameter_units) - set(pf.parameters)):
        problems.append(Problem(str(path), f"parameters.{name}", "missing parameter", None))
    problems += _check_names(
        path, cls, "initial_state", pf.initial_state, cls.names(Role.STATE), exact=True
    )
    problems += _check_names(
        path, cls, "nominal_inputs", pf.nominal_inputs, cls.names(Role.INPUT), exact=True
    )
    problems += _check_names(
        path, cls, "initial_algebraic", pf.initial_algebraic, cls.names(Role.ALGEBRAIC)
    )
    all_vars = tuple(v.name for v in cls.variables)
    problems += _check_names(path, cls, "bounds", pf.bounds, all_vars)
    for name, (lo, hi) in pf.bounds.items():
        if lo > hi:
            problems.append(
                Problem(str(path), f"bounds.{name}", "lower must not exceed upper", [lo, hi])
            )
    if problems:
        raise ConfigError(problems)
    params = {
        name: Parameter(
            name,
            e.value,
            e.unit,
            e.description,
            e.range[0] if e.range else -math.inf,
            e.range[1] if e.range else math.inf,
        )
        for name, e in pf.parameters.items()
    }
    return ParameterSet(
        pf.model,
        params,
        dict(pf.initial_state),
        dict(pf.nominal_inputs),
        dict(pf.initial_algebraic),
        dict(pf.bounds),
        str(path),
    )


def _check_names(
    path: Path,
    cls: type[PlantModel],
    key: str,
    given: Mapping[str, Any],
    allowed: tuple[str, ...],
    *,
    exact: bool = False,
) -> list[Problem]:
    problems = [
        Problem(str(path), f"{key}.{name}", f"unknown name; allowed: {list(allowed)}", name)
        for name in given
        if name not in allowed
    ]
    if exact:
        problems += [
            Problem(str(path), f"{key}.{name}", f"missing value for {cls.name}", None)
            for name in allowed
            if name not in given
        ]
    return problems


# ---------------------------------------------------------------------- cross-checks
def resolve(base: Path, ref: str) -> Path:
    """A path written in a config file, relative to that file's folder."""
    p = Path(ref)
    return p if p.is_absolute() else (base.parent / p)


def check_controller(cfg: ControllerConfig, model: PlantModel, source: str) -> list[Problem]:
    """Every name in a controller config must exist in its plant model."""
    states, inputs = model.state_names, model.input_names
    named = set(states) | set(inputs) | set(model.algebraic_names) | set(model.expression_names)
    problems: list[Problem] = []

    def need(loc: str, name: str, allowed: set[str] | tuple[str, ...], what: str) -> None:
        if name not in allowed:
            problems.append(
                Problem(source, loc, f"unknown {what}; allowed: {sorted(allowed)}", name)
            )

    for i, e in enumerate(cfg.objective.economic):
        need(f"objective.economic.{i}.expression", e.expression, named, "expression")
    for i, t in enumerate(cfg.objective.tracking):
        need(f"objective.tracking.{i}.variable", t.variable, named, "variable")
    for name, spec in cfg.inputs.items():
        need(f"inputs.{name}", name, inputs, "input")
        if name in inputs:
            v = model.variable(name)
            if spec.lower < v.lower or spec.upper > v.upper:
                problems.append(
                    Problem(
                        source,
                        f"inputs.{name}",
                        f"limits must lie within the model's physical bounds [{v.lower}, {v.upper}]"
                        f" {v.unit}",
                        [spec.lower, spec.upper],
                    )
                )
    for name in inputs:
        if name not in cfg.inputs:
            problems.append(
                Problem(source, f"inputs.{name}", "every model input needs limits", None)
            )
    for name, (lo, hi) in cfg.state_bounds.items():
        need(f"state_bounds.{name}", name, states, "state")
        if lo is not None and hi is not None and lo > hi:
            problems.append(
                Problem(source, f"state_bounds.{name}", "lower must not exceed upper", [lo, hi])
            )
    for i, c in enumerate(cfg.constraints):
        need(f"constraints.{i}.expression", c.expression, named, "expression")
    est = cfg.estimator
    params = model.parameter_names
    for i, pname in enumerate(est.parameters):
        need(f"estimator.parameters.{i}", pname, params, "parameter")
    for key, allowed in (
        ("process_noise_std", (*states, *est.parameters)),
        ("initial_std", (*states, *est.parameters)),
        ("measurement_noise_std", model.names(Role.OUTPUT)),
    ):
        for name in getattr(est, key):
            need(f"estimator.{key}.{name}", name, allowed, "name")
    problems += _check_robust(cfg, model, source)
    return problems


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


def _check_robust(cfg: ControllerConfig, model: PlantModel, source: str) -> list[Problem]:
    if cfg.robust is None:
        return []
    problems: list[Problem] = []
    params = model.parameter_set.parameters
    known = True
    for name, values in cfg.robust.parameters.items():
        loc = f"robust.parameters.{name}"
        par = params.get(name)
        if par is None:
            known = False
            problems.append(
                Problem(
                    source, loc, f"unknown parameter; allowed: {list(model.parameter_names)}", name
                )
            )
            continue
        bounded = math.isfinite(par.lower) and math.isfinite(par.upper)
        if values == "range":
            if not bounded:
                problems.append(
                    Problem(
                        source,
                        loc,
                        "'range' needs a plausible range for this parameter in the plant file "
                        "(parameters.<name>.range); give the values instead",
                        values,
                    )
                )
            continue
        outside = [v for v in values if not par.lower <= v <= par.upper]
        if outside:
            problems.append(
                Problem(
                    source,
                    loc,
                    f"values must lie within the plausible range [{par.lower}, {par.upper}] "
                    f"{par.unit} of the plant file",
                    list(values),
                )
            )
    if known and not problems:
        n_comb = math.prod(len(v) for v in robust_values(cfg, model).values())
        n_scen = n_comb**cfg.robust.n_robust
        if n_scen > MAX_ROBUST_SCENARIOS:
            problems.append(
                Problem(
                    source,
                    "robust.n_robust",
                    f"{n_comb} combinations ** n_robust gives {n_scen} scenarios; at most "
                    f"{MAX_ROBUST_SCENARIOS} are allowed",
                    cfg.robust.n_robust,
                )
            )
    return problems


def check_scenario(sc: ScenarioConfig, model: PlantModel, source: str) -> list[Problem]:
    """Every name in a scenario must exist in its plant model."""
    problems: list[Problem] = []
    tp = sc.true_plant
    named = (
        set(model.state_names)
        | set(model.input_names)
        | set(model.algebraic_names)
        | set(model.expression_names)
    )
    for name in tp.parameters:
        if name not in model.parameter_names:
            problems.append(
                Problem(
                    source,
                    f"true_plant.parameters.{name}",
                    f"unknown parameter; allowed: {list(model.parameter_names)}",
                    name,
                )
            )
    for name in tp.initial_state:
        if name not in model.state_names:
            problems.append(
                Problem(
                    source,
                    f"true_plant.initial_state.{name}",
                    f"unknown state; allowed: {list(model.state_names)}",
                    name,
                )
            )
    for name in tp.noise_std:
        if name not in model.names(Role.OUTPUT):
            problems.append(
                Problem(
                    source,
                    f"true_plant.noise_std.{name}",
                    f"unknown measured output; allowed: {list(model.output_names)}",
                    name,
                )
            )
    for i, d in enumerate(tp.disturbances):
        if d.input not in model.input_names:
            problems.append(
                Problem(
                    source,
                    f"true_plant.disturbances.{i}.input",
                    f"unknown input; allowed: {list(model.input_names)}",
                    d.input,
                )
            )
    for i, c in enumerate(sc.checks):
        if c.expression not in named:
            problems.append(
                Problem(
                    source,
                    f"checks.{i}.expression",
                    f"unknown expression; allowed: {sorted(named)}",
                    c.expression,
                )
            )
    problems += check_faults(sc.faults, model, source)
    for i, name in enumerate(sc.cqas):
        if name not in named:
            problems.append(
                Problem(source, f"cqas.{i}", f"unknown name; allowed: {sorted(named)}", name)
            )
    if sc.recipe is not None:
        problems += recipe_input_problems(sc.recipe, model, source, "recipe.")
    return problems


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


def check_faults(faults: tuple[FaultSpec, ...], model: PlantModel, source: str) -> list[Problem]:
    """Fault targets must name a model output, input or parameter (comm faults: any tag)."""
    problems = []
    allowed_by_prefix = {
        "sensor": model.output_names,
        "actuator": model.input_names,
        "parameter": model.parameter_names,
    }
    for i, f in enumerate(faults):
        allowed = allowed_by_prefix.get(f.kind.split("_")[0])
        if allowed is not None and f.target not in allowed:
            problems.append(
                Problem(
                    source,
                    f"faults.{i}.target",
                    f"a {f.kind} fault targets one of {list(allowed)}",
                    f.target,
                )
            )
    return problems


def build_model(path: Path, *, smooth: bool = False) -> PlantModel:
    """Load a plant YAML file and bind it to its model class."""
    ps = load_parameter_set(path)
    return MODELS[ps.model](ps, smooth=smooth)


def _raw_name_problems(data: Mapping[str, Any], model: PlantModel, source: str) -> list[Problem]:
    """Name checks on a file that failed its schema, so that one error lists everything."""
    problems: list[Problem] = []
    sections = (
        ("inputs", model.input_names, "input"),
        ("state_bounds", model.state_names, "state"),
    )
    for key, allowed, what in sections:
        section = data.get(key)
        if isinstance(section, Mapping):
            for name in section:
                if name not in allowed:
                    problems.append(
                        Problem(
                            source,
                            f"{key}.{name}",
                            f"unknown {what}; allowed: {list(allowed)}",
                            name,
                        )
                    )
    return problems


def load_controller(path: Path) -> tuple[ControllerConfig, PlantModel]:
    """Load a controller config and its plant model (the optimizer's smooth copy).

    Schema problems and problems against the plant model are reported in one ConfigError.
    """
    data = read_yaml(path)
    try:
        cfg = parse(ControllerConfig, data, str(path))
    except ConfigError as exc:
        extra: list[Problem] = []
        plant_ref = data.get("plant")
        if isinstance(plant_ref, str):
            try:
                extra = _raw_name_problems(data, build_model(resolve(path, plant_ref)), str(path))
            except ConfigError as inner:
                extra = list(inner.problems)
        raise ConfigError([*exc.problems, *extra]) from exc
    model = build_model(resolve(path, cfg.plant), smooth=True)
    problems = check_controller(cfg, model, str(path))
    if problems:
        raise ConfigError(problems)
    return cfg, model


def load_scenario(path: Path) -> ScenarioConfig:
    """Load a scenario and check every name it uses against its plant model."""
    sc = parse(ScenarioConfig, read_yaml(path), str(path))
    model = build_model(resolve(path, sc.plant))
    problems = check_scenario(sc, model, str(path))
    if sc.controller is not None:
        ctrl_path = resolve(path, sc.controller)
        try:
            _, cmodel = load_controller(ctrl_path)
        except ConfigError as exc:
            problems += list(exc.problems)
        else:
            if cmodel.name != model.name:
                problems.append(
                    Problem(
                        str(path),
                        "controller",
                        f"controller is for model {cmodel.name!r}, scenario plant is "
                        f"{model.name!r}",
                        sc.controller,
                    )
                )
    if problems:
        raise ConfigError(problems)
    return sc
