"""The design-space file: its schema, and its grid of points as valid scenarios.

A design-space file (``configs/design-space/<name>.yaml``, see :mod:`hil.design_space`) names
an open-loop recipe scenario, two factors with their grids, the CQAs and their limits.
:func:`load_design_space` checks it against the scenario and its plant model and builds every
grid point's scenario as plain data, each validated as a :class:`~hil.scenario.ScenarioConfig`
(and :func:`~hil.scenario.check_scenario`): every problem, the file's and its points', in one
ConfigError.
"""

from __future__ import annotations

import copy
import itertools
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import Field, field_validator, model_validator

from controller.configfile import Finite, PositiveFinite, Strict, parse, read_yaml, resolve
from controller.errors import ConfigError, Problem, unknown_name
from controller.plantfile import build_model
from hil.scenario import ScenarioConfig, check_scenario
from plant_models import PlantModel


class Factor(Strict):
    """One recipe knob swept over a grid."""

    name: Annotated[str, Field(min_length=1, pattern=r"^[A-Za-z_][A-Za-z0-9_]*$")]
    input: str
    set: Literal["constant", "hold"] = "constant"
    ramp_rate: PositiveFinite | None = None  # hold only: input unit per model time unit
    label: str = ""
    values: Annotated[tuple[Finite, ...], Field(min_length=2)]

    @field_validator("values")
    @classmethod
    def _increasing(cls, values: tuple[float, ...]) -> tuple[float, ...]:
        if any(b <= a for a, b in itertools.pairwise(values)):
            raise ValueError(f"values must increase strictly, got {list(values)}")
        return values

    @model_validator(mode="after")
    def _check(self) -> Factor:
        if self.ramp_rate is not None and self.set != "hold":
            raise ValueError("'ramp_rate' applies to 'set: hold' only")
        return self


class CqaSpec(Strict):
    temperature: str = "Tbot"  # its maximum over the run: max_<temperature>
    progress: str = "percent_dried"  # drying_time and final_<progress>
    complete_at: Finite = 100.0


class Limit(Strict):
    lower: Finite | str | None = None  # a number or a plant parameter's name
    upper: Finite | str | None = None

    @model_validator(mode="after")
    def _some_bound(self) -> Limit:
        if self.lower is None and self.upper is None:
            raise ValueError("give 'lower', 'upper' or both")
        return self


class Uncertainty(Strict):
    """What ``--monte-carlo N`` draws at every grid point (see :mod:`hil.design_space_mc`).

    ``parameters``: true-plant parameters drawn over their plausible ranges in the plant file
    (None: every parameter with a range, and a ``--monte-carlo`` run refuses a plant file with
    none; ``[]``: none, the zero-uncertainty limit). Checked when the file is loaded.
    ``distribution``: ``uniform`` (Latin hypercube over the ranges) or ``triangular`` (mode at
    the plant file's value).
    """

    parameters: tuple[str, ...] | None = None
    distribution: Literal["uniform", "triangular"] = "uniform"
    seed: Annotated[int, Field(ge=0, strict=True)] = 0  # not ``true`` read as 1

    @field_validator("parameters")
    @classmethod
    def _once_each(cls, names: tuple[str, ...] | None) -> tuple[str, ...] | None:
        twice = sorted({n for n in names or () if names and names.count(n) > 1})
        if twice:
            raise ValueError(f"each parameter once; named more than once: {', '.join(twice)}")
        return names


class DesignSpaceFile(Strict):
    name: str | None = None  # default: the file's stem
    description: str = ""
    scenario: str
    duration: PositiveFinite | None = None
    noise: bool = False  # keep the base scenario's measurement noise
    factors: tuple[Factor, Factor]
    cqas: CqaSpec = CqaSpec()
    limits: dict[str, Limit]
    uncertainty: Uncertainty = Uncertainty()

    @field_validator("limits")
    @classmethod
    def _some_limit(cls, limits: dict[str, Limit]) -> dict[str, Limit]:
        if not limits:  # nothing to judge: every point would be "acceptable"
            raise ValueError(
                "no limit: give at least one CQA limit to judge the points by, e.g. "
                "max_Tbot: {upper: T_crit}"
            )
        return limits

    @model_validator(mode="after")
    def _distinct(self) -> DesignSpaceFile:
        a, b = self.factors
        if a.name == b.name:
            raise ValueError(f"the two factors need different names, both are {a.name!r}")
        if a.input == b.input:
            raise ValueError(f"the two factors set the same input {a.input!r}")
        return self


@dataclass(frozen=True)
class Point:
    id: str
    i: int  # index into factors[0].values
    j: int  # index into factors[1].values
    values: dict[str, float]
    scenario: dict[str, Any]  # a valid ScenarioConfig as plain data (plant path absolute)


@dataclass(frozen=True)
class DesignSpace:
    path: Path
    name: str
    spec: DesignSpaceFile
    scenario_path: Path
    points: tuple[Point, ...]
    limits: dict[str, tuple[float | None, float | None]]

    def limits_for(self, drawn: dict[str, float]) -> dict[str, tuple[float | None, float | None]]:
        """The limits with the bounds given as a parameter's name taken from ``drawn`` (one
        Monte Carlo draw's true-plant parameters) where it holds that parameter: a draw's
        product collapses at its own ``T_crit``, not at the plant file's."""
        out = dict(self.limits)
        for key, lim in self.spec.limits.items():
            lo, hi = out[key]
            if isinstance(lim.lower, str) and lim.lower in drawn:
                lo = float(drawn[lim.lower])
            if isinstance(lim.upper, str) and lim.upper in drawn:
                hi = float(drawn[lim.upper])
            out[key] = (lo, hi)
        return out

    @property
    def temperature_cqa(self) -> str:
        return f"max_{self.spec.cqas.temperature}"

    @property
    def progress_cqa(self) -> str:
        return f"final_{self.spec.cqas.progress}"

    @property
    def cqa_names(self) -> tuple[str, str, str]:
        return (self.temperature_cqa, "drying_time", self.progress_cqa)


def _named(model: PlantModel) -> set[str]:
    return (
        set(model.state_names)
        | set(model.input_names)
        | set(model.algebraic_names)
        | set(model.expression_names)
    )


def _bound(
    value: float | str | None, where: str, params: dict[str, float], source: str
) -> tuple[float | None, list[Problem]]:
    if value is None or isinstance(value, float | int):
        return value, []
    if value in params:
        return params[value], []
    what = unknown_name(
        "parameter", value, sorted(params), context=" (give a number or a parameter)"
    )
    return None, [Problem(source, where, what, value)]


def _apply(
    table: list[dict[str, Any]], factor: Factor, value: float, where: str, source: str
) -> list[Problem]:
    """Set ``factor`` to ``value`` in the recipe ``table`` (rows as dicts), in place."""
    if factor.set == "constant":
        for row in table:
            row["inputs"][factor.input] = value
        return []
    if len(table) < 2:
        return [
            Problem(source, where, "a 'hold' factor needs a recipe of at least two rows", value)
        ]
    for row in table[1:]:
        row["inputs"][factor.input] = value
    if factor.ramp_rate is not None:
        start = float(table[0]["inputs"].get(factor.input, value))
        t1 = float(table[0]["t"]) + max(abs(value - start) / factor.ramp_rate, 1e-6)
        if len(table) > 2 and t1 >= float(table[2]["t"]):
            return [
                Problem(
                    source,
                    where,
                    f"the ramp at {factor.ramp_rate:g}/time unit to this value ends at "
                    f"t = {t1:.4g}, after the recipe's next row (t = {table[2]['t']})",
                    value,
                )
            ]
        table[1]["t"] = t1
    return []


def load_design_space(path: Path) -> DesignSpace:
    """Load a design-space file; every problem (its own and its points') in one ConfigError."""
    source = str(path)
    spec = parse(DesignSpaceFile, read_yaml(path), source)
    sc_path = resolve(path, spec.scenario)
    base_raw = read_yaml(sc_path)
    base = parse(ScenarioConfig, base_raw, str(sc_path))
    if base.recipe is None:
        why = (
            "must be an open-loop recipe scenario (with 'recipe' and 'sample_time'), "
            "not a closed loop"
        )
        raise ConfigError([Problem(source, "scenario", why, spec.scenario)])
    plant_path = resolve(sc_path, base.plant).resolve()
    model = build_model(plant_path)
    problems = check_scenario(base, model, str(sc_path))
    if problems:
        raise ConfigError(problems)
    problems = _factor_problems(spec, model, source) + _cqa_problems(spec, model, source)
    problems += uncertainty_problems(spec.uncertainty, model, source)
    params = model.parameter_set.with_values(base.true_plant.parameters).values()
    limits, limit_problems = _limits(spec, params, source)
    if problems or limit_problems:
        raise ConfigError(problems + limit_problems)
    name = spec.name or path.stem
    base_raw = base_raw | {"plant": str(plant_path)}
    points, problems = _points(spec, name, base_raw, model, source)
    if problems:
        raise ConfigError(_unique(problems))
    return DesignSpace(path, name, spec, sc_path, tuple(points), limits)


def _factor_problems(spec: DesignSpaceFile, model: PlantModel, source: str) -> list[Problem]:
    """Each factor sets an input of the model, to values within the input's bounds."""
    problems: list[Problem] = []
    for i, f in enumerate(spec.factors):
        if f.input not in model.input_names:
            what = unknown_name("input", f.input, model.input_names)
            problems.append(Problem(source, f"factors.{i}.input", what, f.input))
            continue
        var = model.variable(f.input)
        for k, v in enumerate(f.values):
            if not var.lower <= v <= var.upper:
                bounds = f"[{var.lower:g}, {var.upper:g}]"
                why = f"outside the bounds of input {f.input}; allowed: {bounds}"
                problems.append(Problem(source, f"factors.{i}.values.{k}", why, v))
    return problems


def uncertainty_problems(
    spec: Uncertainty, model: PlantModel, source: str, *, drawing: bool = False
) -> list[Problem]:
    """The ``uncertainty`` section's parameters are the model's, each with a plausible range
    in the plant file. ``drawing`` (a ``--monte-carlo`` run): with no ``parameters`` given,
    some parameter must have a range, or there is nothing to draw (``parameters: []`` asks for
    the zero-uncertainty limit on purpose)."""
    params = model.parameter_set.parameters
    ranged = ranged_parameters(model)
    problems: list[Problem] = []
    if spec.parameters is None:
        if drawing and not ranged:
            why = (
                "no parameter of the plant file has a plausible range, so there is nothing to "
                "draw: give some a 'range: [low, high]' there, name them here, or write "
                "'parameters: []' for the zero-uncertainty limit (the deterministic design space)"
            )
            problems.append(Problem(source, "uncertainty.parameters", why, None))
        return problems
    for i, name in enumerate(spec.parameters):
        key = f"uncertainty.parameters.{i}"
        if name not in params:  # the names it can be: those with a range (drawn over it)
            what = unknown_name("parameter with a plausible range", name, ranged)
            problems.append(Problem(source, key, what, name))
        elif name not in ranged:
            why = "has no plausible range in the plant file (give it 'range: [low, high]' there)"
            problems.append(Problem(source, key, why, name))
    return problems


def ranged_parameters(model: PlantModel) -> list[str]:
    """The plant parameters with a finite plausible range, in the plant file's order."""
    return [
        n
        for n, p in model.parameter_set.parameters.items()
        if math.isfinite(p.lower) and math.isfinite(p.upper)
    ]


def _cqa_problems(spec: DesignSpaceFile, model: PlantModel, source: str) -> list[Problem]:
    """The CQAs' temperature and progress are names of the model."""
    named = _named(model)
    problems: list[Problem] = []
    for key in ("temperature", "progress"):
        name = getattr(spec.cqas, key)
        if name not in named:
            what = unknown_name("name", name, sorted(named))
            problems.append(Problem(source, f"cqas.{key}", what, name))
    return problems


def _limits(
    spec: DesignSpaceFile, params: dict[str, float], source: str
) -> tuple[dict[str, tuple[float | None, float | None]], list[Problem]]:
    """Each limit's bounds as numbers (parameter names resolved), and the problems."""
    cqa_names = (f"max_{spec.cqas.temperature}", "drying_time", f"final_{spec.cqas.progress}")
    limits: dict[str, tuple[float | None, float | None]] = {}
    problems: list[Problem] = []
    for key, lim in spec.limits.items():
        if key not in cqa_names:
            problems.append(
                Problem(source, f"limits.{key}", unknown_name("CQA", key, cqa_names), key)
            )
            continue
        lo, p1 = _bound(lim.lower, f"limits.{key}.lower", params, source)
        hi, p2 = _bound(lim.upper, f"limits.{key}.upper", params, source)
        problems += p1 + p2
        if lo is not None and hi is not None and lo > hi:
            why = f"lower {lo:g} is above upper {hi:g}"
            problems.append(Problem(source, f"limits.{key}", why, [lo, hi]))
        limits[key] = (lo, hi)
    return limits, problems


def _points(
    spec: DesignSpaceFile, name: str, base_raw: dict[str, Any], model: PlantModel, source: str
) -> tuple[list[Point], list[Problem]]:
    """Every grid point's scenario (plain data, the plant path absolute), each validated."""
    fx, fy = spec.factors
    points: list[Point] = []
    problems: list[Problem] = []
    for (i, vx), (j, vy) in itertools.product(enumerate(fx.values), enumerate(fy.values)):
        pid = f"p{i:02d}-{j:02d}"
        data = _point_scenario(spec, name, base_raw, pid, (vx, vy))
        table = data["recipe"]["table"]
        problems += _apply(table, fx, vx, f"factors.0.values.{i}", source)
        problems += _apply(table, fy, vy, f"factors.1.values.{j}", source)
        where = f"{source} (point {pid}: {fx.name}={vx:g}, {fy.name}={vy:g})"
        try:
            sc = parse(ScenarioConfig, data, where)
        except ConfigError as exc:
            problems += list(exc.problems)
            continue
        problems += check_scenario(sc, model, where)
        points.append(Point(pid, i, j, {fx.name: vx, fy.name: vy}, data))
    return points, problems


def _point_scenario(
    spec: DesignSpaceFile, name: str, base_raw: dict[str, Any], pid: str, at: tuple[float, float]
) -> dict[str, Any]:
    """A deep copy of the base scenario named for one point (the recipe not yet changed)."""
    fx, fy = spec.factors
    data = copy.deepcopy(base_raw)
    data["name"] = f"{name}-{pid}"
    data["description"] = f"design space {name}: {fx.name} = {at[0]:g}, {fy.name} = {at[1]:g}"
    if spec.duration is not None:
        data["duration"] = spec.duration
    if not spec.noise:
        data.setdefault("true_plant", {})
        data["true_plant"] = dict(data["true_plant"] or {}) | {"noise_std": {}}
    return data


def _unique(problems: list[Problem]) -> list[Problem]:
    seen: list[Problem] = []
    for p in problems:
        if p not in seen:
            seen.append(p)
    return seen
