"""The HIL OPC UA server: a real asyncua server built from a tag map (127.0.0.1 by default).

``OpcUaPlcServer(tags, port)`` serves ``opc.tcp://127.0.0.1:<port>/pharmatwin/``; another
bind address must be asked for with ``allow_remote=True``. It registers its namespace
:data:`NAMESPACE` first (index 2) and lays out the address space as issue 4 asks::

    Objects/2:<site name>/2:<unit name>/2:<tag>      (folders; the unit is the tag map's name)

Each variable keeps the tag map's node id (``ns=2;s=<map>.<tag>``, or the same named by
namespace URI: ``nsu=urn:pharmatwin:test-plc;s=<map>.<tag>``) and variant type, and has the
properties ``0:EngineeringUnits`` (EUInformation with the tag's UNECE code where it has one,
:data:`UNECE_UNITS`; ``UnitId`` -1 where none) and, where the tag has limits, ``0:EURange``.

Writes (every one gets a SourceTimestamp: the client's, else the server's clock), in order:

* a read-only tag answers ``BadNotWritable``;
* roles (``roles``: user -> roles; see :func:`required_role`): a user without the role a tag
  needs gets ``BadUserAccessDenied``, and its Read of the node's ``UserAccessLevel`` shows no
  CurrentWrite. Without ``roles`` (an anonymous test bench) every client may write every
  writable tag, except publications when ``publishers`` names who may;
* a value outside the tag's EURange (its ``limits``), publications included, answers
  ``BadOutOfRange``; so does one outside :meth:`set_range`;
* ``write_hook(tag, value)`` (the PLC logic) may refuse with a reason, whose kind
  (:func:`hil.servers.base.refusal_kind`) picks the status: not active ``BadInvalidState``,
  interlock ``BadLocked``, rate limit or outside limits ``BadOutOfRange``.

Every refusal is logged (logger ``pharmatwin.hil.opcua``, the one ``serve`` writes to its log
file) with the user and the reason, and the reason reaches the client as diagnostic info
when the request asks for operation-level diagnostics (``RequestHeader.ReturnDiagnostics``:
0x20 symbolic id, 0x40 localized text, 0x80 additional info). Connects, disconnects,
logins, refused logins, refused channels and refused certificates are logged too.

Security, enforced on every channel, session and request (asyncua only advertises): a
secure channel over a policy or mode the server does not offer is refused with an Error
message ``BadSecurityPolicyRejected`` and closed; a channel over SecurityPolicy None, when
None is not offered, serves discovery (GetEndpoints, FindServers) only: CreateSession and
every other request answer ``BadSecurityPolicyRejected``; a password in clear (a UserName
token without encryption, over a channel that does not SignAndEncrypt) is refused with
``BadIdentityTokenRejected``. With a :class:`ServerSecurity`: the policies Basic256Sha256,
Aes128_Sha256_RsaOaep and Aes256_Sha256_RsaPss with SignAndEncrypt (None only if
``offer_none``), the CA chain sent with the server certificate, and client certificates
checked against the CA certificates and their revocation lists (``client_ca``, ``crl``).
Users are only the configured username/password pairs (asyncua's default accepts anyone).

The PLC side (the virtual PLC) drives it through the interface both HIL servers share:
:meth:`publish` (tags named ``bad`` get ``BadSensorFailure``), :meth:`value`, ``write_hook``.
Communication faults: ``latency``, ``bad_tags`` (``BadCommunicationError``),
:meth:`drop_connections`, :meth:`stop` / :meth:`start`. Other hooks: :meth:`set_value`,
:meth:`set_data_type`, ``read_requests`` / ``write_requests``.

asyncua builds its standard address space in about 1.4 s per server.
:func:`address_space_shelf` caches it once per user (:func:`default_cache_dir`, whatever
the site file), built in a private folder under a file lock and renamed into place, with a
manifest of hashes that is checked on every use: a corrupt cache is rebuilt.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import dataclasses
import fcntl
import hashlib
import json
import logging
import math
import os
import shutil
import tempfile
from collections.abc import Collection, Iterator, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from importlib.metadata import version
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast, get_args

from asyncua import Node, Server, ua
from asyncua.common.callback import CallbackType, ServerItemCallback
from asyncua.common.connection import TransportLimits
from asyncua.common.utils import Buffer, ServiceError
from asyncua.crypto.permission_rules import User, UserRole
from asyncua.crypto.security_policies import SecurityPolicyBasic256Sha256, SecurityPolicyNone
from asyncua.crypto.truststore import TrustStore
from asyncua.crypto.validator import (
    CertificateValidator,
    CertificateValidatorMethod,
    CertificateValidatorOptions,
)
from asyncua.server.address_space import AddressSpace, AttributeService
from asyncua.server.binary_server_asyncio import BinaryServer, OPCUAProtocol
from asyncua.server.internal_server import InternalServer
from asyncua.server.uaprocessor import UaProcessor
from asyncua.server.user_managers import UserManager
from asyncua.ua.ua_binary import struct_from_binary, uatcp_to_binary
from cryptography import x509

from controller.errors import ConfigError, Problem
from controller.tags import OPCUA_INT_RANGE, Tag, TagMap
from hil.net import LOOPBACK, check_bind_address, free_port
from hil.servers.base import PlcServer, RefusalKind, WriteHook, refusal_kind
from hil.servers.certs import (
    CertificateAuthority,
    ensure_server_certificate,
    ephemeral_certificate,
    load_certificate,
    load_crl,
)
from hil.site import HilSection, ServerRole, hil_section

if TYPE_CHECKING:
    from controller.runtime.site import Site

log = logging.getLogger("pharmatwin.hil.opcua")

NAMESPACE = "urn:pharmatwin:test-plc"
#: OPC UA port used by :func:`opcua_server_for_site` when the site itself speaks Modbus.
DEFAULT_PORT = 4840
#: Where an EUInformation's UnitId comes from (OPC UA Part 8 §5.6.3).
CEFACT = "http://www.opcfoundation.org/UA/units/un/cefact"
#: Our units -> (UNECE Recommendation 20 common code, its name). Units without a code (ratios
#: such as g/g, bit masks, composite units) get UnitId -1 and only their DisplayName.
UNECE_UNITS: dict[str, tuple[str, str]] = {
    "degC": ("CEL", "degree Celsius"),
    "K": ("KEL", "kelvin"),
    "%": ("P1", "percent"),
    "1/h": ("H10", "reciprocal hour"),
    "1/s": ("C97", "reciprocal second"),
    "h": ("HUR", "hour"),
    "L": ("LTR", "litre"),
    "L/h": ("E32", "litre per hour"),
    "Torr": ("UA", "torr"),
    "cm": ("CMT", "centimetre"),
    "um": ("4H", "micrometre (micron)"),
    "g/L": ("GL", "gram per litre"),
    "mol/L": ("C38", "mole per litre"),
    "kJ/h": ("P20", "kilojoule per hour"),
    "count": ("C62", "one"),
    "-": ("C62", "one"),
}
#: The secure policies the server offers (SignAndEncrypt), by the names site files use.
SECURE_POLICIES: dict[str, ua.SecurityPolicyType] = {
    "Basic256Sha256": ua.SecurityPolicyType.Basic256Sha256_SignAndEncrypt,
    "Aes128_Sha256_RsaOaep": ua.SecurityPolicyType.Aes128Sha256RsaOaep_SignAndEncrypt,
    "Aes256_Sha256_RsaPss": ua.SecurityPolicyType.Aes256Sha256RsaPss_SignAndEncrypt,
}
ROLES: tuple[ServerRole, ...] = get_args(ServerRole)
#: Tags an operator may write (acknowledgements), besides those ending in ``_ack``.
OPERATOR_TAGS = frozenset({"operator_reset"})
_VIEWER: tuple[ServerRole, ...] = ("viewer",)

_ADMIN = User(role=UserRole.Admin)
_NONE_URI = SecurityPolicyNone.URI
_SIGN_AND_ENCRYPT = ua.MessageSecurityMode.SignAndEncrypt
#: Operation-level bits of RequestHeader.ReturnDiagnostics (Part 4 §7.29).
_DIAG_SYMBOL, _DIAG_TEXT, _DIAG_INFO = 0x20, 0x40, 0x80


def _status(name: str) -> ua.StatusCode:
    return ua.StatusCode(ua.UInt32(getattr(ua.StatusCodes, name)))


def _request(name: str) -> ua.NodeId:
    return ua.NodeId(getattr(ua.ObjectIds, f"{name}Request_Encoding_DefaultBinary"))


_GOOD = _status("Good")
_OUT_OF_RANGE = _status("BadOutOfRange")
_COMMUNICATION = _status("BadCommunicationError")
_SENSOR_FAILURE = _status("BadSensorFailure")
_ACCESS_DENIED = _status("BadUserAccessDenied")
_NOT_WRITABLE = _status("BadNotWritable")
#: The status each kind of PLC refusal answers.
_REFUSAL_STATUS = {
    RefusalKind.NOT_ACTIVE: _status("BadInvalidState"),
    RefusalKind.INTERLOCK: _status("BadLocked"),
    RefusalKind.RATE_LIMIT: _OUT_OF_RANGE,
    RefusalKind.OUTSIDE_LIMITS: _OUT_OF_RANGE,
    RefusalKind.OTHER: _OUT_OF_RANGE,
}
#: Requests a channel may carry whatever its policy: discovery, and closing it.
_DISCOVERY = frozenset(_request(n) for n in ("GetEndpoints", "FindServers", "CloseSecureChannel"))
_ACTIVATE, _WRITE = _request("ActivateSession"), _request("Write")

#: The (symbolic id, reason) of each item of the Write being served, for diagnostic info.
_REASONS: contextvars.ContextVar[list[tuple[str, str]] | None] = contextvars.ContextVar(
    "opcua_write_reasons", default=None
)


@dataclass(frozen=True)
class ServerSecurity:
    """The server's certificate (DER or PEM by suffix) and key, and the policies it offers.

    ``policies``: names of :data:`SECURE_POLICIES`, each offered with SignAndEncrypt.
    ``client_ca``: CA certificates (DER or PEM) a client certificate must be issued by, checked
    at CreateSession (asyncua's TrustStore; also date, application URI, key usages, clientAuth),
    else BadCertificateUntrusted & co; ``crl``: their revocation lists (DER or PEM), a revoked
    certificate answers BadCertificateRevoked. Empty ``client_ca``: any client certificate.
    ``chain``: CA certificates sent after the server's own, so clients can build the chain.
    """

    certificate: Path
    private_key: Path
    application_uri: str
    offer_none: bool = False  # also offer the unsecured endpoint
    client_ca: tuple[Path, ...] = ()
    crl: tuple[Path, ...] = ()
    chain: tuple[Path, ...] = ()
    policies: tuple[str, ...] = tuple(SECURE_POLICIES)


def required_role(name: str, tag: Tag) -> ServerRole | None:
    """The role a user needs to write tag ``name`` (None: nobody may, it is read-only).

    Publications: ``twin``; acknowledgements (``operator_reset``, ``*_ack``): ``operator``;
    every other writable tag (``mpc_request``, ``mpc_heartbeat``, setpoints, advisory tags):
    ``engineer``.
    """
    if not tag.writable:
        return None
    if tag.publishes is not None:
        return "twin"
    if name in OPERATOR_TAGS or name.endswith(("_ack", "_acknowledge")):
        return "operator"
    return "engineer"


def engineering_units(unit: str) -> ua.EUInformation:
    """The EUInformation of ``unit``: its UNECE code as UnitId (Part 8 §5.6.3), else -1."""
    code, name = UNECE_UNITS.get(unit, ("", unit))
    unit_id = int.from_bytes(code.encode("ascii"), "big") if code else -1
    return ua.EUInformation(
        NamespaceUri=CEFACT if code else "",
        UnitId=unit_id,
        DisplayName=ua.LocalizedText(unit),
        Description=ua.LocalizedText(name),
    )


# ---------------------------------------------------------------------- address-space cache
CACHE_ENV = "PHARMATWIN_CACHE_DIR"
_SHELF = "standard_address_space"
_MANIFEST = "manifest.json"


def default_cache_dir() -> Path:
    """``$PHARMATWIN_CACHE_DIR``, else ``$XDG_CACHE_HOME/pharmatwin``, else ``~/.cache/pharmatwin``:
    the same for every site file, wherever it lives."""
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV])
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg) if xdg else Path.home() / ".cache") / "pharmatwin"


async def address_space_shelf(folder: Path | None = None) -> Path:
    """asyncua's standard address space as a shelf in ``folder`` (default
    :func:`default_cache_dir`), built on first use; returns the path to give asyncua.

    The cache lives in ``<folder>/opcua-address-space-<asyncua version>/``. It is built in a
    private folder and renamed into place under an exclusive lock (``.lock``), so servers
    starting at once (threads, processes) build it once and never see half of it. Its
    manifest holds the files' SHA-256; a cache that does not match is set aside and rebuilt
    (logged). asyncua reuses a shelf only if ``path`` (or ``path.db``) is a file, but the
    dbm.dumb backend writes ``path.dat``/``path.dir``: an empty marker file at ``path`` does.
    """
    base = folder if folder is not None else default_cache_dir()
    final = base / f"opcua-address-space-{version('asyncua')}"
    why = await asyncio.to_thread(_cache_problem, final)
    if why is None:
        return final / _SHELF
    base.mkdir(parents=True, exist_ok=True)
    with await asyncio.to_thread(_locked, base / ".lock"):
        why = await asyncio.to_thread(_cache_problem, final)
        if why is not None:
            await _rebuild(base, final, why)
    return final / _SHELF


@contextlib.contextmanager
def _hold(fd: int) -> Iterator[None]:
    try:
        yield
    finally:
        fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)


def _locked(path: Path) -> contextlib.AbstractContextManager[None]:
    """An exclusive flock on ``path`` (blocks until free), released on exit."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    fcntl.flock(fd, fcntl.LOCK_EX)
    return _hold(fd)


def _cache_problem(folder: Path) -> str | None:
    """Why the cache in ``folder`` cannot be used (None: it can)."""
    try:
        manifest = json.loads((folder / _MANIFEST).read_text())
        files: dict[str, str] = manifest["files"]
    except FileNotFoundError:
        return "not built yet"
    except (OSError, ValueError, KeyError, TypeError) as exc:
        return f"its manifest is unreadable ({exc})"
    if not (folder / _SHELF).is_file() or not files:
        return "it has no shelf"
    for name, digest in files.items():
        try:
            actual = hashlib.sha256((folder / name).read_bytes()).hexdigest()
        except OSError as exc:
            return f"{name} is unreadable ({exc.strerror or exc})"
        if actual != digest:
            return f"{name} does not match its manifest"
    return None


async def _rebuild(base: Path, final: Path, why: str) -> None:
    log.info("building the OPC UA address-space cache in %s: %s", final, why)
    work = Path(tempfile.mkdtemp(prefix=".building-", dir=base))
    try:
        await Server().iserver.load_standard_address_space(work / _SHELF)
        (work / _SHELF).touch()
        files = {
            p.name: hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(work.iterdir())
            if p.name != _SHELF
        }
        (work / _MANIFEST).write_text(json.dumps({"asyncua": version("asyncua"), "files": files}))
        if final.exists():
            aside = Path(tempfile.mkdtemp(prefix=".corrupt-", dir=base))
            os.replace(final, aside / final.name)
            shutil.rmtree(aside, ignore_errors=True)
        os.replace(work, final)
    finally:
        shutil.rmtree(work, ignore_errors=True)


# ---------------------------------------------------------------------- users and roles
class _Users(UserManager):
    """Only the configured username/password pairs; anonymous only if allowed; logged."""

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
            if self.allow_anonymous:
                return User(role=UserRole.User)
            log.warning("refused an anonymous login: anonymous logins are not allowed")
            return None
        if username in self.users and self.users[username] == password:
            return User(role=UserRole.User, name=username)
        why = "wrong password" if username in self.users else "unknown user"
        log.warning("refused the login of user %r: %s", username, why)
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
        reasons: list[tuple[str, str]] = []
        for item in params.NodesToWrite:
            refusal = None
            if item.AttributeId == ua.AttributeIds.Value:
                refusal = self.plc._refusal(item, user)
            if refusal is not None:
                status, symbol, reason = refusal
                results.append(status)
                reasons.append((symbol, reason))
                continue
            single = ua.WriteParameters(NodesToWrite=[_stamped(item)])
            results.extend(await super().write(single, user))
            reasons.append(("", ""))
        sink = _REASONS.get()
        if sink is not None:
            sink.extend(reasons)
        return results


# ---------------------------------------------------------------------- enforcing endpoints
class _GuardedProcessor(UaProcessor):
    """asyncua's per-connection processor, enforcing the offered policies on every channel,
    session and request, refusing passwords in clear, and adding write diagnostics."""

    def __init__(
        self, iserver: InternalServer, transport: Any, limits: TransportLimits, plc: OpcUaPlcServer
    ) -> None:
        super().__init__(iserver, transport, limits)
        self.plc = plc
        self._diagnostics: tuple[int, list[tuple[str, str]]] | None = None

    @property
    def peer(self) -> str:
        return _peer(self.name)

    def _channel(self) -> tuple[str, ua.MessageSecurityMode]:
        policy = self._connection.security_policy
        return policy.URI, policy.Mode

    async def process(self, header: Any, body: Buffer) -> bool:
        if header.MessageType == ua.MessageType.SecureOpen and not self._connection.is_open():
            uri = struct_from_binary(
                ua.AsymmetricAlgorithmHeader, body.copy(header.body_size)
            ).SecurityPolicyURI
            if uri != _NONE_URI and uri not in {u for u, _ in self.plc.offered}:
                return self._refuse_channel(f"security policy {uri} is not offered")
        return cast(bool, await super().process(header, body))

    def open_secure_channel(self, algohdr: Any, seqhdr: Any, body: Buffer) -> None:
        if not self._connection.is_open():
            request = struct_from_binary(ua.OpenSecureChannelRequest, body.copy())
            pair = (algohdr.SecurityPolicyURI, request.Parameters.SecurityMode)
            if pair not in self.plc.offered and pair != (_NONE_URI, ua.MessageSecurityMode.None_):
                self._refuse_channel(f"{_name(*pair)} is not offered")
                return
        super().open_secure_channel(algohdr, seqhdr, body)

    def _refuse_channel(self, reason: str) -> bool:
        log.warning(
            "refused a secure channel from %s: %s (offered: %s)",
            self.peer,
            reason,
            ", ".join(sorted(_name(*p) for p in self.plc.offered)),
        )
        error = ua.ErrorMessage(_status("BadSecurityPolicyRejected"), ua.String(reason))
        self._transport.write(uatcp_to_binary(cast(Any, ua.MessageType.Error), error))
        self._transport.close()
        return False

    async def _process_message(
        self, typeid: ua.NodeId, requesthdr: ua.RequestHeader, seqhdr: Any, body: Buffer
    ) -> Any:
        if typeid not in _DISCOVERY and self._channel() not in self.plc.offered:
            log.warning(
                "refused a %s request from %s: %s is not offered",
                _service(typeid),
                self.peer,
                _name(*self._channel()),
            )
            raise ServiceError(ua.StatusCodes.BadSecurityPolicyRejected)
        if typeid == _ACTIVATE:
            self._check_identity(body)
        if typeid != _WRITE:
            result = await super()._process_message(typeid, requesthdr, seqhdr, body)
            if typeid == _ACTIVATE and self.session is not None and self.session.is_activated():
                self._log_login()
            return result
        reasons: list[tuple[str, str]] = []
        token = _REASONS.set(reasons)
        self._diagnostics = (requesthdr.ReturnDiagnostics or 0, reasons)
        try:
            return await super()._process_message(typeid, requesthdr, seqhdr, body)
        finally:
            _REASONS.reset(token)
            self._diagnostics = None

    def _check_identity(self, body: Buffer) -> None:
        """A password is taken only encrypted: by the token's policy, or by the channel."""
        params = struct_from_binary(ua.ActivateSessionParameters, body.copy())
        token = params.UserIdentityToken
        if (
            isinstance(token, ua.UserNameIdentityToken)
            and not token.EncryptionAlgorithm
            and self._channel()[1] != _SIGN_AND_ENCRYPT
        ):
            log.warning(
                "refused the login of user %r from %s: a password in clear over %s",
                token.UserName,
                self.peer,
                _name(*self._channel()),
            )
            raise ServiceError(ua.StatusCodes.BadIdentityTokenRejected)

    def _log_login(self) -> None:
        assert self.session is not None
        user = self.session.user
        name = getattr(user, "name", None)
        roles = self.plc.user_roles(user) if isinstance(user, User) else None
        log.info(
            "session of %s (roles %s) from %s over %s",
            f"user {name!r}" if name else "an anonymous user",
            "all" if roles is None else ", ".join(sorted(roles)) or "none",
            self.peer,
            _name(*self._channel()),
        )

    def send_response(
        self,
        requesthandle: Any,
        seqhdr: Any,
        response: Any,
        msgtype: Any = ua.MessageType.SecureMessage,
    ) -> None:
        if isinstance(response, ua.WriteResponse) and self._diagnostics is not None:
            mask, reasons = self._diagnostics
            if mask & (_DIAG_SYMBOL | _DIAG_TEXT | _DIAG_INFO) and len(reasons) == len(
                response.Results
            ):
                _add_diagnostics(response, mask, reasons)
        super().send_response(requesthandle, seqhdr, response, msgtype)


def _add_diagnostics(response: ua.WriteResponse, mask: int, reasons: list[tuple[str, str]]) -> None:
    """One DiagnosticInfo per result: the refusal's symbolic id, text and additional info."""
    table: list[str] = response.ResponseHeader.StringTable or []

    def index(text: str) -> ua.Int32:
        if text not in table:
            table.append(text)
        return ua.Int32(table.index(text))

    infos = []
    for symbol, reason in reasons:
        info = ua.DiagnosticInfo()
        if reason:
            info.SymbolicId = index(symbol) if mask & _DIAG_SYMBOL else None
            info.LocalizedText = index(reason) if mask & _DIAG_TEXT else None
            info.AdditionalInfo = ua.String(reason) if mask & _DIAG_INFO else None
        infos.append(info)
    response.DiagnosticInfos = infos
    response.ResponseHeader.StringTable = table


class _GuardedProtocol(OPCUAProtocol):
    """asyncua's connection protocol with our processor, logging connects and disconnects."""

    plc: OpcUaPlcServer

    def connection_made(self, transport: Any) -> None:
        super().connection_made(transport)
        if self.processor is None:
            log.warning("refused a connection from %s: too many connections", _peer(self.peer_name))
            return
        self.processor = _GuardedProcessor(self.iserver, self.transport, self.limits, self.plc)
        self.processor.set_policies(self.policies)
        log.info("connection from %s", _peer(self.peer_name))

    def connection_lost(self, ex: BaseException | None) -> None:
        session = self.processor.session if self.processor is not None else None
        name = getattr(session.user, "name", None) if session is not None else None
        who = f" (user {name!r})" if name else ""
        log.info(
            "connection from %s closed%s%s", _peer(self.peer_name), who, f": {ex}" if ex else ""
        )
        super().connection_lost(ex)


class _Listener(BinaryServer):
    def __init__(
        self,
        iserver: InternalServer,
        host: str | None,
        port: int | None,
        limits: TransportLimits,
        plc: OpcUaPlcServer,
    ) -> None:
        super().__init__(iserver, host or LOOPBACK, port or 0, limits)
        self.plc = plc

    def _make_protocol(self) -> OPCUAProtocol:
        protocol = _GuardedProtocol(
            iserver=self.iserver,
            policies=self._policies,
            clients=self.clients,
            closing_tasks=self.closing_tasks,
            limits=self.limits,
        )
        protocol.plc = self.plc
        return protocol


class _GuardedServer(Server):
    """asyncua's Server listening through :class:`_Listener`, the CA chain on its policies."""

    def __init__(self, plc: OpcUaPlcServer, user_manager: UserManager) -> None:
        super().__init__(user_manager=user_manager)
        self.plc = plc
        self.chain: list[x509.Certificate] = []

    async def start(self) -> None:
        await self._setup_server_nodes()
        for factory in self._policies:
            if factory.cls is not SecurityPolicyNone:
                factory.certificate_chain = self.chain
        self.plc.offered = frozenset((f.cls.URI, f.mode) for f in self._policies)
        if self.iserver.private_key is not None:
            _encrypted_passwords(self.iserver.endpoints)
        await self.iserver.start()
        host, port = self._get_bind_socket_info()
        self.bserver = _Listener(self.iserver, host, port, self.limits, self.plc)
        self.bserver.set_policies(self._policies)
        try:
            await self.bserver.start()
        except BaseException:
            await self.iserver.stop()
            raise


def _encrypted_passwords(endpoints: list[ua.EndpointDescription]) -> None:
    """On the None endpoints, ask for passwords encrypted with the server's key (RSA-OAEP,
    as Basic256Sha256 does) instead of the clear text asyncua asks for without a secure one."""
    for endpoint in endpoints:
        if endpoint.SecurityMode != ua.MessageSecurityMode.None_:
            continue
        for token in endpoint.UserIdentityTokens:
            if token.TokenType == ua.UserTokenType.UserName and token.SecurityPolicyUri in (
                None,
                "",
                _NONE_URI,
            ):
                token.SecurityPolicyUri = SecurityPolicyBasic256Sha256.URI


# ---------------------------------------------------------------------- the server
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
        anonymous_roles: Collection[ServerRole] = _VIEWER,
    ) -> None:
        """``shelf``: a file from :func:`address_space_shelf`, or a folder to keep the cache
        in (made if missing; default: :func:`default_cache_dir`); ``roles``: user -> roles
        (None: no role checks); ``publishers``: without ``roles``, the users who may write
        publications (None: all)."""
        check_bind_address(host, allow_remote)
        unknown = sorted({r for rs in (roles or {}).values() for r in rs} - set(ROLES))
        if unknown:
            raise ValueError(f"unknown role(s) {unknown}; allowed: {list(ROLES)}")
        self.tags, self.host = tags, host
        self.port = port if port is not None else free_port()
        self.site_name = site_name or tags.name
        where = f"[{host}]" if ":" in host else host
        self.url = f"opc.tcp://{where}:{self.port}{endpoint_path}"
        self.initial = dict(initial or {})
        self.security, self.shelf = security, shelf
        self.users = dict(users or {})
        self.server = _GuardedServer(self, _Users(self.users, allow_anonymous))
        self.allow_anonymous = allow_anonymous
        self.write_hook: WriteHook | None = None
        self.latency = 0.0
        self.bad_tags = {}
        self.ranges: dict[ua.NodeId, tuple[float, float]] = {}
        self.types: dict[str, ua.VariantType] = {}
        self.read_requests = 0
        self.write_requests = 0
        #: (policy URI, mode) pairs the server accepts sessions over, set at start
        self.offered: frozenset[tuple[str, ua.MessageSecurityMode]] = frozenset()
        self._node_ids = {n: _node_id(n, t) for n, t in tags.tags.items()}
        self._tag_of = {nid: name for name, nid in self._node_ids.items() if nid is not None}
        self.roles = None if roles is None else {u: frozenset(r) for u, r in roles.items()}
        self.anonymous_roles = frozenset(anonymous_roles)
        if publishers is None and self.roles is not None:
            publishers = [u for u, r in self.roles.items() if "twin" in r]
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
        log.info("OPC UA server listening on %s (%s)", self.url, self._offer_text())

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

    def _offer_text(self) -> str:
        return ", ".join(sorted(_name(*p) for p in self.offered))

    async def _build(self) -> None:
        server = self.server
        shelf = self.shelf
        if shelf is None or not shelf.is_file():  # a folder (to be) holding the cache
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
                validator = await _client_validator(sec.client_ca, sec.crl)
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
        await node.add_property(
            auto_id,
            ua.QualifiedName("EngineeringUnits", 0),
            engineering_units(tag.unit),
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
    def _failing(self, node_id: ua.NodeId) -> bool:
        tag = self._tag_of.get(node_id)
        return tag is not None and tag in self.bad_tags

    def _refusal(self, item: ua.WriteValue, user: User) -> tuple[ua.StatusCode, str, str] | None:
        """(status, symbolic id, reason) refusing a client's Value write, or None to let
        asyncua handle it; every refusal is logged."""
        tag = self._tag_of.get(item.NodeId)
        who = f"user {user.name!r}" if user.name else "an anonymous user"
        if tag is None:
            return None if user.role == UserRole.Admin else self._not_writable(item, who)
        refusal = self._check(tag, item, user)
        if refusal is not None:
            status, symbol, reason = refusal
            value = _variant_value(item)
            level = logging.WARNING if symbol in ("NotWritable", "RoleRequired") else logging.INFO
            text = f"{reason} ({status.name})"
            log.log(level, "refused a write of %s = %r by %s: %s", tag, value, who, text)
        return refusal

    def _not_writable(self, item: ua.WriteValue, who: str) -> tuple[ua.StatusCode, str, str] | None:
        """Any other node: BadNotWritable if its AccessLevel has no CurrentWrite."""
        level = self.server.iserver.aspace.read_attribute_value(
            item.NodeId, ua.AttributeIds.AccessLevel
        )
        if level.Value is None or not isinstance(level.Value.Value, int):
            return None
        if ua.ua_binary.test_bit(level.Value.Value, ua.AccessLevel.CurrentWrite):
            return None
        reason = f"the node {item.NodeId.to_string()} is read-only"
        log.warning("refused a write by %s: %s", who, reason)
        return _NOT_WRITABLE, "NotWritable", reason

    def _check(
        self, tag: str, item: ua.WriteValue, user: User
    ) -> tuple[ua.StatusCode, str, str] | None:
        spec = self.tags.tags[tag]
        needed = required_role(tag, spec)
        if needed is None and user.role != UserRole.Admin:
            return _NOT_WRITABLE, "NotWritable", f"{tag} is read-only (direction {spec.direction})"
        if needed is not None and not self.may_write(user, tag):
            roles = self.user_roles(user)
            has = "no roles" if not roles else "roles " + ", ".join(sorted(roles))
            reason = f"writing {tag} needs the role {needed}; the user has {has}"
            return _ACCESS_DENIED, "RoleRequired", reason
        if tag in self.bad_tags:
            return _COMMUNICATION, "CommunicationError", f"{tag}: {self.bad_tags[tag]}"
        variant = item.Value.Value if item.Value is not None else None
        if variant is None or not isinstance(variant.Value, bool | int | float):
            return None
        if variant.VariantType != self.types.get(tag):
            return None  # asyncua answers BadTypeMismatch
        value = float(variant.Value)
        if spec.limits is not None and not spec.limits[0] <= value <= spec.limits[1]:
            reason = f"{tag}={value:g} is outside its EURange [{spec.limits[0]}, {spec.limits[1]}]"
            return _OUT_OF_RANGE, "OutsideEURange", reason
        limits = self.ranges.get(item.NodeId)
        if limits is not None and not limits[0] <= value <= limits[1]:
            reason = f"{tag}={value:g} is outside the PLC range [{limits[0]}, {limits[1]}]"
            return _OUT_OF_RANGE, "OutsideLimits", reason
        hook = self.write_hook if spec.writable else None
        why = hook(tag, value) if hook is not None else None
        if why is None:
            return None
        kind = refusal_kind(why)
        return _REFUSAL_STATUS[kind], kind.name.title().replace("_", ""), f"{kind}: {why}"

    async def _pre_read(self, event: ServerItemCallback, _: Any) -> None:
        if event.is_external:
            if _ours(event.request_params.NodesToRead):
                self.read_requests += 1
            if self.latency > 0:
                await asyncio.sleep(self.latency)

    async def _post_read(self, event: ServerItemCallback, _: Any) -> None:
        """UserAccessLevel as the reading user has it: no CurrentWrite where they may not."""
        user: User = event.user
        results: list[ua.DataValue] = event.response_params
        for i, item in enumerate(event.request_params.NodesToRead):
            if item.AttributeId != ua.AttributeIds.UserAccessLevel:
                continue
            tag, dv = self._tag_of.get(item.NodeId), results[i]
            if tag is None or dv.Value is None or self.may_write(user, tag):
                continue
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
    ca_files, ca, crls = await asyncio.to_thread(_site_ca, site, hil)
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
    )


def _site_ca(
    site: Site, hil: HilSection
) -> tuple[tuple[Path, ...], CertificateAuthority | None, tuple[Path, ...]]:
    """The site's HIL CA: its certificate file, the loaded pair and its CRL file (if any);
    ConfigError if unusable."""
    if hil.ca_certificate is None or hil.ca_private_key is None:
        return (), None, ()
    cert = site.file(hil.ca_certificate)
    try:
        ca = CertificateAuthority.load(cert, site.file(hil.ca_private_key))
    except ValueError as exc:
        raise ConfigError(
            [Problem(str(site.path), "hil.ca_certificate", str(exc), hil.ca_certificate)]
        ) from exc
    crl = cert.with_suffix(".crl")
    if not crl.is_file():
        log.warning("no CRL %s beside the CA: revocation is not checked", crl)
        return (cert,), ca, ()
    try:
        load_crl(crl, ca.certificate)
    except ValueError as exc:
        raise ConfigError(
            [Problem(str(site.path), "hil.ca_certificate", str(exc), str(crl))]
        ) from exc
    return (cert,), ca, (crl,)


class _CaFiles(TrustStore):
    """asyncua's TrustStore over certificate and CRL files (its own loads whole folders)."""

    def __init__(self, files: Collection[Path], crls: Collection[Path]) -> None:
        super().__init__([], [])
        self.files, self.crls = tuple(files), tuple(crls)

    async def load_trust(self) -> None:
        certs = [await asyncio.to_thread(load_certificate, f) for f in self.files]
        self._trust_store = x509.verification.Store(certs)

    async def load_crl(self) -> None:
        revoked: list[x509.RevokedCertificate] = []
        for path in self.crls:
            revoked.extend(await asyncio.to_thread(load_crl, path))
        self._revoked_list = revoked


async def _client_validator(
    ca_files: Collection[Path], crls: Collection[Path] = ()
) -> CertificateValidatorMethod:
    """A CreateSession check: the client certificate issued by a CA of ``ca_files``, not
    revoked by ``crls``, in date, for the client's application URI, with the key usages and
    clientAuth; refusals logged."""
    store = _CaFiles(ca_files, crls)
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


def site_users(site: Site, hil: HilSection | None = None) -> dict[str, str]:
    """username -> password for ``hil.users`` (default: the site's ``hil`` section), read from
    the named environment variables."""
    users, problems = {}, []
    hil = hil if hil is not None else hil_section(site)
    for i, user in enumerate(hil.users if hil else ()):
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


# ---------------------------------------------------------------------- helpers
def _node_id(name: str, tag: Tag) -> ua.NodeId | None:
    """The tag's node id in the server's namespace (index 2), from ``ns=2;...`` or
    ``nsu=<NAMESPACE>;...``; ValueError naming the tag for another namespace."""
    spec = tag.opcua
    if spec is None or spec.node_id is None:
        return None
    node = ua.NodeId.from_string(spec.node_id)
    uri = getattr(node, "NamespaceUri", None)
    if uri:
        if uri != NAMESPACE:
            raise ValueError(
                f"tag {name!r}: node id {spec.node_id!r} names the namespace {uri!r}; the HIL "
                f"server's is {NAMESPACE!r}"
            )
        return ua.NodeId(node.Identifier, ua.Int16(2), node.NodeIdType)
    return ua.NodeId(node.Identifier, node.NamespaceIndex, node.NodeIdType)


def _stamped(item: ua.WriteValue) -> ua.WriteValue:
    """A Value write with a SourceTimestamp (the client's, else now) and ServerTimestamp now."""
    if item.AttributeId != ua.AttributeIds.Value or item.Value is None:
        return item
    now = cast(ua.DateTime, datetime.now(UTC))
    dv = dataclasses.replace(
        item.Value, SourceTimestamp=item.Value.SourceTimestamp or now, ServerTimestamp=now
    )
    return dataclasses.replace(item, Value=dv)


def _variant_value(item: ua.WriteValue) -> Any:
    variant = item.Value.Value if item.Value is not None else None
    return None if variant is None else variant.Value


def _peer(name: Any) -> str:
    if isinstance(name, tuple) and len(name) >= 2:
        return f"{name[0]}:{name[1]}"
    return str(name)


def _name(uri: str, mode: ua.MessageSecurityMode) -> str:
    """``Basic256Sha256/SignAndEncrypt`` for a policy URI and a mode."""
    return f"{uri.rsplit('#', 1)[-1]}/{mode.name.rstrip('_')}"


def _service(typeid: ua.NodeId) -> str:
    for name, value in vars(ua.ObjectIds).items():
        if value == typeid.Identifier and name.endswith("_Encoding_DefaultBinary"):
            return name.removesuffix("Request_Encoding_DefaultBinary")
    return typeid.to_string()


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
