"""The HIL servers seen by independent clients: plain pymodbus and asyncua; only the last
section connects our OPC UA port, with the shipped secured site file, end to end.

The tag map is the CSTR's (``configs/tags/cstr.yaml``): float32 in ABCD and DCBA order, int16
with a scale, uint16 counters, coils and discrete inputs, and the same tags as OPC UA nodes.
Modbus registers are converted with pymodbus's own helpers, not with our codecs.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import dbm
import ipaddress
import json
import logging
import math
import os
import stat
import sys
import time
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Literal

import pytest
from asyncua import Client, ua
from asyncua.crypto.security_policies import SecurityPolicyBasic256Sha256
from conftest import LOOPBACK, free_port
from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from pymodbus.client import AsyncModbusTcpClient
from pymodbus.exceptions import ModbusException

from controller.clock import RealClock
from controller.codecs import DataType, Order
from controller.errors import ConfigError, PortConnectError
from controller.ports.opcua import OpcUaPort
from controller.runtime.site import Site, load_site
from controller.tags import ModbusSpec, Table, TagMap, load_tag_map
from hil.servers.certs import CertificateAuthority, ensure_server_certificate, load_certificate
from hil.servers.modbus import ModbusPlcServer, modbus_server_for_site
from hil.servers.opcua import OpcUaPlcServer, opcua_server_for_site
from hil.servers.opcua_cache import (
    address_space_shelf,
    cache_problem,
    dbm_backend,
    default_cache_dir,
)
from hil.servers.opcua_nodes import CEFACT, NAMESPACE, UNECE_UNITS
from hil.servers.pki import (
    CA_CERTIFICATE_FILE,
    CA_KEY_FILE,
    CLIENT_CERTIFICATE_FILE,
    CLIENT_KEY_FILE,
    make_test_pki,
)
from hil.servers.pki import CLIENT_URI as PKI_URI
from hil.servers.pki import main as certs_main
from hil.site import hil_section, with_hil

pytestmark = pytest.mark.timeout(60)

ROOT = Path(__file__).resolve().parents[2]
PKI = ROOT / "configs" / "pki"
TAGS = load_tag_map(ROOT / "configs/tags/cstr.yaml")
SITE_NAME = "cstr-line-1"
VALUES = {
    "feed_dilution_sp": 12.5,
    "jacket_duty_sp": -2000.0,
    "feed_dilution_pv": 12.25,
    "jacket_duty_pv": -1999.5,
    "conc_a": 2.5,
    "conc_b": 0.875,
    "reactor_temp": 85.25,
    "jacket_temp": 80.5,
    "mpc_heartbeat": 7,
    "plc_heartbeat": 42,
    "plc_scan_counter": 1234,
    "mpc_request": 1,
    "mpc_permissive": 1,
    "mpc_active": 0,
    "mpc_fallback_alarm": 1,
    "interlock_active": 0,
    "operator_reset": 0,
    "measurement_validity": 0b1011,
    "write_refusal_code": 2,
    "write_refusal_function": 16,
    "write_refusal_address": 2,
    "write_refusal_count": 17,
}
WRITES = {
    "feed_dilution_sp": 20.0,
    "jacket_duty_sp": -3000.0,
    "mpc_heartbeat": 8,
    "mpc_request": 0,
    "operator_reset": 1,
}
PASSWORD = "s3cret-jacket"
CLIENT_URI = "urn:pharmatwin:test-client"
LATENCY = 0.25


# ---------------------------------------------------------------------- helpers
_DATATYPE = {
    DataType.INT16: AsyncModbusTcpClient.DATATYPE.INT16,
    DataType.UINT16: AsyncModbusTcpClient.DATATYPE.UINT16,
    DataType.INT32: AsyncModbusTcpClient.DATATYPE.INT32,
    DataType.UINT32: AsyncModbusTcpClient.DATATYPE.UINT32,
    DataType.FLOAT32: AsyncModbusTcpClient.DATATYPE.FLOAT32,
    DataType.FLOAT64: AsyncModbusTcpClient.DATATYPE.FLOAT64,
}


def _swap_bytes(registers: list[int]) -> list[int]:
    return [((r & 0xFF) << 8) | (r >> 8) for r in registers]


def _word_order(spec: ModbusSpec) -> Literal["big", "little"]:
    return "little" if spec.order in (Order.CDAB, Order.DCBA) else "big"


def from_registers(spec: ModbusSpec, registers: list[int]) -> float:
    """pymodbus's conversion; BADC/DCBA are its CDAB/ABCD with the bytes of each word swapped."""
    if spec.order in (Order.BADC, Order.DCBA):
        registers = _swap_bytes(registers)
    words = _word_order(spec)
    raw = AsyncModbusTcpClient.convert_from_registers(registers, _DATATYPE[spec.type], words)
    assert isinstance(raw, int | float)
    return raw * spec.scale + spec.offset


def to_registers(spec: ModbusSpec, value: float) -> list[int]:
    raw: float = (value - spec.offset) / spec.scale
    if spec.type not in (DataType.FLOAT32, DataType.FLOAT64):
        raw = round(raw)
    words = _word_order(spec)
    registers = AsyncModbusTcpClient.convert_to_registers(raw, _DATATYPE[spec.type], words)
    return _swap_bytes(registers) if spec.order in (Order.BADC, Order.DCBA) else registers


def spec(tag: str) -> ModbusSpec:
    found = TAGS.tags[tag].modbus
    assert found is not None
    return found


async def modbus_read(client: AsyncModbusTcpClient, tag: str) -> float:
    s = spec(tag)
    at, n = s.protocol_address, s.count
    reader = {
        Table.COIL: client.read_coils,
        Table.DISCRETE: client.read_discrete_inputs,
        Table.HOLDING: client.read_holding_registers,
        Table.INPUT: client.read_input_registers,
    }[s.table]
    answer = await reader(at, count=n, device_id=s.unit_id)
    assert not answer.isError(), (tag, answer)
    if s.table in (Table.COIL, Table.DISCRETE):
        return float(answer.bits[0])
    return from_registers(s, list(answer.registers))


async def modbus_write(client: AsyncModbusTcpClient, tag: str, value: float) -> int | None:
    """Write one tag; the exception code if the server refused it, else None."""
    s = spec(tag)
    if s.table is Table.COIL:
        answer = await client.write_coil(s.protocol_address, bool(value), device_id=s.unit_id)
    else:
        answer = await client.write_registers(
            s.protocol_address, to_registers(s, value), device_id=s.unit_id
        )
    return int(answer.exception_code) if answer.isError() else None


def node_id(tag: str) -> str:
    opcua = TAGS.tags[tag].opcua
    assert opcua is not None and opcua.node_id is not None
    return opcua.node_id


async def ua_data_value(client: Client, tag: str) -> ua.DataValue:
    return await client.get_node(node_id(tag)).read_data_value(raise_on_bad_status=False)


async def ua_write(client: Client, tag: str, value: float) -> None:
    node = client.get_node(node_id(tag))
    vtype = await node.read_data_type_as_variant_type()
    python = bool(value) if vtype == ua.VariantType.Boolean else value
    if vtype not in (ua.VariantType.Boolean, ua.VariantType.Float, ua.VariantType.Double):
        python = int(value)
    await node.write_value(ua.DataValue(ua.Variant(python, vtype)))


def status_name(dv: ua.DataValue) -> str:
    assert dv.StatusCode is not None
    return dv.StatusCode.name


# ---------------------------------------------------------------------- fixtures
@pytest.fixture(scope="module")
def shelf(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return asyncio.run(address_space_shelf(tmp_path_factory.mktemp("shelf")))


@pytest.fixture
async def modbus() -> AsyncIterator[ModbusPlcServer]:
    async with ModbusPlcServer(TAGS) as server:
        await server.publish(VALUES)
        yield server


@pytest.fixture
async def mb(modbus: ModbusPlcServer) -> AsyncIterator[AsyncModbusTcpClient]:
    client = AsyncModbusTcpClient(LOOPBACK, port=modbus.port, retries=0, reconnect_delay=0)
    await client.connect()
    assert client.connected
    yield client
    client.close()


@pytest.fixture
async def opcua(shelf: Path) -> AsyncIterator[OpcUaPlcServer]:
    server = OpcUaPlcServer(TAGS, site_name=SITE_NAME, initial=VALUES, shelf=shelf)
    async with server:
        yield server


@pytest.fixture
async def uac(opcua: OpcUaPlcServer) -> AsyncIterator[Client]:
    client = Client(opcua.url, timeout=3)
    async with client:
        yield client


# ---------------------------------------------------------------------- every tag
async def test_modbus_reads_and_writes_every_tag(
    modbus: ModbusPlcServer, mb: AsyncModbusTcpClient
) -> None:
    # publications (direction publish) are the twin's: tests/controller/twin/test_publish.py
    plc_tags = [n for n, t in TAGS.tags.items() if t.publishes is None]
    assert {t: await modbus_read(mb, t) for t in plc_tags} == pytest.approx(VALUES)
    assert set(WRITES) == {n for n in plc_tags if TAGS.tags[n].writable}
    for tag, value in WRITES.items():
        assert await modbus_write(mb, tag, value) is None, tag
        assert modbus.value(tag) == pytest.approx(value), tag
        assert await modbus_read(mb, tag) == pytest.approx(value), tag


async def test_opcua_reads_and_writes_every_tag(opcua: OpcUaPlcServer, uac: Client) -> None:
    for tag, expected in VALUES.items():
        dv = await ua_data_value(uac, tag)
        assert status_name(dv) == "Good", tag
        assert dv.Value is not None and float(dv.Value.Value) == pytest.approx(expected), tag
    for tag, value in WRITES.items():
        await ua_write(uac, tag, value)
        assert opcua.value(tag) == pytest.approx(value), tag
    with pytest.raises(ua.UaStatusCodeError, match="BadNotWritable"):
        await ua_write(uac, "conc_a", 1.0)  # read-only tag


# ---------------------------------------------------------------------- the PLC's hook
async def test_modbus_write_hook_sees_values_and_refuses_whole_requests(
    modbus: ModbusPlcServer, mb: AsyncModbusTcpClient, caplog: pytest.LogCaptureFixture
) -> None:
    heard: list[tuple[str, float]] = []

    def hook(tag: str, value: float) -> str | None:
        heard.append((tag, value))
        return "rate limit" if tag == "jacket_duty_sp" and value < -2500 else None

    modbus.write_hook = hook
    both = to_registers(spec("feed_dilution_sp"), 20.0) + to_registers(
        spec("jacket_duty_sp"), -2400
    )
    assert not (await mb.write_registers(0, both, device_id=1)).isError()
    assert heard == [("feed_dilution_sp", 20.0), ("jacket_duty_sp", -2400.0)]  # engineering
    assert await modbus_write(mb, "mpc_request", 0) is None
    assert heard[-1] == ("mpc_request", 0.0)

    heard.clear()
    refused = to_registers(spec("feed_dilution_sp"), 30.0) + to_registers(
        spec("jacket_duty_sp"), -2600.0
    )
    with caplog.at_level(logging.INFO, logger="hil.servers.modbus"):
        answer = await mb.write_registers(0, refused, device_id=1)
    assert answer.isError() and answer.exception_code == 3  # illegal data value
    assert heard == [("feed_dilution_sp", 30.0), ("jacket_duty_sp", -2600.0)]
    assert (modbus.value("feed_dilution_sp"), modbus.value("jacket_duty_sp")) == (20.0, -2400.0)
    assert "jacket_duty_sp = -2600.0: rate limit" in caplog.text


async def test_opcua_write_hook_refusal_status_says_why(
    opcua: OpcUaPlcServer, uac: Client, caplog: pytest.LogCaptureFixture
) -> None:
    """The PLC's reason picks the status: not active, interlock, rate limit, outside limits."""
    heard: list[tuple[str, float]] = []
    reasons = {
        60.0: "remote setpoints are accepted only while the MPC is active",
        61.0: "interlock runaway tripped",
        62.0: "move +49 in 9 s exceeds the PLC rate limit 0.56/s",
        63.0: "feed_dilution_sp=63 outside the PLC range [5, 50]",
    }

    def hook(tag: str, value: float) -> str | None:
        heard.append((tag, value))
        return reasons.get(value) if tag == "feed_dilution_sp" else None

    opcua.write_hook = hook
    await ua_write(uac, "feed_dilution_sp", 20.0)
    await ua_write(uac, "mpc_request", 0)
    assert heard == [("feed_dilution_sp", 20.0), ("mpc_request", 0.0)]
    expected = ["BadInvalidState", "BadLocked", "BadOutOfRange", "BadOutOfRange"]
    with caplog.at_level(logging.INFO, logger="pharmatwin.hil.opcua"):
        for value, status in zip(reasons, expected, strict=True):
            with pytest.raises(ua.UaStatusCodeError, match=status):
                await ua_write(uac, "feed_dilution_sp", value)
    assert opcua.value("feed_dilution_sp") == 20.0  # unchanged
    assert "feed_dilution_sp = 60.0 by an anonymous user: not active: remote" in caplog.text
    assert "interlock: interlock runaway tripped (BadLocked)" in caplog.text
    assert "over the rate limit: move +49" in caplog.text
    assert "outside limits: feed_dilution_sp=63" in caplog.text
    with pytest.raises(ua.UaStatusCodeError, match="BadNotWritable"):
        await ua_write(uac, "conc_a", 1.0)
    assert heard[-1] == ("feed_dilution_sp", 63.0)  # not asked about a read-only tag


# ---------------------------------------------------------------------- publish and quality
async def test_publish_sets_values_and_bad_quality(
    modbus: ModbusPlcServer, mb: AsyncModbusTcpClient, opcua: OpcUaPlcServer, uac: Client
) -> None:
    stamp = datetime.now(UTC) - timedelta(seconds=30)
    image = {"conc_a": 3.0, "conc_b": 0.5, "plc_scan_counter": 1235, "mpc_active": 1}
    for server in (modbus, opcua):
        await server.publish(image, bad={"conc_b"}, source_time=stamp)
    # Modbus has no quality: the value is written all the same.
    assert [await modbus_read(mb, t) for t in image] == [3.0, 0.5, 1235, 1]
    conc_a, conc_b = await ua_data_value(uac, "conc_a"), await ua_data_value(uac, "conc_b")
    assert status_name(conc_a) == "Good" and conc_a.Value is not None
    assert conc_a.Value.Value == 3.0 and conc_a.SourceTimestamp == stamp
    assert status_name(conc_b) == "BadSensorFailure"
    assert conc_b.SourceTimestamp == stamp
    assert math.isnan(opcua.value("conc_b"))
    assert (await ua_data_value(uac, "mpc_active")).Value.Value is True  # type: ignore[union-attr]
    await opcua.publish({"conc_b": 0.625})
    assert (await ua_data_value(uac, "conc_b")).Value.Value == 0.625  # type: ignore[union-attr]
    with pytest.raises(ValueError, match="plc_scan_counter"):
        await opcua.publish({"conc_a": 9.0, "plc_scan_counter": 70000})  # UInt16
    assert opcua.value("conc_a") == 3.0  # nothing was set


# ---------------------------------------------------------------------- communication faults
async def test_bad_tags_answer_exception_04_and_bad_communication_error(
    modbus: ModbusPlcServer, mb: AsyncModbusTcpClient, opcua: OpcUaPlcServer, uac: Client
) -> None:
    for server in (modbus, opcua):
        server.bad_tags = {"conc_a": "cable cut", "feed_dilution_sp": "cable cut"}
    for address, count in ((0, 2), (1, 1), (0, 4)):  # conc_a is input registers 0-1
        answer = await mb.read_input_registers(address, count=count, device_id=1)
        assert answer.isError() and answer.exception_code == 4, (address, count)
    assert await modbus_read(mb, "conc_b") == 0.875  # registers 2-3 are fine
    assert await modbus_write(mb, "feed_dilution_sp", 20.0) == 4
    assert modbus.value("feed_dilution_sp") == 12.5

    assert status_name(await ua_data_value(uac, "conc_a")) == "BadCommunicationError"
    assert status_name(await ua_data_value(uac, "conc_b")) == "Good"
    with pytest.raises(ua.UaStatusCodeError, match="BadCommunicationError"):
        await ua_write(uac, "feed_dilution_sp", 20.0)
    await opcua.publish({"conc_a": 2.75})  # subscribers see it too: it is stored
    assert status_name(opcua.read("conc_a")) == "BadCommunicationError"

    for server in (modbus, opcua):
        server.bad_tags = {}
    assert await modbus_read(mb, "conc_a") == 2.5
    await opcua.publish({"conc_a": 2.75})
    assert (await ua_data_value(uac, "conc_a")).Value.Value == 2.75  # type: ignore[union-attr]


async def test_latency_delays_every_answer(
    modbus: ModbusPlcServer, mb: AsyncModbusTcpClient, opcua: OpcUaPlcServer, uac: Client
) -> None:
    modbus.latency = opcua.latency = LATENCY
    for call in (
        modbus_read(mb, "conc_a"),
        modbus_write(mb, "mpc_heartbeat", 9),
        ua_data_value(uac, "conc_a"),
        uac.get_node(node_id("mpc_heartbeat")).write_value(
            ua.DataValue(ua.Variant(9, ua.VariantType.UInt16))
        ),
    ):
        started = time.monotonic()
        await call
        assert time.monotonic() - started >= LATENCY
    assert modbus.value("mpc_heartbeat") == opcua.value("mpc_heartbeat") == 9


async def test_drop_connections_disconnects_and_clients_reconnect(
    modbus: ModbusPlcServer, mb: AsyncModbusTcpClient, opcua: OpcUaPlcServer
) -> None:
    await modbus.drop_connections()
    for _ in range(100):
        if not mb.connected:
            break
        await asyncio.sleep(0.01)
    assert not mb.connected
    with pytest.raises(ModbusException):
        await mb.read_input_registers(0, count=2, device_id=1)
    assert await mb.connect()
    assert await modbus_read(mb, "conc_a") == 2.5

    client = Client(opcua.url, timeout=2)
    await client.connect()
    try:
        await opcua.drop_connections()
        with pytest.raises(ConnectionError, match="closed"):
            await ua_data_value(client, "conc_a")
    finally:
        with contextlib.suppress(Exception):
            await client.disconnect()
    async with Client(opcua.url, timeout=2) as again:
        assert (await ua_data_value(again, "conc_a")).Value.Value == 2.5  # type: ignore[union-attr]


# ---------------------------------------------------------------------- address space
async def test_opcua_nodes_sit_under_site_and_unit_with_units_and_ranges(uac: Client) -> None:
    for name, tag in TAGS.tags.items():
        node = await uac.nodes.objects.get_child([f"2:{SITE_NAME}", "2:cstr", f"2:{name}"])
        assert node.nodeid.to_string() == node_id(name)
        units = await (await node.get_child("0:EngineeringUnits")).read_value()
        assert isinstance(units, ua.EUInformation) and units.DisplayName.Text == tag.unit
        code = UNECE_UNITS.get(tag.unit, ("", ""))[0]  # UnitId: the code's letters, big-endian
        assert units.UnitId == (int.from_bytes(code.encode(), "big") if code else -1), name
        assert units.NamespaceUri == (CEFACT if code else ""), name
        if tag.limits is None:
            with pytest.raises(ua.UaStatusCodeError, match="BadNoMatch"):
                await node.get_child("0:EURange")
        else:
            eu_range = await (await node.get_child("0:EURange")).read_value()
            assert (eu_range.Low, eu_range.High) == tag.limits
    site = await uac.nodes.objects.get_child([f"2:{SITE_NAME}"])
    assert await site.read_type_definition() == ua.NodeId(ua.Int32(ua.ObjectIds.FolderType))
    # Spot checks against UNECE Recommendation 20 (the numbers OPC UA Part 8 lists).
    expected = {"reactor_temp": 4408652, "feed_dilution_sp": 4731184, "conc_a": 4404024}
    for name, unit_id in expected.items():
        node = uac.get_node(node_id(name))
        units = await (await node.get_child("0:EngineeringUnits")).read_value()
        assert units.UnitId == unit_id, name


async def test_client_writes_get_a_source_timestamp_and_respect_the_eurange(
    opcua: OpcUaPlcServer, uac: Client
) -> None:
    """Every client write is stamped (the client's SourceTimestamp, else the server's clock);
    a value outside the tag's EURange is refused, a publication's too."""
    before = datetime.now(UTC)
    await ua_write(uac, "feed_dilution_sp", 20.0)
    stamp = (await ua_data_value(uac, "feed_dilution_sp")).SourceTimestamp
    assert stamp is not None and before - timedelta(seconds=1) <= stamp <= datetime.now(UTC)
    given = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)
    node = uac.get_node(node_id("jacket_duty_sp"))
    await node.write_value(
        ua.DataValue(ua.Variant(-2500.0, ua.VariantType.Double), SourceTimestamp=given)
    )
    assert (await ua_data_value(uac, "jacket_duty_sp")).SourceTimestamp == given
    for tag, value in (
        ("feed_dilution_sp", 100.5),
        ("jacket_duty_sp", 1.0),
        ("conc_b_estimate", 5.5),
    ):
        with pytest.raises(ua.UaStatusCodeError, match="BadOutOfRange"):
            await ua_write(uac, tag, value)
    await ua_write(uac, "conc_b_estimate", 5.0)  # the range's edge is inside
    assert opcua.value("conc_b_estimate") == 5.0
    assert (opcua.value("feed_dilution_sp"), opcua.value("jacket_duty_sp")) == (20.0, -2500.0)


async def test_tag_maps_may_name_the_namespace_by_uri(shelf: Path) -> None:
    def by_uri(uri: str) -> TagMap:
        tags = {}
        for name, tag in TAGS.tags.items():
            spec = tag.opcua
            assert spec is not None and spec.node_id is not None
            node = spec.node_id.replace("ns=2;", f"nsu={uri};")
            tags[name] = tag.model_copy(update={"opcua": spec.model_copy(update={"node_id": node})})
        return TAGS.model_copy(update={"tags": tags})

    server = OpcUaPlcServer(by_uri(NAMESPACE), initial=VALUES, shelf=shelf)
    assert server.node_id("conc_a") == ua.NodeId("cstr.conc_a", 2)
    async with server, Client(server.url, timeout=3) as client:
        assert await client.get_node("ns=2;s=cstr.conc_a").read_value() == VALUES["conc_a"]
    with pytest.raises(
        ValueError, match="names the namespace 'urn:elsewhere'; the HIL server's is"
    ):
        OpcUaPlcServer(by_uri("urn:elsewhere"))


# ---------------------------------------------------------------------- security
def _client_certificate(folder: Path) -> tuple[Path, Path]:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "PharmaTwin test client")])
    now = datetime.now(UTC)
    usages = x509.KeyUsage(True, True, True, True, False, False, False, False, False)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(minutes=5))
        .not_valid_after(now + timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.UniformResourceIdentifier(CLIENT_URI)]), False
        )
        .add_extension(usages, critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), False)
        .sign(key, hashes.SHA256())
    )
    (folder / "client.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    (folder / "client-key.pem").write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return folder / "client.pem", folder / "client-key.pem"


@pytest.fixture(scope="module")
def site() -> Site:
    return load_site(ROOT / "configs/sites/cstr-opcua.yaml")


async def _secure_client(
    url: str,
    client_files: tuple[Path, Path],
    server_cert: Path,
    user: str | None,
    pwd: str,
    uri: str = CLIENT_URI,
) -> Client:
    client = Client(url, timeout=3)
    client.application_uri = uri
    await client.set_security(
        SecurityPolicyBasic256Sha256,
        str(client_files[0]),
        str(client_files[1]),
        server_certificate=str(server_cert),
        mode=ua.MessageSecurityMode.SignAndEncrypt,
    )
    if user is not None:
        client.set_user(user)
        client.set_password(pwd)
    return client


async def _refused(client: Client, status: str) -> None:
    try:
        with pytest.raises(ua.UaStatusCodeError, match=status):
            await client.connect()
    finally:
        with contextlib.suppress(Exception):
            await client.disconnect()


def _issued_by(cert_file: Path, ca_file: Path) -> bool:
    try:
        load_certificate(cert_file).verify_directly_issued_by(load_certificate(ca_file))
    except (ValueError, TypeError, InvalidSignature):
        return False
    return True


async def test_security_users_and_a_ca_signed_certificate_made_once(
    site: Site, shelf: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The shipped site names the test CA: SignAndEncrypt only, clients of the CA only."""
    monkeypatch.setenv("PHARMATWIN_OPCUA_PASSWORD", PASSWORD)
    state, port = tmp_path / "state", free_port()
    pki = (PKI / CLIENT_CERTIFICATE_FILE, PKI / CLIENT_KEY_FILE)
    server = await opcua_server_for_site(site, port, state_dir=state, shelf=shelf)
    cert_file = state / site.name / "server-cert.der"
    first = cert_file.read_bytes()
    assert _issued_by(cert_file, PKI / CA_CERTIFICATE_FILE)
    async with server:
        client = await _secure_client(server.url, pki, cert_file, "operator", PASSWORD, PKI_URI)
        async with client:
            endpoints = await client.get_endpoints()
            assert {e.SecurityMode for e in endpoints} == {ua.MessageSecurityMode.SignAndEncrypt}
            assert (await ua_data_value(client, "conc_a")).Value is not None
            nodes = await client.nodes.objects.get_child([f"2:{site.name}", "2:cstr"])
            assert nodes.nodeid.to_string() == f"ns=2;s={site.name}/cstr"
        wrong = await _secure_client(server.url, pki, cert_file, "operator", "wrong", PKI_URI)
        await _refused(wrong, "BadUserAccessDenied")
        anonymous = await _secure_client(server.url, pki, cert_file, None, "", PKI_URI)
        await _refused(anonymous, "BadIdentityTokenRejected")
        # A self-signed client certificate (right usages and URI) is not issued by the CA.
        stranger = _client_certificate(tmp_path)
        client = await _secure_client(server.url, stranger, cert_file, "operator", PASSWORD)
        await _refused(client, "BadCertificateUntrusted")
        # The test CA's certificate, but an application URI it was not issued for.
        liar = await _secure_client(server.url, pki, cert_file, "operator", PASSWORD, CLIENT_URI)
        await _refused(liar, "BadCertificateUriInvalid")
    # A restart: the same certificate, so the client's trust in it still holds.
    again = await opcua_server_for_site(site, port, state_dir=state, shelf=shelf)
    assert cert_file.read_bytes() == first
    async with again:
        client = await _secure_client(again.url, pki, cert_file, "operator", PASSWORD, PKI_URI)
        async with client:
            assert (await ua_data_value(client, "conc_a")).Value is not None


async def test_a_site_without_a_ca_serves_self_signed_and_any_client(
    site: Site, shelf: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PHARMATWIN_OPCUA_PASSWORD", PASSWORD)
    hil = hil_section(site)
    assert hil is not None
    plain = with_hil(site, hil.model_copy(update={"ca_certificate": None, "ca_private_key": None}))
    server = await opcua_server_for_site(plain, free_port(), state_dir=tmp_path, shelf=shelf)
    cert_file = tmp_path / site.name / "server-cert.der"
    cert = load_certificate(cert_file)
    assert cert.issuer == cert.subject
    async with server:
        client_files = _client_certificate(tmp_path)
        client = await _secure_client(server.url, client_files, cert_file, "operator", PASSWORD)
        async with client:
            endpoints = await client.get_endpoints()
            assert {e.SecurityMode for e in endpoints} == {
                ua.MessageSecurityMode.None_,
                ua.MessageSecurityMode.SignAndEncrypt,
            }
            assert (await ua_data_value(client, "conc_a")).Value is not None


async def test_a_missing_password_variable_is_named(
    site: Site, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("PHARMATWIN_OPCUA_PASSWORD", raising=False)
    with pytest.raises(ConfigError, match="PHARMATWIN_OPCUA_PASSWORD is not set"):
        await opcua_server_for_site(site, state_dir=tmp_path)


async def test_an_unusable_ca_is_a_config_error(
    site: Site, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PHARMATWIN_OPCUA_PASSWORD", PASSWORD)
    hil = hil_section(site)
    assert hil is not None
    other = make_test_pki(tmp_path / "other")
    mixed = hil.model_copy(update={"ca_private_key": str(other["ca_private_key"])})
    with pytest.raises(ConfigError, match="is not the key of") as exc:
        await opcua_server_for_site(with_hil(site, mixed), state_dir=tmp_path)
    assert exc.value.problems[0].location == "hil.ca_certificate"
    leaf = hil.model_copy(
        update={
            "ca_certificate": str(other["client_certificate"]),
            "ca_private_key": str(other["client_private_key"]),
        }
    )
    with pytest.raises(ConfigError, match="not a CA certificate"):
        await opcua_server_for_site(with_hil(site, leaf), state_dir=tmp_path)


def test_server_certificate_is_self_signed_for_the_uri_and_reused(tmp_path: Path) -> None:
    uri = "urn:pharmatwin:hil:test"
    cert_file, key_file = ensure_server_certificate(tmp_path, uri, "127.0.0.1")
    first = cert_file.read_bytes()
    cert = x509.load_der_x509_certificate(first)
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.UniformResourceIdentifier) == [uri]
    assert ipaddress.ip_address("127.0.0.1") in san.get_values_for_type(x509.IPAddress)
    assert "localhost" in san.get_values_for_type(x509.DNSName)
    assert cert.issuer == cert.subject
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
    assert ensure_server_certificate(tmp_path, uri, "127.0.0.1") == (cert_file, key_file)
    assert cert_file.read_bytes() == first  # reused
    ensure_server_certificate(tmp_path, "urn:pharmatwin:hil:other", "127.0.0.1")
    assert cert_file.read_bytes() != first  # made anew for another application URI


def test_server_certificate_is_ca_signed_reused_and_remade_for_another_ca(
    tmp_path: Path,
) -> None:
    uri = "urn:pharmatwin:hil:test"
    files = make_test_pki(tmp_path / "pki")
    ca = CertificateAuthority.load(files["ca_certificate"], files["ca_private_key"])
    state = tmp_path / "state"
    cert_file, key_file = ensure_server_certificate(state, uri, "127.0.0.1", ca)
    first = cert_file.read_bytes()
    cert = x509.load_der_x509_certificate(first)
    cert.verify_directly_issued_by(ca.certificate)
    assert cert.issuer != cert.subject
    usages = cert.extensions.get_extension_for_class(x509.KeyUsage).value
    assert usages.key_encipherment and usages.data_encipherment and not usages.key_cert_sign
    assert not cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    assert cert.not_valid_after_utc <= ca.certificate.not_valid_after_utc
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
    ensure_server_certificate(state, uri, "127.0.0.1", ca)
    assert cert_file.read_bytes() == first  # reused: still signed by the same CA
    # A regenerated CA: the stored certificate is no longer its; a new one is signed by it.
    files = make_test_pki(tmp_path / "pki")
    new_ca = CertificateAuthority.load(files["ca_certificate"], files["ca_private_key"])
    ensure_server_certificate(state, uri, "127.0.0.1", new_ca)
    second = cert_file.read_bytes()
    assert second != first
    x509.load_der_x509_certificate(second).verify_directly_issued_by(new_ca.certificate)
    # The CA dropped: back to a self-signed one.
    ensure_server_certificate(state, uri, "127.0.0.1")
    third = x509.load_der_x509_certificate(cert_file.read_bytes())
    assert third.issuer == third.subject
    third.verify_directly_issued_by(third)
    # A key that is not the certificate's: made anew.
    key_file.write_bytes(files["client_private_key"].read_bytes())
    ensure_server_certificate(state, uri, "127.0.0.1")
    fourth = x509.load_der_x509_certificate(cert_file.read_bytes())
    assert fourth != third


def test_the_shipped_test_pki_is_consistent_and_in_date() -> None:
    """configs/pki: the controller's certificate is issued by the test CA for its URI."""
    ca = CertificateAuthority.load(PKI / CA_CERTIFICATE_FILE, PKI / CA_KEY_FILE)
    client = load_certificate(PKI / CLIENT_CERTIFICATE_FILE)
    client.verify_directly_issued_by(ca.certificate)
    san = client.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.UniformResourceIdentifier) == [PKI_URI]
    assert san.get_values_for_type(x509.DNSName) == ["localhost"]
    assert san.get_values_for_type(x509.IPAddress) == [ipaddress.ip_address("127.0.0.1")]
    eku = client.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert ExtendedKeyUsageOID.CLIENT_AUTH in eku
    key = serialization.load_pem_private_key((PKI / CLIENT_KEY_FILE).read_bytes(), None)
    public = client.public_key()
    assert isinstance(key, rsa.RSAPrivateKey) and isinstance(public, rsa.RSAPublicKey)
    assert key.public_key().public_numbers() == public.public_numbers()
    soon = datetime.now(UTC) + timedelta(days=90)
    assert client.not_valid_after_utc > soon, "regenerate configs/pki (see its README.md)"
    assert ca.certificate.not_valid_after_utc > soon, "regenerate configs/pki"
    assert "never for a plant" in (PKI / "README.md").read_text().lower()


def test_regenerate_command_writes_a_new_pki(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert certs_main(["--regenerate", str(tmp_path)]) == 0
    assert str(tmp_path / CLIENT_CERTIFICATE_FILE) in capsys.readouterr().out
    ca = CertificateAuthority.load(tmp_path / CA_CERTIFICATE_FILE, tmp_path / CA_KEY_FILE)
    load_certificate(tmp_path / CLIENT_CERTIFICATE_FILE).verify_directly_issued_by(ca.certificate)
    assert stat.S_IMODE((tmp_path / CLIENT_KEY_FILE).stat().st_mode) == 0o600


# ---------------------------------------------------------------------- our port, secured site
def _port(site: Site, port: int, **security: object) -> OpcUaPort:
    sec = site.connection.opcua.security.model_copy(update=security)
    opts = site.connection.opcua.model_copy(update={"security": sec})
    conn = site.connection.model_copy(update={"port": port, "opcua": opts})
    return OpcUaPort(site.tags, conn, RealClock(), password=PASSWORD, base_dir=site.path.parent)


async def test_the_site_port_connects_over_sign_and_encrypt_end_to_end(
    site: Site, shelf: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The shipped site file on both sides: CA-signed server, the controller's certificate."""
    monkeypatch.setenv("PHARMATWIN_OPCUA_PASSWORD", PASSWORD)
    assert site.connection.opcua.security.mode == "SignAndEncrypt"
    server = await opcua_server_for_site(
        site, free_port(), state_dir=tmp_path, shelf=shelf, initial=VALUES
    )
    async with server:
        async with _port(site, server.port) as port:
            assert (await port.read(["conc_a"]))["conc_a"].value == VALUES["conc_a"]
            assert (await port.write({"feed_dilution_sp": 20.0})).ok
        assert server.value("feed_dilution_sp") == 20.0
        # A client certificate issued by another CA (right URI and usages) is refused.
        other = make_test_pki(tmp_path / "other-ca")
        impostor = _port(
            site,
            server.port,
            certificate=str(other["client_certificate"]),
            private_key=str(other["client_private_key"]),
        )
        with pytest.raises(PortConnectError, match="BadCertificateUntrusted"):
            await impostor.connect()
        await impostor.close()
        # A trust list without the test CA: the CA-signed server certificate is refused.
        doubter = _port(site, server.port, trust_list=(str(other["ca_certificate"]),))
        with pytest.raises(PortConnectError, match="not trusted"):
            await doubter.connect()
        await doubter.close()


# ---------------------------------------------------------------------- bind address
def test_binding_a_non_loopback_address_is_refused(site: Site) -> None:
    for host in ("0.0.0.0", "192.0.2.10"):
        with pytest.raises(ValueError, match=host):
            ModbusPlcServer(TAGS, host=host)
        with pytest.raises(ValueError, match=host):
            OpcUaPlcServer(TAGS, host=host)
        with pytest.raises(ValueError, match=host):
            modbus_server_for_site(site, host=host)
        with pytest.raises(ValueError, match=host):
            asyncio.run(opcua_server_for_site(site, host=host))
    assert ModbusPlcServer(TAGS, host="0.0.0.0", allow_remote=True).host == "0.0.0.0"
    assert OpcUaPlcServer(TAGS, host="localhost").url.startswith("opc.tcp://localhost:")
    assert modbus_server_for_site(site).port == 5020  # an OPC UA site: the default Modbus port


# ---------------------------------------------------------------------- address-space cache
_START_ONE = """
import asyncio, logging, sys
from pathlib import Path
from asyncua import Client
from controller.tags import load_tag_map
from hil.servers.opcua import OpcUaPlcServer

async def main() -> None:
    logging.getLogger("pharmatwin").addHandler(logging.StreamHandler())
    logging.getLogger("pharmatwin").setLevel(logging.INFO)
    tags = load_tag_map(Path(sys.argv[2]))
    async with OpcUaPlcServer(tags, shelf=Path(sys.argv[1]), initial={"conc_a": 2.5}) as server:
        async with Client(server.url, timeout=5) as client:
            name = await client.get_node("i=2261").read_value()  # the server's ProductName
            value = await client.get_node("ns=2;s=cstr.conc_a").read_value()
    print("served", name, value)

asyncio.run(main())
"""


def _size(path: Path) -> int:
    return path.stat().st_size


def _shelf_entries(shelf: Path, every: int = 40) -> tuple[int, int]:
    """(entries, entries of a sample of every ``every``-th that cannot be loaded) of an
    address-space shelf (loading all of them takes seconds)."""
    import shelve

    bad = 0
    with shelve.open(str(shelf), "r") as db:
        keys = list(db.keys())
        for key in keys[::every]:
            try:
                db[key]
            except Exception:
                bad += 1
    return len(keys), bad


@pytest.mark.slow
@pytest.mark.serial
async def test_two_servers_starting_at_once_build_one_cache(tmp_path: Path) -> None:
    """Two processes start a server on the same empty cache folder at the same moment: one
    builds the cache under the lock, the other waits and uses it; both serve."""
    folder = tmp_path / "cache"
    cmd = [sys.executable, "-c", _START_ONE, str(folder), str(ROOT / "configs/tags/cstr.yaml")]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    procs = [
        await asyncio.create_subprocess_exec(
            *cmd, env=env, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
        )
        for _ in range(2)
    ]
    outputs = [await p.communicate() for p in procs]
    for proc, (out, err) in zip(procs, outputs, strict=True):
        assert proc.returncode == 0, err.decode()[-2000:]
        assert out.decode().strip() == "served FreeOpcUa Python Server 2.5"
    logs = b"".join(err for _, err in outputs).decode()
    assert logs.count("building the OPC UA address-space cache") == 1, logs[-3000:]
    shelf = await address_space_shelf(folder)
    entries, bad = _shelf_entries(shelf)
    assert entries > 5000 and bad == 0
    assert [p.name for p in folder.iterdir() if p.name.startswith(".building")] == []


def test_the_cache_is_named_after_the_dbm_module_dbm_open_would_use(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """dbm.open takes the first importable module of ``dbm._names`` (Python 3.13 puts
    ``dbm.sqlite3`` first): the cache's name follows that order, not a fixed list."""
    monkeypatch.setattr(dbm, "_names", ["dbm.no_such_backend", "dbm.dumb", "dbm.ndbm"])
    assert dbm_backend() == "dumb"


@pytest.mark.slow
@pytest.mark.serial
async def test_a_corrupt_cache_is_rebuilt(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    shelf = await address_space_shelf(tmp_path)
    assert shelf.parent.name.endswith(f"-{dbm_backend()}")  # one cache per dbm backend
    # the manifest covers every file, the shelf's own name too: with a one-file backend
    # (dbm.gnu, Python 3.13's dbm.sqlite3) it holds the data; left out, such a cache had an
    # empty manifest and was rebuilt at every server start
    manifest = json.loads((shelf.parent / "manifest.json").read_text())
    assert set(manifest["files"]) == {p.name for p in shelf.parent.iterdir()} - {"manifest.json"}
    entries, _ = _shelf_entries(shelf)
    # the shelf's data file: .dat (dbm.dumb), .db (dbm.ndbm) or the shelf itself (dbm.gnu)
    data = max((p for p in shelf.parent.iterdir() if p.name != "manifest.json"), key=_size)
    data.write_bytes(data.read_bytes()[: data.stat().st_size // 2])  # a crash mid-write
    try:
        left, bad = _shelf_entries(shelf)
    except dbm.error:  # the backend refuses the truncated file outright
        left, bad = 0, 1
    assert bad > 0 and (left < entries or bad > entries // 40 // 4)  # it is broken
    with caplog.at_level(logging.INFO, logger="pharmatwin.hil.opcua"):
        again = await address_space_shelf(tmp_path)
    assert again == shelf
    assert f"{data.name} does not match its manifest" in caplog.text
    assert _shelf_entries(again) == (entries, 0)
    server = OpcUaPlcServer(TAGS, shelf=tmp_path, initial=VALUES)
    async with server, Client(server.url, timeout=3) as client:
        assert await client.get_node("ns=2;s=cstr.conc_a").read_value() == 2.5
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "manifest.json").write_text("{not json")
    assert "its manifest is unreadable" in str(cache_problem(broken))
    assert cache_problem(tmp_path / "nothing") == "not built yet"


async def test_the_default_cache_does_not_depend_on_where_the_site_file_lives(
    site: Site, shelf: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PHARMATWIN_OPCUA_PASSWORD", PASSWORD)
    cache = shelf.parent.parent  # the module's cache folder, built already
    monkeypatch.setenv("PHARMATWIN_CACHE_DIR", str(cache))
    assert default_cache_dir() == cache
    hil = hil_section(site)
    assert hil is not None
    plain = hil.model_copy(update={"ca_certificate": None, "ca_private_key": None})
    shelves = set()
    for where in (site.path, tmp_path / "a" / "b" / "c" / "cstr-opcua.yaml", Path("site.yaml")):
        moved = dataclasses.replace(with_hil(site, plain), path=where)
        server = await opcua_server_for_site(moved, state_dir=tmp_path / "state")
        shelves.add(server.shelf)
    assert shelves == {shelf}
    monkeypatch.delenv("PHARMATWIN_CACHE_DIR")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert default_cache_dir() == tmp_path / "xdg" / "pharmatwin"
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert default_cache_dir() == tmp_path / "home" / ".cache" / "pharmatwin"
