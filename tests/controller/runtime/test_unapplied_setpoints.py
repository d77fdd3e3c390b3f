"""A PLC that confirms the MPC's setpoint but runs another one: held, then FALLBACK.

A rogue PLC (a review's Modbus proxy) answered every write with the value written (the FC 23
read-back) and ran that value + 3 /h; its working-setpoint tag said so at every read. The
runtime logged it at INFO ("the PLC has ... where ... was assumed") and carried on for 25
cycles "in control", exit 0, its audit trail full of writes the plant never ran.

While the PLC reports the MPC active, a working setpoint other than the value written and
confirmed (beyond the step the two tags can hold) is now a problem of the cycle, counted in
``unapplied_setpoints``, when it is seen in two cycles in a row (one is a warning: a PLC may
publish its working setpoint a scan late), and every cycle after it holds until the PLC hands
control back (FALLBACK after ``max_bad_cycles``). A difference within the tags' step is not
one. The
freeze dryer rig of ``test_data_trust`` (in-memory PLC, true plant).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import numpy as np
import pytest
from test_data_trust import LYO, Rig, lyo_rig

from controller.errors import PortError
from controller.ports.base import WriteReport, WriteResult, WriteStatus
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
    lyo: Site, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    rig = await lyo_rig(lyo, tmp_path)
    assert (await rig.cycles(3))[-1] is State.RUNNING
    n = lyo.runtime.max_bad_cycles
    views = [await cycle_running(rig, 3.0) for _ in range(n + 1)]
    # the first such cycle is a warning (a scan late, a value moved once): it writes on
    assert not views[0].problems and SP in views[0].written
    assert "if it does not run the MPC's setpoints next cycle either" in caplog.text
    second = views[1].problems
    assert any(p.startswith(f"the PLC runs {SP} = ") for p in second), second
    assert "was written and confirmed, as in the cycle before" in second[0]
    states = [v.state for v in views]
    assert states == [State.RUNNING] + [State.HOLD] * (n - 1) + [State.FALLBACK], states
    assert all(SP not in v.written for v in views[1:])  # nothing written after it
    assert all(v.problems for v in views[1:])  # the later cycles say why they hold
    assert views[2].problems[0].startswith(f"the PLC runs {SP} = ")  # it still does
    assert rig.sup.counters.unapplied_setpoints == n  # every cycle of it after the first
    assert rig.sup.counters.fallbacks == 1


async def test_one_cycle_late_is_a_warning_not_a_hold(lyo: Site, tmp_path: Path) -> None:
    """A review: the working setpoint read one cycle behind the write (a PLC that publishes
    it a scan late) must not hold the loop."""
    rig = await lyo_rig(lyo, tmp_path)
    assert (await rig.cycles(3))[-1] is State.RUNNING
    views = [await cycle_running(rig, 3.0 if k == 0 else 0.0) for k in range(5)]
    assert [v.state for v in views] == [State.RUNNING] * 5, [v.problems for v in views]
    assert rig.sup.counters.unapplied_setpoints == 0


async def test_a_setpoint_at_zero_is_not_held_for_a_rounding_crumb(
    lyo: Site, tmp_path: Path
) -> None:
    """A review: the CSTR's jacket duty sits at its limit 0.0; the MPC wrote -9.5e-13 and the
    PLC's 0.0 next cycle held the loop (the step allowed near 0 was a float32 denormal)."""
    rig = await lyo_rig(lyo, tmp_path)
    writer = rig.sup.writer
    assert writer._step("Tsh", 0.0) >= 1e-9
    assert writer._step("Tsh", -9.496051948248985e-13) >= 1e-9
    assert writer._step("Tsh", -40.0) < 1e-3  # a float32 step near -40, not a loose one


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


async def test_a_working_setpoint_read_a_scan_late_is_no_move(lyo: Site, tmp_path: Path) -> None:
    """A second review: a cycle that ran right after a write, before the PLC's next scan (a
    stalled loop catching up), read the old working setpoint; the pipeline took it as the move
    origin, and the next cycle's correct value (exactly what was written) counted as a second
    "move": held until FALLBACK. The check compares with the value written and confirmed,
    which the late scan catches up with."""
    rig = await lyo_rig(lyo, tmp_path)
    await rig.cycles(2)
    rig.plc.scan()  # engaged; this cycle's write is followed 0.1 s later ...
    view = await rig.sup.cycle(len(rig.views), rig.clock.now())
    assert view.state is State.RUNNING and SP in view.written
    rig.clock.advance(0.1)
    late = await rig.sup.cycle(len(rig.views) + 1, rig.clock.now())  # ... by a cycle, no scan
    assert late.problems  # written too soon after the last: held, as before
    rig.views += [view, late]
    rig.clock.advance(rig.sup.dt_s)
    views = [await rig.cycle() for _ in range(4)]
    assert [v.state for v in views] == [State.RUNNING] * 4, [v.problems for v in views]
    assert rig.sup.counters.unapplied_setpoints == 0 and rig.sup.counters.fallbacks == 0


@pytest.mark.parametrize("failure", ["timeout", "refused"])
async def test_failed_writes_in_between_do_not_hide_a_plc_running_another_setpoint(
    lyo: Site, tmp_path: Path, failure: str
) -> None:
    """A third review: with every other write timed out (its outcome unknown: that input is
    not compared next cycle) or refused (the last confirmed value is what the PLC should
    run), two cycles in a row of a different working setpoint never came: 12 cycles "in
    control" of a PLC that echoes the written value and runs it + 3."""
    rig = await lyo_rig(lyo, tmp_path)
    assert (await rig.cycles(3))[-1] is State.RUNNING
    write, table, calls = rig.port.write, rig.port.table, []

    async def rogue(values: Mapping[str, float]) -> WriteReport:
        if SP not in values:
            return await write(values)
        calls.append(values)
        if len(calls) % 2 == 0 and failure == "refused":
            no = WriteStatus.REJECTED
            return WriteReport({t: WriteResult(t, v, no, detail="rate") for t, v in values.items()})
        report = await write(values)
        table.publish(rig.clock.now(), {SP: values[SP] + 3.0})  # what it runs
        if len(calls) % 2 == 0:
            raise PortError("no answer within 1.0 s to the write (timeout)")
        echo = WriteResult(SP, values[SP], WriteStatus.OK, values[SP])  # what it says
        return WriteReport({**report.results, SP: echo})

    rig.port.write = rogue  # type: ignore[method-assign]
    views = [await rig.cycle() for _ in range(12)]
    assert rig.sup.counters.unapplied_setpoints >= 1, [v.problems for v in views]
    assert rig.sup.counters.fallbacks >= 1
