"""Tests of configuration loading (controller.configfile, plantfile, controllerfile): every
shipped file loads, and bad files fail with one ConfigError whose Problems each name the file,
the key path and the bad value."""

from __future__ import annotations

import re
from collections.abc import Iterable
from pathlib import Path

import pytest
import yaml

from controller.config import ControllerConfig
from controller.configfile import read_yaml
from controller.controllerfile import load_controller
from controller.errors import ConfigError, PharmaTwinError, Problem, brief
from controller.plantfile import build_model, load_parameter_set
from plant_models import MODELS, ParameterSet, PlantModel

ROOT = Path(__file__).resolve().parents[2]
CONFIGS = ROOT / "configs"
PLANT_FILES = sorted((CONFIGS / "plants").glob("*.yaml"))
CONTROLLER_FILES = sorted((CONFIGS / "controllers").glob("*.yaml"))


def _ids(paths: Iterable[Path]) -> list[str]:
    return [p.name for p in paths]


# ---------------------------------------------------------------------------------------------
# Every shipped file loads
# ---------------------------------------------------------------------------------------------
def test_config_folders_are_not_empty() -> None:
    assert PLANT_FILES, "no plant files found"
    assert CONTROLLER_FILES, "no controller files found"


@pytest.mark.parametrize("path", PLANT_FILES, ids=_ids(PLANT_FILES))
def test_every_plant_file_loads(path: Path) -> None:
    ps = load_parameter_set(path)
    assert isinstance(ps, ParameterSet)
    assert ps.model in MODELS
    assert ps.source == str(path)
    model = build_model(path)
    assert isinstance(model, MODELS[ps.model])


@pytest.mark.parametrize("path", CONTROLLER_FILES, ids=_ids(CONTROLLER_FILES))
def test_every_controller_file_loads(path: Path) -> None:
    cfg, model = load_controller(path)
    assert isinstance(cfg, ControllerConfig)
    assert isinstance(model, PlantModel)
    assert model.smooth  # the optimizer's copy
    assert set(cfg.inputs) == set(model.input_names)
    assert cfg.sample_time > 0


# ---------------------------------------------------------------------------------------------
# Helpers for the bad-file tests
# ---------------------------------------------------------------------------------------------
_MISSING = object()


def _write(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


def _problems(exc: pytest.ExceptionInfo[ConfigError]) -> dict[str, Problem]:
    problems = exc.value.problems
    by_loc = {p.location: p for p in problems}
    assert len(by_loc) == len(problems), f"duplicate locations in {problems}"
    return by_loc


def _expect(
    by_loc: dict[str, Problem],
    location: str,
    path: Path,
    value: object = _MISSING,
    message: str = "",
) -> None:
    assert location in by_loc, f"no problem at {location!r}; got {sorted(by_loc)}"
    problem = by_loc[location]
    assert problem.file == str(path)
    if value is not _MISSING:
        assert problem.value == value, problem
    assert message in problem.message, problem
    text = str(problem)  # the rendered line names file:line:column, location and the value
    assert problem.line is not None and problem.column is not None, problem
    assert text.startswith(f"{path}:{problem.line}:{problem.column}: {location}: "), text
    assert problem.value is None or brief(problem.value) in text


@pytest.fixture
def plant_copy(tmp_path: Path) -> Path:
    """A valid copy of the bioreactor plant file, for controller files to point at."""
    return _write(
        tmp_path / "bio_plant.yaml", (CONFIGS / "plants" / "bioreactor.yaml").read_text("utf-8")
    )


# ---------------------------------------------------------------------------------------------
# Plant files
# ---------------------------------------------------------------------------------------------
def test_plant_file_schema_problems_are_all_reported(tmp_path: Path) -> None:
    path = _write(
        tmp_path / "plant.yaml",
        """\
model: bioreactor
colour: red                                   # unknown key
parameters:
  mu_m: {value: fast, unit: 1/h}              # wrong type
  K_m: {value: 0.05, unit: g/L, flavour: x}   # unknown nested key
  K_i: {value: 5.0, unit: g/L}
  v: {value: 0.004, unit: 1/h}
  Y_p: {value: 1.2, unit: "-"}
  Y_x: {value: 0.5, unit: "-", range: [0.5, 0.3]}   # lower > upper
  S_in: {value: .inf, unit: g/L}              # not finite
initial_state: {X: 1.0, S: 0.5, P: 0.0, V: 120.0}
nominal_inputs: {u: [0.0]}                    # wrong type
""",
    )
    with pytest.raises(ConfigError) as exc:
        load_parameter_set(path)
    by_loc = _problems(exc)
    _expect(by_loc, "colour", path, "red", "unknown key")
    _expect(by_loc, "parameters.mu_m.value", path, "fast", "valid number")
    _expect(by_loc, "parameters.K_m.flavour", path, "x", "unknown key")
    _expect(by_loc, "parameters.Y_x", path, message="range lower 0.5 is above upper 0.3")
    bad_entry = by_loc["parameters.Y_x"].value
    assert isinstance(bad_entry, dict) and bad_entry["range"] == [0.5, 0.3]
    _expect(by_loc, "parameters.S_in.value", path, float("inf"), "finite")
    _expect(by_loc, "nominal_inputs.u", path, [0.0])
    assert set(by_loc) == {
        "colour",
        "parameters.mu_m.value",
        "parameters.K_m.flavour",
        "parameters.Y_x",
        "parameters.S_in.value",
        "nominal_inputs.u",
    }
    # the message of the one error lists every problem
    assert str(exc.value).startswith("6 configuration problems:")
    assert all(str(p) in str(exc.value) for p in exc.value.problems)


def test_plant_file_model_problems_are_all_reported(tmp_path: Path) -> None:
    path = _write(
        tmp_path / "plant.yaml",
        """\
model: bioreactor
parameters:
  mu_m: {value: 0.02, unit: 1/s}              # wrong unit
  K_m: {value: 0.05, unit: g/L}
  v: {value: 0.004, unit: 1/h}
  Y_p: {value: 1.2, unit: "-"}
  Y_x: {value: 0.5, unit: "-"}
  S_in: {value: 200.0, unit: g/L}
  bogus: {value: 1.0, unit: "-"}              # unknown parameter; K_i is missing
initial_state: {X: 1.0, S: 0.5, P: 0.0, W: 1.0}   # unknown state W; V missing
nominal_inputs: {u: 0.0}
bounds: {Z: [0.0, 1.0]}                       # unknown variable
""",
    )
    with pytest.raises(ConfigError) as exc:
        load_parameter_set(path)
    by_loc = _problems(exc)
    _expect(by_loc, "parameters.mu_m.unit", path, "1/s", "unit must be '1/h'")
    _expect(by_loc, "parameters.K_i", path, None, "missing parameter")
    _expect(by_loc, "parameters.bogus", path, "bogus", "unknown parameter")
    _expect(by_loc, "initial_state.W", path, "W", "unknown name")
    _expect(by_loc, "initial_state.V", path, None, "missing value")
    _expect(by_loc, "bounds.Z", path, "Z", "unknown name")
    assert len(by_loc) == 6


def test_plant_file_unknown_model(tmp_path: Path) -> None:
    path = _write(
        tmp_path / "plant.yaml",
        "model: reactor9000\nparameters: {}\ninitial_state: {}\nnominal_inputs: {}\n",
    )
    with pytest.raises(ConfigError) as exc:
        load_parameter_set(path)
    _expect(_problems(exc), "model", path, "reactor9000", "unknown model")


def test_plant_file_unordered_bounds_are_rejected(tmp_path: Path) -> None:
    text = (CONFIGS / "plants" / "bioreactor.yaml").read_text("utf-8")
    path = _write(tmp_path / "plant.yaml", text + "bounds: {X: [3.7, 0.0]}\n")
    with pytest.raises(ConfigError) as exc:
        load_parameter_set(path)
    _expect(_problems(exc), "bounds.X", path)


# ---------------------------------------------------------------------------------------------
# Controller files
# ---------------------------------------------------------------------------------------------
def test_controller_schema_problems_are_all_reported(tmp_path: Path, plant_copy: Path) -> None:
    path = _write(
        tmp_path / "ctrl.yaml",
        f"""\
plant: {plant_copy.name}
sample_time: -1.0                              # bad value
horizon: twenty                                # wrong type
horizn: 3                                      # unknown key
objective:
  economic:
    - {{expression: P, sense: maximise}}        # not an allowed value
inputs:
  u: {{lower: 0.2, upper: 0.0, max_move: 0.05}} # lower > upper
constraints:
  - {{expression: X, soft: true}}               # no bound
""",
    )
    with pytest.raises(ConfigError) as exc:
        load_controller(path)
    by_loc = _problems(exc)
    _expect(by_loc, "sample_time", path, -1.0, "greater than 0")
    _expect(by_loc, "horizon", path, "twenty", "valid integer")
    _expect(by_loc, "horizn", path, 3, "unknown key")
    _expect(by_loc, "objective.economic.0.sense", path, "maximise", "'maximize'")
    _expect(by_loc, "inputs.u", path, message="lower 0.2 is above upper 0.0")
    assert by_loc["inputs.u"].value == {"lower": 0.2, "upper": 0.0, "max_move": 0.05}
    _expect(by_loc, "constraints.0", path, message="give 'lower', 'upper' or both")
    assert len(by_loc) == 6


def test_controller_model_problems_are_all_reported(tmp_path: Path, plant_copy: Path) -> None:
    path = _write(
        tmp_path / "ctrl.yaml",
        f"""\
plant: {plant_copy.name}
sample_time: 1.0
horizon: 20
objective:
  economic:
    - {{expression: titre, sense: maximize}}    # unknown expression
  tracking:
    - {{variable: Xx, setpoint: 1.0}}           # unknown variable
inputs:
  w: {{lower: 0.0, upper: 0.2, max_move: 0.05}} # unknown input; u has no limits
state_bounds:
  Q: [0.0, 1.0]                                # unknown state
constraints:
  - {{expression: nope, upper: 1.0}}            # unknown expression
estimator:
  parameters: [S_inn]                          # unknown parameter
  measurement_noise_std: {{X: 0.1}}             # a state, not a measured output
""",
    )
    with pytest.raises(ConfigError) as exc:
        load_controller(path)
    by_loc = _problems(exc)
    _expect(by_loc, "objective.economic.0.expression", path, "titre", "unknown expression")
    _expect(by_loc, "objective.tracking.0.variable", path, "Xx", "unknown variable")
    _expect(by_loc, "inputs.w", path, "w", "unknown input 'w'; allowed: ['u']")
    _expect(by_loc, "inputs.u", path, None, "needs limits")
    _expect(by_loc, "state_bounds.Q", path, "Q", "unknown state")
    _expect(by_loc, "constraints.0.expression", path, "nope", "unknown expression")
    _expect(by_loc, "estimator.parameters.0", path, "S_inn", "unknown parameter")
    _expect(by_loc, "estimator.measurement_noise_std.X", path, "X", "unknown name")
    assert len(by_loc) == 8


def test_controller_limits_outside_physical_bounds(tmp_path: Path, plant_copy: Path) -> None:
    path = _write(
        tmp_path / "ctrl.yaml",
        f"""\
plant: {plant_copy.name}
sample_time: 1.0
horizon: 20
objective: {{economic: [{{expression: P, sense: maximize}}]}}
inputs:
  u: {{lower: -1.0, upper: 0.2, max_move: 0.05}}
""",
    )
    with pytest.raises(ConfigError) as exc:
        load_controller(path)
    _expect(_problems(exc), "inputs.u", path, [-1.0, 0.2], "physical bounds")


def test_controller_reports_problems_of_its_plant_file(tmp_path: Path) -> None:
    plant = _write(
        tmp_path / "plant.yaml",
        (CONFIGS / "plants" / "bioreactor.yaml")
        .read_text("utf-8")
        .replace("unit: 1/h, description: maximum", "unit: 1/s, description: maximum"),
    )
    ctrl = _write(
        tmp_path / "ctrl.yaml",
        (CONFIGS / "controllers" / "bioreactor.yaml")
        .read_text("utf-8")
        .replace("../plants/bioreactor.yaml", plant.name),
    )
    with pytest.raises(ConfigError) as exc:
        load_controller(ctrl)
    _expect(_problems(exc), "parameters.mu_m.unit", plant, "1/s")


def test_controller_with_missing_plant_file(tmp_path: Path) -> None:
    ctrl = _write(
        tmp_path / "ctrl.yaml",
        (CONFIGS / "controllers" / "bioreactor.yaml")
        .read_text("utf-8")
        .replace("../plants/bioreactor.yaml", "no_such_plant.yaml"),
    )
    with pytest.raises(ConfigError) as exc:
        load_controller(ctrl)
    (problem,) = exc.value.problems
    # the file and key that name it (the missing file's own name alone did not say which)
    assert (problem.file, problem.location) == (str(ctrl), "plant")
    assert problem.value == str(tmp_path / "no_such_plant.yaml")
    assert problem.message.startswith("no such file; allowed: a path to an existing file")


def test_controller_schema_and_model_problems_in_one_error(
    tmp_path: Path, plant_copy: Path
) -> None:
    path = _write(
        tmp_path / "ctrl.yaml",
        f"""\
plant: {plant_copy.name}
sample_time: 1.0
horizon: 20
horizn: 3                                      # unknown key (schema)
objective: {{economic: [{{expression: P, sense: maximize}}]}}
inputs:
  w: {{lower: 0.0, upper: 0.2, max_move: 0.05}} # unknown input (model)
""",
    )
    with pytest.raises(ConfigError) as exc:
        load_controller(path)
    by_loc = _problems(exc)
    _expect(by_loc, "horizn", path, 3)
    _expect(by_loc, "inputs.w", path, "w")


def test_controller_unordered_state_bounds_are_rejected(tmp_path: Path) -> None:
    ctrl = _write(
        tmp_path / "ctrl.yaml",
        (CONFIGS / "controllers" / "bioreactor.yaml")
        .read_text("utf-8")
        .replace("X: [0.0, null]", "X: [3.7, 0.0]")
        .replace("../plants/bioreactor.yaml", str(CONFIGS / "plants" / "bioreactor.yaml")),
    )
    with pytest.raises(ConfigError) as exc:
        load_controller(ctrl)
    _expect(_problems(exc), "state_bounds.X", ctrl)


# ---------------------------------------------------------------------------------------------
# Invalid YAML, non-mapping top level
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("loader", [load_parameter_set, load_controller, read_yaml])
def test_invalid_yaml_names_file_and_line(tmp_path: Path, loader: object) -> None:
    path = _write(tmp_path / "bad.yaml", "model: bioreactor\nparameters: {a: [1, 2}\nx: 1\n")
    with pytest.raises(ConfigError) as exc:
        loader(path)  # type: ignore[operator]
    (problem,) = exc.value.problems
    assert problem.file == str(path)
    assert (problem.location, problem.line, problem.column) == ("", 2, 22)
    assert (
        problem.message
        == "invalid YAML: while parsing a flow sequence, expected ',' or ']', but got '}'"
    )
    assert f"{path}:2:22: invalid YAML" in str(exc.value)
    assert isinstance(exc.value.__cause__, yaml.YAMLError)  # the cause is kept


@pytest.mark.parametrize(
    ("text", "type_name"),
    [("- 1\n- 2\n", "list"), ("just a string\n", "str"), ("42\n", "int"), ("", "NoneType")],
    ids=["list", "scalar", "number", "empty"],
)
@pytest.mark.parametrize("loader", [load_parameter_set, load_controller])
def test_non_mapping_top_level_is_rejected(
    tmp_path: Path, loader: object, text: str, type_name: str
) -> None:
    path = _write(tmp_path / "top.yaml", text)
    with pytest.raises(ConfigError) as exc:
        loader(path)  # type: ignore[operator]
    (problem,) = exc.value.problems
    assert problem.file == str(path)
    assert "mapping" in problem.message
    assert problem.value == type_name


def test_missing_file_is_a_config_error(tmp_path: Path) -> None:
    path = tmp_path / "nope.yaml"
    with pytest.raises(ConfigError) as exc:
        load_parameter_set(path)
    assert exc.value.problems[0].file == str(path)
    assert isinstance(exc.value, PharmaTwinError)


# ---------------------------------------------------------------------------------------------
# Validation never uses assert (it would vanish under python -O)
# ---------------------------------------------------------------------------------------------
_ASSERT_LINE = re.compile(r"^\s*assert\b")
#: the HIL's own config schemas (scenarios and faults) are held to the same rule
HIL_SCHEMAS = ("scenario.py", "faultspec.py", "faultcheck.py")
SOURCE_FILES = sorted(
    [p for pkg in ("controller", "plant_models") for p in (ROOT / pkg).rglob("*.py")]
    + [ROOT / "hil" / name for name in HIL_SCHEMAS]
)


def test_source_files_found() -> None:
    names = {p.relative_to(ROOT).as_posix() for p in SOURCE_FILES}
    config = {"controller/config.py", "controller/configfile.py", "controller/plantfile.py"}
    assert {*config, "hil/scenario.py", "plant_models/base.py", "plant_models/check.py"} <= names


@pytest.mark.parametrize(
    "path", SOURCE_FILES, ids=[p.relative_to(ROOT).as_posix() for p in SOURCE_FILES]
)
def test_no_assert_statements(path: Path) -> None:
    offending = [
        f"{path.relative_to(ROOT)}:{n}: {line.strip()}"
        for n, line in enumerate(path.read_text("utf-8").splitlines(), start=1)
        if _ASSERT_LINE.match(line)
    ]
    assert not offending, "validation must not use assert:\n" + "\n".join(offending)
