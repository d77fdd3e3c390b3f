"""``pharmatwin tags read|write`` against real Modbus and OPC UA servers on loopback.

The servers run on their own event loop in a thread, so the CLI is driven exactly as a user
runs it: an argv list into ``main`` (which calls ``asyncio.run``).
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
import yaml
from conftest import free_port

from controller.audit import AuditTrail
from controller.cli import main as cli_main
from controller.site import load_site
from controller.tags import load_tag_map
from hil.servers.modbus import ModbusPlcServer
from hil.servers.opcua import OpcUaPlcServer, address_space_shelf, opcua_server_for_site

ROOT = Path(__file__).resolve().parents[1]
SITES = ROOT / "configs" / "sites"
TAGS = load_tag_map(ROOT / "configs" / "tags" / "lyophilizer.yaml")
INITIAL = {"shelf_temp_sp": -35.0, "chamber_pressure_sp": 0.15, "product_temp_bottom": -36.25}
pytestmark = pytest.mark.timeout(90)


@contextmanager
def server_thread(make: Any) -> Iterator[Any]:
    """Run an async server (an async context manager built by ``make()``) in a thread."""
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    server = asyncio.run_coroutine_threadsafe(make(), loop).result(30)
    asyncio.run_coroutine_threadsafe(server.__aenter__(), loop).result(30)
    try:
        yield server
    finally:
        asyncio.run_coroutine_threadsafe(server.__aexit__(None, None, None), loop).result(30)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)


def _site(tmp_path: Path, name: str, port: int) -> Path:
    data = yaml.safe_load((SITES / f"{name}.yaml").read_text())
    for key in ("plant", "controller", "tags"):
        data[key] = str((SITES / data[key]).resolve())
    if "hil" in data:  # the site is copied: its relative paths would no longer resolve
        for key in ("scenario", "ca_certificate", "ca_private_key"):
            if key in data["hil"]:
                data["hil"][key] = str((SITES / data["hil"][key]).resolve())
        data["hil"]["state_dir"] = str(tmp_path / "hil-state")
    security = data["connection"].get("opcua", {}).get("security")
    if security:
        for key in ("certificate", "private_key"):
            security[key] = str((SITES / security[key]).resolve())
        security["trust_list"] = [str((SITES / ref).resolve()) for ref in security["trust_list"]]
    data["connection"]["port"] = port
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


async def _modbus_server() -> ModbusPlcServer:
    server = ModbusPlcServer(TAGS)
    for tag, value in INITIAL.items():
        server.set_value(tag, value)
    return server


def test_tags_read_and_write_over_modbus(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with server_thread(_modbus_server) as server:
        site = _site(tmp_path, "lyophilizer-modbus", server.port)
        assert cli_main(["tags", "read", str(site)]) == 0
        out = capsys.readouterr().out
        assert "product_temp_bottom" in out and "-36.25" in out and "good" in out
        audit = tmp_path / "audit.db"
        argv = ["tags", "write", str(site), "shelf_temp_sp=-30", "--reason", "commissioning"]
        assert cli_main([*argv, "--audit", str(audit), "--user", "eve"]) == 0
        out = capsys.readouterr().out
        assert "ok" in out and "-30" in out
        assert server.value("shelf_temp_sp") == -30.0
        # refused before anything is sent: out of limits
        argv = ["tags", "write", str(site), "shelf_temp_sp=200", "--reason", "typo"]
        assert cli_main([*argv, "--audit", str(audit)]) == 2
        assert "allowed [-45.0, 120.0]" in capsys.readouterr().out
        assert server.value("shelf_temp_sp") == -30.0
    trail = AuditTrail(audit)
    records = list(trail.records())
    assert [r.action for r in records] == ["tag.write.request", "tag.write.result"]
    assert records[0].actor == "eve" and records[0].old_value == "-35.0"
    assert records[0].new_value == "-30.0" and records[0].reason == "commissioning"
    assert trail.verify() == 2


def test_tags_read_over_opcua_with_a_user(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The shipped secured site: SignAndEncrypt, the test CA's client certificate, a user."""
    monkeypatch.setenv("PHARMATWIN_OPCUA_PASSWORD", "s3cret")
    site = _site(tmp_path, "lyophilizer-opcua", free_port())

    async def make() -> OpcUaPlcServer:
        shelf = await address_space_shelf(tmp_path)
        return await opcua_server_for_site(load_site(site), initial=INITIAL, shelf=shelf)

    with server_thread(make):
        assert (
            cli_main(["tags", "read", str(site), "--watch", "--interval", "0.1", "--count", "2"])
            == 0
        )
        out = capsys.readouterr().out
        assert "shelf_temp_sp" in out and "-36.25" in out and "good" in out
        monkeypatch.setenv("PHARMATWIN_OPCUA_PASSWORD", "wrong")
        assert cli_main(["tags", "read", str(site)]) == 2
        assert "refused the user 'operator'" in capsys.readouterr().out


def test_tags_read_reports_an_absent_server(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    site = _site(tmp_path, "lyophilizer-modbus", free_port())
    assert cli_main(["tags", "read", str(site)]) == 2
    assert "127.0.0.1" in capsys.readouterr().out
