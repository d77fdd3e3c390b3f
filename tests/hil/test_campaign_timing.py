"""Delays are judged from the process times at which things happened, never from sampled ones.

In hil mode a recording's ``t`` is the true plant's time, which is the scan's process time
rounded down to the plant step (0.02 h = 72 s for the freeze dryer). A delay measured from it
(REQ-SAFE-02: "PLC fallback within 2 heartbeat timeouts of loss") could be understated by up to
one plant step, and a PLC that fell back too late could pass. These tests drive the lyophilizer
site's HIL rig (true plant, virtual PLC) on a stepped clock whose scans are off the plant's
grid, as a loaded machine in hil mode scans, and judge what the campaign's
:class:`~hil.campaign.recorder.Recorder` recorded.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Mapping
from pathlib import Path

import pytest

from controller.clock import SteppedClock
from controller.runtime.site import load_site
from controller.timebase import TimeBase
from hil.campaign.checks import Criterion
from hil.campaign.criteria import Alarm, Recording, judge
from hil.campaign.recorder import Recorder
from hil.rig import HilRig
from hil.servers.memory import MemoryPlcServer

ROOT = Path(__file__).resolve().parents[2]
LYO = ROOT / "configs" / "sites" / "lyophilizer-modbus.yaml"
HOUR = TimeBase("h", 3600.0)
FALLBACK = {"kind": "fallback_within", "heartbeat_timeouts": 2}  # 2 x 1800 s = 3600 s
pytestmark = pytest.mark.timeout(120)


def _criterion(check: Mapping[str, object]) -> Criterion:
    return Criterion.model_validate({"id": "REQ-SAFE-02", "description": "t", "check": check})


async def _stalled_loss(stall_until_s: float) -> Recording:
    """The controller heartbeats every 360 s (last at 1800 s) and is lost at 1836 s (0.51 h);
    then the machine stalls: the PLC's next scan is at ``stall_until_s``, and it falls back
    there (the heartbeat silent for more than 1800 s)."""
    site = load_site(LYO)
    clock = SteppedClock()
    server = MemoryPlcServer(site.tags, clock)
    recorder = Recorder(site, clock)
    rig = HilRig(site, clock, [server], on_scan=recorder.scan)
    recorder.rec.loss_at = 0.51
    times = [*range(0, 1837, 36), stall_until_s, stall_until_s + 36.0]
    await server.start()
    try:
        for now in times:
            clock.advance_to(float(now))
            if now <= 1800 and now % 360 == 0:  # the controller, alive until 1800 s
                rig.vplc.on_write("mpc_request", 1.0)
                rig.vplc.on_write("mpc_heartbeat", float(now // 360 + 1))
            await rig.scan()
    finally:
        await server.close()
    return recorder.rec


def test_a_fallback_later_than_the_limit_by_less_than_a_plant_step_fails() -> None:
    """The PLC falls back 3624 s after the loss, 24 s too late; the plant's t of that scan is
    5400 s (its grid), which made the delay look like 3564 s: the check passed."""
    rec = asyncio.run(_stalled_loss(5460.0))
    fallback = [r for r in rec.rows if r["plc.mode"] == "fallback"]
    assert fallback and fallback[0]["t"] == pytest.approx(1.5)  # 5400 s: the plant's grid
    assert fallback[0]["plc.t"] == pytest.approx(5460.0 / 3600)
    verdict = judge(_criterion(FALLBACK), rec)
    assert verdict.passed is False
    assert verdict.value == pytest.approx(3624.0) and verdict.limit == 3600.0
    assert "t=1.51667" in verdict.detail  # the scan's process time, not the plant's t


def test_a_fallback_within_the_limit_passes_with_its_exact_delay() -> None:
    rec = asyncio.run(_stalled_loss(3650.0))
    verdict = judge(_criterion(FALLBACK), rec)
    assert verdict.passed is True and verdict.value == pytest.approx(3650.0 - 1836.0)


def _rows(lag: float, mode_at: dict[float, str]) -> Recording:
    rows = [{"t": t, "plc.mode": mode} for t, mode in mode_at.items()]
    return Recording(rows, loss_at=0.5, timebase=HOUR, heartbeat_timeout_s=1800.0, t_lag=lag)


def test_without_the_scan_times_the_upper_bound_is_judged() -> None:
    """Rows known only by a t sampled to 0.02 h: the fallback at t=1.5 happened before 1.52."""
    modes = {0.0: "active", 0.5: "active", 1.48: "active", 1.5: "fallback"}
    verdict = judge(_criterion(FALLBACK), _rows(0.02, modes))
    assert not verdict.passed and verdict.value == pytest.approx(0.02 * 3600 + 3600)
    assert "between 3600 and 3672 s" in verdict.detail and "upper bound" in verdict.detail
    exact = judge(_criterion(FALLBACK), _rows(0.0, modes))  # t is the scan's own time
    assert exact.passed and exact.value == pytest.approx(3600.0)


def test_the_actual_loss_time_is_judged_when_known() -> None:
    modes = {0.0: "active", 0.5: "active", 0.52: "active", 1.0: "fallback"}
    rec = _rows(0.0, modes)
    planned = judge(_criterion(FALLBACK), rec)
    assert planned.value == pytest.approx(1800.0) and "planned" in planned.detail
    rec.lost_at = 0.51  # the driver severed the controller a little after the planned time
    actual = judge(_criterion(FALLBACK), rec)
    assert actual.value == pytest.approx(0.49 * 3600) and "planned" not in actual.detail


def test_a_drift_alarm_is_timed_by_the_end_of_the_cycle_that_raised_it() -> None:
    """A cycle scheduled at t=1.0 that ran late raised its alarm only by t=1.04."""
    check = {"kind": "drift_alarm", "signal": "KC", "after": 0.5, "within": 0.52}
    alarm = Alarm(1.0, 1.04, "drift.KC", "KC", "high", "KC drifted")
    rec = Recording(alarms=[alarm], timebase=HOUR)
    verdict = judge(_criterion(check), rec)
    assert not verdict.passed and verdict.value == pytest.approx(0.54)
    assert "between 0.5 and 0.54" in verdict.detail
    on_time = Recording(alarms=[Alarm(1.0, 1.0, "drift.KC", "KC", "high", "m")], timebase=HOUR)
    assert judge(_criterion(check), on_time).passed
    unknown = Recording(alarms=[Alarm(1.0, math.nan, "drift.KC", "KC", "high", "m")])
    assert not judge(_criterion(check), unknown).passed


def test_an_alarm_scheduled_before_the_drift_is_a_false_alarm() -> None:
    check = {"kind": "drift_alarm", "signal": "KC", "after": 0.5, "within": 1.0}
    late = Alarm(0.48, 0.51, "drift.KC", "KC", "high", "m")  # read its data before 0.5
    verdict = judge(_criterion(check), Recording(alarms=[late], timebase=HOUR))
    assert not verdict.passed and "false alarm" in verdict.detail


def test_the_setpoint_in_place_is_the_one_scanned_before_the_send() -> None:
    """Both scans have the plant's t=0; the second came after the send (it shows the new
    value): the move is judged from the value in place before it, -30."""
    check = {
        "kind": "setpoints_within_limits",
        "limits": {"Tsh": [-45, 120]},
        "max_move": {"Tsh": 6.0},
    }
    rows = [{"t": 0.0, "plc.t": 0.0, "u.Tsh": -30.0}, {"t": 0.0, "plc.t": 0.015, "u.Tsh": -20.0}]
    rec = Recording(rows, sent=[(0.01, {"Tsh": -20.0})], timebase=HOUR)
    verdict = judge(_criterion(check), rec)
    assert not verdict.passed and verdict.value == pytest.approx(4.0, abs=1e-4)
    sampled = [{k: v for k, v in r.items() if k != "plc.t"} for r in rows]
    rec = Recording(sampled, sent=[(0.01, {"Tsh": -20.0})], timebase=HOUR, t_lag=0.02)
    assert judge(_criterion(check), rec).value == pytest.approx(4.0, abs=1e-4)  # either scan
