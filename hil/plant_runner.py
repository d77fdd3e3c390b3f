"""The "true plant": the same model with its own parameters, noise and disturbances.

:class:`PlantRunner` advances one sample step at a time with the model's CasADi integrator
(cvodes or idas), using the exact (non-smoothed) equations, the scenario's parameter values
(plant-model mismatch), seeded Gaussian measurement noise and additive input disturbances.
It knows nothing of the controller; it sees only the inputs that are in place.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from controller.config import Disturbance
from controller.errors import ScenarioError
from plant_models import PlantModel, Role


@dataclass(frozen=True)
class PlantState:
    """The plant's true condition at one instant (physical units)."""

    t: float
    states: Mapping[str, float]
    algebraic: Mapping[str, float]
    inputs: Mapping[str, float]
    outputs: Mapping[str, float]
    expressions: Mapping[str, float]


class PlantRunner:
    """Integrates the true plant one sample at a time (time in the model's unit)."""

    def __init__(
        self,
        model: PlantModel,
        sample_time: float,
        *,
        initial_state: Mapping[str, float] | None = None,
        noise_std: Mapping[str, float] | None = None,
        disturbances: Sequence[Disturbance] = (),
        seed: int = 0,
        t0: float = 0.0,
    ) -> None:
        self.model = model
        self.sample_time = sample_time
        self._step = model.integrator(sample_time)
        self._p = model.parameter_vector()
        self._x = model.vector(Role.STATE, {**model.initial_state, **(initial_state or {})})
        self._z = model.vector(Role.ALGEBRAIC, model.initial_algebraic)
        self._u = model.vector(Role.INPUT, model.nominal_inputs)
        self._noise = {name: float(s) for name, s in (noise_std or {}).items() if s > 0}
        self._disturbances = tuple(disturbances)
        self._rng = np.random.default_rng(seed)
        self._lo = np.array([model.variable(n).lower for n in model.state_names])
        self._hi = np.array([model.variable(n).upper for n in model.state_names])
        self.t = t0
        if model.is_dae:
            solver = model.algebraic_solver()
            if solver is not None:
                z = solver(self._z, self._x, self._u, self._p)
                self._z = np.asarray(z, dtype=float).ravel()

    # ------------------------------------------------------------------ stepping
    def disturbed(self, inputs: Mapping[str, float], t: float) -> dict[str, float]:
        u = dict(inputs)
        for d in self._disturbances:
            if d.start <= t < d.end:
                u[d.input] = u[d.input] + d.offset
        return u

    def advance(self, inputs: Mapping[str, float]) -> None:
        """Hold ``inputs`` (plus disturbances) for one sample step and integrate."""
        u = self.model.vector(Role.INPUT, self.disturbed(inputs, self.t))
        try:
            xf, zf = self._step(self._x, self._z, u, self._p)
        except RuntimeError as exc:
            raise ScenarioError(
                f"true plant {self.model.name!r} failed to integrate at t={self.t:g} "
                f"{self.model.time_unit} with inputs {self.model.as_dict(Role.INPUT, u)}: {exc}"
            ) from exc
        self._x = np.clip(np.asarray(xf, dtype=float).ravel(), self._lo, self._hi)
        self._z = np.asarray(zf, dtype=float).ravel()
        self._u = u
        self.t += self.sample_time

    @property
    def parameters(self) -> dict[str, float]:
        """The true plant's current parameter values (model units), as used by ``advance``."""
        return dict(zip(self.model.parameter_names, map(float, self._p), strict=True))

    def set_parameters(self, values: Mapping[str, float]) -> None:
        """Change some of the true plant's parameters (model units) from the next ``advance``.

        Names not given keep their current values. Unknown names or non-finite values raise
        :class:`ScenarioError` naming them; nothing is changed then.
        """
        names = self.model.parameter_names
        unknown = sorted(set(values) - set(names))
        if unknown:
            raise ScenarioError(
                f"true plant {self.model.name!r}: unknown parameter(s) {unknown}; "
                f"known: {sorted(names)}"
            )
        bad = {n: v for n, v in values.items() if not math.isfinite(float(v))}
        if bad:
            raise ScenarioError(
                f"true plant {self.model.name!r}: parameter value(s) not finite: {bad}"
            )
        p = self._p.copy()
        for name, value in values.items():
            p[names.index(name)] = float(value)
        self._p = p

    # ------------------------------------------------------------------ observing
    def true_state(self) -> PlantState:
        ev = self.model.evaluate(
            self.model.as_dict(Role.STATE, self._x),
            self.model.as_dict(Role.INPUT, self._u),
            self.model.as_dict(Role.ALGEBRAIC, self._z),
            self.parameters,
        )
        return PlantState(
            self.t,
            self.model.as_dict(Role.STATE, self._x),
            self.model.as_dict(Role.ALGEBRAIC, self._z),
            self.model.as_dict(Role.INPUT, self._u),
            ev.outputs,
            ev.expressions,
        )

    def measure(self) -> dict[str, float]:
        """Measured outputs with seeded Gaussian noise."""
        outputs = dict(self.true_state().outputs)
        for name, std in self._noise.items():
            outputs[name] += float(self._rng.normal(0.0, std))
        return outputs

    def finished(self) -> bool:
        return self.model.finished(self.model.as_dict(Role.STATE, self._x), self.parameters)
