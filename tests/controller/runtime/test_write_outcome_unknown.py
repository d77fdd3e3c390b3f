"""A setpoint write whose outcome is unknown: the PLC may have applied it, or not.

The answer to a write the PLC applied can be lost (a timeout, a dropped connection), and a
read-back can fail. The controller does not know what the PLC has then: the next cycle must
take the PLC's trusted working setpoint as read that cycle as the move limits' origin (as
engaging does), and hold while it cannot be trusted. The code before this change kept the old
value as the origin: the next move went twice ``max_move`` from what the PLC really had, and
the audit's ``old_value`` was a value the PLC no longer had.

The freeze dryer rig of ``test_data_trust`` (in-memory PLC), and a real Modbus TCP server on a
free loopback port that answers the write too late but executes it.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Mapping
from pathlib import Path

import pytest
import yaml
from test_cli_tags import _site
from test_data_trust import LYO, Plc, Rig, Target, lyo_rig

from controller.clock import SteppedClock
from controller.errors import PortConnectError
from controller.ports.base import Quality, WriteReport, WriteResult, WriteStatus
from controller.ports.factory import make_port
from controller.ports.memory import table_from_tag_map
from controller.runtime.audit import AuditTrail
from controller.runtime.site import Site, load_site
from controller.runtime.supervisor import Mode, State, Supervisor
from controller.runtime.wiring import build_pipeline
from hil.servers.modbus import ModbusPlcServer

pytestmark = pytest.mark.timeout(120)
SP = "shelf_temp_sp"
#: the decision reverses: colder, as fast as the move limits allow
REVERSED = {"Tsh": -45.0, "Pch": 0.15}


@pytest.fixture(scope="module")
def lyo() -> Site:
    return load_site(LYO)


def max_move(site: Site) -> float:
    move = site.controller.inputs["Tsh"].max_move
    assert move is not None
    return move


def old_values(audit: AuditTrail) -> list[tuple[float, float]]:
    """(old_value, new_value) of every audited write of the shelf setpoint."""
    return [
        (float(r.old_value), float(r.new_value))
        for r in audit.records()
        if r.action == "setpoint.write" and r.target == SP
    ]


async def _engaged(site: Site, tmp_path: Path) -> Rig:
    rig = await lyo_rig(site, tmp_path)
    assert (await rig.cycles(4))[-1] is State.RUNNING
    return rig


def _lose_answer(report: WriteReport) -> WriteReport:
    """The PLC applied the write (the table has it); its answer never arrives."""
    raise PortConnectError("connection lost before the answer to the write")


def _failed_readback(report: WriteReport) -> WriteReport:
    """The PLC applied the write; the read-back of the shelf setpoint failed."""
    results = dict(report.results)
    sent = results[SP]
    results[SP] = WriteResult(SP, sent.requested, WriteStatus.FAILED, None, "read-back failed")
    return WriteReport(results, report.write_time)


@pytest.mark.parametrize("unknown", [_lose_answer, _failed_readback], ids=["no-answer", "readback"])
async def test_after_a_write_of_unknown_outcome_the_next_move_counts_from_what_the_plc_has(
    lyo: Site, tmp_path: Path, unknown: object
) -> None:
    rig = await _engaged(lyo, tmp_path)
    table = rig.port.table
    origin = table.current(SP)
    rig.port.tamper = unknown  # type: ignore[assignment]
    view = await rig.cycle()
    rig.port.tamper = None
    assert view.state is State.HOLD and view.problems
    had = table.current(SP)
    assert had == origin + max_move(lyo)  # the PLC applied it, though nobody knows
    rig.policy.target = dict(REVERSED)
    view = await rig.cycle()
    assert view.state is State.RUNNING and SP in view.written
    now = table.current(SP)
    assert abs(now - had) <= max_move(lyo) + 1e-9, (had, now)  # not had - 2 x max_move
    assert now == had - max_move(lyo)
    assert old_values(rig.audit)[-1] == (had, now)  # the audit names what the PLC had
    assert rig.sup.pipeline.working["Tsh"] == now


async def test_while_the_working_setpoint_cannot_be_trusted_nothing_is_written(
    lyo: Site, tmp_path: Path
) -> None:
    rig = await _engaged(lyo, tmp_path)
    table = rig.port.table
    rig.port.tamper = _lose_answer
    await rig.cycle()
    rig.port.tamper = None
    had = table.current(SP)
    rig.policy.target = dict(REVERSED)
    rig.plc.forced["shelf_temp_pv"] = (had, Quality.BAD)
    writes = len(rig.port.writes)
    beats = table.current("mpc_heartbeat")
    states = []
    for _ in range(2):  # max_bad_cycles is 3: the lost answer and these two
        view = await rig.cycle()
        states.append(view.state)
        assert SP not in view.written
        assert any("cannot be trusted" in p for p in view.problems), view.problems
    assert states == [State.HOLD, State.FALLBACK]  # held, then counted towards the fallback
    assert len(rig.port.writes) == writes and table.current(SP) == had
    assert table.current("mpc_heartbeat") == beats + 1  # the held cycle beat on
    assert rig.sup.counters.bad_in_a_row == 3 and rig.sup.counters.fallbacks == 1


async def test_a_trusted_working_setpoint_again_ends_the_hold(lyo: Site, tmp_path: Path) -> None:
    rig = await _engaged(lyo, tmp_path)
    table = rig.port.table
    rig.port.tamper = _lose_answer
    await rig.cycle()
    rig.port.tamper = None
    had = table.current(SP)
    rig.policy.target = dict(REVERSED)
    rig.plc.forced["shelf_temp_pv"] = (had, Quality.BAD)
    view = await rig.cycle()
    assert view.state is State.HOLD and SP not in view.written
    del rig.plc.forced["shelf_temp_pv"]
    view = await rig.cycle()
    assert view.state is State.RUNNING, view.problems
    assert table.current(SP) == had - max_move(lyo)
    assert old_values(rig.audit)[-1] == (had, had - max_move(lyo))


# ------------------------------------------------------------------ over Modbus TCP
#: the port's timeout (short: the test waits it out) and the server's late answer
TIMEOUT_S, LATE_S = 0.5, 1.5
CONTROLLER_WRITES = {"mpc_request", "mpc_heartbeat"}


async def test_over_modbus_a_write_answered_too_late_moves_next_from_what_the_plc_has(
    lyo: Site, tmp_path: Path
) -> None:
    """The PLC executes the write after the port gave up waiting (PortTimeoutError)."""
    server = ModbusPlcServer(lyo.tags)
    path = _site(tmp_path, "lyophilizer-modbus", server.port)
    data = yaml.safe_load(path.read_text())
    data["connection"]["timeout_s"] = TIMEOUT_S
    path.write_text(yaml.safe_dump(data))
    site = load_site(path)
    clock = SteppedClock()
    table = table_from_tag_map(site.tags, {"measurement_validity": 65535.0, "mpc_permissive": 1.0})
    plc = Plc(site, table, clock, {"Tsh": -35.0, "Pch": 0.15}, {"Tbot": 0.1})
    policy = Target({"Tsh": -10.0, "Pch": 0.2})
    audit = AuditTrail(tmp_path / "audit.db", config_hash="cfg", actor="svc")
    served = [n for n, t in site.tags.tags.items() if t.modbus is not None]

    def scan() -> None:
        """The PLC's scan on the server's registers: what the controller wrote, in; the
        plant's measurements and the PLC's working setpoints, out."""
        for tag in [*CONTROLLER_WRITES, *plc.sp.values()]:
            old = table.values[tag]
            table.values[tag] = type(old)(server.value(tag), old.quality, clock.now(), clock.now())
        plc.scan()
        for name in served:
            if name not in CONTROLLER_WRITES:
                server.set_value(name, table.values[name].value)

    async with server:
        port = make_port(site.tags, site.connection, clock)
        await port.connect()
        sup = Supervisor(
            site, port, clock, build_pipeline(site, policy), mode=Mode.CLOSED_LOOP, audit=audit
        )
        k = 0

        async def cycle() -> State:
            nonlocal k
            scan()
            view = await sup.cycle(k, clock.now())
            k += 1
            clock.advance(sup.dt_s)
            return view.state

        try:
            for _ in range(4):
                state = await cycle()
            assert state is State.RUNNING
            origin = server.value(SP)
            write = port.write

            async def late(values: Mapping[str, float]) -> WriteReport:
                """The server answers the setpoints' write (only) too late."""
                server.latency = LATE_S if SP in values else 0.0
                try:
                    return await write(values)
                finally:
                    server.latency = 0.0

            port.write = late  # type: ignore[method-assign]
            try:
                assert await cycle() is State.HOLD
            finally:
                port.write = write  # type: ignore[method-assign]
            assert "within" in sup.views[-1].problems[0]  # the port gave up waiting
            deadline = time.monotonic() + 30.0
            while server.value(SP) == origin and time.monotonic() < deadline:
                await asyncio.sleep(0.05)  # the server executes the late request
            had = server.value(SP)
            assert had == origin + max_move(site)
            policy.target = dict(REVERSED)
            assert await cycle() is State.RUNNING, sup.views[-1].problems
            now = server.value(SP)
        finally:
            await port.close()
    assert abs(now - had) <= max_move(site) + 1e-9, (had, now)
    assert old_values(audit)[-1] == (had, now)
