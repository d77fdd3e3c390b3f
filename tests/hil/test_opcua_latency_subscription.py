"""``comm_latency`` reaches OPC UA subscription clients too: while the server has a latency, a
publication reaches the address space (so the data-change notifications) that long after
:meth:`~hil.servers.opcua.OpcUaPlcServer.publish`, in order, on the server's clock.

A real asyncua server and client on 127.0.0.1; the latency is counted on a stepped clock the
test moves, so nothing depends on how busy the machine is. Before the fix the notification of
a published value came within one publishing interval, whatever the latency.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from asyncua import Client, ua

from controller.clock import SteppedClock
from controller.tags import load_tag_map
from hil.servers.opcua import OpcUaPlcServer
from hil.servers.opcua_cache import address_space_shelf

pytestmark = pytest.mark.timeout(60)
ROOT = Path(__file__).resolve().parents[2]
TAGS = load_tag_map(ROOT / "configs/tags/cstr.yaml")
#: how long the test waits for a notification that must come (a bound, not a pace)
PATIENCE_S = 20.0


class Heard:
    """The data-change notifications of one subscription, by tag."""

    def __init__(self, tag_of: dict[Any, str]) -> None:
        self.tag_of = tag_of
        self.values: dict[str, list[float]] = {}
        self.changed = asyncio.Event()

    def datachange_notification(self, node: Any, val: Any, data: Any) -> None:
        self.values.setdefault(self.tag_of[node.nodeid], []).append(val)
        self.changed.set()

    async def until(self, tag: str, value: float) -> None:
        async def wait() -> None:
            while value not in self.values.get(tag, []):
                self.changed.clear()
                await self.changed.wait()

        await asyncio.wait_for(wait(), PATIENCE_S)


@pytest.fixture(scope="module")
def shelf(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return asyncio.run(address_space_shelf(tmp_path_factory.mktemp("shelf")))


@pytest.fixture
async def subscribed(
    shelf: Path,
) -> AsyncIterator[tuple[OpcUaPlcServer, SteppedClock, Heard]]:
    clock = SteppedClock()
    server = OpcUaPlcServer(TAGS, initial={"conc_a": 1.0, "conc_b": 0.0}, shelf=shelf, clock=clock)
    async with server, Client(server.url, timeout=5) as client:
        tags = ("conc_a", "conc_b")
        heard = Heard({server.node_id(t): t for t in tags})
        sub = await client.create_subscription(20, heard)
        await sub.subscribe_data_change(
            [client.get_node(server.node_id(t)) for t in tags], sampling_interval=ua.Double(20)
        )
        await heard.until("conc_a", 1.0)  # the initial values
        await heard.until("conc_b", 0.0)
        yield server, clock, heard
        await sub.delete()


async def test_a_subscription_sees_a_publication_only_after_the_latency(
    subscribed: tuple[OpcUaPlcServer, SteppedClock, Heard],
) -> None:
    server, clock, heard = subscribed
    server.latency = 2.0  # what the rig sets for an active comm_latency fault of 2 s
    await server.publish({"conc_a": 2.0})
    assert server.value("conc_a") == 1.0  # not in the address space yet
    assert server.delay.waiting == 1
    # a change made after it, server-side and undelayed, reaches the client first: had the
    # publication been applied, its notification could not be missing now
    await server.set_value("conc_b", 5.0)
    await heard.until("conc_b", 5.0)
    assert 2.0 not in heard.values["conc_a"]

    clock.advance(1.9)  # not yet
    await asyncio.sleep(0)
    assert server.value("conc_a") == 1.0
    clock.advance(0.1)  # 2.0 s of the server's clock after publish
    await heard.until("conc_a", 2.0)
    assert server.value("conc_a") == 2.0 and server.delay.waiting == 0


async def test_publications_stay_in_order_when_the_latency_ends(
    subscribed: tuple[OpcUaPlcServer, SteppedClock, Heard],
) -> None:
    server, clock, heard = subscribed
    server.latency = 2.0
    await server.publish({"conc_a": 2.0})
    server.latency = 0.0  # the fault ends while a publication is held back
    await server.publish({"conc_a": 3.0})
    assert server.value("conc_a") == 1.0  # never the newer value before the older one
    assert server.delay.waiting == 2
    clock.advance(2.0)
    await heard.until("conc_a", 3.0)
    assert heard.values["conc_a"][-2:] == [2.0, 3.0]
    await server.publish({"conc_a": 4.0})  # no latency, nothing waiting: at once
    assert server.value("conc_a") == 4.0
