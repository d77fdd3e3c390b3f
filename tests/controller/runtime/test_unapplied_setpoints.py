"""A PLC that confirms the MPC's setpoint but runs another one: held, then FALLBACK.

A rogue PLC (a review's Modbus proxy) answered every write with the value written (the FC 23
read-back) and ran that value + 3 /h; its working-setpoint tag said so at every read. The
runtime logged it at INFO ("the PLC has ... where ... was assumed") and carried on for 25
cycles "in control", exit 0, its audit trail full of writes the plant never ran.

While the PLC reports the MPC active, a working setpoint other than the value written and
confirmed (beyond the step the two tags can hold) is now a problem of the cycle, counted in
``unapplied_setpoints``, and every cycle after it holds until the PLC hands control back
(FALLBACK after ``max_bad_cycles``). A difference within the tags' step is not one. The
freeze dryer rig of ``test_data_trust`` (in-memory PLC, true plant).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from test_data_trust import LYO, Rig, lyo_rig

from controller.runtime.site import Site, load_site
from controller.runtime.supervisor import CycleView, State

pytestmark = pytest.mark.timeout(120)
SP, PV = "shelf_temp_sp", "shelf_temp_pv"


@pytest.fixture(scope="module")
def lyo() -> Site:
    return load_site(LYO)


async def cycle_running(rig: Rig, offset: float) -> CycleView:
    """One cycle whose PLC reports it runs its working shelf temperature + ``offset``."""
    rig.plc.scan()
    table = rig.port.table
    table.publish(rig.clock.now(), {PV: rig.plc.working["Tsh"] + offset})
    view = await rig.sup.cycle(len(rig.views), rig.clock.now())
    rig.views.append(view)
    rig.clock.advance(rig.sup.dt_s)
    return view


async def test_a_plc_running_another_setpoint_holds_then_falls_back(
    lyo: Site, tmp_path: Path
) -> None:
    rig = await lyo_rig(lyo, tmp_path)
    assert (await rig.cycles(3))[-1] is State.RUNNING
    views = [await cycle_running(rig, 3.0) for _ in range(lyo.runtime.max_bad_cycles)]
    first = views[0].problems
    assert any(p.startswith(f"the PLC runs {SP} = ") for p in first), first
    assert "was written and confirmed" in first[0]
    assert [v.state for v in views] == [State.HOLD] * (len(views) - 1) + [State.FALLBACK]
    assert all(SP not in v.written for v in views)  # nothing written after it
    assert all(v.problems for v in views)  # the later cycles say why they hold
    assert "did not run the MPC's setpoints" in views[1].problems[0]
    assert rig.sup.counters.unapplied_setpoints == 1
    assert rig.sup.counters.fallbacks == 1


@pytest.mark.parametrize("within_step", [False, True], ids=["same", "within-float32-step"])
async def test_a_plc_running_what_was_written_stays_in_control(
    lyo: Site, tmp_path: Path, within_step: bool
) -> None:
    rig = await lyo_rig(lyo, tmp_path)
    assert (await rig.cycles(3))[-1] is State.RUNNING
    views = []
    for _ in range(6):
        near = rig.plc.working["Tsh"]
        offset = 0.4 * float(np.spacing(np.float32(near))) if within_step else 0.0
        views.append(await cycle_running(rig, offset))
    assert [v.state for v in views] == [State.RUNNING] * 6, [v.problems for v in views]
    assert sum(SP in v.written for v in views) >= 5
    assert rig.sup.counters.unapplied_setpoints == 0
