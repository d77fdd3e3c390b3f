"""Site files and tag maps: every shipped one loads; bad ones list every problem."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from controller.clock import SteppedClock
from controller.errors import ConfigError
from controller.ports.base import WriteStatus
from controller.ports.memory import MemoryPort, table_from_tag_map
from controller.runtime.cli import main as cli_main
from controller.runtime.commissioning import parse_assignments
from controller.runtime.site import load_site
from controller.tags import load_tag_map

ROOT = Path(__file__).resolve().parents[3]
SITES = sorted((ROOT / "configs" / "sites").glob("*.yaml"))
TAGS = sorted((ROOT / "configs" / "tags").glob("*.yaml"))


@pytest.mark.parametrize("path", SITES, ids=lambda p: p.stem)
def test_every_site_loads(path: Path) -> None:
    site = load_site(path)
    assert site.connection.host == "127.0.0.1"
    inputs = site.model.input_names
    bound = {t.binds for t in site.tags.tags.values() if t.writable}
    assert set(inputs) <= bound


@pytest.mark.parametrize("path", TAGS, ids=lambda p: p.stem)
def test_every_tag_map_loads(path: Path) -> None:
    tm = load_tag_map(path)
    assert tm.tags and all(t.unit for t in tm.tags.values())


def test_every_model_has_a_modbus_and_an_opcua_site() -> None:
    names = {p.stem for p in SITES}
    for model in ("lyophilizer", "bioreactor", "crystallizer", "cstr"):
        assert {f"{model}-modbus", f"{model}-opcua"} <= names


def test_site_problems_are_listed_together(tmp_path: Path) -> None:
    data = yaml.safe_load((ROOT / "configs/sites/bioreactor-modbus.yaml").read_text())
    data["plant"] = str(ROOT / "configs/plants/bioreactor.yaml")
    data["controller"] = str(ROOT / "configs/controllers/bioreactor.yaml")
    tags = yaml.safe_load((ROOT / "configs/tags/bioreactor.yaml").read_text())
    tags["tags"]["feed_rate_sp"]["binds"] = "feed"  # unknown model variable
    del tags["tags"]["biomass"]["modbus"]  # no Modbus address on a Modbus site
    (tmp_path / "tags.yaml").write_text(yaml.safe_dump(tags))
    data["tags"] = str(tmp_path / "tags.yaml")
    data["connection"]["modbus"] = {
        "tls": {"ca_file": "ca.pem", "cert_file": "c.pem", "key_file": "k.pem"}
    }
    path = tmp_path / "site.yaml"
    path.write_text(yaml.safe_dump(data))
    with pytest.raises(ConfigError) as exc:
        load_site(path)
    where = {p.location for p in exc.value.problems}
    assert {"tags.feed_rate_sp.binds", "tags.biomass.modbus", "tags"} <= where
    assert "connection.modbus.tls.ca_file" in where
    assert any(p.value == "feed" for p in exc.value.problems)


def test_check_config_reports_sites_and_tag_maps(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli_main(["check-config", *map(str, SITES), *map(str, TAGS)]) == 0
    out = capsys.readouterr().out
    assert out.count("ok") >= len(SITES) + len(TAGS)


def test_tags_write_arguments_are_checked_before_connecting() -> None:
    site = load_site(ROOT / "configs/sites/bioreactor-modbus.yaml")
    with pytest.raises(ConfigError) as exc:
        parse_assignments(
            site, ["feed_rate_sp=0.5", "biomass=1", "nope=2", "feed_rate_sp", "mpc_heartbeat=x"]
        )
    msgs = " | ".join(str(p) for p in exc.value.problems)
    # the ports' own write check words them (controller.ports.writecheck)
    assert "tag 'feed_rate_sp': value 0.5 is outside the tag limits [0, 0.2]" in msgs
    assert "tag 'biomass' is read-only (direction read): the twin does not write it" in msgs
    assert "unknown tag 'nope' to write; allowed: [" in msgs
    assert "expected TAG=VALUE" in msgs and "value 'x' is not a finite number" in msgs
    assert parse_assignments(site, ["feed_rate_sp=0.05"]) == {"feed_rate_sp": 0.05}


def test_every_opcua_site_is_secured_with_the_test_pki() -> None:
    for path in SITES:
        site = load_site(path)
        if site.connection.protocol != "opcua":
            continue
        sec = site.connection.opcua.security
        assert (sec.policy, sec.mode) == ("Basic256Sha256", "SignAndEncrypt"), path.stem
        assert sec.certificate and sec.private_key and sec.trust_list, path.stem
        assert site.connection.opcua.username and site.connection.opcua.password_env


def test_the_hil_section_is_kept_as_written_and_not_checked(tmp_path: Path) -> None:
    """The controller does not validate the HIL bench's section (``pharmatwin-hil`` does)."""
    data = _copy_site("cstr-modbus")
    data["hil"]["plc"]["interlocks"][0]["expression"] = "no_such_expression"
    data["hil"]["no_such_key"] = 1
    site = load_site(_write(tmp_path / "site.yaml", data))
    assert site.hil is not None and site.hil["no_such_key"] == 1


# ------------------------------------------------- controller limits vs tag limits
def _copy_site(name: str) -> dict[str, Any]:
    data: dict[str, Any] = yaml.safe_load((ROOT / "configs/sites" / f"{name}.yaml").read_text())
    for key in ("plant", "controller", "tags"):
        data[key] = str((ROOT / "configs/sites" / data[key]).resolve())
    data["hil"]["scenario"] = str((ROOT / "configs/sites" / data["hil"]["scenario"]).resolve())
    data.pop("forecast", None)
    return data


def _write(path: Path, data: dict[str, Any]) -> Path:
    path.write_text(yaml.safe_dump(data, sort_keys=False), encoding="utf-8")
    return path


async def test_controller_limits_outside_the_tag_limits_are_refused_at_load(
    tmp_path: Path,
) -> None:
    """The failure first: the feed setpoint tag allows [5, 80] while the controller's input F
    goes to 100, so a setpoint the safety layer passes (90, inside the controller's limits)
    is refused at the port. Such a site is refused when it loads, naming both ranges."""
    tags = yaml.safe_load((ROOT / "configs/tags/cstr.yaml").read_text())
    tags["tags"]["feed_dilution_sp"]["limits"] = [5.0, 80.0]
    narrow = load_tag_map(_write(tmp_path / "tags.yaml", tags))
    cfg = load_site(ROOT / "configs/sites/cstr-modbus.yaml").controller
    assert cfg.inputs["F"].lower <= 90.0 <= cfg.inputs["F"].upper  # the safety layer passes it
    async with MemoryPort(table_from_tag_map(narrow), SteppedClock(), narrow) as port:
        report = await port.write({"feed_dilution_sp": 90.0})
    assert report.results["feed_dilution_sp"].status is WriteStatus.REJECTED  # the port does not

    data = _copy_site("cstr-modbus")
    data["tags"] = str(tmp_path / "tags.yaml")
    site = _write(tmp_path / "site.yaml", data)
    with pytest.raises(ConfigError) as exc:
        load_site(site)
    (problem,) = exc.value.problems
    assert (problem.file, problem.location, problem.value) == (str(site), "controller", [5, 100])
    assert problem.message == (
        "the controller's limits of input 'F' [5, 100] (inputs.F in "
        f"{data['controller']}) are not inside the write limits [5, 80] of its tag "
        f"'feed_dilution_sp' (in {data['tags']}): the port would refuse setpoints the safety "
        "layer passes; allowed: input limits within [5, 80], or wider tag limits"
    )
    lines = site.read_text().splitlines()
    assert problem.line == 1 + lines.index(f"controller: {data['controller']}")

    data["runtime"] = {"advisory_tags": {"F": "feed_dilution_sp"}, "shadow_only": True}
    with pytest.raises(ConfigError) as exc:  # one limits problem a tag, even as the advisory tag
        load_site(_write(tmp_path / "site.yaml", data))
    locations = sorted(p.location for p in exc.value.problems)
    assert locations == ["controller", "runtime.advisory_tags.F"]  # and a setpoint is no advice
