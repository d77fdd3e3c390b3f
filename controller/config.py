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

import codecs
import itertools
import math
import re
import types
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, Literal, TypeVar, Union, get_args, get_origin

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from controller import filekinds, yamlmarks
from controller.errors import ConfigError, Problem, suggest, unknown_name
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
    """One drift chart (see :mod:`controller.twin.monitoring` for the statistics and defaults).

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
    """Drift charts and maintenance forecasts run on every estimate (controller.twin.monitoring).

    An active alarm clears when its statistic falls below ``clear_fraction`` times its limit.
    ``alarm_tag`` names the tag that carries the alarm state to the PLC/SCADA.
    """

    charts: tuple[ChartSpec, ...] = ()
    maintenance: tuple[MaintenanceSpec, ...] = ()
    alarm_tag: Annotated[str, Field(min_length=1)] | None = None
    clear_fraction: Annotated[float, Field(gt=0, lt=1, allow_inf_nan=False)] = 0.5


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
    # communications: server-wide kinds target "*" (the whole server); comm_bad_status a
    # tag name or a wildcard pattern ("*" every tag, "product_temp_*", ...)
    "comm_latency",  # magnitude: seconds added to every answer
    "comm_drop",  # every client connection is dropped at start
    "comm_restart",  # the servers stop at start and come back after duration
    "comm_bad_status",  # reads of the tag answer Modbus exception 04 / OPC UA Bad
    # equipment degradation (target: a model parameter)
    "parameter_drift",  # rate: relative change per time unit from start (e.g. -0.01 = -1 %/h)
]

#: the kinds whose ``magnitude`` means something (every other kind refuses one)
FAULT_MAGNITUDE_KINDS = frozenset(
    {"sensor_bias", "sensor_noise", "actuator_saturation", "actuator_lag", "comm_latency"}
)
#: the kinds whose ``rate`` means something (every other kind refuses one)
FAULT_RATE_KINDS = frozenset({"sensor_drift", "parameter_drift"})
#: the kinds that act on a whole server at once: their target is "*"
FAULT_SERVER_WIDE_KINDS = frozenset({"comm_latency", "comm_drop", "comm_restart"})


class FaultSpec(Strict):
    """One scheduled fault of the HIL simulator (times in the model's time unit).

    ``unit`` (optional) states the unit ``magnitude`` or ``rate`` is written in; the HIL rig
    refuses the fault when it is not the unit the kind uses on its target (see
    :func:`hil.faults.magnitude_unit`). A magnitude, rate or unit on a kind that does not use
    it, and a duration on ``comm_drop`` (it happens once, at its start), are refused: they
    would silently do nothing.
    """

    kind: FaultKind
    target: str
    start: Annotated[float, Field(ge=0, allow_inf_nan=False)]
    duration: PositiveFinite | None = None  # None: until the end of the run
    magnitude: Finite = 0.0
    rate: Finite = 0.0
    unit: str = ""
    description: str = ""

    @model_validator(mode="after")
    def _needs(self) -> FaultSpec:
        kind = self.kind
        if kind in FAULT_MAGNITUDE_KINDS and self.magnitude == 0.0:
            raise ValueError(f"a {kind} fault needs a non-zero 'magnitude'")
        if kind not in FAULT_MAGNITUDE_KINDS and self.magnitude != 0.0:
            raise ValueError(f"a {kind} fault takes no 'magnitude' (got {self.magnitude:g})")
        if kind in FAULT_RATE_KINDS and self.rate == 0.0:
            raise ValueError(f"a {kind} fault needs a non-zero 'rate'")
        if kind not in FAULT_RATE_KINDS and self.rate != 0.0:
            raise ValueError(f"a {kind} fault takes no 'rate' (got {self.rate:g})")
        if self.unit and kind not in FAULT_MAGNITUDE_KINDS | FAULT_RATE_KINDS:
            raise ValueError(f"a {kind} fault has no magnitude or rate to give a 'unit' to")
        if kind in {"sensor_noise", "actuator_lag", "comm_latency"} and self.magnitude < 0:
            raise ValueError(f"a {kind} fault needs a positive 'magnitude'")
        if kind == "comm_restart" and self.duration is None:
            raise ValueError(
                "a comm_restart fault needs a 'duration' (the time the servers are down)"
            )
        if kind == "comm_drop" and self.duration is not None:
            raise ValueError("a comm_drop fault happens once, at its start: it takes no 'duration'")
        if kind in FAULT_SERVER_WIDE_KINDS and self.target != "*":
            raise ValueError(
                f"a {kind} fault acts on the whole server: its target must be '*' "
                f"(got {self.target!r})"
            )
        if not self.target:
            raise ValueError("a fault needs a 'target'")
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
    """A closed-loop (``controller``) or open-loop (``recipe``) run against a true plant.

    ``initial_inputs``: the setpoints the plant works with at the start (the PLC's working
    setpoints before the controller's first write), by input name; inputs not given start at
    the plant file's ``nominal_inputs``. They must lie within the controller's input limits
    (the model's physical bounds for an open-loop run): they are never clamped.
    """

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
    initial_inputs: dict[str, Finite] = Field(default_factory=dict)

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
    """Read one YAML mapping; raise ConfigError naming the file, line and column on failure.

    The file must be UTF-8 text: a binary file, or text in another encoding, is named with
    the byte offset of the first byte that is not. A key given twice in one mapping is
    refused (YAML would silently keep the last). The marks of the file's keys are kept
    (:mod:`controller.yamlmarks`) so that later problems point at their line.
    """
    source = str(path)
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise ConfigError([Problem(source, "", f"cannot read file: {exc.strerror}")]) from exc
    text = _decode(raw, source)
    try:
        loaded = yamlmarks.load(text)
    except yaml.YAMLError as exc:
        raise ConfigError([_yaml_problem(exc, source, raw)]) from exc
    key = yamlmarks.cache_key(path)
    if key is not None:
        yamlmarks.remember(key, loaded.marks)
    if loaded.duplicates:
        raise ConfigError(
            Problem(
                source,
                ".".join(d.path),
                f"duplicate key {d.path[-1]!r} (first given at line {d.first_line}); "
                "YAML would silently keep only the last",
                None,
                d.line,
                d.column,
            )
            for d in loaded.duplicates
        )
    data = loaded.data
    if not isinstance(data, dict):
        raise ConfigError(
            [Problem(source, "", "the file must hold a YAML mapping", type(data).__name__, 1, 1)]
        )
    return data


def _line_column(raw: bytes, offset: int) -> tuple[int, int]:
    """1-based line and column (in bytes) of a byte offset."""
    return raw.count(b"\n", 0, offset) + 1, offset - (raw.rfind(b"\n", 0, offset) + 1) + 1


def _decode(raw: bytes, source: str) -> str:
    """The UTF-8 text of a config file (a BOM is dropped); one clear problem otherwise."""
    if raw.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)):
        message = "this is UTF-16 text; save the file as UTF-8"
        raise ConfigError([Problem(source, "", message, None, 1, 1)])
    nul = raw.find(b"\x00")
    if nul >= 0:
        message = (
            f"this is a binary file, not YAML text (a NUL byte at byte offset {nul}); "
            "give a UTF-8 YAML config file"
        )
        raise ConfigError([Problem(source, "", message, None, *_line_column(raw, nul))])
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        message = (
            f"not UTF-8 text: byte 0x{raw[exc.start]:02x} at byte offset {exc.start} is not "
            "valid UTF-8; save the file as UTF-8"
        )
        where = _line_column(raw, exc.start)
        raise ConfigError([Problem(source, "", message, None, *where)]) from exc


def _yaml_problem(exc: yaml.YAMLError, source: str, raw: bytes) -> Problem:
    """A YAML syntax error as one sentence at its line and column."""
    if isinstance(exc, yaml.reader.ReaderError):
        text = raw.decode("utf-8-sig")
        offset = len(text[: exc.position].encode("utf-8"))
        message = f"invalid YAML: the character {chr(exc.character)!r} is not allowed in YAML"
        return Problem(source, "", message, None, *_line_column(raw, offset))
    parts = [getattr(exc, "context", None), getattr(exc, "problem", None)]
    what = ", ".join(str(p) for p in parts if p) or str(exc).splitlines()[0]
    mark = getattr(exc, "problem_mark", None)
    if mark is None:
        return Problem(source, "", f"invalid YAML: {what}")
    return Problem(source, "", f"invalid YAML: {what}", None, mark.line + 1, mark.column + 1)


def _problems_from(exc: ValidationError, source: str, schema: type[BaseModel]) -> list[Problem]:
    """pydantic's errors as plain sentences, one per problem (the value quoted briefly).

    A misspelt key whose suggestion is a required key missing beside it is one problem (the
    misspelling), not two.
    """
    errors = exc.errors()
    missing = {tuple(e["loc"]) for e in errors if e["type"] == "missing"}
    misspelt = set()
    for e in errors:
        loc = tuple(e["loc"])
        if e["type"] == "extra_forbidden" and loc:
            best = suggest(str(loc[-1]), _keys_at(schema, loc[:-1]))
            if best is not None and (*loc[:-1], best) in missing:
                misspelt.add((*loc[:-1], best))
    return [
        _problem_from(err, source, schema) for err in errors if tuple(err["loc"]) not in misspelt
    ]


def _problem_from(err: Any, source: str, schema: type[BaseModel]) -> Problem:
    loc = tuple(err["loc"])
    where = ".".join(str(part) for part in loc)
    key = str(loc[-1]) if loc else ""
    value = err.get("input")
    kind = err["type"]
    if kind == "extra_forbidden":
        return Problem(source, where, unknown_name("key", key, _keys_at(schema, loc[:-1])), value)
    if kind == "missing":
        return Problem(source, where, f"missing required key {key!r}")
    if kind in ("literal_error", "enum"):
        expected = str(err.get("ctx", {}).get("expected", ""))
        options = re.findall(r"'([^']*)'", expected)
        best = suggest(value, options) if isinstance(value, str) else None
        hint = f"; did you mean {best!r}?" if best is not None else ""
        return Problem(source, where, f"should be {expected}{hint}", value)
    msg = str(err["msg"]).removeprefix("Value error, ")
    msg = re.sub(r"a valid dictionary( or instance of \w+)?", "a mapping (key: value)", msg)
    msg = re.sub(r"^Input should be", "should be", msg)
    if value is None and kind != "value_error":
        msg += " (got null)"
    return Problem(source, where, msg, value)


def _keys_at(schema: type[BaseModel], path: tuple[Any, ...]) -> list[str]:
    """The keys a mapping at ``path`` (a pydantic ``loc``) of ``schema`` allows."""
    types: list[Any] = [schema]
    for part in path:
        after = [t for each in types for t in _step(each, part)]
        types = after or types  # a union member's tag in the loc: the same mapping
    return [
        field.alias or name
        for t in types
        for m in _members(t)
        if isinstance(m, type) and issubclass(m, BaseModel)
        for name, field in m.model_fields.items()
    ]


def _members(t: Any) -> list[Any]:
    """The types a (possibly Annotated, optional or union) annotation stands for."""
    origin = get_origin(t)
    if origin is Annotated:
        return _members(get_args(t)[0])
    if origin is Union or origin is types.UnionType:
        return [m for a in get_args(t) for m in _members(a)]
    return [t]


def _step(t: Any, part: Any) -> list[Any]:
    """The annotation one ``loc`` part below ``t`` (a field, a dict value, a list item)."""
    out: list[Any] = []
    for m in _members(t):
        origin, args = get_origin(m), get_args(m)
        if isinstance(m, type) and issubclass(m, BaseModel):
            out += [f.annotation for n, f in m.model_fields.items() if part in (n, f.alias)]
        elif origin is dict and isinstance(part, str) and len(args) == 2:
            out.append(args[1])
        elif origin in (tuple, list) and isinstance(part, int) and args:
            fixed = origin is tuple and not (len(args) == 2 and args[1] is Ellipsis)
            out.append(args[part] if fixed and part < len(args) else args[0])
    return out


def parse(schema: type[S], data: Mapping[str, Any], source: str) -> S:
    """Validate ``data`` against ``schema``; every problem goes into one ConfigError.

    A file of another kind (a site file where a scenario is expected) is one problem that
    names its kind and the commands that take it, not a list of missing keys.
    """
    try:
        return schema.model_validate(data)
    except ValidationError as exc:
        wrong = _wrong_kind(schema, data, source)
        raise ConfigError(wrong or _problems_from(exc, source, schema)) from exc


def _wrong_kind(schema: type[BaseModel], data: Any, source: str) -> list[Problem]:
    expected = filekinds.kind_of_schema(schema.__name__)
    found = filekinds.detect(data) if isinstance(data, Mapping) else None
    if expected is None or found is None or found is expected:
        return []
    marks = yamlmarks.marks_for(source)
    mark = marks.find(filekinds.signature_key(data, found)) if marks is not None else None
    message = filekinds.wrong_kind(found, expected)
    return [Problem(source, "", message, None, *(mark or (None, None)))]


def load_parameter_set(path: Path) -> ParameterSet:
    """Load ``configs/plants/<name>.yaml`` and check it against its model's declaration."""
    pf = parse(PlantFile, read_yaml(path), str(path))
    problems: list[Problem] = []
    cls = MODELS.get(pf.model)
    if cls is None:
        raise ConfigError(
            [Problem(str(path), "model", unknown_name("model", pf.model, sorted(MODELS)), pf.model)]
        )
    for name, entry in pf.parameters.items():
        unit = cls.parameter_units.get(name)
        if unit is None:
            problems.append(
                Problem(
                    str(path),
                    f"parameters.{name}",
                    unknown_name("parameter", name, sorted(cls.parameter_units)),
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
        Problem(str(path), f"{key}.{name}", unknown_name("name", name, allowed), name)
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
            problems.append(Problem(source, loc, unknown_name(what, name, sorted(allowed)), name))

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
    problems += _check_min_time(cfg, model, source)
    return problems


def _check_min_time(cfg: ControllerConfig, model: PlantModel, source: str) -> list[Problem]:
    """The names of ``objective.min_time`` and what it can be combined with."""
    mt = cfg.objective.min_time
    if mt is None:
        return []
    named = set(model.state_names) | set(model.expression_names)
    loc = "objective.min_time"
    problems: list[Problem] = []
    if mt.expression not in named:
        what = unknown_name("state or expression", mt.expression, sorted(named))
        problems.append(Problem(source, f"{loc}.expression", what, mt.expression))
    if isinstance(mt.target, str) and mt.target not in named:
        what = unknown_name("state or expression", mt.target, sorted(named))
        problems.append(Problem(source, f"{loc}.target", what, mt.target))
    if cfg.solver.backend != "fast":
        problems.append(
            Problem(source, loc, "minimum time needs solver.backend: fast", cfg.solver.backend)
        )
    if cfg.robust is not None:
        problems.append(Problem(source, loc, "minimum time cannot be combined with 'robust'"))
    if mt.mode == "free_end" and cfg.horizon < 2:
        problems.append(
            Problem(source, "horizon", "a free end time needs a horizon of 2 or more", cfg.horizon)
        )
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
                Problem(source, loc, unknown_name("parameter", name, model.parameter_names), name)
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
                    unknown_name("parameter", name, model.parameter_names),
                    name,
                )
            )
    for name in tp.initial_state:
        if name not in model.state_names:
            problems.append(
                Problem(
                    source,
                    f"true_plant.initial_state.{name}",
                    unknown_name("state", name, model.state_names),
                    name,
                )
            )
    for name in tp.noise_std:
        if name not in model.names(Role.OUTPUT):
            problems.append(
                Problem(
                    source,
                    f"true_plant.noise_std.{name}",
                    unknown_name("measured output", name, model.output_names),
                    name,
                )
            )
    for i, d in enumerate(tp.disturbances):
        if d.input not in model.input_names:
            problems.append(
                Problem(
                    source,
                    f"true_plant.disturbances.{i}.input",
                    unknown_name("input", d.input, model.input_names),
                    d.input,
                )
            )
    for i, c in enumerate(sc.checks):
        if c.expression not in named:
            problems.append(
                Problem(
                    source,
                    f"checks.{i}.expression",
                    unknown_name("expression", c.expression, sorted(named)),
                    c.expression,
                )
            )
    problems += check_faults(sc.faults, model, source)
    for i, name in enumerate(sc.cqas):
        if name not in named:
            problems.append(
                Problem(source, f"cqas.{i}", unknown_name("name", name, sorted(named)), name)
            )
    if sc.recipe is not None:
        problems += recipe_input_problems(sc.recipe, model, source, "recipe.")
    # closed loop: load_scenario checks them against the controller's input limits
    bounds = {n: (model.variable(n).lower, model.variable(n).upper) for n in model.input_names}
    if sc.controller is not None:
        bounds = {n: (-math.inf, math.inf) for n in bounds}
    problems += initial_input_problems(sc.initial_inputs, bounds, source, "physical bounds")
    return problems


def initial_input_problems(
    values: Mapping[str, float],
    limits: Mapping[str, tuple[float, float]],
    source: str,
    what: str,
) -> list[Problem]:
    """``initial_inputs`` that name no input, or lie outside ``limits`` (``what`` they are)."""
    problems: list[Problem] = []
    for name, value in values.items():
        loc = f"initial_inputs.{name}"
        if name not in limits:
            problems.append(Problem(source, loc, unknown_name("input", name, list(limits)), name))
        elif not limits[name][0] <= value <= limits[name][1]:
            lo, hi = limits[name]
            problems.append(Problem(source, loc, f"outside the {what} [{lo:g}, {hi:g}]", value))
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
        "sensor": ("measured output", model.output_names),
        "actuator": ("input", model.input_names),
        "parameter": ("parameter", model.parameter_names),
    }
    for i, f in enumerate(faults):
        what, allowed = allowed_by_prefix.get(f.kind.split("_")[0], ("", ()))
        if what and f.target not in allowed:
            message = unknown_name(what, f.target, allowed, context=f" for a {f.kind} fault")
            problems.append(Problem(source, f"faults.{i}.target", message, f.target))
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
                            unknown_name(what, name, allowed),
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
            cfg, cmodel = load_controller(ctrl_path)
        except ConfigError as exc:
            problems += list(exc.problems)
        else:
            limits = {n: (s.lower, s.upper) for n, s in cfg.inputs.items()}
            known = {n: v for n, v in sc.initial_inputs.items() if n in limits}
            problems += initial_input_problems(
                known, limits, str(path), "controller's input limits"
            )
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
