"""Security enforced by the HIL OPC UA server on every channel, session and request.

asyncua only advertises its endpoints; these classes enforce them: a secure channel over a
policy or mode the server does not offer is refused with an Error message
``BadSecurityPolicyRejected`` and closed; a channel over SecurityPolicy None, when None is not
offered, serves discovery (GetEndpoints, FindServers) only: CreateSession and every other
request answer ``BadSecurityPolicyRejected``; a password in clear (a UserName token without
encryption, over a channel that does not SignAndEncrypt) is refused with
``BadIdentityTokenRejected``. Connects, disconnects, logins and refused channels are logged.

A refused write's reason reaches the client as diagnostic info when the request asks for
operation-level diagnostics (``RequestHeader.ReturnDiagnostics``: 0x20 symbolic id, 0x40
localized text, 0x80 additional info). :class:`GuardedServer` is asyncua's Server listening
through all this, sending the CA chain with its certificate.

A Read is served as asyncua serves it, with the same checks, except that its parameters are
decoded once per distinct request body and kept (per connection, a few): a client reads the
same nodes every cycle, and decoding them is most of the server's work on a Read.
"""

from __future__ import annotations

import logging
import time
from typing import Any, Protocol, cast

from asyncua import Server, ua
from asyncua.common.connection import TransportLimits
from asyncua.common.utils import Buffer, ServiceError
from asyncua.crypto.permission_rules import User
from asyncua.crypto.security_policies import SecurityPolicyBasic256Sha256, SecurityPolicyNone
from asyncua.server.binary_server_asyncio import BinaryServer, OPCUAProtocol
from asyncua.server.internal_server import InternalServer
from asyncua.server.uaprocessor import UaProcessor
from asyncua.server.user_managers import UserManager
from asyncua.ua.ua_binary import struct_from_binary, uatcp_to_binary
from cryptography import x509

from controller.ports.opcua_limits import OperationLimits
from hil.net import LOOPBACK
from hil.servers.opcua_limits import check as check_limits
from hil.servers.opcua_nodes import request_type, status_code
from hil.servers.opcua_writes import REASONS

log = logging.getLogger("pharmatwin.hil.opcua")  # the OPC UA server's log, which serve keeps


class GuardedPlc(Protocol):
    """What the guards need of the PLC (:class:`hil.servers.opcua.OpcUaPlcServer`)."""

    #: (policy URI, mode) pairs the server accepts sessions over, set at start
    offered: frozenset[tuple[str, ua.MessageSecurityMode]]
    #: nodes per request (``hil.opcua_limits``), enforced: :mod:`hil.servers.opcua_limits`
    limits: OperationLimits

    def user_roles(self, user: User) -> frozenset[str] | None: ...


_NONE_URI = SecurityPolicyNone.URI
_SIGN_AND_ENCRYPT = ua.MessageSecurityMode.SignAndEncrypt
#: Operation-level bits of RequestHeader.ReturnDiagnostics (Part 4 §7.29).
_DIAG_SYMBOL, _DIAG_TEXT, _DIAG_INFO = 0x20, 0x40, 0x80


#: Requests a channel may carry whatever its policy: discovery, and closing it.
_DISCOVERY = frozenset(
    request_type(n) for n in ("GetEndpoints", "FindServers", "CloseSecureChannel")
)
_ACTIVATE, _WRITE, _READ = (
    request_type("ActivateSession"),
    request_type("Write"),
    request_type("Read"),
)
#: Distinct Read request bodies whose decoded parameters a connection keeps (a client reads
#: the same few lists of nodes every cycle; more under a small MaxNodesPerRead).
_READ_BODIES = 64


class _GuardedProcessor(UaProcessor):
    """asyncua's per-connection processor, enforcing the offered policies on every channel,
    session and request, refusing passwords in clear, and adding write diagnostics."""

    def __init__(
        self, iserver: InternalServer, transport: Any, limits: TransportLimits, plc: GuardedPlc
    ) -> None:
        super().__init__(iserver, transport, limits)
        self.plc = plc
        self._diagnostics: tuple[int, list[tuple[str, str]]] | None = None
        self._reads: dict[bytes, ua.ReadParameters] = {}

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
                self._refuse_channel(f"{policy_name(*pair)} is not offered")
                return
        super().open_secure_channel(algohdr, seqhdr, body)

    def _refuse_channel(self, reason: str) -> bool:
        log.warning(
            "refused a secure channel from %s: %s (offered: %s)",
            self.peer,
            reason,
            ", ".join(sorted(policy_name(*p) for p in self.plc.offered)),
        )
        error = ua.ErrorMessage(status_code("BadSecurityPolicyRejected"), ua.String(reason))
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
                policy_name(*self._channel()),
            )
            raise ServiceError(ua.StatusCodes.BadSecurityPolicyRejected)
        check_limits(self.plc.limits, typeid, body, self.peer)
        if typeid == _ACTIVATE:
            self._check_identity(body)
        if typeid == _READ and self.session is not None:
            return await self._read(requesthdr, seqhdr, body)
        if typeid != _WRITE:
            result = await super()._process_message(typeid, requesthdr, seqhdr, body)
            if typeid == _ACTIVATE and self.session is not None and self.session.is_activated():
                self._log_login()
            return result
        reasons: list[tuple[str, str]] = []
        token = REASONS.set(reasons)
        self._diagnostics = (requesthdr.ReturnDiagnostics or 0, reasons)
        try:
            return await super()._process_message(typeid, requesthdr, seqhdr, body)
        finally:
            REASONS.reset(token)
            self._diagnostics = None

    async def _read(self, requesthdr: ua.RequestHeader, seqhdr: Any, body: Buffer) -> bool:
        """asyncua's Read service (the same checks and steps), its parameters decoded once per
        distinct request body: a client reads the same nodes every cycle, and a decoded
        request is only read, never modified (by asyncua, the attribute service, the hooks)."""
        if self.session is None:  # asyncua opens the session before any service call
            raise ServiceError(ua.StatusCodes.BadSessionIdInvalid)
        rules = self._connection.security_policy.permissions
        if rules is not None and rules.check_validity(self.session.user, _READ, body) is False:
            raise ua.uaerrors.BadUserAccessDenied
        self.session_last_activity = time.monotonic()
        self.session.touch()
        key = bytes(body.copy().read(len(body)))
        params = self._reads.get(key)
        if params is None:
            params = struct_from_binary(ua.ReadParameters, body)
            if len(self._reads) >= _READ_BODIES:
                self._reads.clear()
            self._reads[key] = params
        response = ua.ReadResponse()
        response.Results = await self.session.read(params)
        self.send_response(requesthdr.RequestHandle, seqhdr, response)
        return True

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
                policy_name(*self._channel()),
            )
            raise ServiceError(ua.StatusCodes.BadIdentityTokenRejected)

    def _log_login(self) -> None:
        if self.session is None:
            return  # nothing to log: no session
        user = self.session.user
        name = getattr(user, "name", None)
        roles = self.plc.user_roles(user) if isinstance(user, User) else None
        log.info(
            "session of %s (roles %s) from %s over %s",
            f"user {name!r}" if name else "an anonymous user",
            "all" if roles is None else ", ".join(sorted(roles)) or "none",
            self.peer,
            policy_name(*self._channel()),
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

    plc: GuardedPlc

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
        plc: GuardedPlc,
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


class GuardedServer(Server):
    """asyncua's Server listening through :class:`_Listener`, the CA chain on its policies."""

    def __init__(self, plc: GuardedPlc, user_manager: UserManager) -> None:
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


def _peer(name: Any) -> str:
    if isinstance(name, tuple) and len(name) >= 2:
        return f"{name[0]}:{name[1]}"
    return str(name)


def policy_name(uri: str, mode: ua.MessageSecurityMode) -> str:
    """``Basic256Sha256/SignAndEncrypt`` for a policy URI and a mode."""
    return f"{uri.rsplit('#', 1)[-1]}/{mode.name.rstrip('_')}"


def _service(typeid: ua.NodeId) -> str:
    for name, value in vars(ua.ObjectIds).items():
        if value == typeid.Identifier and name.endswith("_Encoding_DefaultBinary"):
            return name.removesuffix("Request_Encoding_DefaultBinary")
    return typeid.to_string()
