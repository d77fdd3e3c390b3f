"""The rig looks a ``previous`` recipe's inputs up once per table row (it asks at every plant
step): what it sees must be what :meth:`RecipePlayer.inputs_at` gives at every time, across
the rows' boundaries, backwards (a batch restarts at 0) and before the table starts."""

from __future__ import annotations

import pytest

from controller.config import Recipe, RecipeRow
from controller.core.recipe import RecipePlayer
from hil.rig import _RecipeStart

TIMES = [-1.0, 0.0, 0.05, 0.1, 0.1 + 1e-12, 0.15, 0.2, 0.2 - 1e-15, 0.25, 0.3, 7.0, 0.0, 0.2]


@pytest.mark.parametrize("interpolation", ["previous", "linear"])
def test_the_rigs_recipe_inputs_are_the_players(interpolation: str) -> None:
    rows = [(0.0, 1.0, -5.0), (0.1, 2.0, -6.0), (0.2, 3.0, -4.0), (0.25, 0.5, -4.5)]
    recipe = Recipe(
        interpolation=interpolation,  # type: ignore[arg-type]
        table=tuple(RecipeRow(t=t, inputs={"F": f, "Q": q}) for t, f, q in rows),
    )
    player = RecipePlayer(recipe, ("F", "Q"))
    start = _RecipeStart(player)
    for t in TIMES:
        assert start.inputs_at(t) == player.inputs_at(t), t
