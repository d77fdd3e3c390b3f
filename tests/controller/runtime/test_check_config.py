"""``check-config`` knows every kind of file the project ships and checks each as that kind
(issue 16): the controller's kinds with ``pharmatwin check-config``, every kind (the HIL's
scenario, campaign, tuning and design-space files too) with ``pharmatwin-hil check-config``; a
file of a kind a command cannot check is named, never reported "ok". A closed-loop site needs
the PLC contract in its tag map, and the missing tags are named."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from controller.configfile import read_yaml
from controller.errors import ConfigError
from controller.filekinds import KINDS, detect
from controller.runtime.cli import main as cli_main
from controller.runtime.site import CLOSED_LOOP_CONTRACT, load_site
from hil.cli import main as hil_main

ROOT = Path(__file__).resolve().parents[3]
CONFIGS = ROOT / "configs"
SHIPPED = sorted(CONFIGS.glob("*/*.yaml"))
FOLDER_KIND = {k.folder: k.name for k in KINDS}
HIL_KINDS = {k.name for k in KINDS if k.hil}


def _kind_of_folder(path: Path) -> str:
    return FOLDER_KIND[path.parent.name]


def test_every_folder_of_configs_is_a_known_kind() -> None:
    assert {p.parent.name for p in SHIPPED} == set(FOLDER_KIND)
    assert {_kind_of_folder(p) for p in SHIPPED} == {k.name for k in KINDS}


@pytest.mark.parametrize("path", SHIPPED, ids=lambda p: f"{p.parent.name}/{p.name}")
def test_every_shipped_file_is_detected_as_its_folders_kind(path: Path) -> None:
    kind = detect(read_yaml(path))
    assert kind is not None and kind.name == _kind_of_folder(path)


def _ok_line(path: Path) -> str:
    """The start of a file's "ok" line: its kind, then (a controller) what its check found."""
    kind = _kind_of_folder(path)
    return f"ok   {path} ({kind}{'; RK4 |h lambda| ' if kind == 'controller' else ')'}"


def test_pharmatwin_hil_checks_every_shipped_file_as_its_kind(
    capsys: pytest.CaptureFixture[str],
) -> None:
    code = hil_main(["check-config", *map(str, SHIPPED)])
    out = capsys.readouterr().out
    assert code == 0, out
    for path in SHIPPED:
        assert _ok_line(path) in out
    assert out.rstrip().endswith(f"{len(SHIPPED)} files: {len(SHIPPED)} ok")


def test_pharmatwin_checks_its_kinds_and_names_the_hil_ones_unchecked(
    capsys: pytest.CaptureFixture[str],
) -> None:
    mine = [p for p in SHIPPED if _kind_of_folder(p) not in HIL_KINDS]
    assert cli_main(["check-config", *map(str, mine)]) == 0
    out = " ".join(capsys.readouterr().out.split())
    hil_unchecked = "its hil section not checked: run `pharmatwin-hil check-config FILE`)"
    for p in mine:
        site = _kind_of_folder(p) == "site" and "hil" in yaml.safe_load(p.read_text())
        assert (
            f"ok {p} (site; {hil_unchecked}" if site else _ok_line(p).replace("   ", " ")
        ) in out
    for folder, name in (("campaigns", "lyophilizer-oq"), ("scenarios", "cstr-mpc")):
        path = CONFIGS / folder / f"{name}.yaml"
        kind = _kind_of_folder(path)
        assert cli_main(["check-config", str(path)]) == 1  # never "ok" without a check
        assert capsys.readouterr().out == (
            f"not checked {path}: this is a {kind} file; pharmatwin cannot check it: run "
            f"`pharmatwin-hil check-config {path}`\n"
        )


def test_the_controller_does_not_validate_scenarios_the_hil_does(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A scenario is a HIL file: ``pharmatwin check-config`` names it and checks nothing in
    it (a bad one is "not checked", never "ok"); ``pharmatwin-hil check-config`` finds the
    problem."""
    data = yaml.safe_load((CONFIGS / "scenarios" / "cstr-mpc.yaml").read_text())
    for key in ("plant", "controller"):
        data[key] = str((CONFIGS / "scenarios" / data[key]).resolve())
    data["true_plant"]["noise_std"] = {"not_an_output": 1.0}
    bad = _write(tmp_path / "scenario.yaml", data)
    assert "scenario" in HIL_KINDS
    assert cli_main(["check-config", str(bad)]) == 1
    assert capsys.readouterr().out.startswith(f"not checked {bad}: this is a scenario file")
    assert hil_main(["check-config", str(bad)]) == 1
    out = capsys.readouterr().out
    assert out.startswith(f"FAIL {bad}\n") and "true_plant.noise_std.not_an_output" in out


def _copy_site(tmp_path: Path, name: str = "cstr-modbus") -> dict[str, Any]:
    data = yaml.safe_load((CONFIGS / "sites" / f"{name}.yaml").read_text())
    for key in ("plant", "controller", "tags"):
        data[key] = str((CONFIGS / "sites" / data[key]).resolve())
    data["hil"]["scenario"] = str((CONFIGS / "sites" / data["hil"]["scenario"]).resolve())
    recipe = data["forecast"]["local_recipe"]
    data["forecast"]["local_recipe"] = str((CONFIGS / "sites" / recipe).resolve())
    return data


def _write(path: Path, data: dict[str, Any]) -> Path:
    path.write_text(yaml.safe_dump(data, sort_keys=False), encoding="utf-8")
    return path


def test_a_wrong_kind_file_named_by_a_site_is_named_for_its_kind(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data = _copy_site(tmp_path)
    scenario = str(CONFIGS / "scenarios" / "cstr-mpc.yaml")
    data["controller"] = scenario  # a scenario where the controller config goes
    site = _write(tmp_path / "site.yaml", data)
    assert cli_main(["check-config", str(site)]) == 1
    out = capsys.readouterr().out
    text = Path(scenario).read_text()
    line = text[: text.index("\ntrue_plant:")].count("\n") + 2  # the key only scenarios have
    assert (
        f"  - {scenario}:{line}:1: this is a scenario file (see configs/scenarios/), not a " in out
    )
    assert "controller file; name it in the 'hil: scenario:' key of a site; use it with " in out


def test_a_file_of_no_known_kind_is_named_so(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "notes.yaml"
    path.write_text("title: shopping\nitems: [eggs]\n")
    assert cli_main(["check-config", str(path)]) == 1
    out = capsys.readouterr().out
    assert (
        f"{path}:1:1: cannot tell which kind of config file this is from its top-level keys "
        "['items', 'title']; each kind has one of these keys: site (connection);" in out
    )


# ---------------------------------------------------------------------- the PLC contract
def _site_without(tmp_path: Path, tag: str, *, hil: bool = True, **runtime: Any) -> Path:
    tags = yaml.safe_load((CONFIGS / "tags" / "cstr.yaml").read_text())
    del tags["tags"][tag]
    tag_path = _write(tmp_path / "tags.yaml", tags)
    data = _copy_site(tmp_path)
    data["tags"] = str(tag_path)
    if not hil:
        del data["hil"]
    if runtime:
        data["runtime"] = runtime
    return _write(tmp_path / "site.yaml", data)


@pytest.mark.parametrize("hil", [True, False], ids=["hil-site", "deployment"])
def test_check_config_names_the_missing_contract_tag(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], hil: bool
) -> None:
    site = _site_without(tmp_path, "mpc_permissive", hil=hil)
    assert cli_main(["check-config", str(site)]) == 1
    out = capsys.readouterr().out
    tag_text = (tmp_path / "tags.yaml").read_text()
    line = tag_text[: tag_text.index("tags:")].count("\n") + 1
    assert out == (
        f"FAIL {site}\n  - {tmp_path / 'tags.yaml'}:{line}:1: tags: missing tag 'mpc_permissive' "
        "of the PLC contract (permissive: the PLC allows the MPC to take control; the twin "
        "reads it): the closed-loop site 'cstr-modbus' needs it (a site that never runs in "
        "closed loop sets runtime.shadow_only: true)\n"
    )


def test_every_contract_role_is_required(tmp_path: Path) -> None:
    for c in CLOSED_LOOP_CONTRACT:
        with pytest.raises(ConfigError) as exc:
            load_site(_site_without(tmp_path, c.tag, hil=False))
        assert [p.value for p in exc.value.problems] == [c.tag]


def test_a_shadow_only_site_needs_no_contract(tmp_path: Path) -> None:
    site = load_site(_site_without(tmp_path, "mpc_request", hil=False, shadow_only=True))
    assert site.runtime.shadow_only and "mpc_request" not in site.tags.tags


def test_a_contract_tag_in_the_wrong_direction_is_named(tmp_path: Path) -> None:
    tags = yaml.safe_load((CONFIGS / "tags" / "cstr.yaml").read_text())
    tags["tags"]["mpc_heartbeat"]["direction"] = "read"
    tags["tags"]["mpc_heartbeat"]["modbus"]["table"] = "input"
    data = _copy_site(tmp_path)
    data["tags"] = str(_write(tmp_path / "tags.yaml", tags))
    with pytest.raises(ConfigError) as exc:
        load_site(_write(tmp_path / "site.yaml", data))
    (problem,) = exc.value.problems
    assert problem.location == "tags.mpc_heartbeat.direction" and problem.value == "read"
    assert "needs a direction in which the twin writes it; allowed: ['read_write', 'write']" in (
        problem.message
    )


def test_a_site_whose_forecast_recipe_is_missing_fails_with_both_tools(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # load_site lets a site copy without its recipe run (campaign cases); check-config said
    # "ok" for it, and `pharmatwin forecast` failed on the missing file later
    raw = yaml.safe_load((CONFIGS / "sites" / "lyophilizer-modbus.yaml").read_text())
    for key in ("plant", "controller", "tags"):
        raw[key] = str((CONFIGS / "sites" / raw[key]).resolve())
    raw.pop("hil", None)
    raw.setdefault("forecast", {})["local_recipe"] = "no-such-recipe.yaml"
    site = tmp_path / "site.yaml"
    site.write_text(yaml.safe_dump(raw, sort_keys=False))
    for main in (cli_main, hil_main):
        assert main(["check-config", str(site)]) == 1
        out = " ".join(capsys.readouterr().out.split())
        assert f"FAIL {site}" in out and "forecast.local_recipe: file not found" in out
