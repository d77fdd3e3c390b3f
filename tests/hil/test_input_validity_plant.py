"""The true plant checks the inputs it integrates against their actuators' physical range.

An input (a disturbance included) outside the model's ``Variable.lower/upper`` for inputs is
where the equations no longer describe a real plant (a negative feed flow, a shelf at
-100 degC, a negative absolute pressure): a plant fault on the same path as a state's, naming
the input, its value and the range; the plant integrates nothing with it. Each test here
failed on the code that checked states and algebraic variables only (the bioreactor ran 3 h
at u = -0.5 L/h, the freeze dryer 1 h at Tsh = -100 degC, both with no fault).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from lyo_cases import disturbed_campaign

from controller.plantfile import build_model
from hil.campaign.execute import RunSettings, run_campaign
from hil.campaign.spec import load_campaign
from hil.plant_runner import PlantDomainError, PlantRunner
from hil.scenario import Disturbance

ROOT = Path(__file__).resolve().parents[2]
PLANTS = ROOT / "configs" / "plants"


def _lyo(dt: float = 0.1, **kwargs: object) -> PlantRunner:
    return PlantRunner(build_model(PLANTS / "lyophilizer.yaml"), dt, **kwargs)  # type: ignore[arg-type]


def test_a_negative_feed_flow_is_a_plant_fault_and_nothing_is_integrated() -> None:
    model = build_model(PLANTS / "bioreactor.yaml")
    plant = PlantRunner(model, 1.0, initial_state={"S": 5.0})
    with pytest.raises(PlantDomainError) as info:
        plant.advance({"u": -0.5})
    (v,) = info.value.fault.violations
    assert (v.name, v.value, v.lower, v.upper, v.unit) == ("u", -0.5, 0.0, 0.2, "L/h")
    assert "actuator's physical range" in v.describe()
    assert plant.fault is info.value.fault and plant.fault.t == 0.0 and plant.t == 0.0
    assert plant.true_state().states["V"] == 120.0  # no volume drained by a negative feed
    with pytest.raises(PlantDomainError):
        plant.advance({"u": 0.1})  # a stopped plant stays stopped


@pytest.mark.parametrize("lookahead", [1, 5])
def test_a_shelf_below_its_range_is_a_plant_fault_with_or_without_lookahead(
    lookahead: int,
) -> None:
    plant = _lyo(lookahead=lookahead)
    for _ in range(3):
        plant.advance({"Tsh": -30.0, "Pch": 0.15})
    with pytest.raises(PlantDomainError) as info:
        plant.advance({"Tsh": -100.0, "Pch": 0.15})
    (v,) = info.value.fault.violations
    assert (v.name, v.value, v.lower, v.upper) == ("Tsh", -100.0, -45.0, 120.0)
    assert info.value.fault.t == pytest.approx(0.3)
    assert "Tsh = -100 degC is below -45 degC" in info.value.fault.describe()


def test_a_disturbance_that_takes_an_input_out_of_range_faults_at_its_own_start() -> None:
    """-0.2 Torr on 0.15 Torr from t = 1 h: a negative absolute pressure, inside a 0.3 h
    step. The plant integrates up to 1 h exactly, then stops there."""
    dist = (Disturbance(input="Pch", start=1.0, end=3.0, offset=-0.2),)
    plant = _lyo(0.3, disturbances=dist)
    reference = _lyo(0.1)
    for _ in range(10):
        reference.advance({"Tsh": -20.0, "Pch": 0.15})
    with pytest.raises(PlantDomainError) as info:
        for _ in range(10):
            plant.advance({"Tsh": -20.0, "Pch": 0.15})
    fault = info.value.fault
    (v,) = fault.violations
    assert v.name == "Pch" and v.value == pytest.approx(-0.05) and v.lower == 0.03
    assert fault.t == 1.0 and plant.t == 1.0
    lck, ref = plant.true_state().states["Lck"], reference.true_state().states["Lck"]
    assert lck == pytest.approx(ref, rel=1e-5)  # the state at 1 h, nothing integrated after


def test_a_recipe_ramp_leaving_the_range_inside_a_step_is_a_fault() -> None:
    plant = _lyo(0.1)
    segments = [(0.0, 0.1, {"Tsh": 100.0, "Pch": 0.15}, {"Tsh": 130.0, "Pch": 0.15})]
    with pytest.raises(PlantDomainError) as info:
        plant.advance({"Tsh": 100.0, "Pch": 0.15}, segments=segments)
    (v,) = info.value.fault.violations
    assert v.name == "Tsh" and v.value == 130.0 and v.upper == 120.0


def test_inputs_at_the_ends_of_their_range_are_not_a_fault() -> None:
    plant = _lyo(0.05)
    plant.advance({"Tsh": -45.0, "Pch": 0.5})
    plant.advance({"Tsh": 120.0, "Pch": 0.03})
    bio = PlantRunner(build_model(PLANTS / "bioreactor.yaml"), 1.0)
    bio.advance({"u": 0.0})
    bio.advance({"u": 0.2})
    assert plant.fault is None and bio.fault is None


def test_initial_inputs_outside_their_range_refuse_the_plant() -> None:
    with pytest.raises(PlantDomainError, match=r"Pch = 0\.01 Torr is below 0\.03 Torr"):
        _lyo(initial_inputs={"Pch": 0.01})


def test_a_nan_input_is_a_plant_fault_not_an_integration() -> None:
    plant = _lyo()
    with pytest.raises(PlantDomainError) as info:
        plant.advance({"Tsh": float("nan"), "Pch": 0.15})
    (v,) = info.value.fault.violations
    assert v.name == "Tsh" and np.isnan(v.value)


def test_a_campaign_case_whose_disturbance_overdrives_the_chamber_is_an_error(
    tmp_path: Path,
) -> None:
    """A chamber leak of +0.35 Torr under the MPC: the PLC's local recipe (0.15 Torr) would
    stay in range, so the case loads, but the MPC's own setpoint (0.204 Torr) takes the
    chamber above 0.5 Torr: the case errors naming Pch, its value and its physical range,
    and the event is evidence."""
    leak = [{"input": "Pch", "start": 0.2, "end": 2.0, "offset": 0.35}]
    path = disturbed_campaign(tmp_path, "overdrive", leak, duration=1.0)
    out = tmp_path / "out"
    run_campaign(load_campaign(path), RunSettings(out=out, workers=1, progress=False))
    (result_file,) = (out / "cases").glob("*/result.json")
    result = json.loads(result_file.read_text())
    assert result["status"] == "error"
    assert "Pch" in result["error"] and "actuator's physical range" in result["error"]
    (event,) = json.loads((result_file.parent / "events.json").read_text())
    assert event["kind"] == "plant.validity"
    (v,) = event["violations"]
    assert v["variable"] == "Pch" and v["value"] > 0.5 and v["upper"] == 0.5
    assert event["t"] == pytest.approx(0.2)
