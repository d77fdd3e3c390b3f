"""The HIL Modbus server's refusals seen by a plain pymodbus client: the reason of every refusal
(not active, over the rate limit, outside limits, interlock, unmapped address) in the PLC's
diagnostic input registers and its log; writes to unmapped registers answer exception 02; a
request for a unit id the map does not have answers 0B (as a gateway) or nothing at all.

The PLC is the virtual PLC itself, driven scan by scan on a process time of the test's own
(no rig, no clock, no sleeping): the server's write hooks are the PLC's, as the rig wires them.
"""

from __future__ import annotations

import asyncio
import logging
import struct
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from pymodbus.client import AsyncModbusTcpClient

from controller.codecs import encode
from controller.runtime.commissioning import REFUSAL_TAGS, RefusalCode
from controller.runtime.site import load_site
from controller.tags import ModbusSpec, Table
from hil.net import LOOPBACK
from hil.servers.modbus import ModbusPlcServer
from hil.site import hil_section
from hil.vplc import VirtualPlc

ROOT = Path(__file__).resolve().parents[2]
SITE = load_site(ROOT / "configs" / "sites" / "lyophilizer-modbus.yaml")
TAGS = SITE.tags
WORKING = {"Tsh": -35.0, "Pch": 0.15}
COLD = {"Tbot": -30.0}  # below the collapse interlock (Tbot above -5 degC)
pytestmark = pytest.mark.timeout(60)


class Bench:
    """A virtual PLC behind a Modbus server, scanned by hand at process time ``now``."""

    def __init__(self, server: ModbusPlcServer) -> None:
        self.now = 0.0
        hil = hil_section(SITE)
        assert hil is not None
        self.plc = VirtualPlc(TAGS, hil.plc, ("Tsh", "Pch"), WORKING, now=lambda: self.now)
        self.server = server
        server.write_hook, server.write_check = self.plc.on_write, self.plc.check_write

    async def scan(self, plant: dict[str, float] = COLD) -> None:
        applied = self.plc.scan(self.now, 0.0, plant)
        await self.server.publish(self.plc.image({"Tbot": plant["Tbot"]}, set(), applied))


@pytest.fixture
async def bench() -> AsyncIterator[Bench]:
    async with ModbusPlcServer(TAGS) as server:
        b = Bench(server)
        await b.scan()
        yield b


@pytest.fixture
async def client(bench: Bench) -> AsyncIterator[AsyncModbusTcpClient]:
    c = AsyncModbusTcpClient(LOOPBACK, port=bench.server.port, retries=0, reconnect_delay=0)
    assert await c.connect()
    yield c
    c.close()


def _spec(tag: str) -> ModbusSpec:
    spec = TAGS.tags[tag].modbus
    assert spec is not None
    return spec


async def write(client: AsyncModbusTcpClient, tag: str, value: float) -> int | None:
    """Write one tag as registers (or a coil); the exception code, or None when accepted."""
    spec = _spec(tag)
    if spec.table is Table.COIL:
        answer = await client.write_coil(spec.protocol_address, bool(value))
    else:
        answer = await client.write_registers(spec.protocol_address, encode(tag, spec, value))
    return int(answer.exception_code) if answer.isError() else None


async def diagnostics(client: AsyncModbusTcpClient) -> dict[str, int]:
    """The PLC's last-refusal registers, read as any Modbus client reads them."""
    first = _spec(REFUSAL_TAGS[0]).protocol_address
    answer = await client.read_input_registers(first, count=len(REFUSAL_TAGS))
    assert not answer.isError(), answer
    return dict(zip(REFUSAL_TAGS, answer.registers, strict=True))


async def engage(bench: Bench, client: AsyncModbusTcpClient) -> None:
    assert await write(client, "mpc_request", 1) is None
    assert await write(client, "mpc_heartbeat", 1) is None
    bench.now = 1.0
    await bench.scan()
    assert bench.plc.active


async def test_every_refusal_reason_reaches_the_client_and_the_log(
    bench: Bench, client: AsyncModbusTcpClient, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="hil.servers.modbus")
    assert await diagnostics(client) == dict.fromkeys(REFUSAL_TAGS, 0)  # nothing refused yet
    sp = _spec("shelf_temp_sp").protocol_address

    assert await write(client, "shelf_temp_sp", -34.0) == 3  # not active yet
    assert await diagnostics(client) == {
        "write_refusal_code": RefusalCode.NOT_ACTIVE,
        "write_refusal_function": 16,
        "write_refusal_address": sp,
        "write_refusal_count": 1,
    }
    assert "refused a write of shelf_temp_sp = -34.0" in caplog.text
    assert "only while the MPC is active (not active; function 16" in caplog.text

    await engage(bench, client)
    assert await write(client, "shelf_temp_sp", 130.0) == 3  # the tag's limits: [-45, 120]
    assert (await diagnostics(client))["write_refusal_code"] == RefusalCode.OUTSIDE_LIMITS
    assert "outside the PLC range [-45.0, 120.0] (outside limits;" in caplog.text

    bench.now = 2.0  # 1 s after engaging: 0.0167 degC/s x 1.25 allows 0.02 degC
    assert await write(client, "shelf_temp_sp", -30.0) == 3
    diag = await diagnostics(client)
    assert diag["write_refusal_code"] == RefusalCode.RATE_LIMIT
    assert diag["write_refusal_count"] == 3
    assert "exceeds the PLC rate limit 0.0167/s (rate limit;" in caplog.text
    assert await write(client, "shelf_temp_sp", -35.01) is None  # within the rate: accepted
    assert (await diagnostics(client))["write_refusal_count"] == 3  # no new refusal

    await bench.scan({"Tbot": 0.0})  # the product is warm: the collapse interlock trips
    assert not bench.plc.active
    assert await write(client, "shelf_temp_sp", -35.0) == 3
    assert (await diagnostics(client))["write_refusal_code"] == RefusalCode.INTERLOCK
    assert "(interlock; function 16" in caplog.text


async def test_a_write_to_an_unmapped_register_is_exception_02(
    bench: Bench, client: AsyncModbusTcpClient, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="hil.servers.modbus")
    mapped = {
        a
        for t in TAGS.tags.values()
        if (s := t.modbus) is not None and s.table is Table.HOLDING
        for a in range(s.protocol_address, s.protocol_address + s.count)
    }
    gap = 5
    assert gap not in mapped and 4 not in mapped  # holding 4..9 hold no tag
    before = await client.read_holding_registers(0, count=11)
    assert not before.isError()  # reading a gap is answered, as many PLCs do

    answer = await client.write_register(gap, 1234)
    assert answer.isError() and answer.exception_code == 2
    assert bench.server.get_registers(Table.HOLDING, gap, 1) == [0]  # nothing stored
    # a request running from a tag into the gap is refused whole: the tag keeps its value
    pressure = _spec("chamber_pressure_sp")
    kept = bench.server.value("chamber_pressure_sp")
    payload = [*encode("chamber_pressure_sp", pressure, 0.2), 7]
    answer = await client.write_registers(pressure.protocol_address, payload)
    assert answer.isError() and answer.exception_code == 2
    assert bench.server.value("chamber_pressure_sp") == kept
    # a coil no tag holds, and a register past the end of the table
    assert (await client.write_coil(9, True)).exception_code == 2
    assert (await client.write_register(4000, 1)).exception_code == 2

    diag = await diagnostics(client)
    assert diag["write_refusal_code"] == RefusalCode.UNMAPPED
    assert diag["write_refusal_function"] == 6 and diag["write_refusal_address"] == 4000
    assert diag["write_refusal_count"] == 4
    assert "refused a write of an unmapped register: no tag holds holding 5 of unit 1" in (
        caplog.text
    )
    assert "no tag holds holding 4 of unit 1" in caplog.text  # the first register after the tag


async def test_a_wrong_unit_id_gets_the_gateway_exception_0b(
    bench: Bench, client: AsyncModbusTcpClient, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="hil.servers.modbus")
    assert bench.server.wrong_unit == "gateway"  # the default
    for read in (client.read_input_registers, client.read_holding_registers):
        answer = await read(0, count=2, device_id=7)
        assert answer.isError() and answer.exception_code == 0x0B
    answer = await client.write_register(0, 1, device_id=9)
    assert answer.isError() and answer.exception_code == 0x0B
    assert bench.server.get_registers(Table.HOLDING, 0, 1) != [1]  # nothing written
    assert "asked unit 7, which is not here (units [1]): exception 0B" in caplog.text
    answer = await client.read_input_registers(0, count=2, device_id=1)
    assert not answer.isError()  # the same connection serves unit 1 as before


def _mbap(transaction: int, unit: int, pdu: bytes) -> bytes:
    return struct.pack(">HHHB", transaction, 0, len(pdu) + 1, unit) + pdu


class _Heard(logging.Handler):
    """Sets ``event`` when a record containing ``text`` is logged."""

    def __init__(self, text: str) -> None:
        super().__init__()
        self.text, self.event = text, asyncio.Event()

    def emit(self, record: logging.LogRecord) -> None:
        if self.text in record.getMessage():
            self.event.set()


async def test_a_wrong_unit_id_can_get_no_answer_at_all(caplog: pytest.LogCaptureFixture) -> None:
    """A request for unit 7, handled, then one for unit 1 on the same connection: the first
    bytes back answer unit 1 (TCP keeps the order: an answer to unit 7 would come first)."""
    caplog.set_level(logging.INFO, logger="hil.servers.modbus")
    heard = _Heard("asked unit 7")
    logging.getLogger("hil.servers.modbus").addHandler(heard)
    async with ModbusPlcServer(TAGS, wrong_unit="silent") as server:
        server.set_value("plc_heartbeat", 4242)
        read = struct.pack(">BHH", 4, _spec("plc_heartbeat").protocol_address, 1)
        reader, writer = await asyncio.open_connection(LOOPBACK, server.port)
        try:
            writer.write(_mbap(1, 7, read))
            await writer.drain()
            await asyncio.wait_for(heard.event.wait(), 10)  # the server has handled it
            writer.write(_mbap(2, 1, read))
            await writer.drain()
            transaction, _, length, unit = struct.unpack(">HHHB", await reader.readexactly(7))
            body = await reader.readexactly(length - 1)
        finally:
            writer.close()
            logging.getLogger("hil.servers.modbus").removeHandler(heard)
    assert (transaction, unit) == (2, 1)  # the answer to unit 1; unit 7 got none
    assert body == struct.pack(">BBH", 4, 2, 4242)
    assert "asked unit 7, which is not here (units [1]): no answer" in caplog.text


def test_an_unknown_wrong_unit_setting_is_refused() -> None:
    with pytest.raises(ValueError, match=r"wrong_unit 'ignore'; allowed: \['gateway', 'silent'\]"):
        ModbusPlcServer(TAGS, wrong_unit="ignore")  # type: ignore[arg-type]
