"""The true plant's functions are built once per shipped model kind and shared between
plants with other parameter values (:mod:`hil.plant_functions`); a plugin's model is not
shared, since nothing tells that its equations take parameters from ``p`` alone."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from controller.plantfile import build_model
from hil.plant_functions import plant_functions, shared
from hil.plant_runner import PlantRunner
from plant_models import PlantModel, Role
from plant_models.cstr import VanDeVusseCSTR

PLANTS = Path(__file__).resolve().parents[2] / "configs" / "plants"
MODELS = ["bioreactor", "crystallizer", "cstr", "lyophilizer"]


def perturbed(model: PlantModel, factor: float) -> PlantModel:
    """The same kind of model with every parameter value scaled by ``factor``."""
    values = {n: v * factor for n, v in model.parameters.items()}
    return type(model)(model.parameter_set.with_values(values), smooth=model.smooth)


def point(model: PlantModel) -> tuple[np.ndarray, ...]:
    x = model.vector(Role.STATE, model.initial_state)
    z = model.vector(Role.ALGEBRAIC, model.initial_algebraic)
    return x, z, model.vector(Role.INPUT, model.nominal_inputs), model.parameter_vector()


def evaluated(fn: Any, *args: Any) -> list[bytes]:
    return [np.asarray(r, dtype=float).tobytes() for r in fn(*args)]


@pytest.mark.parametrize("name", MODELS)
def test_a_shipped_models_shared_functions_are_its_own_at_other_parameter_values(
    name: str,
) -> None:
    base = build_model(PLANTS / f"{name}.yaml")
    other = perturbed(base, 1.01)
    assert shared(other)
    fns = plant_functions(base)
    assert plant_functions(other) is fns  # built once for the kind
    x, z, u, p = point(other)  # the other model's own parameter values, through p
    assert evaluated(fns.function, x, z, u, p) == evaluated(other.function, x, z, u, p)
    h = 1e-3
    fresh = other.stepper()
    assert evaluated(fns.stepper, x, z, u, u, p, h) == evaluated(fresh, x, z, u, u, p, h)
    assert fns.expression_names == other.expression_names
    smooth = build_model(PLANTS / f"{name}.yaml", smooth=True)
    assert plant_functions(smooth) is not fns  # smoothing changes the equations


class BakedCSTR(VanDeVusseCSTR):
    """A plugin-like model that breaks the contract: it reads ``T_in`` from its parameter
    data, not from ``p`` (sharing its functions would give every plant the first one's)."""

    def ode(self, x: Mapping[str, Any], z: Any, u: Mapping[str, Any], p: Any) -> dict[str, Any]:
        out = super().ode(x, z, u, p)
        out["T_R"] = out["T_R"] + 0.0 * p["T_in"] + self.parameters["T_in"]
        return out


def test_a_plugins_model_gets_functions_built_for_it() -> None:
    base = build_model(PLANTS / "cstr.yaml")
    first = BakedCSTR(base.parameter_set)
    second = perturbed(first, 1.5)
    assert not shared(second)
    x, z, u, p = point(second)
    own = plant_functions(second)
    # what sharing would have done: the first model's equations, wrong for the second
    assert evaluated(plant_functions(first).function, x, z, u, p) != evaluated(
        second.function, x, z, u, p
    )
    assert own is not plant_functions(first)
    assert evaluated(own.function, x, z, u, p) == evaluated(second.function, x, z, u, p)
    plant = PlantRunner(second, 0.005)
    y = np.asarray(second.function(x, z, u, p)[2], dtype=float).ravel()
    assert list(plant.true_state().outputs.values()) == y.tolist()
