"""Open-loop recipes: inputs given as a time table, played as :class:`~controller.mpc.Decision`s.

A recipe goes through the same loop as the MPC (estimator, safety, port), so the nominal
recipe of a batch and its MPC can be compared on one footing. Pure computing.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from controller.config import Recipe
from controller.mpc import Decision, SolveStatus


class RecipePlayer:
    """Interpolates a recipe table (linear or previous-value) at the start of each sample."""

    def __init__(self, recipe: Recipe, input_names: tuple[str, ...]) -> None:
        self.recipe = recipe
        self.input_names = input_names
        self._times = np.array([row.t for row in recipe.table], dtype=float)
        self._values = {
            name: np.array([row.inputs[name] for row in recipe.table], dtype=float)
            for name in input_names
        }

    def inputs_at(self, t: float) -> dict[str, float]:
        if self.recipe.interpolation == "linear":
            return {n: float(np.interp(t, self._times, v)) for n, v in self._values.items()}
        idx = int(np.searchsorted(self._times, t, side="right") - 1)
        idx = max(idx, 0)
        return {n: float(v[idx]) for n, v in self._values.items()}

    def step(
        self,
        t: float,
        x_hat: Mapping[str, float],
        params: Mapping[str, float] | None = None,
        u_prev: Mapping[str, float] | None = None,
    ) -> Decision:
        return Decision(t, self.inputs_at(t), SolveStatus.SUCCESS, "recipe", 0, 0.0)

    def reset(self, u_prev: Mapping[str, float]) -> None:
        """Recipes have no memory."""
