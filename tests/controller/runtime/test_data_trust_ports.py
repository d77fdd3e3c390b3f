"""A value read outside its tag's engineering limits is flagged (issue 16), on every port.

``limits`` of a read tag is the instrument's span as the PLC scales it; a value outside is
not a reading that instrument can give: the usual culprit is the tag map's word order or
scale. Every port marks it UNCERTAIN with the detail "outside limits: wrong word order or
scale?", and a value that is not a finite number BAD; ``pharmatwin tags read`` shows both.
Real servers on loopback (Modbus in a thread, as the CLI tests do).
"""

from __future__ import annotations

import math
import struct
from pathlib import Path

import pytest
from conftest import free_port
from test_cli_tags import _site, server_thread

from controller.clock import RealClock
from controller.ports.base import (
    OUTSIDE_LIMITS,
    Quality,
    TagValue,
    flag_implausible,
)
from controller.ports.memory import MemoryPort, table_from_tag_map
from controller.ports.modbus import ModbusPort
from controller.ports.opcua import OpcUaPort
from controller.ports.settings import Backoff, Connection
from controller.runtime.cli import main as cli_main
from controller.runtime.site import load_site
from controller.tags import Table, load_tag_map
from hil.servers.modbus import ModbusPlcServer
from hil.servers.opcua import OpcUaPlcServer
from hil.servers.opcua_cache import address_space_shelf

ROOT = Path(__file__).resolve().parents[3]
BIO_TAGS = load_tag_map(ROOT / "configs" / "tags" / "bioreactor.yaml")
pytestmark = pytest.mark.timeout(60)


def test_the_flag_marks_only_good_values_outside_limits_or_not_finite() -> None:
    titer = BIO_TAGS.tags["product_titer"]  # limits [-1, 50]
    good = TagValue(1.5, Quality.GOOD, 0.0, 0.0)
    assert flag_implausible(good, titer) is good
    out = flag_implausible(TagValue(-1.07e8, Quality.GOOD, 0.0, 0.0), titer)
    assert out.quality is Quality.UNCERTAIN and out.value == -1.07e8
    assert out.detail == f"{OUTSIDE_LIMITS} (read -1.07e+08, limits [-1, 50])"
    nan = flag_implausible(TagValue(math.nan, Quality.GOOD, 0.0, 0.0), titer)
    assert nan.quality is Quality.BAD and nan.detail == "not a finite number (nan)"
    inf = flag_implausible(TagValue(math.inf, Quality.GOOD, 0.0, 0.0), None)  # no tag: no limits
    assert inf.quality is Quality.BAD
    bad = TagValue(99.0, Quality.BAD, 0.0, 0.0, "BadSensorFailure")
    assert flag_implausible(bad, titer) is bad  # already bad: its own reason stays
    no_limits = BIO_TAGS.tags["plc_scan_counter"]
    assert flag_implausible(TagValue(1e30, Quality.GOOD, 0.0, 0.0), no_limits).quality is (
        Quality.GOOD
    )


async def test_the_memory_port_flags_like_the_others_when_given_the_tag_map() -> None:
    clock = RealClock()
    table = table_from_tag_map(BIO_TAGS, {"biomass": 4.2e9, "substrate": 0.4})
    async with MemoryPort(table, clock, BIO_TAGS) as port:
        snap = await port.read(["biomass", "substrate"])
    assert snap["biomass"].quality is Quality.UNCERTAIN
    assert snap["biomass"].detail.startswith(OUTSIDE_LIMITS)
    assert snap["substrate"].quality is Quality.GOOD
    async with MemoryPort(table, clock) as bare:  # without a map there is nothing to check
        assert (await bare.read(["biomass"]))["biomass"].quality is Quality.GOOD


def _abcd(value: float) -> list[int]:
    """float32 registers in Modbus's own order (high word first)."""
    raw = struct.pack(">f", value)
    return [int.from_bytes(raw[:2], "big"), int.from_bytes(raw[2:], "big")]


async def _wrong_word_order_server() -> ModbusPlcServer:
    """A PLC that sends the titer (mapped CDAB) high word first, and a NaN biomass."""
    server = ModbusPlcServer(BIO_TAGS)
    titer = BIO_TAGS.tags["product_titer"].modbus
    assert titer is not None and titer.order.value == "CDAB"
    server.set_registers(Table.INPUT, titer.protocol_address, _abcd(0.1))
    biomass = BIO_TAGS.tags["biomass"].modbus
    assert biomass is not None
    server.set_registers(Table.INPUT, biomass.protocol_address, [0x7FC0, 0x0000])  # a NaN
    server.set_value("substrate", 0.4)
    server.set_value("broth_volume", 121.0)
    return server


async def test_the_modbus_port_flags_a_value_read_in_the_wrong_word_order(tmp_path: Path) -> None:
    with server_thread(_wrong_word_order_server) as server:
        site = load_site(_site(tmp_path, "bioreactor-modbus", server.port))
        async with ModbusPort(site.tags, site.connection, RealClock()) as port:
            snap = await port.read(["product_titer", "biomass", "substrate", "broth_volume"])
            titer = snap["product_titer"]
            assert titer.quality is Quality.UNCERTAIN  # 0.1 g/L sent ABCD, read CDAB
            assert titer.value == pytest.approx(-1.076056e8, rel=1e-6)
            assert titer.detail.startswith(OUTSIDE_LIMITS)
            assert snap["biomass"].quality is Quality.BAD
            assert snap["substrate"].quality is Quality.GOOD
            assert snap["broth_volume"].quality is Quality.GOOD


@pytest.mark.slow
@pytest.mark.serial
async def test_the_opcua_port_flags_a_value_outside_limits_and_a_nan(tmp_path: Path) -> None:
    shelf = await address_space_shelf(tmp_path)
    initial = {"product_titer": 60.0, "biomass": math.nan, "substrate": 0.4}
    async with OpcUaPlcServer(BIO_TAGS, free_port(), initial=initial, shelf=shelf) as server:
        backoff = Backoff(initial_s=0.1, factor=2.0, max_s=0.5)
        conn = Connection(protocol="opcua", port=server.port, timeout_s=2.0, backoff=backoff)
        async with OpcUaPort(BIO_TAGS, conn, RealClock()) as port:
            snap = await port.read(["product_titer", "biomass", "substrate"])
    assert snap["product_titer"].quality is Quality.UNCERTAIN
    assert snap["product_titer"].detail.startswith(OUTSIDE_LIMITS)
    assert snap["biomass"].quality is Quality.BAD
    assert snap["substrate"].quality is Quality.GOOD


def test_tags_read_shows_the_flag(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("COLUMNS", "80")  # as in a pipe or a log: laid out wider, names whole
    with server_thread(_wrong_word_order_server) as server:
        site = _site(tmp_path, "bioreactor-modbus", server.port)
        assert cli_main(["tags", "read", str(site)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert max(len(line) for line in lines) > 80 and "…" not in "".join(lines)
    titer = next(line for line in lines if "product_titer" in line)
    assert "uncertain (outside limits: wrong word order" in titer  # the rest wraps
    biomass = next(line for line in lines if " biomass " in line)
    assert "bad (not a finite number (nan))" in biomass
    volume = next(line for line in lines if "broth_volume" in line)
    assert "good" in volume
