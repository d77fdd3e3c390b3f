"""The pymodbus plumbing of the HIL Modbus server: its datastore, request handler, listeners.

:class:`PlcCore` is pymodbus's datastore with the PLC's checks (communication faults,
unmapped addresses, range check, write hook) in front of every read and write;
:class:`PlcHandler` answers late (``latency``), answers a unit id the map does not have as
``wrong_unit`` says, answers the ``unsupported_functions`` with exception 01, and logs
connects and disconnects (logger ``hil.servers.modbus``). It runs each request as a task of
its own loop, without pymodbus's thread-safe hop (a self-pipe wake-up per request).
:class:`TcpServer` and :class:`TlsServer` are pymodbus's listeners using that handler. The PLC
is a :class:`WirePlc` (:class:`~hil.servers.modbus.ModbusPlcServer`).
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any, Protocol, cast

from pymodbus.constants import ExcCodes
from pymodbus.pdu import ExceptionResponse, ModbusPDU
from pymodbus.server import ModbusTcpServer, ModbusTlsServer
from pymodbus.server.requesthandler import ServerRequestHandler
from pymodbus.simulator import SimDevice
from pymodbus.simulator.simcore import SimCore

from controller.runtime.commissioning import RefusalCode
from controller.tags import Table
from hil.servers.modbus_refusals import Refusal

log = logging.getLogger("hil.servers.modbus")  # the Modbus server's log, which serve keeps

#: Function code -> the table it reads or writes.
FC_TABLE = {1: Table.COIL, 5: Table.COIL, 15: Table.COIL, 2: Table.DISCRETE, 4: Table.INPUT}
FC_TABLE |= {3: Table.HOLDING, 6: Table.HOLDING, 16: Table.HOLDING, 23: Table.HOLDING}
#: The tables of single bits.
BITS = (Table.COIL, Table.DISCRETE)
#: The requests being answered (a task must be referenced until it is done).
_ANSWERING: set[asyncio.Task[None]] = set()


class WirePlc(Protocol):
    """What the plumbing needs of the PLC (:class:`hil.servers.modbus.WirePlc`)."""

    @property
    def host(self) -> str: ...
    @property
    def port(self) -> int: ...
    @property
    def latency(self) -> float: ...
    @property
    def units(self) -> frozenset[int]: ...
    @property
    def wrong_unit(self) -> str: ...
    @property
    def unsupported_functions(self) -> set[int]: ...
    def failing(self, unit: int, function_code: int, address: int, count: int) -> bool: ...
    def unmapped(self, unit: int, table: Table, address: int, count: int) -> int | None: ...
    def refuse_write(
        self, unit: int, table: Table, address: int, values: list[int]
    ) -> Refusal | None: ...
    def record_refusal(self, refusal: Refusal, function_code: int, unit: int) -> None: ...


class PlcCore(SimCore):
    """pymodbus's datastore, with the PLC's checks in front of every read and write."""

    def __init__(self, devices: list[SimDevice], plc: WirePlc) -> None:
        super().__init__(devices)
        self.plc = plc

    async def async_getValues(
        self, device_id: int, func_code: int, address: int, count: int = 1
    ) -> list[int] | list[bool] | ExcCodes:
        if self.plc.failing(device_id, func_code, address, count):
            return ExcCodes.DEVICE_FAILURE
        return await super().async_getValues(device_id, func_code, address, count)

    async def async_setValues(
        self, device_id: int, func_code: int, address: int, values: list[int] | list[bool]
    ) -> ExcCodes | None:
        table = FC_TABLE[func_code]
        unmapped = self.plc.unmapped(device_id, table, address, len(values)) is not None
        if not unmapped and self.plc.failing(device_id, func_code, address, len(values)):
            return ExcCodes.DEVICE_FAILURE  # an unmapped address is refused as such first
        words = [int(v) for v in values]
        refusal = self.plc.refuse_write(device_id, table, address, words)
        if refusal is not None:
            self.plc.record_refusal(refusal, func_code, device_id)
            bad_address = refusal.code is RefusalCode.UNMAPPED
            return ExcCodes.ILLEGAL_ADDRESS if bad_address else ExcCodes.ILLEGAL_VALUE
        stored = cast(list[Any], values)  # possibly clamped: store what was checked
        stored[:] = [bool(w) for w in words] if table in BITS else words
        return await super().async_setValues(device_id, func_code, address, values)


class PlcHandler(ServerRequestHandler):
    """pymodbus's per-connection request handler: answers ``plc.latency`` seconds late,
    answers a wrong unit id as ``plc.wrong_unit`` says, and logs connects and disconnects."""

    plc: WirePlc
    peer: str | None = None  # "host:port" once connected (over TLS: once authenticated)

    def callback_connected(self) -> None:
        super().callback_connected()
        transport = self.transport
        host_port = transport.get_extra_info("peername") if transport is not None else None
        self.peer = f"{host_port[0]}:{host_port[1]}" if host_port else "a client"
        cert = transport.get_extra_info("peercert") if transport is not None else None
        tls = f" over TLS as {_subject(cert)}" if cert else ""
        log.info("%s connected to %s:%d%s", self.peer, self.plc.host, self.plc.port, tls)

    def callback_disconnected(self, exc: Exception | None) -> None:
        super().callback_disconnected(exc)
        if self.peer is None:  # never connected: a refused TLS handshake (logged as such)
            return
        why = f" ({exc})" if exc is not None else ""
        log.info("%s disconnected from %s:%d%s", self.peer, self.plc.host, self.plc.port, why)

    def handle_later(self) -> None:
        """The request just received, answered by a task of this loop. pymodbus calls this
        from the loop itself, yet hands the request over with ``run_coroutine_threadsafe``: a
        thread-safe future and a self-pipe write and wake-up per request, for nothing."""
        task = self.loop.create_task(self.handle_request())
        _ANSWERING.add(task)
        task.add_done_callback(_answered)

    async def handle_request(self) -> None:
        pdu, addr = self.last_pdu, self.last_addr
        if pdu is not None and self.plc.latency > 0:
            await asyncio.sleep(self.plc.latency)
            self.last_pdu, self.last_addr = pdu, addr  # a request may have come meanwhile
        if pdu is not None and pdu.dev_id not in self.plc.units:
            self._wrong_unit(pdu, addr)
            return
        if pdu is not None and pdu.function_code in self.plc.unsupported_functions:
            self._answer(pdu, addr, ExcCodes.ILLEGAL_FUNCTION)  # not executed
            return
        await super().handle_request()

    def _wrong_unit(self, pdu: ModbusPDU, addr: Any) -> None:
        plc, unit, units = self.plc, pdu.dev_id, sorted(self.plc.units)
        silent = plc.wrong_unit == "silent"
        answer = "no answer" if silent else "exception 0B"
        log.info(
            "%s asked unit %d, which is not here (units %s): %s", self.peer, unit, units, answer
        )
        if not silent:
            self._answer(pdu, addr, ExcCodes.GATEWAY_NO_RESPONSE)

    def _answer(self, pdu: ModbusPDU, addr: Any, code: ExcCodes) -> None:
        """Answer ``pdu`` with exception ``code``."""
        response = ExceptionResponse(pdu.function_code, code)
        response.transaction_id, response.dev_id = pdu.transaction_id, pdu.dev_id
        self.server_send(response, addr)


def _answered(task: asyncio.Task[None]) -> None:
    """A request's task is done: forget it, and log what it raised (nobody awaits it)."""
    _ANSWERING.discard(task)
    if not task.cancelled() and (exc := task.exception()) is not None:
        log.error("answering a request failed: %r", exc, exc_info=exc)


def _subject(cert: Any) -> str:
    """A peer certificate's subject (``getpeercert()`` form) as ``CN=..., O=...``."""
    names = {"commonName": "CN", "organizationName": "O", "organizationalUnitName": "OU"}
    parts = [f"{names.get(k, k)}={v}" for rdn in cert.get("subject", ()) for k, v in rdn]
    return ", ".join(parts) or "a certificate without a subject"


def _handler(server: ModbusTcpServer) -> ServerRequestHandler:
    handler = PlcHandler(server, server.trace_packet, server.trace_pdu, server.trace_connect)
    handler.plc = server.plc  # type: ignore[attr-defined]
    return handler


class TcpServer(ModbusTcpServer):
    def callback_new_connection(self) -> ServerRequestHandler:
        return _handler(self)


class TlsServer(ModbusTlsServer):
    def callback_new_connection(self) -> ServerRequestHandler:
        return _handler(self)
