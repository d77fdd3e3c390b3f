"""Bad input in a site or controller file is one clear error, never a traceback: a symlink
loop where the site names its plant, a site name that is a path (it names the serve log),
and a controller sample time too short to step through."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest
import yaml

from controller.controllerfile import load_controller
from controller.errors import ConfigError
from controller.runtime.cli import main as cli_main

ROOT = Path(__file__).resolve().parents[2]
CONFIGS = ROOT / "configs"
#: the pattern a site's (and a campaign's) name must match
NAME_PATTERN = "^[A-Za-z0-9][A-Za-z0-9_.+-]*$"


def _site(tmp_path: Path, **changes: Any) -> Path:
    """A copy of the lyophilizer Modbus site in tmp_path (its paths absolute), changed."""
    src = CONFIGS / "sites" / "lyophilizer-modbus.yaml"
    data = yaml.safe_load(src.read_text(encoding="utf-8"))
    for key in ("plant", "controller", "tags"):
        data[key] = str((src.parent / data[key]).resolve())
    data["hil"]["scenario"] = str((src.parent / data["hil"]["scenario"]).resolve())
    recipe = data["forecast"]["local_recipe"]
    data["forecast"]["local_recipe"] = str((src.parent / recipe).resolve())
    data.update(changes)
    path = tmp_path / "site.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False), encoding="utf-8")
    return path


def _check_config(path: Path, capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    code = cli_main(["check-config", str(path)])
    captured = capsys.readouterr()
    return code, " ".join((captured.out + captured.err).split())


def test_a_site_whose_plant_is_a_symlink_loop_is_a_config_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    loop = tmp_path / "loop.yaml"
    os.symlink(loop, loop)
    site = _site(tmp_path, plant=str(loop))
    code, out = _check_config(site, capsys)
    assert code == 1, out
    assert "Traceback" not in out
    assert f"{site}:" in out and "plant:" in out, out
    assert "symlink loop" in out and "(got '/tmp" in out, out  # the path, abbreviated


@pytest.mark.parametrize("name", ["sub/x", "../escaped-site"])
def test_a_site_name_that_is_a_path_is_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], name: str
) -> None:
    site = _site(tmp_path, name=name)
    code, out = _check_config(site, capsys)
    assert code == 1, out
    assert "Traceback" not in out
    assert "name:" in out and repr(name) in out and NAME_PATTERN in out, out


def test_a_sample_time_too_short_to_step_through_is_refused(tmp_path: Path) -> None:
    src = CONFIGS / "controllers" / "lyophilizer.yaml"
    data = yaml.safe_load(src.read_text(encoding="utf-8"))
    data["plant"] = str((src.parent / data["plant"]).resolve())
    data["sample_time"] = 1e-320
    path = tmp_path / "controller.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False), encoding="utf-8")
    with pytest.raises(ConfigError) as exc:
        load_controller(path)
    [problem] = [p for p in exc.value.problems if p.location == "sample_time"]
    assert problem.file == str(path)
    assert problem.value == 1e-320
    assert "1e-06 or more" in problem.message, problem
