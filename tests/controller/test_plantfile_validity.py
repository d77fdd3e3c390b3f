"""A plant file's initial state and nominal inputs must lie in the model's validity domain.

The domain is where the equations hold (``Variable.lower/upper``, an input's actuator range,
and the bounds that depend on the parameters: the freeze dryer's Lck <= Lpr0). Before: a
plant file with ``initial_state: {C_a: -0.8}`` or ``nominal_inputs: {F: 500}`` (range
[5, 100] 1/h) gave ``ok (plant)`` from check-config; the true plant then refused to start.
Every refusal here failed on that code.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from controller.errors import ConfigError
from controller.plantfile import build_model, load_parameter_set
from hil.cli import main as hil_main

PLANTS = Path(__file__).resolve().parents[2] / "configs" / "plants"


def _plant(tmp_path: Path, name: str, key: str, values: dict[str, Any]) -> Path:
    data = yaml.safe_load((PLANTS / f"{name}.yaml").read_text())
    data[key] = {**data[key], **values}
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False), encoding="utf-8")
    return path


def _problem(path: Path) -> tuple[str, str]:
    with pytest.raises(ConfigError) as info:
        load_parameter_set(path)
    (problem,) = info.value.problems
    assert problem.file == str(path)
    return problem.location, str(problem)


def test_an_initial_state_outside_the_domain_is_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = _plant(tmp_path, "cstr", "initial_state", {"C_a": -0.8})
    where, text = _problem(path)
    assert where == "initial_state.C_a"
    assert "C_a = -0.8 mol/L" in text and "validity domain [0, " in text
    assert "allowed: 0 mol/L or more" in text
    assert hil_main(["check-config", str(path)]) == 1
    out = capsys.readouterr()
    assert "initial_state.C_a" in out.out and "Traceback" not in out.out + out.err


def test_a_nominal_input_outside_its_actuator_range_is_refused(tmp_path: Path) -> None:
    path = _plant(tmp_path, "cstr", "nominal_inputs", {"F": 500.0})
    where, text = _problem(path)
    assert where == "nominal_inputs.F"
    assert "F = 500 1/h" in text and "[5, 100]" in text and "allowed: 5 to 100 1/h" in text


def test_a_bound_that_depends_on_the_parameters_is_checked(tmp_path: Path) -> None:
    model = build_model(PLANTS / "lyophilizer.yaml")
    lpr0 = float(model.lpr0(model.parameter_set.values()))
    assert lpr0 + 0.1 < model.variable("Lck").upper  # inside the static bound
    path = _plant(tmp_path, "lyophilizer", "initial_state", {"Lck": lpr0 + 0.1})
    where, text = _problem(path)
    assert where == "initial_state.Lck" and "Lpr0" in text


def test_a_plant_file_bound_override_is_the_domain_checked(tmp_path: Path) -> None:
    path = _plant(tmp_path, "cstr", "nominal_inputs", {"F": 60.0})
    data = yaml.safe_load(path.read_text())
    data["bounds"] = {"F": [5.0, 50.0]}
    path.write_text(yaml.safe_dump(data, sort_keys=False), encoding="utf-8")
    where, text = _problem(path)
    assert where == "nominal_inputs.F" and "[5, 50]" in text


@pytest.mark.parametrize("name", sorted(p.stem for p in PLANTS.glob("*.yaml")))
def test_every_shipped_plant_file_starts_inside_its_domain(name: str) -> None:
    assert load_parameter_set(PLANTS / f"{name}.yaml").model == name
