"""A scenario whose disturbances would take an input outside its physical (actuator) range is
refused at load (hil.scenario.disturbance_problems), with the file, the key, the offset and
the offsets allowed there.

Open loop: the recipe (clipped to the physical range, as safety does) plus the disturbances
acting together must stay in range. Closed loop: the setpoints are not known statically, so
only an offset larger than the whole range is refused; the true plant faults on the rest at
run time (tests/hil/test_input_validity_plant.py). The refusals failed on the code that
accepted /tmp/rev-hil/s1/dist.yaml (a shelf at -80 degC, a chamber at -0.05 Torr for 2 h).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml
from lyo_cases import disturbed_campaign

from controller.configfile import parse
from controller.errors import ConfigError
from controller.plantfile import build_model
from hil.campaign.spec import load_campaign
from hil.cli import main as hil_main
from hil.scenario import ScenarioConfig, check_scenario, load_scenario

ROOT = Path(__file__).resolve().parents[2]
SCENARIOS = ROOT / "configs" / "scenarios"


def _recipe_scenario(tmp_path: Path, disturbances: list[dict[str, Any]]) -> Path:
    data = yaml.safe_load((SCENARIOS / "lyophilizer-nominal-recipe.yaml").read_text())
    data["plant"] = str((SCENARIOS / data["plant"]).resolve())
    data.setdefault("true_plant", {})["disturbances"] = disturbances
    path = tmp_path / "dist.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False), encoding="utf-8")
    return path


def _closed_loop(tmp_path: Path, disturbances: list[dict[str, Any]]) -> Path:
    data = yaml.safe_load((SCENARIOS / "lyophilizer-mpc.yaml").read_text())
    for key in ("plant", "controller"):
        if key in data:
            data[key] = str((SCENARIOS / data[key]).resolve())
    data.setdefault("true_plant", {})["disturbances"] = disturbances
    path = tmp_path / "closed.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False), encoding="utf-8")
    return path


def _problems(path: Path) -> dict[str, str]:
    with pytest.raises(ConfigError) as info:
        load_scenario(path)
    return {p.location: str(p) for p in info.value.problems}


def test_the_reviewers_scenario_is_refused_at_load(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = _recipe_scenario(
        tmp_path,
        [
            {"input": "Tsh", "start": 1.0, "end": 3.0, "offset": -100.0},
            {"input": "Pch", "start": 1.0, "end": 3.0, "offset": -0.2},
        ],
    )
    found = _problems(path)
    assert set(found) == {"true_plant.disturbances.0.offset", "true_plant.disturbances.1.offset"}
    tsh = found["true_plant.disturbances.0.offset"]
    assert str(path) in tsh and "-100" in tsh and "-80 degC" in tsh
    assert "physical (actuator) range [-45, 120] degC" in tsh and "allowed there" in tsh
    assert "\n" not in tsh
    pch = found["true_plant.disturbances.1.offset"]
    assert "-0.05 Torr" in pch and "[0.03, 0.5] Torr" in pch
    assert hil_main(["check-config", str(path)]) != 0
    assert "true_plant.disturbances.0.offset" in capsys.readouterr().out


def test_an_offset_during_the_shelf_ramp_is_judged_against_the_ramp(tmp_path: Path) -> None:
    """-15 degC in the first half hour: the recipe's shelf starts at -35 degC there."""
    found = _problems(
        _recipe_scenario(tmp_path, [{"input": "Tsh", "start": 0.0, "end": 0.5, "offset": -15.0}])
    )
    assert "-50 degC" in found["true_plant.disturbances.0.offset"]


def test_overlapping_disturbances_add_up(tmp_path: Path) -> None:
    """-40 degC twice on a 20 degC shelf: each alone leaves -20 degC, together -60 degC."""
    dist = [
        {"input": "Tsh", "start": 1.0, "end": 3.0, "offset": -40.0},
        {"input": "Tsh", "start": 2.0, "end": 4.0, "offset": -40.0},
    ]
    found = _problems(_recipe_scenario(tmp_path, dist))
    assert list(found) == ["true_plant.disturbances.0.offset"]
    assert "-80 degC on Tsh from t=2 to 3 h" in found["true_plant.disturbances.0.offset"]


def test_disturbances_that_stay_in_range_or_never_act_load(tmp_path: Path) -> None:
    dist = [
        {"input": "Tsh", "start": 1.0, "end": 3.0, "offset": -10.0},
        {"input": "Pch", "start": 0.5, "offset": 0.1},
        {"input": "Tsh", "start": 1000.0, "offset": -500.0},  # after the scenario's end
    ]
    sc = load_scenario(_recipe_scenario(tmp_path, dist))
    assert len(sc.true_plant.disturbances) == 3


def test_closed_loop_refuses_only_an_offset_larger_than_the_range(tmp_path: Path) -> None:
    found = _problems(_closed_loop(tmp_path, [{"input": "Tsh", "start": 0.5, "offset": 170.0}]))
    text = found["true_plant.disturbances.0.offset"]
    assert "every value of Tsh" in text and "at most 165 degC" in text
    sc = load_scenario(_closed_loop(tmp_path, [{"input": "Tsh", "start": 0.5, "offset": 160.0}]))
    assert sc.true_plant.disturbances[0].offset == 160.0  # the run-time check decides


def test_a_caller_whose_controller_drives_judges_only_the_width(tmp_path: Path) -> None:
    """``recipe_drives=False`` (a site's controller drives, the recipe is the PLC's fallback):
    the recipe's values are not what the plant gets, only the width is judged."""
    path = _recipe_scenario(tmp_path, [{"input": "Tsh", "start": 1.0, "offset": -100.0}])
    with pytest.raises(ConfigError):
        load_scenario(path)
    sc = yaml.safe_load(path.read_text())
    config = parse(ScenarioConfig, sc, str(path))
    model = build_model(Path(sc["plant"]))
    assert check_scenario(config, model, str(path), recipe_drives=False) == []
    assert check_scenario(config, model, str(path))  # the default: the recipe drives


def test_a_campaign_case_whose_disturbance_overdrives_the_local_recipe_is_refused(
    tmp_path: Path,
) -> None:
    """+160 degC on the shelf of the lyophilizer site: its PLC's local recipe reaches
    20 degC, so the shelf would be at 180 degC whenever the PLC runs it."""
    heater = [{"input": "Tsh", "start": 0.2, "end": 2.0, "offset": 160.0}]
    path = disturbed_campaign(tmp_path, "overdrive", heater, duration=2.0)
    with pytest.raises(ConfigError) as info:
        load_campaign(path)
    (problem,) = info.value.problems
    assert problem.location == "true_plant.disturbances.0.offset"
    assert "180 degC" in problem.message and "[-45, 120] degC" in problem.message
