"""A symlink loop where a campaign or a tuning file names a file (or as the file itself) is a
ConfigError naming the file and the key, never a RuntimeError from resolving the path."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest
import yaml

from controller.errors import ConfigError
from hil.campaign.spec import load_campaign
from hil.tuning.spec import load_tuning

ROOT = Path(__file__).resolve().parents[2]
CONFIGS = ROOT / "configs"


@pytest.fixture
def loop(tmp_path: Path) -> Path:
    path = tmp_path / "loop.yaml"
    os.symlink(path, path)
    return path


def _copy(src: Path, dst: Path, paths: tuple[str, ...], **changes: Any) -> Path:
    """``src`` copied to ``dst`` with its ``paths`` (dotted keys) made absolute, then changed
    (``changes``: dotted keys with ``__`` for ``.``)."""
    data = yaml.safe_load(src.read_text(encoding="utf-8"))
    for dotted in paths:
        *parents, key = dotted.split(".")
        node = data
        for part in parents:
            node = node[part]
        node[key] = str((src.parent / node[key]).resolve())
    for dotted, value in changes.items():
        *parents, key = dotted.split("__")
        node = data
        for part in parents:
            node = node[part]
        node[key] = value
    dst.write_text(yaml.safe_dump(data, sort_keys=False), encoding="utf-8")
    return dst


def _locations(exc: pytest.ExceptionInfo[ConfigError], path: Path) -> list[str]:
    return [p.location for p in exc.value.problems if p.file == str(path)]


@pytest.mark.parametrize("key", ["site", "controller"])
def test_a_campaign_naming_a_symlink_loop_is_a_config_error(
    tmp_path: Path, loop: Path, key: str
) -> None:
    src = CONFIGS / "campaigns" / "lyophilizer-smoke.yaml"
    path = _copy(src, tmp_path / "campaign.yaml", ("site",), **{key: str(loop)})
    with pytest.raises(ConfigError) as exc:
        load_campaign(path)
    [problem] = [p for p in exc.value.problems if p.location == key]
    assert problem.file == str(path)
    assert problem.value == str(loop) and "symlink loop" in problem.message, problem


def test_a_campaign_file_that_is_a_symlink_loop_is_a_config_error(loop: Path) -> None:
    with pytest.raises(ConfigError) as exc:
        load_campaign(loop)
    assert _locations(exc, loop) == [""], exc.value.problems


@pytest.mark.parametrize("key", ["start", "scenarios__site"])
def test_a_tuning_naming_a_symlink_loop_is_a_config_error(
    tmp_path: Path, loop: Path, key: str
) -> None:
    src = CONFIGS / "tuning" / "lyophilizer.yaml"
    paths = ("start", "scenarios.site")
    path = _copy(src, tmp_path / "tuning.yaml", paths, **{key: str(loop)})
    with pytest.raises(ConfigError) as exc:
        load_tuning(path)
    assert key.replace("__", ".") in _locations(exc, path), exc.value.problems
    assert "symlink loop" in str(exc.value)


def test_a_tuning_file_that_is_a_symlink_loop_is_a_config_error(loop: Path) -> None:
    with pytest.raises(ConfigError) as exc:
        load_tuning(loop)
    assert _locations(exc, loop) == [""], exc.value.problems


def test_a_campaign_naming_a_missing_site_or_a_folder_names_its_file_and_key(
    tmp_path: Path,
) -> None:
    """The error named only the missing path ("…/sites/nope.yaml: cannot read file"), not
    the campaign file or its ``site:`` key."""
    from controller.errors import ConfigError
    from hil.campaign.spec import load_campaign

    (tmp_path / "sites").mkdir()
    for ref, what in (("sites/nope.yaml", "no such file"), ("sites", "a directory, not a file")):
        text = (ROOT / "configs" / "campaigns" / "lyophilizer-smoke.yaml").read_text("utf-8")
        text = text.replace("site: ../sites/lyophilizer-modbus.yaml", f"site: {ref}")
        path = tmp_path / "camp.yaml"
        path.write_text(text, encoding="utf-8")
        with pytest.raises(ConfigError) as info:
            load_campaign(path)
        (problem,) = info.value.problems
        assert (problem.file, problem.location) == (str(path), "site")
        assert problem.value == str(tmp_path / ref) and problem.message.startswith(what)
        assert problem.line == 5


def test_a_scenario_naming_a_symlinked_controller_loads_it_where_it_is_named(
    tmp_path: Path,
) -> None:
    """A review: checking the controller's path resolved the symlink, and its relative
    ``plant:`` was then looked for beside the link's target, not beside the link."""
    from hil.scenario import load_scenario

    proj, real_dir = tmp_path / "proj", tmp_path / "real"
    proj.mkdir()
    real_dir.mkdir()
    plant = (ROOT / "configs" / "plants" / "cstr.yaml").read_text("utf-8")
    (proj / "cstr.yaml").write_text(plant, encoding="utf-8")
    ctl = (ROOT / "configs" / "controllers" / "cstr.yaml").read_text("utf-8")
    (real_dir / "cstr-ctl.yaml").write_text(
        ctl.replace("plant: ../plants/cstr.yaml", "plant: cstr.yaml"), encoding="utf-8"
    )
    (proj / "ctl.yaml").symlink_to(Path("..") / "real" / "cstr-ctl.yaml")
    scen = (ROOT / "configs" / "scenarios" / "cstr-mpc.yaml").read_text("utf-8")
    scen = scen.replace("../plants/cstr.yaml", "cstr.yaml").replace(
        "../controllers/cstr.yaml", "ctl.yaml"
    )
    (proj / "scen.yaml").write_text(scen, encoding="utf-8")
    sc = load_scenario(proj / "scen.yaml")
    assert sc.controller == "ctl.yaml"


@pytest.mark.parametrize(("site_line", "why"), [("", "missing"), ("site: 5\n", "5 is not a path")])
def test_a_tuning_campaign_without_a_site_path_is_named(
    tmp_path: Path, site_line: str, why: str
) -> None:
    """A review: ``scenarios.campaign`` naming a campaign with no ``site:`` (or ``site: 5``)
    ended in a KeyError / TypeError traceback."""
    from controller.errors import ConfigError
    from hil.tuning.spec import load_tuning

    camp = (ROOT / "configs" / "campaigns" / "lyophilizer-smoke.yaml").read_text("utf-8")
    camp = camp.replace("site: ../sites/lyophilizer-modbus.yaml\n", site_line)
    (tmp_path / "camp.yaml").write_text(camp, encoding="utf-8")
    tuning = (ROOT / "configs" / "tuning" / "lyophilizer.yaml").read_text("utf-8")
    head, rest = tuning.split("scenarios:\n", 1)
    tail = rest[rest.index("objectives:") :]
    text = head.replace("start: ../controllers/", f"start: {ROOT}/configs/controllers/")
    text += "scenarios:\n  campaign: camp.yaml\n" + tail
    (tmp_path / "tune.yaml").write_text(text, encoding="utf-8")
    with pytest.raises(ConfigError) as info:
        load_tuning(tmp_path / "tune.yaml")
    (problem,) = info.value.problems
    assert (problem.file, problem.location) == (str(tmp_path / "camp.yaml"), "site")
    assert problem.message == f"{why}; allowed: the path of a site file"


def test_a_symlinked_site_is_read_as_check_config_reads_it(tmp_path: Path) -> None:
    """A review: ``check-config`` read a symlinked site's relative files beside the link,
    a campaign beside the link's target: a campaign could run other files than the ones the
    site check validated. Both read it as written now, and the site's missing controller is
    named at the site's ``controller:`` key."""
    from controller.errors import ConfigError
    from controller.runtime.site import load_site
    from hil.campaign.spec import load_campaign

    (tmp_path / "sl").mkdir()
    link = tmp_path / "sl" / "site.yaml"
    link.symlink_to(ROOT / "configs" / "sites" / "lyophilizer-modbus.yaml")
    with pytest.raises(ConfigError) as by_site:
        load_site(link)
    camp = (ROOT / "configs" / "campaigns" / "lyophilizer-smoke.yaml").read_text("utf-8")
    camp = camp.replace("site: ../sites/lyophilizer-modbus.yaml", f"site: {link}")
    (tmp_path / "camp.yaml").write_text(camp, encoding="utf-8")
    with pytest.raises(ConfigError) as by_campaign:
        load_campaign(tmp_path / "camp.yaml")
    for info in (by_site, by_campaign):
        first = info.value.problems[0]
        assert (first.file, first.location) == (str(link), "controller")
        assert first.message.startswith("no such file")
