"""What the true plant really got is what the evidence says, and nothing is made to fit.

* recordings carry, beside ``u.<input>`` (the setpoint the PLC applies), ``i.<input>``: what
  the true plant received, after actuator faults (campaign recorder) and disturbances
  (offline ``simulate``);
* a ``parameter_drift`` is applied as prescribed, past -100 % too: a value outside the
  parameter's physical domain stops the true plant with a plant fault, never a floor at 0;
* a serving rig that ends its batch before a scheduled fault started says so in its log.
"""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml

from controller.clock import ScaledClock, SteppedClock
from controller.plantfile import build_model
from controller.runtime.site import load_site
from hil.campaign.cases import Case
from hil.campaign.recorder import Recorder
from hil.campaign.runner import write_case_files
from hil.faultcheck import parse_fault
from hil.faults import FaultSet
from hil.rig import HilRig
from hil.servers.memory import MemoryPlcServer
from hil.simulate import run_scenario

ROOT = Path(__file__).resolve().parents[2]
LYO = ROOT / "configs" / "sites" / "lyophilizer-modbus.yaml"
pytestmark = pytest.mark.timeout(120)


def _rig(clock: SteppedClock | ScaledClock, site_file: Path = LYO) -> tuple[HilRig, Recorder]:
    site = load_site(site_file)
    recorder = Recorder(site)
    rig = HilRig(site, clock, [MemoryPlcServer(site.tags, clock)], on_scan=recorder.scan)
    return rig, recorder


async def _scan(rig: HilRig, clock: SteppedClock, steps: int) -> None:
    for _ in range(steps):
        clock.advance(rig.timebase.seconds(rig.plant_step))
        await rig.scan()


# ------------------------------------------------------------ the input the plant received
async def test_the_recording_has_the_input_the_plant_received_beside_the_plc_value() -> None:
    clock = SteppedClock()
    rig, recorder = _rig(clock)
    cap = {"kind": "actuator_saturation", "target": "Tsh", "start": 0.2, "magnitude": -40.0}
    rig.inject(parse_fault(cap))
    await rig.scan()
    await _scan(rig, clock, 30)  # 0.6 h: the recipe ramps the shelf from -35 degC upwards
    rows = recorder.rec.rows
    assert {"u.Tsh", "u.Pch", "i.Tsh", "i.Pch"} <= set(rows[-1])
    assert rows[-1]["i.Tsh"] == rig.truth.inputs["Tsh"]
    capped = [r for r in rows if r["t"] > 0.25]
    assert all(r["i.Tsh"] == pytest.approx(-40.0) for r in capped)  # what the plant got
    assert all(r["u.Tsh"] > -36.0 for r in capped)  # what the PLC applied: not capped
    before = [r for r in rows if r["t"] < 0.19]
    assert all(r["i.Tsh"] == pytest.approx(r["u.Tsh"]) for r in before[1:])


def test_simulate_rows_have_the_input_the_plant_received(tmp_path: Path) -> None:
    """A held shelf at -35 degC; the true plant's shelf is 5 degC colder from 0.2 to 0.6 h."""
    src = ROOT / "configs" / "scenarios" / "lyophilizer-nominal-recipe.yaml"
    raw = yaml.safe_load(src.read_text(encoding="utf-8"))
    raw["plant"] = str(ROOT / "configs" / "plants" / "lyophilizer.yaml")
    held = {"Tsh": -35.0, "Pch": 0.15}
    raw["recipe"]["table"] = [{"t": 0.0, "inputs": held}, {"t": 100.0, "inputs": held}]
    raw["true_plant"]["disturbances"] = [{"input": "Tsh", "start": 0.2, "end": 0.6, "offset": -5.0}]
    path = tmp_path / "scenario.yaml"
    path.write_text(yaml.safe_dump(raw), encoding="utf-8")
    run = asyncio.run(run_scenario(path, max_steps=9))
    assert all({"i.Tsh", "i.Pch", "u.Tsh", "u.Pch"} <= set(r) for r in run.rows)
    rows = [r for r in run.rows if r.get("solve.status") != "end"]
    assert [round(r["t"], 6) for r in rows] == pytest.approx([k / 10 for k in range(9)])
    assert all(r["u.Tsh"] == -35.0 for r in rows)  # what was asked, all along
    # what the plant had at t: the end of the step before it (inside the disturbance or not)
    expected = [-35.0, -35.0, -35.0, -40.0, -40.0, -40.0, -40.0, -35.0, -35.0]
    assert [r["i.Tsh"] for r in rows] == pytest.approx(expected)


# ------------------------------------------------------------ parameter drift past -100 %
def test_a_parameter_drift_is_applied_as_prescribed_past_minus_100_percent() -> None:
    model = build_model(ROOT / "configs" / "plants" / "lyophilizer.yaml")
    drift = parse_fault({"kind": "parameter_drift", "target": "KP", "start": 0.0, "rate": -0.5})
    faults = FaultSet([drift], np.random.default_rng(0))
    nominal = model.parameters
    kp = faults.parameters(3.0, nominal)["KP"]
    assert kp == pytest.approx(nominal["KP"] * (1.0 - 0.5 * 3.0))  # negative, not floored
    assert kp < 0 and model.parameter_violations({"KP": kp})  # outside its domain


async def test_a_drift_out_of_the_parameter_domain_stops_the_true_plant() -> None:
    clock = SteppedClock()
    rig, recorder = _rig(clock)
    rig.inject(parse_fault({"kind": "parameter_drift", "target": "KP", "start": 0.0, "rate": -4.0}))
    await rig.scan()
    await _scan(rig, clock, 20)  # 0.4 h: KP would be 0 at 0.25 h, negative after
    fault = rig.plant_fault
    assert fault is not None and [v.name for v in fault.violations] == ["KP"]
    assert fault.t == pytest.approx(0.26, abs=0.021)
    assert rig.log.plant_faults == [fault]
    assert recorder.rec.events and recorder.rec.events[0]["kind"] == "plant.validity"


# ------------------------------------------------------------ the rig's fault log
def test_the_recorder_keeps_the_rig_fault_events_and_schedule(tmp_path: Path) -> None:
    scenario: dict[str, Any] = yaml.safe_load(
        (ROOT / "configs" / "scenarios" / "lyophilizer-hil.yaml").read_text(encoding="utf-8")
    )
    scenario["plant"] = str(ROOT / "configs" / "plants" / "lyophilizer.yaml")
    scenario["faults"] = [
        {"kind": "sensor_bias", "target": "Tbot", "start": 0.1, "duration": 0.2, "magnitude": 1.0}
    ]
    site_file = write_case_files(
        Case("c000", 0, {}, 1, scenario, None, ()), tmp_path, LYO, None, "fast"
    )
    clock = SteppedClock()
    rig, recorder = _rig(clock, site_file)

    async def run() -> None:
        await rig.scan()
        await _scan(rig, clock, 20)

    asyncio.run(run())
    rec = recorder.rec
    assert [f["kind"] for f in rec.scheduled_faults] == ["sensor_bias"]
    assert [(e["action"], e["t"]) for e in rec.faults] == [
        ("start", 0.1),
        ("end", pytest.approx(0.3)),
    ]


async def test_a_serving_rig_logs_a_scheduled_fault_that_never_started(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    scenario: dict[str, Any] = yaml.safe_load(
        (ROOT / "configs" / "scenarios" / "lyophilizer-hil.yaml").read_text(encoding="utf-8")
    )
    scenario["plant"] = str(ROOT / "configs" / "plants" / "lyophilizer.yaml")
    # the local recipe ends primary drying at about 7.3 h, before 15 h (the run lasts 20 h)
    scenario["faults"] = [
        {"kind": "sensor_bias", "target": "Tbot", "start": 15.0, "magnitude": 3.0}
    ]
    site_file = write_case_files(
        Case("c000", 0, {}, 1, scenario, None, ()), tmp_path, LYO, None, "fast"
    )
    clock = ScaledClock(50_000.0)
    rig, _ = _rig(clock, site_file)
    rig.at_batch_end = "exit"
    with caplog.at_level(logging.WARNING, logger="pharmatwin.hil.rig"):
        await asyncio.wait_for(rig.run(asyncio.Event()), 60)
    assert rig.plant.finished_at is not None and rig.plant.finished_at < 15.0
    (line,) = [r.getMessage() for r in caplog.records if "never became active" in r.getMessage()]
    assert line.startswith("fault sensor_bias on Tbot scheduled at t=15 h never became active")
