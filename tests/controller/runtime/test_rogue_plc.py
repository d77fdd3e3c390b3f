"""A rogue PLC: an in-process pymodbus server on 127.0.0.1 serves garbage. Zero setpoints.

The edge runtime (``run_site``: supervisor, EKF, safety, audit) runs against a real Modbus TCP
server on a free loopback port. Before every cycle the rogue PLC fills each measurement's
registers with a value that cannot be a reading of the process: NaN, infinities, 1e30, 3e38,
a register's extreme (0x7FFF, 0x8000, 0xFFFF), or a number beyond the tag's physical range
(a biomass of 50 g/L). It claims every measurement valid (validity word 0xFFFF), keeps its
scan counter moving and grants control (``mpc_permissive``, and ``mpc_active`` once asked):
nothing but the values themselves tells the runtime not to act. The writes are counted at
the server, twice: the write requests the server received on the setpoint registers, and the
values its write hook saw. Both must be zero.

In the first case the working setpoints are sane, so the runtime leaves INIT but never asks
for control (a request is written on a clean cycle only); in the second they are garbage too,
so it must never leave INIT.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import random
import struct
from pathlib import Path

import pytest
from test_cli_tags import _site

from controller.binding import Binding
from controller.clock import SteppedClock
from controller.codecs import CodecError, DataType, decode, encode
from controller.runtime.site import Site, load_site
from controller.runtime.supervisor import CycleView, Mode, State
from controller.runtime.wiring import RunOptions, run_site
from controller.tags import ModbusSpec, Table, Tag, load_tag_map
from hil.servers.modbus import ModbusPlcServer

ROOT = Path(__file__).resolve().parents[3]
pytestmark = pytest.mark.timeout(120)
CYCLES = 12
#: engineering values a rogue PLC sends (each kept only where it is impossible for the tag)
GARBAGE = [math.nan, math.inf, -math.inf, 1e30, -1e30, 3e38, -3e38, 50.0, 4.2e9, -1.0]
#: raw register patterns: NaN, the integer extremes, all ones
RAW = [[0x7FC0, 0x0000], [0x7F80, 0x0000], [0x7FFF], [0x8000], [0xFFFF], [0xFFFF, 0xFFFF]]
WORKING = {"lyophilizer": {"Tsh": -35.0, "Pch": 0.15}, "bioreactor": {"u": 0.03}}


class ParkingClock(SteppedClock):
    """A stepped clock that says when the runtime parks on it (no polling)."""

    def __init__(self) -> None:
        super().__init__()
        self.parked = asyncio.Event()

    async def sleep_until(self, t: float) -> None:
        if t > self.now():
            self.parked.set()
        await super().sleep_until(t)


def _impossible(tag: Tag, spec: ModbusSpec, registers: list[int]) -> bool:
    value = decode("rogue", spec, registers)
    rng = tag.valid_range
    return not math.isfinite(value) or rng is None or not rng[0] <= value <= rng[1]


def garbage_for(tag: Tag) -> list[list[int]]:
    """Register contents that cannot be a reading of the tag's quantity."""
    spec = tag.modbus
    assert spec is not None
    out = []
    for value in GARBAGE:
        with contextlib.suppress(CodecError):  # NaN in an int16: the raw patterns cover it
            out.append(encode("rogue", spec, value))
    out += [r for r in RAW if len(r) == spec.count]
    if spec.type is DataType.FLOAT64:
        out.append(list(struct.unpack(">4H", struct.pack(">d", math.nan))))
    return [r for r in out if _impossible(tag, spec, r)]


class RoguePlc:
    """Fills the server's registers with garbage before each cycle; grants control."""

    def __init__(self, server: ModbusPlcServer, site: Site, sane_working: bool) -> None:
        self.server, self.site = server, site
        tm, model = site.tags, site.model
        readings = Binding.of(tm, model).reading_tags()
        self.garbage = {readings[o]: garbage_for(tm.tags[readings[o]]) for o in model.output_names}
        self.working = {readings[i]: v for i, v in WORKING[model.name].items()}
        if not sane_working:
            self.garbage |= {tag: garbage_for(tm.tags[tag]) for tag in self.working}
        assert all(self.garbage.values()), self.garbage  # every tag has garbage to serve
        self.rng = random.Random(15)
        self.scans = 0
        self.served: list[dict[str, float]] = []

    def scan(self) -> None:
        self.scans += 1
        server = self.server
        server.set_value("mpc_permissive", 1.0)
        # "you are in control": please write (the answer to the runtime's request: an
        # mpc_active before the request is not one, test_second_controller)
        server.set_value("mpc_active", server.value("mpc_request"))
        server.set_value("plc_scan_counter", float(self.scans))
        server.set_value("measurement_validity", 65535.0)  # "every measurement is valid"
        for tag, value in self.working.items():
            if tag not in self.garbage:
                server.set_value(tag, value)
        served = {}
        for tag, options in self.garbage.items():
            spec = self.site.tags.tags[tag].modbus
            assert spec is not None
            registers = self.rng.choice(options)
            server.set_registers(spec.table, spec.protocol_address, registers, spec.unit_id)
            served[tag] = decode(tag, spec, registers)
        self.served.append(served)


async def _rogue_run(tmp_path: Path, name: str, sane_working: bool) -> dict[str, object]:
    server = ModbusPlcServer(load_tag_map(ROOT / "configs" / "tags" / f"{name}.yaml"))
    site = load_site(_site(tmp_path, f"{name}-modbus", server.port))
    setpoints = set(Binding.of(site.tags, site.model).setpoint_tags().values())
    hooked: list[tuple[str, float]] = []

    def hook(tag: str, value: float) -> str | None:
        hooked.append((tag, value))
        return None

    server.write_hook = hook
    rogue = RoguePlc(server, site, sane_working)
    clock = ParkingClock()
    views: list[CycleView] = []
    opts = RunOptions(
        Mode.CLOSED_LOOP,
        cycles=CYCLES,
        audit_path=tmp_path / "audit.db",
        historian_path=tmp_path / "history.db",
    )
    async with server:
        rogue.scan()
        task = asyncio.create_task(run_site(site, opts, clock=clock, observer=views.append))
        dt = site.controller.sample_time * site.model.seconds_per_unit
        while not task.done():
            clock.parked.clear()
            parked = asyncio.ensure_future(clock.parked.wait())
            await asyncio.wait({parked, task}, return_when=asyncio.FIRST_COMPLETED)
            parked.cancel()
            if task.done():
                break
            clock.advance(dt)
            rogue.scan()
        sup = task.result()
    specs = [s for t in setpoints if (s := site.tags.tags[t].modbus) is not None]
    assert all(s.table is Table.HOLDING for s in specs)
    on_setpoints = [  # register writes (6, 16, 23) touching a setpoint's first register
        r
        for r in server.requests
        if r.function_code in (6, 16, 23)
        and any(r.address <= s.protocol_address < r.address + r.count for s in specs)
    ]
    return {
        "sup": sup,
        "views": views,
        "requests": on_setpoints,
        "hooked": [h for h in hooked if h[0] in setpoints],
        "heartbeats": [h for h in hooked if h[0] == "mpc_heartbeat"],
        "served": rogue.served,
    }


@pytest.mark.parametrize("name", ["lyophilizer", "bioreactor"])
async def test_a_rogue_plc_with_sane_working_setpoints_gets_zero_setpoints(
    tmp_path: Path, name: str
) -> None:
    run = await _rogue_run(tmp_path, name, sane_working=True)
    sup, views = run["sup"], run["views"]
    assert run["requests"] == [] and run["hooked"] == []  # zero setpoints sent
    assert len(views) == CYCLES  # type: ignore[arg-type]
    states = {v.state for v in views}  # type: ignore[attr-defined]
    # it never asks for control on a cycle of bad data (test_reengagement): it never engaged
    assert State.REQUESTING in states and not states & {State.RUNNING, State.HOLD}
    assert State.FALLBACK in states  # and gave up asking after max_bad_cycles
    assert run["heartbeats"]  # the link was alive: it chose not to write
    counters = sup.counters  # type: ignore[attr-defined]
    assert counters.writes == 0 and counters.fallbacks >= 1  # not even mpc_request
    assert counters.implausible_values + counters.non_finite_values >= CYCLES
    assert sup.state is State.STOPPED  # type: ignore[attr-defined]
    served = [v for cycle in run["served"] for v in cycle.values()]  # type: ignore[attr-defined]
    assert len(set(map(repr, served))) >= 2  # garbage of several kinds, never a stuck value


@pytest.mark.parametrize("name", ["lyophilizer", "bioreactor"])
async def test_a_rogue_plc_serving_only_garbage_never_gets_past_init(
    tmp_path: Path, name: str
) -> None:
    run = await _rogue_run(tmp_path, name, sane_working=False)
    assert run["requests"] == [] and run["hooked"] == []
    views = run["views"]
    assert [v.state for v in views] == [State.INIT] * CYCLES  # type: ignore[attr-defined]
    assert all("working setpoints not trusted" in v.problems[0] for v in views)  # type: ignore[attr-defined]
