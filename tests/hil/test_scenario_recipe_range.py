"""A recipe row outside an input's physical (actuator) range is refused at load.

A recipe run (no controller) enforces the model's physical input range (``hil.simulate``
``_limits``): safety clipped a row outside it, so the run played something else than the
recipe said. Before: the nominal recipe with a first row ``Tsh: -135`` (range -45..120 degC)
passed ``check-config``, and ``simulate`` exited 0 with 16 safety interventions and
``u.Tsh`` -45. Every refusal here failed on that code.
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
from hil.site import load_hil_site

ROOT = Path(__file__).resolve().parents[2]
CONFIGS = ROOT / "configs"
SCENARIOS = CONFIGS / "scenarios"


def _recipe_scenario(tmp_path: Path, rows: list[dict[str, Any]], name: str = "sc.yaml") -> Path:
    data = yaml.safe_load((SCENARIOS / "lyophilizer-nominal-recipe.yaml").read_text())
    data["plant"] = str((SCENARIOS / data["plant"]).resolve())
    data["recipe"]["table"] = rows
    path = tmp_path / name
    path.write_text(yaml.safe_dump(data, sort_keys=False), encoding="utf-8")
    return path


NOMINAL = [
    {"t": 0.0, "inputs": {"Tsh": -35.0, "Pch": 0.15}},
    {"t": 0.9166667, "inputs": {"Tsh": 20.0, "Pch": 0.15}},
    {"t": 100.0, "inputs": {"Tsh": 20.0, "Pch": 0.15}},
]


def test_the_reviewers_recipe_is_refused_by_check_config_and_simulate(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    rows = [{"t": 0.0, "inputs": {"Tsh": -135.0, "Pch": 0.15}}, *NOMINAL[1:]]
    path = _recipe_scenario(tmp_path, rows)
    with pytest.raises(ConfigError) as info:
        load_scenario(path)
    (problem,) = info.value.problems
    assert (problem.file, problem.location) == (str(path), "recipe.table.0.inputs.Tsh")
    text = str(problem)
    assert "Tsh = -135 degC" in text and "t=0 h" in text
    assert "physical (actuator) range [-45, 120] degC" in text
    assert "allowed: -45 to 120 degC" in text
    assert hil_main(["check-config", str(path)]) == 1
    out = capsys.readouterr().out
    assert "recipe.table.0.inputs.Tsh" in out and "Traceback" not in out
    code = hil_main(["simulate", str(path), "--out", str(tmp_path / "out")])
    out2 = capsys.readouterr()
    assert code == 2, out2
    assert "recipe.table.0.inputs.Tsh" in out2.out + out2.err
    assert "safety_interventions" not in out2.out


def test_every_row_outside_is_named_with_its_time(tmp_path: Path) -> None:
    rows = [
        NOMINAL[0],
        {"t": 0.9166667, "inputs": {"Tsh": 20.0, "Pch": 0.6}},
        {"t": 100.0, "inputs": {"Tsh": 130.0, "Pch": 0.01}},
    ]
    path = _recipe_scenario(tmp_path, rows)
    with pytest.raises(ConfigError) as info:
        load_scenario(path)
    found = {p.location: str(p) for p in info.value.problems}
    assert set(found) == {
        "recipe.table.1.inputs.Pch",
        "recipe.table.2.inputs.Tsh",
        "recipe.table.2.inputs.Pch",
    }
    assert "t=0.916667 h" in found["recipe.table.1.inputs.Pch"]
    assert "Pch = 0.6 Torr" in found["recipe.table.1.inputs.Pch"]
    assert "t=100 h" in found["recipe.table.2.inputs.Tsh"]


def test_a_recipe_at_the_ends_of_the_range_loads(tmp_path: Path) -> None:
    model = build_model(CONFIGS / "plants" / "lyophilizer.yaml")
    tsh, pch = model.variable("Tsh"), model.variable("Pch")
    rows = [
        {"t": 0.0, "inputs": {"Tsh": tsh.lower, "Pch": pch.upper}},
        {"t": 1.0, "inputs": {"Tsh": tsh.upper, "Pch": pch.lower}},
    ]
    assert load_scenario(_recipe_scenario(tmp_path, rows)).recipe is not None


def test_a_hil_sites_local_recipe_outside_the_range_is_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The HIL site (whose rig plays the scenario's recipe as the PLC's local recipe) loads
    its scenario with the same loader."""
    site = yaml.safe_load((CONFIGS / "sites" / "lyophilizer-modbus.yaml").read_text())
    scenario = yaml.safe_load((SCENARIOS / "lyophilizer-hil.yaml").read_text())
    scenario["plant"] = str((SCENARIOS / scenario["plant"]).resolve())
    scenario["recipe"]["table"][0]["inputs"]["Tsh"] = -135.0
    (tmp_path / "hil.yaml").write_text(yaml.safe_dump(scenario, sort_keys=False))
    site_dir = CONFIGS / "sites"
    for key in ("plant", "controller", "tags"):
        if isinstance(site.get(key), str):
            site[key] = str((site_dir / site[key]).resolve())
    site["hil"]["scenario"] = str(tmp_path / "hil.yaml")
    forecast = site.get("forecast") or {}
    if "local_recipe" in forecast:
        forecast["local_recipe"] = str(tmp_path / "hil.yaml")
    path = tmp_path / "site.yaml"
    path.write_text(yaml.safe_dump(site, sort_keys=False))
    with pytest.raises(ConfigError) as info:
        load_hil_site(path)
    assert any(p.location == "recipe.table.0.inputs.Tsh" for p in info.value.problems)
    assert hil_main(["check-config", str(path)]) == 1
    assert "recipe.table.0.inputs.Tsh" in capsys.readouterr().out
