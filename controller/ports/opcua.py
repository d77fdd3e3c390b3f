"""The OPC UA port: a :class:`~controller.ports.base.Port` onto a PLC's OPC UA server (asyncua).

The only module of ours that imports asyncua; every asyncua/ua/socket exception is translated here
into the :class:`~controller.errors.PortError` tree with ``raise ... from exc``.

* **Connect**: an asyncua client with request timeout ``connection.timeout_s``, security policy
  None, Basic256Sha256, Aes128_Sha256_RsaOaep or Aes256_Sha256_RsaPss with Sign/SignAndEncrypt;
  client certificate and key (:mod:`controller.ports.opcua_certs`); the server certificate must
  be in the ``trust_list`` files (or issued by a CA among them) and in date, else
  PortConnectError; username/password if configured. The server's OperationLimits are read
  (:mod:`controller.ports.opcua_limits`: a longer list of nodes goes in several requests).
  Every tag's node (``ns=<index>;...``, ``nsu=<namespace URI>;...`` looked up in the server's
  NamespaceArray, or a browse path of ``"ns:Name"`` from the Root folder) is resolved and its
  DataType read once. Malformed node ids, namespaces the server does not have, unknown nodes
  and types other than the tag's ``data_type`` are one PortError naming tags, nodes and types.
* **Roles** (the HIL server's ``hil.users``): ``engineer`` takes control and writes setpoints and
  advisory tags, ``twin`` writes publications, every role reads; a write without its role
  answers BadUserAccessDenied (REJECTED).
* **Read**: ONE Read call per cycle (Value, both timestamps; more past MaxNodesPerRead), or with
  ``subscription: true`` a data-change subscription cache (seeded by one Read at connect).
  Good/Uncertain/Bad status -> :class:`Quality` with detail = status name; booleans -> 0/1; a value
  that is not one value of the node's own type in its range is BAD naming what was sent and what is
  allowed (:func:`~controller.ports.opcua_types.read_number`); so is a Good value that is not
  finite; one outside the tag's engineering ``limits`` is UNCERTAIN. ``source_time = read_time -
  rate (now_utc - SourceTimestamp)`` (else ServerTimestamp, else the notification's arrival, else
  ``read_time``; ``rate``: a scaled clock's process seconds per wall second).
* **Write**: everything is validated first (unknown, read-only, not finite, outside the tag limits,
  not representable in the node's type); if anything is REJECTED nothing is sent and the rest is
  NOT_SENT. ONE Write call (more past MaxNodesPerWrite) with the variant type read at connect (a
  Float node: the float32 nearest the value within the tag limits), a status per tag
  (BadOutOfRange... -> REJECTED, other Bad -> FAILED), ONE Read to compare the read-back (OK or
  MISMATCH; FAILED if not Good or not its type). ``write_each``: independent writes, each validated
  on its own, in that one Write and one Read. A Write cut to the server's limit that fails part-way
  reports what was written, FAILED for the failed part (outcome unknown), NOT_SENT after it.
* **Failures**: timeouts -> PortTimeoutError (the connection is kept); refused or lost connections,
  logins or certificates -> PortConnectError naming the URL; after a loss, reconnects with capped
  exponential backoff (:mod:`controller.ports.retry`; before the delay is over, PortConnectError
  "next attempt in X s" without network I/O). A write whose read-back fails raises.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from asyncua import Client, Node, ua
from asyncua.client.ua_client import UaClientState
from asyncua.crypto.security_policies import (
    SecurityPolicy,
    SecurityPolicyAes128Sha256RsaOaep,
    SecurityPolicyAes256Sha256RsaPss,
    SecurityPolicyBasic256Sha256,
)

from controller.clock import Clock
from controller.errors import PortConnectError, PortError, PortTimeoutError, ProtocolError
from controller.ports.base import (
    Port,
    Snapshot,
    WriteReport,
    WriteResult,
    WriteStatus,
    flag_implausible,
)
from controller.ports.opcua_certs import ClientCredentials
from controller.ports.opcua_limits import LIMIT_IDS, OperationLimits, chunks, first_of
from controller.ports.opcua_types import (
    LOGIN_REFUSED,
    LOST,
    TIMEOUT,
    SubscriptionCache,
    cut_short,
    python_value,
    readback_result,
    stored,
    tag_value,
    type_name,
    type_refusal,
    unconfirmed,
    write_statuses,
)
from controller.ports.retry import RetrySchedule
from controller.ports.settings import Connection
from controller.ports.writecheck import GroupedWrite, WriteCheck, unreadable
from controller.tags import TagMap

_NO_DATA = ua.DataValue(
    StatusCode=ua.StatusCode(ua.UInt32(ua.StatusCodes.BadWaitingForInitialData))
)
_UA_ERRORS = (TimeoutError, OSError, ua.UaError)
#: asyncua asks for 1 h; a vanished controller should free the PLC's session slot sooner.
_SESSION_TIMEOUT_MS = 60_000
_MAX_READ_PLANS = 64  # lists of tags whose Read parameters are kept (a runtime reads few)
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


class OpcUaPort(Port):
    """A :class:`Port` onto one OPC UA server, for the tags of ``tags`` that have an address."""

    batches_writes = True

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
        self._check = WriteCheck.of_tags(self.tags)
        self._readable = {n: t.readable for n, t in self.tags.items()}  # the map is fixed
        self.connection, self.clock, self.url = connection, clock, connection.url
        self._password, self._base = password, base_dir or Path.cwd()
        self._client: Client | None = None
        self._points: dict[str, _Point] = {}
        self._reads: dict[tuple[str, ...], ua.ReadParameters] = {}  # per list of tags read
        self._cache: SubscriptionCache | None = None
        self.limits = OperationLimits()  # the server's, read at every connect
        self._lock = asyncio.Lock()
        self._wanted = False  # connect() was called and close() was not
        self._retry = RetrySchedule(connection.backoff, clock)

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
        wait = self._retry.wait()
        if wait > 0:
            state = "lost the connection to" if client else "no connection to"
            raise PortConnectError(f"{state} {self.url}; next attempt on a read after {wait:.2f} s")
        return await self._attempt()

    async def _attempt(self) -> Client:
        client = Client(self.url, timeout=self.connection.timeout_s)
        client.session_timeout = _SESSION_TIMEOUT_MS
        try:
            async with self._translate("connecting to", connecting=True):
                await self._configure(client)
                await client.connect()
                self.limits = await self._operation_limits(client)
                self._points, self._reads = await self._resolve(client), {}
                if self.connection.opcua.subscription:
                    self._cache = await self._subscribe(client)
        except BaseException:
            await self._disconnect(client)
            self._cache = None
            self._retry.failed()
            raise
        self._client = client
        self._retry.succeeded()
        return client

    async def _lost(self) -> None:
        await self._drop()
        self._retry.failed()

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
        if name in TIMEOUT:
            return PortTimeoutError(f"{doing} {self.url}: the server answered {name}")
        if connecting and name in LOGIN_REFUSED:
            user = self.connection.opcua.username
            who = f"user {user!r}" if user else "anonymous user"
            return PortConnectError(f"{self.url}: the server refused the {who} ({name})")
        if connecting or name in LOST or name.startswith(("BadCertificate", "BadSecurity")):
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
        creds = ClientCredentials.load(sec, self._base)
        if creds.application_uri:
            client.application_uri = creds.application_uri
        mode = getattr(ua.MessageSecurityMode, sec.mode)
        # No server_certificate: asyncua takes it from GetEndpoints (unsecured); checked below.
        await client.set_security(_POLICIES[sec.policy], creds.certificate, creds.key, mode=mode)
        creds.check_server(client.security_policy.peer_certificate, self.url)

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
        found: list[list[Node | None]] = []
        for part in chunks([list(p) for p in paths.values()], self.limits.translate):
            root = client.nodes.root
            found += await root.get_children_by_path(part, raise_on_partial_error=False)
        for name, hit in zip(paths, found, strict=True):
            if hit and hit[0] is not None:
                nodes[name] = hit[0].nodeid
            else:
                problems.append(f"tag {name!r}: browse path {self._where(name)} not found")
        dtype, results = ua.AttributeIds.DataType, []
        read = [ua.ReadValueId(NodeId=n, AttributeId=dtype) for n in nodes.values()]
        for ids in chunks(read, self.limits.read):
            results += await client.uaclient.read(ua.ReadParameters(NodesToRead=list(ids)))
        points = {}
        for (name, node), dv in zip(nodes.items(), results, strict=True):
            where = f"tag {name!r} (node {self._where(name)})"
            status = dv.StatusCode or ua.StatusCode()
            actual, expected = type_name(dv.Value.Value if dv.Value else None), self._type(name)
            if not status.is_good():
                problems.append(f"{where}: {status.name}")
            elif actual != expected:
                problems.append(f"{where}: the tag expects {expected}, the node is {actual}")
            else:
                points[name] = _Point(node, ua.VariantType[actual])
        if problems:
            raise PortError(f"address check on {self.url} failed:\n  - " + "\n  - ".join(problems))
        return points

    async def _subscribe(self, client: Client) -> SubscriptionCache:
        """Seed the cache with one Read, then keep it fresh with a data-change subscription."""
        cache, names = SubscriptionCache(), [n for n in self._points if self.tags[n].readable]
        if not names:
            return cache
        arrived = datetime.now(UTC)
        for name, dv in zip(names, await self._read_values(client, names), strict=True):
            cache.values[self._points[name].node] = (dv, arrived)
        interval = self.connection.opcua.publishing_interval_ms
        sub = await client.create_subscription(interval, cache)
        items, handles = [client.get_node(self._points[n].node) for n in names], []
        for part in chunks(items, self.limits.monitored_items):
            handles += await sub.subscribe_data_change(part, sampling_interval=ua.Double(interval))
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
        problems = unreadable(self._readable, names)
        if problems:
            raise PortError(f"cannot read from {self.url}: {'; '.join(problems)}")
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
        now, utc, rate = self.clock.now(), datetime.now(UTC), getattr(self.clock, "rate", 1.0)
        values = {
            n: flag_implausible(tag_value(dv, self._type(n), now, utc, a, rate), self.tags[n])
            for n, dv, a in zip(names, dvs, arrived, strict=True)
        }
        return Snapshot(values, now)

    async def _operation_limits(self, client: Client) -> OperationLimits:
        """The server's OperationLimits (:mod:`~controller.ports.opcua_limits`): one Read, one
        per limit if the server refuses the four at once; a limit it does not tell is none."""
        value, read, params = ua.AttributeIds.Value, client.uaclient.read, ua.ReadParameters
        ids = [ua.ReadValueId(NodeId=ua.NodeId(ua.Int32(i)), AttributeId=value) for i in LIMIT_IDS]
        try:
            dvs = list(await read(params(NodesToRead=ids)))
        except ua.UaStatusCodeError:
            dvs = [await first_of(read(params(NodesToRead=[i])), ua.UaStatusCodeError) for i in ids]
        return OperationLimits.read_from(dvs)

    async def _read_values(self, client: Client, names: list[str]) -> list[ua.DataValue]:
        """ONE Read (one per ``limits.read`` nodes) of the Value of ``names``, both stamps."""
        results: list[ua.DataValue] = []
        for part in chunks(names, self.limits.read):
            results += await client.uaclient.read(self._read_params(list(part)))
        if len(results) != len(names):
            raise ProtocolError(f"{self.url}: asked for {len(names)} values, got {len(results)}")
        return results

    def _read_params(self, names: list[str]) -> ua.ReadParameters:
        """The Read's parameters for ``names``, built once per list of names and connection."""
        if (params := self._reads.get(key := tuple(names))) is None:
            if len(self._reads) >= _MAX_READ_PLANS:
                self._reads.clear()
            value, both = ua.AttributeIds.Value, ua.TimestampsToReturn.Both
            nodes = [ua.ReadValueId(NodeId=self._points[n].node, AttributeId=value) for n in names]
            params = self._reads[key] = ua.ReadParameters(
                TimestampsToReturn=both, NodesToRead=nodes
            )
        return params

    # ------------------------------------------------------------------ write
    async def write(self, values: Mapping[str, float]) -> WriteReport:
        (outcome,) = await self._write_groups([values])
        if isinstance(outcome, PortError):
            raise outcome
        return outcome

    async def write_each(
        self, groups: Sequence[Mapping[str, float]]
    ) -> list[WriteReport | PortError]:
        """Every group that passes its checks in one Write and one Read (:meth:`_send`)."""
        return await self._write_groups(groups)

    async def _write_groups(
        self, groups: Sequence[Mapping[str, float]]
    ) -> list[WriteReport | PortError]:
        plan = GroupedWrite(groups, self._refusals, self.clock.now())
        if not plan.values:
            return plan.reports({}, 0.0)
        try:
            return plan.reports(*await self._send(plan.values))
        except PortError as exc:
            return plan.failed(exc)

    def _refusals(self, requested: Mapping[str, float]) -> dict[str, str]:
        refused = self._check.refusals(requested)
        fit = {t: v for t, v in requested.items() if t not in refused}
        why = {t: type_refusal(self._type(t), t, v, self.tags[t].limits) for t, v in fit.items()}
        return refused | {t: w for t, w in why.items() if w}

    async def _send(self, requested: dict[str, float]) -> tuple[dict[str, WriteResult], float]:
        """The Write of ``requested`` (checked; one call per ``limits.write`` nodes), ONE Read
        of the read-backs. A part that fails after others were written raises nothing: the
        report says what was written (read back if it can be), FAILED (outcome unknown) for
        the failed part, NOT_SENT after it."""
        async with self._lock:
            client = await self._ensure()
            names = list(requested)
            nodes = [self._write_value(n, requested[n]) for n in names]
            statuses, failure = await self._write_parts(client, nodes)
            write_time, done = self.clock.now(), len(statuses)
            results = write_statuses(names, requested, statuses, self._where)
            results |= cut_short(names[done:], requested, failure, self.limits.write)
            back = [n for n in names if n not in results and self.tags[n].readable]
            try:
                async with self._translate("reading back from"):
                    dvs = await self._read_values(client, back) if back else []
            except PortError as exc:
                if failure is None:
                    raise
                dvs, back, results = [], [], results | unconfirmed(back, requested, exc)
        for name, dv in zip(back, dvs, strict=True):
            results[name] = self._compare(name, requested[name], dv)
        unread = "write-only tag: no read-back"
        for name in (n for n in names if n not in results):
            results[name] = WriteResult(name, requested[name], WriteStatus.OK, None, unread)
        return {n: results[n] for n in names}, write_time

    async def _write_parts(
        self, client: Client, nodes: list[ua.WriteValue]
    ) -> tuple[list[ua.StatusCode], PortError | None]:
        """One Write per ``limits.write`` nodes, in order: the statuses of the parts written
        and the error of the part that failed (raised when it is the first)."""
        statuses: list[ua.StatusCode] = []
        for part in chunks(nodes, self.limits.write):
            try:
                async with self._translate("writing to"):
                    got = await client.uaclient.write(ua.WriteParameters(NodesToWrite=list(part)))
                if len(got) != len(part):
                    raise ProtocolError(f"{self.url}: wrote {len(part)} values, got {len(got)}")
            except PortError as exc:
                if not statuses:
                    raise
                return statuses, exc
            statuses += got
        return statuses, None

    def _write_value(self, name: str, value: float) -> ua.WriteValue:
        vtype = self._points[name].vtype
        value = stored(self._type(name), value, self.tags[name].limits)  # inside the limits
        dv = ua.DataValue(Value=ua.Variant(python_value(vtype.name, value), vtype))
        return ua.WriteValue(
            NodeId=self._points[name].node, AttributeId=ua.AttributeIds.Value, Value=dv
        )

    def _compare(self, name: str, requested: float, dv: ua.DataValue) -> WriteResult:
        """OK, MISMATCH, or FAILED (written, outcome not confirmed): :func:`readback_result`."""
        limits, where = self.tags[name].limits, self._where(name)
        return readback_result(name, requested, self._type(name), limits, where, dv)

    # ------------------------------------------------------------------ helpers
    def _type(self, name: str) -> str:
        return self._specs[name].data_type

    def _where(self, name: str) -> str:
        spec = self._specs[name]
        return spec.node_id or "/".join(spec.browse_path or ())


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
