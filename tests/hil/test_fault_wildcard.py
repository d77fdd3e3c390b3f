"""A wildcard ``comm_bad_status`` really makes every tag read bad, at a real client, on all
three servers (in-memory, Modbus TCP and OPC UA on 127.0.0.1); a literal ``"*"`` never reaches a
server, where it would match no tag and the campaign would pass with no fault injected."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Coroutine
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from asyncua import Client
from pymodbus.client import AsyncModbusTcpClient

from controller.clock import SteppedClock
from controller.ports.base import Quality
from controller.runtime.site import Site, load_site
from controller.tags import Table
from hil.faultcheck import FaultRefusedError, parse_fault
from hil.faults import FaultSet
from hil.faultspec import FaultSpec, expand_tags
from hil.rig import HilRig
from hil.servers.base import PlcServer
from hil.servers.memory import MemoryPlcServer
from hil.servers.modbus import ModbusPlcServer
from hil.servers.opcua import OpcUaPlcServer

ROOT = Path(__file__).resolve().parents[2]
SITE = load_site(ROOT / "configs" / "sites" / "lyophilizer-modbus.yaml")
ALL_TAGS = tuple(SITE.tags.tags)
pytestmark = pytest.mark.timeout(60)

#: reads every tag of the site at a real client: tag -> True when the read is bad
Reader = Callable[[], Coroutine[Any, Any, dict[str, bool]]]


def _memory(server: MemoryPlcServer) -> Reader:
    port = server.port()

    async def read() -> dict[str, bool]:
        await port.connect()
        snap = await port.read(ALL_TAGS)
        return {t: v.quality is not Quality.GOOD for t, v in snap.values.items()}

    return read


def _modbus(client: AsyncModbusTcpClient, site: Site) -> Reader:
    async def read() -> dict[str, bool]:
        out = {}
        for name, tag in site.tags.tags.items():
            spec = tag.modbus
            assert spec is not None, name
            address, count = spec.protocol_address, spec.count
            rr = await {
                Table.COIL: client.read_coils,
                Table.DISCRETE: client.read_discrete_inputs,
                Table.HOLDING: client.read_holding_registers,
                Table.INPUT: client.read_input_registers,
            }[spec.table](address, count=count)
            assert not rr.isError() or rr.exception_code == 4, (name, rr)  # 04: device failure
            out[name] = rr.isError()
        return out

    return read


def _opcua(client: Client, site: Site) -> Reader:
    async def read() -> dict[str, bool]:
        out = {}
        for name, tag in site.tags.tags.items():
            assert tag.opcua is not None and tag.opcua.node_id is not None, name
            node = client.get_node(tag.opcua.node_id)
            dv = await node.read_data_value(raise_on_bad_status=False)
            assert dv.StatusCode is not None
            out[name] = not dv.StatusCode.is_good()
        return out

    return read


async def _with_client(
    kind: str, tmp: Path, port: int
) -> AsyncIterator[tuple[PlcServer, SteppedClock, Reader]]:
    clock = SteppedClock()
    if kind == "memory":
        server = MemoryPlcServer(SITE.tags, clock)
        await server.start()
        yield server, clock, _memory(server)
        return
    if kind == "modbus":
        mb_server = ModbusPlcServer(SITE.tags, port)
        await mb_server.start()
        mb = AsyncModbusTcpClient("127.0.0.1", port=port, timeout=2)
        await mb.connect()
        try:
            yield mb_server, clock, _modbus(mb, SITE)
        finally:
            mb.close()
            await mb_server.close()
        return
    ua_server = OpcUaPlcServer(SITE.tags, port, shelf=tmp)
    await ua_server.start()
    try:
        async with Client(ua_server.url, timeout=5) as uac:
            yield ua_server, clock, _opcua(uac, SITE)
    finally:
        await ua_server.close()


@pytest.mark.parametrize("kind", ["memory", "modbus", "opcua"])
async def test_a_wildcard_bad_status_makes_every_tag_read_bad(
    kind: str, tmp_path: Path, port_number: int
) -> None:
    async for server, clock, read in _with_client(kind, tmp_path, port_number):
        rig = HilRig(SITE, clock, [server])
        await rig.scan()
        assert not any((await read()).values())  # without the fault: every tag good
        held = rig.inject(parse_fault({"kind": "comm_bad_status", "target": "*", "start": 0.0}))
        assert held.target == "*"
        await rig.scan()
        bad = await read()
        assert sorted(bad) == sorted(ALL_TAGS) and all(bad.values()), bad
        assert set(server.bad_tags) == set(ALL_TAGS)  # expanded to the real tags, never "*"
        rig.faults.clear(kind="comm_bad_status")
        await rig.scan()
        assert not any((await read()).values())  # and good again once cleared


async def test_a_pattern_makes_only_the_tags_it_matches_bad() -> None:
    clock = SteppedClock()
    server = MemoryPlcServer(SITE.tags, clock)
    rig = HilRig(SITE, clock, [server])
    await server.start()
    rig.inject(parse_fault({"kind": "comm_bad_status", "target": "*_sp", "start": 0.0}))
    await rig.scan()
    bad = await _memory(server)()
    assert {t for t, is_bad in bad.items() if is_bad} == {"shelf_temp_sp", "chamber_pressure_sp"}


def test_a_pattern_matching_no_tag_is_refused() -> None:
    clock = SteppedClock()
    rig = HilRig(SITE, clock, [MemoryPlcServer(SITE.tags, clock)])
    fault = {"kind": "comm_bad_status", "target": "produkt_*", "start": 0.0}
    with pytest.raises(FaultRefusedError, match=r"the pattern 'produkt_\*' .* matches no tag"):
        rig.inject(parse_fault(fault))
    assert rig.faults.faults == ()


@pytest.mark.parametrize("kind", ["memory", "modbus", "opcua"])
def test_a_server_refuses_a_name_that_is_not_a_tag(kind: str) -> None:
    """The servers take real tag names only: an unexpanded '*' raises, it never matches
    nothing in silence."""
    server: PlcServer
    if kind == "memory":
        server = MemoryPlcServer(SITE.tags, SteppedClock())
    elif kind == "modbus":
        server = ModbusPlcServer(SITE.tags)
    else:
        server = OpcUaPlcServer(SITE.tags)
    with pytest.raises(KeyError, match=r"unknown tag\(s\) \['\*'\].*expanded"):
        server.bad_tags = {"*": "communication fault"}
    assert server.bad_tags == {}


def test_the_fault_set_expands_wildcards_against_the_tags_it_is_given() -> None:
    tags = ("conc_a", "conc_b", "reactor_temp")
    specs = [FaultSpec(kind="comm_bad_status", target="conc_?", start=1.0)]
    fs = FaultSet(specs, np.random.default_rng(0), tags=tags)
    assert fs.comms(0.5).bad_tags == frozenset()
    assert fs.comms(1.0).bad_tags == frozenset({"conc_a", "conc_b"})
    fs.inject(FaultSpec(kind="comm_bad_status", target="*", start=0.0), now=2.0)
    assert fs.comms(2.0).bad_tags == frozenset(tags)
    assert expand_tags("reactor_temp", tags) == ("reactor_temp",)
    assert expand_tags("reactor_tmp", tags) == ()


def test_the_fault_set_refuses_what_it_cannot_expand() -> None:
    star = FaultSpec(kind="comm_bad_status", target="*", start=0.0)
    with pytest.raises(ValueError, match="wildcard: the fault set needs the site's tag names"):
        FaultSet([star], np.random.default_rng(0))
    with pytest.raises(ValueError, match=r"unknown tag 'conc_c'.*did you mean"):
        FaultSet(
            [FaultSpec(kind="comm_bad_status", target="conc_c", start=0.0)],
            np.random.default_rng(0),
            tags=("conc_a", "conc_b"),
        )


async def test_the_memory_plc_refuses_writes_of_a_bad_tag_as_modbus_and_opcua_do() -> None:
    clock = SteppedClock()
    server = MemoryPlcServer(SITE.tags, clock)
    rig = HilRig(SITE, clock, [server])
    await server.start()
    await rig.scan()
    port = server.port()
    await port.connect()
    assert (await port.write({"mpc_heartbeat": 1.0})).ok
    rig.inject(parse_fault({"kind": "comm_bad_status", "target": "mpc_*", "start": 0.0}))
    await rig.scan()
    report = await port.write({"mpc_heartbeat": 2.0})
    result = report.results["mpc_heartbeat"]
    assert result.status.value == "rejected"
    assert result.detail == "mpc_heartbeat: communication fault (bad status)"
    assert server.value("mpc_heartbeat") == 1.0  # nothing reached the PLC
