"""A scenario's true-plant initial state (and initial inputs) must lie in the validity domain.

Before: ``true_plant.initial_state: {C_a: -1.0}`` passed check-config, and ``simulate``
failed at t = 0 with "true plant left its validity domain". Now the loader refuses it with
the file, the key, the value and the range, as check-config does. Each refusal here failed on
that code.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from controller.errors import ConfigError
from controller.plantfile import build_model
from hil.cli import main as hil_main
from hil.scenario import load_scenario

ROOT = Path(__file__).resolve().parents[2]
CONFIGS = ROOT / "configs"
SCENARIOS = CONFIGS / "scenarios"


def _scenario(tmp_path: Path, base: str, true_plant: dict[str, Any], **changes: Any) -> Path:
    data = yaml.safe_load((SCENARIOS / base).read_text())
    for key in ("plant", "controller"):
        if key in data:
            data[key] = str((SCENARIOS / data[key]).resolve())
    data["true_plant"] = {**data.get("true_plant", {}), **true_plant}
    data.update(changes)
    path = tmp_path / "scenario.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False), encoding="utf-8")
    return path


def _problems(path: Path) -> dict[str, str]:
    with pytest.raises(ConfigError) as info:
        load_scenario(path)
    assert all(p.file == str(path) for p in info.value.problems)
    return {p.location: str(p) for p in info.value.problems}


def test_the_reviewers_initial_state_is_refused_at_load(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = _scenario(tmp_path, "cstr-mpc.yaml", {"initial_state": {"C_a": -1.0}})
    found = _problems(path)
    assert set(found) == {"true_plant.initial_state.C_a"}
    text = found["true_plant.initial_state.C_a"]
    assert (
        "C_a = -1 mol/L" in text
        and "validity domain [0, " in text
        and "allowed: 0 mol/L or more" in text
    )
    assert hil_main(["check-config", str(path)]) == 1
    assert "true_plant.initial_state.C_a" in capsys.readouterr().out
    code = hil_main(["simulate", str(path), "--out", str(tmp_path / "out")])
    out = capsys.readouterr()
    text = out.out + out.err
    assert code == 2, text
    assert "true_plant.initial_state.C_a" in text and "left its validity domain" not in text
    assert "Traceback" not in text


def test_a_start_past_the_bound_of_the_scenarios_own_parameters_is_refused(
    tmp_path: Path,
) -> None:
    """Lck <= Lpr0 with the true plant's parameters (a smaller fill), not the plant file's."""
    model = build_model(CONFIGS / "plants" / "lyophilizer.yaml")
    small = model.parameter_set.with_values({"Vfill": 1.0}).values()
    lck = (float(model.lpr0(small)) + float(model.lpr0(model.parameter_set.values()))) / 2
    path = _scenario(
        tmp_path,
        "lyophilizer-nominal-recipe.yaml",
        {"parameters": {"Vfill": 1.0}, "initial_state": {"Lck": lck}},
    )
    found = _problems(path)
    assert set(found) == {"true_plant.initial_state.Lck"}
    assert "Lpr0" in found["true_plant.initial_state.Lck"]
    ok = _scenario(tmp_path, "lyophilizer-nominal-recipe.yaml", {"initial_state": {"Lck": lck}})
    assert load_scenario(ok).true_plant.initial_state == {"Lck": lck}


def test_initial_inputs_outside_the_true_plants_range_are_refused_in_closed_loop(
    tmp_path: Path,
) -> None:
    """The controller's limits are within its own plant file's range; the scenario's plant
    file may narrow the range (``bounds``): the true plant's is checked too."""
    plant = yaml.safe_load((CONFIGS / "plants" / "cstr.yaml").read_text())
    plant["bounds"] = {"F": [5.0, 50.0]}
    plant["nominal_inputs"]["F"] = 18.83
    (tmp_path / "narrow.yaml").write_text(yaml.safe_dump(plant, sort_keys=False))
    path = _scenario(
        tmp_path,
        "cstr-mpc.yaml",
        {},
        plant=str(tmp_path / "narrow.yaml"),
        initial_inputs={"F": 80.0},
    )
    found = _problems(path)
    assert set(found) == {"initial_inputs.F"}
    assert "[5, 50]" in found["initial_inputs.F"] and "80" in found["initial_inputs.F"]


def test_initial_inputs_outside_the_controllers_limits_still_say_so(tmp_path: Path) -> None:
    path = _scenario(tmp_path, "cstr-mpc.yaml", {}, initial_inputs={"F": 1e9})
    found = _problems(path)
    assert set(found) == {"initial_inputs.F"}
    assert "controller's input limits [5, 100]" in found["initial_inputs.F"]


def test_a_plant_file_start_the_scenarios_parameters_put_outside_is_refused(
    tmp_path: Path,
) -> None:
    """The plant file's Lck is inside with its own fill, outside with the scenario's."""
    model = build_model(CONFIGS / "plants" / "lyophilizer.yaml")
    small = float(model.lpr0(model.parameter_set.with_values({"Vfill": 1.0}).values()))
    plant = yaml.safe_load((CONFIGS / "plants" / "lyophilizer.yaml").read_text())
    plant["initial_state"]["Lck"] = 1.2 * small  # Lpr0 of the 2 mL fill is twice as thick
    (tmp_path / "started.yaml").write_text(yaml.safe_dump(plant, sort_keys=False))
    path = _scenario(
        tmp_path,
        "lyophilizer-nominal-recipe.yaml",
        {"parameters": {"Vfill": 1.0}},
        plant=str(tmp_path / "started.yaml"),
    )
    found = _problems(path)
    assert set(found) == {"true_plant.parameters"}
    assert "plant file's initial state" in found["true_plant.parameters"]
    assert "Lpr0" in found["true_plant.parameters"]
