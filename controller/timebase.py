"""The one time base: model time (the model's ``time_unit``) <-> seconds.

Every conversion between the model's clock (hours for the freeze dryer and the bioreactor,
minutes or seconds for others: ``PlantModel.seconds_per_unit``) and the wall or process clock
(seconds) goes through a :class:`TimeBase`; no module multiplies by ``seconds_per_unit`` itself.
The other link between the model and the PLC, which tag carries which model name, sits
beside it in :mod:`controller.binding`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from plant_models import PlantModel

__all__ = ["TimeBase"]


@dataclass(frozen=True, slots=True)
class TimeBase:
    """Model time in ``unit`` <-> seconds; ``seconds_per_unit`` > 0 and finite.

    Raises ValueError at construction for a non-positive or non-finite scale.
    """

    unit: str
    seconds_per_unit: float

    def __post_init__(self) -> None:
        if not (math.isfinite(self.seconds_per_unit) and self.seconds_per_unit > 0):
            raise ValueError(
                f"time base {self.unit!r}: seconds_per_unit {self.seconds_per_unit!r} "
                "is not a positive finite number"
            )

    @classmethod
    def of(cls, model: PlantModel) -> TimeBase:
        """The time base of ``model`` (its ``time_unit`` and ``seconds_per_unit``)."""
        return cls(model.time_unit, float(model.seconds_per_unit))

    def seconds(self, t_model: float) -> float:
        """``t_model`` (in :attr:`unit`) as seconds."""
        return t_model * self.seconds_per_unit

    def model_time(self, seconds: float) -> float:
        """``seconds`` as model time (in :attr:`unit`)."""
        return seconds / self.seconds_per_unit
