"""The OPC UA port: a :class:`~controller.ports.base.Port` onto a PLC's OPC UA server (asyncua).

The only module of ours that imports asyncua; every asyncua/ua/socket exception is translated
here into the :class:`~controller.errors.PortError` tree with ``raise ... from exc``.

* **Connect**: an asyncua client with request timeout ``connection.timeout_s`` (asyncua's
  own default is 60 s) and security policy None, or Basic256Sha256, Aes128_Sha256_RsaOaep or
  Aes256_Sha256_RsaPss with Sign/SignAndEncrypt. The client certificate and key are PEM or
  DER files relative to ``base_dir``; the client's application URI is the certificate's
  SubjectAltName URI. The server certificate must be in the ``trust_list`` files (or be
  issued by a CA among them) and in date, else PortConnectError. Username/password if
  configured. Every tag's node (node id ``ns=<index>;...`` or ``nsu=<namespace URI>;...``, or
  browse path of ``"ns:Name"`` elements from the Root folder) is resolved and its DataType
  read once; ``nsu=`` is looked up in the server's NamespaceArray first, so a node id never
  goes on the wire with a URI the server would have to guess. Malformed node ids, namespace
  URIs or indexes the server does not have, unknown nodes and types other than the tag's
  ``data_type`` are one PortError naming tags, nodes and types (never a timeout).
* **Roles** the user (``connection.opcua.username``) needs on the HIL server (site
  ``hil.users``): ``engineer`` to take control (``mpc_request``, ``mpc_heartbeat``) and write
  setpoints and advisory tags, ``twin`` to write publications; shadow mode without
  publications needs ``viewer`` only (every role reads). Without the role a write answers
  BadUserAccessDenied (REJECTED).
* **Read**: ONE Read service call per cycle (Value, both timestamps), or with
  ``subscription: true`` a data-change subscription cache (seeded by one Read at connect).
  Good/Uncertain/Bad status -> :class:`Quality` with detail = status name; booleans -> 0/1;
  a Good value that is not finite is BAD, one outside the tag's engineering ``limits``
  UNCERTAIN ("outside limits: wrong word order or scale?").
  ``source_time = read_time - (now_utc - SourceTimestamp)`` (else ServerTimestamp, else the
  notification's arrival, else ``read_time``): the process-time equivalent of the value's age.
* **Write**: everything is validated first (unknown, read-only, not finite, outside the tag
  limits, not representable in the node's type); if anything is REJECTED nothing is sent and
  the rest is NOT_SENT. Then ONE Write call with the variant type read at connect, a status
  per tag (refusals such as BadOutOfRange -> REJECTED, other Bad -> FAILED), and ONE Read to
  compare the read-back (OK or MISMATCH; Float nodes at float32 precision).
* **Failures**: timeouts -> PortTimeoutError (the connection is kept); refused or lost
  connections and refused logins or certificates -> PortConnectError naming the URL. After a
  loss the next call reconnects with capped exponential backoff (``connection.backoff``, on
  the event loop's monotonic clock); before the delay is over it raises PortConnectError
  "next attempt in X s" without network I/O. A write whose read-back fails raises.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import struct
from collections.abc import AsyncIterator, Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from asyncua import Client, Node, ua
from asyncua.client.ua_client import UaClientState
from asyncua.common.subscription import DataChangeNotif
from asyncua.crypto.security_policies import (
    SecurityPolicy,
    SecurityPolicyAes128Sha256RsaOaep,
    SecurityPolicyAes256Sha256RsaPss,
    SecurityPolicyBasic256Sha256,
)
from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization

from controller.clock import Clock
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
from controller.runtime.site import Connection
from controller.tags import FLOAT32_MAX, OPCUA_INT_RANGE, TagMap

#: Write statuses meaning "the PLC refused this value" (REJECTED); other Bad ones are FAILED.
_REFUSED = {"BadOutOfRange", "BadUserAccessDenied", "BadNotWritable", "BadTypeMismatch"}
_REFUSED |= {"BadWriteNotSupported", "BadNodeIdUnknown", "BadNotSupported", "BadIndexRangeInvalid"}
_REFUSED |= {"BadInvalidState", "BadLocked"}  # not active / interlock: the PLC's refusals
_LOGIN_REFUSED = {"BadUserAccessDenied", "BadIdentityTokenRejected", "BadIdentityTokenInvalid"}
_TIMEOUT = {"BadTimeout", "BadRequestTimeout"}
#: Service results meaning the session or channel is gone (reconnect).
_LOST = {"BadSessionIdInvalid", "BadSessionClosed", "BadSessionNotActivated", "BadShutdown"}
_LOST |= {"BadSecureChannelClosed", "BadSecureChannelIdInvalid", "BadConnectionClosed"}
_LOST |= {"BadServerNotConnected", "BadNoCommunication", "BadCommunicationError"}
_NO_DATA = ua.DataValue(
    StatusCode=ua.StatusCode(ua.UInt32(ua.StatusCodes.BadWaitingForInitialData))
)
_UA_ERRORS = (TimeoutError, OSError, ua.UaError)
#: asyncua asks for 1 h; a vanished controller should free the PLC's session slot sooner.
_SESSION_TIMEOUT_MS = 60_000
#: The secure policies a site may name (``connection.opcua.security.policy``).
_POLICIES: dict[str, type[SecurityPolicy]] = {
    "Basic256Sha256": SecurityPolicyBasic256Sha256,
    "Aes128_Sha256_RsaOaep": SecurityPolicyAes128Sha256RsaOaep,
    "Aes256_Sha256_RsaPss": SecurityPolicyAes256Sha256RsaPss,
}


@dataclass(frozen=True)
class _Point:
    """A tag resolved on the server: its node and the variant type read at connect."""

    node: ua.NodeId
    vtype: ua.VariantType


class _Cache:
    """Subscription handler: the latest DataValue (and its arrival time) per node."""

    def __init__(self) -> None:
        self.values: dict[ua.NodeId, tuple[ua.DataValue, datetime]] = {}
        self.lost: str | None = None

    def datachange_notification(self, node: Node, val: Any, data: DataChangeNotif) -> None:
        self.values[node.nodeid] = (data.monitored_item.Value, datetime.now(UTC))

    def status_change_notification(self, status: ua.StatusChangeNotification) -> None:
        self.lost = status.Status.name


class OpcUaPort(Port):
    """A :class:`Port` onto one OPC UA server, for the tags of ``tags`` that have an address."""

    def __init__(
        self,
        tags: TagMap,
        connection: Connection,
        clock: Clock,
        *,
        password: str | None = None,
        base_dir: Path | None = None,
    ) -> None:
        self._specs = {n: t.opcua for n, t in tags.tags.items() if t.opcua is not None}
        self.tags = {n: tags.tags[n] for n in self._specs}  # the tags with an OPC UA address
        self.connection, self.clock, self.url = connection, clock, connection.url
        self._password, self._base = password, base_dir or Path.cwd()
        self._client: Client | None = None
        self._points: dict[str, _Point] = {}
        self._cache: _Cache | None = None
        self._lock = asyncio.Lock()
        self._wanted = False  # connect() was called and close() was not
        self._failures, self._next_attempt = 0, 0.0

    # ------------------------------------------------------------------ lifecycle
    async def connect(self) -> None:
        """Connect now (no backoff wait); raises PortConnectError, PortTimeoutError, PortError."""
        self._wanted = True
        async with self._lock:
            if self._client is None:
                await self._attempt()

    async def close(self) -> None:
        self._wanted = False
        async with self._lock:
            await self._drop()

    async def _ensure(self) -> Client:
        """The connected client, reconnecting (with backoff) after a loss."""
        client = self._client
        healthy = self._cache is None or self._cache.lost is None
        if client is not None and client.uaclient.state is UaClientState.CONNECTED and healthy:
            return client
        if client is not None:
            await self._lost()
        if not self._wanted:
            raise PortConnectError(f"OPC UA port to {self.url} is not open; use 'async with'")
        wait = self._next_attempt - asyncio.get_running_loop().time()
        if wait > 0:
            state = "lost the connection to" if client else "no connection to"
            raise PortConnectError(f"{state} {self.url}; next attempt in {wait:.2f} s")
        return await self._attempt()

    async def _attempt(self) -> Client:
        client = Client(self.url, timeout=self.connection.timeout_s)
        client.session_timeout = _SESSION_TIMEOUT_MS
        try:
            async with self._translate("connecting to", connecting=True):
                await self._configure(client)
                await client.connect()
                self._points = await self._resolve(client)
                if self.connection.opcua.subscription:
                    self._cache = await self._subscribe(client)
        except BaseException:
            await self._disconnect(client)
            self._cache = None
            self._schedule_retry()
            raise
        self._client, self._failures = client, 0
        return client

    def _schedule_retry(self) -> None:
        b = self.connection.backoff
        delay = min(b.initial_s * b.factor**self._failures, b.max_s)
        self._failures += 1
        self._next_attempt = asyncio.get_running_loop().time() + delay

    async def _lost(self) -> None:
        await self._drop()
        self._schedule_retry()

    async def _drop(self) -> None:
        client, self._client, self._cache = self._client, None, None
        if client is not None:
            await self._disconnect(client)

    async def _disconnect(self, client: Client) -> None:
        with contextlib.suppress(Exception):
            await asyncio.wait_for(client.disconnect(), self.connection.timeout_s)
        client.disconnect_socket()

    @contextlib.asynccontextmanager
    async def _translate(self, doing: str, *, connecting: bool = False) -> AsyncIterator[None]:
        """Turn asyncua/socket exceptions into PortErrors (dropping a lost connection)."""
        try:
            yield
        except _UA_ERRORS as exc:
            err = self._port_error(exc, doing, connecting)
            if isinstance(err, PortConnectError) and not connecting:
                await self._lost()
            raise err from exc

    def _port_error(self, exc: BaseException, doing: str, connecting: bool) -> PortError:
        t = self.connection.timeout_s
        if isinstance(exc, TimeoutError):
            return PortTimeoutError(f"{doing} {self.url}: no answer within {t} s")
        if isinstance(exc, OSError):
            return PortConnectError(f"{doing} {self.url}: {type(exc).__name__}: {exc}")
        if not isinstance(exc, ua.UaStatusCodeError):
            sec = self.connection.opcua.security
            if connecting:
                return PortConnectError(f"{doing} {self.url} ({sec.policy}/{sec.mode}): {exc}")
            return ProtocolError(f"{doing} {self.url}: {exc}")
        name = ua.StatusCode(exc.code).name
        if name in _TIMEOUT:
            return PortTimeoutError(f"{doing} {self.url}: the server answered {name}")
        if connecting and name in _LOGIN_REFUSED:
            user = self.connection.opcua.username
            who = f"user {user!r}" if user else "anonymous user"
            return PortConnectError(f"{self.url}: the server refused the {who} ({name})")
        if connecting or name in _LOST or name.startswith(("BadCertificate", "BadSecurity")):
            return PortConnectError(f"{doing} {self.url}: the server answered {name}")
        return ProtocolError(f"{doing} {self.url}: the server answered {name}")

    # ------------------------------------------------------------------ connect steps
    async def _configure(self, client: Client) -> None:
        """Security policy and mode, client certificate, server trust check, user login."""
        opts, sec = self.connection.opcua, self.connection.opcua.security
        if opts.username is not None:
            if self._password is None:
                raise PortConnectError(
                    f"{self.url}: user {opts.username!r} is configured but no password was "
                    f"given (environment variable {opts.password_env})"
                )
            client.set_user(opts.username)
            client.set_password(self._password)
        if sec.policy == "None":
            return
        cert = _load_cert(self._file(sec.certificate, "client certificate"))
        key = _load_key(self._file(sec.private_key, "client private key"))
        trusted = [_load_cert(self._file(p, "trust list certificate")) for p in sec.trust_list]
        uris = _san_uris(cert)
        if uris:
            client.application_uri = uris[0]
        mode = getattr(ua.MessageSecurityMode, sec.mode)
        der = cert.public_bytes(serialization.Encoding.DER)
        # No server_certificate: asyncua takes it from GetEndpoints (unsecured); checked below.
        await client.set_security(_POLICIES[sec.policy], der, key, mode=mode)
        peer = client.security_policy.peer_certificate
        server_cert = x509.load_der_x509_certificate(peer) if peer else None
        if server_cert is None or not _trusted(server_cert, trusted):
            subject = server_cert.subject.rfc4514_string() if server_cert else "none"
            raise PortConnectError(
                f"{self.url}: the server certificate ({subject}) is not trusted: it is not in, "
                f"nor issued by, the trust list {list(sec.trust_list)}; refusing to connect"
            )

    def _file(self, ref: str | None, what: str) -> tuple[bytes, str]:
        path = self._base / (ref or "")
        try:
            return path.read_bytes(), f"the {what} {path}"
        except OSError as exc:
            raise PortConnectError(f"cannot read the {what} {path}: {exc}") from exc

    async def _resolve(self, client: Client) -> dict[str, _Point]:
        """Resolve every tag's node and check its DataType (one Read); all problems at once."""
        nodes: dict[str, ua.NodeId] = {}
        problems: list[str] = []
        paths = {n: spec.browse_path for n, spec in self._specs.items() if spec.browse_path}
        namespaces = await client.get_namespace_array()
        for name, spec in self._specs.items():
            if spec.node_id is not None:
                try:
                    nodes[name] = _in_namespace(spec.node_id, namespaces)
                except (ValueError, ua.UaStringParsingError) as exc:
                    problems.append(f"tag {name!r}: {exc}")
        if paths:
            found = await client.nodes.root.get_children_by_path(
                [list(p) for p in paths.values()], raise_on_partial_error=False
            )
            for name, hit in zip(paths, found, strict=True):
                if hit and hit[0] is not None:
                    nodes[name] = hit[0].nodeid
                else:
                    problems.append(f"tag {name!r}: browse path {self._where(name)} not found")
        read = [
            ua.ReadValueId(NodeId=n, AttributeId=ua.AttributeIds.DataType) for n in nodes.values()
        ]
        results = await client.uaclient.read(ua.ReadParameters(NodesToRead=read)) if read else []
        points = {}
        for (name, node), dv in zip(nodes.items(), results, strict=True):
            where = f"tag {name!r} (node {self._where(name)})"
            status = dv.StatusCode or ua.StatusCode()
            actual, expected = _type_name(dv.Value.Value if dv.Value else None), self._type(name)
            if not status.is_good():
                problems.append(f"{where}: {status.name}")
            elif actual != expected:
                problems.append(f"{where}: the tag expects {expected}, the node is {actual}")
            else:
                points[name] = _Point(node, ua.VariantType[actual])
        if problems:
            raise PortError(f"address check on {self.url} failed:\n  - " + "\n  - ".join(problems))
        return points

    async def _subscribe(self, client: Client) -> _Cache:
        """Seed the cache with one Read, then keep it fresh with a data-change subscription."""
        cache, names = _Cache(), [n for n in self._points if self.tags[n].readable]
        if not names:
            return cache
        arrived = datetime.now(UTC)
        for name, dv in zip(names, await self._read_values(client, names), strict=True):
            cache.values[self._points[name].node] = (dv, arrived)
        interval = self.connection.opcua.publishing_interval_ms
        sub = await client.create_subscription(interval, cache)
        handles = await sub.subscribe_data_change(
            [client.get_node(self._points[n].node) for n in names],
            sampling_interval=ua.Double(interval),
        )
        bad = [
            f"{n}: {h.name}"
            for n, h in zip(names, handles, strict=True)
            if isinstance(h, ua.StatusCode)
        ]
        if bad:
            raise PortError(f"{self.url}: cannot monitor {bad}")
        return cache

    # ------------------------------------------------------------------ read
    async def read(self, tags: Iterable[str]) -> Snapshot:
        names = list(dict.fromkeys(tags))
        bad = [n for n in names if n not in self.tags or not self.tags[n].readable]
        if bad:
            raise PortError(
                f"cannot read {bad}: unknown or write-only; readable tags are "
                f"{sorted(n for n, t in self.tags.items() if t.readable)}"
            )
        if not names:
            return Snapshot({}, self.clock.now())
        async with self._lock:
            client = await self._ensure()
            arrived: list[datetime | None] = [None] * len(names)
            if self._cache is None:
                async with self._translate("reading from"):
                    dvs = await self._read_values(client, names)
            else:
                cached = [self._cache.values.get(self._points[n].node) for n in names]
                dvs = [c[0] if c else _NO_DATA for c in cached]
                arrived = [c[1] if c else None for c in cached]
        now, utc = self.clock.now(), datetime.now(UTC)
        values = {
            n: flag_implausible(_tag_value(dv, now, utc, a), self.tags[n])
            for n, dv, a in zip(names, dvs, arrived, strict=True)
        }
        return Snapshot(values, now)

    async def _read_values(self, client: Client, names: list[str]) -> list[ua.DataValue]:
        """ONE Read service call for the Value attribute of ``names``, with both timestamps."""
        params = ua.ReadParameters(
            TimestampsToReturn=ua.TimestampsToReturn.Both,
            NodesToRead=[
                ua.ReadValueId(NodeId=self._points[n].node, AttributeId=ua.AttributeIds.Value)
                for n in names
            ],
        )
        results = await client.uaclient.read(params)
        if len(results) != len(names):
            raise ProtocolError(f"{self.url}: asked for {len(names)} values, got {len(results)}")
        return results

    # ------------------------------------------------------------------ write
    async def write(self, values: Mapping[str, float]) -> WriteReport:
        requested = dict(values)
        refused = {t: why for t, v in requested.items() if (why := self._refusal(t, v))}
        if refused:
            return WriteReport(
                {
                    t: WriteResult(t, v, WriteStatus.REJECTED, None, refused[t])
                    if t in refused
                    else WriteResult(
                        t, v, WriteStatus.NOT_SENT, None, f"not sent: {sorted(refused)} refused"
                    )
                    for t, v in requested.items()
                },
                self.clock.now(),
            )
        if not requested:
            return WriteReport({}, self.clock.now())
        async with self._lock:
            client = await self._ensure()
            names = list(requested)
            params = ua.WriteParameters(
                NodesToWrite=[self._write_value(n, requested[n]) for n in names]
            )
            async with self._translate("writing to"):
                statuses = await client.uaclient.write(params)
            if len(statuses) != len(names):
                raise ProtocolError(f"{self.url}: wrote {len(names)} values, got {len(statuses)}")
            write_time = self.clock.now()
            results: dict[str, WriteResult] = {}
            for name, st in zip(names, statuses, strict=True):
                if st.is_bad():
                    kind = WriteStatus.REJECTED if st.name in _REFUSED else WriteStatus.FAILED
                    msg = f"{name}={requested[name]} to node {self._where(name)}: {st.name}"
                    results[name] = WriteResult(name, requested[name], kind, None, msg)
            back = [n for n in names if n not in results and self.tags[n].readable]
            async with self._translate("reading back from"):
                dvs = await self._read_values(client, back) if back else []
        for name, dv in zip(back, dvs, strict=True):
            results[name] = self._compare(name, requested[name], dv)
        for name in names:
            results.setdefault(
                name,
                WriteResult(
                    name, requested[name], WriteStatus.OK, None, "write-only tag: no read-back"
                ),
            )
        return WriteReport({n: results[n] for n in names}, write_time)

    def _refusal(self, name: str, value: float) -> str:
        """Why ``value`` cannot be written to tag ``name`` ("" if it can)."""
        tag = self.tags.get(name)
        if tag is None:
            return f"unknown tag {name!r}"
        if not tag.writable:
            return f"tag {name!r} is read-only (direction {tag.direction})"
        if not math.isfinite(value):
            return f"{name}={value!r} is not finite"
        if tag.limits is not None and not tag.limits[0] <= value <= tag.limits[1]:
            return f"{name}={value} is outside the tag limits [{tag.limits[0]}, {tag.limits[1]}]"
        typ = self._type(name)
        if typ == "Boolean" and value not in (0, 1):
            return f"{name}={value}: the node is Boolean, which takes 0 or 1"
        if typ in OPCUA_INT_RANGE:
            lo, hi = OPCUA_INT_RANGE[typ]
            if value != int(value) or not lo <= value <= hi:
                return f"{name}={value} does not fit the node's {typ}: integers in [{lo}, {hi}]"
        if typ == "Float" and abs(value) > FLOAT32_MAX:
            return f"{name}={value} overflows the node's Float (float32)"
        return ""

    def _write_value(self, name: str, value: float) -> ua.WriteValue:
        vtype = self._points[name].vtype
        typ = vtype.name
        py: bool | int | float = (
            bool(value)
            if typ == "Boolean"
            else int(value)
            if typ in OPCUA_INT_RANGE
            else float(value)
        )
        dv = ua.DataValue(Value=ua.Variant(py, vtype))
        return ua.WriteValue(
            NodeId=self._points[name].node, AttributeId=ua.AttributeIds.Value, Value=dv
        )

    def _compare(self, name: str, requested: float, dv: ua.DataValue) -> WriteResult:
        status = dv.StatusCode or ua.StatusCode()
        readback = _number(dv.Value)
        if status.is_bad() or readback is None or not math.isfinite(readback):
            why = status.name if status.is_bad() else f"no finite number ({readback!r})"
            return WriteResult(
                name,
                requested,
                WriteStatus.FAILED,
                None,
                f"read-back of {self._where(name)}: {why}",
            )
        want = (
            struct.unpack("<f", struct.pack("<f", requested))[0]
            if self._type(name) == "Float"
            else requested
        )
        if readback == want:
            return WriteResult(name, requested, WriteStatus.OK, readback)
        detail = f"node {self._where(name)} reads back {readback}, requested {requested}"
        return WriteResult(name, requested, WriteStatus.MISMATCH, readback, detail)

    # ------------------------------------------------------------------ helpers
    def _type(self, name: str) -> str:
        return self._specs[name].data_type

    def _where(self, name: str) -> str:
        spec = self._specs[name]
        return spec.node_id or "/".join(spec.browse_path or ())


def _tag_value(
    dv: ua.DataValue, read_time: float, utc: datetime, arrived: datetime | None
) -> TagValue:
    """A DataValue as a TagValue: quality from the status, source time from its timestamps."""
    status = dv.StatusCode or ua.StatusCode()
    stamp = dv.SourceTimestamp or dv.ServerTimestamp or arrived
    if stamp is not None and stamp.tzinfo is None:
        stamp = stamp.replace(tzinfo=UTC)
    source_time = read_time if stamp is None else read_time - (utc - stamp).total_seconds()
    value = _number(dv.Value)
    if status.is_good() and value is not None:
        return TagValue(value, Quality.GOOD, source_time, read_time)
    quality = Quality.UNCERTAIN if status.is_uncertain() else Quality.BAD
    detail = status.name if not status.is_good() else "the value is not a number"
    if value is None:
        quality = Quality.BAD
    return TagValue(math.nan if value is None else value, quality, source_time, read_time, detail)


def _in_namespace(node_id: str, namespaces: list[str]) -> ua.NodeId:
    """``node_id`` (``ns=`` or ``nsu=``) as a NodeId with an index the server has; ValueError
    saying what is wrong (not a node id, a URI or an index the server does not have)."""
    try:
        node = ua.NodeId.from_string(node_id)
    except (ValueError, ua.UaStringParsingError) as exc:
        raise ValueError(f"{node_id!r} is not a node id ({exc})") from exc
    uri = getattr(node, "NamespaceUri", None)
    if uri:
        if uri not in namespaces:
            raise ValueError(
                f"{node_id!r}: the server has no namespace {uri!r}; its namespaces: {namespaces}"
            )
        index = namespaces.index(uri)
    else:
        index = node.NamespaceIndex
        if index >= len(namespaces):
            raise ValueError(
                f"{node_id!r}: the server has no namespace index {index}; its namespaces: "
                f"{dict(enumerate(namespaces))}"
            )
    return ua.NodeId(node.Identifier, ua.Int16(index), node.NodeIdType)


def _number(variant: ua.Variant | None) -> float | None:
    v = None if variant is None else variant.Value
    if isinstance(v, bool):
        return 1.0 if v else 0.0
    return float(v) if isinstance(v, int | float) else None


def _type_name(dtype: object) -> str:
    """The built-in type name of a DataType node id (``Double``), else the node id itself."""
    if not isinstance(dtype, ua.NodeId):
        return repr(dtype)
    ident = dtype.Identifier
    if dtype.NamespaceIndex == 0 and isinstance(ident, int) and 1 <= ident <= 25:
        return ua.VariantType(ident).name
    return dtype.to_string()


def _load_cert(file: tuple[bytes, str]) -> x509.Certificate:
    """A certificate file, PEM or DER (PortConnectError naming the file if neither)."""
    data, what = file
    try:
        if data.lstrip().startswith(b"-----BEGIN"):
            return x509.load_pem_x509_certificate(data)
        return x509.load_der_x509_certificate(data)
    except ValueError as exc:
        raise PortConnectError(f"{what} is not a PEM or DER certificate: {exc}") from exc


def _load_key(file: tuple[bytes, str]) -> bytes:
    """A private key file (PEM or DER) as unencrypted PKCS#8 DER, the form asyncua loads."""
    data, what = file
    pem = data.lstrip().startswith(b"-----BEGIN")
    try:
        load = serialization.load_pem_private_key if pem else serialization.load_der_private_key
        key = load(data, None)
    except (ValueError, TypeError) as exc:
        raise PortConnectError(f"{what} is not an unencrypted PEM or DER key: {exc}") from exc
    return key.private_bytes(
        serialization.Encoding.DER, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def _san_uris(cert: x509.Certificate) -> list[str]:
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName)
    except x509.ExtensionNotFound:
        return []
    return list(san.value.get_values_for_type(x509.UniformResourceIdentifier))


def _trusted(cert: x509.Certificate, trusted: list[x509.Certificate]) -> bool:
    """In the trust list (exactly), or directly issued by a trusted certificate; and in date."""
    now = datetime.now(UTC)
    if not cert.not_valid_before_utc <= now <= cert.not_valid_after_utc:
        return False
    for anchor in trusted:
        if anchor == cert:
            return True
        if _is_ca(anchor):
            with contextlib.suppress(ValueError, TypeError, InvalidSignature):
                cert.verify_directly_issued_by(anchor)
                return True
    return False


def _is_ca(cert: x509.Certificate) -> bool:
    try:
        return bool(cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca)
    except x509.ExtensionNotFound:
        return False
