"""The HIL OPC UA server: a real asyncua server built from a tag map (127.0.0.1 by default).

``OpcUaPlcServer(tags, port)`` serves ``opc.tcp://127.0.0.1:<port>/pharmatwin/``; another
bind address must be asked for with ``allow_remote=True``. It registers its namespace
:data:`~hil.servers.opcua_nodes.NAMESPACE` first (index 2) and lays out the address space as
issue 4 asks::

    Objects/2:<site name>/2:<unit name>/2:<tag>      (folders; the unit is the tag map's name)

with the nodes, units and ranges of :mod:`hil.servers.opcua_nodes`. Client writes pass the
checks of :mod:`hil.servers.opcua_writes` (read-only, roles of :mod:`hil.servers.opcua_roles`,
EURange, :meth:`set_range`, the PLC's ``write_hook``); every refusal is logged (logger
``pharmatwin.hil.opcua``, the one ``serve`` writes to its log file) with the user and the
reason. A user's Read of a node's ``UserAccessLevel`` shows no CurrentWrite where they may not
write. Security is enforced on every channel, session and request
(:mod:`hil.servers.opcua_guard`); with a :class:`~hil.servers.opcua_security.ServerSecurity`:
the secure policies with SignAndEncrypt (None only if ``offer_none``), the CA chain sent with
the server certificate, and client certificates checked against the CA certificates and their
revocation lists.

The PLC side (the virtual PLC) drives it through the interface both HIL servers share:
:meth:`publish` (tags named ``bad`` get ``BadSensorFailure``), :meth:`value`, ``write_hook``.
Communication faults: ``latency`` (Read and Write answers wait that long, and, while it is
> 0, a publication reaches the address space, and so the subscriptions, that long after
:meth:`publish`, in order: :class:`~hil.servers.base.DelayLine` on the server's ``clock``, wall
time by default), ``bad_tags`` (``BadCommunicationError``), :meth:`drop_connections`,
:meth:`stop` / :meth:`start`. Other hooks: :meth:`set_value`,
:meth:`set_data_type`, ``read_requests`` / ``write_requests``. The standard address space
comes from the per-user cache (:func:`~hil.servers.opcua_cache.address_space_shelf`).
"""

from __future__ import annotations

import asyncio
import logging
import math
from collections.abc import Collection, Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

from asyncua import Node, ua
from asyncua.common.callback import CallbackType, ServerItemCallback
from asyncua.crypto.permission_rules import User, UserRole

from controller.clock import Clock, RealClock
from controller.errors import ConfigError, Problem
from controller.ports.opcua_limits import OperationLimits
from controller.tags import TagMap
from hil.net import LOOPBACK, check_bind_address, free_port
from hil.servers.base import DelayLine, PlcServer, WriteHook
from hil.servers.certs import ensure_server_certificate, ephemeral_certificate, load_certificate
from hil.servers.opcua_cache import address_space_shelf
from hil.servers.opcua_guard import GuardedServer, policy_name
from hil.servers.opcua_limits import advertise
from hil.servers.opcua_nodes import (
    COMMUNICATION,
    GOOD,
    NAMESPACE,
    SENSOR_FAILURE,
    add_properties,
    fitting,
    node_id_of,
    ours,
    python_value,
    status_code,
)
from hil.servers.opcua_roles import VIEWER, PasswordUsers, check_roles, required_role
from hil.servers.opcua_security import (
    SECURE_POLICIES,
    ServerSecurity,
    client_validator,
    site_ca,
    site_users,
)
from hil.servers.opcua_writes import PlcAttributes
from hil.site import ServerRole, hil_section

if TYPE_CHECKING:
    from controller.runtime.site import Site

log = logging.getLogger("pharmatwin.hil.opcua")  # the OPC UA server's log, which serve keeps

#: OPC UA port used by :func:`opcua_server_for_site` when the site itself speaks Modbus.
DEFAULT_PORT = 4840


class OpcUaPlcServer(PlcServer):
    """A PLC stand-in: the tags of a :class:`TagMap` as OPC UA variables on ``host``."""

    def __init__(
        self,
        tags: TagMap,
        port: int | None = None,
        *,
        host: str = LOOPBACK,
        allow_remote: bool = False,
        site_name: str | None = None,
        endpoint_path: str = "/pharmatwin/",
        initial: Mapping[str, float] | None = None,
        users: Mapping[str, str] | None = None,
        allow_anonymous: bool = True,
        security: ServerSecurity | None = None,
        shelf: Path | None = None,
        publishers: Collection[str] | None = None,
        roles: Mapping[str, Collection[ServerRole]] | None = None,
        anonymous_roles: Collection[ServerRole] = VIEWER,
        clock: Clock | None = None,
        limits: OperationLimits | None = None,
    ) -> None:
        """``limits``: nodes per request, advertised and enforced (:mod:`.opcua_limits`);
        ``shelf``: a file from :func:`address_space_shelf`, or a folder to keep the cache
        in (made if missing; default: :func:`default_cache_dir`); ``roles``: user -> roles
        (None: no role checks); ``publishers``: without ``roles``, the users who may write
        publications (None: all); ``clock``: the one ``latency`` is counted on, in seconds
        (default: wall time)."""
        check_bind_address(host, allow_remote)
        check_roles(roles)
        self.tags, self.host = tags, host
        self.port = port if port is not None else free_port()
        self.site_name = site_name or tags.name
        where = f"[{host}]" if ":" in host else host
        self.url = f"opc.tcp://{where}:{self.port}{endpoint_path}"
        self.initial = dict(initial or {})
        self.security, self.shelf = security, shelf
        self.limits = limits or OperationLimits()
        self.users = dict(users or {})
        self.server = GuardedServer(self, PasswordUsers(self.users, allow_anonymous))
        self.allow_anonymous = allow_anonymous
        self.write_hook: WriteHook | None = None
        self.latency = 0.0
        self.delay = DelayLine(clock if clock is not None else RealClock())
        self.bad_tags = {}
        self.ranges: dict[ua.NodeId, tuple[float, float]] = {}
        self.types: dict[str, ua.VariantType] = {}
        self.read_requests = 0
        self.write_requests = 0
        #: (policy URI, mode) pairs the server accepts sessions over, set at start
        self.offered: frozenset[tuple[str, ua.MessageSecurityMode]] = frozenset()
        self._node_ids = {n: node_id_of(n, t) for n, t in tags.tags.items()}
        self.tag_of = {  # node id -> tag
            nid: name for name, nid in self._node_ids.items() if nid is not None
        }
        self.roles = None if roles is None else {u: frozenset(r) for u, r in roles.items()}
        self.anonymous_roles = frozenset(anonymous_roles)
        if publishers is None and self.roles is not None:
            publishers = [u for u, r in self.roles.items() if "twin" in r]
        self.publishers = None if publishers is None else frozenset(publishers)
        self._publications = frozenset(
            nid for nid, name in self.tag_of.items() if tags.tags[name].publishes is not None
        )
        self._built = False

    def node_id(self, tag: str) -> ua.NodeId:
        node = self._node_ids.get(tag)
        if node is None:
            raise KeyError(f"tag {tag!r} has no OPC UA node id")
        return node

    # ------------------------------------------------------------------ lifecycle
    async def start(self) -> None:
        """Build and start the server; after :meth:`stop`, listen again on the same port."""
        if self._built:
            if self.server.bserver is None:
                raise RuntimeError(f"OPC UA server {self.url}: built, but it has no listener")
            await self.server.bserver.start()
            return
        await self._build()
        await self.server.start()
        self._built = True
        log.info("OPC UA server listening on %s (%s)", self.url, self._offer_text())

    async def stop(self) -> None:
        """Close the listener and every client connection; the address space stays."""
        if self.server.bserver is not None:
            await self.server.bserver.stop()

    async def close(self) -> None:
        await self.delay.close()
        if self._built:
            await self.server.stop()
            self._built = False

    async def drop_connections(self) -> None:
        """Close every client connection now; the server keeps listening."""
        if self.server.bserver is not None:
            for client in list(self.server.bserver.clients):
                if client.transport is not None:
                    client.transport.close()
        await asyncio.sleep(0)

    def _offer_text(self) -> str:
        return ", ".join(sorted(policy_name(*p) for p in self.offered))

    async def _build(self) -> None:
        server = self.server
        shelf = self.shelf
        if shelf is None or not shelf.is_file():  # a folder (to be) holding the cache
            shelf = await address_space_shelf(shelf)
        await server.init(shelf)
        server.disable_clock()  # its 1 s clock task would delay stop() by up to a second
        server.set_endpoint(self.url)
        server.set_server_name("PharmaTwin HIL PLC")
        await advertise(server, self.limits)
        await self._secure()
        idx = await server.register_namespace(NAMESPACE)
        if idx != 2:
            raise RuntimeError(f"namespace index {idx}, expected 2")
        variables = await self._variables(idx)
        for name, node in variables.items():
            await add_properties(node, self.tags.tags[name])
        iserver = server.iserver
        iserver.attribute_service = PlcAttributes(iserver.aspace, self)
        server.subscribe_server_callback(CallbackType.PreRead, self._pre_read)
        server.subscribe_server_callback(CallbackType.PostRead, self._post_read)
        server.subscribe_server_callback(CallbackType.PreWrite, self._pre_write)

    async def _secure(self) -> None:
        server, sec = self.server, self.security
        policies = [ua.SecurityPolicyType.NoSecurity]
        if sec is not None:
            unknown = sorted(set(sec.policies) - set(SECURE_POLICIES))
            if unknown or not sec.policies:
                raise ValueError(f"policies {list(sec.policies)}; allowed: {list(SECURE_POLICIES)}")
            await server.load_certificate(str(sec.certificate))
            await server.load_private_key(str(sec.private_key))
            await server.set_application_uri(sec.application_uri)
            policies = [SECURE_POLICIES[p] for p in sec.policies]
            if sec.offer_none:
                policies.append(ua.SecurityPolicyType.NoSecurity)
            if sec.client_ca:
                validator = await client_validator(sec.client_ca, sec.crl)
                server.set_certificate_validator(validator)
            server.chain = [await asyncio.to_thread(load_certificate, p) for p in sec.chain]
        elif self.users:  # an unsecured bench with passwords: a key to encrypt them with
            cert, key = await asyncio.to_thread(
                ephemeral_certificate, server.get_application_uri(), self.host
            )
            server.iserver.certificate, server.iserver.private_key = cert, key
        server.set_security_policy(policies)
        tokens: list[type] = [ua.UserNameIdentityToken]
        if self.allow_anonymous:
            tokens.append(ua.AnonymousIdentityToken)
        server.set_identity_tokens(tokens)

    async def _variables(self, idx: int) -> dict[str, Node]:
        """Objects/<site>/<unit>/<tag>: one variable per tag with an OPC UA node id."""
        objects, site, unit = self.server.nodes.objects, self.site_name, self.tags.name
        ns = ua.Int16(idx)
        site_folder = await objects.add_folder(
            ua.NodeId(ua.String(site), ns), ua.QualifiedName(site, idx)
        )
        folder = await site_folder.add_folder(
            ua.NodeId(ua.String(f"{site}/{unit}"), ns), ua.QualifiedName(unit, idx)
        )
        variables = {}
        for name, tag in self.tags.tags.items():
            node_id = self._node_ids[name]
            if node_id is None or tag.opcua is None:
                continue
            vtype = self.types[name] = ua.VariantType[tag.opcua.data_type]
            value = python_value(self.initial.get(name, 0.0), vtype)
            node = await folder.add_variable(
                node_id, ua.QualifiedName(name, idx), value, varianttype=vtype
            )
            if tag.writable:
                await node.set_writable()
            variables[name] = node
        return variables

    # ------------------------------------------------------------------ the PLC side
    async def publish(
        self,
        values: Mapping[str, float],
        *,
        bad: Collection[str] = (),
        source_time: datetime | None = None,
    ) -> None:
        """Set the PLC's values in one go, stamped ``source_time`` (default: now, UTC).

        Tags in ``bad`` get BadSensorFailure, tags in ``bad_tags`` BadCommunicationError (the
        value is then null). Tags of the map without a node are skipped; unknown tags raise
        KeyError and values the node's type cannot hold ValueError, before anything is set.
        While ``latency`` > 0 the values are set ``latency`` s later (stamps as of now).
        """
        now = cast(ua.DateTime, datetime.now(UTC))
        stamp = cast(ua.DateTime, source_time or now)
        updates = []
        for tag, v in values.items():
            if tag not in self.tags.tags:
                raise KeyError(f"unknown tag {tag!r}; the map {self.tags.name!r} has no such tag")
            if tag not in self.types:
                continue
            if tag in self.bad_tags:
                dv = ua.DataValue(StatusCode=COMMUNICATION, ServerTimestamp=now)
            elif tag in bad:
                dv = ua.DataValue(
                    StatusCode=SENSOR_FAILURE, SourceTimestamp=stamp, ServerTimestamp=now
                )
            else:
                variant = ua.Variant(fitting(tag, v, self.types[tag]), self.types[tag])
                dv = ua.DataValue(variant, GOOD, SourceTimestamp=stamp, ServerTimestamp=now)
            updates.append((self.node_id(tag), dv))

        async def deliver() -> None:
            for node_id, dv in updates:
                await self.server.write_attribute_value(node_id, dv)

        await self.delay.put(self.latency, deliver)

    def read(self, tag: str) -> ua.DataValue:
        """The tag's current DataValue, read server-side."""
        return self.server.read_attribute_value(self.node_id(tag))

    def value(self, tag: str) -> float:
        """The tag's engineering value as stored now (booleans 0/1; NaN while it is Bad)."""
        dv = self.read(tag)
        if dv.Value is None or dv.Value.Value is None:
            return math.nan
        return float(dv.Value.Value)

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
        variant = ua.Variant(None if value is None else python_value(value, vtype), vtype)
        stamp = cast(ua.DateTime, source_time or datetime.now(UTC))
        dv = ua.DataValue(
            variant, status_code(status), SourceTimestamp=stamp, ServerTimestamp=stamp
        )
        await self.server.write_attribute_value(node, dv)

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
        no_data = status_code("BadWaitingForInitialData")
        await self.server.write_attribute_value(node.nodeid, ua.DataValue(StatusCode=no_data))
        await self.server.write_attribute_value(
            node.nodeid, ua.DataValue(ua.Variant(python_value(0.0, vtype), vtype))
        )
        variant = self.read(tag).Value
        if variant is None or variant.VariantType != vtype:
            raise RuntimeError(f"tag {tag!r}: the server refused the retyped value")

    # ------------------------------------------------------------------ roles
    def user_roles(self, user: User) -> frozenset[str] | None:
        """The roles of ``user`` (None: unrestricted: no role checks, or the server itself)."""
        if self.roles is None or user.role == UserRole.Admin:
            return None
        if user.name is None:
            return self.anonymous_roles
        return self.roles.get(user.name, frozenset())

    def may_write(self, user: User, tag: str) -> bool:
        """Whether ``user`` may write ``tag`` (a writable tag; see :func:`required_role`)."""
        needed = required_role(tag, self.tags.tags[tag])
        if needed is None:
            return False
        roles = self.user_roles(user)
        if roles is not None:
            return needed in roles
        if needed == "twin" and self.publishers is not None and user.role != UserRole.Admin:
            return user.name is not None and user.name in self.publishers
        return True

    def may_publish(self, user: User) -> bool:
        """Whether ``user`` may write publication tags (the server itself always may)."""
        names = [n for n, t in self.tags.tags.items() if t.publishes is not None]
        return not names or self.may_write(user, names[0])

    # ------------------------------------------------------------------ request hooks
    def failing(self, node_id: ua.NodeId) -> bool:
        tag = self.tag_of.get(node_id)
        return tag is not None and tag in self.bad_tags

    async def _pre_read(self, event: ServerItemCallback, _: Any) -> None:
        if event.is_external:
            if ours(event.request_params.NodesToRead):
                self.read_requests += 1
            if self.latency > 0:
                await self.delay.clock.sleep(self.latency)

    async def _post_read(self, event: ServerItemCallback, _: Any) -> None:
        """UserAccessLevel as the reading user has it: no CurrentWrite where they may not."""
        user: User = event.user
        results: list[ua.DataValue] = event.response_params
        for i, item in enumerate(event.request_params.NodesToRead):
            if item.AttributeId != ua.AttributeIds.UserAccessLevel:
                continue
            tag, dv = self.tag_of.get(item.NodeId), results[i]
            if tag is None or dv.Value is None or self.may_write(user, tag):
                continue
            level = ua.ua_binary.unset_bit(dv.Value.Value, ua.AccessLevel.CurrentWrite)
            results[i] = ua.DataValue(ua.Variant(level, ua.VariantType.Byte))

    async def _pre_write(self, event: ServerItemCallback, _: Any) -> None:
        if event.is_external:
            if ours(event.request_params.NodesToWrite):
                self.write_requests += 1
            if self.latency > 0:
                await self.delay.clock.sleep(self.latency)


async def opcua_server_for_site(
    site: Site,
    port: int | None = None,
    *,
    host: str | None = None,
    allow_remote: bool = False,
    state_dir: Path | None = None,
    initial: Mapping[str, float] | None = None,
    shelf: Path | None = None,
) -> OpcUaPlcServer:
    """The secured OPC UA server standing in for ``site``'s PLC, from its ``hil`` section.

    The server certificate is made on first start in ``<state_dir>/<site name>/``
    (``state_dir`` defaults to ``hil.state_dir``; application URI
    ``urn:pharmatwin:hil:<site name>``) and reused after. If the site names a CA
    (``hil.ca_certificate`` / ``hil.ca_private_key``), the certificate is signed by it (one no
    longer signed by it is made anew) and sent with it, the only endpoints are the
    :data:`SECURE_POLICIES` with SignAndEncrypt, and a client certificate not issued by that
    CA, or revoked by its CRL (the CA file with the suffix ``.crl``, if there is one), is
    refused (BadCertificateUntrusted / BadCertificateRevoked). Without a CA: self-signed,
    endpoints None and the secure ones, any client certificate. The users of ``hil.users``
    with the passwords from their environment variables (ConfigError naming any that is not
    set, or an unusable CA or CRL) and their ``roles``; anonymous (role viewer) only if
    ``hil.allow_anonymous``. ``host`` defaults to the site's; ``port`` to the site's own if it
    speaks OPC UA, else :data:`DEFAULT_PORT`. The address-space cache is the user's
    (:func:`address_space_shelf`) unless ``shelf`` says otherwise. Nothing listens before
    ``start()``.
    """
    hil = hil_section(site)
    if hil is None:
        raise ConfigError([Problem(str(site.path), "hil", "the site has no 'hil' section", None)])
    host = host if host is not None else site.connection.host
    check_bind_address(host, allow_remote)
    users = site_users(site, hil)
    ca_files, ca, crls = await asyncio.to_thread(site_ca, site, hil)
    state = state_dir if state_dir is not None else site.file(hil.state_dir)
    uri = f"urn:pharmatwin:hil:{site.name}"
    certificate, key = await asyncio.to_thread(
        ensure_server_certificate, state / site.name, uri, host, ca
    )
    speaks = site.connection.protocol == "opcua"
    security = ServerSecurity(
        certificate,
        key,
        uri,
        offer_none=ca is None,
        client_ca=ca_files,
        crl=crls,
        chain=ca_files,
    )
    return OpcUaPlcServer(
        site.tags,
        port if port is not None else (site.connection.port if speaks else DEFAULT_PORT),
        host=host,
        allow_remote=allow_remote,
        site_name=site.name,
        endpoint_path=site.connection.opcua.endpoint_path,
        initial=initial,
        users=users,
        allow_anonymous=hil.allow_anonymous,
        security=security,
        shelf=shelf if shelf is not None else await address_space_shelf(),
        roles={u.username: u.roles for u in hil.users},
        limits=hil.opcua_limits.operation_limits(),
    )
