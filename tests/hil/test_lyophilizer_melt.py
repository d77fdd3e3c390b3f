"""The freeze dryer's true plant stops when the ice at the vial bottom melts (Tbot > 0 degC).

The equations assume a frozen layer from the sublimation front down to the vial bottom, its
warmest point. The old plant bounded only the front (Tsub <= 0 degC): at a shelf of 120 degC
and 0.3 Torr, Tbot passed 0 degC at t = 0.90 h and the plant carried on to the Tsub fault at
1.35 h. Each test here failed on that code.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from controller.plantfile import build_model
from hil.plant_runner import PlantDomainError, PlantRunner

PLANTS = Path(__file__).resolve().parents[2] / "configs" / "plants"
HOT = {"Tsh": 120.0, "Pch": 0.3}


def _run_to_fault(plant: PlantRunner) -> PlantDomainError:
    with pytest.raises(PlantDomainError) as info:
        for _ in range(400):
            plant.advance(HOT)
    return info.value


@pytest.mark.parametrize("lookahead", [1, 5])
def test_tbot_above_zero_is_a_plant_fault_at_its_own_step(lookahead: int) -> None:
    plant = PlantRunner(build_model(PLANTS / "lyophilizer.yaml"), 0.05, lookahead=lookahead)
    fault = _run_to_fault(plant).fault
    (v,) = fault.violations
    assert (v.name, v.upper, v.unit) == ("Tbot", 0.0, "degC") and v.value > 0.0
    assert fault.t == pytest.approx(0.9)  # the first step that ends with Tbot > 0
    assert "meltback" in fault.describe()
    truth = plant.true_state()
    assert truth.outputs["Tbot"] == v.value  # kept as it was, never corrected to 0
    assert truth.algebraic["Tsub"] < 0.0  # the front itself is still ice
    assert plant.fault is fault and plant.t == fault.t
    with pytest.raises(PlantDomainError):
        plant.advance({"Tsh": -40.0, "Pch": 0.1})  # a stopped plant stays stopped


def test_every_step_before_the_fault_kept_the_bottom_frozen() -> None:
    plant = PlantRunner(build_model(PLANTS / "lyophilizer.yaml"), 0.05)
    tbots = []
    with pytest.raises(PlantDomainError):
        for _ in range(400):
            tbots.append(plant.true_state().outputs["Tbot"])
            plant.advance(HOT)
    assert max(tbots) <= 0.0 and plant.true_state().outputs["Tbot"] > 0.0


def test_a_drift_that_melts_the_bottom_is_a_fault_from_the_next_step() -> None:
    """A poorer ice conductivity (k_ice / 4) warms the bottom past 0 degC at once."""
    plant = PlantRunner(build_model(PLANTS / "lyophilizer.yaml"), 0.05)
    for _ in range(16):  # t = 0.8 h: Tbot just below 0 degC
        plant.advance(HOT)
    assert -3.0 < plant.true_state().outputs["Tbot"] < 0.0
    plant.set_parameters({"k_ice": plant.parameters["k_ice"] / 4})
    assert plant.fault is not None and plant.fault.violations[0].name == "Tbot"
    with pytest.raises(PlantDomainError):
        plant.advance(HOT)


def test_the_true_state_after_a_step_is_the_models_own_evaluation() -> None:
    """The domain's look at Tbot after a step is reused by true_state: same numbers as the
    model's evaluation at the same point, also after a parameter change."""
    model = build_model(PLANTS / "lyophilizer.yaml")
    plant = PlantRunner(model, 0.05)
    for change in ({}, {"KC": 3.0e-4}):
        plant.set_parameters(change)
        plant.advance({"Tsh": 0.0, "Pch": 0.15})
        truth = plant.true_state()
        ev = model.evaluate(truth.states, truth.inputs, truth.algebraic, plant.parameters)
        assert truth.outputs == pytest.approx(ev.outputs, rel=1e-12)
        assert truth.expressions == pytest.approx(ev.expressions, rel=1e-12)
