"""The behaviour every port shares, run against [memory, modbus, opcua].

Modbus and OPC UA run real servers on 127.0.0.1 free ports (never mocks of the protocols).
"""

from __future__ import annotations

import math
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
from conftest import free_port

from controller.clock import SteppedClock
from controller.errors import PortError
from controller.ports.base import Port, Quality, WriteStatus
from controller.ports.memory import MemoryPort, table_from_tag_map
from controller.ports.modbus import ModbusPort
from controller.ports.opcua import OpcUaPort
from controller.ports.settings import Backoff, Connection
from controller.ports.writecheck import WriteCheck
from controller.tags import load_tag_map
from hil.servers.modbus import ModbusPlcServer
from hil.servers.opcua import OpcUaPlcServer
from hil.servers.opcua_cache import address_space_shelf

ROOT = Path(__file__).resolve().parents[3]
TAGS = load_tag_map(ROOT / "configs" / "tags" / "bioreactor.yaml")
READABLE = [n for n, t in TAGS.tags.items() if t.readable]
VALUES = {
    "feed_rate_sp": 0.05,
    "feed_rate_pv": 0.04,
    "biomass": 1.5,
    "substrate": 0.25,  # int16 x0.001: exact
    "product_titer": 0.5,
    "broth_volume": 121.5,  # uint16 x0.01: exact
    "mpc_heartbeat": 7,
    "plc_heartbeat": 3,
    "plc_scan_counter": 11,
    "mpc_request": 0,
    "mpc_permissive": 1,
    "mpc_active": 0,
    "mpc_fallback_alarm": 0,
    "interlock_active": 0,
    "operator_reset": 0,
    "measurement_validity": 0b1111,
    "write_refusal_code": 1,
    "write_refusal_function": 16,
    "write_refusal_address": 0,
    "write_refusal_count": 2,
}
BACKOFF = Backoff(initial_s=0.1, factor=2.0, max_s=0.5)
pytestmark = pytest.mark.timeout(60)


@dataclass
class Plc:
    """A port plus the PLC side of it, for one protocol."""

    port: Port
    server_value: Callable[[str], Awaitable[float]]


async def _memory() -> AsyncIterator[Plc]:
    table = table_from_tag_map(TAGS, VALUES)

    async def value(tag: str) -> float:
        return table.current(tag)

    async with MemoryPort(table, SteppedClock(0.0), TAGS) as port:
        yield Plc(port, value)


async def _modbus() -> AsyncIterator[Plc]:
    async with ModbusPlcServer(TAGS) as server:
        for tag, v in VALUES.items():
            server.set_value(tag, v)
        conn = Connection(protocol="modbus", port=server.port, timeout_s=1.0, backoff=BACKOFF)

        async def value(tag: str) -> float:
            return server.value(tag)

        async with ModbusPort(TAGS, conn, SteppedClock(0.0)) as port:
            yield Plc(port, value)


async def _opcua(tmp: Path) -> AsyncIterator[Plc]:
    shelf = await address_space_shelf(tmp)
    server = OpcUaPlcServer(TAGS, free_port(), initial=VALUES, shelf=shelf)
    async with server:
        conn = Connection(protocol="opcua", port=server.port, timeout_s=2.0, backoff=BACKOFF)

        async def value(tag: str) -> float:
            return float(server.value(tag))

        async with OpcUaPort(TAGS, conn, SteppedClock(0.0)) as port:
            yield Plc(port, value)


@pytest.fixture(params=["memory", "modbus", "opcua"])
async def plc(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Plc]:
    gen = {
        "memory": _memory,
        "modbus": _modbus,
        "opcua": lambda: _opcua(tmp_path),
    }[request.param]()
    async for p in gen:
        yield p


async def test_reads_every_readable_tag_with_good_quality(plc: Plc) -> None:
    snap = await plc.port.read(READABLE)
    assert set(snap.values) == set(READABLE)
    for tag in READABLE:
        tv = snap[tag]
        assert tv.quality is Quality.GOOD, (tag, tv.detail)
        assert math.isclose(tv.value, VALUES[tag], rel_tol=1e-6), tag
        assert tv.read_time >= tv.source_time


async def test_write_reads_back_and_lands_in_the_plc(plc: Plc) -> None:
    report = await plc.port.write({"feed_rate_sp": 0.125, "mpc_heartbeat": 8, "mpc_request": 1})
    assert report.ok, report.failed()
    assert math.isclose(report.results["feed_rate_sp"].readback or 0.0, 0.125, rel_tol=1e-6)
    assert math.isclose(await plc.server_value("feed_rate_sp"), 0.125, rel_tol=1e-6)
    assert await plc.server_value("mpc_heartbeat") == 8
    assert await plc.server_value("mpc_request") == 1


async def test_refused_write_sends_nothing(plc: Plc) -> None:
    report = await plc.port.write({"feed_rate_sp": 0.1, "biomass": 2.0})
    assert report.results["biomass"].status is WriteStatus.REJECTED
    assert report.results["feed_rate_sp"].status is WriteStatus.NOT_SENT
    assert math.isclose(await plc.server_value("feed_rate_sp"), 0.05, rel_tol=1e-6)
    assert math.isclose(await plc.server_value("biomass"), 1.5, rel_tol=1e-6)


async def test_write_outside_tag_limits_is_refused(plc: Plc) -> None:
    report = await plc.port.write({"feed_rate_sp": 0.5})
    res = report.results["feed_rate_sp"]
    assert res.status is WriteStatus.REJECTED and not report.ok
    assert "0.5" in res.detail
    assert math.isclose(await plc.server_value("feed_rate_sp"), 0.05, rel_tol=1e-6)


async def test_unknown_tag_is_an_error_naming_it(plc: Plc) -> None:
    with pytest.raises(PortError, match="unknown tag 'no_such_tag' to read; allowed: "):
        await plc.port.read(["biomass", "no_such_tag"])


@pytest.mark.parametrize(
    ("tag", "value", "why"),
    [
        ("no_such_tag", 1.0, "unknown tag 'no_such_tag' to write; allowed: ['feed_rate_sp', "),
        ("biomass", 2.0, "tag 'biomass' is read-only (direction read): the twin does not write"),
        ("feed_rate_sp", math.nan, "tag 'feed_rate_sp': value nan is not a finite number"),
        ("feed_rate_sp", math.inf, "tag 'feed_rate_sp': value inf is not a finite number"),
        ("feed_rate_sp", 0.5, "tag 'feed_rate_sp': value 0.5 is outside the tag limits [0, 0.2]"),
        (
            "feed_rate_sp",
            -0.01,
            "tag 'feed_rate_sp': value -0.01 is outside the tag limits [0, 0.2]",
        ),
    ],
    ids=["unknown", "read-only", "nan", "inf", "above", "below"],
)
async def test_one_write_check_refuses_in_the_same_words(
    plc: Plc, tag: str, value: float, why: str
) -> None:
    """Every port runs the one write check: the same refusal, the same words, nothing sent."""
    report = await plc.port.write({"mpc_heartbeat": 9, tag: value})
    result = report.results[tag]
    assert result.status is WriteStatus.REJECTED
    assert result.detail.startswith(why), result.detail
    assert result.detail == WriteCheck.of_tags(TAGS.tags).refusal(tag, value)
    assert report.results["mpc_heartbeat"].status is WriteStatus.NOT_SENT
    assert await plc.server_value("mpc_heartbeat") == 7
