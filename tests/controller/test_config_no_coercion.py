"""A config value is never silently coerced into a number or a flag.

Seen by a reviewer: ``horizon: true`` loaded as a horizon of 1, ``sample_time: true`` as 1 h
(the only error shown was an unrelated RK4 one), ``weight: "100"`` and ``true_plant.seed:
true`` were taken. Each is now a problem at its key, with what is allowed; ``1e-4`` written
without a dot (a string in YAML 1.1) is a number, as in YAML 1.2.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from controller.controllerfile import load_controller
from controller.errors import ConfigError
from hil.scenario import load_scenario

ROOT = Path(__file__).resolve().parents[2]
NUMBER = "is not a number; allowed: a number, written without quotes"
FLAG, STR, TRACK = "true (a YAML true/false)", "(a string)", "objective.tracking.0"


def _controller(tmp_path: Path, old: str, new: str) -> Path:
    text = (ROOT / "configs" / "controllers" / "cstr.yaml").read_text(encoding="utf-8")
    text = text.replace("plant: ../plants/cstr.yaml", f"plant: {ROOT}/configs/plants/cstr.yaml")
    assert old in text
    path = tmp_path / "controller.yaml"
    path.write_text(text.replace(old, new, 1), encoding="utf-8")
    return path


def _problems(path: Path) -> dict[str, str]:
    with pytest.raises(ConfigError) as info:
        load_controller(path)
    return {p.location: p.message for p in info.value.problems}


@pytest.mark.parametrize(
    ("old", "new", "key", "message"),
    [
        ("horizon: 20", "horizon: true", "horizon", f"{FLAG} {NUMBER}"),
        ("sample_time: 0.005", "sample_time: true", "sample_time", f"{FLAG} {NUMBER}"),
        ("weight: 100.0,", 'weight: "100",', f"{TRACK}.weight", f"'100' {STR} {NUMBER}"),
    ],
)  # fmt: skip
def test_a_flag_or_a_quoted_number_is_no_number(
    tmp_path: Path, old: str, new: str, key: str, message: str
) -> None:
    problems = _problems(_controller(tmp_path, old, new))
    assert problems.get(key) == message, problems


def test_a_number_is_no_flag(tmp_path: Path) -> None:
    problems = _problems(
        _controller(tmp_path, "integrator_steps: 1}", "integrator_steps: 1, jit: 1}")
    )
    assert problems.get("solver.jit") == "1 is not a flag; allowed: true or false", problems


def test_a_word_that_is_no_number_keeps_its_own_message(tmp_path: Path) -> None:
    problems = _problems(_controller(tmp_path, "horizon: 20", "horizon: twenty"))
    assert "valid integer" in problems["horizon"], problems


def test_an_exponent_without_a_dot_is_a_number(tmp_path: Path) -> None:
    cfg, _ = load_controller(_controller(tmp_path, "tol: 1.0e-4", "tol: 1e-4"))
    assert cfg.solver.tol == 1e-4


def test_a_scenario_seed_that_is_a_flag_is_refused(tmp_path: Path) -> None:
    text = (ROOT / "configs" / "scenarios" / "cstr-mpc.yaml").read_text(encoding="utf-8")
    text = text.replace("../", f"{ROOT}/configs/")
    assert "seed: " in text
    lines = [
        line.replace(line.split("seed:")[1], " true") if "seed:" in line else line
        for line in text.splitlines()
    ]
    path = tmp_path / "scenario.yaml"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    with pytest.raises(ConfigError) as info:
        load_scenario(path)
    problems = {p.location: p.message for p in info.value.problems}
    assert problems.get("true_plant.seed") == f"true (a YAML true/false) {NUMBER}", problems
