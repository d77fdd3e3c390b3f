"""The Modbus TCP port (and Modbus/TCP Security over TLS), built on pymodbus.

This is the only module of PharmaTwin that imports pymodbus; every library error is translated
here into the :class:`~controller.errors.PortError` tree with ``raise ... from exc``.

Reads: tags are grouped per (unit id, table) into block reads of at most 125 registers (2000
bits), merging neighbours separated by at most 16 unused registers (a round trip costs far
more than 32 bytes more on the wire). A block answered with a Modbus exception marks its tags
BAD, with the exception code and name in ``detail``; exception 02 on a merged block is retried
tag by tag, because a gap register may not exist on the PLC, and the port remembers it: from
then on that block's tags are read in runs without gaps (no request the PLC refuses each cycle).
Modbus carries no timestamps: source and read time are both ``clock.now()``. A value that
decodes to NaN or infinity is BAD, one outside its tag's engineering ``limits`` UNCERTAIN
("outside limits: wrong word order or scale?"), read-backs included
(:func:`~controller.ports.base.flag_implausible`).

Writes: every value is checked first (known, writable, finite, within the tag's ``limits``,
encodable); if any is refused nothing is sent and the others are NOT_SENT. Contiguous tags are
written together (at most 123 registers per request), then every written tag is read back and
compared with ``decode(encode(requested))``, the value the codec can represent. A Modbus
exception to a write makes its tags REJECTED (e.g. 03 illegal data value: the PLC's own range
check); the other blocks of the write are still sent.

Connection: one request at a time (an :class:`asyncio.Lock`; pymodbus does not match
transaction ids strictly). Each request and connect has ``timeout_s``; a timeout raises
PortTimeoutError and drops the connection, so a late answer cannot be taken for the next
request's. A lost connection raises PortConnectError; the next call reconnects, with capped
exponential backoff on the port's clock after failed attempts (:mod:`controller.ports.retry`).
"""

from __future__ import annotations

import asyncio
import functools
import logging
import math
import ssl
import tempfile
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

from pymodbus.client import AsyncModbusTcpClient, AsyncModbusTlsClient
from pymodbus.exceptions import ConnectionException, ModbusException, ModbusIOException
from pymodbus.pdu import ModbusPDU

from controller.clock import Clock
from controller.codecs import CodecError, DataType, decode, encode_within
from controller.errors import PortConnectError, PortError, PortTimeoutError, ProtocolError
from controller.ports.base import (
    Port,
    Quality,
    Snapshot,
    TagValue,
    WriteReport,
    WriteResult,
    WriteStatus,
    flag_implausible,
)
from controller.ports.retry import RetrySchedule
from controller.ports.settings import Connection, ModbusTls
from controller.ports.writecheck import WriteCheck, refused_report, unreadable
from controller.tags import ModbusSpec, Table, TagMap

if logging.getLogger("pymodbus").level == logging.NOTSET:
    logging.getLogger("pymodbus").setLevel(logging.CRITICAL)  # its errors become ours

MAX_READ_REGISTERS = 125
MAX_READ_BITS = 2000
MAX_WRITE_REGISTERS = 123
MAX_WRITE_BITS = 1968
MAX_GAP = 16

EXCEPTION_NAMES = {
    0x01: "illegal function",
    0x02: "illegal data address",
    0x03: "illegal data value",
    0x04: "server device failure",
    0x05: "acknowledge",
    0x06: "server device busy",
    0x07: "negative acknowledge",
    0x08: "memory parity error",
    0x0A: "gateway path unavailable",
    0x0B: "gateway target device failed to respond",
}

Member = tuple[str, ModbusSpec]
Request = Callable[[AsyncModbusTcpClient], Awaitable[ModbusPDU]]


def exception_text(code: int) -> str:
    """``"02 illegal data address"``."""
    return f"Modbus exception {code:02X} {EXCEPTION_NAMES.get(code, 'unknown')}"


@dataclass(frozen=True)
class Block:
    """One request: a run of registers (or bits) of one table of one unit, 0-based."""

    unit_id: int
    table: Table
    start: int
    count: int
    members: tuple[Member, ...]

    @property
    def bits(self) -> bool:
        return self.table in (Table.COIL, Table.DISCRETE)

    def describe(self) -> str:
        names = ", ".join(name for name, _ in self.members)
        end = self.start + self.count - 1
        return f"{self.table} {self.start}..{end} (0-based) of unit {self.unit_id} [{names}]"


def plan_blocks(
    members: Iterable[Member], max_registers: int, max_bits: int, gap: int
) -> list[Block]:
    """Group tags into requests per (unit, table): runs within the size limit and ``gap``."""
    blocks: list[Block] = []
    run: list[Member] = []
    ordered = sorted(members, key=lambda m: (m[1].unit_id, m[1].table, m[1].protocol_address))
    for member in ordered:
        if run and not _joins(run, member[1], max_registers, max_bits, gap):
            blocks.append(_block(run))
            run = []
        run.append(member)
    return [*blocks, _block(run)] if run else blocks


def _end(run: list[Member]) -> int:
    return max(s.protocol_address + s.count for _, s in run)


def _joins(
    run: list[Member], spec: ModbusSpec, max_registers: int, max_bits: int, gap: int
) -> bool:
    first = run[0][1]
    if (first.unit_id, first.table) != (spec.unit_id, spec.table):
        return False
    limit = max_bits if spec.type is DataType.BOOL else max_registers
    new_end = max(_end(run), spec.protocol_address + spec.count)
    return spec.protocol_address - _end(run) <= gap and new_end - first.protocol_address <= limit


def _block(run: list[Member]) -> Block:
    first = run[0][1]
    start = first.protocol_address
    return Block(first.unit_id, first.table, start, _end(run) - start, tuple(run))


def _read_plan(members: list[Member]) -> list[Block]:
    return plan_blocks(members, MAX_READ_REGISTERS, MAX_READ_BITS, MAX_GAP)


def _key(block: Block) -> tuple[int, Table, int, int]:
    return (block.unit_id, block.table, block.start, block.count)


def _read_request(block: Block) -> Request:
    def send(c: AsyncModbusTcpClient) -> Awaitable[ModbusPDU]:
        read = {
            Table.HOLDING: c.read_holding_registers,
            Table.INPUT: c.read_input_registers,
            Table.COIL: c.read_coils,
            Table.DISCRETE: c.read_discrete_inputs,
        }[block.table]
        return read(block.start, count=block.count, device_id=block.unit_id)

    return send


def _write_request(block: Block, payload: list[int]) -> Request:
    def send(c: AsyncModbusTcpClient) -> Awaitable[ModbusPDU]:
        if block.bits:
            return c.write_coils(block.start, [bool(v) for v in payload], device_id=block.unit_id)
        return c.write_registers(block.start, payload, device_id=block.unit_id)

    return send


def _tls_context(tls: ModbusTls, base_dir: Path | None) -> ssl.SSLContext:
    """The client's TLS context; certificates in PEM or DER (as the test-bench PKI ships)."""

    def path(ref: str) -> Path:
        p = Path(ref)
        return p if p.is_absolute() or base_dir is None else base_dir / p

    try:
        ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH)
        ctx.load_verify_locations(cadata=_pem(path(tls.ca_file)))
        ctx.minimum_version = ssl.TLSVersion.TLSv1_2
        with tempfile.TemporaryDirectory() as folder:  # ssl loads a chain from files only
            chain = Path(folder) / "client.pem"
            chain.write_text(_pem(path(tls.cert_file)))
            ctx.load_cert_chain(chain, path(tls.key_file))
    except OSError as exc:  # ssl.SSLError is an OSError
        raise PortError(f"cannot load the Modbus/TLS certificate files: {exc}") from exc
    return ctx


def _pem(certificate: Path) -> str:
    """A certificate file's text as PEM (a DER file is converted)."""
    data = certificate.read_bytes()
    if b"-----BEGIN" in data:
        return data.decode("latin-1")
    return ssl.DER_cert_to_PEM_cert(data)


class ModbusPort(Port):
    """A :class:`Port` onto one Modbus TCP server (a PLC or a gateway)."""

    def __init__(
        self, tags: TagMap, connection: Connection, clock: Clock, *, base_dir: Path | None = None
    ) -> None:
        self._tags = tags
        self._conn = connection
        self._clock = clock
        self._check = WriteCheck.of_tags(tags.tags)
        tls = connection.modbus.tls
        self._ssl = _tls_context(tls, base_dir) if tls is not None else None
        self._lock = asyncio.Lock()
        self._client: AsyncModbusTcpClient | None = None
        self._retry = RetrySchedule(connection.backoff, clock)
        #: merged read blocks the PLC answered with exception 02: read without gaps since
        self._no_gaps: set[tuple[int, Table, int, int]] = set()
        self._was_connected = False
        self.reconnects = 0
        self.address = f"{connection.host}:{connection.port}"

    @property
    def connected(self) -> bool:
        return self._client is not None and self._client.connected

    async def connect(self) -> None:
        async with self._lock:
            await self._ensure_connected()

    async def close(self) -> None:
        self._drop()

    # ------------------------------------------------------------------ reads
    async def read(self, tags: Iterable[str]) -> Snapshot:
        members = self._readable(list(dict.fromkeys(tags)))
        async with self._lock:
            await self._ensure_connected()
            values = await self._read_blocks(self._read_plan(members))
        return Snapshot(values, self._clock.now())

    def _read_plan(self, members: list[Member]) -> list[Block]:
        """The read blocks, a block the PLC refused (02) split into runs without gaps."""
        out: list[Block] = []
        for block in _read_plan(members):
            if _key(block) in self._no_gaps:
                out += plan_blocks(block.members, MAX_READ_REGISTERS, MAX_READ_BITS, 0)
            else:
                out.append(block)
        return out

    def _readable(self, names: list[str]) -> list[Member]:
        tags = self._tags.tags
        problems = unreadable({n: t.readable for n, t in tags.items()}, names)
        problems += [
            f"tag {n!r} has no Modbus address"
            for n in names
            if n in tags and tags[n].readable and tags[n].modbus is None
        ]
        if problems:
            raise PortError(f"cannot read from {self.address}: {'; '.join(problems)}")
        return [(n, s) for n in names if (s := self._tags.tags[n].modbus) is not None]

    async def _read_blocks(self, blocks: list[Block]) -> dict[str, TagValue]:
        values: dict[str, TagValue] = {}
        for block in blocks:
            values.update(await self._read_block(block))
        return values

    async def _read_block(self, block: Block) -> dict[str, TagValue]:
        answer = await self._request(f"read of {block.describe()}", _read_request(block))
        now = self._clock.now()
        if answer.isError():
            if answer.exception_code == 0x02 and len(block.members) > 1:
                self._no_gaps.add(_key(block))
                return await self._read_blocks([_block([m]) for m in block.members])
            return {
                name: TagValue(
                    math.nan, Quality.BAD, now, now, _refused(name, spec, block, answer, "read")
                )
                for name, spec in block.members
            }
        data = list(answer.bits if block.bits else answer.registers)
        if len(data) < block.count:
            raise ProtocolError(f"short answer ({len(data)} values) to read of {block.describe()}")
        tags = self._tags.tags
        return {
            name: flag_implausible(
                TagValue(decode(name, spec, data[at : at + spec.count]), Quality.GOOD, now, now),
                tags.get(name),
            )
            for name, spec in block.members
            for at in (spec.protocol_address - block.start,)
        }

    # ----------------------------------------------------------------- writes
    async def write(self, values: Mapping[str, float]) -> WriteReport:
        refused = self._check.refusals(values)
        checked = {n: self._encode(n, v) for n, v in values.items() if n not in refused}
        refused |= {name: why for name, why in checked.items() if isinstance(why, str)}
        if refused:
            return refused_report(values, refused, self._clock.now())
        encoded = {name: ok for name, ok in checked.items() if not isinstance(ok, str)}
        async with self._lock:
            await self._ensure_connected()
            results = await self._write_and_verify(values, encoded)
        return WriteReport({name: results[name] for name in values}, self._clock.now())

    def _encode(self, name: str, value: float) -> tuple[ModbusSpec, list[int]] | str:
        """Where and what to write, or why the value cannot be sent over Modbus (a value that
        passed the :class:`~controller.ports.writecheck.WriteCheck`)."""
        tag = self._tags.tags[name]
        if tag.modbus is None:
            return f"tag {name!r} is not on Modbus (it has no Modbus address)"
        try:
            return tag.modbus, encode_within(name, tag.modbus, float(value), tag.limits)
        except CodecError as exc:
            return str(exc)

    async def _write_and_verify(
        self, values: Mapping[str, float], encoded: dict[str, tuple[ModbusSpec, list[int]]]
    ) -> dict[str, WriteResult]:
        results: dict[str, WriteResult] = {}
        written: list[Member] = []
        members = [(name, spec) for name, (spec, _) in encoded.items()]
        for block in plan_blocks(members, MAX_WRITE_REGISTERS, MAX_WRITE_BITS, 0):
            payload = [r for name, _ in block.members for r in encoded[name][1]]
            what = f"write of {block.describe()}"
            answer = await self._request(what, _write_request(block, payload))
            if not answer.isError():
                written.extend(block.members)
                continue
            for name, spec in block.members:
                why = _refused(name, spec, block, answer, "write")
                results[name] = WriteResult(name, values[name], WriteStatus.REJECTED, None, why)
        readback = await self._read_blocks(self._read_plan(written))
        for name, spec in written:
            expected = decode(name, spec, encoded[name][1])
            results[name] = _verify(name, values[name], expected, readback[name])
        return results

    # ------------------------------------------------------------- connection
    async def _request(self, what: str, send: Request) -> ModbusPDU:
        client = self._client
        if client is None or not client.connected:
            self._drop()
            raise PortConnectError(f"lost the connection to {self.address} before the {what}")
        try:
            return await asyncio.wait_for(send(client), self._conn.timeout_s)
        except TimeoutError as exc:
            lost = not client.connected
            self._drop()
            if lost:
                raise PortConnectError(
                    f"lost the connection to {self.address} during {what}"
                ) from exc
            raise PortTimeoutError(
                f"no answer from {self.address} within {self._conn.timeout_s} s to the {what}"
            ) from exc
        except (ConnectionException, ModbusIOException) as exc:
            self._drop()
            raise PortConnectError(
                f"lost the connection to {self.address} during {what}: {exc}"
            ) from exc
        except (ModbusException, ValueError) as exc:
            raise ProtocolError(f"pymodbus refused the {what}: {exc}") from exc

    async def _ensure_connected(self) -> None:
        if self.connected:
            return
        self._drop()
        wait = self._retry.wait()
        if wait > 0:
            raise PortConnectError(
                f"not connected to the Modbus server at {self.address}; "
                f"next reconnect attempt in {wait:.2f} s"
            )
        client = self._new_client()
        if not await self._open(client):
            delay = self._retry.failed()
            raise PortConnectError(
                f"cannot connect to the Modbus server at {self.address} ({self._conn.url}); "
                f"next reconnect attempt in {delay:.2f} s"
            )
        self._client = client
        self._retry.succeeded()
        self.reconnects += int(self._was_connected)
        self._was_connected = True

    async def _open(self, client: AsyncModbusTcpClient) -> bool:
        try:
            opened = await asyncio.wait_for(client.connect(), self._conn.timeout_s)
        except (TimeoutError, OSError, ModbusException):
            opened = False
        if not opened:
            client.close()
        return opened

    def _new_client(self) -> AsyncModbusTcpClient:
        # retries=0 and our own wait_for: timeouts are ours; reconnect_delay=0: so are reconnects.
        c, backstop = self._conn, 2 * self._conn.timeout_s
        if self._ssl is None:
            return AsyncModbusTcpClient(
                c.host, port=c.port, retries=0, reconnect_delay=0, timeout=backstop
            )
        client = AsyncModbusTlsClient(
            c.host, port=c.port, retries=0, reconnect_delay=0, timeout=backstop, sslctx=self._ssl
        )
        tls = c.modbus.tls
        if tls is not None and tls.server_hostname:  # pymodbus checks the name against host
            t = client.ctx
            t.call_create = functools.partial(
                t.loop.create_connection, t.handle_new_connection, c.host, c.port,
                ssl=self._ssl, server_hostname=tls.server_hostname,
            )  # fmt: skip
        return client

    def _drop(self) -> None:
        client, self._client = self._client, None
        if client is not None:
            client.close()


# ----------------------------------------------------------------- results
def _refused(name: str, spec: ModbusSpec, block: Block, answer: ModbusPDU, verb: str) -> str:
    """Why the PLC refused a request, for one tag of its block."""
    where = f"{spec.table} {spec.protocol_address} (0-based) of unit {spec.unit_id}"
    span = f"{block.table} {block.start}..{block.start + block.count - 1}"
    return (
        f"tag {name!r} at {where}: {exception_text(answer.exception_code)} to the {verb} of {span}"
    )


def _verify(name: str, requested: float, expected: float, readback: TagValue) -> WriteResult:
    if readback.quality is not Quality.GOOD:
        why = f"written, but the read-back failed: {readback.detail}"
        return WriteResult(name, requested, WriteStatus.FAILED, None, why)
    if readback.value == expected:
        return WriteResult(name, requested, WriteStatus.OK, readback.value)
    why = f"read back {readback.value!r}, expected {expected!r} (requested {requested!r})"
    return WriteResult(name, requested, WriteStatus.MISMATCH, readback.value, why)
