"""The age of an OPC UA value is in process seconds, also on a scaled clock.

A value's SourceTimestamp is wall time; the port turns it into a process-time ``source_time``
for the data-trust judge. On a scaled clock (``pharmatwin run --rate``, the HIL bench) a wall
second is ``rate`` process seconds: the port counted it as one, so at rate 3600 a value
stamped 5 wall minutes ago (5 process hours) was 300 process seconds old, and judged fresh by
a ``stale_after`` of 60 s... for the next 3600 wall seconds. Real server on 127.0.0.1.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from conftest import LOOPBACK, free_port

from controller.clock import RealClock, ScaledClock
from controller.ports.opcua import OpcUaPort
from controller.ports.settings import Backoff, Connection, OpcUaOptions
from controller.tags import TagMap
from hil.servers.opcua import OpcUaPlcServer

TAGS = TagMap.model_validate(
    {
        "name": "t",
        "tags": {
            "temp": {
                "unit": "degC",
                "direction": "read",
                "limits": [-100.0, 100.0],
                "opcua": {"node_id": "ns=2;s=t.temp", "data_type": "Double"},
            }
        },
    }
)
WALL_AGE = 300.0


@pytest.mark.parametrize("rate", [1.0, 3600.0])
async def test_a_values_age_is_in_process_seconds(tmp_path: Path, rate: float) -> None:
    number = free_port()
    backoff = Backoff(initial_s=0.2, factor=2.0, max_s=1.0)
    conn = Connection(
        protocol="opcua", host=LOOPBACK, port=number, timeout_s=2.0, backoff=backoff,
        opcua=OpcUaOptions(),
    )  # fmt: skip
    clock = RealClock() if rate == 1.0 else ScaledClock(rate)
    async with OpcUaPlcServer(
        TAGS, number, initial={"temp": 20.0}, shelf=tmp_path, roles=None
    ) as plc:
        stamp = datetime.now(UTC) - timedelta(seconds=WALL_AGE)
        await plc.set_value("temp", -30.0, source_time=stamp)
        async with OpcUaPort(TAGS, conn, clock) as port:
            snap = await port.read(["temp"])
    value = snap["temp"]
    age = snap.read_time - value.source_time
    assert value.value == -30.0
    # the wall age, plus the read's own few wall seconds at most, in process seconds
    assert WALL_AGE * rate <= age <= (WALL_AGE + 5.0) * rate, age
