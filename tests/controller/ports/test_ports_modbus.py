"""ModbusPort against a real pymodbus server on 127.0.0.1: no mocks, faults on the server side.

The tag map is the bioreactor skid's (``configs/tags/bioreactor.yaml``); values are put into
the server's registers through the same codecs, so a read checks the wire format end to end.
"""

from __future__ import annotations

import asyncio
import datetime
import math
import re
import ssl
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from conftest import LOOPBACK, free_port
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from pymodbus.client import AsyncModbusTcpClient
from pymodbus.datastore import (
    ModbusDeviceContext,
    ModbusSequentialDataBlock,
    ModbusServerContext,
)
from pymodbus.server import ModbusTcpServer

from controller.clock import SteppedClock
from controller.codecs import DataType
from controller.errors import PortConnectError, PortError, PortTimeoutError
from controller.ports.base import Quality, WriteStatus
from controller.ports.modbus import ModbusPort
from controller.ports.settings import Backoff, Connection, ModbusOptions, ModbusTls
from controller.tags import Direction, ModbusSpec, Table, Tag, TagMap, load_tag_map
from hil.servers.modbus import ModbusPlcServer

ROOT = Path(__file__).resolve().parents[3]
TAGS = load_tag_map(ROOT / "configs" / "tags" / "bioreactor.yaml")
READABLE = [name for name, tag in TAGS.tags.items() if tag.readable]
NOW = 1000.0
BACKOFF = Backoff(initial_s=0.2, factor=2.0, max_s=1.0)
WRITE_CODES = {5, 6, 15, 16, 23}  # 23: Read/Write Multiple Registers (a write, then a read)
READ_BACKS = ["auto", "separate"]  # connection.modbus.write_readback

pytestmark = pytest.mark.timeout(60)


def connection(port: int, timeout_s: float = 0.5, write_readback: str = "auto") -> Connection:
    return Connection(
        protocol="modbus",
        host=LOOPBACK,
        port=port,
        timeout_s=timeout_s,
        backoff=BACKOFF,
        modbus=ModbusOptions.model_validate({"write_readback": write_readback}),
    )


def make_port(
    tags: TagMap, port: int, clock: SteppedClock | None = None, write_readback: str = "auto"
) -> ModbusPort:
    conn = connection(port, write_readback=write_readback)
    return ModbusPort(tags, conn, clock or SteppedClock(NOW))


@pytest.fixture
async def server() -> AsyncIterator[ModbusPlcServer]:
    async with ModbusPlcServer(TAGS) as srv:
        yield srv


@pytest.fixture
async def port(server: ModbusPlcServer) -> AsyncIterator[ModbusPort]:
    """A port connected to ``server`` (0.5 s requests, as the tests expect). Its first
    connect is retried up to 3 times: on a machine busy with other tests the connect to
    this loopback server has missed the 0.5 s (seen once in a full run); connecting is
    not what the tests using this fixture test (the connect tests build their own port)."""
    for attempt in range(3):
        p = make_port(TAGS, server.port)
        try:
            await p.connect()
        except PortConnectError:
            await p.close()
            if attempt == 2:
                raise
            continue
        try:
            yield p
        finally:
            await p.close()
        return


def generated_map(count: int, table: Table, direction: Direction, start: int = 0) -> TagMap:
    """``count`` contiguous uint16 tags ``r<address>`` from ``start``."""
    return TagMap(
        name="generated",
        tags={
            f"r{a}": Tag(
                unit="count",
                direction=direction,
                modbus=ModbusSpec(table=table, address=a, type=DataType.UINT16),
            )
            for a in range(start, start + count)
        },
    )


async def wait_until_disconnected(port: ModbusPort) -> None:
    for _ in range(100):
        if not port.connected:
            return
        await asyncio.sleep(0.01)
    raise AssertionError("the port did not notice the server stopping")


# ----------------------------------------------------------------------- reads
PLC_VALUES = {
    "feed_rate_sp": 0.125,
    "feed_rate_pv": 0.0625,
    "biomass": 5.5,  # float32 ABCD
    "substrate": -0.987,  # int16, scale 0.001 (the analyser's span reaches -1 g/L)
    "product_titer": 0.75,  # float32 CDAB
    "broth_volume": 1.57,  # uint16, scale 0.01
    "mpc_heartbeat": 65535,
    "plc_heartbeat": 42,
    "plc_scan_counter": 7,
    "mpc_request": 1,
    "mpc_permissive": 1,
    "mpc_active": 0,
    "mpc_fallback_alarm": 1,
    "interlock_active": 0,
    "operator_reset": 0,
    "measurement_validity": 0b101,
    "write_refusal_code": 3,
    "write_refusal_function": 16,
    "write_refusal_address": 0,
    "write_refusal_count": 65535,
}


async def test_reads_every_readable_tag(server: ModbusPlcServer, port: ModbusPort) -> None:
    for tag, value in PLC_VALUES.items():
        server.set_value(tag, value)
    snap = await port.read(READABLE)
    assert sorted(snap.values) == sorted(READABLE)
    for tag in READABLE:
        tv = snap[tag]
        assert tv.quality is Quality.GOOD, tv.detail
        assert tv.value == pytest.approx(PLC_VALUES[tag], rel=1e-7), tag
        assert tv.source_time == tv.read_time == NOW
    assert snap.read_time == NOW


async def test_word_swapped_float_is_on_the_wire_low_word_first(
    server: ModbusPlcServer, port: ModbusPort
) -> None:
    server.set_registers(Table.INPUT, 5, [0x0000, 0x3F40])  # 0.75 = 0x3F400000, CDAB
    assert (await port.read(["product_titer"]))["product_titer"].value == 0.75


async def test_writes_every_writable_tag_with_readback(
    server: ModbusPlcServer, port: ModbusPort
) -> None:
    values = {"feed_rate_sp": 0.1234, "mpc_heartbeat": 65535, "mpc_request": 1, "operator_reset": 1}
    writable = (n for n, t in TAGS.tags.items() if t.writable and t.publishes is None)
    assert sorted(values) == sorted(writable)  # publications: tests/controller/twin/test_publish.py
    report = await port.write(values)
    assert report.ok, report.failed()
    assert report.results["feed_rate_sp"].readback == pytest.approx(0.1234, rel=1e-7)
    assert report.results["feed_rate_sp"].readback != 0.1234  # float32, as the codec holds it
    for tag, value in values.items():
        assert server.value(tag) == pytest.approx(value, rel=1e-7)


async def test_duplicate_and_empty_reads(port: ModbusPort) -> None:
    assert (await port.read([])).values == {}
    assert list((await port.read(["biomass", "biomass"])).values) == ["biomass"]


async def test_concurrent_calls_are_serialized(server: ModbusPlcServer, port: ModbusPort) -> None:
    server.set_value("biomass", 3.0)
    server.set_value("plc_heartbeat", 9)
    reads = [port.read(["biomass"] if i % 2 else ["plc_heartbeat"]) for i in range(20)]
    writes = [port.write({"mpc_heartbeat": i}) for i in range(10)]
    snaps, reports = await asyncio.gather(asyncio.gather(*reads), asyncio.gather(*writes))
    for i, snap in enumerate(snaps):
        assert snap.numbers() == ({"biomass": 3.0} if i % 2 else {"plc_heartbeat": 9.0})
    assert all(report.ok for report in reports)


# ------------------------------------------------------------------ coalescing
async def test_reads_coalesce_into_blocks_of_at_most_125() -> None:
    tags = generated_map(300, Table.INPUT, Direction.READ)
    async with ModbusPlcServer(tags) as srv, make_port(tags, srv.port) as port:
        for a in range(300):
            srv.set_value(f"r{a}", 1000 + a)
        snap = await port.read(list(tags.tags))
        assert snap.numbers() == {f"r{a}": 1000.0 + a for a in range(300)}
        reads = [(r.address, r.count) for r in srv.requests if r.function_code == 4]
        assert reads == [(0, 125), (125, 125), (250, 50)]


async def test_reads_merge_gaps_of_up_to_16_registers() -> None:
    tags = generated_map(30, Table.INPUT, Direction.READ)
    async with ModbusPlcServer(tags) as srv, make_port(tags, srv.port) as port:
        await port.read(["r0", "r17"])  # 16 unused registers between them: one request
        await port.read(["r0", "r18"])  # 17 unused: two requests
        reads = [(r.address, r.count) for r in srv.requests if r.function_code == 4]
        assert reads == [(0, 18), (0, 1), (18, 1)]


async def test_a_gap_the_plc_refuses_is_not_read_again() -> None:
    """A PLC without the gap registers answers 02 to the merged read: the tags are read one
    by one that cycle (all good), and from then on without the gap: one refused request in
    all, not one per cycle."""
    tags = generated_map(30, Table.INPUT, Direction.READ)
    async with ModbusPlcServer(tags) as srv, make_port(tags, srv.port) as port:
        srv.set_value("r0", 7)
        srv.set_value("r12", 9)
        srv.set_illegal(Table.INPUT, 5)  # a gap register the PLC does not have
        for _ in range(3):
            snap = await port.read(["r0", "r12"])
            assert snap.numbers() == {"r0": 7.0, "r12": 9.0}
        reads = [(r.address, r.count) for r in srv.requests if r.function_code == 4]
        assert reads == [(0, 13), (0, 1), (12, 1), (0, 1), (12, 1), (0, 1), (12, 1)]


@pytest.mark.parametrize(
    ("write_readback", "requests"),
    [
        # FC 16 writes of at most 123 registers, then the read-back (FC 3, at most 125)
        ("separate", [(16, 0, 123), (16, 123, 77), (3, 0, 125), (3, 125, 75)]),
        # FC 23: at most 121 registers written and read back per request, nothing else
        ("auto", [(23, 0, 121), (23, 121, 79)]),
    ],
)
async def test_writes_coalesce_into_blocks_of_at_most_123(
    write_readback: str, requests: list[tuple[int, int, int]]
) -> None:
    tags = generated_map(200, Table.HOLDING, Direction.READ_WRITE)
    async with (
        ModbusPlcServer(tags) as srv,
        make_port(tags, srv.port, write_readback=write_readback) as port,
    ):
        report = await port.write({f"r{a}": 2 * a for a in range(200)})
        assert report.ok, report.failed()[:3]
        assert [report.results[f"r{a}"].readback for a in range(200)] == [2 * a for a in range(200)]
        assert [srv.value(f"r{a}") for a in range(200)] == [2 * a for a in range(200)]
        assert [(r.function_code, r.address, r.count) for r in srv.requests] == requests


async def test_a_plc_without_fc23_is_written_with_fc16() -> None:
    """A PLC that does not implement FC 23 answers it with exception 01 and writes nothing:
    strictly (``fc23``) that is a refusal; by default (``auto``) the port sends the block
    again with FC 16 and reads it back, and writes with FC 16 from then on."""
    tags = generated_map(4, Table.HOLDING, Direction.READ_WRITE)
    async with ModbusPlcServer(tags) as srv:
        srv.unsupported_functions = {23}
        async with make_port(tags, srv.port, write_readback="fc23") as strict:
            report = await strict.write({"r0": 5, "r1": 6})
        assert {r.status for r in report.results.values()} == {WriteStatus.REJECTED}
        assert "01 illegal function" in report.results["r0"].detail
        assert "FC 23" in report.results["r0"].detail
        assert srv.value("r0") == 0  # nothing written
        srv.requests.clear()
        async with make_port(tags, srv.port) as port:
            first = await port.write({"r0": 5, "r1": 6})
            second = await port.write({"r2": 7})
        assert first.ok and second.ok, (first.failed(), second.failed())
        assert [srv.value(f"r{a}") for a in range(3)] == [5, 6, 7]
        assert [(r.function_code, r.address, r.count) for r in srv.requests] == [
            (23, 0, 2),  # refused unexecuted (01)
            (16, 0, 2),
            (3, 0, 2),
            (16, 2, 1),  # no FC 23 tried again
            (3, 2, 1),
        ]


# --------------------------------------------------------------- refused writes
@pytest.mark.parametrize(
    ("tag", "value", "why"),
    [
        ("biomass", 1.0, "read-only"),
        ("no_such_tag", 1.0, "unknown tag 'no_such_tag'"),
        ("feed_rate_sp", 0.5, r"outside the tag limits \[0, 0.2\]"),
        ("feed_rate_sp", math.nan, "not a finite number"),
        ("mpc_request", 0.5, "bool value must be 0 or 1"),
    ],
)
async def test_refused_writes_send_nothing(
    server: ModbusPlcServer, port: ModbusPort, tag: str, value: float, why: str
) -> None:
    server.set_value("mpc_heartbeat", 11)
    report = await port.write({"mpc_heartbeat": 12, tag: value})
    result = report.results[tag]
    assert result.status is WriteStatus.REJECTED
    assert tag in result.detail
    assert re.search(why, result.detail), result.detail
    assert report.results["mpc_heartbeat"].status is WriteStatus.NOT_SENT
    assert server.value("mpc_heartbeat") == 11
    assert not [r for r in server.requests if r.function_code in WRITE_CODES]


async def test_reading_unknown_or_write_only_tags_sends_nothing(server: ModbusPlcServer) -> None:
    tags = TagMap(
        name="m",
        tags={
            **TAGS.tags,
            "recipe_push": Tag(
                unit="-",
                direction=Direction.WRITE,
                modbus=ModbusSpec(table=Table.HOLDING, address=12, type=DataType.UINT16),
            ),
        },
    )
    async with make_port(tags, server.port) as port:
        with pytest.raises(PortError, match=r"'ghost'.*'recipe_push' is write-only"):
            await port.read(["biomass", "ghost", "recipe_push"])
    assert server.requests == []


# -------------------------------------------------------------- connection loss
async def test_server_absent_at_start() -> None:
    number = free_port()
    with pytest.raises(PortConnectError, match=f"127.0.0.1:{number}"):
        async with make_port(TAGS, number):
            pass


async def test_reconnects_after_restart_with_backoff(server: ModbusPlcServer) -> None:
    """The backoff waits on the port's clock: stepped here, with no wall-clock sleep."""
    clock = SteppedClock(NOW)
    port = make_port(TAGS, server.port, clock)
    async with port:
        server.set_value("biomass", 2.5)
        assert (await port.read(["biomass"]))["biomass"].value == 2.5
        await server.stop()
        await wait_until_disconnected(port)
        with pytest.raises(
            PortConnectError,
            match=r"cannot connect.*next reconnect attempt on a read after 0\.20 s",
        ):
            await port.read(["biomass"])
        clock.advance(0.2)
        with pytest.raises(
            PortConnectError, match=r"next reconnect attempt on a read after 0\.40 s"
        ):
            await port.read(["biomass"])  # the second failed attempt doubles the delay
        await server.start()
        clock.advance(0.39)
        with pytest.raises(
            PortConnectError,
            match=r"not connected.*next reconnect attempt on a read after 0\.01 s",
        ):
            await port.read(["biomass"])  # inside the backoff: not even tried, though it is back
        assert server.requests[-1].function_code == 4  # the last request is the one before stop
        clock.advance(0.02)
        assert (await port.read(["biomass"]))["biomass"].value == 2.5
        assert port.connected
        assert port.reconnects == 1
        await server.stop()
        await wait_until_disconnected(port)
        with pytest.raises(PortConnectError, match=r"cannot connect.*after 0\.20 s"):  # reset
            await port.read(["biomass"])


async def test_slow_server_times_out_and_recovers(
    server: ModbusPlcServer, port: ModbusPort
) -> None:
    server.set_value("biomass", 4.0)
    server.latency = 0.8
    with pytest.raises(PortTimeoutError, match=r"0.5 s.*input 2..3.*biomass"):
        await port.read(["biomass"])
    server.latency = 0.0
    assert (await port.read(["biomass"]))["biomass"].value == 4.0
    assert port.reconnects == 1  # the timed-out connection was dropped


# ---------------------------------------------------------- exception responses
async def test_illegal_address_on_read_is_bad_quality(
    server: ModbusPlcServer, port: ModbusPort
) -> None:
    server.set_value("biomass", 1.5)
    server.set_illegal(Table.INPUT, 4)
    snap = await port.read(["biomass", "substrate", "broth_volume"])
    bad = snap["substrate"]
    assert bad.quality is Quality.BAD
    assert math.isnan(bad.value)
    for part in ("substrate", "input 4", "unit 1", "02", "illegal data address"):
        assert part in bad.detail
    # the merged block was retried tag by tag: the neighbours are still good
    assert snap["biomass"].quality is Quality.GOOD and snap["biomass"].value == 1.5
    assert snap["broth_volume"].quality is Quality.GOOD
    assert snap.bad(["biomass", "substrate", "broth_volume"]) == ["substrate"]


async def test_unknown_unit_id_is_bad_quality(server: ModbusPlcServer) -> None:
    tags = TagMap(
        name="other unit",
        tags={
            "far_away": Tag(
                unit="-",
                direction=Direction.READ,
                modbus=ModbusSpec(unit_id=9, table=Table.INPUT, address=0, type=DataType.UINT16),
            )
        },
    )
    async with make_port(tags, server.port) as port:
        tv = (await port.read(["far_away"]))["far_away"]
    assert tv.quality is Quality.BAD
    # as a gateway answers for a device that is not there (plain pymodbus would answer 04)
    assert "unit 9" in tv.detail and "0B gateway target device failed to respond" in tv.detail


@pytest.mark.parametrize("write_readback", READ_BACKS)
async def test_plc_refusing_an_out_of_range_write_is_rejected(
    server: ModbusPlcServer, write_readback: str
) -> None:
    port = make_port(TAGS, server.port, write_readback=write_readback)
    server.set_value("feed_rate_sp", 0.0625)
    server.plc_range["feed_rate_sp"] = (0.0, 0.15)  # narrower than the tag's [0, 0.2]
    async with port:
        report = await port.write({"feed_rate_sp": 0.18, "mpc_heartbeat": 3})
    refused = report.results["feed_rate_sp"]
    assert refused.status is WriteStatus.REJECTED
    for part in ("feed_rate_sp", "holding 0", "03", "illegal data value"):
        assert part in refused.detail
    assert server.value("feed_rate_sp") == 0.0625  # unchanged
    assert report.results["mpc_heartbeat"].status is WriteStatus.OK
    assert [r.status for r in report.failed()] == [WriteStatus.REJECTED]


@pytest.mark.parametrize("write_readback", READ_BACKS)
async def test_plc_clamping_a_write_is_a_mismatch(
    server: ModbusPlcServer, write_readback: str
) -> None:
    """The read-back (FC 23's read part, or FC 3 after FC 16) shows what the PLC stored."""
    server.plc_range["feed_rate_sp"] = (0.0, 0.125)
    server.clamp = True  # this PLC clamps remote setpoints instead of refusing them
    async with make_port(TAGS, server.port, write_readback=write_readback) as port:
        report = await port.write({"feed_rate_sp": 0.18, "mpc_heartbeat": 4})
    codes = {r.function_code for r in server.requests}
    assert (23 in codes) == (write_readback == "auto") and (16 in codes) != (23 in codes)
    clamped = report.results["feed_rate_sp"]
    assert clamped.status is WriteStatus.MISMATCH
    assert clamped.readback == 0.125
    assert "read back 0.125" in clamped.detail
    assert report.results["mpc_heartbeat"].status is WriteStatus.OK


# ------------------------------------------------------------ pymodbus itself
async def test_datastore_addressing_is_pinned() -> None:
    """Wire address N: old datastore address N + 1; SimDevice index N; base 1 address N + 1."""
    n = 5
    # The deprecated ModbusDeviceContext still adds 1: a block declared at address 1 starts
    # at wire address 0 (3.16 turns it into SimData(address - 1)), and address 0 is refused.
    with pytest.raises(TypeError):
        ModbusDeviceContext(hr=ModbusSequentialDataBlock(0, [0] * 20))
    old_block = ModbusSequentialDataBlock(1, [0] * 20)
    assert old_block.simdata[0].address == 0
    number = free_port()
    context = ModbusServerContext(devices={1: ModbusDeviceContext(hr=old_block)})
    old = ModbusTcpServer(context, address=(LOOPBACK, number))
    await old.serve_forever(background=True)
    client = AsyncModbusTcpClient(LOOPBACK, port=number, retries=0, reconnect_delay=0)
    try:
        await client.connect()
        assert not (await client.write_registers(n, [777], device_id=1)).isError()
        registers = old.context.devices[1].block["h"][2]  # type: ignore[union-attr]
        assert registers.index(777) == n  # values[n] of the block declared at address 1
        assert 1 + registers.index(777) == n + 1  # i.e. old datastore address N + 1
    finally:
        client.close()
        await old.shutdown()

    # Our test server (SimDevice) holds wire address N at index N; a tag counted from 1 at
    # address N + 1 and one counted from 0 at N read the same register.
    tags = TagMap(
        name="pin",
        tags={
            "zero_based": Tag(
                unit="-", direction=Direction.READ,
                modbus=ModbusSpec(table=Table.HOLDING, address=n, type=DataType.UINT16),
            ),
            "one_based": Tag(
                unit="-", direction=Direction.READ,
                modbus=ModbusSpec(table=Table.HOLDING, address=n + 1, base=1, type=DataType.UINT16),
            ),
        },
    )  # fmt: skip
    async with ModbusPlcServer(tags) as srv, make_port(tags, srv.port) as port:
        srv.set_registers(Table.HOLDING, n, [4321])
        client = AsyncModbusTcpClient(LOOPBACK, port=srv.port, retries=0, reconnect_delay=0)
        await client.connect()
        try:
            assert (await client.read_holding_registers(n, device_id=1)).registers == [4321]
        finally:
            client.close()
        assert (await port.read(["zero_based", "one_based"])).numbers() == {
            "zero_based": 4321.0,
            "one_based": 4321.0,
        }


async def test_pymodbus_limits() -> None:
    tags = generated_map(130, Table.HOLDING, Direction.READ_WRITE)
    async with ModbusPlcServer(tags) as srv:
        client = AsyncModbusTcpClient(LOOPBACK, port=srv.port, retries=0, reconnect_delay=0)
        await client.connect()
        try:
            with pytest.raises(ValueError, match="126"):
                await client.read_holding_registers(0, count=126, device_id=1)
            assert srv.requests == []  # refused before sending
            assert len((await client.read_holding_registers(0, count=125)).registers) == 125
            answer = await client.write_registers(0, [0] * 124, device_id=1)
            assert answer.isError() and answer.exception_code == 3  # the server refuses 124
        finally:
            client.close()


# ------------------------------------------------------------------------- TLS
def write_pki(folder: Path) -> None:
    """A CA, a server certificate for the DNS name plc.example only, a client certificate."""
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "test CA")])
    ca = certificate(ca_name, ca_name, ca_key.public_key(), ca_key, is_ca=True)
    (folder / "ca.pem").write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    for role, san in (("server", "plc.example"), ("client", "mpc.example")):
        key = ec.generate_private_key(ec.SECP256R1())
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, san)])
        cert = certificate(name, ca_name, key.public_key(), ca_key, san=san)
        (folder / f"{role}.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        (folder / f"{role}.key").write_bytes(
            key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            )
        )


def certificate(
    subject: x509.Name,
    issuer: x509.Name,
    public_key: ec.EllipticCurvePublicKey,
    signer: ec.EllipticCurvePrivateKey,
    *,
    is_ca: bool = False,
    san: str | None = None,
) -> x509.Certificate:
    now = datetime.datetime.now(datetime.UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer)
        .public_key(public_key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=is_ca, path_length=None), critical=True)
    )
    if san is not None:
        builder = builder.add_extension(x509.SubjectAlternativeName([x509.DNSName(san)]), False)
    return builder.sign(signer, hashes.SHA256())


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("pki")
    write_pki(folder)
    return folder


def tls_connection(port: int, server_hostname: str | None) -> Connection:
    tls = ModbusTls(
        ca_file="ca.pem",
        cert_file="client.pem",
        key_file="client.key",
        server_hostname=server_hostname,
    )
    base = connection(port)
    return base.model_copy(update={"modbus": ModbusOptions(tls=tls)})


@pytest.fixture
async def tls_server(pki: Path) -> AsyncIterator[ModbusPlcServer]:
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH, cafile=str(pki / "ca.pem"))
    ctx.load_cert_chain(str(pki / "server.pem"), str(pki / "server.key"))
    ctx.verify_mode = ssl.CERT_REQUIRED  # Modbus/TCP Security: mutual authentication
    async with ModbusPlcServer(TAGS, tls=ctx) as srv:
        yield srv


async def test_tls_read_and_write(tls_server: ModbusPlcServer, pki: Path) -> None:
    tls_server.set_value("biomass", 6.5)
    conn = tls_connection(tls_server.port, "plc.example")
    async with ModbusPort(TAGS, conn, SteppedClock(NOW), base_dir=pki) as port:
        assert (await port.read(["biomass"]))["biomass"].value == 6.5
        assert (await port.write({"mpc_heartbeat": 8})).ok


async def test_tls_checks_the_server_name(tls_server: ModbusPlcServer, pki: Path) -> None:
    conn = tls_connection(tls_server.port, None)  # the certificate is for plc.example only
    with pytest.raises(PortConnectError, match=f"127.0.0.1:{tls_server.port}"):
        async with ModbusPort(TAGS, conn, SteppedClock(NOW), base_dir=pki):
            pass


def test_tls_files_missing_is_a_port_error(tmp_path: Path) -> None:
    with pytest.raises(PortError, match="Modbus/TLS"):
        ModbusPort(TAGS, tls_connection(502, None), SteppedClock(NOW), base_dir=tmp_path)
