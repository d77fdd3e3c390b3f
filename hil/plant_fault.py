"""A fault of the true plant: it left the domain where its equations hold.

A state or algebraic variable outside the model's physical validity domain, an input outside
its actuator's physical range (the input's ``lower``/``upper``), an output or expression
outside its bound (:attr:`plant_models.PlantModel.expression_domain`: the freeze dryer's
Tbot <= 0 degC), or a parameter outside its physical domain
(:attr:`plant_models.PlantModel.parameter_domain`) stops the true plant: :class:`PlantFault`
says what, where and when, :class:`PlantDomainError` carries it
(:class:`hil.plant_runner.PlantRunner` raises it and keeps it as ``fault``).
"""

from __future__ import annotations

from dataclasses import dataclass

from controller.errors import ScenarioError
from plant_models.variables import DomainViolation

__all__ = ["PlantDomainError", "PlantFault"]


@dataclass(frozen=True)
class PlantFault:
    """The true plant left its validity domain: the equations no longer describe it."""

    t: float
    time_unit: str
    violations: tuple[DomainViolation, ...]

    def describe(self) -> str:
        what = "; ".join(v.describe() for v in self.violations)
        return f"true plant left its validity domain at t={self.t:g} {self.time_unit}: {what}"

    def as_dict(self) -> dict[str, object]:
        return {
            "t": self.t,
            "time_unit": self.time_unit,
            "violations": [
                {
                    "variable": v.name,
                    "value": v.value,
                    "lower": v.lower,
                    "upper": v.upper,
                    "unit": v.unit,
                }
                for v in self.violations
            ],
            "detail": self.describe(),
        }


class PlantDomainError(ScenarioError):
    """The true plant left its physical validity domain (see :class:`PlantFault`)."""

    def __init__(self, fault: PlantFault) -> None:
        super().__init__(fault.describe())
        self.fault = fault
