"""Open-loop recipes: inputs as a time table, played as :class:`~controller.core.mpc.Decision`s.

A recipe goes through the same loop as the MPC (estimator, safety, port), so the nominal
recipe of a batch and its MPC can be compared on one footing. Pure computing.
"""

from __future__ import annotations

import itertools
from collections.abc import Mapping

import numpy as np

from controller.config import Recipe
from controller.core.mpc import Decision, SolveStatus


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
        """The inputs at model time ``t``: interpolated (``linear``), or the last row at or
        before ``t`` (``previous``; the first row before the table starts)."""
        if self.recipe.interpolation == "linear":
            return {n: float(np.interp(t, self._times, v)) for n, v in self._values.items()}
        idx = int(np.searchsorted(self._times, t, side="right") - 1)
        idx = max(idx, 0)
        return {n: float(v[idx]) for n, v in self._values.items()}

    def segments(
        self, t0: float, t1: float
    ) -> list[tuple[float, float, dict[str, float], dict[str, float]]]:
        """The recipe over ``[t0, t1]`` as pieces along which the inputs move linearly.

        Each piece is ``(t_start, t_end, inputs at t_start, inputs at t_end)``, split at the
        table's rows, so a plant integrating them applies the recipe exactly (a ramp stays a
        ramp inside a sample; a "previous" step switches at its row's time)."""
        knots = [float(k) for k in self._times if t0 < k < t1]
        cuts = [t0, *knots, t1]
        out = []
        for a, b in itertools.pairwise(cuts):
            start = self.inputs_at(a)
            end = self.inputs_at(b) if self.recipe.interpolation == "linear" else start
            out.append((a, b, start, end))
        return out

    def step(
        self,
        t: float,
        x_hat: Mapping[str, float],
        params: Mapping[str, float] | None = None,
        u_prev: Mapping[str, float] | None = None,
    ) -> Decision:
        """The recipe's inputs at ``t`` as a successful Decision (the estimate is not used)."""
        return Decision(t, self.inputs_at(t), SolveStatus.SUCCESS, "recipe", 0, 0.0)

    def reset(self, u_prev: Mapping[str, float]) -> None:
        """Recipes have no memory."""
