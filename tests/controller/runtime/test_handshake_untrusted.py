"""The PLC's ``mpc_active`` cannot be trusted while the MPC runs: hold, never write.

``mpc_active`` tells the controller that the PLC still gives it control. Read with BAD or
UNCERTAIN quality, or as a value that is neither 0 nor 1, it tells nothing: the cycle is held
(a problem of the cycle: no setpoint written, the heartbeat goes on, it counts towards
``max_bad_cycles`` and FALLBACK), as an untrusted ``mpc_permissive`` grants nothing. The code
before this change went on writing setpoints every cycle, as if the flag were set.

The freeze dryer rig of ``test_data_trust`` (in-memory PLC with a true plant); the PLC keeps
applying the writes (it still has the MPC active), only the flag it reports is forced.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from test_data_trust import LYO, lyo_rig

from controller.ports.base import Quality
from controller.runtime.site import Site, load_site
from controller.runtime.supervisor import State

pytestmark = pytest.mark.timeout(120)
SP = "shelf_temp_sp"
UNTRUSTED = [(1.0, Quality.BAD), (1.0, Quality.UNCERTAIN), (2.0, Quality.GOOD)]


@pytest.fixture(scope="module")
def lyo() -> Site:
    return load_site(LYO)


@pytest.mark.parametrize("forced", UNTRUSTED, ids=["bad", "uncertain", "two"])
async def test_an_untrusted_mpc_active_holds_then_falls_back(
    lyo: Site, tmp_path: Path, forced: tuple[float, Quality]
) -> None:
    rig = await lyo_rig(lyo, tmp_path)
    assert (await rig.cycles(3))[-1] is State.RUNNING
    table = rig.port.table
    writes, had = len(rig.port.writes), table.current(SP)
    beat = table.current("mpc_heartbeat")
    rig.plc.forced["mpc_active"] = forced
    states = []
    for _ in range(lyo.runtime.max_bad_cycles):
        view = await rig.cycle()
        states.append(view.state)
        assert not view.written.keys() & {SP, "chamber_pressure_sp"}
        assert any(p.startswith("mpc_active read") for p in view.problems), view.problems
    assert len(rig.port.writes) == writes and table.current(SP) == had  # no setpoint written
    assert states == [State.HOLD] * (len(states) - 1) + [State.FALLBACK]
    assert table.current("mpc_heartbeat") == beat + len(states) - 1  # the held cycles beat on
    assert rig.sup.counters.fallbacks == 1
    modes = [(r.old_value, r.new_value) for r in rig.records("mode.change")]
    assert modes[-2:] == [("RUNNING", "HOLD"), ("HOLD", "FALLBACK")]


async def test_a_trusted_mpc_active_again_resumes_from_what_the_plc_has(
    lyo: Site, tmp_path: Path
) -> None:
    rig = await lyo_rig(lyo, tmp_path)
    assert (await rig.cycles(3))[-1] is State.RUNNING
    table = rig.port.table
    had = table.current(SP)
    rig.plc.forced["mpc_active"] = (1.0, Quality.BAD)
    view = await rig.cycle()
    assert view.state is State.HOLD and SP not in view.written
    del rig.plc.forced["mpc_active"]
    view = await rig.cycle()
    assert view.state is State.RUNNING and not view.problems
    move = lyo.controller.inputs["Tsh"].max_move
    assert move is not None and table.current(SP) == min(had + move, -10.0)
