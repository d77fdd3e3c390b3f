"""The HIL OPC UA server enforces its endpoints on every channel, session and request.

asyncua only *advertises* endpoints: a client that forces SecurityPolicy None onto a server
that offers SignAndEncrypt only gets a session, reads and writes (shown first, against a bare
asyncua server). Ours refuses it, refuses policies and modes it does not offer with an Error
at once (not a timeout), never takes a password in clear, sends its CA chain, reports the
reason of every refused write as status code and diagnostic info, and logs all of it.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
from asyncua import Client, Server, ua
from asyncua.common.utils import Buffer
from asyncua.crypto.permission_rules import User, UserRole
from asyncua.crypto.security_policies import (
    SecurityPolicy,
    SecurityPolicyAes128Sha256RsaOaep,
    SecurityPolicyAes256Sha256RsaPss,
    SecurityPolicyBasic128Rsa15,
    SecurityPolicyBasic256Sha256,
)
from asyncua.server.user_managers import UserManager
from asyncua.ua.ua_binary import struct_from_binary
from conftest import LOOPBACK, free_port
from cryptography import x509

from controller.clock import RealClock
from controller.ports.opcua import OpcUaPort
from controller.runtime.site import Site, load_site
from hil.servers.certs import ensure_server_certificate
from hil.servers.opcua import OpcUaPlcServer, opcua_server_for_site
from hil.servers.opcua_cache import address_space_shelf
from hil.servers.opcua_nodes import NAMESPACE
from hil.servers.pki import (
    CA_CERTIFICATE_FILE,
    CLIENT_CERTIFICATE_FILE,
    CLIENT_KEY_FILE,
    CLIENT_URI,
    make_test_pki,
)
from hil.site import hil_section, with_hil
from hil.vplc import VirtualPlc

pytestmark = pytest.mark.timeout(60)

ROOT = Path(__file__).resolve().parents[3]
PKI = ROOT / "configs" / "pki"
PASSWORD = "s3cret-jacket"
ENV = "PHARMATWIN_OPCUA_PASSWORD"
NONE = ua.MessageSecurityMode.None_
SIGN, SIGN_AND_ENCRYPT = ua.MessageSecurityMode.Sign, ua.MessageSecurityMode.SignAndEncrypt
POLICIES: dict[str, type[SecurityPolicy]] = {
    "Basic256Sha256": SecurityPolicyBasic256Sha256,
    "Aes128_Sha256_RsaOaep": SecurityPolicyAes128Sha256RsaOaep,
    "Aes256_Sha256_RsaPss": SecurityPolicyAes256Sha256RsaPss,
}


# ---------------------------------------------------------------------- fixtures
@pytest.fixture(scope="module")
def shelf(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return asyncio.run(address_space_shelf(tmp_path_factory.mktemp("security-shelf")))


@pytest.fixture(scope="module")
def site() -> Site:
    return load_site(ROOT / "configs/sites/cstr-opcua.yaml")


@pytest.fixture
async def secured(
    site: Site, shelf: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> AsyncIterator[tuple[OpcUaPlcServer, Path]]:
    """The shipped cstr-opcua site's server (the test CA's; SignAndEncrypt only)."""
    monkeypatch.setenv(ENV, PASSWORD)
    server = await opcua_server_for_site(site, free_port(), state_dir=tmp_path, shelf=shelf)
    async with server:
        yield server, tmp_path / site.name / "server-cert.der"


@pytest.fixture
def hil_log(tmp_path: Path) -> Iterator[Path]:
    """The HIL log file as ``pharmatwin-hil serve`` wires it: a handler on ``pharmatwin``."""
    path = tmp_path / "hil.log"
    handler = logging.FileHandler(path)
    handler.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger("pharmatwin")
    old = root.level
    root.addHandler(handler)
    root.setLevel(logging.INFO)
    try:
        yield path
    finally:
        root.removeHandler(handler)
        root.setLevel(old)
        handler.close()


# ---------------------------------------------------------------------- helpers
async def _secure_client(
    url: str,
    server_cert: Path,
    *,
    policy: type[SecurityPolicy] = SecurityPolicyBasic256Sha256,
    mode: ua.MessageSecurityMode = SIGN_AND_ENCRYPT,
    user: str | None = "operator",
    password: str = PASSWORD,
    pki: Path = PKI,
) -> Client:
    client = Client(url, timeout=5)
    client.application_uri = CLIENT_URI
    await client.set_security(
        policy,
        str(pki / CLIENT_CERTIFICATE_FILE),
        str(pki / CLIENT_KEY_FILE),
        server_certificate=str(server_cert),
        mode=mode,
    )
    if user is not None:
        client.set_user(user)
        client.set_password(password)
    return client


async def _none_channel(url: str) -> Client:
    """A client with an open SecureChannel over policy None and no session yet."""
    client = Client(url, timeout=3)
    await client.connect_socket()
    await client.send_hello()
    await client.open_secure_channel()
    return client


async def _forced_session(client: Client, url: str, user: str, password: str) -> None:
    """CreateSession and ActivateSession on ``client``'s channel, with the password in clear
    (no EncryptionAlgorithm), whatever the endpoints say: what a careless client does."""
    params = ua.CreateSessionParameters(
        ClientDescription=ua.ApplicationDescription(
            ApplicationUri="urn:careless", ApplicationType=ua.ApplicationType.Client
        ),
        EndpointUrl=url,
        SessionName="forced",
        ClientNonce=os.urandom(32),
        RequestedSessionTimeout=60_000,
        MaxResponseMessageSize=0,
    )
    await client.uaclient.create_session(params)
    token = ua.UserNameIdentityToken(PolicyId="username", UserName=user, Password=password.encode())
    await client.uaclient.activate_session(
        ua.ActivateSessionParameters(
            UserIdentityToken=token, ClientSignature=ua.SignatureData(), LocaleIds=["en"]
        )
    )


def _read(node: str) -> ua.ReadParameters:
    return ua.ReadParameters(
        NodesToRead=[ua.ReadValueId(NodeId=ua.NodeId.from_string(node), AttributeId=13)]
    )


def _write(node: str, variant: ua.Variant) -> ua.WriteParameters:
    value = ua.WriteValue(
        NodeId=ua.NodeId.from_string(node),
        AttributeId=ua.AttributeIds.Value,
        Value=ua.DataValue(variant),
    )
    return ua.WriteParameters(NodesToWrite=[value])


class _OneUser(UserManager):
    def get_user(
        self, iserver: Any, username: Any = None, password: Any = None, certificate: Any = None
    ) -> User | None:
        ok = username == "operator" and password == PASSWORD
        return User(role=UserRole.User, name=username) if ok else None


async def _bare_asyncua_server(shelf: Path, tmp: Path) -> tuple[Server, str]:
    """A plain asyncua server advertising only Basic256Sha256 SignAndEncrypt (and a user
    manager with one user), with a writable mpc_request: asyncua's own enforcement."""
    url = f"opc.tcp://{LOOPBACK}:{free_port()}/bare/"
    cert, key = ensure_server_certificate(tmp / "bare", "urn:bare", LOOPBACK)
    server = Server(user_manager=_OneUser())
    await server.init(shelf)
    server.disable_clock()
    server.set_endpoint(url)
    await server.load_certificate(str(cert))
    await server.load_private_key(str(key))
    await server.set_application_uri("urn:bare")
    server.set_security_policy([ua.SecurityPolicyType.Basic256Sha256_SignAndEncrypt])
    server.set_identity_tokens([ua.UserNameIdentityToken])
    idx = await server.register_namespace(NAMESPACE)
    node = await server.nodes.objects.add_variable(
        ua.NodeId("cstr.mpc_request", idx), "mpc_request", False
    )
    await node.set_writable()
    await server.start()
    return server, url


# ---------------------------------------------------------------------- policy None
async def test_a_session_forced_over_none_with_a_password_is_refused(
    secured: tuple[OpcUaPlcServer, Path], shelf: Path, tmp_path: Path, hil_log: Path
) -> None:
    # The failure: asyncua alone advertises SignAndEncrypt only, yet takes the session.
    bare, bare_url = await _bare_asyncua_server(shelf, tmp_path)
    try:
        client = await _none_channel(bare_url)
        try:
            await _forced_session(client, bare_url, "operator", PASSWORD)
            request = _write("ns=2;s=cstr.mpc_request", ua.Variant(True, ua.VariantType.Boolean))
            assert (await client.uaclient.write(request))[0].is_good()
        finally:
            client.disconnect_socket()
        assert await bare.get_node("ns=2;s=cstr.mpc_request").read_value() is True
    finally:
        await bare.stop()

    # Ours: the None channel serves discovery only; the session is refused, and so is every
    # request sent without one.
    server, _ = secured
    client = await _none_channel(server.url)
    try:
        endpoints = await client.uaclient.get_endpoints(
            ua.GetEndpointsParameters(EndpointUrl=server.url)
        )
        assert {e.SecurityMode for e in endpoints} == {SIGN_AND_ENCRYPT}
        with pytest.raises(ua.UaStatusCodeError, match="BadSecurityPolicyRejected"):
            await _forced_session(client, server.url, "operator", PASSWORD)
        with pytest.raises(ua.UaStatusCodeError, match="BadSecurityPolicyRejected"):
            await client.uaclient.read(_read("ns=2;s=cstr.conc_a"))
        with pytest.raises(ua.UaStatusCodeError, match="BadSecurityPolicyRejected"):
            await client.uaclient.write(
                _write("ns=2;s=cstr.mpc_request", ua.Variant(True, ua.VariantType.Boolean))
            )
    finally:
        client.disconnect_socket()
    assert server.value("mpc_request") == 0.0
    text = hil_log.read_text()
    assert "refused a CreateSession request from 127.0.0.1:" in text
    assert "None/None is not offered" in text and "refused a Write request" in text


@pytest.mark.parametrize(
    ("policy", "mode"),
    [(SecurityPolicyBasic256Sha256, SIGN), (SecurityPolicyBasic128Rsa15, SIGN_AND_ENCRYPT)],
    ids=["Basic256Sha256-Sign", "Basic128Rsa15-SignAndEncrypt"],
)
async def test_a_policy_or_mode_not_offered_is_refused_at_once(
    secured: tuple[OpcUaPlcServer, Path],
    policy: type[SecurityPolicy],
    mode: ua.MessageSecurityMode,
    hil_log: Path,
) -> None:
    server, cert = secured
    client = await _secure_client(server.url, cert, policy=policy, mode=mode)
    started = time.monotonic()
    try:
        with pytest.raises(ua.UaStatusCodeError, match="BadSecurityPolicyRejected"):
            await client.connect()
    finally:
        client.disconnect_socket()
    assert time.monotonic() - started < 2.5  # an Error message, not the 5 s client timeout
    assert "refused a secure channel from 127.0.0.1:" in hil_log.read_text()
    assert "is not offered (offered: Aes128_Sha256_RsaOaep/SignAndEncrypt" in hil_log.read_text()


@pytest.mark.parametrize("name", list(POLICIES))
async def test_every_offered_policy_connects_asyncua_and_our_port(
    secured: tuple[OpcUaPlcServer, Path], site: Site, name: str
) -> None:
    server, cert = secured
    await server.publish({"conc_a": 2.5})
    client = await _secure_client(server.url, cert, policy=POLICIES[name])
    async with client:
        assert await client.get_node("ns=2;s=cstr.conc_a").read_value() == 2.5
        endpoints = await client.get_endpoints()
        offered = {(e.SecurityPolicyUri.rsplit("#")[-1], e.SecurityMode) for e in endpoints}
        assert offered == {(p, SIGN_AND_ENCRYPT) for p in POLICIES}
    sec = site.connection.opcua.security.model_copy(update={"policy": name})
    opts = site.connection.opcua.model_copy(update={"security": sec})
    conn = site.connection.model_copy(update={"port": server.port, "opcua": opts})
    port = OpcUaPort(site.tags, conn, RealClock(), password=PASSWORD, base_dir=site.path.parent)
    async with port:
        assert (await port.read(["conc_a"]))["conc_a"].value == 2.5
        assert (await port.write({"mpc_heartbeat": 5})).ok
    assert server.value("mpc_heartbeat") == 5


# ---------------------------------------------------------------------- passwords in clear
async def test_a_password_in_clear_is_never_accepted(
    site: Site, shelf: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, hil_log: Path
) -> None:
    """Where None is offered (a site without a CA, a bench without security), a session
    over it is fine, but only with the password encrypted by the server's key."""
    monkeypatch.setenv(ENV, PASSWORD)
    hil = hil_section(site)
    assert hil is not None
    plain_site = with_hil(
        site, hil.model_copy(update={"ca_certificate": None, "ca_private_key": None})
    )
    plain = await opcua_server_for_site(plain_site, free_port(), state_dir=tmp_path, shelf=shelf)
    bench = OpcUaPlcServer(site.tags, free_port(), shelf=shelf, users={"operator": PASSWORD})
    for server in (plain, bench):
        async with server:
            client = await _none_channel(server.url)
            try:
                with pytest.raises(ua.UaStatusCodeError, match="BadIdentityTokenRejected"):
                    await _forced_session(client, server.url, "operator", PASSWORD)
            finally:
                client.disconnect_socket()
            # asyncua's client follows the endpoint: it encrypts the password (RSA-OAEP).
            ordinary = Client(server.url, timeout=5)
            ordinary.set_user("operator")
            ordinary.set_password(PASSWORD)
            async with ordinary:
                none = [e for e in await ordinary.get_endpoints() if e.SecurityMode == NONE]
                tokens = [
                    t
                    for t in none[0].UserIdentityTokens
                    if t.TokenType == ua.UserTokenType.UserName
                ]
                assert tokens[0].SecurityPolicyUri == SecurityPolicyBasic256Sha256.URI
                assert await ordinary.get_node("ns=2;s=cstr.conc_a").read_value() == 0.0
    text = hil_log.read_text()
    assert text.count("refused the login of user 'operator' from 127.0.0.1:") == 2
    assert "a password in clear over None/None" in text


# ---------------------------------------------------------------------- the chain
def _der_certificates(blob: bytes) -> list[x509.Certificate]:
    """Split concatenated DER certificates (an OPN SenderCertificate)."""
    certs, at = [], 0
    while at < len(blob):
        first = blob[at + 1]
        size = first if first < 0x80 else int.from_bytes(blob[at + 2 : at + 2 + (first & 0x7F)])
        head = 2 if first < 0x80 else 2 + (first & 0x7F)
        certs.append(x509.load_der_x509_certificate(blob[at : at + head + size]))
        at += head + size
    return certs


async def test_the_server_sends_its_ca_chain_with_its_certificate(
    secured: tuple[OpcUaPlcServer, Path],
) -> None:
    """The OpenSecureChannel answer carries the server certificate, then the CA's: what a
    client that trusts only the CA needs to build the chain."""
    server, cert = secured
    client = await _secure_client(server.url, cert)
    seen: list[bytes] = []
    await client.connect_socket()
    protocol = client.uaclient.protocol
    assert protocol is not None
    receive = protocol.data_received

    def tap(data: bytes) -> None:
        seen.append(data)
        receive(data)

    protocol.data_received = tap  # type: ignore[method-assign]
    try:
        await client.send_hello()
        await client.open_secure_channel()
    finally:
        client.disconnect_socket()
    received = b"".join(seen)
    opn = received[received.index(b"OPNF") :]
    header = struct_from_binary(ua.AsymmetricAlgorithmHeader, Buffer(opn[12:]))
    chain = _der_certificates(header.SenderCertificate)
    ca = x509.load_der_x509_certificate((PKI / CA_CERTIFICATE_FILE).read_bytes())
    assert [c.subject for c in chain] == [
        x509.load_der_x509_certificate(cert.read_bytes()).subject,
        ca.subject,
    ]
    chain[0].verify_directly_issued_by(chain[1])


# ---------------------------------------------------------------------- refusals and the log
async def test_every_refusal_reaches_the_client_and_the_hil_log(
    secured: tuple[OpcUaPlcServer, Path], site: Site, tmp_path: Path, hil_log: Path
) -> None:
    """The real virtual PLC refuses: not active, then over the rate limit; the EURange
    refuses outside limits. Status codes, diagnostic info (symbolic id, text, additional
    info) and log lines say which."""
    server, cert = secured
    hil = hil_section(site)
    assert hil is not None
    now = [0.0]
    vplc = VirtualPlc(
        site.tags, hil.plc, ("F", "Q_dot"), {"F": 20.0, "Q_dot": -2000.0}, now=lambda: now[0]
    )
    server.write_hook = vplc.on_write
    client = await _secure_client(server.url, cert)
    async with client:

        async def write(tag: str, value: float) -> tuple[str, ua.DiagnosticInfo, list[str]]:
            request = ua.WriteRequest()
            request.Parameters = _write(
                f"ns=2;s=cstr.{tag}", ua.Variant(value, ua.VariantType.Double)
            )
            request.RequestHeader.ReturnDiagnostics = 0x20 | 0x40 | 0x80
            data = await client.uaclient.protocol.send_request(request)  # type: ignore[union-attr]
            response = struct_from_binary(ua.WriteResponse, data)
            return (
                response.Results[0].name,
                response.DiagnosticInfos[0],
                response.ResponseHeader.StringTable,
            )

        status, info, table = await write("feed_dilution_sp", 25.0)  # the MPC is not active
        assert status == "BadInvalidState"
        assert table[info.SymbolicId] == "NotActive"
        assert table[info.LocalizedText] == info.AdditionalInfo
        assert info.AdditionalInfo.startswith("not active: feed_dilution_sp: remote setpoints")
        status, info, table = await write("feed_dilution_sp", 500.0)
        assert (status, table[info.SymbolicId]) == ("BadOutOfRange", "OutsideEURange")
        assert "outside its EURange [5.0, 100.0]" in info.AdditionalInfo
        vplc.on_write("mpc_request", 1.0)
        vplc.scan(0.0, 0.0, {"T_R_meas": 100.0})
        assert vplc.active
        status, info, table = await write("feed_dilution_sp", 60.0)  # +40 at once
        assert (status, table[info.SymbolicId]) == ("BadOutOfRange", "RateLimit")
        assert info.AdditionalInfo.startswith("over the rate limit: feed_dilution_sp: move +40")
        now[0] = 20.0
        status, info, _ = await write("feed_dilution_sp", 25.0)  # within 0.56/s x 20 s
        assert status == "Good" and info.AdditionalInfo is None
        # Without ReturnDiagnostics: the status alone, as OPC UA says.
        with pytest.raises(ua.UaStatusCodeError, match="BadOutOfRange"):
            await client.get_node("ns=2;s=cstr.feed_dilution_sp").write_value(
                ua.Variant(5000.0, ua.VariantType.Double)
            )
    # A client certificate of another CA and a wrong password: refused and logged.
    other = make_test_pki(tmp_path / "other")
    stranger = await _secure_client(server.url, cert, pki=other["ca_certificate"].parent)
    with pytest.raises(ua.UaStatusCodeError, match="BadCertificateUntrusted"):
        await stranger.connect()
    stranger.disconnect_socket()
    wrong = await _secure_client(server.url, cert, password="wrong")
    with pytest.raises(ua.UaStatusCodeError, match="BadUserAccessDenied"):
        await wrong.connect()
    wrong.disconnect_socket()
    for _ in range(500):  # the server sees the last disconnect a moment later
        if hil_log.read_text().count(" closed") >= 3:
            break
        await asyncio.sleep(0.01)
    text = hil_log.read_text()
    for line in (
        "INFO pharmatwin.hil.opcua: connection from 127.0.0.1:",
        "session of user 'operator' (roles engineer, twin) from 127.0.0.1:",
        "over Basic256Sha256/SignAndEncrypt",
        "refused a write of feed_dilution_sp = 25.0 by user 'operator': not active:",
        "(BadInvalidState)",
        "refused a write of feed_dilution_sp = 60.0 by user 'operator': over the rate limit",
        "refused a write of feed_dilution_sp = 500.0 by user 'operator': feed_dilution_sp=500",
        "WARNING pharmatwin.hil.opcua: refused the client certificate ",
        "(application urn:pharmatwin:controller): BadCertificateUntrusted",
        "refused the login of user 'operator': wrong password",
        "closed (user 'operator')",
    ):
        assert line in text, line
    assert PASSWORD not in text and "wrong" not in text.replace("wrong password", "")
