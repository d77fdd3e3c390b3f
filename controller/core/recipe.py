"""Open-loop recipes: inputs as a time table, played as :class:`~controller.core.mpc.Decision`s.

A recipe goes through the same loop as the MPC (estimator, safety, port), so the nominal
recipe of a batch and its MPC can be compared on one footing. Pure computing.
"""

from __future__ import annotations

import bisect
import itertools
import math
from collections.abc import Mapping, Sequence
from typing import ClassVar

import numpy as np

from controller.config import Recipe
from controller.core.mpc import Decision, SolveStatus


class RecipePlayer:
    """Interpolates a recipe table (linear or previous-value) at the start of each sample."""

    #: its inputs come from the table alone: bad data or a failed estimator do not hold it
    #: (:func:`controller.core.pipeline.open_loop`)
    open_loop: ClassVar[bool] = True

    def __init__(self, recipe: Recipe, input_names: tuple[str, ...]) -> None:
        self.recipe = recipe
        self.input_names = input_names
        self._times = np.array([row.t for row in recipe.table], dtype=float)
        self._values = {
            name: np.array([row.inputs[name] for row in recipe.table], dtype=float)
            for name in input_names
        }
        # the same table as Python floats: one row lookup for every input (see _interp)
        self._t_list = [float(t) for t in self._times]
        self._v_lists = {n: [float(x) for x in v] for n, v in self._values.items()}

    def inputs_at(self, t: float) -> dict[str, float]:
        """The inputs at model time ``t``: interpolated (``linear``), or the last row at or
        before ``t`` (``previous``; the first row before the table starts)."""
        times = self._t_list
        j = bisect.bisect_right(times, t) - 1  # the last row at or before t (-1: before)
        if self.recipe.interpolation == "linear":
            return {n: _interp(t, j, times, v) for n, v in self._v_lists.items()}
        return {n: v[max(j, 0)] for n, v in self._v_lists.items()}

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


def _interp(t: float, j: int, xs: Sequence[float], ys: Sequence[float]) -> float:
    """``float(np.interp(t, xs, ys))`` for strictly increasing ``xs``, given ``j``, the last
    index with ``xs[j] <= t`` (-1 when ``t`` is before them all): the same arithmetic as
    numpy's, the same bits (tested against it), without its per-call array set-up (the rig
    asks at every plant step, for every input)."""
    if j < 0:
        return ys[0]
    if j >= len(xs) - 1:
        return ys[-1]
    if xs[j] == t:
        return ys[j]
    slope = (ys[j + 1] - ys[j]) / (xs[j + 1] - xs[j])
    value = slope * (t - xs[j]) + ys[j]
    if math.isnan(value):  # numpy's retry from the other end of the interval
        value = slope * (t - xs[j + 1]) + ys[j + 1]
        if math.isnan(value) and ys[j] == ys[j + 1]:
            value = ys[j]
    return value
