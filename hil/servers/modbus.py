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
* ``bad_tags`` (tag -> reason): any request touching the tag's registers, read or write,
  answers exception 04 (server device failure);
* :meth:`drop_connections`: every client connection is closed, the server keeps listening;
* ``set_illegal(table, address)``: that register answers exception 02 (illegal data address);
* :meth:`stop`/:meth:`start`: a restart on the same port, keeping the register values.

With ``tls`` (a server-side :class:`ssl.SSLContext`, e.g. :func:`tls_server_context`) it
speaks Modbus/TCP Security; a client whose certificate the context refuses is logged
(WARNING), as is every connect and disconnect (INFO, with the client's address and, over TLS,
its certificate subject). The last requests received are kept in ``requests`` (function code,
unit, address, count), the last refusals in ``refusals``.
"""

from __future__ import annotations

import asyncio
import logging
import math
import os
import ssl
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, cast

from cryptography.hazmat.primitives.serialization import Encoding
from pymodbus.constants import ExcCodes
from pymodbus.pdu import ExceptionResponse, ModbusPDU
from pymodbus.server import ModbusTcpServer, ModbusTlsServer
from pymodbus.server.requesthandler import ServerRequestHandler
from pymodbus.simulator import DataType, SimData, SimDevice
from pymodbus.simulator.simcore import SimCore

from controller.errors import ConfigError, Problem
from controller.runtime.commissioning import REFUSAL_TAGS, RefusalCode
from controller.tags import DataType as TagType
from controller.tags import ModbusSpec, Table, TagMap, decode, encode
from hil.net import LOOPBACK, check_bind_address, free_port
from hil.servers.base import PlcServer, WriteHook
from hil.servers.certs import CertificateAuthority, ensure_server_certificate
from hil.site import hil_section

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
_FC_TABLE = {1: Table.COIL, 5: Table.COIL, 15: Table.COIL, 2: Table.DISCRETE, 4: Table.INPUT}
_FC_TABLE |= {3: Table.HOLDING, 6: Table.HOLDING, 16: Table.HOLDING, 23: Table.HOLDING}
_BITS = (Table.COIL, Table.DISCRETE)
_KEEP_REQUESTS = 10_000
_WRAP = 65536
_NOT_ACTIVE = "only while the MPC is active"  # the virtual PLC's words (hil.vplc)


@dataclass(frozen=True)
class Received:
    """One request as the server received it."""

    function_code: int
    unit_id: int
    address: int
    count: int


@dataclass(frozen=True)
class Refusal:
    """Why the PLC refused a client write, and where: the refused tag's first register (or,
    for an unmapped address, the first register no tag holds), 0-based."""

    code: RefusalCode
    table: Table
    address: int
    reason: str
    tag: str | None = None
    value: float | None = None


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
        wrong_unit: WrongUnit = "gateway",
    ) -> None:
        check_bind_address(host, allow_remote)
        if wrong_unit not in WRONG_UNIT_CHOICES:
            raise ValueError(f"wrong_unit {wrong_unit!r}; allowed: {list(WRONG_UNIT_CHOICES)}")
        self.tags, self.host, self.tls, self.wrong_unit = tags, host, tls, wrong_unit
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

    def _unmapped(self, unit: int, table: Table, address: int, count: int) -> int | None:
        """The first register of ``address .. address + count - 1`` that no tag holds."""
        mapped = self._mapped.get((unit, table), set())
        return next((a for a in range(address, address + count) if a not in mapped), None)

    def _refuse_write(
        self, unit: int, table: Table, address: int, values: list[int]
    ) -> Refusal | None:
        """Unmapped registers, the PLC's range check, then ``write_hook``, for the tags the
        write touches: why the request must be refused, or None.

        The range is checked for every tag first (clamping ``values`` in place if ``clamp``),
        so the hook only hears of writes that pass it; ``write_check`` then sees every tag
        before the hook is called tag by tag, in address order, until one refuses.
        """
        gap = self._unmapped(unit, table, address, len(values))
        if gap is not None:
            why = f"no tag holds {table} {gap} of unit {unit}"
            return Refusal(RefusalCode.UNMAPPED, table, gap, why)
        writes = []
        for name in self.touched(unit, table, address, len(values)):
            spec = self._specs[name]
            value = self._after_write(name, spec, address, values)
            lo, hi = self.plc_range.get(name, (-math.inf, math.inf))
            if not lo - _tolerance(spec, lo) <= value <= hi + _tolerance(spec, hi):
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
        """The code of a reason the PLC logic (the write hook) gave, from its words; a refusal
        for not being active while an interlock is active is the interlock's."""
        if _NOT_ACTIVE in reason:
            interlock = "interlock_active" in self._specs and self.value("interlock_active") != 0
            return RefusalCode.INTERLOCK if interlock else RefusalCode.NOT_ACTIVE
        if "outside the PLC range" in reason:
            return RefusalCode.OUTSIDE_LIMITS
        if "rate limit" in reason:
            return RefusalCode.RATE_LIMIT
        return RefusalCode.OTHER

    def _record(self, refusal: Refusal, function_code: int, unit: int) -> None:
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
            count = pdu.count or len(pdu.bits) or len(pdu.registers)
            self.requests.append(Received(pdu.function_code, pdu.dev_id, pdu.address, count))
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
            _TcpServer(self._devices, address=where, trace_pdu=self._trace)
            if self.tls is None
            else _TlsServer(self._devices, address=where, sslctx=self.tls, trace_pdu=self._trace)
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


def site_tls_context(site: Site, folder: Path, host: str) -> ssl.SSLContext:
    """Modbus/TCP Security for ``site``'s HIL: the server's TLS context, from the site's test
    bench CA (``hil.ca_certificate`` / ``hil.ca_private_key``).

    The server certificate (application URI ``urn:pharmatwin:hil:<site>:modbus``, the host
    names and addresses it serves under) is made on the first call in ``folder``, signed by
    the CA, and reused after (:func:`~hil.servers.certs.ensure_server_certificate`); clients
    must present a certificate the CA issued. ConfigError naming the site file and key if the
    site has no CA or it cannot be used.
    """
    hil = hil_section(site)
    if hil is None or hil.ca_certificate is None or hil.ca_private_key is None:
        why = (
            "Modbus/TCP Security needs the site's test-bench CA (hil.ca_certificate and "
            "hil.ca_private_key): it signs the server certificate and issues the clients'"
        )
        raise ConfigError([Problem(str(site.path), "hil.ca_certificate", why, None)])
    try:
        ca = CertificateAuthority.load(site.file(hil.ca_certificate), site.file(hil.ca_private_key))
    except ValueError as exc:
        raise ConfigError(
            [Problem(str(site.path), "hil.ca_certificate", str(exc), hil.ca_certificate)]
        ) from exc
    uri = f"urn:pharmatwin:hil:{site.name}:modbus"
    certificate, key = ensure_server_certificate(folder, uri, host, ca)
    pem = folder / "server-cert.pem"  # what ssl loads; the DER beside it is the one kept
    pem.write_text(ssl.DER_cert_to_PEM_cert(certificate.read_bytes()))
    return tls_server_context(pem, key, ca.certificate.public_bytes(Encoding.DER))


def tls_server_context(certificate: Path, key: Path, client_ca: bytes) -> ssl.SSLContext:
    """A Modbus/TCP Security server context: TLS 1.2 or later, the server's ``certificate``
    (PEM) and ``key``, and a client certificate issued by ``client_ca`` (DER) required.
    A client refused during the handshake is logged (WARNING) with the TLS reason."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.load_cert_chain(str(certificate), str(key))
    ctx.load_verify_locations(cadata=client_ca)
    ctx.verify_mode = ssl.CERT_REQUIRED  # mutual authentication, as the spec asks
    ctx.sslobject_class = _LoggedHandshake
    return ctx


class _LoggedHandshake(ssl.SSLObject):
    """asyncio's TLS object with the handshake's failure logged: asyncio itself drops it."""

    def do_handshake(self) -> None:
        try:
            super().do_handshake()
        except (ssl.SSLWantReadError, ssl.SSLWantWriteError):
            raise
        except ssl.SSLError as exc:
            log.warning("refused a Modbus/TLS client during the handshake: %s", _tls_reason(exc))
            raise


def _tls_reason(exc: ssl.SSLError) -> str:
    """``its certificate was rejected: certificate has expired``, ``peer did not return a
    certificate``, ``wrong version number`` (not TLS at all)..."""
    if isinstance(exc, ssl.SSLCertVerificationError) and exc.verify_message:
        return f"its certificate was rejected: {exc.verify_message}"
    return exc.reason.lower().replace("_", " ") if exc.reason else str(exc)


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
        table = _FC_TABLE[func_code]
        unmapped = self.plc._unmapped(device_id, table, address, len(values)) is not None
        if not unmapped and self.plc._failing(device_id, func_code, address, len(values)):
            return ExcCodes.DEVICE_FAILURE  # an unmapped address is refused as such first
        words = [int(v) for v in values]
        refusal = self.plc._refuse_write(device_id, table, address, words)
        if refusal is not None:
            self.plc._record(refusal, func_code, device_id)
            bad_address = refusal.code is RefusalCode.UNMAPPED
            return ExcCodes.ILLEGAL_ADDRESS if bad_address else ExcCodes.ILLEGAL_VALUE
        stored = cast(list[Any], values)  # possibly clamped: store what was checked
        stored[:] = [bool(w) for w in words] if table in _BITS else words
        return await super().async_setValues(device_id, func_code, address, values)


class _PlcHandler(ServerRequestHandler):
    """pymodbus's per-connection request handler: answers ``plc.latency`` seconds late,
    answers a wrong unit id as ``plc.wrong_unit`` says, and logs connects and disconnects."""

    plc: ModbusPlcServer
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

    async def handle_request(self) -> None:
        pdu, addr = self.last_pdu, self.last_addr
        if pdu is not None and self.plc.latency > 0:
            await asyncio.sleep(self.plc.latency)
            self.last_pdu, self.last_addr = pdu, addr  # a request may have come meanwhile
        if pdu is not None and pdu.dev_id not in self.plc.units:
            self._wrong_unit(pdu, addr)
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
            response = ExceptionResponse(pdu.function_code, ExcCodes.GATEWAY_NO_RESPONSE)
            response.transaction_id, response.dev_id = pdu.transaction_id, unit
            self.server_send(response, addr)


def _subject(cert: Any) -> str:
    """A peer certificate's subject (``getpeercert()`` form) as ``CN=..., O=...``."""
    names = {"commonName": "CN", "organizationName": "O", "organizationalUnitName": "OU"}
    parts = [f"{names.get(k, k)}={v}" for rdn in cert.get("subject", ()) for k, v in rdn]
    return ", ".join(parts) or "a certificate without a subject"


def _handler(server: ModbusTcpServer) -> ServerRequestHandler:
    handler = _PlcHandler(server, server.trace_packet, server.trace_pdu, server.trace_connect)
    handler.plc = server.plc  # type: ignore[attr-defined]
    return handler


class _TcpServer(ModbusTcpServer):
    def callback_new_connection(self) -> ServerRequestHandler:
        return _handler(self)


class _TlsServer(ModbusTlsServer):
    def callback_new_connection(self) -> ServerRequestHandler:
        return _handler(self)
