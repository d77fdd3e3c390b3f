"""The declaration half of a plant model: variables with units, bounds and roles, and the
parameter data (:class:`ParameterSet`) that binds a model class to a plant file's values.

Pure: no I/O. :mod:`plant_models.base` turns a declaration into CasADi functions.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

import casadi as ca

from plant_models.errors import ModelError, unknown_name

Sym = ca.SX
SymMap = Mapping[str, Any]

#: Seconds per model time unit (clocks run in seconds, models in their sources' units).
SECONDS_PER_UNIT: Mapping[str, float] = {"s": 1.0, "min": 60.0, "h": 3600.0}


class Role(StrEnum):
    """What a variable is to the model."""

    STATE = "state"
    ALGEBRAIC = "algebraic"
    INPUT = "input"
    OUTPUT = "output"
    PARAMETER = "parameter"


@dataclass(frozen=True)
class Variable:
    """A named quantity of a plant model.

    Two kinds of limit, never mixed up:

    * ``lower``/``upper``: the **physical validity domain**, where the equations hold
      (concentrations >= 0, ice below 0 degC). For inputs, the actuator's physical range. The
      true plant never clips to it: a state that leaves it, or an input it is given outside
      it, is a plant fault (:meth:`PlantModel.validity_violations`). Outputs and expressions
      whose values bound the validity (the freeze dryer's Tbot <= 0 degC) are declared in
      :attr:`PlantModel.expression_domain`, not here: an output's ``lower``/``upper`` are
      not checked by the true plant.
    * ``operating``: the **operating limits** the process must respect (X <= 3.7 g/L,
      T_R <= 140 degC). They belong to the controller's constraints, the scenario's checks and
      the campaign criteria, never to the plant's integration.

    ``scale`` is a typical magnitude used to scale the variable inside integrators and
    optimizers (the crystallizer's moments span 1e0..1e9).
    """

    name: str
    unit: str
    role: Role
    lower: float = -math.inf
    upper: float = math.inf
    description: str = ""
    scale: float = 1.0
    operating: tuple[float, float] = (-math.inf, math.inf)

    @property
    def operating_lower(self) -> float:
        return max(self.operating[0], self.lower)

    @property
    def operating_upper(self) -> float:
        return min(self.operating[1], self.upper)


@dataclass(frozen=True)
class DomainViolation:
    """A variable outside the model's physical validity domain (a plant fault)."""

    name: str
    value: float
    lower: float
    upper: float
    unit: str
    #: what a bound that depends on the parameters is (:meth:`PlantModel.state_bounds`)
    note: str = ""
    #: a parameter outside its :class:`~plant_models.domains.Interval` (said as the interval)
    rule: str = ""

    def describe(self) -> str:
        if self.rule:
            return (
                f"parameter {self.name} = {self.value:.6g} {self.unit} is outside the domain "
                f"where the model's equations hold ({self.rule})"
            )
        side = f"below {self.lower:g}" if self.value < self.lower else f"above {self.upper:g}"
        note = f" ({self.note})" if self.note else ""
        return (
            f"{self.name} = {self.value:.6g} {self.unit} is {side} {self.unit}, outside the "
            f"model's validity domain [{self.lower:g}, {self.upper:g}]{note}"
        )


@dataclass(frozen=True)
class Parameter:
    """A parameter value with its unit, as loaded from a plant YAML file.

    ``lower``/``upper`` give the plausible range (used for estimation bounds and for
    plant-model mismatch in scenarios).
    """

    name: str
    value: float
    unit: str
    description: str = ""
    lower: float = -math.inf
    upper: float = math.inf


@dataclass(frozen=True)
class ParameterSet:
    """The data half of a plant model: parameter values, nominal start and bound overrides."""

    model: str
    parameters: Mapping[str, Parameter]
    initial_state: Mapping[str, float]
    nominal_inputs: Mapping[str, float]
    initial_algebraic: Mapping[str, float] = field(default_factory=dict)
    bounds: Mapping[str, tuple[float, float]] = field(default_factory=dict)
    source: str = "<memory>"

    def values(self) -> dict[str, float]:
        return {name: p.value for name, p in self.parameters.items()}

    def with_values(self, overrides: Mapping[str, float]) -> ParameterSet:
        """A copy with some parameter values replaced (plant-model mismatch)."""
        unknown = sorted(set(overrides) - set(self.parameters))
        if unknown:
            known = sorted(self.parameters)
            message = unknown_name("parameter(s)", unknown, known)
            raise ModelError(f"{self.source}: model {self.model!r}: {message}")
        params = {
            name: (
                Parameter(p.name, float(overrides[name]), p.unit, p.description, p.lower, p.upper)
                if name in overrides
                else p
            )
            for name, p in self.parameters.items()
        }
        return ParameterSet(
            self.model,
            params,
            self.initial_state,
            self.nominal_inputs,
            self.initial_algebraic,
            self.bounds,
            self.source,
        )


@dataclass(frozen=True)
class Evaluation:
    """Numeric values of one model evaluation, keyed by variable or expression name."""

    xdot: dict[str, float]
    alg: list[float]
    outputs: dict[str, float]
    expressions: dict[str, float]
