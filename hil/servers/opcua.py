"""The HIL OPC UA server: a real asyncua server built from a tag map (127.0.0.1 by default).

``OpcUaPlcServer(tags, port)`` serves ``opc.tcp://127.0.0.1:<port>/pharmatwin/``. It registers
its namespace first (index 2) and creates one variable per tag with the tag's node id
(``ns=2;s=bioreactor.<tag>``), browse name ``2:<tag>``, under ``Objects/2:<map name>``, with
the tag's variant type; only writable tags are writable by clients.

Server-side hooks for fault injection:

* :meth:`set_value` with a StatusCode (Bad/Uncertain) and a SourceTimestamp;
* :meth:`set_range`: writes outside a range answer ``BadOutOfRange`` (a range-checking
  attribute service replaces asyncua's; its value setters cannot return a status);
* :meth:`set_data_type`: change a node's DataType (and value) to another built-in type;
* ``read_delay``: every client Read of our namespace sleeps that long (a slow PLC);
* ``read_requests`` / ``write_requests``: client Read/Write service calls touching our nodes;
* users: only the configured username/password pairs log in (asyncua's default user manager
  accepts anyone); anonymous logins can be forbidden;
* security: policy None and/or Basic256Sha256 SignAndEncrypt with a server certificate;
* :meth:`stop` / :meth:`start`: close the listener and every connection, then listen again on
  the same port with the same address space.

asyncua builds its standard address space in about 1.4 s per server. :func:`address_space_shelf`
caches it in a shelf file once, which cuts a server's start to about 0.1 s.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from types import TracebackType
from typing import Any, cast

from asyncua import Server, ua
from asyncua.common.callback import CallbackType, ServerItemCallback
from asyncua.crypto.permission_rules import User, UserRole
from asyncua.server.address_space import AddressSpace, AttributeService
from asyncua.server.internal_server import InternalServer
from asyncua.server.user_managers import UserManager

from controller.tags import TagMap

NAMESPACE = "urn:pharmatwin:test-plc"
_ADMIN = User(role=UserRole.Admin)


@dataclass(frozen=True)
class ServerSecurity:
    """The server's certificate (DER or PEM by suffix) and key, and the policies it offers."""

    certificate: Path
    private_key: Path
    application_uri: str
    offer_none: bool = False  # also offer the unsecured endpoint


async def address_space_shelf(folder: Path) -> Path:
    """Build asyncua's standard address space once into a shelf in ``folder``; return its path.

    asyncua 2.1 reuses a shelf only if ``path`` (or ``path.db``) is a file, but the dbm.dumb
    backend (no gdbm/ndbm in this Python) writes ``path.dat`` and ``path.dir``: asyncua would
    rebuild it on every start. An empty marker file at ``path`` makes it load the shelf.
    """
    path = folder / "standard_address_space"
    if not path.is_file() and not path.with_suffix(".db").is_file():
        server = Server()
        await server.iserver.load_standard_address_space(path)
        if not path.is_file() and not path.with_suffix(".db").is_file():
            path.touch()
    return path


class _Users(UserManager):
    """Only the configured username/password pairs; anonymous only if allowed."""

    def __init__(self, users: Mapping[str, str], allow_anonymous: bool) -> None:
        self.users, self.allow_anonymous = dict(users), allow_anonymous

    def get_user(
        self,
        iserver: InternalServer,
        username: str | None = None,
        password: str | None = None,
        certificate: Any = None,
    ) -> User | None:
        if username is None:
            return User(role=UserRole.User) if self.allow_anonymous else None
        if username in self.users and self.users[username] == password:
            return User(role=UserRole.User, name=username)
        return None


class _RangeCheckedAttributes(AttributeService):
    """asyncua's attribute service, answering BadOutOfRange to Value writes out of range."""

    def __init__(self, aspace: AddressSpace, ranges: dict[ua.NodeId, tuple[float, float]]):
        super().__init__(aspace)
        self.ranges = ranges

    async def write(self, params: ua.WriteParameters, user: User = _ADMIN) -> list[ua.StatusCode]:
        results: list[ua.StatusCode] = []
        for item in params.NodesToWrite:
            limits = self.ranges.get(item.NodeId)
            value = item.Value.Value.Value if item.Value and item.Value.Value else None
            if (
                limits is not None
                and item.AttributeId == ua.AttributeIds.Value
                and isinstance(value, int | float)
                and not limits[0] <= value <= limits[1]
            ):
                results.append(ua.StatusCode(ua.UInt32(ua.StatusCodes.BadOutOfRange)))
                continue
            single = ua.WriteParameters(NodesToWrite=[item])
            results.extend(await super().write(single, user))
        return results


class OpcUaPlcServer:
    """A PLC stand-in: the tags of a :class:`TagMap` as OPC UA variables on 127.0.0.1."""

    def __init__(
        self,
        tags: TagMap,
        port: int,
        *,
        initial: Mapping[str, float] | None = None,
        users: Mapping[str, str] | None = None,
        allow_anonymous: bool = True,
        security: ServerSecurity | None = None,
        shelf: Path | None = None,
    ) -> None:
        self.tags, self.port, self.url = tags, port, f"opc.tcp://127.0.0.1:{port}/pharmatwin/"
        self.initial = dict(initial or {})
        self.security, self.shelf = security, shelf
        self.server = Server(user_manager=_Users(users or {}, allow_anonymous))
        self.allow_anonymous = allow_anonymous
        self.ranges: dict[ua.NodeId, tuple[float, float]] = {}
        self.types: dict[str, ua.VariantType] = {}
        self.read_delay = 0.0
        self.read_requests = 0
        self.write_requests = 0
        self._built = False

    async def __aenter__(self) -> OpcUaPlcServer:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    def node_id(self, tag: str) -> ua.NodeId:
        spec = self.tags.tags[tag].opcua
        if spec is None or spec.node_id is None:
            raise KeyError(f"tag {tag!r} has no OPC UA node id")
        return ua.NodeId.from_string(spec.node_id)

    # ------------------------------------------------------------------ lifecycle
    async def start(self) -> None:
        """Build and start the server; after :meth:`stop`, listen again on the same port."""
        if self._built:
            assert self.server.bserver is not None
            await self.server.bserver.start()
            return
        await self._build()
        await self.server.start()
        self._built = True

    async def stop(self) -> None:
        """Close the listener and every client connection; the address space stays."""
        if self.server.bserver is not None:
            await self.server.bserver.stop()

    async def close(self) -> None:
        if self._built:
            await self.server.stop()
            self._built = False

    async def _build(self) -> None:
        server = self.server
        await server.init(self.shelf)
        server.disable_clock()  # its 1 s clock task would delay stop() by up to a second
        server.set_endpoint(self.url)
        server.set_server_name("PharmaTwin test PLC")
        policies = [ua.SecurityPolicyType.NoSecurity]
        if self.security is not None:
            await server.load_certificate(str(self.security.certificate))
            await server.load_private_key(str(self.security.private_key))
            await server.set_application_uri(self.security.application_uri)
            policies = [ua.SecurityPolicyType.Basic256Sha256_SignAndEncrypt]
            if self.security.offer_none:
                policies.append(ua.SecurityPolicyType.NoSecurity)
        server.set_security_policy(policies)
        tokens: list[type] = [ua.UserNameIdentityToken]
        if self.allow_anonymous:
            tokens.append(ua.AnonymousIdentityToken)
        server.set_identity_tokens(tokens)
        idx = await server.register_namespace(NAMESPACE)
        assert idx == 2, f"namespace index {idx}, expected 2"
        folder = await server.nodes.objects.add_object(
            ua.NodeId.from_string(f"ns={idx};s={self.tags.name}"), f"{idx}:{self.tags.name}"
        )
        for name, tag in self.tags.tags.items():
            if tag.opcua is None or tag.opcua.node_id is None:
                continue
            vtype = self.types[name] = ua.VariantType[tag.opcua.data_type]
            value = _python(self.initial.get(name, 0.0), vtype)
            node = await folder.add_variable(
                self.node_id(name), ua.QualifiedName(name, idx), value, varianttype=vtype
            )
            if tag.writable:
                await node.set_writable()
        iserver = server.iserver
        iserver.attribute_service = _RangeCheckedAttributes(iserver.aspace, self.ranges)
        server.subscribe_server_callback(CallbackType.PreRead, self._pre_read)
        server.subscribe_server_callback(CallbackType.PreWrite, self._pre_write)

    # ------------------------------------------------------------------ hooks
    async def _pre_read(self, event: ServerItemCallback, _: Any) -> None:
        if event.is_external and _ours(event.request_params.NodesToRead):
            self.read_requests += 1
            if self.read_delay > 0:
                await asyncio.sleep(self.read_delay)

    async def _pre_write(self, event: ServerItemCallback, _: Any) -> None:
        if event.is_external and _ours(event.request_params.NodesToWrite):
            self.write_requests += 1

    async def set_value(
        self,
        tag: str,
        value: float | None,
        *,
        status: str = "Good",
        source_time: datetime | None = None,
    ) -> None:
        """Set a tag's value server-side with a status (e.g. ``BadSensorFailure``) and stamp."""
        node, vtype = self.node_id(tag), self.types[tag]
        variant = ua.Variant(None if value is None else _python(value, vtype), vtype)
        code = ua.StatusCode(ua.UInt32(getattr(ua.StatusCodes, status)))
        stamp = cast(ua.DateTime, source_time or datetime.now(UTC))
        dv = ua.DataValue(variant, code, SourceTimestamp=stamp, ServerTimestamp=stamp)
        await self.server.write_attribute_value(node, dv)

    def read(self, tag: str) -> ua.DataValue:
        """The tag's current DataValue, read server-side."""
        return self.server.read_attribute_value(self.node_id(tag))

    def value(self, tag: str) -> Any:
        dv = self.read(tag)
        return dv.Value.Value if dv.Value is not None else None

    def set_range(self, tag: str, lower: float, upper: float) -> None:
        """Client writes of ``tag`` outside [lower, upper] answer BadOutOfRange."""
        self.ranges[self.node_id(tag)] = (lower, upper)

    async def set_data_type(self, tag: str, type_name: str) -> None:
        """Make the node of ``tag`` a ``type_name`` variable (DataType attribute and value)."""
        node = self.server.get_node(self.node_id(tag))
        vtype = self.types[tag] = ua.VariantType[type_name]
        dtype = ua.NodeId(ua.Int32(vtype.value))
        await node.write_attribute(
            ua.AttributeIds.DataType, ua.DataValue(ua.Variant(dtype, ua.VariantType.NodeId))
        )
        # asyncua type-checks a write against the current value, not the DataType: null it
        # first (a Bad status does that), then the new type is taken from DataType.
        no_data = ua.StatusCode(ua.UInt32(ua.StatusCodes.BadWaitingForInitialData))
        await self.server.write_attribute_value(node.nodeid, ua.DataValue(StatusCode=no_data))
        await self.server.write_attribute_value(
            node.nodeid, ua.DataValue(ua.Variant(_python(0.0, vtype), vtype))
        )
        variant = self.read(tag).Value
        assert variant is not None and variant.VariantType == vtype, "retyped value refused"


def _ours(items: list[Any]) -> bool:
    return any(item.NodeId.NamespaceIndex == 2 for item in items)


def _python(value: float, vtype: ua.VariantType) -> bool | int | float:
    if vtype == ua.VariantType.Boolean:
        return bool(value)
    if vtype in (ua.VariantType.Float, ua.VariantType.Double):
        return float(value)
    return int(value)
