"""The true plant's quick look at its validity domain after every step.

:class:`Domain` holds the bounds of the states and algebraic variables, so that the plant can
tell at a glance that a step stayed inside; the report of an excursion is always the model's
own (:meth:`plant_models.PlantModel.validity_violations`).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from plant_models import PlantModel

__all__ = ["Domain"]


class Domain:
    """The validity domain as bounds, for the quick look of every step: ``holds`` is True
    exactly when :meth:`PlantModel.validity_violations` finds nothing (the same bounds, the same
    1e-6-of-scale margin, the same comparisons); the report itself is always the model's."""

    def __init__(self, model: PlantModel, states: Sequence[str], algebraic: Sequence[str]) -> None:
        v = model.all_variables
        names = [*states, *algebraic]
        self.bounds = [
            (v[n].lower - 1e-6 * v[n].scale, v[n].upper + 1e-6 * v[n].scale) for n in names
        ]

    def holds(self, x: np.ndarray, z: np.ndarray) -> bool:
        values = x.tolist() + z.tolist()  # a few numbers: a plain loop beats numpy's calls
        return all(
            math.isfinite(value) and lo <= value <= hi
            for value, (lo, hi) in zip(values, self.bounds, strict=True)
        )
