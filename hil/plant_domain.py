"""The true plant's quick look at its validity domain after every step.

:class:`Domain` holds the bounds of the states and algebraic variables, so that the plant can
tell at a glance that a step stayed inside; the report of an excursion is always the model's
own (:meth:`plant_models.PlantModel.validity_violations`, given the current parameters).

Some bounds depend on the parameters (:meth:`plant_models.PlantModel.state_bounds`: the freeze
dryer's dried cake is at most as thick as the frozen product was, Lck <= Lpr0(p)). A parameter
that drifts moves them, so the domain is told the parameters in force (:meth:`Domain.use`)
and narrows its bounds to theirs. Only a model that has such bounds pays for them, and only
once per parameter vector (the bounds of the last few vectors are kept).

It also holds the inputs' bounds (their actuator's physical range: an input outside it is a
plant fault, never a clipped value; :meth:`Domain.inputs_hold`) and the bounds of the outputs
and expressions the model declares in :attr:`plant_models.PlantModel.expression_domain` (the
freeze dryer's Tbot <= 0 degC; :meth:`Domain.expressions_hold`, on the model's expression
vector). Each quick look compares a few floats the plant already holds: no dict is built
unless something is outside, and then the report is the model's.
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

    def __init__(
        self,
        model: PlantModel,
        states: Sequence[str],
        algebraic: Sequence[str],
        inputs: Sequence[str] = (),
        expressions: Sequence[str] = (),
    ) -> None:
        """``states``, ``algebraic``, ``inputs``: the names of the plant's vectors, in order;
        ``expressions``: the names of the model's expression vector (outputs first)."""
        v = model.all_variables
        self._model = model
        self._names = [*states, *algebraic]
        self._states, self._algebraic = tuple(states), tuple(algebraic)
        self._static: _Bounds = [
            (v[n].lower - 1e-6 * v[n].scale, v[n].upper + 1e-6 * v[n].scale) for n in self._names
        ]
        self._inputs = tuple(inputs)
        self._input_bounds: _Bounds = [
            (v[n].lower - 1e-6 * v[n].scale, v[n].upper + 1e-6 * v[n].scale) for n in self._inputs
        ]
        self._expressions = tuple(expressions)
        #: (index in the expression vector, lower, upper) of every bounded output/expression
        self._expression_bounds: list[tuple[int, float, float]] = []
        for i, name in enumerate(self._expressions):
            if name in model.expression_domain:
                lo, hi, _ = model.expression_domain[name]
                tol = 1e-6 * (v[name].scale if name in v else 1.0)  # as the model's check
                self._expression_bounds.append((i, lo - tol, hi + tol))
        #: some outputs or expressions are bounded: the plant evaluates them after each step
        self.watches_expressions = bool(self._expression_bounds)
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

    def holds(self, x: np.ndarray, z: np.ndarray, expr: np.ndarray | None = None) -> bool:
        """The states (and, given ``expr``, the bounded expressions) are inside."""
        values = x.tolist() + z.tolist()  # a few numbers: a plain loop beats numpy's calls
        inside = all(
            math.isfinite(value) and lo <= value <= hi
            for value, (lo, hi) in zip(values, self.bounds, strict=True)
        )
        return inside and (expr is None or self.expressions_hold(expr))

    def expressions_hold(self, expr: np.ndarray) -> bool:
        """The bounded outputs and expressions of ``expr`` (the model's expression vector)
        are inside (a NaN is not)."""
        values = expr.tolist()
        return all(lo <= values[i] <= hi for i, lo, hi in self._expression_bounds)

    def inputs_hold(self, u: np.ndarray) -> bool:
        """The input vector ``u`` is inside its actuators' physical ranges (a NaN is not)."""
        return all(
            lo <= value <= hi
            for value, (lo, hi) in zip(u.tolist(), self._input_bounds, strict=True)
        )

    def violations(
        self, x: np.ndarray, z: np.ndarray, expr: np.ndarray | None = None
    ) -> list[DomainViolation]:
        """The model's own report of what is outside (with the parameters in force; the
        bounded expressions too, given ``expr``)."""
        return self._model.validity_violations(
            dict(zip(self._states, x.tolist(), strict=True)),
            dict(zip(self._algebraic, z.tolist(), strict=True)),
            parameters=self._parameters if self.parameter_dependent else None,
            expressions=None if expr is None else self._expression_values(expr),
        )

    def input_violations(self, u: np.ndarray) -> list[DomainViolation]:
        """The model's own report of the inputs of ``u`` outside their physical range."""
        return self._model.validity_violations(
            {}, inputs=dict(zip(self._inputs, u.tolist(), strict=True))
        )

    def outside(
        self, x: np.ndarray, z: np.ndarray, expr: np.ndarray | None = None
    ) -> list[DomainViolation]:
        """:meth:`violations` when the quick look finds the state outside, else nothing."""
        return [] if self.holds(x, z, expr) else self.violations(x, z, expr)

    def _expression_values(self, expr: np.ndarray) -> dict[str, float]:
        values = expr.tolist()
        return {self._expressions[i]: values[i] for i, _, _ in self._expression_bounds}
