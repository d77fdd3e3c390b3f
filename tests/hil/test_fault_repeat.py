"""``serve --repeat``: the runtime faults that still act go on in the next batch, their times
re-based, each with a ``carry`` event; none disappears silently at a batch restart.

Stepped clock and the in-memory PLC server, the freeze dryer with a batch cut to 0.2 h: the
rig scans exactly where the test says. Before the fix the new batch held only the scenario's
schedule: a bias injected "until cleared" stopped acting with no event.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest

from controller.clock import SteppedClock
from controller.runtime.site import load_site
from hil.faultcheck import parse_fault
from hil.faults import FaultEvent, FaultSet
from hil.rig import HilRig
from hil.scenario import load_scenario
from hil.servers.memory import MemoryPlcServer
from hil.site import hil_section

LYO = Path(__file__).resolve().parents[2] / "configs" / "sites" / "lyophilizer-modbus.yaml"
DURATION = 0.2  # h: ten plant steps of 0.02 h


def _rig() -> tuple[HilRig, SteppedClock]:
    site = load_site(LYO)
    section = hil_section(site)
    assert section is not None
    scenario = load_scenario(site.file(section.scenario))
    scenario = scenario.model_copy(update={"duration": DURATION, "faults": ()})
    clock = SteppedClock()
    rig = HilRig(site, clock, [MemoryPlcServer(site.tags, clock)], scenario=scenario)
    rig.at_batch_end = "repeat"
    return rig, clock


async def _until_batch(rig: HilRig, clock: SteppedClock, batch: int, steps: int) -> None:
    """What run() does after each scan, until ``steps`` plant steps into batch ``batch``."""
    step_s = rig.timebase.seconds(rig.plant_step)
    while not (rig.batches == batch and rig.t_model >= steps * rig.plant_step - 1e-9):
        clock.advance(step_s)
        await rig.scan()
        if rig.batch_over:
            rig._restart_batch(clock.now())
        assert rig.batches <= batch


def _bias(rig: HilRig) -> float:
    measured, _ = rig.measured
    truth = rig.truth
    true = {**truth.states, **truth.expressions}["Tbot"]
    return measured["Tbot"] - true


async def test_a_fault_injected_until_cleared_acts_in_the_next_batch() -> None:
    rig, clock = _rig()
    await rig.scan()
    rig.inject(parse_fault({"kind": "sensor_bias", "target": "Tbot", "start": 0.0,
                            "magnitude": 30.0}))  # fmt: skip
    await _until_batch(rig, clock, 1, 2)
    assert _bias(rig) == pytest.approx(30.0, abs=1.0)
    await _until_batch(rig, clock, 2, 2)
    assert rig.t_model == pytest.approx(2 * rig.plant_step)  # the new batch's own time
    assert _bias(rig) == pytest.approx(30.0, abs=1.0)  # still biased
    active = rig.summary()["active_faults"]
    assert [(f["kind"], f["target"], f["duration"]) for f in active] == [
        ("sensor_bias", "Tbot", None)
    ]
    carried = [e for e in rig.log.fault_events if e.action == "carry"]
    assert [(e.kind, e.target, e.source, e.t) for e in carried] == [
        ("sensor_bias", "Tbot", "runtime", 0.0)
    ]
    assert "batch restart" in carried[0].detail and "until cleared" in carried[0].detail
    await _until_batch(rig, clock, 3, 1)  # and the batch after that
    assert _bias(rig) == pytest.approx(30.0, abs=1.0)
    rig.faults.clear(kind="sensor_bias")
    await _until_batch(rig, clock, 3, 3)
    assert abs(_bias(rig)) < 1.0  # cleared: gone for good


async def test_times_are_rebased_and_ended_faults_stay_behind() -> None:
    rig, clock = _rig()
    await rig.scan()
    await _until_batch(rig, clock, 1, 5)  # t = 0.1 h of 0.2
    inject = [
        # active at the end: 0.05 h of its 0.15 h left in the next batch
        {"kind": "sensor_bias", "target": "Tbot", "start": 0.0, "magnitude": 30.0,
         "duration": 0.15},
        # pending at the end: starts 0.15 h into the next batch
        {"kind": "sensor_dropout", "target": "Tbot", "start": 0.25},
        # over before the end: stays behind (an actuator fault: a sensor fault this short,
        # under the controller's sample time of 0.1 h, is refused as never seen)
        {"kind": "actuator_stuck", "target": "Tsh", "start": 0.0, "duration": 0.04},
    ]  # fmt: skip
    for raw in inject:
        rig.inject(parse_fault(raw))
    await _until_batch(rig, clock, 2, 1)
    held = {f.kind: f for f in rig.faults.faults}
    assert set(held) == {"sensor_bias", "sensor_dropout"}
    assert held["sensor_bias"].start == pytest.approx(-0.1)  # began before this batch did
    assert held["sensor_bias"].start + (held["sensor_bias"].duration or 0) == pytest.approx(0.05)
    assert held["sensor_dropout"].start == pytest.approx(0.15)
    assert _bias(rig) == pytest.approx(30.0, abs=1.0)
    await _until_batch(rig, clock, 2, 4)  # 0.08 h: the bias is over, its end reported
    assert abs(_bias(rig)) < 1.0
    ends = [e for e in rig.log.fault_events if e.action == "end" and e.kind == "sensor_bias"]
    assert [e.t for e in ends] == [pytest.approx(0.05)]
    await _until_batch(rig, clock, 2, 8)  # 0.16 h: the dropout has started
    assert "Tbot" in rig.measured[1]
    actions = [(e.action, e.kind) for e in rig.log.fault_events if e.action == "carry"]
    assert actions == [("carry", "sensor_bias"), ("carry", "sensor_dropout")]


def test_a_drifted_parameter_stays_drifted_and_a_scheduled_fault_ends_with_a_reason() -> None:
    events: list[FaultEvent] = []
    sched = parse_fault({"kind": "sensor_bias", "target": "y", "start": 0.0, "magnitude": 1.0})
    old = FaultSet([sched], np.random.default_rng(0), on_event=events.append)
    old.inject(parse_fault({"kind": "parameter_drift", "target": "k", "start": 0.0,
                            "rate": -0.5, "duration": 1.0}), 1.0)  # fmt: skip
    assert old.parameters(3.0, {"k": 2.0})["k"] == pytest.approx(1.0)  # ended at 2.0: -50 %
    new = FaultSet([sched], np.random.default_rng(1), on_event=events.append)
    carried = old.carry_into(new, 3.0, batch=1)
    assert [(f.kind, f.start) for f in carried] == [("parameter_drift", -2.0)]
    assert new.parameters(0.0, {"k": 2.0})["k"] == pytest.approx(1.0)  # not repaired
    end = [e for e in events if e.action == "end" and e.source == "schedule"]
    assert [(e.kind, e.t) for e in end] == [("sensor_bias", 3.0)]
    assert "batch 1 ended" in end[0].detail
    assert not math.isnan(new.parameters(5.0, {"k": 2.0})["k"])
