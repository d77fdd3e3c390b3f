"""The true plant's quick look at its validity domain after every step.

:class:`Domain` holds the bounds of the states and algebraic variables, so that the plant can
tell at a glance that a step stayed inside; the report of an excursion is always the model's
own (:meth:`plant_models.PlantModel.validity_violations`, given the current parameters).

Some bounds depend on the parameters (:meth:`plant_models.PlantModel.state_bounds`: the freeze
dryer's dried cake is at most as thick as the frozen product was, Lck <= Lpr0(p)). A parameter
that drifts moves them, so the domain is told the parameters in force (:meth:`Domain.use`)
and narrows its bounds to theirs. Only a model that has such bounds pays for them, and only
once per parameter vector (the bounds of the last few vectors are kept).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import numpy as np

from plant_models import PlantModel
from plant_models.variables import DomainViolation

__all__ = ["Domain"]

_Bounds = list[tuple[float, float]]
_CACHE = 8  # parameter vectors whose bounds are kept (a drift gives a new one every step)


class Domain:
    """The validity domain as bounds, for the quick look of every step: ``holds`` is True
    exactly when :meth:`PlantModel.validity_violations` with the parameters in force
    (:meth:`use`) finds nothing (the same bounds, the same 1e-6-of-scale margin, the same
    comparisons); the report itself is always the model's (:meth:`violations`)."""

    def __init__(self, model: PlantModel, states: Sequence[str], algebraic: Sequence[str]) -> None:
        v = model.all_variables
        self._model = model
        self._names = [*states, *algebraic]
        self._states, self._algebraic = tuple(states), tuple(algebraic)
        self._static: _Bounds = [
            (v[n].lower - 1e-6 * v[n].scale, v[n].upper + 1e-6 * v[n].scale) for n in self._names
        ]
        self.bounds = self._static
        #: the model narrows some bounds with its parameters (else they are never looked at)
        self.parameter_dependent = type(model).state_bounds is not PlantModel.state_bounds
        self._parameters: Mapping[str, float] | None = None
        self._cache: dict[bytes, _Bounds] = {}

    def use(self, p: np.ndarray, parameters: Mapping[str, float]) -> None:
        """The parameters now in force: ``p`` as a vector (the cache key) and by name (every
        parameter, a mapping the caller replaces rather than changes). The bounds that depend
        on them apply from now on."""
        self._parameters = parameters
        if not self.parameter_dependent:
            return
        key = p.tobytes()
        bounds = self._cache.get(key)
        if bounds is None:
            bounds = self._narrowed(parameters)
            if len(self._cache) >= _CACHE:
                self._cache.pop(next(iter(self._cache)))
            self._cache[key] = bounds
        self.bounds = bounds

    def _narrowed(self, parameters: Mapping[str, float]) -> _Bounds:
        """The static bounds narrowed by the parameter-dependent ones, as the model's own
        check narrows them (never wider than the static ones)."""
        v = self._model.all_variables
        tight = self._model.state_bounds(parameters)
        out = list(self._static)
        for i, n in enumerate(self._names):
            if n in tight:
                lo, hi, _ = tight[n]
                tol = 1e-6 * v[n].scale
                out[i] = (max(lo, v[n].lower) - tol, min(hi, v[n].upper) + tol)
        return out

    def holds(self, x: np.ndarray, z: np.ndarray) -> bool:
        values = x.tolist() + z.tolist()  # a few numbers: a plain loop beats numpy's calls
        return all(
            math.isfinite(value) and lo <= value <= hi
            for value, (lo, hi) in zip(values, self.bounds, strict=True)
        )

    def violations(self, x: np.ndarray, z: np.ndarray) -> list[DomainViolation]:
        """The model's own report of what is outside (with the parameters in force)."""
        return self._model.validity_violations(
            dict(zip(self._states, x.tolist(), strict=True)),
            dict(zip(self._algebraic, z.tolist(), strict=True)),
            parameters=self._parameters if self.parameter_dependent else None,
        )

    def outside(self, x: np.ndarray, z: np.ndarray) -> list[DomainViolation]:
        """:meth:`violations` when the quick look finds the state outside, else nothing."""
        return [] if self.holds(x, z) else self.violations(x, z)
