"""The HIL Modbus TCP server: a real pymodbus server laid out from a tag map, with faults.

Built on pymodbus's own datastore, the ``SimDevice``/``SimData`` API, which uses addresses as
sent on the wire (0-based; pinned by ``test_datastore_addressing_is_pinned``). One device per
unit id of the tag map, with four separate tables; each table is valid from address 0 to the
end of its last tag (bit tables rounded up to 16 bits). Initial values are set by tag name
through the same codecs the port uses. Binds 127.0.0.1 only.

Faults, injected on the server side:

* ``set_illegal(table, address)``: that register answers exception 02 (illegal data address),
  through the datastore's own INVALID flag (for bit tables: the 16-bit group holding it);
* the PLC's own range check: a write that would put a writable tag outside its range answers
  exception 03 (illegal data value); the range is the tag's ``limits`` unless ``plc_range`` is
  set narrower. With ``clamp = True`` the PLC stores the nearest value in range instead;
* ``latency``: seconds added to every answer (a slow server);
* ``stop()``/``start()``: restart on the same port, keeping the register values.

With ``tls`` (a server-side :class:`ssl.SSLContext`) it speaks Modbus/TCP Security.

Every request received is recorded in ``requests`` (function code, unit, address, count).
"""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import Sequence
from dataclasses import dataclass
from functools import partial
from types import TracebackType
from typing import cast

from pymodbus.constants import ExcCodes
from pymodbus.pdu import ModbusPDU
from pymodbus.server import ModbusTcpServer, ModbusTlsServer
from pymodbus.simulator import DataType, SimData, SimDevice
from pymodbus.simulator.simcore import SimCore
from pymodbus.simulator.simutils import SimUtils

from controller.tags import ModbusSpec, Table, TagMap, decode, encode
from hil.net import LOOPBACK, free_port

_TABLE_KEY = {Table.COIL: "c", Table.DISCRETE: "d", Table.HOLDING: "h", Table.INPUT: "i"}
_FC_TABLE = {1: Table.COIL, 5: Table.COIL, 15: Table.COIL, 2: Table.DISCRETE, 4: Table.INPUT}
_FC_TABLE |= {3: Table.HOLDING, 6: Table.HOLDING, 16: Table.HOLDING, 23: Table.HOLDING}


@dataclass(frozen=True)
class Received:
    """One request as the server received it."""

    function_code: int
    unit_id: int
    address: int
    count: int


class ModbusPlcServer:
    """A Modbus TCP server on 127.0.0.1 holding the registers of ``tags``."""

    def __init__(
        self,
        tags: TagMap,
        port: int | None = None,
        *,
        tls: ssl.SSLContext | None = None,
    ) -> None:
        self.tags = tags
        self.tls = tls
        self.port = port if port is not None else free_port()
        self.latency = 0.0
        self.clamp = False
        self.plc_range: dict[str, tuple[float, float]] = {
            name: tag.limits
            for name, tag in tags.tags.items()
            if tag.writable and tag.limits is not None
        }
        self.requests: list[Received] = []
        self._specs = {n: t.modbus for n, t in tags.tags.items() if t.modbus is not None}
        units = sorted({s.unit_id for s in self._specs.values()}) or [1]
        self._devices = [self._device(unit) for unit in units]
        self._core = SimCore(self._devices)
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
            if table in (Table.COIL, Table.DISCRETE):
                bits = -(-size // 16) * 16
                tables.append([SimData(0, values=[False] * bits, datatype=DataType.BITS)])
            else:
                tables.append([SimData(0, values=[0] * size, datatype=DataType.REGISTERS)])
        c, d, h, i = tables
        return SimDevice(unit, simdata=(c, d, h, i), action=partial(self._action, unit))

    def _block(self, unit: int, table: Table) -> tuple[list[int], list[int]]:
        _, _, registers, flags = self._core.devices[unit].block[_TABLE_KEY[table]]
        return registers, flags

    # ------------------------------------------------- values by register
    def set_registers(
        self, table: Table, address: int, values: Sequence[int], unit: int = 1
    ) -> None:
        """Store raw values (registers, or 0/1 for bits) at 0-based ``address``."""
        registers, _ = self._block(unit, table)
        if table in (Table.COIL, Table.DISCRETE):
            bits = SimUtils.registersToBits(registers)
            bits[address : address + len(values)] = [bool(v) for v in values]
            registers[:] = SimUtils.bitsToRegisters(bits)
        else:
            registers[address : address + len(values)] = [int(v) for v in values]

    def get_registers(self, table: Table, address: int, count: int, unit: int = 1) -> list[int]:
        registers, _ = self._block(unit, table)
        if table in (Table.COIL, Table.DISCRETE):
            return [int(b) for b in SimUtils.registersToBits(registers)[address : address + count]]
        return list(registers[address : address + count])

    def set_illegal(self, table: Table, address: int, unit: int = 1, illegal: bool = True) -> None:
        """Make ``address`` answer exception 02 (or valid again)."""
        _, flags = self._block(unit, table)
        at = address // 16 if table in (Table.COIL, Table.DISCRETE) else address
        key = (unit, table, at)
        if illegal:
            self._saved_flags.setdefault(key, flags[at])
            flags[at] = DataType.INVALID
        elif key in self._saved_flags:
            flags[at] = self._saved_flags.pop(key)

    # ------------------------------------------------------ values by tag
    def set_value(self, tag: str, value: float) -> None:
        spec = self._specs[tag]
        self.set_registers(
            spec.table, spec.protocol_address, encode(tag, spec, value), spec.unit_id
        )

    def get_value(self, tag: str) -> float:
        spec = self._specs[tag]
        regs = self.get_registers(spec.table, spec.protocol_address, spec.count, spec.unit_id)
        return decode(tag, spec, regs)

    # ---------------------------------------------------------- the PLC
    async def _action(
        self,
        unit: int,
        function_code: int,
        start_address: int,
        address: int,
        count: int,
        registers: list[int],
        set_values: list[int] | list[bool] | None,
    ) -> ExcCodes | None:
        if self.latency:
            await asyncio.sleep(self.latency)
        table = _FC_TABLE[function_code]
        if set_values is None or table is not Table.HOLDING:
            return None
        after = list(registers)
        after[address - start_address : address - start_address + count] = set_values
        written = range(address, address + count)
        refused = self._out_of_range(unit, after, start_address, written)
        if refused and self.clamp:
            self._clamp(refused, cast(list[int], set_values), address)
            return None
        return ExcCodes.ILLEGAL_VALUE if refused else None

    def _clamp(self, names: list[str], set_values: list[int], address: int) -> None:
        """Store the nearest value inside the PLC's range instead of the requested one."""
        for name in names:
            spec, (lo, hi) = self._specs[name], self.plc_range[name]
            regs = encode(name, spec, lo if self._requested(name, set_values, address) < lo else hi)
            for j, reg in enumerate(regs):
                set_values[spec.protocol_address - address + j] = reg

    def _requested(self, name: str, set_values: list[int], address: int) -> float:
        spec = self._specs[name]
        at = spec.protocol_address - address
        return decode(name, spec, set_values[at : at + spec.count])

    def _out_of_range(
        self, unit: int, registers: list[int], start: int, written: range
    ) -> list[str]:
        """Writable tags touched by the write whose new value is outside the PLC's range."""
        out = []
        for name, (lo, hi) in self.plc_range.items():
            spec: ModbusSpec = self._specs[name]
            touched = set(written) & set(
                range(spec.protocol_address, spec.protocol_address + spec.count)
            )
            if spec.unit_id != unit or spec.table is not Table.HOLDING or not touched:
                continue
            at = spec.protocol_address - start
            if not lo <= decode(name, spec, registers[at : at + spec.count]) <= hi:
                out.append(name)
        return out

    def _trace(self, sending: bool, pdu: ModbusPDU) -> ModbusPDU:
        if not sending:
            count = pdu.count or len(pdu.bits) or len(pdu.registers)
            self.requests.append(Received(pdu.function_code, pdu.dev_id, pdu.address, count))
        return pdu

    # ------------------------------------------------------- start / stop
    async def start(self) -> None:
        """Listen on 127.0.0.1:``port`` (again, after ``stop``), keeping the values."""
        if self._server is not None:
            return
        where = (LOOPBACK, self.port)
        server = (
            ModbusTcpServer(self._devices, address=where, trace_pdu=self._trace)
            if self.tls is None
            else ModbusTlsServer(
                self._devices, address=where, sslctx=self.tls, trace_pdu=self._trace
            )
        )
        server.context = self._core  # keep the registers across restarts
        await server.serve_forever(background=True)
        self._server = server

    async def stop(self) -> None:
        """Stop listening and drop every client connection."""
        server, self._server = self._server, None
        if server is not None:
            await server.shutdown()
            await asyncio.sleep(0)

    async def __aenter__(self) -> ModbusPlcServer:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()
