"""Site files and tag maps: every shipped one loads; bad ones list every problem."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from controller.errors import ConfigError
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
    assert "allowed [0.0, 0.2]" in msgs and "read-only" in msgs and "unknown tag" in msgs
    assert "expected TAG=VALUE" in msgs and "not a number" in msgs
    assert parse_assignments(site, ["feed_rate_sp=0.05"]) == {"feed_rate_sp": 0.05}


def test_every_opcua_site_is_secured_with_the_test_pki() -> None:
    for path in SITES:
        site = load_site(path)
        if site.connection.protocol != "opcua":
            continue
        sec, hil = site.connection.opcua.security, site.hil
        assert (sec.policy, sec.mode) == ("Basic256Sha256", "SignAndEncrypt"), path.stem
        assert sec.certificate and sec.private_key and sec.trust_list, path.stem
        assert site.connection.opcua.username and site.connection.opcua.password_env
        assert hil is not None and hil.ca_certificate and hil.ca_private_key, path.stem
        assert site.file(hil.ca_certificate) in {site.file(ref) for ref in sec.trust_list}


def test_the_hil_ca_is_a_pair_of_existing_files(tmp_path: Path) -> None:
    data = yaml.safe_load((ROOT / "configs/sites/cstr-opcua.yaml").read_text())
    for key in ("plant", "controller", "tags"):
        data[key] = str((ROOT / "configs/sites" / data[key]).resolve())
    data["hil"]["scenario"] = str((ROOT / "configs/sites" / data["hil"]["scenario"]).resolve())
    security = data["connection"]["opcua"]["security"]
    for key in ("certificate", "private_key"):
        security[key] = str((ROOT / "configs/sites" / security[key]).resolve())
    security["trust_list"] = [
        str((ROOT / "configs/sites" / r).resolve()) for r in security["trust_list"]
    ]
    path = tmp_path / "site.yaml"
    data["hil"]["ca_certificate"] = "nowhere/ca.der"
    data["hil"]["ca_private_key"] = "nowhere/ca.key.pem"
    path.write_text(yaml.safe_dump(data))
    with pytest.raises(ConfigError) as exc:
        load_site(path)
    assert {p.location for p in exc.value.problems} == {"hil.ca_certificate", "hil.ca_private_key"}
    del data["hil"]["ca_private_key"]
    path.write_text(yaml.safe_dump(data))
    with pytest.raises(ConfigError, match="'ca_certificate' and 'ca_private_key'"):
        load_site(path)
    del data["hil"]["ca_certificate"]
    path.write_text(yaml.safe_dump(data))
    assert load_site(path).hil is not None  # neither: a self-signed server, as before
