"""The true plant checks the validity bounds that depend on its parameters (Lck <= Lpr0(p)).

A parameter that moves (a ``parameter_drift`` fault on the fill volume) can put the dried
cake thicker than the frozen product was: the equations no longer describe the vial. That is
a plant fault, never a normal end of the batch. Each test here failed on the plant that
checked the static bounds only.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from controller.plantfile import build_model
from hil.plant_runner import PlantDomainError, PlantRunner
from plant_models import Role

PLANTS = Path(__file__).resolve().parents[2] / "configs" / "plants"
HELD = {"Tsh": 0.0, "Pch": 0.15}


def test_a_parameter_change_past_the_state_is_a_fault_not_a_batch_end() -> None:
    model = build_model(PLANTS / "lyophilizer.yaml")
    plant = PlantRunner(model, 0.05)
    for _ in range(4):
        plant.advance(HELD)
    lck = plant.true_state().states["Lck"]
    assert plant.fault is None and 0 < lck < float(model.lpr0(plant.parameters))
    plant.set_parameters({"Vfill": 1e-3})  # Lpr0 is now far below the dried cake
    assert float(model.lpr0(plant.parameters)) < lck
    assert plant.fault is not None and plant.finished_at is None
    (v,) = plant.fault.violations
    assert v.name == "Lck" and v.value == lck and "Lpr0" in v.note
    with pytest.raises(PlantDomainError):
        plant.advance(HELD)


def test_a_start_outside_the_parameter_bound_is_refused() -> None:
    base = build_model(PLANTS / "lyophilizer.yaml")
    model = type(base)(base.parameter_set.with_values({"Vfill": 0.5}))
    p = dict(zip(model.parameter_names, model.parameter_vector().tolist(), strict=True))
    lpr0 = float(model.lpr0(p))
    with pytest.raises(PlantDomainError, match="Lpr0"):
        PlantRunner(model, 0.05, initial_state={"Lck": lpr0 + 0.1})


def test_a_change_that_leaves_the_state_inside_is_no_fault() -> None:
    model = build_model(PLANTS / "lyophilizer.yaml")
    plant = PlantRunner(model, 0.05)
    plant.advance(HELD)
    plant.set_parameters({"Vfill": 1.5})
    plant.advance(HELD)
    assert plant.fault is None and plant.finished_at is None


def test_the_quick_look_agrees_with_the_models_check_at_the_parameter_bound() -> None:
    model = build_model(PLANTS / "lyophilizer.yaml")
    plant = PlantRunner(model, 0.05)
    plant.set_parameters({"Vfill": 1.7})  # a new vector: the bounds follow it
    edge = float(model.lpr0(plant.parameters)) + 1e-6 * model.variable("Lck").scale
    z = model.vector(Role.ALGEBRAIC, model.initial_algebraic)
    for lck in (edge, np.nextafter(edge, np.inf), np.nextafter(edge, -np.inf)):
        found = model.validity_violations({"Lck": lck}, parameters=plant.parameters)
        assert plant._domain.holds(np.array([lck]), z) is (not found), lck
    past = np.nextafter(edge, np.inf)
    assert model.validity_violations({"Lck": past}, parameters=plant.parameters)
    assert not plant._domain.holds(np.array([past]), z)
