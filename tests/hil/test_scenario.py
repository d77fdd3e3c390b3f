"""Scenario files are the HIL's (hil.scenario): they load with every name checked against
their plant model, and their errors read as every config error does (issue 20): one plain
sentence at file:line:column, a "did you mean", the value quoted briefly, a file of the wrong
kind named as the kind it is. The controller never validates a scenario
(tests/controller/runtime/test_check_config.py)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from controller.configfile import parse
from controller.errors import ConfigError, Problem
from hil.cli import main as hil_main
from hil.scenario import ScenarioConfig, load_scenario

ROOT = Path(__file__).resolve().parents[2]
CONFIGS = ROOT / "configs"
SCENARIOS = sorted((CONFIGS / "scenarios").glob("*.yaml"))


def _scenario(tmp_path: Path) -> dict[str, Any]:
    data = yaml.safe_load((CONFIGS / "scenarios" / "cstr-mpc.yaml").read_text())
    for key in ("plant", "controller"):
        data[key] = str((CONFIGS / "scenarios" / data[key]).resolve())
    return data


def _write(path: Path, data: dict[str, Any]) -> str:
    text = yaml.safe_dump(data, sort_keys=False)
    path.write_text(text, encoding="utf-8")
    return text


def _at(text: str, needle: str) -> tuple[int, int]:
    """1-based line and column of the first ``needle`` in ``text``."""
    offset = text.index(needle)
    return text.count("\n", 0, offset) + 1, offset - (text.rfind("\n", 0, offset) + 1) + 1


def _only(exc: pytest.ExceptionInfo[ConfigError], location: str | None = None) -> Problem:
    problems = [p for p in exc.value.problems if location is None or p.location == location]
    assert len(problems) == 1, exc.value.problems
    return problems[0]


@pytest.mark.parametrize("path", SCENARIOS, ids=[p.name for p in SCENARIOS])
def test_every_shipped_scenario_loads(path: Path) -> None:
    sc = load_scenario(path)
    assert (sc.controller is None) != (sc.recipe is None)


def test_every_name_is_checked_against_the_plant_model(tmp_path: Path) -> None:
    data = _scenario(tmp_path)
    data["true_plant"]["noise_std"] = {"C_b_mesa": 0.01}
    data["faults"] = [{"kind": "sensor_bias", "target": "Tr", "start": 0.1, "magnitude": 1.0}]
    data["initial_inputs"] = {"F": 1e9}
    path = tmp_path / "scenario.yaml"
    _write(path, data)
    with pytest.raises(ConfigError) as exc:
        load_scenario(path)
    where = {p.location: p.message for p in exc.value.problems}
    assert where["true_plant.noise_std.C_b_mesa"].startswith(
        "unknown measured output 'C_b_mesa'; did you mean 'C_b_meas'?"
    )
    assert where["faults.0.target"].startswith("unknown measured output 'Tr' for a sensor_bias")
    assert where["initial_inputs.F"].startswith("outside the controller's input limits")


def test_a_misspelt_key_gets_its_line_and_a_suggestion(tmp_path: Path) -> None:
    data = _scenario(tmp_path)
    data["durration"] = data.pop("duration")
    path = tmp_path / "scenario.yaml"
    text = _write(path, data)
    with pytest.raises(ConfigError) as exc:
        load_scenario(path)
    line, col = _at(text, "durration:")
    problem = _only(exc, "durration")
    assert str(problem) == (
        f"{path}:{line}:{col}: durration: unknown key 'durration'; did you mean 'duration'? "
        "(one of 13 allowed) (got 0.5)"
    )
    assert len(exc.value.problems) == 1  # not also "missing required key 'duration'"


def test_a_site_file_given_as_a_scenario_is_named_a_site_file() -> None:
    site = CONFIGS / "sites" / "cstr-modbus.yaml"
    with pytest.raises(ConfigError) as exc:
        load_scenario(site)
    line, col = _at(site.read_text(), "connection:")
    assert str(_only(exc)) == (
        f"{site}:{line}:{col}: this is a site file (see configs/sites/), not a scenario file; "
        "use it with `pharmatwin run FILE --mode shadow|closed-loop` or `pharmatwin tags read "
        "FILE` or `pharmatwin-hil serve FILE`; check it with `pharmatwin check-config FILE`"
    )


def test_the_simulate_command_names_a_wrong_kind_file(capsys: pytest.CaptureFixture[str]) -> None:
    assert hil_main(["simulate", str(CONFIGS / "tags" / "cstr.yaml"), "--quiet"]) == 2
    out = capsys.readouterr().out
    assert "this is a tag map file (see configs/tags/), not a scenario file" in out
    assert "name it in the 'tags:' key of a site" in out and "Traceback" not in out


def test_a_whole_document_is_never_echoed(tmp_path: Path) -> None:
    data = _scenario(tmp_path)
    data["recipe"] = {"table": [{"t": 0.0, "inputs": {"F": 10.0, "Q_dot": -100.0}}]}
    data["description"] = "a long description that must not appear in the error " * 3
    with pytest.raises(ConfigError) as exc:
        parse(ScenarioConfig, data, "scenario.yaml")
    problem = _only(exc)
    assert problem.message == "give exactly one of 'controller' (closed loop) or 'recipe'"
    assert "long description" not in str(exc.value)
    assert str(problem).endswith(
        "(got a mapping of 8 keys (name, description, plant, controller, ...))"
    )
