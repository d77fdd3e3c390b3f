"""The HIL Modbus TCP server: a real pymodbus server laid out from a tag map, with faults.

Built on pymodbus's own datastore, the ``SimDevice``/``SimData`` API, which uses addresses as
sent on the wire (0-based; pinned by ``test_datastore_addressing_is_pinned``). One device per
unit id of the tag map, with four separate tables; each table is valid from address 0 to the
end of its last tag (bit tables rounded up to 16 bits). Values are set by tag name through the
same codecs the port uses. Binds 127.0.0.1 unless another address is asked for explicitly
(``allow_remote=True``).

The PLC side (the virtual PLC) drives it through the interface both HIL servers share:

* :meth:`publish` stores engineering values in one go (Modbus has no quality: tags named
  ``bad`` are written all the same; the PLC clears its validity bits itself);
* :meth:`value` reads one back, e.g. what a client wrote;
* ``write_hook(tag, value)`` is called for every tag a client write touches, with the decoded
  engineering value, before anything is stored; a returned string refuses the whole request
  with exception 03 (illegal data value) and is logged as the reason.

The PLC's own range check sits beside the hook: a write that would put a tag outside
``plc_range`` (the writable tags' ``limits`` unless set narrower) answers exception 03; with
``clamp = True`` the PLC stores the nearest value in range instead.

Communication faults, injected on the server side:

* ``latency``: seconds added to every answer;
* ``bad_tags`` (tag -> reason): any request touching the tag's registers, read or write,
  answers exception 04 (server device failure);
* :meth:`drop_connections`: every client connection is closed, the server keeps listening;
* ``set_illegal(table, address)``: that register answers exception 02 (illegal data address);
* :meth:`stop`/:meth:`start`: a restart on the same port, keeping the register values.

With ``tls`` (a server-side :class:`ssl.SSLContext`) it speaks Modbus/TCP Security. The last
requests received are kept in ``requests`` (function code, unit, address, count).
"""

from __future__ import annotations

import asyncio
import logging
import math
import ssl
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any, cast

from pymodbus.constants import ExcCodes
from pymodbus.pdu import ModbusPDU
from pymodbus.server import ModbusTcpServer, ModbusTlsServer
from pymodbus.server.requesthandler import ServerRequestHandler
from pymodbus.simulator import DataType, SimData, SimDevice
from pymodbus.simulator.simcore import SimCore

from controller.tags import DataType as TagType
from controller.tags import ModbusSpec, Table, TagMap, decode, encode
from hil.net import LOOPBACK, check_bind_address, free_port
from hil.servers.base import PlcServer, WriteHook

if TYPE_CHECKING:
    from controller.site import Site

log = logging.getLogger(__name__)

#: Modbus port used by :func:`modbus_server_for_site` when the site itself speaks OPC UA.
DEFAULT_PORT = 5020

_TABLE_KEY = {Table.COIL: "c", Table.DISCRETE: "d", Table.HOLDING: "h", Table.INPUT: "i"}
_FC_TABLE = {1: Table.COIL, 5: Table.COIL, 15: Table.COIL, 2: Table.DISCRETE, 4: Table.INPUT}
_FC_TABLE |= {3: Table.HOLDING, 6: Table.HOLDING, 16: Table.HOLDING, 23: Table.HOLDING}
_BITS = (Table.COIL, Table.DISCRETE)
_KEEP_REQUESTS = 10_000


@dataclass(frozen=True)
class Received:
    """One request as the server received it."""

    function_code: int
    unit_id: int
    address: int
    count: int


def _tolerance(spec: ModbusSpec, bound: float) -> float:
    """What the register type cannot resolve near ``bound`` (a float32 0.3 is 0.30000001):
    a PLC compares in its own number format, so a limit value sent as a register passes."""
    if not math.isfinite(bound):
        return 0.0
    if spec.type is TagType.FLOAT32:
        return 1e-6 * max(1.0, abs(bound))
    if spec.type is TagType.FLOAT64:
        return 1e-12 * max(1.0, abs(bound))
    return abs(spec.scale) / 2


class ModbusPlcServer(PlcServer):
    """A Modbus TCP server on ``host``:``port`` (127.0.0.1 by default) holding ``tags``."""

    def __init__(
        self,
        tags: TagMap,
        port: int | None = None,
        *,
        host: str = LOOPBACK,
        allow_remote: bool = False,
        tls: ssl.SSLContext | None = None,
    ) -> None:
        check_bind_address(host, allow_remote)
        self.tags, self.host, self.tls = tags, host, tls
        self.port = port if port is not None else free_port()
        self.write_hook: WriteHook | None = None
        #: Side-effect-free twin of ``write_hook``: every tag of a request is checked before
        #: any is applied, so a request refused with exception 03 changes nothing in the PLC.
        self.write_check: WriteHook | None = None
        self.latency = 0.0
        self.bad_tags = {}
        self.clamp = False
        self.plc_range: dict[str, tuple[float, float]] = {
            name: tag.limits
            for name, tag in tags.tags.items()
            if tag.writable and tag.limits is not None
        }
        self.requests: list[Received] = []
        self._specs = {n: t.modbus for n, t in tags.tags.items() if t.modbus is not None}
        self._by_table: dict[tuple[int, Table], list[tuple[str, ModbusSpec]]] = {}
        for name, spec in sorted(self._specs.items(), key=lambda item: item[1].protocol_address):
            self._by_table.setdefault((spec.unit_id, spec.table), []).append((name, spec))
        units = sorted({s.unit_id for s in self._specs.values()}) or [1]
        self._devices = [self._device(unit) for unit in units]
        self._core = _PlcCore(self._devices, self)
        self._saved_flags: dict[tuple[int, Table, int], int] = {}
        self._server: ModbusTcpServer | None = None

    # ------------------------------------------------------------- layout
    def _device(self, unit: int) -> SimDevice:
        tables = []
        for table in (Table.COIL, Table.DISCRETE, Table.HOLDING, Table.INPUT):
            ends = [
                s.protocol_address + s.count
                for s in self._specs.values()
                if s.unit_id == unit and s.table is table
            ]
            size = max(ends, default=1)
            if table in _BITS:
                bits = -(-size // 16) * 16
                tables.append([SimData(0, values=[False] * bits, datatype=DataType.BITS)])
            else:
                tables.append([SimData(0, values=[0] * size, datatype=DataType.REGISTERS)])
        c, d, h, i = tables
        return SimDevice(unit, simdata=(c, d, h, i))

    def _block(self, unit: int, table: Table) -> tuple[list[int], list[int]]:
        _, _, registers, flags = self._core.devices[unit].block[_TABLE_KEY[table]]
        return registers, flags

    # ------------------------------------------------- values by register
    def set_registers(
        self, table: Table, address: int, values: Sequence[int], unit: int = 1
    ) -> None:
        """Store raw values (registers, or 0/1 for bits) at 0-based ``address``."""
        registers, _ = self._block(unit, table)
        if table in _BITS:
            for at, bit in enumerate(values, start=address):
                mask = 1 << (at % 16)
                word = registers[at // 16]
                registers[at // 16] = word | mask if bit else word & ~mask
        else:
            registers[address : address + len(values)] = [int(v) for v in values]

    def get_registers(self, table: Table, address: int, count: int, unit: int = 1) -> list[int]:
        registers, _ = self._block(unit, table)
        if table in _BITS:
            return [(registers[a // 16] >> (a % 16)) & 1 for a in range(address, address + count)]
        return list(registers[address : address + count])

    def set_illegal(self, table: Table, address: int, unit: int = 1, illegal: bool = True) -> None:
        """Make ``address`` answer exception 02 (or valid again)."""
        _, flags = self._block(unit, table)
        at = address // 16 if table in _BITS else address
        key = (unit, table, at)
        if illegal:
            self._saved_flags.setdefault(key, flags[at])
            flags[at] = DataType.INVALID
        elif key in self._saved_flags:
            flags[at] = self._saved_flags.pop(key)

    # ------------------------------------------------------ values by tag
    def set_value(self, tag: str, value: float) -> None:
        """Store one engineering value (CodecError if it does not fit the tag's type)."""
        spec = self._specs[tag]
        self.set_registers(
            spec.table, spec.protocol_address, encode(tag, spec, value), spec.unit_id
        )

    def value(self, tag: str) -> float:
        """The tag's engineering value as stored now."""
        spec = self._specs[tag]
        regs = self.get_registers(spec.table, spec.protocol_address, spec.count, spec.unit_id)
        return decode(tag, spec, regs)

    async def publish(
        self,
        values: Mapping[str, float],
        *,
        bad: Collection[str] = (),
        source_time: datetime | None = None,
    ) -> None:
        """Store the PLC's values in one go; all are encoded before any is stored.

        Modbus carries no quality or timestamp: ``source_time`` is ignored and tags in ``bad``
        are written like the others, except a non-finite value of a bad tag, which keeps the
        last one. Tags of the map without a Modbus address are skipped; unknown tags raise
        KeyError, values that do not fit their type CodecError (nothing stored then).
        """
        encoded = []
        for tag, v in values.items():
            if tag not in self.tags.tags:
                raise KeyError(f"unknown tag {tag!r}; the map {self.tags.name!r} has no such tag")
            spec = self._specs.get(tag)
            if spec is None or (tag in bad and not math.isfinite(v)):
                continue
            encoded.append((spec, encode(tag, spec, v)))
        for spec, regs in encoded:
            self.set_registers(spec.table, spec.protocol_address, regs, spec.unit_id)

    # ---------------------------------------------------------- the PLC
    def touched(self, unit: int, table: Table, address: int, count: int) -> list[str]:
        """The tags with a register in ``address .. address + count - 1`` of that table."""
        end = address + count
        return [
            name
            for name, spec in self._by_table.get((unit, table), ())
            if spec.protocol_address < end and address < spec.protocol_address + spec.count
        ]

    def _failing(self, unit: int, function_code: int, address: int, count: int) -> bool:
        """Whether the request touches a tag in ``bad_tags`` (answer exception 04)."""
        if not self.bad_tags:
            return False
        names = self.touched(unit, _FC_TABLE[function_code], address, count)
        failing = [n for n in names if n in self.bad_tags]
        for name in failing:
            log.debug(
                "fc %d touches %s: exception 04 (%s)", function_code, name, self.bad_tags[name]
            )
        return bool(failing)

    def _refuse_write(self, unit: int, table: Table, address: int, values: list[int]) -> bool:
        """The PLC's range check, then ``write_hook``, for the tags the write touches.

        True if the request must be refused (exception 03), logged with its reason. The range
        is checked for every tag first (clamping ``values`` in place if ``clamp``), so the
        hook only hears of writes that pass it; the hook is then called tag by tag, in
        address order, until one refuses.
        """
        writes = []
        for name in self.touched(unit, table, address, len(values)):
            spec = self._specs[name]
            value = self._after_write(name, spec, address, values)
            lo, hi = self.plc_range.get(name, (-math.inf, math.inf))
            if not lo - _tolerance(spec, lo) <= value <= hi + _tolerance(spec, hi):
                if not self.clamp or math.isnan(value):
                    return _refused(name, value, f"outside the PLC range [{lo}, {hi}]")
                value = min(max(value, lo), hi)
                self._overlay(encode(name, spec, value), spec, address, values)
            writes.append((name, value))
        if self.write_check is not None:
            for name, value in writes:
                reason = self.write_check(name, value)
                if reason is not None:
                    return _refused(name, value, reason)
        hook = self.write_hook
        for name, value in writes:
            reason = hook(name, value) if hook is not None else None
            if reason is not None:
                return _refused(name, value, reason)
        return False

    def _after_write(self, name: str, spec: ModbusSpec, address: int, values: list[int]) -> float:
        """The tag's value once the write of ``values`` at ``address`` is stored."""
        regs = self.get_registers(spec.table, spec.protocol_address, spec.count, spec.unit_id)
        for j in range(spec.count):
            at = spec.protocol_address + j - address
            if 0 <= at < len(values):
                regs[j] = int(values[at])
        return decode(name, spec, regs)

    @staticmethod
    def _overlay(regs: list[int], spec: ModbusSpec, address: int, values: list[int]) -> None:
        for j, reg in enumerate(regs):
            at = spec.protocol_address + j - address
            if 0 <= at < len(values):
                values[at] = reg

    def _trace(self, sending: bool, pdu: ModbusPDU) -> ModbusPDU:
        if not sending:
            count = pdu.count or len(pdu.bits) or len(pdu.registers)
            self.requests.append(Received(pdu.function_code, pdu.dev_id, pdu.address, count))
            if len(self.requests) > _KEEP_REQUESTS:
                del self.requests[: _KEEP_REQUESTS // 2]
        return pdu

    # ------------------------------------------------------- start / stop
    async def start(self) -> None:
        """Listen on ``host``:``port`` (again, after ``stop``), keeping the values."""
        if self._server is not None:
            return
        where = (self.host, self.port)
        server: ModbusTcpServer = (
            _TcpServer(self._devices, address=where, trace_pdu=self._trace)
            if self.tls is None
            else _TlsServer(self._devices, address=where, sslctx=self.tls, trace_pdu=self._trace)
        )
        server.plc = self  # type: ignore[attr-defined]
        server.context = self._core  # our datastore: keeps the registers across restarts
        await server.serve_forever(background=True)
        self._server = server

    async def stop(self) -> None:
        """Stop listening and drop every client connection."""
        server, self._server = self._server, None
        if server is not None:
            await server.shutdown()
            await asyncio.sleep(0)

    async def drop_connections(self) -> None:
        """Close every client connection now; the server keeps listening."""
        if self._server is not None:
            for connection in list(self._server.active_connections.values()):
                connection.close()
        await asyncio.sleep(0)


def modbus_server_for_site(
    site: Site, port: int | None = None, *, host: str | None = None, allow_remote: bool = False
) -> ModbusPlcServer:
    """The Modbus server standing in for ``site``'s PLC (nothing listens before ``start()``).

    ``host`` defaults to the site's; ``port`` to the site's own if it speaks Modbus, else
    :data:`DEFAULT_PORT`.
    """
    if port is None:
        port = site.connection.port if site.connection.protocol == "modbus" else DEFAULT_PORT
    host = host if host is not None else site.connection.host
    return ModbusPlcServer(site.tags, port, host=host, allow_remote=allow_remote)


def _refused(tag: str, value: float, reason: str) -> bool:
    log.info("refused a write of %s = %r: %s", tag, value, reason)
    return True


# ------------------------------------------------------------ pymodbus plumbing
class _PlcCore(SimCore):
    """pymodbus's datastore, with the PLC's checks in front of every read and write."""

    def __init__(self, devices: list[SimDevice], plc: ModbusPlcServer) -> None:
        super().__init__(devices)
        self.plc = plc

    async def async_getValues(
        self, device_id: int, func_code: int, address: int, count: int = 1
    ) -> list[int] | list[bool] | ExcCodes:
        if self.plc._failing(device_id, func_code, address, count):
            return ExcCodes.DEVICE_FAILURE
        return await super().async_getValues(device_id, func_code, address, count)

    async def async_setValues(
        self, device_id: int, func_code: int, address: int, values: list[int] | list[bool]
    ) -> ExcCodes | None:
        if self.plc._failing(device_id, func_code, address, len(values)):
            return ExcCodes.DEVICE_FAILURE
        table = _FC_TABLE[func_code]
        words = [int(v) for v in values]
        if self.plc._refuse_write(device_id, table, address, words):
            return ExcCodes.ILLEGAL_VALUE
        stored = cast(list[Any], values)  # possibly clamped: store what was checked
        stored[:] = [bool(w) for w in words] if table in _BITS else words
        return await super().async_setValues(device_id, func_code, address, values)


class _DelayedHandler(ServerRequestHandler):
    """pymodbus's per-connection request handler, answering ``plc.latency`` seconds late."""

    plc: ModbusPlcServer

    async def handle_request(self) -> None:
        pdu, addr = self.last_pdu, self.last_addr
        if pdu is not None and self.plc.latency > 0:
            await asyncio.sleep(self.plc.latency)
            self.last_pdu, self.last_addr = pdu, addr  # a request may have come meanwhile
        await super().handle_request()


def _handler(server: ModbusTcpServer) -> ServerRequestHandler:
    handler = _DelayedHandler(server, server.trace_packet, server.trace_pdu, server.trace_connect)
    handler.plc = server.plc  # type: ignore[attr-defined]
    return handler


class _TcpServer(ModbusTcpServer):
    def callback_new_connection(self) -> ServerRequestHandler:
        return _handler(self)


class _TlsServer(ModbusTlsServer):
    def callback_new_connection(self) -> ServerRequestHandler:
        return _handler(self)
