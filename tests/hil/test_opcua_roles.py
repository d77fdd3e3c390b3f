"""OPC UA roles on the HIL server, set per site user (``hil.users[].roles``).

viewer reads; operator acknowledges (``operator_reset``); engineer takes control
(``mpc_request``, ``mpc_heartbeat``) and writes setpoints; twin writes the publications.
Any other write answers BadUserAccessDenied (and the node's UserAccessLevel has no
CurrentWrite for that user); read-only tags answer BadNotWritable to everyone. Each role logs
in over Basic256Sha256 SignAndEncrypt with the bench certificate, as the site prescribes.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from asyncua import Client, ua
from asyncua.crypto.security_policies import SecurityPolicyBasic256Sha256
from conftest import free_port

from controller.errors import ConfigError
from controller.runtime.site import Site, load_site
from hil.servers.opcua import OpcUaPlcServer, opcua_server_for_site
from hil.servers.opcua_cache import address_space_shelf
from hil.servers.pki import CLIENT_CERTIFICATE_FILE, CLIENT_KEY_FILE, CLIENT_URI
from hil.site import ServerUser, hil_section, load_hil_site, with_hil

pytestmark = pytest.mark.timeout(60)

ROOT = Path(__file__).resolve().parents[2]
PKI = ROOT / "configs" / "pki"
#: One probe per kind of tag: the value written and the role it needs (None: read-only).
PROBES: dict[str, tuple[ua.Variant, str | None]] = {
    "conc_a": (ua.Variant(1.0, ua.VariantType.Double), None),
    "operator_reset": (ua.Variant(True, ua.VariantType.Boolean), "operator"),
    "mpc_request": (ua.Variant(True, ua.VariantType.Boolean), "engineer"),
    "mpc_heartbeat": (ua.Variant(9, ua.VariantType.UInt16), "engineer"),
    "feed_dilution_sp": (ua.Variant(20.0, ua.VariantType.Double), "engineer"),
    "conc_b_estimate": (ua.Variant(0.5, ua.VariantType.Double), "twin"),
}
USERS = {"vera": "viewer", "otto": "operator", "erin": "engineer", "tom": "twin"}


@pytest.fixture(scope="module")
def shelf(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return asyncio.run(address_space_shelf(tmp_path_factory.mktemp("roles-shelf")))


@pytest.fixture
async def server(
    shelf: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> AsyncIterator[tuple[OpcUaPlcServer, Path]]:
    """The cstr-opcua site with one user per role (and anonymous logins: viewer)."""
    site = load_site(ROOT / "configs/sites/cstr-opcua.yaml")
    section = hil_section(site)
    assert section is not None
    users = []
    for name, role in USERS.items():
        monkeypatch.setenv(f"PW_{name.upper()}", f"pw-{name}")
        users.append(ServerUser(username=name, password_env=f"PW_{name.upper()}", roles=(role,)))
    hil = section.model_copy(update={"users": tuple(users), "allow_anonymous": True})
    plc = await opcua_server_for_site(
        with_hil(site, hil), free_port(), state_dir=tmp_path, shelf=shelf
    )
    async with plc:
        yield plc, tmp_path / site.name / "server-cert.der"


async def _client(url: str, cert: Path, user: str | None) -> Client:
    client = Client(url, timeout=5)
    client.application_uri = CLIENT_URI
    await client.set_security(
        SecurityPolicyBasic256Sha256,
        str(PKI / CLIENT_CERTIFICATE_FILE),
        str(PKI / CLIENT_KEY_FILE),
        server_certificate=str(cert),
        mode=ua.MessageSecurityMode.SignAndEncrypt,
    )
    if user is not None:
        client.set_user(user)
        client.set_password(f"pw-{user}")
    return client


async def _outcomes(client: Client) -> dict[str, str]:
    """Tag -> the status of a write, after checking UserAccessLevel says the same."""
    out = {}
    for tag, (variant, _) in PROBES.items():
        node = client.get_node(f"ns=2;s=cstr.{tag}")
        level = await node.read_attribute(ua.AttributeIds.UserAccessLevel)
        assert level.Value is not None
        may = bool(level.Value.Value & ua.AccessLevel.CurrentWrite.mask)
        try:
            await node.write_value(ua.DataValue(variant))
            out[tag] = "Good"
        except ua.UaStatusCodeError as exc:
            out[tag] = ua.StatusCode(exc.code).name
        assert may == (out[tag] == "Good"), (tag, out[tag])
    return out


def _expected(role: str) -> dict[str, str]:
    return {
        tag: "BadNotWritable" if need is None else "Good" if need == role else "BadUserAccessDenied"
        for tag, (_, need) in PROBES.items()
    }


@pytest.mark.parametrize(("user", "role"), list(USERS.items()), ids=list(USERS.values()))
@pytest.mark.slow
@pytest.mark.serial
async def test_each_role_reads_and_writes_only_what_it_may(
    server: tuple[OpcUaPlcServer, Path], user: str, role: str
) -> None:
    plc, cert = server
    await plc.publish({"conc_a": 2.5})
    async with await _client(plc.url, cert, user) as client:
        assert await client.get_node("ns=2;s=cstr.conc_a").read_value() == 2.5  # every role
        assert await _outcomes(client) == _expected(role)
    assert plc.value("conc_a") == 2.5  # read-only, whoever asked
    written = {t for t, (_, need) in PROBES.items() if need == role}
    for tag in set(PROBES) - {"conc_a"}:
        assert (plc.value(tag) != 0.0) == (tag in written), tag


@pytest.mark.slow
@pytest.mark.serial
async def test_an_anonymous_login_is_a_viewer(server: tuple[OpcUaPlcServer, Path]) -> None:
    plc, cert = server
    async with await _client(plc.url, cert, None) as client:
        assert await _outcomes(client) == _expected("viewer")


@pytest.mark.slow
@pytest.mark.serial
async def test_the_refusal_names_the_role_needed_in_the_log_and_diagnostics(
    server: tuple[OpcUaPlcServer, Path], caplog: pytest.LogCaptureFixture
) -> None:
    plc, cert = server
    async with await _client(plc.url, cert, "otto") as client:
        request = ua.WriteRequest()
        value = ua.WriteValue(
            NodeId=ua.NodeId.from_string("ns=2;s=cstr.mpc_request"),
            AttributeId=ua.AttributeIds.Value,
            Value=ua.DataValue(ua.Variant(True, ua.VariantType.Boolean)),
        )
        request.Parameters.NodesToWrite = [value]
        request.RequestHeader.ReturnDiagnostics = 0x80  # operation-level additional info
        protocol = client.uaclient.protocol
        assert protocol is not None
        with caplog.at_level("WARNING", logger="pharmatwin.hil.opcua"):
            data = await protocol.send_request(request)
    from asyncua.ua.ua_binary import struct_from_binary

    response = struct_from_binary(ua.WriteResponse, data)
    assert response.Results[0].name == "BadUserAccessDenied"
    reason = "writing mpc_request needs the role engineer; the user has roles operator"
    assert response.DiagnosticInfos[0].AdditionalInfo == reason
    assert f"refused a write of mpc_request = True by user 'otto': {reason}" in caplog.text


def test_the_shipped_sites_give_the_controllers_user_the_roles_it_needs() -> None:
    """The controller (connection.opcua.username) takes control and publishes."""
    for path in sorted((ROOT / "configs/sites").glob("*-opcua.yaml")):
        site: Site = load_site(path)
        hil = hil_section(site)
        assert hil is not None
        roles = {u.username: set(u.roles) for u in hil.users}
        assert roles[str(site.connection.opcua.username)] == {"engineer", "twin"}, path.name


def test_an_unknown_role_is_a_config_error_naming_the_key(tmp_path: Path) -> None:
    text = (ROOT / "configs/sites/cstr-opcua.yaml").read_text()
    text = text.replace("roles: [engineer, twin]", "roles: [engineer, admin]")
    site_file = ROOT / "configs/sites/cstr-opcua.yaml"
    bad = tmp_path / "cstr-opcua.yaml"
    bad.write_text(text.replace("../", f"{site_file.parent.parent}/"))
    with pytest.raises(ConfigError) as exc:
        load_hil_site(bad)
    problem = exc.value.problems[0]
    assert problem.location.startswith("hil.users.0.roles")
    assert "viewer" in problem.message and "engineer" in problem.message
    with pytest.raises(ValueError, match=r"unknown role 'admin'; allowed: \['viewer', "):
        OpcUaPlcServer(load_site(site_file).tags, roles={"x": ("admin",)})  # type: ignore[dict-item]
