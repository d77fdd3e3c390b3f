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

import pytest
from test_data_trust import LYO, Port, Rig, Target, lyo_rig

from controller.errors import PortError
from controller.ports.base import WriteReport
from controller.runtime.audit import AuditTrail
from controller.runtime.engagement import Engagement
from controller.runtime.historian import MemoryHistorian
from controller.runtime.historian_run import run_info
from controller.runtime.site import Site, load_site
from controller.runtime.supervisor import Mode, State, Supervisor
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
