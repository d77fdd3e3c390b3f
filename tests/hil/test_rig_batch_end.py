"""What the HIL does when the batch ends (issue 20): by default `serve` keeps serving and the
plant holds its final state; `--until-batch-end` exits; `--repeat` starts a new batch.

Stepped clock and the in-memory PLC server: the rig scans exactly where the test says.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from controller.clock import ScaledClock, SteppedClock
from controller.runtime.site import load_site
from hil.cli import main as hil_main
from hil.net import free_port
from hil.rig import HilRig
from hil.servers.memory import MemoryPlcServer

ROOT = Path(__file__).resolve().parents[2]
LYO = ROOT / "configs" / "sites" / "lyophilizer-modbus.yaml"


def _rig(clock: SteppedClock) -> HilRig:
    site = load_site(LYO)
    return HilRig(site, clock, [MemoryPlcServer(site.tags, clock)])


async def _scan_until(rig: HilRig, clock: SteppedClock, hours: float) -> None:
    step_s = rig.timebase.seconds(rig.plant_step)
    while rig.t_model < hours - 1e-9:
        clock.advance(step_s)
        await rig.scan()


async def test_by_default_serve_holds_the_final_state_and_goes_on() -> None:
    clock = SteppedClock()
    rig = _rig(clock)
    rig.at_batch_end = "hold"
    await rig.scan()
    await _scan_until(rig, clock, 12.0)  # the PLC's nominal recipe dries in about 6.7 h
    assert rig.plant.finished_at is not None and rig.plant.finished_at < 8.0
    end = dict(rig.truth.states)
    scans = rig.vplc.scan_count
    await _scan_until(rig, clock, 14.0)
    assert rig.t_model == pytest.approx(14.0)  # time goes on, the PLC scans, the servers serve
    assert rig.vplc.scan_count > scans
    assert rig.truth.states == end  # held, not integrated past the end of primary drying
    summary = rig.summary()
    assert summary["held_since"] is not None and summary["batches"] == 1


async def test_repeat_starts_a_new_batch_from_the_initial_state() -> None:
    clock = SteppedClock()
    rig = _rig(clock)
    rig.at_batch_end = "repeat"
    step_s = rig.timebase.seconds(rig.plant_step)
    await rig.scan()
    while rig.batches == 1:  # what run() does after each scan
        clock.advance(step_s)
        await rig.scan()
        if rig.batch_over:
            rig._restart_batch(clock.now())
        assert clock.now() < 10 * 3600.0
    clock.advance(step_s)
    await rig.scan()
    assert rig.batches == 2
    assert rig.t_model == pytest.approx(rig.plant_step)  # the new batch's own time
    assert rig.truth.states["Lck"] < 0.01  # a fresh cake


def test_until_batch_end_exits_when_the_batch_ends(tmp_path: Path) -> None:
    """`serve --until-batch-end` returns by itself at the end of primary drying (a fast
    scaled clock: about 6.7 h of process time in a second or two of wall time)."""
    code = hil_main(
        ["serve", str(LYO), "--rate", "20000", "--until-batch-end", "--state-dir",
         str(tmp_path), "--modbus-port", str(free_port())]
    )  # fmt: skip
    assert code == 0


async def test_exit_mode_run_returns_at_the_batch_end() -> None:
    site = load_site(LYO)
    clock = ScaledClock(50_000.0)
    rig = HilRig(site, clock, [MemoryPlcServer(site.tags, clock)])
    rig.at_batch_end = "exit"
    await asyncio.wait_for(rig.run(asyncio.Event()), 60)
    assert rig.batch_over and rig.plant.finished_at is not None
