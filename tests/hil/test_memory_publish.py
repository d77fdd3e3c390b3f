"""The in-memory PLC lays its publications into the table lazily: what a reader sees must be
exactly what publishing each image at once would give (values, quality, source times, and the
order of publications and writes)."""

from __future__ import annotations

import asyncio
from pathlib import Path

from controller.clock import SteppedClock
from controller.ports.base import Quality
from controller.ports.memory import table_from_tag_map
from controller.runtime.site import load_site
from hil.servers.memory import MemoryPlcServer

CSTR = Path(__file__).resolve().parents[2] / "configs" / "sites" / "cstr-modbus.yaml"


def _server() -> tuple[MemoryPlcServer, SteppedClock]:
    clock = SteppedClock()
    server = MemoryPlcServer(load_site(CSTR).tags, clock)
    asyncio.run(server.start())
    return server, clock


def test_a_read_sees_each_tags_latest_publication_with_its_own_time_and_quality() -> None:
    server, clock = _server()

    async def go() -> None:
        port = server.port()
        await port.connect()
        await server.publish({"conc_a": 1.0, "reactor_temp": 300.0}, bad={"reactor_temp"})
        clock.advance_to(2.0)
        await server.publish({"conc_a": 1.5, "no_such_tag": 9.0})
        clock.advance_to(3.0)
        snap = await port.read(["conc_a", "reactor_temp"])
        a, temp = snap.values["conc_a"], snap.values["reactor_temp"]
        assert (a.value, a.quality, a.source_time, a.read_time) == (1.5, Quality.GOOD, 2.0, 3.0)
        assert (temp.value, temp.quality, temp.source_time) == (300.0, Quality.BAD, 0.0)
        assert "no_such_tag" not in server.table.values

    asyncio.run(go())


def test_publications_and_writes_keep_their_order() -> None:
    server, clock = _server()

    async def go() -> None:
        port = server.port()
        await port.connect()
        await server.publish({"feed_dilution_sp": 20.0})  # the PLC tracks its setpoint
        clock.advance_to(1.0)
        report = await port.write({"feed_dilution_sp": 20.2})  # then the controller writes
        assert report.ok
        assert server.value("feed_dilution_sp") == 20.2  # not overwritten by the earlier image
        await server.publish({"feed_dilution_sp": 21.0})  # a later image wins
        assert server.value("feed_dilution_sp") == 21.0

    asyncio.run(go())


def test_lazy_publication_equals_eager_publication() -> None:
    server, clock = _server()
    eager = table_from_tag_map(server.tags)
    images = [
        ({"conc_a": 1.0, "conc_b": 0.1, "jacket_temp": 290.0}, {"conc_b"}),
        ({"conc_a": 1.1, "mpc_active": 1.0}, set()),
        ({"conc_b": 0.2, "jacket_temp": 291.0}, {"jacket_temp"}),
    ]

    async def go() -> None:
        for k, (image, bad) in enumerate(images):
            clock.advance_to(float(k + 1))
            await server.publish(image, bad=bad)
            for quality in (Quality.GOOD, Quality.BAD):
                part = {t: v for t, v in image.items() if (t in bad) == (quality is Quality.BAD)}
                eager.publish(float(k + 1), part, quality)

    asyncio.run(go())
    server.flush()
    assert server.table.values == eager.values


def test_a_plc_nobody_reads_keeps_a_bounded_backlog() -> None:
    server, clock = _server()

    async def go() -> None:
        for k in range(200):
            clock.advance_to(float(k))
            await server.publish({"conc_a": float(k)})

    asyncio.run(go())
    assert len(server._pending) < 40
    assert server.value("conc_a") == 199.0
