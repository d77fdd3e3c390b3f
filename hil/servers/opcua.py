"""The HIL OPC UA server: a real asyncua server built from a tag map (127.0.0.1 by default).

``OpcUaPlcServer(tags, port)`` serves ``opc.tcp://127.0.0.1:<port>/pharmatwin/``; another
bind address must be asked for with ``allow_remote=True``. It registers its namespace first
(index 2) and lays out the address space as issue 4 asks::

    Objects/2:<site name>/2:<unit name>/2:<tag>      (folders; the unit is the tag map's name)

Each variable keeps the tag map's node id (``ns=2;s=<map>.<tag>``) and variant type, has the
properties ``0:EngineeringUnits`` (EUInformation, the tag's unit as DisplayName) and, where
the tag has limits, ``0:EURange`` (Range); only writable tags are writable by clients.

Publications (tags of direction ``publish``: soft sensors and twin-intelligence values the
twin writes, the PLC and the HMI only read) are writable variables too, but with
``publishers`` (user names) only those users may write them: any other client's write is
refused with ``BadUserAccessDenied``, and its Read of the node's ``UserAccessLevel`` shows no
CurrentWrite (``AccessLevel``, the node's own, keeps it: some user may write). Without
``publishers`` (an anonymous test bench) every client may write them. The PLC logic hears
these writes through ``write_hook`` like any other and ignores them.

The PLC side (the virtual PLC) drives it through the interface both HIL servers share:

* :meth:`publish` sets values in one go, with a SourceTimestamp; tags named ``bad`` get
  ``BadSensorFailure`` (asyncua then nulls the value, as OPC UA Part 4 §7.7.1 asks);
* :meth:`value` reads one back synchronously from the address space (NaN while it is Bad);
* ``write_hook(tag, value)`` is called for every client write of a writable tag (with the
  node's type, so one the server would take), before it is stored; a returned string refuses
  it with ``BadOutOfRange`` and is logged as the reason. :meth:`set_range` sits beside it.

Communication faults, injected on the server side:

* ``latency``: seconds added to every client Read and Write call;
* ``bad_tags`` (tag -> reason): Reads of the tag's Value give ``BadCommunicationError`` and
  writes are refused with it; :meth:`publish` stores it too, so subscribers see it;
* :meth:`drop_connections`: every client connection closed, the server keeps listening;
* :meth:`stop` / :meth:`start`: close the listener and every connection, then listen again on
  the same port with the same address space.

Other hooks: :meth:`set_value` with any StatusCode and SourceTimestamp, :meth:`set_data_type`,
``read_requests`` / ``write_requests`` (client Read/Write calls touching our namespace).

Security: users are only the configured username/password pairs (asyncua's default user
manager accepts anyone); anonymous logins can be forbidden; with a :class:`ServerSecurity`,
the Basic256Sha256 SignAndEncrypt endpoint (and policy None only if ``offer_none``), and
client certificates checked against CA certificates (``client_ca``; asyncua accepts any by
default). :func:`opcua_server_for_site` builds all of it from a site file, the certificate
made on first start by :func:`hil.servers.certs.ensure_server_certificate` (signed by the
site's test-bench CA if it names one).

asyncua builds its standard address space in about 1.4 s per server. :func:`address_space_shelf`
caches it in a shelf file once, which cuts a server's start to about 0.1 s.
"""

from __future__ import annotations

import asyncio
import logging
import math
import os
from collections.abc import Collection, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

from asyncua import Node, Server, ua
from asyncua.common.callback import CallbackType, ServerItemCallback
from asyncua.common.utils import ServiceError
from asyncua.crypto.permission_rules import User, UserRole
from asyncua.crypto.truststore import TrustStore
from asyncua.crypto.validator import (
    CertificateValidator,
    CertificateValidatorMethod,
    CertificateValidatorOptions,
)
from asyncua.server.address_space import AddressSpace, AttributeService
from asyncua.server.internal_server import InternalServer
from asyncua.server.user_managers import UserManager
from cryptography import x509

from controller.errors import ConfigError, Problem
from controller.tags import OPCUA_INT_RANGE, Tag, TagMap
from hil.net import LOOPBACK, check_bind_address, free_port
from hil.servers.base import PlcServer, WriteHook
from hil.servers.certs import CertificateAuthority, ensure_server_certificate, load_certificate

if TYPE_CHECKING:
    from controller.site import Site

log = logging.getLogger(__name__)

NAMESPACE = "urn:pharmatwin:test-plc"
#: OPC UA port used by :func:`opcua_server_for_site` when the site itself speaks Modbus.
DEFAULT_PORT = 4840

_ADMIN = User(role=UserRole.Admin)


def _status(name: str) -> ua.StatusCode:
    return ua.StatusCode(ua.UInt32(getattr(ua.StatusCodes, name)))


_GOOD = _status("Good")
_OUT_OF_RANGE = _status("BadOutOfRange")
_COMMUNICATION = _status("BadCommunicationError")
_SENSOR_FAILURE = _status("BadSensorFailure")
_ACCESS_DENIED = _status("BadUserAccessDenied")


@dataclass(frozen=True)
class ServerSecurity:
    """The server's certificate (DER or PEM by suffix) and key, and the policies it offers.

    ``client_ca``: CA certificates (DER or PEM) a client certificate must be issued by, checked
    at CreateSession (asyncua's TrustStore; also date, application URI, key usages, clientAuth),
    else BadCertificateUntrusted & co. Empty: any client certificate, asyncua's default.
    """

    certificate: Path
    private_key: Path
    application_uri: str
    offer_none: bool = False  # also offer the unsecured endpoint
    client_ca: tuple[Path, ...] = ()


async def address_space_shelf(folder: Path) -> Path:
    """Build asyncua's standard address space once into a shelf in ``folder``; return its path.

    asyncua 2.1 reuses a shelf only if ``path`` (or ``path.db``) is a file, but the dbm.dumb
    backend (no gdbm/ndbm in this Python) writes ``path.dat`` and ``path.dir``: asyncua would
    rebuild it on every start. An empty marker file at ``path`` makes it load the shelf.
    """
    path = folder / "standard_address_space"
    if not path.is_file() and not path.with_suffix(".db").is_file():
        folder.mkdir(parents=True, exist_ok=True)
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


class _PlcAttributes(AttributeService):
    """asyncua's attribute service with the PLC's checks on our tags' Value attribute."""

    def __init__(self, aspace: AddressSpace, plc: OpcUaPlcServer) -> None:
        super().__init__(aspace)
        self.plc = plc

    def read(self, params: ua.ReadParameters) -> list[ua.DataValue]:
        results = super().read(params)
        if self.plc.bad_tags:
            for i, item in enumerate(params.NodesToRead):
                if item.AttributeId == ua.AttributeIds.Value and self.plc._failing(item.NodeId):
                    results[i] = _communication_error()
        return results

    async def write(self, params: ua.WriteParameters, user: User = _ADMIN) -> list[ua.StatusCode]:
        results: list[ua.StatusCode] = []
        for item in params.NodesToWrite:
            if item.NodeId in self.plc._publications and not self.plc.may_publish(user):
                log.info("refused a write of publication %s by %s", item.NodeId, user.name)
                results.append(_ACCESS_DENIED)
                continue
            refusal = self.plc._refusal(item) if item.AttributeId == ua.AttributeIds.Value else None
            if refusal is not None:
                results.append(refusal)
                continue
            single = ua.WriteParameters(NodesToWrite=[item])
            results.extend(await super().write(single, user))
        return results


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
    ) -> None:
        """``shelf``: a file from :func:`address_space_shelf`, or a folder to keep one in;
        ``publishers``: the users who may write publication tags (None: every client)."""
        check_bind_address(host, allow_remote)
        self.tags, self.host = tags, host
        self.port = port if port is not None else free_port()
        self.site_name = site_name or tags.name
        where = f"[{host}]" if ":" in host else host
        self.url = f"opc.tcp://{where}:{self.port}{endpoint_path}"
        self.initial = dict(initial or {})
        self.security, self.shelf = security, shelf
        self.server = Server(user_manager=_Users(users or {}, allow_anonymous))
        self.allow_anonymous = allow_anonymous
        self.write_hook: WriteHook | None = None
        self.latency = 0.0
        self.bad_tags = {}
        self.ranges: dict[ua.NodeId, tuple[float, float]] = {}
        self.types: dict[str, ua.VariantType] = {}
        self.read_requests = 0
        self.write_requests = 0
        self._node_ids = {n: _node_id(t) for n, t in tags.tags.items()}
        self._tag_of = {nid: name for name, nid in self._node_ids.items() if nid is not None}
        self.publishers = None if publishers is None else frozenset(publishers)
        self._publications = frozenset(
            nid for nid, name in self._tag_of.items() if tags.tags[name].publishes is not None
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

    async def drop_connections(self) -> None:
        """Close every client connection now; the server keeps listening."""
        if self.server.bserver is not None:
            for client in list(self.server.bserver.clients):
                if client.transport is not None:
                    client.transport.close()
        await asyncio.sleep(0)

    async def _build(self) -> None:
        server = self.server
        shelf = self.shelf
        if shelf is not None and shelf.is_dir():
            shelf = await address_space_shelf(shelf)
        await server.init(shelf)
        server.disable_clock()  # its 1 s clock task would delay stop() by up to a second
        server.set_endpoint(self.url)
        server.set_server_name("PharmaTwin HIL PLC")
        await self._secure()
        idx = await server.register_namespace(NAMESPACE)
        if idx != 2:
            raise RuntimeError(f"namespace index {idx}, expected 2")
        variables = await self._variables(idx)
        for name, node in variables.items():
            await self._properties(node, self.tags.tags[name])
        iserver = server.iserver
        iserver.attribute_service = _PlcAttributes(iserver.aspace, self)
        server.subscribe_server_callback(CallbackType.PreRead, self._pre_read)
        server.subscribe_server_callback(CallbackType.PostRead, self._post_read)
        server.subscribe_server_callback(CallbackType.PreWrite, self._pre_write)

    async def _secure(self) -> None:
        server = self.server
        policies = [ua.SecurityPolicyType.NoSecurity]
        if self.security is not None:
            await server.load_certificate(str(self.security.certificate))
            await server.load_private_key(str(self.security.private_key))
            await server.set_application_uri(self.security.application_uri)
            policies = [ua.SecurityPolicyType.Basic256Sha256_SignAndEncrypt]
            if self.security.offer_none:
                policies.append(ua.SecurityPolicyType.NoSecurity)
            if self.security.client_ca:
                server.set_certificate_validator(await _client_validator(self.security.client_ca))
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
            value = _python(self.initial.get(name, 0.0), vtype)
            node = await folder.add_variable(
                node_id, ua.QualifiedName(name, idx), value, varianttype=vtype
            )
            if tag.writable:
                await node.set_writable()
            variables[name] = node
        return variables

    @staticmethod
    async def _properties(node: Node, tag: Tag) -> None:
        """EngineeringUnits, and EURange where the tag has limits (OPC UA Part 8 §5.3.2)."""
        auto_id = ua.NodeId(ua.Int32(0), node.nodeid.NamespaceIndex)  # the server numbers it
        text = ua.LocalizedText(tag.unit)
        units = ua.EUInformation(NamespaceUri="", UnitId=-1, DisplayName=text, Description=text)
        await node.add_property(
            auto_id,
            ua.QualifiedName("EngineeringUnits", 0),
            units,
            ua.VariantType.ExtensionObject,
            ua.NodeId(ua.Int32(ua.ObjectIds.EUInformation)),
        )
        if tag.limits is not None:
            await node.add_property(
                auto_id,
                ua.QualifiedName("EURange", 0),
                ua.Range(Low=float(tag.limits[0]), High=float(tag.limits[1])),
                ua.VariantType.ExtensionObject,
                ua.NodeId(ua.Int32(ua.ObjectIds.Range)),
            )

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
                dv = ua.DataValue(StatusCode=_COMMUNICATION, ServerTimestamp=now)
            elif tag in bad:
                dv = ua.DataValue(
                    StatusCode=_SENSOR_FAILURE, SourceTimestamp=stamp, ServerTimestamp=now
                )
            else:
                variant = ua.Variant(_fitting(tag, v, self.types[tag]), self.types[tag])
                dv = ua.DataValue(variant, _GOOD, SourceTimestamp=stamp, ServerTimestamp=now)
            updates.append((self.node_id(tag), dv))
        for node_id, dv in updates:
            await self.server.write_attribute_value(node_id, dv)

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
        variant = ua.Variant(None if value is None else _python(value, vtype), vtype)
        stamp = cast(ua.DateTime, source_time or datetime.now(UTC))
        dv = ua.DataValue(variant, _status(status), SourceTimestamp=stamp, ServerTimestamp=stamp)
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
        no_data = _status("BadWaitingForInitialData")
        await self.server.write_attribute_value(node.nodeid, ua.DataValue(StatusCode=no_data))
        await self.server.write_attribute_value(
            node.nodeid, ua.DataValue(ua.Variant(_python(0.0, vtype), vtype))
        )
        variant = self.read(tag).Value
        if variant is None or variant.VariantType != vtype:
            raise RuntimeError(f"tag {tag!r}: the server refused the retyped value")

    # ------------------------------------------------------------------ request hooks
    def _failing(self, node_id: ua.NodeId) -> bool:
        tag = self._tag_of.get(node_id)
        return tag is not None and tag in self.bad_tags

    def _refusal(self, item: ua.WriteValue) -> ua.StatusCode | None:
        """The status refusing a client's Value write, or None to let asyncua handle it."""
        tag = self._tag_of.get(item.NodeId)
        if tag is None:
            return None
        if tag in self.bad_tags:
            return _COMMUNICATION
        variant = item.Value.Value if item.Value is not None else None
        if variant is None or not isinstance(variant.Value, bool | int | float):
            return None
        value = float(variant.Value)
        reason = None
        limits = self.ranges.get(item.NodeId)
        if limits is not None and not limits[0] <= value <= limits[1]:
            reason = f"outside the PLC range [{limits[0]}, {limits[1]}]"
        elif (
            self.write_hook is not None
            and self.tags.tags[tag].writable
            and variant.VariantType == self.types.get(tag)
        ):
            reason = self.write_hook(tag, value)
        if reason is None:
            return None
        log.info("refused a write of %s = %r: %s", tag, value, reason)
        return _OUT_OF_RANGE

    async def _pre_read(self, event: ServerItemCallback, _: Any) -> None:
        if event.is_external:
            if _ours(event.request_params.NodesToRead):
                self.read_requests += 1
            if self.latency > 0:
                await asyncio.sleep(self.latency)

    def may_publish(self, user: User) -> bool:
        """Whether ``user`` may write publication tags (the server itself always may)."""
        if self.publishers is None or user.role == UserRole.Admin:
            return True
        return user.name is not None and user.name in self.publishers

    async def _post_read(self, event: ServerItemCallback, _: Any) -> None:
        """A publication's UserAccessLevel, as the reading user has it (no write but theirs)."""
        if not self._publications or self.may_publish(event.user):
            return
        results: list[ua.DataValue] = event.response_params
        for i, item in enumerate(event.request_params.NodesToRead):
            if item.AttributeId != ua.AttributeIds.UserAccessLevel:
                continue
            dv = results[i]
            if item.NodeId in self._publications and dv.Value is not None:
                level = ua.ua_binary.unset_bit(dv.Value.Value, ua.AccessLevel.CurrentWrite)
                results[i] = ua.DataValue(ua.Variant(level, ua.VariantType.Byte))

    async def _pre_write(self, event: ServerItemCallback, _: Any) -> None:
        if event.is_external:
            if _ours(event.request_params.NodesToWrite):
                self.write_requests += 1
            if self.latency > 0:
                await asyncio.sleep(self.latency)


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
    longer signed by it is made anew), the only endpoint is Basic256Sha256 SignAndEncrypt,
    and a client certificate not issued by that CA is refused (BadCertificateUntrusted).
    Without a CA: self-signed, endpoints None and Basic256Sha256 SignAndEncrypt, any client
    certificate. The users of ``hil.users`` with the passwords from their environment
    variables (ConfigError naming any that is not set, or an unusable CA); anonymous only if
    ``hil.allow_anonymous``. Publication tags are writable only by the twin's own user
    (``connection.opcua.username``), by any client if the site names none. ``host``
    defaults to the site's; ``port`` to the site's own if it speaks OPC UA, else
    :data:`DEFAULT_PORT`. The address-space shelf is kept in
    ``state_dir`` unless ``shelf`` says otherwise. Nothing listens before ``start()``.
    """
    if site.hil is None:
        raise ConfigError([Problem(str(site.path), "hil", "the site has no 'hil' section", None)])
    host = host if host is not None else site.connection.host
    check_bind_address(host, allow_remote)
    users = site_users(site)
    ca_files, ca = await asyncio.to_thread(_site_ca, site)
    state = state_dir if state_dir is not None else site.file(site.hil.state_dir)
    uri = f"urn:pharmatwin:hil:{site.name}"
    certificate, key = await asyncio.to_thread(
        ensure_server_certificate, state / site.name, uri, host, ca
    )
    speaks = site.connection.protocol == "opcua"
    twin = site.connection.opcua.username
    return OpcUaPlcServer(
        site.tags,
        port if port is not None else (site.connection.port if speaks else DEFAULT_PORT),
        host=host,
        allow_remote=allow_remote,
        site_name=site.name,
        endpoint_path=site.connection.opcua.endpoint_path,
        initial=initial,
        users=users,
        allow_anonymous=site.hil.allow_anonymous,
        security=ServerSecurity(certificate, key, uri, offer_none=ca is None, client_ca=ca_files),
        shelf=shelf if shelf is not None else await address_space_shelf(state),
        publishers=(twin,) if twin else None,
    )


def _site_ca(site: Site) -> tuple[tuple[Path, ...], CertificateAuthority | None]:
    """The site's HIL CA: its certificate file and the loaded pair; ConfigError if unusable."""
    hil = site.hil
    if hil is None or hil.ca_certificate is None or hil.ca_private_key is None:
        return (), None
    cert = site.file(hil.ca_certificate)
    try:
        return (cert,), CertificateAuthority.load(cert, site.file(hil.ca_private_key))
    except ValueError as exc:
        raise ConfigError(
            [Problem(str(site.path), "hil.ca_certificate", str(exc), hil.ca_certificate)]
        ) from exc


class _CaFiles(TrustStore):
    """asyncua's TrustStore over certificate files (its own loads every file of a folder)."""

    def __init__(self, files: Collection[Path]) -> None:
        super().__init__([], [])
        self.files = tuple(files)

    async def load_trust(self) -> None:
        certs = [await asyncio.to_thread(load_certificate, f) for f in self.files]
        self._trust_store = x509.verification.Store(certs)


async def _client_validator(ca_files: Collection[Path]) -> CertificateValidatorMethod:
    """A CreateSession check: the client certificate issued by a CA of ``ca_files``, in date,
    for the client's application URI, with the key usages and clientAuth; refusals logged."""
    store = _CaFiles(ca_files)
    await store.load()
    options = CertificateValidatorOptions.TRUSTED_VALIDATION
    check = CertificateValidator(options | CertificateValidatorOptions.PEER_CLIENT, store)

    async def validate(cert: x509.Certificate, client: ua.ApplicationDescription) -> None:
        try:
            await check(cert, client)
        except ServiceError as exc:
            log.warning(
                "refused the client certificate %s (application %s): %s",
                cert.subject.rfc4514_string(),
                client.ApplicationUri,
                ua.StatusCode(ua.UInt32(exc.code)).name,
            )
            raise

    return validate


def site_users(site: Site) -> dict[str, str]:
    """username -> password for ``site.hil.users``, read from the named environment variables."""
    users, problems = {}, []
    for i, user in enumerate(site.hil.users if site.hil else ()):
        password = os.environ.get(user.password_env)
        if password is None:
            message = (
                f"the environment variable {user.password_env} is not set; "
                f"it holds the password of user {user.username!r}"
            )
            problems.append(
                Problem(str(site.path), f"hil.users.{i}.password_env", message, user.password_env)
            )
        else:
            users[user.username] = password
    if problems:
        raise ConfigError(problems)
    return users


def _node_id(tag: Tag) -> ua.NodeId | None:
    spec = tag.opcua
    return None if spec is None or spec.node_id is None else ua.NodeId.from_string(spec.node_id)


def _communication_error() -> ua.DataValue:
    now = cast(ua.DateTime, datetime.now(UTC))
    return ua.DataValue(StatusCode=_COMMUNICATION, ServerTimestamp=now)


def _ours(items: list[Any]) -> bool:
    return any(item.NodeId.NamespaceIndex == 2 for item in items)


def _python(value: float, vtype: ua.VariantType) -> bool | int | float:
    if vtype == ua.VariantType.Boolean:
        return bool(value)
    if vtype in (ua.VariantType.Float, ua.VariantType.Double):
        return float(value)
    return int(value)


def _fitting(tag: str, value: float, vtype: ua.VariantType) -> bool | int | float:
    """``value`` as the node's type holds it; ValueError naming the tag if it cannot."""
    if vtype == ua.VariantType.Boolean:
        if value not in (0, 1):
            raise ValueError(f"tag {tag!r}: a Boolean node takes 0 or 1, got {value!r}")
    elif vtype.name in OPCUA_INT_RANGE:
        lo, hi = OPCUA_INT_RANGE[vtype.name]
        if not (math.isfinite(value) and lo <= round(value) <= hi):
            raise ValueError(f"tag {tag!r}: {value!r} does not fit {vtype.name} [{lo}, {hi}]")
        return round(value)
    return _python(value, vtype)
