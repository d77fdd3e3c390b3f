"""The Modbus port against a rogue PLC whose answers are not the answers to its requests.

A raw asyncio Modbus TCP server on 127.0.0.1 (no pymodbus on the server side, so it can send
anything) answers the real :class:`~controller.ports.modbus.ModbusPort`, built as
``port_for_site`` builds it for ``configs/sites/cstr-modbus.yaml``. Each case tampers with one
answer: another function's answer, a stray frame with transaction id 0 first, more registers
than asked, an FC 3 answer to an FC 23 write the PLC did not store, a frame pymodbus cannot
decode. None of them may come out as a GOOD value or an OK write; a malformed frame must give
a one-line error naming it, and no traceback on the CLI's log handler.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import functools
import io
import logging
import struct
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path

import pytest
from conftest import LOOPBACK, free_port

from controller.clock import SteppedClock
from controller.codecs import encode
from controller.errors import ProtocolError
from controller.ports.base import Quality
from controller.ports.modbus import ModbusPort
from controller.runtime.logsetup import LIBRARY_LOGGERS, setup_logging
from controller.runtime.site import Site, load_site, port_for_site
from controller.tags import Table

ROOT = Path(__file__).resolve().parents[3]
NOW = 1000.0
#: input registers 0..21 in one read: the measurements, as the runtime reads them
MEASUREMENTS = [
    "conc_a",
    "conc_b",
    "reactor_temp",
    "jacket_temp",
    "feed_dilution_pv",
    "jacket_duty_pv",
    "plc_scan_counter",
]
TRUE_VALUES = {"conc_a": 2.0, "conc_b": 1.0, "reactor_temp": 120.0, "feed_dilution_pv": 20.0}
SETPOINTS = {"feed_dilution_sp": 30.0, "jacket_duty_sp": -3000.0}  # one FC 23 block, 0..3

pytestmark = pytest.mark.timeout(60)

#: (transaction id, unit id, request PDU, the honest answer PDU) -> the bytes to send
Tamper = Callable[[int, int, bytes, bytes], bytes]


def frame(tid: int, unit: int, pdu: bytes, length: int | None = None) -> bytes:
    """A Modbus TCP frame (MBAP header + PDU); ``length`` overrides the MBAP length field."""
    return struct.pack(">HHHB", tid, 0, len(pdu) + 1 if length is None else length, unit) + pdu


def honest(tid: int, unit: int, request: bytes, answer: bytes) -> bytes:
    return frame(tid, unit, answer)


class RoguePlc:
    """A Modbus TCP server that answers FC 1-4 and 23 from its tables, through ``tamper``."""

    def __init__(self, tamper: Tamper = honest) -> None:
        self.tamper = tamper
        self.registers: dict[Table, dict[int, int]] = {Table.HOLDING: {}, Table.INPUT: {}}
        self.bits: dict[Table, dict[int, int]] = {Table.COIL: {}, Table.DISCRETE: {}}
        self.port = free_port()
        self.requests: list[int] = []  # function codes received
        self.stores_writes = True
        self.has_fc23 = True

    def answer(self, request: bytes) -> bytes:
        """The honest answer PDU to ``request``."""
        function = request[0]
        if function == 23 and not self.has_fc23:
            return bytes([function | 0x80, 0x01])  # illegal function: the port uses FC 16
        if function in (15, 16):  # store, then echo the start address and count
            start, count = struct.unpack(">HH", request[1:5])
            if function == 16:
                values = struct.unpack(f">{count}H", request[6 : 6 + 2 * count])
                self.registers[Table.HOLDING].update(
                    zip(range(start, start + count), values, strict=True)
                )
            else:
                for i in range(count):
                    self.bits[Table.COIL][start + i] = (request[6 + i // 8] >> (i % 8)) & 1
            return request[:5]
        if function in (3, 4, 23):
            table = self.registers[Table.HOLDING if function != 4 else Table.INPUT]
            start, count = struct.unpack(">HH", request[1:5])
            if function == 23 and self.stores_writes:
                address, written = struct.unpack(">HH", request[5:9])
                values = struct.unpack(f">{written}H", request[10 : 10 + 2 * written])
                table.update(zip(range(address, address + written), values, strict=True))
            data = b"".join(struct.pack(">H", table.get(a, 0)) for a in range(start, start + count))
            return bytes([function, len(data)]) + data
        if function in (1, 2):
            start, count = struct.unpack(">HH", request[1:5])
            bits = self.bits[Table.COIL if function == 1 else Table.DISCRETE]
            packed = bytearray((count + 7) // 8)
            for i in range(count):
                packed[i // 8] |= bits.get(start + i, 0) << (i % 8)
            return bytes([function, len(packed)]) + bytes(packed)
        return bytes([function | 0x80, 0x01])  # illegal function

    async def serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(asyncio.IncompleteReadError, ConnectionError):
            while True:
                tid, _, length, unit = struct.unpack(">HHHB", await reader.readexactly(7))
                request = await reader.readexactly(length - 1)
                self.requests.append(request[0])
                writer.write(self.tamper(tid, unit, request, self.answer(request)))
                await writer.drain()
        writer.close()


@functools.cache
def cstr_site() -> Site:
    return load_site(ROOT / "configs" / "sites" / "cstr-modbus.yaml")


@contextlib.asynccontextmanager
async def rogue_and_port(tamper: Tamper) -> AsyncIterator[tuple[RoguePlc, ModbusPort]]:
    """A rogue PLC holding sane values, and the site's port connected to it."""
    rogue = RoguePlc(tamper)
    site = cstr_site()
    for name, value in TRUE_VALUES.items():
        spec = site.tags.tags[name].modbus
        assert spec is not None
        registers = encode(name, spec, value)
        rogue.registers[spec.table].update(enumerate(registers, spec.protocol_address))
    server = await asyncio.start_server(rogue.serve, LOOPBACK, rogue.port)
    update = {"host": LOOPBACK, "port": rogue.port, "timeout_s": 0.5}
    site = dataclasses.replace(site, connection=site.connection.model_copy(update=update))
    try:
        async with port_for_site(site, SteppedClock(NOW)) as port:
            assert isinstance(port, ModbusPort)
            yield rogue, port
    finally:
        server.close()
        await server.wait_closed()


def only(function: int, tamper: Tamper) -> Tamper:
    """``tamper`` the answers to ``function`` requests; the others are honest."""

    def choose(tid: int, unit: int, request: bytes, answer: bytes) -> bytes:
        return (tamper if request[0] == function else honest)(tid, unit, request, answer)

    return choose


# ----------------------------------------------------------------------- cases
async def test_a_coil_read_answer_to_a_discrete_input_read_is_refused() -> None:
    """The PLC holds mpc_permissive = 0; an FC 1 answer full of ones must not grant control."""

    def coils(tid: int, unit: int, request: bytes, answer: bytes) -> bytes:
        return frame(tid, unit, bytes([1, answer[1]]) + b"\xff" * answer[1])

    async with rogue_and_port(only(2, coils)) as (_, port):
        with pytest.raises(ProtocolError) as caught:
            await port.read(["mpc_permissive"])
        assert not port.connected  # out of step: the connection is dropped
    message = str(caught.value)
    assert "FC 2 (read discrete inputs)" in message and "FC 1 (read coils)" in message
    assert "discrete 0..0" in message and "mpc_permissive" in message


async def test_a_frame_with_transaction_id_0_before_the_answer_is_not_taken() -> None:
    """pymodbus takes a tid-0 frame for any request's answer; its values must not be used."""
    stray = {"sent": False}

    def stray_first(tid: int, unit: int, request: bytes, answer: bytes) -> bytes:
        if stray["sent"]:
            return frame(tid, unit, answer)
        stray["sent"] = True
        other = bytes([4, answer[1]]) + b"\x40\x40" * (answer[1] // 2)  # conc_a 3.004
        return frame(0, unit, other) + frame(tid, unit, answer)

    async with rogue_and_port(only(4, stray_first)) as (_, port):
        with pytest.raises(ProtocolError, match="expected transaction id 1, got 0"):
            await port.read(MEASUREMENTS)
        snapshot = await port.read(MEASUREMENTS)  # a new connection: the real values
    assert snapshot.values["conc_a"].value == TRUE_VALUES["conc_a"]
    assert snapshot.values["conc_a"].quality is Quality.GOOD


async def test_more_registers_than_asked_is_refused() -> None:
    def longer(tid: int, unit: int, request: bytes, answer: bytes) -> bytes:
        return frame(tid, unit, bytes([4, answer[1] + 4]) + answer[2:] + b"\x00\x01\x00\x02")

    async with rogue_and_port(only(4, longer)) as (_, port):
        with pytest.raises(ProtocolError, match="expected 22 registers, got 24") as caught:
            await port.read(MEASUREMENTS)
        assert not port.connected
    assert "input 0..21 (0-based) of unit 1" in str(caught.value)


async def test_an_fc3_answer_to_an_fc23_write_is_not_reported_ok() -> None:
    """The PLC stores nothing and echoes the requested values in an FC 3 answer."""

    def not_stored(tid: int, unit: int, request: bytes, answer: bytes) -> bytes:
        written = struct.unpack(">H", request[7:9])[0]
        return frame(tid, unit, bytes([3, 2 * written]) + request[10 : 10 + 2 * written])

    async with rogue_and_port(only(23, not_stored)) as (rogue, port):
        rogue.stores_writes = False
        with pytest.raises(ProtocolError, match=r"expected FC 23 .*, got FC 3 "):
            await port.write(SETPOINTS)
    assert rogue.requests == [23] and rogue.registers[Table.HOLDING] == {}


async def test_an_fc16_write_answer_echoing_another_span_is_refused() -> None:
    """A PLC without FC 23: the port writes the setpoints with FC 16. The PLC stores them but
    its answer echoes another start address (the answer to another write): not OK."""

    def elsewhere(tid: int, unit: int, request: bytes, answer: bytes) -> bytes:
        return frame(tid, unit, answer[:1] + struct.pack(">H", 40) + answer[3:5])

    async with rogue_and_port(only(16, elsewhere)) as (rogue, port):
        rogue.has_fc23 = False
        with pytest.raises(
            ProtocolError, match="expected the echo of start 0, count 4, got start 40"
        ):
            await port.write(SETPOINTS)
        assert not port.connected
    assert rogue.requests == [23, 16]


async def test_an_honest_fc16_write_is_ok() -> None:
    async with rogue_and_port(honest) as (rogue, port):
        rogue.has_fc23 = False
        report = await port.write(SETPOINTS)
    assert report.ok and set(report.results) == set(SETPOINTS), report.failed()
    assert rogue.requests[:2] == [23, 16]
    assert len(rogue.registers[Table.HOLDING]) == 4  # the two floats, stored by FC 16


def _byte_count_beyond_data(tid: int, unit: int, request: bytes, answer: bytes) -> bytes:
    return frame(tid, unit, bytes([4, answer[1] + 2]) + answer[2:])


def _short_mbap_length(tid: int, unit: int, request: bytes, answer: bytes) -> bytes:
    return frame(tid, unit, answer, length=len(answer) - 1)


def _unknown_function(tid: int, unit: int, request: bytes, answer: bytes) -> bytes:
    return frame(tid, unit, bytes([0x41]) + answer[1:])


@pytest.fixture
def terminal() -> Iterator[io.StringIO]:
    """What the CLIs' logging set-up puts on the operator's terminal (restored after)."""
    root = logging.getLogger()
    level, levels = root.level, {n: logging.getLogger(n).level for n in LIBRARY_LOGGERS}
    shown = io.StringIO()
    setup = setup_logging("info", stream=shown)
    try:
        yield shown
    finally:
        setup.close()
        root.setLevel(level)
        for name, lvl in levels.items():
            logging.getLogger(name).setLevel(lvl)


@pytest.mark.parametrize(
    "malformed", [_byte_count_beyond_data, _short_mbap_length, _unknown_function]
)
async def test_a_malformed_answer_is_one_line_naming_it_and_no_traceback(
    malformed: Tamper, terminal: io.StringIO
) -> None:
    async with rogue_and_port(only(4, malformed)) as (_, port):
        with pytest.raises(ProtocolError) as caught:
            await port.read(MEASUREMENTS)
        assert not port.connected
    message = str(caught.value)
    assert message.startswith(f"malformed answer from {LOOPBACK}:")
    assert "read of input 0..21 (0-based) of unit 1" in message
    assert "Unable to decode" in message  # pymodbus's reason
    assert "\n" not in message
    assert "Traceback" not in terminal.getvalue()
