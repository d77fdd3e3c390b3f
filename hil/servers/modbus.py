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
``clamp = True`` the PLC stores the nearest value in range instead. A write touching a
register that no tag of the map holds answers exception 02 (illegal data address); reads of
such gaps are answered (with 0), as many PLCs do.

Every refusal is logged (logger ``hil.servers.modbus``, WARNING) with its reason, and kept in
the PLC's diagnostic tags when the map declares them
(:data:`~controller.runtime.commissioning.REFUSAL_TAGS`: the
:class:`~controller.runtime.commissioning.RefusalCode` - not active, over the rate limit, outside
limits, interlock, unmapped address, other -, the function code, the 0-based address of the refused
tag and a refusal counter), so a Modbus client can read why. A request for a unit id the map does
not have is answered as ``wrong_unit`` says: ``"gateway"``, exception 0B (gateway target device
failed to respond), as a Modbus gateway answers for a device that is not there; ``"silent"``, no
answer at all (the client times out), as a device that ignores other unit ids does.

Communication faults, injected on the server side:

* ``latency``: seconds added to every answer;
* ``unsupported_functions``: function codes answered with exception 01 (illegal function),
  unexecuted, as by a PLC that does not implement them (e.g. ``{23}``);
* ``bad_tags`` (tag -> reason): any request touching the tag's registers, read or write,
  answers exception 04 (server device failure);
* :meth:`drop_connections`: every client connection is closed, the server keeps listening;
* ``set_illegal(table, address)``: that register answers exception 02 (illegal data address);
* :meth:`stop`/:meth:`start`: a restart on the same port, keeping the register values.

With ``tls`` (a server-side :class:`ssl.SSLContext`, e.g. :func:`tls_server_context`) it
speaks Modbus/TCP Security; a client whose certificate the context refuses is logged
(WARNING), as is every connect and disconnect (INFO, with the client's address and, over TLS,
its certificate subject). The last requests received are kept in ``requests`` (function code,
unit, address, count; a Read/Write Multiple Registers request, FC 23, as the address and count
of its write), the last refusals in ``refusals``. FC 23 goes through the same checks as a
write (FC 16) before its read part is answered.
"""

from __future__ import annotations

import asyncio
import logging
import math
import os
import ssl
from collections.abc import Collection, Mapping, Sequence
from datetime import datetime
from typing import TYPE_CHECKING, Any, Literal

from pymodbus.pdu import ModbusPDU
from pymodbus.server import ModbusTcpServer
from pymodbus.simulator import DataType, SimData, SimDevice

from controller.codecs import decode, encode
from controller.errors import unknown_name
from controller.runtime.commissioning import REFUSAL_TAGS, RefusalCode
from controller.tags import ModbusSpec, Table, TagMap
from hil.net import LOOPBACK, check_bind_address, free_port
from hil.servers.base import PlcServer, WriteHook
from hil.servers.modbus_refusals import Received, Refusal, classify, tolerance
from hil.servers.modbus_wire import BITS, FC_TABLE, PlcCore, TcpServer, TlsServer

if TYPE_CHECKING:
    from controller.runtime.site import Site

log = logging.getLogger(__name__)
if logging.getLogger("pymodbus").level == logging.NOTSET:
    logging.getLogger("pymodbus").setLevel(logging.CRITICAL)  # what matters, we log ourselves

#: How a request for a unit id the tag map does not have is answered (see the module doc).
WrongUnit = Literal["gateway", "silent"]
WRONG_UNIT_CHOICES: tuple[WrongUnit, ...] = ("gateway", "silent")

#: Modbus port used by :func:`modbus_server_for_site` when the site itself speaks OPC UA.
DEFAULT_PORT = 5020

_TABLE_KEY = {Table.COIL: "c", Table.DISCRETE: "d", Table.HOLDING: "h", Table.INPUT: "i"}
_KEEP_REQUESTS = 10_000
#: FC 23, Read/Write Multiple Registers: traced as the write it carries (its read part reads
#: the same registers back, as the twin's port sends it)
READ_WRITE_REGISTERS = 23
_WRAP = 65536


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
        wrong_unit: WrongUnit = "gateway",
    ) -> None:
        check_bind_address(host, allow_remote)
        if wrong_unit not in WRONG_UNIT_CHOICES:
            raise ValueError(unknown_name("wrong_unit", wrong_unit, WRONG_UNIT_CHOICES))
        self.tags, self.host, self.tls, self.wrong_unit = tags, host, tls, wrong_unit
        self.port = port if port is not None else free_port()
        self.write_hook: WriteHook | None = None
        #: Side-effect-free twin of ``write_hook``: every tag of a request is checked before
        #: any is applied, so a request refused with exception 03 changes nothing in the PLC.
        self.write_check: WriteHook | None = None
        self.latency = 0.0
        self.unsupported_functions: set[int] = set()
        self.bad_tags = {}
        self.clamp = False
        self.plc_range: dict[str, tuple[float, float]] = {
            name: tag.limits
            for name, tag in tags.tags.items()
            if tag.writable and tag.limits is not None
        }
        self.requests: list[Received] = []
        #: requests received since the server was made (``requests`` keeps only the last ones)
        self.request_count = 0
        self._specs = {n: t.modbus for n, t in tags.tags.items() if t.modbus is not None}
        self._by_table: dict[tuple[int, Table], list[tuple[str, ModbusSpec]]] = {}
        for name, spec in sorted(self._specs.items(), key=lambda item: item[1].protocol_address):
            self._by_table.setdefault((spec.unit_id, spec.table), []).append((name, spec))
        units = sorted({s.unit_id for s in self._specs.values()}) or [1]
        self.units = frozenset(units)
        self._mapped = {
            key: {
                a
                for _, s in members
                for a in range(s.protocol_address, s.protocol_address + s.count)
            }
            for key, members in self._by_table.items()
        }
        #: the refusals so far, oldest first (the last few thousand), as logged
        self.refusals: list[Refusal] = []
        self._refusal_count = 0
        self._devices = [self._device(unit) for unit in units]
        self._core = PlcCore(self._devices, self)
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
            if table in BITS:
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
        if table in BITS:
            for at, bit in enumerate(values, start=address):
                mask = 1 << (at % 16)
                word = registers[at // 16]
                registers[at // 16] = word | mask if bit else word & ~mask
        else:
            registers[address : address + len(values)] = [int(v) for v in values]

    def get_registers(self, table: Table, address: int, count: int, unit: int = 1) -> list[int]:
        registers, _ = self._block(unit, table)
        if table in BITS:
            return [(registers[a // 16] >> (a % 16)) & 1 for a in range(address, address + count)]
        return list(registers[address : address + count])

    def set_illegal(self, table: Table, address: int, unit: int = 1, illegal: bool = True) -> None:
        """Make ``address`` answer exception 02 (or valid again)."""
        _, flags = self._block(unit, table)
        at = address // 16 if table in BITS else address
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

    def failing(self, unit: int, function_code: int, address: int, count: int) -> bool:
        """Whether the request touches a tag in ``bad_tags`` (answer exception 04)."""
        if not self.bad_tags:
            return False
        names = self.touched(unit, FC_TABLE[function_code], address, count)
        failing = [n for n in names if n in self.bad_tags]
        for name in failing:
            log.debug(
                "fc %d touches %s: exception 04 (%s)", function_code, name, self.bad_tags[name]
            )
        return bool(failing)

    def unmapped(self, unit: int, table: Table, address: int, count: int) -> int | None:
        """The first register of ``address .. address + count - 1`` that no tag holds."""
        mapped = self._mapped.get((unit, table), set())
        return next((a for a in range(address, address + count) if a not in mapped), None)

    def refuse_write(
        self, unit: int, table: Table, address: int, values: list[int]
    ) -> Refusal | None:
        """Unmapped registers, the PLC's range check, then ``write_hook``, for the tags the
        write touches: why the request must be refused, or None.

        The range is checked for every tag first (clamping ``values`` in place if ``clamp``),
        so the hook only hears of writes that pass it; ``write_check`` then sees every tag
        before the hook is called tag by tag, in address order, until one refuses.
        """
        gap = self.unmapped(unit, table, address, len(values))
        if gap is not None:
            why = f"no tag holds {table} {gap} of unit {unit}"
            return Refusal(RefusalCode.UNMAPPED, table, gap, why)
        writes = []
        for name in self.touched(unit, table, address, len(values)):
            spec = self._specs[name]
            value = self._after_write(name, spec, address, values)
            lo, hi = self.plc_range.get(name, (-math.inf, math.inf))
            if not lo - tolerance(spec, lo) <= value <= hi + tolerance(spec, hi):
                if not self.clamp or math.isnan(value):
                    why = f"outside the PLC range [{lo}, {hi}]"
                    return Refusal(
                        RefusalCode.OUTSIDE_LIMITS, table, spec.protocol_address, why, name, value
                    )
                value = min(max(value, lo), hi)
                self._overlay(encode(name, spec, value), spec, address, values)
            writes.append((name, spec, value))
        for hook in (self.write_check, self.write_hook):
            if hook is None:
                continue
            for name, spec, value in writes:
                reason = hook(name, value)
                if reason is not None:
                    code = self._classify(reason)
                    return Refusal(code, table, spec.protocol_address, reason, name, value)
        return None

    def _classify(self, reason: str) -> RefusalCode:
        """The code of the PLC logic's ``reason`` (see :func:`classify`)."""
        interlock = "interlock_active" in self._specs and self.value("interlock_active") != 0
        return classify(reason, interlock)

    def record_refusal(self, refusal: Refusal, function_code: int, unit: int) -> None:
        """Log a refusal and keep it in the diagnostic tags the map declares."""
        self._refusal_count += 1
        self.refusals.append(refusal)
        if len(self.refusals) > _KEEP_REQUESTS:
            del self.refusals[: _KEEP_REQUESTS // 2]
        what = f"{refusal.tag} = {refusal.value!r}" if refusal.tag else "an unmapped register"
        log.warning(
            "refused a write of %s: %s (%s; function %d, unit %d, %s %d)",
            what,
            refusal.reason,
            refusal.code.name.lower().replace("_", " "),
            function_code,
            unit,
            refusal.table,
            refusal.address,
        )
        diagnostics = (refusal.code, function_code, refusal.address, self._refusal_count % _WRAP)
        for tag, number in zip(REFUSAL_TAGS, diagnostics, strict=True):
            if tag in self._specs:
                self.set_value(tag, float(number))

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
            address, count = pdu.address, pdu.count or len(pdu.bits) or len(pdu.registers)
            if pdu.function_code == READ_WRITE_REGISTERS:  # kept as the write it carries
                address, count = pdu.write_address, pdu.write_count  # type: ignore[attr-defined]
            self.requests.append(Received(pdu.function_code, pdu.dev_id, address, count))
            self.request_count += 1
            if len(self.requests) > _KEEP_REQUESTS:
                del self.requests[: _KEEP_REQUESTS // 2]
        return pdu

    # ------------------------------------------------------- start / stop
    async def start(self) -> None:
        """Listen on ``host``:``port`` (again, after ``stop``), keeping the values.

        OSError (e.g. EADDRINUSE, the port is busy) if it cannot listen, naming the address.
        """
        if self._server is not None:
            return
        where = (self.host, self.port)
        server: ModbusTcpServer = (
            TcpServer(self._devices, address=where, trace_pdu=self._trace)
            if self.tls is None
            else TlsServer(self._devices, address=where, sslctx=self.tls, trace_pdu=self._trace)
        )
        server.plc = self  # type: ignore[attr-defined]
        server.context = self._core  # our datastore: keeps the registers across restarts
        failed: list[OSError] = []
        create = server.call_create

        async def listen() -> Any:  # pymodbus logs a failed listen and drops the OSError
            try:
                return await create()
            except OSError as exc:
                failed.append(exc)
                raise

        server.call_create = listen
        try:
            await server.serve_forever(background=True)
        except RuntimeError as exc:
            if not failed:
                raise
            cause = failed[0]
            why = os.strerror(cause.errno) if cause.errno else str(cause)
            raise OSError(cause.errno, f"cannot listen on {self.host}:{self.port}: {why}") from exc
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
    site: Site,
    port: int | None = None,
    *,
    host: str | None = None,
    allow_remote: bool = False,
    tls: ssl.SSLContext | None = None,
    wrong_unit: WrongUnit = "gateway",
) -> ModbusPlcServer:
    """The Modbus server standing in for ``site``'s PLC (nothing listens before ``start()``).

    ``host`` defaults to the site's; ``port`` to the site's own if it speaks Modbus, else
    :data:`DEFAULT_PORT`. ``tls`` (see :func:`site_tls_context`): Modbus/TCP Security.
    """
    if port is None:
        port = site.connection.port if site.connection.protocol == "modbus" else DEFAULT_PORT
    host = host if host is not None else site.connection.host
    return ModbusPlcServer(
        site.tags, port, host=host, allow_remote=allow_remote, tls=tls, wrong_unit=wrong_unit
    )
