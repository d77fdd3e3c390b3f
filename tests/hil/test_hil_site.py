"""The site's ``hil:`` section belongs to the HIL bench: ``hil.site`` validates it.

``pharmatwin`` (the controller) keeps the section as written; ``pharmatwin-hil`` checks it
(schema, scenario, the virtual PLC's tags, interlocks, CA files), naming ``hil.<key>``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from controller.errors import ConfigError
from controller.ports.opcua_limits import OperationLimits
from controller.runtime.cli import main as cli_main
from controller.runtime.site import load_site
from hil.cli import main as hil_main
from hil.scenario import load_scenario
from hil.site import HilSection, hil_section, load_hil_site, load_hil_site_and_scenario, with_hil

ROOT = Path(__file__).resolve().parents[2]
SITES = sorted((ROOT / "configs" / "sites").glob("*.yaml"))


def _copy_site(name: str) -> dict[str, Any]:
    data: dict[str, Any] = yaml.safe_load((ROOT / "configs/sites" / f"{name}.yaml").read_text())
    for key in ("plant", "controller", "tags"):
        data[key] = str((ROOT / "configs/sites" / data[key]).resolve())
    data["hil"]["scenario"] = str((ROOT / "configs/sites" / data["hil"]["scenario"]).resolve())
    for key in ("ca_certificate", "ca_private_key"):
        if key in data["hil"]:
            data["hil"][key] = str((ROOT / "configs/sites" / data["hil"][key]).resolve())
    security = data["connection"].get("opcua", {}).get("security")
    if security is not None:
        for key in ("certificate", "private_key"):
            security[key] = str((ROOT / "configs/sites" / security[key]).resolve())
        security["trust_list"] = [
            str((ROOT / "configs/sites" / r).resolve()) for r in security["trust_list"]
        ]
    data.pop("forecast", None)
    return data


def _write(path: Path, data: dict[str, Any]) -> Path:
    path.write_text(yaml.safe_dump(data, sort_keys=False), encoding="utf-8")
    return path


@pytest.mark.parametrize("path", SITES, ids=lambda p: p.stem)
def test_every_shipped_site_loads_for_the_bench(path: Path) -> None:
    site = load_hil_site(path)
    hil = hil_section(site)
    assert isinstance(hil, HilSection) and hil.plc.heartbeat_timeout > 0
    assert hil_section(with_hil(site, hil)) == hil  # a section survives the round trip
    if site.connection.protocol == "opcua":
        sec = site.connection.opcua.security
        assert hil.ca_certificate and hil.ca_private_key, path.stem
        assert site.file(hil.ca_certificate) in {site.file(ref) for ref in sec.trust_list}


def test_the_hil_ca_is_a_pair_of_existing_files(tmp_path: Path) -> None:
    data = _copy_site("cstr-opcua")
    path = tmp_path / "site.yaml"
    data["hil"]["ca_certificate"] = "nowhere/ca.der"
    data["hil"]["ca_private_key"] = "nowhere/ca.key.pem"
    _write(path, data)
    load_site(path)  # the controller does not look at the bench's files
    with pytest.raises(ConfigError) as exc:
        load_hil_site(path)
    assert {p.location for p in exc.value.problems} == {"hil.ca_certificate", "hil.ca_private_key"}
    del data["hil"]["ca_private_key"]
    _write(path, data)
    with pytest.raises(ConfigError, match="'ca_certificate' and 'ca_private_key'"):
        load_hil_site(path)
    del data["hil"]["ca_certificate"]
    _write(path, data)
    assert hil_section(load_hil_site(path)) is not None  # neither: a self-signed server


def test_section_problems_are_named_by_their_key(tmp_path: Path) -> None:
    data = _copy_site("cstr-modbus")
    lock = data["hil"]["plc"]["interlocks"][0]
    lock["expression"] = "T_Rmeas"
    lock["force"] = {"Qdot": -8500.0}
    path = _write(tmp_path / "site.yaml", data)
    with pytest.raises(ConfigError) as exc:
        load_hil_site(path)
    found = {p.location: p.message for p in exc.value.problems}
    assert set(found) == {"hil.plc.interlocks.0.expression", "hil.plc.interlocks.0.force.Qdot"}
    assert (
        "unknown expression 'T_Rmeas'; did you mean 'T_R_meas'?"
        in found["hil.plc.interlocks.0.expression"]
    )
    assert found["hil.plc.interlocks.0.force.Qdot"].startswith("unknown input 'Qdot'")
    lock["below"] = 0.0  # and 'above': one side only
    _write(path, data)
    with pytest.raises(ConfigError) as exc:
        load_hil_site(path)
    (problem,) = exc.value.problems
    assert problem.location == "hil.plc.interlocks.0"
    assert problem.message == "give exactly one of 'above' or 'below'"


def test_a_scenario_for_another_model_is_refused(tmp_path: Path) -> None:
    data = _copy_site("cstr-modbus")
    data["hil"]["scenario"] = str(ROOT / "configs/scenarios/lyophilizer-hil.yaml")
    with pytest.raises(ConfigError, match="the scenario is not for model 'cstr'"):
        load_hil_site(_write(tmp_path / "site.yaml", data))


def test_pharmatwin_hil_checks_the_section_pharmatwin_does_not(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data = _copy_site("cstr-modbus")
    data["hil"]["plc"]["interlocks"][0]["expression"] = "nothing"
    path = _write(tmp_path / "site.yaml", data)
    assert cli_main(["check-config", str(path)]) == 0  # ok, and it says what it left
    out = " ".join(capsys.readouterr().out.split())
    assert out.startswith(f"ok {path} (site; its hil section not checked: run `pharmatwin-hil")
    assert hil_main(["check-config", str(path)]) == 1
    out = capsys.readouterr().out
    assert f"FAIL {path}" in out and "hil.plc.interlocks.0.expression: unknown expression" in out


@pytest.mark.parametrize("path", SITES, ids=lambda p: p.stem)
def test_the_site_comes_with_the_scenario_it_checked(path: Path) -> None:
    """A campaign case loads its scenario once: the one the check loaded, equal to a fresh
    load of the section's scenario file (the rig's default)."""
    site, scenario = load_hil_site_and_scenario(path)
    section = hil_section(site)
    if section is None:
        assert scenario is None
        return
    assert scenario == load_scenario(site.file(section.scenario))


def test_opcua_limits_are_counts_named_by_their_key(tmp_path: Path) -> None:
    """``hil.opcua_limits``: nodes per request the HIL OPC UA server advertises and enforces
    (``tests/controller/ports/test_opcua_limits.py``); each a count of at least 1."""
    data = _copy_site("cstr-opcua")
    data["hil"]["opcua_limits"] = {"max_nodes_per_read": 0, "max_nodes_per_wirte": 2}
    path = _write(tmp_path / "site.yaml", data)
    with pytest.raises(ConfigError) as exc:
        load_hil_site(path)
    found = {p.location: p.message for p in exc.value.problems}
    assert set(found) == {
        "hil.opcua_limits.max_nodes_per_read",
        "hil.opcua_limits.max_nodes_per_wirte",
    }
    assert "greater than 0" in found["hil.opcua_limits.max_nodes_per_read"]
    data["hil"]["opcua_limits"] = {"max_nodes_per_read": 8, "max_monitored_items_per_call": 3}
    section = hil_section(load_hil_site(_write(path, data)))
    assert section is not None
    assert section.opcua_limits.operation_limits() == OperationLimits(read=8, monitored_items=3)
