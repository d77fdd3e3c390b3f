"""Interoperability with an OPC UA stack that is not asyncua: the legacy python ``opcua``
package (FreeOpcUa 0.98.13 on PyPI, a synchronous client with its own encoder and its own
crypto), against the HIL server of the shipped cstr-opcua site.

Covered: a secured connection (Basic256Sha256 SignAndEncrypt with the bench client
certificate and a password), reads (values, EngineeringUnits with UNECE codes, EURange),
writes (with a SourceTimestamp set by the server), and refusals with their status codes
(read-only, not active, outside EURange for a setpoint and a publication, a viewer's write,
and a session over policy None). The legacy client is blocking: it runs in a thread while the
server runs on the test's event loop.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, TypeVar

import opcua
import pytest
from conftest import free_port
from opcua import ua as lua

from controller.ports.opcua_limits import OperationLimits
from controller.runtime.site import load_site
from hil.servers.opcua import OpcUaPlcServer, opcua_server_for_site
from hil.servers.opcua_cache import address_space_shelf
from hil.servers.opcua_limits import advertise
from hil.servers.opcua_nodes import CEFACT
from hil.servers.pki import CLIENT_CERTIFICATE_FILE, CLIENT_KEY_FILE, CLIENT_URI
from hil.site import ServerUser, hil_section, with_hil

pytestmark = pytest.mark.timeout(60)

ROOT = Path(__file__).resolve().parents[3]
PKI = ROOT / "configs" / "pki"
PASSWORDS = {"operator": "s3cret-op", "vera": "s3cret-vera"}
T = TypeVar("T")


@pytest.fixture(scope="module")
def shelf(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return asyncio.run(address_space_shelf(tmp_path_factory.mktemp("interop-shelf")))


@pytest.fixture
async def plc(
    shelf: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> AsyncIterator[tuple[OpcUaPlcServer, Path]]:
    """The shipped site, plus a viewer ``vera``; the PLC refuses setpoints (not active)."""
    site = load_site(ROOT / "configs/sites/cstr-opcua.yaml")
    section = hil_section(site)
    assert section is not None
    monkeypatch.setenv("PHARMATWIN_OPCUA_PASSWORD", PASSWORDS["operator"])
    monkeypatch.setenv("PW_VERA", PASSWORDS["vera"])
    viewer = ServerUser(username="vera", password_env="PW_VERA", roles=("viewer",))
    hil = section.model_copy(update={"users": (*section.users, viewer)})
    initial = {"reactor_temp": 85.25, "conc_a": 2.5}
    server = await opcua_server_for_site(
        with_hil(site, hil),
        free_port(),
        state_dir=tmp_path,
        shelf=shelf,
        initial=initial,
    )
    active = {"value": False}

    def plc_logic(tag: str, value: float) -> str | None:
        if tag == "mpc_request":
            active["value"] = bool(value)
        if tag.endswith("_sp") and not active["value"]:
            return f"{tag}: remote setpoints are accepted only while the MPC is active"
        return None

    server.write_hook = plc_logic
    async with server:
        yield server, tmp_path / site.name / "server-cert.der"


@contextmanager
def _legacy(url: str, server_cert: Path, user: str) -> Iterator[Any]:
    client = opcua.Client(url, timeout=5)
    client.application_uri = CLIENT_URI
    cert, key = PKI / CLIENT_CERTIFICATE_FILE, PKI / CLIENT_KEY_FILE
    client.set_security_string(f"Basic256Sha256,SignAndEncrypt,{cert},{key},{server_cert}")
    client.set_user(user)
    client.set_password(PASSWORDS[user])
    client.connect()
    try:
        yield client
    finally:
        client.disconnect()


async def _in_thread(fn: Callable[[], T]) -> T:
    return await asyncio.to_thread(fn)


def _status_of(call: Callable[[], Any]) -> str:
    """The status name a legacy client call raised ("Good" if it did not)."""
    try:
        call()
    except lua.UaStatusCodeError as exc:
        return lua.StatusCode(exc.code).name
    return "Good"


def _write(client: Any, tag: str, value: Any, vtype: Any) -> Callable[[], Any]:
    node = client.get_node(f"ns=2;s=cstr.{tag}")
    return lambda: node.set_value(lua.DataValue(lua.Variant(value, vtype)))


async def test_legacy_client_reads_units_and_ranges_over_sign_and_encrypt(
    plc: tuple[OpcUaPlcServer, Path],
) -> None:
    server, cert = plc

    def session() -> dict[str, Any]:
        with _legacy(server.url, cert, "operator") as client:
            temp = client.get_node("ns=2;s=cstr.reactor_temp")
            units = temp.get_child("0:EngineeringUnits").get_value()
            eu_range = client.get_node("ns=2;s=cstr.feed_dilution_sp").get_child("0:EURange")
            policies = {e.SecurityPolicyUri for e in client.get_endpoints()}
            return {
                "value": temp.get_value(),
                "conc_a": client.get_node("ns=2;s=cstr.conc_a").get_value(),
                "units": (units.NamespaceUri, units.UnitId, units.DisplayName.Text),
                "range": (eu_range.get_value().Low, eu_range.get_value().High),
                "policy": client.security_policy.URI,
                "policies": {p.rsplit("#")[-1] for p in policies},
            }

    got = await _in_thread(session)
    assert got["value"] == 85.25 and got["conc_a"] == 2.5
    assert got["units"] == (CEFACT, int.from_bytes(b"CEL", "big"), "degC")  # degree Celsius
    assert got["range"] == (5.0, 100.0)
    assert got["policy"].endswith("#Basic256Sha256")
    assert got["policies"] == {"Basic256Sha256", "Aes128_Sha256_RsaOaep", "Aes256_Sha256_RsaPss"}


async def test_legacy_client_writes_and_every_refusal_has_its_status(
    plc: tuple[OpcUaPlcServer, Path],
) -> None:
    server, cert = plc
    double, boolean = lua.VariantType.Double, lua.VariantType.Boolean

    def operator() -> dict[str, Any]:
        with _legacy(server.url, cert, "operator") as client:
            out = {
                "not active": _status_of(_write(client, "feed_dilution_sp", 20.0, double)),
                "read-only": _status_of(_write(client, "conc_a", 1.0, double)),
                "request": _status_of(_write(client, "mpc_request", True, boolean)),
                "setpoint": _status_of(_write(client, "feed_dilution_sp", 20.0, double)),
                "outside EURange": _status_of(_write(client, "feed_dilution_sp", 500.0, double)),
                "publication": _status_of(_write(client, "conc_b_estimate", 0.5, double)),
                "publication outside": _status_of(_write(client, "conc_b_estimate", 7.0, double)),
            }
            out["stamp"] = client.get_node("ns=2;s=cstr.feed_dilution_sp").get_data_value()
            return out

    before = datetime.now(UTC)
    got = await _in_thread(operator)
    assert {k: v for k, v in got.items() if k != "stamp"} == {
        "not active": "BadInvalidState",
        "read-only": "BadNotWritable",
        "request": "Good",
        "setpoint": "Good",
        "outside EURange": "BadOutOfRange",
        "publication": "Good",
        "publication outside": "BadOutOfRange",
    }
    stamp = got["stamp"].SourceTimestamp.replace(tzinfo=UTC)
    assert before - timedelta(seconds=1) <= stamp <= datetime.now(UTC)  # set by the server
    assert server.value("feed_dilution_sp") == 20.0
    assert server.value("conc_b_estimate") == 0.5

    def viewer() -> tuple[float, str]:
        with _legacy(server.url, cert, "vera") as client:
            value = client.get_node("ns=2;s=cstr.feed_dilution_sp").get_value()
            return value, _status_of(_write(client, "mpc_request", False, boolean))

    assert await _in_thread(viewer) == (20.0, "BadUserAccessDenied")
    assert server.value("mpc_request") == 1.0


async def test_legacy_client_over_policy_none_is_refused(
    plc: tuple[OpcUaPlcServer, Path],
) -> None:
    """An independent client that does not check endpoints: no session over None."""
    server, _ = plc

    def plain() -> str:
        client = opcua.Client(server.url, timeout=5)
        client.set_user("operator")
        client.set_password(PASSWORDS["operator"])
        return _status_of(client.connect)  # it closes its socket when connect fails

    assert await _in_thread(plain) == "BadSecurityPolicyRejected"
    assert server.value("mpc_request") == 0.0


async def test_legacy_client_sees_and_meets_the_operation_limits(
    plc: tuple[OpcUaPlcServer, Path],
) -> None:
    """The HIL server's MaxNodesPerRead (``hil.opcua_limits``) as another stack reads it: the
    advertised value, and a Read over it refused whole with BadTooManyOperations."""
    server, cert = plc
    server.limits = OperationLimits(read=3)
    await advertise(server.server, server.limits)
    tags = ["reactor_temp", "conc_a", "conc_b", "jacket_temp"]

    def session() -> tuple[int, str, list[float]]:
        with _legacy(server.url, cert, "operator") as client:
            limit = client.get_node(lua.NodeId(11705, 0)).get_value()  # MaxNodesPerRead
            nodes = [client.get_node(f"ns=2;s=cstr.{t}") for t in tags]
            over = _status_of(lambda: client.get_values(nodes))
            return int(limit), over, list(client.get_values(nodes[:3]))

    limit, over, values = await _in_thread(session)
    assert (limit, over) == (3, "BadTooManyOperations")
    assert values[:2] == [85.25, 2.5]
