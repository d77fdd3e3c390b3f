"""A parameter outside the domain where the model's equations hold is refused, never run.

Before: a plant file or a scenario's ``true_plant`` with ``Ap: 0`` (the vial's inner area)
passed ``check-config`` and ``simulate`` crashed with ZeroDivisionError; ``R0: -1.5`` (a
negative dried-layer resistance) simulated to exit 0; and a drift that took the jacket's
heat-transfer coefficient below zero integrated on, reporting nothing. Now the plant file's
value and plausible range, the scenario's parameters and the true plant's parameters at run
time are checked against each model's ``parameter_domain``: a problem naming the parameter
at load, a plant fault (the plant stops, the fault says why) at run time.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from controller.errors import ConfigError
from controller.plantfile import build_model, load_parameter_set
from hil.cli import main as hil_main
from hil.plant_runner import PlantDomainError, PlantRunner
from plant_models import MODELS
from plant_models.domains import FRACTION, NON_NEGATIVE, POSITIVE, Interval

CONFIGS = Path(__file__).resolve().parents[2] / "configs"
PLANTS = CONFIGS / "plants"


def _plant(tmp_path: Path, name: str, **entries: dict[str, Any]) -> Path:
    data = yaml.safe_load((PLANTS / f"{name}.yaml").read_text())
    for key, change in entries.items():
        data["parameters"][key].update(change)
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def test_intervals_say_what_they_allow() -> None:
    assert POSITIVE.describe() == "> 0" and not POSITIVE.contains(0.0)
    assert NON_NEGATIVE.describe() == ">= 0" and NON_NEGATIVE.contains(0.0)
    assert FRACTION.describe() == "in [0, 1)" and not FRACTION.contains(1.0)
    assert Interval(-1.0, 2.0).describe() == "in [-1, 2]" and Interval(-1.0, 2.0).contains(2.0)


def test_every_shipped_plant_file_lies_inside_its_models_domain() -> None:
    for path in sorted(PLANTS.glob("*.yaml")):
        ps = load_parameter_set(path)  # raises on a problem
        assert MODELS[ps.model].parameter_domain, ps.model  # every model declares one


@pytest.mark.parametrize(
    ("name", "entry", "location", "allowed"),
    [
        ("lyophilizer", {"Ap": {"value": 0.0}}, "parameters.Ap.value", "> 0"),
        ("lyophilizer", {"cSolid": {"value": 1.0}}, "parameters.cSolid.value", "in [0, 1)"),
        ("cstr", {"Kw": {"range": [-100.0, 4500.0]}}, "parameters.Kw.range", ">= 0"),
        ("bioreactor", {"K_i": {"value": -0.5}}, "parameters.K_i.value", "> 0"),
    ],
)
def test_a_plant_file_outside_the_domain_is_refused_naming_the_parameter(
    tmp_path: Path, name: str, entry: dict[str, Any], location: str, allowed: str
) -> None:
    path = _plant(tmp_path, name, **entry)
    with pytest.raises(ConfigError) as exc:
        load_parameter_set(path)
    (problem,) = exc.value.problems
    assert (problem.file, problem.location) == (str(path), location)
    assert f"allowed: {allowed} (where the model's equations hold)" in problem.message


def test_a_scenario_whose_true_plant_leaves_the_domain_does_not_simulate(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data = yaml.safe_load((CONFIGS / "scenarios" / "lyophilizer-nominal-recipe.yaml").read_text())
    data["plant"] = str(PLANTS / "lyophilizer.yaml")
    data["true_plant"]["parameters"] = {"R0": -1.5}
    path = tmp_path / "scenario.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    code = hil_main(["simulate", str(path), "--out", str(tmp_path / "out")])
    out = capsys.readouterr()
    assert code == 2, out
    text = out.out + out.err
    assert "true_plant.parameters.R0" in text and "allowed: > 0" in text
    assert "Traceback" not in text
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())


def test_a_drift_out_of_the_domain_is_a_plant_fault_and_one_inside_is_not() -> None:
    model = build_model(PLANTS / "cstr.yaml")
    held = model.nominal_inputs
    plant = PlantRunner(model, 0.005)
    plant.advance(held)
    plant.set_parameters({"Kw": 1000.0})  # fouled, still a heat-transfer coefficient
    plant.advance(held)
    assert plant.fault is None
    with pytest.raises(PlantDomainError) as exc:
        plant.set_parameters({"Kw": -50.0})
    assert plant.fault is exc.value.fault
    (v,) = plant.fault.violations
    assert (v.name, v.value) == ("Kw", -50.0)
    assert "parameter Kw = -50 kJ/h/m^2/K is outside the domain where the model's equations " in (
        plant.fault.describe()
    )
    assert plant.parameters["Kw"] == 1000.0  # refused, not clipped nor half-applied
    with pytest.raises(PlantDomainError):
        plant.advance(held)  # the plant stays stopped
