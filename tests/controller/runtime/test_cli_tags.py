"""``pharmatwin tags read|write`` against real Modbus and OPC UA servers on loopback.

The servers run on their own event loop in a thread, so the CLI is driven exactly as a user
runs it: an argv list into ``main`` (which calls ``asyncio.run``).
"""

from __future__ import annotations

import asyncio
import shlex
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
import yaml
from conftest import free_port

from controller.runtime.audit import AuditTrail
from controller.runtime.cli import main as cli_main
from controller.runtime.commissioning import refusal_words
from controller.runtime.site import load_site
from controller.tags import Table, load_tag_map
from hil.serve import ServeOptions, serve
from hil.servers.modbus import ModbusPlcServer
from hil.servers.opcua import OpcUaPlcServer, opcua_server_for_site
from hil.servers.opcua_cache import address_space_shelf

ROOT = Path(__file__).resolve().parents[3]
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
        assert "outside the tag limits [-45, 120]" in capsys.readouterr().out
        assert server.value("shelf_temp_sp") == -30.0
    trail = AuditTrail(audit)
    records = list(trail.records())
    assert [r.action for r in records] == ["tag.write.request", "tag.write.result"]
    assert records[0].actor == "eve" and records[0].old_value == "-35.0"
    assert records[0].new_value == "-30.0" and records[0].reason == "commissioning"
    assert trail.verify() == 2


@pytest.mark.slow
@pytest.mark.serial
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


# ------------------------------------------------ the README's example against `serve`
def _readme_example() -> list[str]:
    """The README's own ``pharmatwin tags write`` example, as argv (without the program)."""
    for line in (ROOT / "README.md").read_text().splitlines():
        if line.startswith("pharmatwin tags write "):
            return shlex.split(line.split(" #")[0])[1:]
    raise AssertionError("the README has no 'pharmatwin tags write' example any more")


def _unwrapped(table: str) -> str:
    """A printed table's text with cell borders and wrapping taken out (one-line cells of a
    single wrapped column read as one sentence)."""
    return " ".join(table.replace("│", " ").replace("┃", " ").split())


@contextmanager
def serving(site: Path, state: Path) -> Iterator[None]:
    """``pharmatwin-hil serve SITE`` on its own event loop in a thread, until the block ends."""
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    started, finished = threading.Event(), threading.Event()
    opts = ServeOptions(rate=600.0, state_dir=state)

    async def run() -> None:
        try:
            await serve(site, opts, announce=lambda _: started.set())
        finally:
            finished.set()

    task = asyncio.run_coroutine_threadsafe(run(), loop)
    try:
        assert started.wait(60) or task.done(), "serve did not start within 60 s"
        if task.done():
            task.result()
        yield
    finally:
        task.cancel()
        assert finished.wait(30), "serve did not stop within 30 s"
        loop.call_soon_threadsafe(loop.stop)
        thread.join(30)
        loop.close()


def test_the_readme_tags_write_example_fails_with_the_plcs_reason_in_words(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = _readme_example()
    assert argv[:3] == ["tags", "write", "configs/sites/lyophilizer-modbus.yaml"], argv
    site = _site(tmp_path, "lyophilizer-modbus", free_port())
    audit = tmp_path / "audit.db"
    with serving(site, tmp_path / "hil-state"):
        code = cli_main([*argv[:2], str(site), *argv[3:], "--audit", str(audit)])
    out = _unwrapped(capsys.readouterr().out)
    assert code == 1
    assert "rejected" in out and "Modbus exception 03 illegal data value" in out
    assert (
        "the PLC refused shelf_temp_sp (holding 0): not active: the PLC takes remote setpoints "
        "only while the MPC is active (request control with mpc_request and wait for mpc_active)"
    ) in out
    result = list(AuditTrail(audit).records())[-1]
    assert result.action == "tag.write.result"
    assert "not active: the PLC takes remote setpoints" in result.detail  # audited in words
    log = (tmp_path / "hil-state" / "lyophilizer-modbus.log").read_text()
    assert "refused a write of shelf_temp_sp = -30.0" in log and "(not active;" in log


def test_a_write_the_port_refuses_before_sending_gets_no_plc_reason(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Nothing reached the PLC (its refusal counter did not move): no PLC words are added."""
    with server_thread(_modbus_server) as server:
        server.plc_range["shelf_temp_sp"] = (-40.0, 0.0)  # the PLC's own, narrower range
        site = _site(tmp_path, "lyophilizer-modbus", server.port)
        argv = ["tags", "write", str(site), "shelf_temp_sp=10", "--reason", "range"]
        assert cli_main([*argv, "--audit", str(tmp_path / "a.db")]) == 1
        out = _unwrapped(capsys.readouterr().out)
        assert "the PLC refused shelf_temp_sp (holding 0): outside limits" in out
        assert server.value("shelf_temp_sp") == INITIAL["shelf_temp_sp"]
        argv = ["tags", "write", str(site), "mpc_heartbeat=5", "--reason", "ok"]
        assert cli_main([*argv, "--audit", str(tmp_path / "a.db")]) == 0
        assert "the PLC refused" not in capsys.readouterr().out


def test_unreadable_refusal_diagnostics_are_said_not_hidden(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A PLC whose map declares the diagnostics but that does not answer them: the refused
    write says the reason could not be read, with the PLC's own answer."""
    with server_thread(_modbus_server) as server:
        server.set_illegal(Table.INPUT, 30)  # write_refusal_code answers exception 02
        server.plc_range["shelf_temp_sp"] = (-40.0, 0.0)
        site = _site(tmp_path, "lyophilizer-modbus", server.port)
        argv = ["tags", "write", str(site), "shelf_temp_sp=10", "--reason", "range"]
        assert cli_main([*argv, "--audit", str(tmp_path / "a.db")]) == 1
    out = _unwrapped(capsys.readouterr().out)
    assert "the PLC's refusal diagnostics could not be read: tag 'write_refusal_code'" in out
    assert "02 illegal data address" in out


def test_refusal_codes_in_words() -> None:
    assert refusal_words(4) == "interlock: a PLC interlock is active and overrides the setpoints"
    assert refusal_words(9) == "unknown refusal code 9; known: [0, 1, 2, 3, 4, 5, 6]"
