"""``Port.write_each``: independent writes, each checked and reported on its own, sent in as
few requests as the protocol allows. Over OPC UA every group that passes its checks goes in
ONE Write call and ONE Read of the read-backs (the runtime sends the twin's publication with
its control write this way: one Write and one Read call fewer per cycle). A group with a
refused value sends nothing of itself and holds no other; a tag the PLC refuses fails only
its own group; a lost connection fails every group that was to be sent.

Against a real asyncua server on 127.0.0.1 (the HIL's, ``test_ports_opcua.py``'s fixtures);
the base implementation (one write per group) on the in-memory port.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import pytest
from test_ports_opcua import (  # noqa: F401 - plc, shelf and tag_map are fixtures
    INITIAL,
    _connection,
    _port,
    plc,
    shelf,
    tag_map,
)

from controller.clock import RealClock
from controller.errors import PortConnectError, PortError
from controller.ports.base import WriteReport, WriteStatus
from controller.ports.memory import MemoryPort, table_from_tag_map
from controller.ports.opcua import OpcUaPort
from controller.tags import TagMap
from hil.servers.opcua import OpcUaPlcServer

pytestmark = pytest.mark.timeout(60)

CONTROL = {"feed_rate_sp": 0.125, "mpc_heartbeat": 42}
SOFT = {"titer_estimate": 1.5, "biomass_estimate": 2.25}


def _statuses(outcome: WriteReport | PortError) -> dict[str, WriteStatus]:
    assert isinstance(outcome, WriteReport), outcome
    return {t: r.status for t, r in outcome.results.items()}


async def test_two_groups_go_in_one_write_call_and_one_read(
    tag_map: TagMap,  # noqa: F811
    plc: OpcUaPlcServer,  # noqa: F811
) -> None:
    assert set(SOFT) <= {n for n, t in tag_map.tags.items() if t.publishes}
    async with _port(tag_map, _connection(plc.port)) as port:
        writes, reads = plc.write_requests, plc.read_requests
        control, soft = await port.write_each([CONTROL, SOFT])
        assert (plc.write_requests - writes, plc.read_requests - reads) == (1, 1)
        alone = [await port.write(CONTROL), await port.write(SOFT)]  # the same, one by one
        assert plc.write_requests - writes == 3
    assert isinstance(control, WriteReport) and isinstance(soft, WriteReport)
    assert control.ok and soft.ok
    assert set(control.results) == set(CONTROL) and set(soft.results) == set(SOFT)
    for together, apart in zip((control, soft), alone, strict=True):
        assert {t: (r.status, r.readback) for t, r in together.results.items()} == {
            t: (r.status, r.readback) for t, r in apart.results.items()
        }
    assert control.results["feed_rate_sp"].readback == 0.125  # read back in the one Read
    assert plc.value("titer_estimate") == 1.5 and plc.value("mpc_heartbeat") == 42


async def test_a_refused_group_sends_nothing_of_itself_and_holds_no_other(
    tag_map: TagMap,  # noqa: F811
    plc: OpcUaPlcServer,  # noqa: F811
) -> None:
    outside = {"titer_estimate": 50.0, "biomass_estimate": 2.25}  # limits [0, 10]
    async with _port(tag_map, _connection(plc.port)) as port:
        writes = plc.write_requests
        control, soft = await port.write_each([CONTROL, outside])
        assert plc.write_requests - writes == 1
        held, alone = await port.write_each([{"feed_rate_sp": math.nan}, {"mpc_heartbeat": 43}])
    assert _statuses(control) == {"feed_rate_sp": WriteStatus.OK, "mpc_heartbeat": WriteStatus.OK}
    assert _statuses(soft) == {
        "titer_estimate": WriteStatus.REJECTED,
        "biomass_estimate": WriteStatus.NOT_SENT,
    }
    assert isinstance(soft, WriteReport)
    assert "outside the tag limits" in soft.results["titer_estimate"].detail
    assert plc.value("biomass_estimate") == 0.0  # nothing of the refused group was sent
    assert _statuses(held) == {"feed_rate_sp": WriteStatus.REJECTED}
    assert _statuses(alone) == {"mpc_heartbeat": WriteStatus.OK}
    assert plc.value("feed_rate_sp") == 0.125 and plc.value("mpc_heartbeat") == 43


async def test_a_tag_the_plc_refuses_fails_only_its_own_group(
    tag_map: TagMap,  # noqa: F811
    plc: OpcUaPlcServer,  # noqa: F811
) -> None:
    plc.set_range("titer_estimate", 0.0, 1.0)  # inside the tag limits: the PLC refuses it
    async with _port(tag_map, _connection(plc.port)) as port:
        writes = plc.write_requests
        control, soft = await port.write_each([CONTROL, SOFT])
        assert plc.write_requests - writes == 1
    assert isinstance(control, WriteReport) and control.ok
    assert _statuses(soft) == {
        "titer_estimate": WriteStatus.REJECTED,
        "biomass_estimate": WriteStatus.OK,
    }
    assert isinstance(soft, WriteReport)
    assert "BadOutOfRange" in soft.results["titer_estimate"].detail
    assert plc.value("feed_rate_sp") == 0.125 and plc.value("titer_estimate") == 0.0


async def test_a_lost_connection_fails_every_group_that_was_to_be_sent(
    tag_map: TagMap,  # noqa: F811
    plc: OpcUaPlcServer,  # noqa: F811
) -> None:
    async with _port(tag_map, _connection(plc.port, timeout_s=0.5)) as port:
        await port.read(["biomass"])
        await plc.stop()
        control, refused, soft = await port.write_each([CONTROL, {"biomass": 1.0}, SOFT])
    assert isinstance(control, PortConnectError) and control is soft
    assert str(plc.port) in str(control)
    assert _statuses(refused) == {"biomass": WriteStatus.REJECTED}  # read-only: never sent


async def test_a_tag_in_two_groups_is_refused_before_anything_is_sent(
    tag_map: TagMap,  # noqa: F811
    plc: OpcUaPlcServer,  # noqa: F811
) -> None:
    async with _port(tag_map, _connection(plc.port)) as port:
        writes = plc.write_requests
        with pytest.raises(ValueError, match=r"\['feed_rate_sp'\] are in two groups"):
            await port.write_each([CONTROL, {"feed_rate_sp": 0.1}])
        assert plc.write_requests == writes
    assert plc.value("feed_rate_sp") == INITIAL["feed_rate_sp"]


class _LosesSoftSensors(MemoryPort):
    """An in-memory port whose writes of the soft sensors fail as a lost connection would."""

    async def write(self, values: Mapping[str, float]) -> WriteReport:
        if set(values) & set(SOFT):
            raise PortConnectError("lost the connection to the soft sensors' PLC")
        return await super().write(values)


async def test_the_base_port_writes_each_group_on_its_own(tag_map: TagMap) -> None:  # noqa: F811
    table = table_from_tag_map(tag_map, {})
    async with _LosesSoftSensors(table, RealClock(), tag_map) as port:
        control, soft, refused = await port.write_each([CONTROL, SOFT, {"biomass": 1.0}])
    assert _statuses(control) == {"feed_rate_sp": WriteStatus.OK, "mpc_heartbeat": WriteStatus.OK}
    assert isinstance(soft, PortConnectError)  # its own failure, not the control write's
    assert _statuses(refused) == {"biomass": WriteStatus.REJECTED}
    assert table.current("feed_rate_sp") == 0.125
    async with MemoryPort(table, RealClock(), tag_map) as port:  # the same contract as OPC UA's
        with pytest.raises(ValueError, match=r"\['feed_rate_sp'\] are in two groups"):
            await port.write_each([{"feed_rate_sp": 0.1}, {"feed_rate_sp": 0.2}])
    assert table.current("feed_rate_sp") == 0.125  # nothing sent
    assert not MemoryPort.batches_writes and OpcUaPort.batches_writes
