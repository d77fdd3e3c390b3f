"""An OPC UA server's OperationLimits: the port reads them at connect and cuts its requests.

An embedded PLC's OPC UA server takes only so many nodes per request and refuses a longer one
whole with BadTooManyOperations. The HIL server, given ``limits`` (a site's
``hil.opcua_limits``), advertises them in ``Server/ServerCapabilities/OperationLimits`` and
enforces them, as such a PLC does. First what that does to a client that does not heed them
(asyncua's own, and our port with the limits unread), then the port reading them and sending
every Read, Write, TranslateBrowsePathsToNodeIds and CreateMonitoredItems in requests that fit.

Real asyncua servers and clients on 127.0.0.1.
"""

from __future__ import annotations

import math
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from asyncua import Client, ua
from test_ports_opcua import (  # noqa: F401 - plc, shelf and tag_map are fixtures
    INITIAL,
    _connection,
    _port,
    plc,
    readable,
    shelf,
    tag_map,
)

from controller.errors import PortError
from controller.ports.base import WriteStatus
from controller.ports.opcua import OpcUaPort
from controller.ports.opcua_limits import LIMIT_IDS, OperationLimits, chunks
from controller.ports.opcua_types import BUILTIN_TYPES, type_name
from controller.tags import Direction, OpcUaSpec, Tag, TagMap
from hil.net import free_port
from hil.servers.opcua import OpcUaPlcServer

pytestmark = pytest.mark.timeout(60)

LIMITS = OperationLimits(read=4, write=2, translate=2, monitored_items=3)
WRITES = {"feed_rate_sp": 0.125, "mpc_heartbeat": 42, "mpc_request": 1}


@pytest.fixture
async def small_plc(
    tag_map: TagMap,  # noqa: F811
    shelf: Path,  # noqa: F811
) -> AsyncIterator[OpcUaPlcServer]:
    """A PLC whose server takes 4 nodes per Read, 2 per Write, 2 browse paths per
    TranslateBrowsePathsToNodeIds and 3 monitored items per CreateMonitoredItems."""
    server = OpcUaPlcServer(tag_map, free_port(), initial=INITIAL, shelf=shelf, limits=LIMITS)
    async with server:
        yield server


def _value_nodes(server: OpcUaPlcServer, names: list[str]) -> list[ua.ReadValueId]:
    value = ua.AttributeIds.Value
    return [ua.ReadValueId(NodeId=server.node_id(n), AttributeId=value) for n in names]


async def _limits_seen(client: Client) -> list[int]:
    nodes = [client.get_node(ua.NodeId(ua.Int32(i))) for i in LIMIT_IDS]
    return [int(await n.read_value()) for n in nodes]


# ---------------------------------------------------------------------------- the HIL server
async def test_the_hil_server_advertises_and_enforces_its_limits_with_them_only(
    tag_map: TagMap,  # noqa: F811
    small_plc: OpcUaPlcServer,
    plc: OpcUaPlcServer,  # noqa: F811 - the same PLC without limits
) -> None:
    five = readable(tag_map)[:5]
    async with Client(small_plc.url, timeout=5) as client:  # asyncua's client, not our port
        assert await _limits_seen(client) == [4, 2, 2, 3]
        with pytest.raises(ua.UaStatusCodeError) as err:
            await client.uaclient.read(ua.ReadParameters(NodesToRead=_value_nodes(small_plc, five)))
        assert ua.StatusCode(err.value.code).name == "BadTooManyOperations"
        four = await client.uaclient.read(
            ua.ReadParameters(NodesToRead=_value_nodes(small_plc, five[:4]))
        )
        assert [dv.Value.Value for dv in four] == [INITIAL[n] for n in five[:4]]
        node = small_plc.node_id("feed_rate_sp")
        dv = ua.DataValue(ua.Variant(0.2, ua.VariantType.Double))
        three = [ua.WriteValue(NodeId=node, AttributeId=ua.AttributeIds.Value, Value=dv)] * 3
        with pytest.raises(ua.UaStatusCodeError) as err:
            await client.uaclient.write(ua.WriteParameters(NodesToWrite=three))
        assert ua.StatusCode(err.value.code).name == "BadTooManyOperations"
        assert small_plc.value("feed_rate_sp") == INITIAL["feed_rate_sp"]  # refused whole
    async with Client(plc.url, timeout=5) as client:  # without limits: asyncua's, unenforced
        assert await _limits_seen(client) == [10000] * 4
        got = await client.uaclient.read(ua.ReadParameters(NodesToRead=_value_nodes(plc, five)))
        assert len(got) == 5


async def test_a_port_that_does_not_heed_the_limits_cannot_even_connect(
    tag_map: TagMap,  # noqa: F811
    small_plc: OpcUaPlcServer,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """What reading the limits protects against: the connect's one Read of every tag's
    DataType is refused whole, as every cycle's one Read of all the tags would be."""

    async def unread(self: OpcUaPort, client: Client) -> OperationLimits:
        return OperationLimits()

    monkeypatch.setattr(OpcUaPort, "_operation_limits", unread)
    port = _port(tag_map, _connection(small_plc.port))
    with pytest.raises(PortError, match="the server answered BadTooManyOperations"):
        await port.connect()
    await port.close()


# ---------------------------------------------------------------------------- the port
async def test_the_port_reads_the_limits_and_cuts_reads_and_writes_to_fit(
    tag_map: TagMap,  # noqa: F811
    small_plc: OpcUaPlcServer,
) -> None:
    names = readable(tag_map)
    assert len(names) > 2 * LIMITS.read  # several Reads
    async with _port(tag_map, _connection(small_plc.port)) as port:
        assert port.limits == LIMITS
        reads = small_plc.read_requests
        snap = await port.read(names)
        assert small_plc.read_requests - reads == math.ceil(len(names) / 4)
        assert {n: snap[n].value for n in INITIAL} == pytest.approx(INITIAL)
        assert list(snap.values) == names  # in the order asked
        writes, reads = small_plc.write_requests, small_plc.read_requests
        report = await port.write(WRITES)
        assert small_plc.write_requests - writes == 2  # 3 values, 2 per Write
        assert small_plc.read_requests - reads == 1  # 3 read-backs in one Read of 4
    assert report.ok and list(report.results) == list(WRITES)
    assert {t: r.status for t, r in report.results.items()} == dict.fromkeys(WRITES, WriteStatus.OK)
    assert {t: small_plc.value(t) for t in WRITES} == WRITES


async def test_browse_paths_and_monitored_items_go_in_requests_that_fit(
    tag_map: TagMap,  # noqa: F811
    small_plc: OpcUaPlcServer,
) -> None:
    folder = ("0:Objects", "2:bioreactor", "2:bioreactor")
    by_path = {
        f"{n}_by_path": Tag(
            unit="-", direction=Direction.READ, opcua=OpcUaSpec(browse_path=(*folder, f"2:{n}"))
        )
        for n in ("biomass", "substrate", "product_titer", "broth_volume", "feed_rate_pv")
    }
    paths = TagMap(name="bioreactor", tags={**tag_map.tags, **by_path})
    conn = _connection(small_plc.port, subscription=True)
    async with _port(paths, conn) as port:  # 5 paths: 3 translate calls; 20+ items: 3 a call
        assert port.limits == LIMITS
        snap = await port.read(list(by_path))
        for name, value in snap.values.items():
            assert value.value == INITIAL[name.removesuffix("_by_path")], name
        snap = await port.read(readable(tag_map))
        assert {n: snap[n].value for n in INITIAL} == pytest.approx(INITIAL)


async def test_a_write_cut_in_parts_that_fails_part_way_reports_each_value(
    tag_map: TagMap,  # noqa: F811
    shelf: Path,  # noqa: F811
) -> None:
    """One node per Write; the server stalls from the second Write on (its answers wait
    1.5 s, the port waits 0.5 s). The first value went and its read-back timed out: FAILED,
    written but not confirmed; the second's request timed out: FAILED, outcome unknown (the
    server does apply it, late); the third was never sent: NOT_SENT. Nothing is raised, no
    group is reported as not written when some of it was, and nothing is sent again."""
    one = OperationLimits(write=1)
    async with OpcUaPlcServer(
        tag_map, free_port(), initial=INITIAL, shelf=shelf, limits=one
    ) as server:

        def stall_after_first(tag: str, value: float) -> str | None:
            if tag == "feed_rate_sp":
                server.latency = 1.5
            return None

        server.write_hook = stall_after_first
        async with _port(tag_map, _connection(server.port, timeout_s=0.5)) as port:
            writes = server.write_requests
            first, second = await port.write_each(
                [{"feed_rate_sp": 0.125, "mpc_heartbeat": 42}, {"mpc_request": 1}]
            )
            assert server.write_requests - writes == 2  # the third part never went
        server.latency = 0.0
        assert server.value("feed_rate_sp") == 0.125
        assert server.value("mpc_request") == INITIAL["mpc_request"]
    assert not isinstance(first, PortError) and not isinstance(second, PortError)
    got = {t: (r.status, r.detail) for rep in (first, second) for t, r in rep.results.items()}
    assert got["feed_rate_sp"][0] is WriteStatus.FAILED
    assert got["feed_rate_sp"][1].startswith("written (Good), but the read-back failed")
    assert got["mpc_heartbeat"][0] is WriteStatus.FAILED
    assert got["mpc_heartbeat"][1].startswith("outcome unknown: its part of the write failed")
    assert got["mpc_request"][0] is WriteStatus.NOT_SENT


async def test_limits_below_four_and_limits_the_server_does_not_have(
    tag_map: TagMap,  # noqa: F811
    shelf: Path,  # noqa: F811
) -> None:
    """A server that takes one node per Read refuses the four limits read at once: the port
    reads them one by one. A limit node the server does not have is no limit."""
    ones = OperationLimits(read=1, write=1, translate=1, monitored_items=1)
    async with OpcUaPlcServer(
        tag_map, free_port(), initial=INITIAL, shelf=shelf, limits=ones
    ) as server:
        async with _port(tag_map, _connection(server.port, subscription=True)) as port:
            assert port.limits == ones
            snap = await port.read(readable(tag_map))
            assert {n: snap[n].value for n in INITIAL} == pytest.approx(INITIAL)
        node = server.server.get_node(ua.NodeId(ua.Int32(LIMIT_IDS[1])))  # MaxNodesPerWrite
        await server.server.delete_nodes([node])
        server.limits = OperationLimits(read=1, translate=1, monitored_items=1)  # not enforced
        async with _port(tag_map, _connection(server.port)) as port:
            assert port.limits == OperationLimits(read=1, translate=1, monitored_items=1)
            writes = server.write_requests
            report = await port.write(WRITES)
            assert server.write_requests - writes == 1  # no limit: one Write of 3
        assert report.ok


# ---------------------------------------------------------------------------- pure parts
def test_limits_of_zero_missing_or_not_a_count_are_no_limit() -> None:
    got = OperationLimits.of({"read": 0, "write": True, "translate": "5", "monitored_items": -1})
    assert got == OperationLimits()
    assert OperationLimits.of({"read": 7, "write": 3.0}) == OperationLimits(read=7, write=3)
    assert OperationLimits.of({"read": 2.5}) == OperationLimits()
    assert OperationLimits().describe() == "none"
    assert LIMITS.describe() == "read 4, write 2, translate 2, monitored_items 3"

    bad = ua.DataValue(StatusCode=ua.StatusCode(ua.StatusCodes.BadNodeIdUnknown))
    read = [ua.DataValue(ua.Variant(4, ua.VariantType.UInt32)), bad]
    assert OperationLimits.read_from(read) == OperationLimits(read=4)


def test_chunks_keep_order_and_size() -> None:
    assert [list(c) for c in chunks(list(range(7)), 3)] == [[0, 1, 2], [3, 4, 5], [6]]
    assert [list(c) for c in chunks([1, 2], None)] == [[1, 2]]
    assert [list(c) for c in chunks([1, 2], 2)] == [[1, 2]]
    assert list(chunks([], 3)) == []
    with pytest.raises(ValueError, match="allowed: >= 1 or None"):
        list(chunks([1, 2, 3], 0))


def test_builtin_type_names_are_asyncuas() -> None:
    assert tuple(ua.VariantType(i).name for i in range(1, 26)) == BUILTIN_TYPES
    assert type_name(ua.NodeId(ua.Int32(11))) == "Double"
    assert type_name(ua.NodeId(ua.String("x"), ua.Int16(2))) == "ns=2;s=x"
    assert type_name(None) == "None"
