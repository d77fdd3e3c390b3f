"""A recipe's inputs at a time are numpy's interpolation of its table, to the bit.

:meth:`RecipePlayer.inputs_at` interpolates in Python (the rig asks at every plant step); it
must give exactly what ``np.interp`` (``linear``) and the last row at or before ``t``
(``previous``) give, at rows, between them, before the table and after it."""

from __future__ import annotations

import itertools

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from controller.config import Recipe, RecipeRow
from controller.core.recipe import RecipePlayer

finite = st.floats(min_value=-1e12, max_value=1e12, allow_nan=False, allow_infinity=False)
gaps = st.floats(min_value=1e-9, max_value=1e6, allow_nan=False, allow_infinity=False)


@st.composite
def tables(draw: st.DrawFn) -> tuple[list[float], list[float], list[float]]:
    steps = draw(st.lists(gaps, min_size=0, max_size=6))
    times = [0.0]
    for gap in steps:
        if times[-1] + gap > times[-1]:  # strictly increasing, as the config demands
            times.append(times[-1] + gap)
    return times, [draw(finite) for _ in times], [draw(finite) for _ in times]


@settings(max_examples=300, deadline=None)
@given(tables(), st.lists(st.floats(-10.0, 2e6, allow_nan=False), min_size=1, max_size=8))
def test_inputs_at_are_numpys_interpolation(
    table: tuple[list[float], list[float], list[float]], probes: list[float]
) -> None:
    times, a, b = table
    rows = tuple(
        RecipeRow(t=t, inputs={"A": x, "B": y}) for t, x, y in zip(times, a, b, strict=True)
    )
    linear = RecipePlayer(Recipe(interpolation="linear", table=rows), ("A", "B"))
    held = RecipePlayer(Recipe(interpolation="previous", table=rows), ("A", "B"))
    for t in [*probes, *times, *(0.5 * (p + q) for p, q in itertools.pairwise(times))]:
        assert linear.inputs_at(t) == {
            "A": float(np.interp(t, times, a)),
            "B": float(np.interp(t, times, b)),
        }, t
        row = max(int(np.searchsorted(times, t, side="right")) - 1, 0)
        assert held.inputs_at(t) == {"A": a[row], "B": b[row]}, t
