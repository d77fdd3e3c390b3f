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
OR_TEXT = "is not a number; allowed: a number, or text in quotes"  # a union taking text too
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


# a review found holes: unions with a member for text, and a model's short form
@pytest.mark.parametrize(
    ("schema", "data", "key", "message"),
    [
        ("hil.design_space_spec:Limit", {"upper": True}, "upper", f"{FLAG} {OR_TEXT}"),
        ("controller.config:MinTime",
         {"mode": "free_end", "expression": "Lck", "target": True}, "target", f"{FLAG} {OR_TEXT}"),
        ("controller.config:RobustSpec", {"parameters": {"S_in": [200.0, "180", 220.0]}},
         "parameters.S_in.1", f"'180' {STR} {NUMBER}"),
        ("hil.campaign.schema:MonteCarlo", {"draws": 4, "parameters": {"R0": ["0.5", 3.0]}},
         "parameters.R0.low", f"'0.5' {STR} {NUMBER}"),
    ],
)  # fmt: skip
def test_a_union_or_a_short_form_takes_no_flag_or_quoted_number(
    schema: str, data: object, key: str, message: str
) -> None:
    import importlib

    from controller.configfile import parse

    module, name = schema.split(":")
    model = getattr(importlib.import_module(module), name)
    with pytest.raises(ConfigError) as info:
        parse(model, data, "file.yaml")  # type: ignore[arg-type]
    problems = {p.location: p.message for p in info.value.problems}
    assert problems.get(key) == message, problems


@pytest.mark.parametrize(
    ("schema", "data"),
    [
        ("hil.design_space_spec:Limit", {"upper": "T_crit"}),  # a parameter's name
        ("controller.config:RobustSpec", {"parameters": {"S_in": "range"}}),
        ("hil.campaign.schema:MonteCarlo", {"draws": 4, "parameters": {"R0": [0.5, 3.0]}}),
    ],
)
def test_text_a_union_takes_as_text_and_numbers_still_load(schema: str, data: object) -> None:
    import importlib

    from controller.configfile import parse

    module, name = schema.split(":")
    parse(getattr(importlib.import_module(module), name), data, "file.yaml")  # type: ignore[arg-type]


def test_a_signed_number_with_a_leading_dot_is_a_number(tmp_path: Path) -> None:
    """``-.5`` (a float in YAML 1.2, a string in PyYAML's YAML 1.1) was refused as a string."""
    from controller.configfile import read_yaml

    path = tmp_path / "v.yaml"
    path.write_text("a: -.5\nb: +.5\nc: .5e3\nd: 5\ne: '-.5'\nf: 0815\ng: 08\n", encoding="utf-8")
    got = read_yaml(path)
    assert got == {"a": -0.5, "b": 0.5, "c": 500.0, "d": 5, "e": "-.5", "f": "0815", "g": "08"}
    assert isinstance(got["d"], int)  # and a user named 0815 is not user "815.0" (a review)


def test_an_ipopt_option_takes_no_flag(tmp_path: Path) -> None:
    path = _controller(tmp_path, "horizon: 20", "horizon: 20\nipopt: {warm_start_init_point: yes}")
    text = "is not a number; allowed: a number, or text in quotes"  # the union takes text too
    assert _problems(path).get("ipopt.warm_start_init_point") == f"{FLAG} {text}"
    fine = _controller(tmp_path, "horizon: 20", "horizon: 20\nipopt: {mu_strategy: adaptive}")
    assert load_controller(fine)[0].ipopt == {"mu_strategy": "adaptive"}


def test_a_leading_zero_is_no_octal_and_a_key_stays_text(tmp_path: Path) -> None:
    """A review: ``horizon: 010`` ran 8 intervals (YAML 1.1's octal); a factor level named
    ``1e-3:`` became the number 0.001 once exponents were numbers."""
    problems = _problems(_controller(tmp_path, "horizon: 20", "horizon: 010"))
    assert problems["horizon"] == (
        "'010' (text: YAML reads digits with a leading zero as text) is not a number; allowed: "
        "a number, written without quotes, without a leading zero"
    )
    from controller.configfile import read_yaml

    path = tmp_path / "k.yaml"
    path.write_text("1e-3: a\nlevels: {-.5: b}\nv: 1e-3\n", encoding="utf-8")
    assert read_yaml(path) == {"1e-3": "a", "levels": {"-.5": "b"}, "v": 0.001}
