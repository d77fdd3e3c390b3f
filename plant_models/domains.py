"""Where a parameter's value lets a model's equations hold (pure, no CasADi).

:class:`Interval` is a parameter's physical domain (a density, an area, a volume is
positive), not a plausible range nor an operating limit; a model declares one per parameter
in :attr:`plant_models.PlantModel.parameter_domain`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

__all__ = ["FRACTION", "NON_NEGATIVE", "POSITIVE", "Interval"]


@dataclass(frozen=True)
class Interval:
    """Where a parameter's value lets the model's equations hold (its physical validity: a
    density, an area, a volume is positive), not a plausible range nor an operating limit."""

    lower: float = -math.inf
    upper: float = math.inf
    lower_open: bool = False
    upper_open: bool = False

    def contains(self, value: float) -> bool:
        lo, hi = self.lower, self.upper
        above = value > lo if self.lower_open else value >= lo
        below = value < hi if self.upper_open else value <= hi
        return above and below

    def describe(self) -> str:
        """``> 0``, ``>= 0``, ``in [0, 1)``."""
        if math.isinf(self.upper):
            return f"{'>' if self.lower_open else '>='} {self.lower:g}"
        left, right = "(" if self.lower_open else "[", ")" if self.upper_open else "]"
        return f"in {left}{self.lower:g}, {self.upper:g}{right}"


POSITIVE = Interval(0.0, lower_open=True)
NON_NEGATIVE = Interval(0.0)
FRACTION = Interval(0.0, 1.0, upper_open=True)
