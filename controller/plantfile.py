"""Plant files (``configs/plants/<name>.yaml``): one plant model's parameters and start.

A plant file gives the model's parameter values (with their units and plausible ranges), its
nominal initial state and inputs, and bound overrides. :func:`load_parameter_set` checks it
against the model's declaration (every parameter with its declared unit, every state and
input named, the initial state and nominal inputs inside the model's validity domain:
:func:`start_problems`) into a :class:`plant_models.ParameterSet`; :func:`build_model` binds
that to its model class.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from pydantic import Field, model_validator

from controller.configfile import Finite, Strict, parse, read_yaml
from controller.errors import ConfigError, Problem, unknown_name
from plant_models import MODELS, Parameter, ParameterSet, PlantModel, Role

__all__ = [
    "ParameterEntry",
    "PlantFile",
    "build_model",
    "load_parameter_set",
    "start_problems",
]


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
        problems += _domain_problems(path, cls, name, entry)
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
    ps = ParameterSet(
        pf.model,
        params,
        dict(pf.initial_state),
        dict(pf.nominal_inputs),
        dict(pf.initial_algebraic),
        dict(pf.bounds),
        str(path),
    )
    problems = start_problems(cls(ps), str(path))
    if problems:
        raise ConfigError(problems)
    return ps


def start_problems(
    model: PlantModel,
    source: str,
    states: Mapping[str, float] | None = None,
    inputs: Mapping[str, float] | None = None,
    parameters: Mapping[str, float] | None = None,
    *,
    keys: tuple[str, str] = ("initial_state", "nominal_inputs"),
) -> list[Problem]:
    """Initial states and inputs outside the model's validity domain, where its equations hold
    (:meth:`PlantModel.validity_violations`: the variables' ``lower/upper``, an input's
    actuator range, and the state bounds that depend on the ``parameters``); the plant file's
    own by default. ``keys``: where the states and the inputs are given. Operating limits are
    not looked at."""
    if states is None and inputs is None:
        states, inputs = model.initial_state, model.nominal_inputs
    p = model.parameter_set.values() if parameters is None else parameters
    found = [(keys[0], v) for v in model.validity_violations(states or {}, parameters=p)] + [
        (keys[1], v) for v in model.validity_violations({}, inputs=inputs or {})
    ]
    return [
        Problem(
            source,
            f"{key}.{v.name}",
            f"{v.describe()}; allowed: {_span(v.lower, v.upper, v.unit)}",
            v.value,
        )
        for key, v in found
    ]


def _span(lower: float, upper: float, unit: str) -> str:
    """The values from ``lower`` to ``upper`` in words (an infinite end left out)."""
    if math.isinf(upper):
        return f"{lower:g} {unit} or more"
    if math.isinf(lower):
        return f"{upper:g} {unit} or less"
    return f"{lower:g} to {upper:g} {unit}"


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


def build_model(path: Path, *, smooth: bool = False) -> PlantModel:
    """Load a plant YAML file and bind it to its model class."""
    ps = load_parameter_set(path)
    return MODELS[ps.model](ps, smooth=smooth)


def _domain_problems(
    path: Path, cls: type[PlantModel], name: str, entry: ParameterEntry
) -> list[Problem]:
    """A value, or a plausible range (Monte Carlo draws from it), outside the domain where
    the model's equations hold (:attr:`PlantModel.parameter_domain`)."""
    domain = cls.parameter_domain.get(name)
    if domain is None:
        return []
    allowed = f"allowed: {domain.describe()} (where the model's equations hold)"
    out = []
    if not domain.contains(entry.value):
        message = f"parameter {name} = {entry.value:g} is outside its physical domain; {allowed}"
        out.append(Problem(str(path), f"parameters.{name}.value", message, entry.value))
    if entry.range is not None and not all(domain.contains(v) for v in entry.range):
        message = f"the plausible range of {name} reaches outside its physical domain; {allowed}"
        out.append(Problem(str(path), f"parameters.{name}.range", message, list(entry.range)))
    return out
