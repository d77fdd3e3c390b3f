"""OpcUaPort against a real asyncua server on 127.0.0.1 (tests/opcua_server.py), never mocks.

Faults are injected on the server side: Bad/Uncertain status and old timestamps, a changed
DataType, a range check, a slow read, a stop and restart, users, certificates.
"""

from __future__ import annotations

import asyncio
import ipaddress
import math
import re
import socket
import time
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from asyncua import Client, ua
from conftest import free_port
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from controller.clock import Clock, RealClock, SteppedClock
from controller.errors import PortConnectError, PortError, PortTimeoutError
from controller.ports.base import Quality, WriteStatus
from controller.ports.opcua import OpcUaPort
from controller.ports.settings import Backoff, Connection, OpcUaOptions, OpcUaSecurity
from controller.tags import Direction, OpcUaSpec, Tag, TagMap, load_tag_map
from hil.servers.opcua import OpcUaPlcServer
from hil.servers.opcua_cache import address_space_shelf
from hil.servers.opcua_nodes import NAMESPACE
from hil.servers.opcua_security import ServerSecurity

pytestmark = pytest.mark.timeout(60)

ROOT = Path(__file__).resolve().parents[3]
SERVER_URI = "urn:pharmatwin:test-plc:server"
CLIENT_URI = "urn:pharmatwin:controller"
PASSWORD = "s3cret-feed"
FAST_BACKOFF = Backoff(initial_s=0.05, max_s=0.2, factor=2.0)
INITIAL = {
    "feed_rate_sp": 0.05,
    "feed_rate_pv": 0.048,
    "biomass": 4.25,
    "substrate": 1.5,
    "product_titer": 0.75,
    "broth_volume": 6.5,
    "mpc_heartbeat": 7,
    "plc_heartbeat": 17,
    "plc_scan_counter": 1234,
    "mpc_request": 0,
    "mpc_permissive": 1,
    "mpc_active": 0,
    "mpc_fallback_alarm": 1,
    "interlock_active": 0,
    "operator_reset": 0,
    "measurement_validity": 0b101,
}


# ---------------------------------------------------------------------- fixtures
@pytest.fixture(scope="module")
def tag_map() -> TagMap:
    return load_tag_map(ROOT / "configs/tags/bioreactor.yaml")


@pytest.fixture(scope="module")
def shelf(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return asyncio.run(address_space_shelf(tmp_path_factory.mktemp("opcua-shelf")))


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Self-signed application certificates: the PLC, an impostor PLC and the controller."""
    folder = tmp_path_factory.mktemp("opcua-certs")
    _certificate(folder, "server", SERVER_URI, ExtendedKeyUsageOID.SERVER_AUTH, pem=False)
    _certificate(folder, "impostor", SERVER_URI, ExtendedKeyUsageOID.SERVER_AUTH, pem=False)
    _certificate(folder, "client", CLIENT_URI, ExtendedKeyUsageOID.CLIENT_AUTH, pem=True)
    return folder


def _certificate(
    folder: Path, name: str, uri: str, usage: x509.ObjectIdentifier, pem: bool
) -> None:
    """An OPC UA application instance certificate: SAN URI = application URI, key usages."""
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"PharmaTwin {name}")])
    now = datetime.now(UTC)
    san = [
        x509.UniformResourceIdentifier(uri),
        x509.DNSName("localhost"),
        x509.DNSName(socket.gethostname()),
        x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
    ]
    usages = x509.KeyUsage(
        digital_signature=True,
        content_commitment=True,
        key_encipherment=True,
        data_encipherment=True,
        key_agreement=False,
        key_cert_sign=False,
        crl_sign=False,
        encipher_only=False,
        decipher_only=False,
    )
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(minutes=5))
        .not_valid_after(now + timedelta(days=30))
        .add_extension(x509.SubjectAlternativeName(san), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(usages, critical=True)
        .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    encoding = serialization.Encoding.PEM if pem else serialization.Encoding.DER
    (folder / f"{name}.{'pem' if pem else 'der'}").write_bytes(cert.public_bytes(encoding))
    (folder / f"{name}-key.pem").write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )


def _connection(
    port: int,
    *,
    timeout_s: float = 1.0,
    subscription: bool = False,
    security: OpcUaSecurity | None = None,
    username: str | None = None,
    backoff: Backoff = FAST_BACKOFF,
) -> Connection:
    return Connection(
        protocol="opcua",
        host="127.0.0.1",
        port=port,
        timeout_s=timeout_s,
        backoff=backoff,
        opcua=OpcUaOptions(
            security=security or OpcUaSecurity(),
            username=username,
            password_env="PHARMATWIN_TEST_PASSWORD" if username else None,
            subscription=subscription,
            publishing_interval_ms=50,
        ),
    )


SECURE = OpcUaSecurity(
    policy="Basic256Sha256",
    mode="SignAndEncrypt",
    certificate="client.pem",
    private_key="client-key.pem",
    trust_list=("server.der",),
)


@pytest.fixture
async def plc(tag_map: TagMap, shelf: Path) -> AsyncIterator[OpcUaPlcServer]:
    async with OpcUaPlcServer(tag_map, free_port(), initial=INITIAL, shelf=shelf) as server:
        yield server


def _port(
    tag_map: TagMap,
    connection: Connection,
    password: str | None = None,
    base_dir: Path | None = None,
    clock: Clock | None = None,
) -> OpcUaPort:
    clock = clock or RealClock()
    return OpcUaPort(tag_map, connection, clock, password=password, base_dir=base_dir)


def readable(tag_map: TagMap) -> list[str]:
    return [n for n, t in tag_map.tags.items() if t.readable]


# ---------------------------------------------------------------------- read and write
async def test_reads_every_tag_and_writes_every_writable_tag_with_one_call_each(
    tag_map: TagMap, plc: OpcUaPlcServer
) -> None:
    async with _port(tag_map, _connection(plc.port)) as port:
        for _cycle in range(3):
            before = plc.read_requests
            snap = await port.read(readable(tag_map))
            assert plc.read_requests - before == 1  # ONE Read service call per cycle
            assert snap.bad(readable(tag_map)) == []
            numbers = snap.numbers()  # tags without an initial value start at 0
            assert numbers == pytest.approx({n: INITIAL.get(n, 0.0) for n in numbers})
            assert set(INITIAL) <= set(numbers)
        setpoints = {
            "feed_rate_sp": 0.125,
            "mpc_heartbeat": 42,
            "mpc_request": 1,
            "operator_reset": 1,
        }
        assert set(setpoints) == {  # publications: tests/controller/twin/test_publish.py
            n for n, t in tag_map.tags.items() if t.writable and t.publishes is None
        }
        reads, writes = plc.read_requests, plc.write_requests
        report = await port.write(setpoints)
        assert report.ok, report.failed()
        assert {t: r.readback for t, r in report.results.items()} == setpoints
        assert (plc.write_requests - writes, plc.read_requests - reads) == (1, 1)
    assert plc.value("feed_rate_sp") == 0.125
    assert plc.value("mpc_heartbeat") == 42
    assert plc.value("mpc_request") == 1


async def test_subscription_mode_reads_the_same_values(
    tag_map: TagMap, plc: OpcUaPlcServer
) -> None:
    async with (
        _port(tag_map, _connection(plc.port)) as polling,
        _port(tag_map, _connection(plc.port, subscription=True)) as subscribed,
    ):
        polled = await polling.read(readable(tag_map))
        before = plc.read_requests
        cached = await subscribed.read(readable(tag_map))
        assert plc.read_requests == before  # served from the subscription, no Read call
        assert cached.numbers() == polled.numbers()
        assert cached.bad(readable(tag_map)) == []
        await plc.set_value("biomass", 5.5)
        deadline = time.monotonic() + 5.0
        while (await subscribed.read(["biomass"]))["biomass"].value != 5.5:
            assert time.monotonic() < deadline, "the data change never arrived"
            await asyncio.sleep(0.02)


async def test_bad_and_uncertain_status_give_quality_and_keep_source_time(
    tag_map: TagMap, plc: OpcUaPlcServer
) -> None:
    old = datetime.now(UTC) - timedelta(seconds=120)
    await plc.set_value("biomass", 4.0, status="BadSensorFailure")
    await plc.set_value("substrate", 1.2, status="UncertainLastUsableValue", source_time=old)
    async with _port(tag_map, _connection(plc.port)) as port:
        snap = await port.read(["biomass", "substrate", "product_titer"])
    biomass, substrate = snap["biomass"], snap["substrate"]
    assert biomass.quality is Quality.BAD and biomass.detail == "BadSensorFailure"
    assert math.isnan(biomass.value)  # the server nulls a Bad value
    assert substrate.quality is Quality.UNCERTAIN
    assert substrate.detail == "UncertainLastUsableValue" and substrate.value == 1.2
    assert substrate.age(snap.read_time) == pytest.approx(120.0, abs=2.0)
    assert snap.stale({"substrate": 30.0, "product_titer": 30.0}, snap.read_time) == ["substrate"]
    assert snap.bad(["biomass", "substrate", "product_titer"]) == ["biomass", "substrate"]


# ---------------------------------------------------------------------- address checks
async def test_node_type_mismatch_is_a_port_error_at_connect(
    tag_map: TagMap, plc: OpcUaPlcServer
) -> None:
    await plc.set_data_type("biomass", "Float")
    with pytest.raises(PortError) as err:
        await _port(tag_map, _connection(plc.port)).connect()
    msg = str(err.value)
    assert "biomass" in msg and "ns=2;s=bioreactor.biomass" in msg
    assert "expects Double" in msg and "is Float" in msg


async def test_unknown_node_and_browse_paths_are_checked_at_connect(
    tag_map: TagMap, plc: OpcUaPlcServer
) -> None:
    by_path = Tag(
        unit="g/L",
        direction=Direction.READ,
        opcua=OpcUaSpec(browse_path=("0:Objects", "2:bioreactor", "2:bioreactor", "2:biomass")),
    )
    ghost = Tag(
        unit="-", direction=Direction.READ, opcua=OpcUaSpec(node_id="ns=2;s=bioreactor.ghost")
    )
    with_path = TagMap(name="bioreactor", tags={**tag_map.tags, "biomass_by_path": by_path})
    async with _port(with_path, _connection(plc.port)) as port:
        assert (await port.read(["biomass_by_path"]))["biomass_by_path"].value == 4.25
    lost = Tag(
        unit="-",
        direction=Direction.READ,
        opcua=OpcUaSpec(browse_path=("0:Objects", "2:bioreactor", "2:bioreactor", "2:nope")),
    )
    broken = TagMap(name="bioreactor", tags={**tag_map.tags, "ghost": ghost, "lost": lost})
    with pytest.raises(PortError) as err:  # every problem in one error
        await _port(broken, _connection(plc.port)).connect()
    msg = str(err.value)
    assert "'ghost' (node ns=2;s=bioreactor.ghost): BadNodeIdUnknown" in msg
    assert "'lost': browse path 0:Objects/2:bioreactor/2:bioreactor/2:nope not found" in msg


def _by_uri(tag_map: TagMap, uri: str = NAMESPACE) -> TagMap:
    """The map with every node id named by namespace URI (``nsu=``) instead of index."""
    tags = {}
    for name, tag in tag_map.tags.items():
        spec = tag.opcua
        if spec is not None and spec.node_id is not None:
            node_id = spec.node_id.replace("ns=2;", f"nsu={uri};")
            tag = tag.model_copy(update={"opcua": spec.model_copy(update={"node_id": node_id})})
        tags[name] = tag
    return tag_map.model_copy(update={"tags": tags})


async def test_node_ids_by_namespace_uri_resolve_at_connect(
    tag_map: TagMap, plc: OpcUaPlcServer
) -> None:
    by_uri = _by_uri(tag_map)
    node = by_uri.tags["biomass"].opcua
    assert node is not None and node.node_id == f"nsu={NAMESPACE};s=bioreactor.biomass"
    # The failure it avoids: an nsu= node id put on the wire as it is names no node.
    async with Client(plc.url, timeout=2) as client:
        read = ua.ReadValueId(NodeId=ua.NodeId.from_string(node.node_id), AttributeId=13)
        dv = (await client.uaclient.read(ua.ReadParameters(NodesToRead=[read])))[0]
        assert dv.StatusCode is not None and dv.StatusCode.name == "BadNodeIdUnknown"
    async with _port(by_uri, _connection(plc.port)) as port:
        snap = await port.read(readable(by_uri))
        assert snap.bad(readable(by_uri)) == []
        assert snap["biomass"].value == 4.25 and snap["mpc_permissive"].value == 1.0
        assert (await port.write({"feed_rate_sp": 0.125})).ok
    assert plc.value("feed_rate_sp") == 0.125


async def test_a_node_id_problem_is_reported_as_one_never_as_a_timeout(
    tag_map: TagMap, plc: OpcUaPlcServer
) -> None:
    def tag(node_id: str) -> Tag:
        return Tag(unit="-", direction=Direction.READ, opcua=OpcUaSpec(node_id=node_id))

    broken = TagMap(
        name="bioreactor",
        tags={
            **_by_uri(tag_map).tags,
            "elsewhere": tag("nsu=urn:other-plc;s=bioreactor.biomass"),
            "no_index": tag("ns=7;s=bioreactor.biomass"),
            "garbled": tag("ns=2;x=biomass"),
        },
    )
    started = time.monotonic()
    with pytest.raises(PortError) as err:
        await _port(broken, _connection(plc.port, timeout_s=5.0)).connect()
    assert not isinstance(err.value, PortTimeoutError)
    assert time.monotonic() - started < 2.5  # answered, not waited out (timeout 5 s)
    msg = str(err.value)
    assert "tag 'elsewhere': 'nsu=urn:other-plc;s=bioreactor.biomass': the server has no " in msg
    assert "namespace 'urn:other-plc'; its namespaces: [" in msg and NAMESPACE in msg
    assert "tag 'no_index': 'ns=7;s=bioreactor.biomass': the server has no namespace index 7" in msg
    assert "tag 'garbled': 'ns=2;x=biomass' is not a node id" in msg


# ---------------------------------------------------------------------- refused writes
async def test_write_outside_the_plc_range_is_rejected_with_its_status(
    tag_map: TagMap, plc: OpcUaPlcServer
) -> None:
    plc.set_range("feed_rate_sp", 0.0, 0.1)
    async with _port(tag_map, _connection(plc.port)) as port:
        report = await port.write({"feed_rate_sp": 0.15})  # inside the tag limits [0, 0.2]
    result = report.results["feed_rate_sp"]
    assert result.status is WriteStatus.REJECTED
    assert "BadOutOfRange" in result.detail and "ns=2;s=bioreactor.feed_rate_sp" in result.detail
    assert plc.value("feed_rate_sp") == INITIAL["feed_rate_sp"]


async def test_invalid_writes_are_refused_before_anything_is_sent(
    tag_map: TagMap, plc: OpcUaPlcServer
) -> None:
    async with _port(tag_map, _connection(plc.port)) as port:
        before = plc.write_requests
        report = await port.write(
            {
                "biomass": 3.0,  # read-only
                "mpc_heartbeat": 70000,  # outside the tag limits [0, 65535]
                "feed_rate_sp": 0.1,  # valid, so NOT_SENT
            }
        )
        assert plc.write_requests == before
        one = await port.write({"feed_rate_sp": math.nan, "no_such_tag": 1.0})
        two = await port.write({"feed_rate_sp": 0.3, "mpc_request": 2})
        assert plc.write_requests == before
    status = {t: r.status for t, r in report.results.items()}
    assert status == {
        "biomass": WriteStatus.REJECTED,
        "mpc_heartbeat": WriteStatus.REJECTED,
        "feed_rate_sp": WriteStatus.NOT_SENT,
    }
    assert "read-only" in report.results["biomass"].detail
    assert "65535" in report.results["mpc_heartbeat"].detail
    assert "not a finite number" in one.results["feed_rate_sp"].detail
    assert "unknown tag" in one.results["no_such_tag"].detail
    assert "outside the tag limits" in two.results["feed_rate_sp"].detail
    assert "Boolean" in two.results["mpc_request"].detail
    assert plc.value("feed_rate_sp") == INITIAL["feed_rate_sp"]


async def test_not_representable_value_is_refused(tag_map: TagMap, plc: OpcUaPlcServer) -> None:
    """70000 does not fit a UInt16 node, even for a tag whose limits would allow it."""
    wide = tag_map.tags["mpc_heartbeat"].model_copy(update={"limits": (0.0, 1e6)})
    loose = TagMap(name="bioreactor", tags={**tag_map.tags, "mpc_heartbeat": wide})
    async with _port(loose, _connection(plc.port)) as port:
        report = await port.write({"mpc_heartbeat": 70000})
    result = report.results["mpc_heartbeat"]
    assert result.status is WriteStatus.REJECTED and "UInt16" in result.detail


async def test_unknown_and_write_only_tags_are_not_read(
    tag_map: TagMap, plc: OpcUaPlcServer
) -> None:
    heartbeat_out = Tag(
        unit="count",
        direction=Direction.WRITE,
        opcua=OpcUaSpec(node_id="ns=2;s=bioreactor.mpc_heartbeat", data_type="UInt16"),
    )
    with_out = TagMap(name="bioreactor", tags={**tag_map.tags, "heartbeat_out": heartbeat_out})
    async with _port(with_out, _connection(plc.port)) as port:
        before = plc.read_requests
        with pytest.raises(PortError, match="no_such_tag"):
            await port.read(["biomass", "no_such_tag"])
        with pytest.raises(PortError, match=r"heartbeat_out.*write-only"):
            await port.read(["heartbeat_out"])
        assert plc.read_requests == before  # refused before anything was sent
        result = (await port.write({"heartbeat_out": 9})).results["heartbeat_out"]
        assert plc.read_requests == before  # a write-only tag is not read back
    assert result.status is WriteStatus.OK and "no read-back" in result.detail
    assert plc.value("mpc_heartbeat") == 9


# ---------------------------------------------------------------------- connection faults
async def test_server_absent_at_start_is_a_connect_error(tag_map: TagMap) -> None:
    connection = _connection(free_port())
    with pytest.raises(PortConnectError, match=connection.url):
        async with _port(tag_map, connection):
            pass


async def test_reconnects_with_backoff_after_the_server_comes_back(
    tag_map: TagMap, plc: OpcUaPlcServer
) -> None:
    """Backoff 0.2 s, x2 on the port's (stepped) clock: the loss, a refused attempt, a wait
    without I/O, the server back; no wall-clock sleep times the backoff."""
    backoff = Backoff(initial_s=0.2, max_s=1.0, factor=2.0)
    clock = SteppedClock(0.0)
    async with _port(tag_map, _connection(plc.port, backoff=backoff), clock=clock) as port:
        assert (await port.read(["biomass"]))["biomass"].value == 4.25
        await plc.stop()
        deadline = time.monotonic() + 5.0
        while True:  # the client notices the loss on its own (asyncua's connection watch)
            try:
                await port.read(["biomass"])
            except PortConnectError as exc:
                assert "lost the connection to" in str(exc), exc
                assert "next attempt on a read after 0.20 s" in str(exc), exc
                break
            assert time.monotonic() < deadline, "never noticed the loss"
            await asyncio.sleep(0.02)
        with pytest.raises(PortConnectError, match=r"next attempt on a read after 0\.20 s"):
            await port.read(["biomass"])  # the clock has not moved: no attempt
        clock.advance(0.2)  # the first delay is over: a real attempt
        with pytest.raises(PortConnectError, match=re.escape(plc.url) + ".*ConnectionRefused"):
            await port.read(["biomass"])
        clock.advance(0.3)
        with pytest.raises(PortConnectError, match=r"next attempt on a read after 0\.10 s"):
            await port.write({"feed_rate_sp": 0.1})  # within the 0.4 s delay: no network
        await plc.start()
        deadline = time.monotonic() + 5.0
        while True:  # the server may refuse while it finishes starting: a longer delay then
            clock.advance(backoff.max_s)
            try:
                snap = await port.read(["biomass"])
                break
            except PortConnectError:
                assert time.monotonic() < deadline, "never reconnected"
                await asyncio.sleep(0.05)
        assert snap["biomass"].value == 4.25
        assert (await port.write({"feed_rate_sp": 0.1})).ok


async def test_slow_server_is_a_timeout_and_the_next_cycle_works(
    tag_map: TagMap, plc: OpcUaPlcServer
) -> None:
    """The server answers every Read 1 s late (latency); the port's timeout is 0.3 s. The
    connect (several requests) may itself take longer than 0.3 s on a busy machine: it is
    tried again until it is made (it is not what is tested here)."""
    port = _port(tag_map, _connection(plc.port, timeout_s=0.3))
    deadline = time.monotonic() + 20.0
    while True:
        try:
            await port.connect()
            break
        except PortTimeoutError:
            assert time.monotonic() < deadline, "could not connect with a 0.3 s timeout"
    try:
        plc.latency = 1.0
        started = time.monotonic()
        with pytest.raises(PortTimeoutError, match=r"0\.3 s"):
            await port.read(["biomass"])
        assert time.monotonic() - started < plc.latency
        plc.latency = 0.0
        deadline = time.monotonic() + 5.0
        while True:  # the late answer is dropped; asyncua may also have declared a loss
            try:
                assert (await port.read(["biomass"]))["biomass"].value == 4.25
                break
            except (PortTimeoutError, PortConnectError):
                assert time.monotonic() < deadline, "never recovered from the slow read"
                await asyncio.sleep(0.05)
    finally:
        await port.close()


# ---------------------------------------------------------------------- security
@pytest.fixture
async def secure_plc(tag_map: TagMap, shelf: Path, certs: Path) -> AsyncIterator[OpcUaPlcServer]:
    security = ServerSecurity(certs / "server.der", certs / "server-key.pem", SERVER_URI)
    async with OpcUaPlcServer(
        tag_map,
        free_port(),
        initial=INITIAL,
        users={"operator": PASSWORD},
        allow_anonymous=False,
        security=security,
        shelf=shelf,
    ) as server:
        yield server


async def test_sign_and_encrypt_with_certificates_and_login_works(
    tag_map: TagMap, secure_plc: OpcUaPlcServer, certs: Path
) -> None:
    connection = _connection(secure_plc.port, security=SECURE, username="operator")
    async with _port(tag_map, connection, password=PASSWORD, base_dir=certs) as port:
        assert (await port.read(["biomass"]))["biomass"].value == 4.25
        assert (await port.write({"feed_rate_sp": 0.11})).ok
    assert secure_plc.value("feed_rate_sp") == 0.11
    # The server offers SignAndEncrypt only: a session over policy None is refused by the
    # server itself (CreateSession), before the client could look at the endpoints.
    plain = _connection(secure_plc.port, username="operator")
    with pytest.raises(PortConnectError, match="BadSecurityPolicyRejected"):
        await _port(tag_map, plain, password=PASSWORD).connect()


async def test_wrong_password_is_refused(
    tag_map: TagMap, secure_plc: OpcUaPlcServer, certs: Path
) -> None:
    connection = _connection(secure_plc.port, security=SECURE, username="operator")
    with pytest.raises(PortConnectError, match="refused the user 'operator'"):
        await _port(tag_map, connection, password="wrong", base_dir=certs).connect()


async def test_anonymous_is_refused_when_the_server_forbids_it(
    tag_map: TagMap, secure_plc: OpcUaPlcServer, certs: Path
) -> None:
    connection = _connection(secure_plc.port, security=SECURE)
    with pytest.raises(PortConnectError, match="refused the anonymous user"):
        await _port(tag_map, connection, base_dir=certs).connect()


async def test_untrusted_server_certificate_is_refused(
    tag_map: TagMap, secure_plc: OpcUaPlcServer, certs: Path
) -> None:
    impostor_only = SECURE.model_copy(update={"trust_list": ("impostor.der",)})
    connection = _connection(secure_plc.port, security=impostor_only, username="operator")
    with pytest.raises(PortConnectError, match="not trusted"):
        await _port(tag_map, connection, password=PASSWORD, base_dir=certs).connect()
