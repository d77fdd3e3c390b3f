"""A shipped model's evaluation function is built once per class and ``smooth`` per process
(plant_models.base): a campaign builds a model per case (its drawn parameters), and building
the function took ~5 ms a case. The parameters are the function's input, so sharing it must
change no number; a model class of anyone else's is never shared."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import casadi as ca
import numpy as np

from controller.plantfile import build_model
from plant_models import Role
from plant_models.lyophilizer import Lyophilizer

PLANT = Path(__file__).resolve().parents[2] / "configs" / "plants" / "lyophilizer.yaml"


def test_models_of_a_shipped_class_share_one_function_and_keep_their_own_parameters() -> None:
    base = build_model(PLANT)
    other = type(base)(base.parameter_set.with_values({"KC": 3.9e-4, "R0": 2.5}))
    assert other.function is base.function
    assert type(base)(base.parameter_set, smooth=True).function is not base.function
    assert other.expression_names == base.expression_names
    x, u = {"Lck": 0.2}, {"Tsh": -10.0, "Pch": 0.1}
    z = {"Tsub": -30.0}
    ours, theirs = base.evaluate(x, u, z), other.evaluate(x, u, z)
    assert ours.outputs["Tbot"] != theirs.outputs["Tbot"]  # each with its own parameters
    # the numbers of a function built afresh for the other model
    s = other.symbols
    args = [s[Role.STATE], s[Role.ALGEBRAIC], s[Role.INPUT], s[Role.PARAMETER]]
    fresh = ca.Function("f", args, list(other.evaluate_symbolic(*args)))
    vec: list[Any] = [
        other.vector(Role.STATE, x),
        other.vector(Role.ALGEBRAIC, z),
        other.vector(Role.INPUT, u),
        other.parameter_vector(),
    ]
    for a, b in zip(fresh(*vec), other.function(*vec), strict=True):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


class Mine(Lyophilizer):
    """A model class of a plugin's (here: a test's) own."""


def test_a_class_of_anyone_elses_builds_its_own() -> None:
    base = build_model(PLANT)
    a, b = Mine(base.parameter_set), Mine(base.parameter_set)
    assert a.function is not b.function and a.function is not base.function
