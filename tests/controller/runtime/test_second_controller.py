"""A second closed-loop runtime on a PLC whose MPC is already engaged writes nothing.

The handshake is one ``mpc_request`` coil, one ``mpc_heartbeat`` register and one
``mpc_active`` flag per PLC. A runtime started while another one has control (a second edge
PC, a copy started by mistake) used to go INIT -> REQUESTING, write the heartbeat and
``mpc_request`` = 1 (already 1), read ``mpc_active`` (already 1) as the answer to its own
request and engage: two controllers wrote setpoints to one PLC, and the second one's release
at its stop dropped the first (a review ran exactly this over Modbus; both runs exited 0).

Now an ``mpc_active`` the PLC reports before this runtime asked for control is not an answer:
the runtime waits in REQUESTING and writes nothing (no heartbeat, no request, no setpoint),
counting the cycles and saying why, until the PLC clears the flag; then it asks and engages
as usual. The freeze dryer rig of ``test_data_trust`` (in-memory PLC, true plant).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest
from test_data_trust import LYO, Port, Rig, Target, lyo_rig

from controller.errors import PortError
from controller.ports.base import Quality, Snapshot, TagValue, WriteReport, WriteResult, WriteStatus
from controller.runtime.audit import AuditTrail
from controller.runtime.engagement import Engagement
from controller.runtime.historian import MemoryHistorian
from controller.runtime.historian_run import run_info
from controller.runtime.site import Site, load_site
from controller.runtime.supervisor import CycleView, Mode, State, Supervisor
from controller.runtime.wiring import build_pipeline, config_files, historian_sink

pytestmark = pytest.mark.timeout(120)
TAKEN = "the PLC reports mpc_active before this runtime asked for control"


@pytest.fixture(scope="module")
def lyo() -> Site:
    return load_site(LYO)


async def second(rig: Rig, tmp_path: Path) -> tuple[Supervisor, AuditTrail, Port]:
    """Another closed-loop runtime on the same PLC (its own port, audit trail, policy)."""
    site = rig.site
    port = Port(rig.port.table, rig.clock, site)
    await port.connect()
    audit = AuditTrail(tmp_path / "second.db", config_hash="cfg", actor="second-edge-pc")
    historian = MemoryHistorian()
    info = run_info(site.name, "closed-loop", config_files(site), site.model)
    historian.start_run(info)
    sup = Supervisor(
        site,
        port,
        rig.clock,
        build_pipeline(site, Target({"Tsh": 0.0, "Pch": 0.1})),
        mode=Mode.CLOSED_LOOP,
        audit=audit,
        historian=historian_sink(historian, 0),
        run_id=info.run_id,
    )
    return sup, audit, port


async def test_a_second_runtime_writes_nothing_while_another_has_control(
    lyo: Site, tmp_path: Path
) -> None:
    rig = await lyo_rig(lyo, tmp_path)
    assert (await rig.cycles(3))[-1] is State.RUNNING  # the first runtime has control
    table = rig.port.table
    b, b_audit, b_port = await second(rig, tmp_path)
    beat, request = table.current("mpc_heartbeat"), table.current("mpc_request")
    for k in range(6):
        rig.plc.scan()
        view = await b.cycle(k, rig.clock.now())
        assert view.state is State.REQUESTING, view.problems
        assert not view.written, view.written
        assert any(p.startswith(TAKEN) for p in view.problems), view.problems
        rig.clock.advance(rig.sup.dt_s)
    assert b_port.writes == []  # not a setpoint
    writes = {"setpoint.write", "heartbeat.write", "tag.write.request"}
    assert not [r.action for r in b_audit.records() if r.action in writes]
    assert table.current("mpc_heartbeat") == beat and table.current("mpc_request") == request
    assert b.counters.taken_cycles == 6 and b.counters.fallbacks == 0
    await b.shutdown("run complete")  # it never asked: it releases nothing either
    assert table.current("mpc_request") == request
    assert (await rig.cycle()).state is State.RUNNING  # the first one still has control


async def test_it_asks_and_engages_once_the_plc_has_cleared_mpc_active(
    lyo: Site, tmp_path: Path
) -> None:
    rig = await lyo_rig(lyo, tmp_path)
    assert (await rig.cycles(3))[-1] is State.RUNNING
    await rig.sup.shutdown("handing over")  # the first runtime releases mpc_request
    b, b_audit, _ = await second(rig, tmp_path)
    states = []
    for k in range(4):
        rig.plc.scan()
        states.append((await b.cycle(k, rig.clock.now())).state)
        rig.clock.advance(rig.sup.dt_s)
    # the release is seen at the first scan; the second runtime asks, then engages
    assert states[-1] is State.RUNNING, states
    assert b.counters.taken_cycles == 0
    assert [r.new_value for r in b_audit.records() if r.action == "tag.write.request"] == ["1.0"]


async def test_a_restarted_runtime_cycles_the_request_once_the_plc_dropped_its_predecessor(
    lyo: Site, tmp_path: Path
) -> None:
    """A review restarted the runtime (kill -9, start again) while the PLC still had its
    predecessor's mpc_active: the new one waits (it cannot tell itself from another
    controller), the PLC drops the silent predecessor at its heartbeat timeout, and the
    request coil still holds the predecessor's 1. The new runtime now writes 0 before its own
    1, so that the PLC sees a new request; it had written 1 over 1, which the PLC's rules
    (``request_seen_low``) never take as one. The run's verdict names the taken cycles."""
    rig = await lyo_rig(lyo, tmp_path)
    assert (await rig.cycles(3))[-1] is State.RUNNING  # the predecessor, then killed
    b, b_audit, _ = await second(rig, tmp_path)
    engagement = Engagement(Mode.CLOSED_LOOP, "memory")

    async def cycle() -> State:
        rig.plc.scan()
        view = await b.cycle(len(b.views), rig.clock.now())
        engagement.observe(view)
        rig.clock.advance(rig.sup.dt_s)
        return view.state

    assert [await cycle() for _ in range(2)] == [State.REQUESTING] * 2  # taken: waits
    verdict = engagement.verdict()
    assert verdict is not None and "reported mpc_active before this runtime asked" in verdict
    rig.plc.follow, rig.plc.active = False, False  # the PLC's heartbeat timeout drops it
    assert rig.port.table.current("mpc_request") == 1.0  # the predecessor's request stays
    await cycle()  # the flag is clear: the new runtime releases first ...
    await cycle()  # ... then asks
    requests = [r.new_value for r in b_audit.records() if r.action == "tag.write.request"]
    assert requests == ["0.0", "1.0"], requests
    rig.plc.follow = True  # the PLC takes the new request
    states = [await cycle() for _ in range(2)]
    assert states[-1] is State.RUNNING, states
    assert engagement.verdict() is None


async def test_its_own_request_whose_answer_was_lost_is_not_another_controller(
    lyo: Site, tmp_path: Path
) -> None:
    """A second review: the PLC applied the runtime's mpc_request = 1 but the answer was lost
    (a timeout); the PLC's mpc_active next cycle was taken for another controller's, and the
    runtime went silent (no heartbeat) while the PLC had handed it control. A request sent,
    its outcome unknown, counts as asked: it asks again and engages."""
    rig = await lyo_rig(lyo, tmp_path)
    write, lost = rig.port.write, []

    async def losing(values: Mapping[str, float]) -> WriteReport:
        report = await write(values)
        if values.get("mpc_request") == 1.0 and not lost:
            lost.append(values)
            raise PortError("no answer within 1.0 s to the write (timeout)")
        return report

    rig.port.write = losing  # type: ignore[method-assign]
    views = [await rig.cycle() for _ in range(4)]
    assert lost, "the request's answer was never lost"
    assert not any(v.taken for v in views), [v.problems for v in views]
    assert views[-1].state is State.RUNNING, [(v.state, v.problems) for v in views]
    assert rig.sup.counters.taken_cycles == 0


async def b_cycles(rig: Rig, b: Supervisor, n: int, before: Any = None) -> list[CycleView]:
    """``n`` cycles of the second runtime, the PLC scanned before each (then ``before``)."""
    views = []
    for _ in range(n):
        rig.plc.scan()
        if before is not None:
            before()
        views.append(await b.cycle(len(views), rig.clock.now()))
        rig.clock.advance(rig.sup.dt_s)
    return views


async def test_an_untrusted_mpc_active_does_not_end_the_wait(lyo: Site, tmp_path: Path) -> None:
    """A third review: one read of mpc_active with BAD quality while the other controller
    had the PLC ended the wait; the runtime asked, took the other's flag as its answer, and
    both wrote setpoints. Only a trusted 0 ends it."""
    rig = await lyo_rig(lyo, tmp_path)
    assert (await rig.cycles(3))[-1] is State.RUNNING
    b, _, b_port = await second(rig, tmp_path)
    await b_cycles(rig, b, 2)
    table = rig.port.table

    def untrusted() -> None:
        now = rig.clock.now()
        table.values["mpc_active"] = TagValue(1.0, Quality.BAD, now, now)

    views = await b_cycles(rig, b, 1, untrusted) + await b_cycles(rig, b, 3)
    assert all(v.taken and not v.written for v in views), [(v.state, v.written) for v in views]
    assert b_port.writes == [] and b.state is State.REQUESTING


async def test_a_refused_request_is_not_one_it_made(lyo: Site, tmp_path: Path) -> None:
    """A third review: the runtime's request was refused (certainly not applied); another
    controller's mpc_active then counted as its answer. A refused or unsent request is no
    request: the flag is taken."""
    rig = await lyo_rig(lyo, tmp_path)
    rig.plc.follow = False  # the PLC hands control to nobody yet
    b, _, b_port = await second(rig, tmp_path)
    write = b_port.write

    async def refusing(values: Mapping[str, float]) -> WriteReport:
        if "mpc_request" in values:
            refused = WriteStatus.REJECTED
            return WriteReport(
                {t: WriteResult(t, v, refused, detail="no") for t, v in values.items()}
            )
        return await write(values)

    b_port.write = refusing  # type: ignore[method-assign]
    await b_cycles(rig, b, 2)
    b_port.write = write  # type: ignore[method-assign]
    rig.port.table.publish(rig.clock.now(), {"mpc_request": 1.0})  # another controller asks
    rig.plc.follow = True
    views = await b_cycles(rig, b, 4)
    assert all(v.state is State.REQUESTING for v in views), [v.state for v in views]
    assert any(v.taken for v in views) and b_port.writes == []


async def test_an_operator_release_of_a_waiting_runtime_drops_nobody(
    lyo: Site, tmp_path: Path
) -> None:
    """A third review: an operator released the second runtime while it waited; it wrote
    mpc_request 0 over the first one's 1 and the PLC dropped the first one."""
    rig = await lyo_rig(lyo, tmp_path)
    assert (await rig.cycles(3))[-1] is State.RUNNING
    b, b_audit, _ = await second(rig, tmp_path)
    await b_cycles(rig, b, 2)
    b.release_control("operator", "not this one")
    views = await b_cycles(rig, b, 2)
    assert all(v.state is State.RELEASED and not v.written for v in views)
    assert not [r for r in b_audit.records() if r.action == "tag.write.request"]
    assert rig.port.table.current("mpc_request") == 1.0
    assert (await rig.cycle()).state is State.RUNNING  # the first one still has control


def test_the_verdict_names_the_wait_only_when_the_run_ended_waiting() -> None:
    """A third review: two taken cycles early on, then a PLC that never permitted the MPC:
    the verdict blamed the taken cycles."""
    e = Engagement(Mode.CLOSED_LOOP, "memory")
    good, off = TagValue(1.0, Quality.GOOD, 0.0, 0.0), TagValue(0.0, Quality.GOOD, 0.0, 0.0)
    for k in range(22):
        view = CycleView(k, float(k), State.REQUESTING, Snapshot({}, 0.0))
        view.snapshot = Snapshot({"mpc_permissive": good if k < 2 else off}, 0.0)
        view.taken = k < 2
        e.observe(view)
    verdict = e.verdict()
    assert verdict is not None and "before this runtime asked" not in verdict, verdict
    assert "mpc_permissive" in verdict
