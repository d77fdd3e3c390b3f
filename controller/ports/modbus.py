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
written together (:mod:`~controller.ports.modbus_plan`), and every written tag is read back and
compared with ``decode(encode(requested))``, the value the codec can represent. How holding
registers are read back is ``connection.modbus.write_readback``: by default (``auto``) each
block goes as ONE Read/Write Multiple Registers request (FC 23, at most 121 registers), whose
read part the PLC performs after the write, over the same registers: the answer is the
read-back, with no second round trip. A PLC that answers FC 23 with exception 01 (illegal
function: it did not execute it, nothing was written) is written with FC 16 from then on, and
that block is sent again with it; ``fc23`` never falls back (01 is a refusal), ``separate``
always writes with FC 16 (at most 123 registers) and reads every written tag back afterwards
(FC 3, merged as reads are). Coils are written with FC 15 and read back with FC 1. A Modbus
exception to a write makes its tags REJECTED (e.g. 03 illegal data value: the PLC's own range
check); the other blocks of the write are still sent.

Answers: every answer is checked to be the request's (function code, transaction and unit id,
count: :mod:`~controller.ports.modbus_answers`); one that is not raises ProtocolError and drops
the connection (the stream is out of step). The ids are checked in the client's receive path,
as each frame arrives (pymodbus would skip a frame of another id and wait for a timeout). A
frame pymodbus cannot decode raises ProtocolError "malformed answer" at once, with pymodbus's
reason, and drops the connection: caught in the receive path too, never left to asyncio (which
logs it with a traceback).

Connection: one request at a time (an :class:`asyncio.Lock`; pymodbus does not match
transaction ids strictly). Each request and connect has ``timeout_s`` (``asyncio.timeout``:
no task per request); a timeout raises
PortTimeoutError and drops the connection, so a late answer cannot be taken for the next
request's. A lost connection raises PortConnectError; the next call reconnects, with capped
exponential backoff on the port's clock after failed attempts (:mod:`controller.ports.retry`).
"""

from __future__ import annotations

import asyncio
import functools
import logging
import math
from collections.abc import Awaitable, Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

from pymodbus.client import AsyncModbusTcpClient, AsyncModbusTlsClient
from pymodbus.exceptions import ConnectionException, ModbusException, ModbusIOException
from pymodbus.pdu import ModbusPDU

from controller.clock import Clock
from controller.codecs import CodecError, decode, encode_within
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
from controller.ports.modbus_answers import (
    READ_FUNCTION,
    READ_WRITE_REGISTERS,
    WRITE_COILS,
    WRITE_REGISTERS,
    MalformedAnswer,
    WrongAnswer,
    answer_of,
    frame_mismatch,
    mismatch,
    quote_received,
    refusal,
)
from controller.ports.modbus_plan import (
    ILLEGAL_FUNCTION,
    Block,
    BlockKey,
    Member,
    block_of,
    exception_text,
    read_plan,
    split_without_gaps,
    write_plan,
)
from controller.ports.modbus_tls import tls_context
from controller.ports.retry import RetrySchedule
from controller.ports.settings import Connection
from controller.ports.writecheck import WriteCheck, refused_report, unreadable
from controller.tags import ModbusSpec, Table, TagMap

__all__ = ["ModbusPort", "exception_text"]

if logging.getLogger("pymodbus").level == logging.NOTSET:
    logging.getLogger("pymodbus").setLevel(logging.CRITICAL)  # its errors become ours

Request = Callable[[AsyncModbusTcpClient], Awaitable[ModbusPDU]]


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


def _read_write_request(block: Block, payload: list[int]) -> Request:
    """FC 23: write ``payload`` at the block, then read the block back, in one request."""

    def send(c: AsyncModbusTcpClient) -> Awaitable[ModbusPDU]:
        return c.readwrite_registers(
            read_address=block.start,
            read_count=block.count,
            write_address=block.start,
            values=payload,
            device_id=block.unit_id,
        )

    return send


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
        self._ssl = tls_context(tls, base_dir) if tls is not None else None
        self._lock = asyncio.Lock()
        self._client: AsyncModbusTcpClient | None = None
        self._retry = RetrySchedule(connection.backoff, clock)
        #: merged read blocks the PLC answered with exception 02: read without gaps since
        self._no_gaps: set[BlockKey] = set()
        #: the read requests of each list of tags read so far (the tags are fixed per cycle)
        self._read_plans: dict[tuple[str, ...], list[Block]] = {}
        #: the tags the twin may read over Modbus (the map is fixed), and their addresses
        self._readable_tags = {n: t.readable for n, t in tags.tags.items()}
        self._read_specs = {
            n: t.modbus for n, t in tags.tags.items() if t.readable and t.modbus is not None
        }
        #: write holding registers with FC 23 (the write and its read-back in one request);
        #: False once the PLC answered exception 01 to it (``write_readback: auto``)
        self.read_write = connection.modbus.write_readback != "separate"
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
        key = tuple(name for name, _ in members)  # names: cheap to hash, unlike the specs
        plan = self._read_plans.get(key)
        if plan is None:
            plan = []
            for block in read_plan(members):
                plan += split_without_gaps(block) if block.key in self._no_gaps else [block]
            if len(self._read_plans) > 64:  # bounded: the reads of a runtime are few
                self._read_plans.clear()
            self._read_plans[key] = plan
        return plan

    def _readable(self, names: list[str]) -> list[Member]:
        specs = self._read_specs
        if all(n in specs for n in names):
            return [(n, specs[n]) for n in names]
        tags = self._tags.tags
        problems = unreadable(self._readable_tags, names)
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
        function = READ_FUNCTION[block.table]
        answer = await self._request("read", block, function, _read_request(block))
        now = self._clock.now()
        if answer.isError():
            if answer.exception_code == 0x02 and len(block.members) > 1:
                self._no_gaps.add(block.key)
                self._read_plans.clear()
                return await self._read_blocks([block_of([m]) for m in block.members])
            code = answer.exception_code
            return {
                name: TagValue(
                    math.nan, Quality.BAD, now, now, refusal(name, spec, block, code, "read")
                )
                for name, spec in block.members
            }
        return self._decoded(block, answer, now)

    def _decoded(self, block: Block, answer: ModbusPDU, now: float) -> dict[str, TagValue]:
        """The tags of ``block`` from an answer carrying its values (a read, or FC 23)."""
        data = answer.bits if block.bits else answer.registers
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
        readback: dict[str, TagValue] = {}
        members = [(name, spec) for name, (spec, _) in encoded.items()]
        for block in write_plan(members, self.read_write):
            payload = [r for name, _ in block.members for r in encoded[name][1]]
            verb, answer = await self._write_block(block, payload)
            if answer.isError():
                for name, spec in block.members:
                    why = refusal(name, spec, block, answer.exception_code, verb)
                    results[name] = WriteResult(name, values[name], WriteStatus.REJECTED, None, why)
                continue
            written.extend(block.members)
            if verb != "write":  # FC 23: the answer is the block as read after the write
                readback.update(self._decoded(block, answer, self._clock.now()))
        unread = [m for m in written if m[0] not in readback]
        if unread:
            readback.update(await self._read_blocks(self._read_plan(unread)))
        for name, spec in written:
            expected = decode(name, spec, encoded[name][1])
            results[name] = _verify(name, values[name], expected, readback[name])
        return results

    async def _write_block(self, block: Block, payload: list[int]) -> tuple[str, ModbusPDU]:
        """Send one block's write: FC 23 (the write and its read-back) for holding registers
        unless the PLC refused that function, else FC 15/16. (What was sent, the answer.)"""
        if block.bits or not self.read_write:
            function = WRITE_COILS if block.bits else WRITE_REGISTERS
            send = _write_request(block, payload)
            return "write", await self._request("write", block, function, send)
        verb = "write and read-back (FC 23)"
        send = _read_write_request(block, payload)
        answer = await self._request(verb, block, READ_WRITE_REGISTERS, send)
        auto = self._conn.modbus.write_readback == "auto"
        if auto and answer.isError() and answer.exception_code == ILLEGAL_FUNCTION:
            self.read_write = False  # nothing was written: this PLC has no FC 23
            return await self._write_block(block, payload)
        return verb, answer

    # ------------------------------------------------------------- connection
    async def _request(self, verb: str, block: Block, function: int, send: Request) -> ModbusPDU:
        """Send one request (function code ``function``) and return its answer, checked to be
        the answer to it; a Modbus exception answer to it is returned as is. Raises
        PortConnectError, PortTimeoutError, or ProtocolError (an answer that is not the
        request's, or a malformed one: the connection is dropped)."""
        client = self._client
        if client is None or not client.connected:
            self._drop()
            what = f"{verb} of {block.describe()}"
            raise PortConnectError(f"lost the connection to {self.address} before the {what}")
        try:
            async with asyncio.timeout(self._conn.timeout_s):  # no task per request
                answer = await send(client)
        except WrongAnswer as exc:
            raise self._out_of_step(verb, block, str(exc)) from exc
        except MalformedAnswer as exc:
            self._drop()
            what = f"{verb} of {block.describe()}"
            raise ProtocolError(
                f"malformed answer from {self.address} to the {what}: {exc}"
            ) from exc
        except TimeoutError as exc:
            what = f"{verb} of {block.describe()}"
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
            what = f"{verb} of {block.describe()}"
            self._drop()
            raise PortConnectError(
                f"lost the connection to {self.address} during {what}: {exc}"
            ) from exc
        except (ModbusException, ValueError) as exc:
            what = f"{verb} of {block.describe()}"
            raise ProtocolError(f"pymodbus refused the {what}: {exc}") from exc
        got = answer_of(answer, block)
        problem = mismatch(block, function, client.ctx.request_transaction_id, got)
        if problem is not None:
            raise self._out_of_step(verb, block, problem)
        return answer

    def _out_of_step(self, verb: str, block: Block, problem: str) -> ProtocolError:
        """Drop the connection (the real answer, or more strays, may still come) and say why."""
        self._drop()
        what = f"{verb} of {block.describe()}"
        return ProtocolError(
            f"the answer from {self.address} to the {what} is not its answer: {problem}; "
            "connection dropped"
        )

    async def _ensure_connected(self) -> None:
        if self.connected:
            return
        self._drop()
        wait = self._retry.wait()
        if wait > 0:
            raise PortConnectError(
                f"not connected to the Modbus server at {self.address}; "
                f"next reconnect attempt on a read after {wait:.2f} s"
            )
        client = self._new_client()
        if not await self._open(client):
            delay = self._retry.failed()
            raise PortConnectError(
                f"cannot connect to the Modbus server at {self.address} ({self._conn.url}); "
                f"next reconnect attempt on a read after {delay:.2f} s"
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
            plain = AsyncModbusTcpClient(
                c.host, port=c.port, retries=0, reconnect_delay=0, timeout=backstop
            )
            return _guard_decoding(plain)
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
        return _guard_decoding(client)

    def _drop(self) -> None:
        client, self._client = self._client, None
        if client is not None:
            client.close()


def _guard_decoding(client: AsyncModbusTcpClient) -> AsyncModbusTcpClient:
    """``client``, with a frame of another transaction or unit id, and one it cannot decode,
    caught in its receive path.

    pymodbus skips a frame of another id and waits on (the request ends as a timeout), and
    raises a decode failure out of asyncio's ``data_received`` (asyncio logs it with a
    traceback, and the request waits for its timeout). Instead: close the connection and fail
    the pending request at once with :class:`WrongAnswer` or :class:`MalformedAnswer` (which
    :meth:`ModbusPort._request` turns into ProtocolError)."""
    ctx = client.ctx
    handle = ctx.callback_data

    def fail(data: bytes, error: Exception) -> int:
        ctx.close()
        pending = ctx.response_future
        if not pending.done():
            pending.set_exception(error)
            pending.exception()  # retrieved: no "never retrieved" log if none awaits it
        return len(data)

    def callback_data(data: bytes, addr: tuple[Any, ...] | None = None) -> int:
        pending = not ctx.response_future.done()
        wrong = frame_mismatch(data, ctx.request_transaction_id, ctx.request_dev_id)
        if pending and wrong is not None:
            return fail(data, WrongAnswer(wrong))
        try:
            return handle(data, addr)
        except Exception as exc:  # any: escaping, it would be logged with a traceback
            why = f"pymodbus could not decode it ({exc}; {quote_received(data)})"
            return fail(data, MalformedAnswer(why))

    ctx.callback_data = callback_data  # type: ignore[method-assign]
    return client


# ----------------------------------------------------------------- results
def _verify(name: str, requested: float, expected: float, readback: TagValue) -> WriteResult:
    if readback.quality is not Quality.GOOD:
        why = f"written, but the read-back failed: {readback.detail}"
        return WriteResult(name, requested, WriteStatus.FAILED, None, why)
    if readback.value == expected:
        return WriteResult(name, requested, WriteStatus.OK, readback.value)
    why = f"read back {readback.value!r}, expected {expected!r} (requested {requested!r})"
    return WriteResult(name, requested, WriteStatus.MISMATCH, readback.value, why)
