"""The HIL OPC UA server keeps the decoded parameters of a Read, never its answers
(hil.servers.opcua_guard): the same Read request answers the values of the moment."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from asyncua import Client, ua

from controller.tags import load_tag_map
from hil.servers.opcua import OpcUaPlcServer
from hil.servers.opcua_cache import address_space_shelf

pytestmark = pytest.mark.timeout(60)
ROOT = Path(__file__).resolve().parents[2]
TAGS = load_tag_map(ROOT / "configs/tags/cstr.yaml")
READ = ["conc_a", "conc_b", "reactor_temp"]


@pytest.fixture(scope="module")
def shelf(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return asyncio.run(address_space_shelf(tmp_path_factory.mktemp("shelf")))


@pytest.fixture
async def served(shelf: Path) -> AsyncIterator[tuple[OpcUaPlcServer, Client]]:
    server = OpcUaPlcServer(TAGS, initial={"conc_a": 1.0, "conc_b": 2.0}, shelf=shelf)
    async with server, Client(server.url, timeout=3) as client:
        yield server, client


async def _read(client: Client, server: OpcUaPlcServer, tags: list[str]) -> list[object]:
    """ONE Read request of ``tags``' values (the same bytes for the same tags)."""
    params = ua.ReadParameters(
        NodesToRead=[
            ua.ReadValueId(NodeId=server.node_id(t), AttributeId=ua.AttributeIds.Value)
            for t in tags
        ]
    )
    return [dv.Value.Value if dv.Value else None for dv in await client.uaclient.read(params)]


async def test_a_repeated_read_answers_the_values_of_the_moment(
    served: tuple[OpcUaPlcServer, Client],
) -> None:
    server, client = served
    first = await _read(client, server, READ)
    assert first[:2] == [1.0, 2.0]
    await server.publish({"conc_a": 3.5, "conc_b": 0.25, "reactor_temp": 330.0})
    assert await _read(client, server, READ) == [3.5, 0.25, 330.0]
    await server.publish({"conc_a": 4.5})
    assert (await _read(client, server, READ))[0] == 4.5


async def test_reads_of_many_lists_each_answer_their_own_nodes(
    served: tuple[OpcUaPlcServer, Client],
) -> None:
    """More distinct Reads than the server keeps: every one still answers its nodes."""
    server, client = served
    values = {t: float(i) for i, t in enumerate(READ)}
    await server.publish(values)
    lists = [[READ[i % 3], READ[(i + 1) % 3]] * (1 + i // 3) for i in range(40)]
    for _ in range(2):
        for tags in lists:
            assert await _read(client, server, tags) == [values[t] for t in tags]
