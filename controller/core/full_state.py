"""Full-state feedback: the measured states passed straight through as the estimate.

For plants that measure every state, and for tests. It takes the same step as every
estimator (:class:`controller.core.estimate.Estimator`); only it uses ``states``.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from typing import Any

import numpy as np

from controller.core.estimate import Estimate, FloatArray
from controller.core.named_values import merged, vector_of
from controller.errors import EstimatorError
from plant_models import PlantModel, Role

__all__ = ["FullStateFeedback"]


def _solve_algebraic(
    model: PlantModel, solver: Any, z_guess: FloatArray, x: FloatArray, u: FloatArray, p: FloatArray
) -> FloatArray:
    try:
        z = np.asarray(solver(z_guess, x, u, p), dtype=float).ravel()
    except RuntimeError as exc:
        raise EstimatorError(
            f"model {model.name!r}: algebraic solver failed at x={x.tolist()}: {exc}"
        ) from exc
    if not np.all(np.isfinite(z)):
        raise EstimatorError(f"model {model.name!r}: algebraic solver gave {z.tolist()}")
    return z


class FullStateFeedback:
    """Pass measured states straight through (plants that measure every state, and tests).

    Parameters stay at their nominal values (or ``initial_parameters``); standard deviations
    are zero. For DAEs the algebraic states are solved at the given states and input.
    """

    def __init__(
        self,
        model: PlantModel,
        initial_parameters: Mapping[str, float] | None = None,
        initial_state: Mapping[str, float] | None = None,
    ) -> None:
        self._model = model
        self._params = merged(model, model.parameters, initial_parameters, "parameter")
        self._u = model.vector(Role.INPUT, model.nominal_inputs)
        self._solver = model.algebraic_solver()
        self._z = model.vector(Role.ALGEBRAIC, model.initial_algebraic)
        states = merged(model, model.initial_state, initial_state, "state")
        self._estimate = self._make(model.vector(Role.STATE, states), self._u)

    def _make(self, x: FloatArray, u: FloatArray) -> Estimate:
        model = self._model
        if self._solver is not None:
            p = model.parameter_vector(self._params)
            self._z = _solve_algebraic(model, self._solver, self._z, x, u, p)
        return Estimate(
            states=model.as_dict(Role.STATE, x),
            parameters=dict(self._params),
            state_std={n: 0.0 for n in model.state_names},
            parameter_std={},
            innovation={},
            algebraic=model.as_dict(Role.ALGEBRAIC, self._z),
        )

    def update(
        self,
        u_applied: Mapping[str, float] | None,
        y: Mapping[str, float],
        states: Mapping[str, float] | None = None,
        *,
        exclude: Collection[str] = (),
    ) -> Estimate:
        """Return ``states`` as the estimate.

        ``y`` and ``exclude`` are not used (the one estimator step takes them). Raises
        EstimatorError naming the missing states when ``states`` lacks some (or is None),
        or a non-finite value, and leaves the estimate unchanged then.
        """
        model = self._model
        x = vector_of(model, Role.STATE, states or {}, "state")
        u = self._u if u_applied is None else vector_of(model, Role.INPUT, u_applied, "input")
        self._estimate = self._make(x, u)
        self._u = u
        return self._estimate

    @property
    def estimate(self) -> Estimate:
        """The last estimate (the initial state, before the first ``update``)."""
        return self._estimate
