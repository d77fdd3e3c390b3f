"""Every fault kind does what it says: the same short case run with and without the fault.

The case is the campaign's fast mode cut down to the rig: the lyophilizer site's true plant,
virtual PLC (following its local recipe, a shelf ramp of 60 degC/h) and faults on a stepped
clock, the in-memory PLC server, the campaign's own :class:`~hil.campaign.recorder.Recorder`,
and a client reading the PLC image through the server's port after every scan. 1.2 h of
batch in 60 plant steps of 0.02 h (about 0.1 s a run).

Fault windows start and end in the middle of a plant step (0.21 h to 0.61 h), so which steps
a fault acts on is unambiguous: sensor faults act on the samples taken at t in [0.21, 0.61);
actuator and parameter faults on the steps that start in it (recorded at the step's end).

``comm_latency`` needs wall-clock time, so its with/without pair runs over Modbus TCP on
127.0.0.1 with a plain pymodbus client; in fast mode it is refused, at load, at injection and
in a campaign case.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import math
import statistics
import time
from collections.abc import Iterator, Sequence
from functools import cache
from pathlib import Path
from typing import Any

import pytest
from lyo_cases import case_site
from pymodbus.client import AsyncModbusTcpClient

from controller.binding import Binding
from controller.clock import SteppedClock
from controller.errors import ConfigError, PortConnectError
from controller.ports.base import Quality
from controller.runtime.site import Site, load_site
from hil.campaign.recorder import Recorder
from hil.campaign.runner import run_case
from hil.campaign.spec import load_campaign
from hil.faultcheck import FaultRefusedError, parse_fault
from hil.rig import HilRig
from hil.servers.base import PlcServer
from hil.servers.memory import MemoryPlcServer
from hil.servers.modbus import ModbusPlcServer

ROOT = Path(__file__).resolve().parents[2]
LYO = ROOT / "configs" / "sites" / "lyophilizer-modbus.yaml"
OQ = ROOT / "configs" / "campaigns" / "lyophilizer-oq.yaml"
STEPS = 60
START, END = 0.21, 0.61  # h, mid-step
TBOT_TAG = "product_temp_bottom"
pytestmark = pytest.mark.timeout(60)

Row = dict[str, Any]


@cache
def _site() -> Site:
    return load_site(LYO)


async def _record_async(faults: Sequence[dict[str, Any]], server: PlcServer | None) -> list[Row]:
    site = _site()
    clock = SteppedClock()
    memory = server is None
    server = MemoryPlcServer(site.tags, clock) if server is None else server
    recorder = Recorder(site)
    rig = HilRig(site, clock, [server], on_scan=recorder.scan)
    for fault in faults:
        rig.inject(parse_fault(fault))  # at t = 0: its start is absolute
    reading = [*Binding.of(site.tags, site.model).reading_tags().values(), "measurement_validity"]
    await server.start()
    try:
        port = server.port() if isinstance(server, MemoryPlcServer) else None
        if port is not None:
            await port.connect()
        for k in range(STEPS):
            await rig.scan()
            row = recorder.rec.rows[-1]
            row.update({f"in.{n}": v for n, v in rig.truth.inputs.items()})
            row["p.KC"] = rig.plant.parameters["KC"]
            if memory and port is not None:
                try:
                    snap = await port.read(reading)
                except PortConnectError as exc:
                    row["client.error"] = str(exc)
                else:
                    row["client.error"] = ""
                    row.update({f"client.{t}": v.value for t, v in snap.values.items()})
                    row.update({f"quality.{t}": v.quality for t, v in snap.values.items()})
            clock.advance_to(rig.timebase.seconds((k + 1) * rig.plant_step))
    finally:
        await server.close()
    return recorder.rec.rows


@cache
def _record(faults_json: str) -> tuple[Row, ...]:
    return tuple(asyncio.run(_record_async(json.loads(faults_json), None)))


def record(*faults: dict[str, Any]) -> list[Row]:
    """The recording of the short case with ``faults`` injected at t = 0 (memoized)."""
    return list(_record(json.dumps(faults, sort_keys=True)))


def fault(kind: str, target: str, **kw: Any) -> dict[str, Any]:
    return {"kind": kind, "target": target, "start": START, "duration": END - START, **kw}


def pairs(with_fault: list[Row], without: list[Row]) -> Iterator[tuple[Row, Row, Row | None]]:
    """(with, without, previous row with the fault) for every scan of both runs."""
    assert [r["t"] for r in with_fault] == pytest.approx([r["t"] for r in without])
    prev: Row | None = None
    for w, b in zip(with_fault, without, strict=True):
        yield w, b, prev
        prev = w


def sampled_in_window(row: Row) -> bool:
    """A sensor fault acts on the samples taken inside its window."""
    return START <= row["t"] < END


def stepped_in_window(prev: Row | None) -> bool:
    """An actuator or parameter fault acts on the steps that start inside its window."""
    return prev is not None and START <= prev["t"] < END


# ---------------------------------------------------------------------- the baseline
def test_the_case_without_faults_is_what_the_faults_are_judged_against() -> None:
    rows = record()
    assert len(rows) == STEPS and rows[-1]["t"] == pytest.approx(1.18)
    assert all(r["client.error"] == "" for r in rows)
    assert all(r[f"quality.{TBOT_TAG}"] is Quality.GOOD for r in rows)
    assert all(r["in.Tsh"] == pytest.approx(r["u.Tsh"]) for r in rows)  # the plant gets the ramp
    ramp = [r["in.Tsh"] for r in rows if START <= r["t"] < END]
    assert all(b > a for a, b in itertools.pairwise(ramp))
    assert record() == rows  # deterministic: same seed, same recording


# ---------------------------------------------------------------------- sensors
def test_sensor_bias_shifts_the_measured_value_by_its_magnitude() -> None:
    bias = 2.0  # degC
    for w, b, _ in pairs(record(fault("sensor_bias", "Tbot", magnitude=bias)), record()):
        shift = bias if sampled_in_window(w) else 0.0
        assert w["y.Tbot"] - b["y.Tbot"] == pytest.approx(shift, abs=1e-9)
        assert w[f"client.{TBOT_TAG}"] - b[f"client.{TBOT_TAG}"] == pytest.approx(shift, abs=1e-9)
        assert w["e.Tbot"] == b["e.Tbot"] and w["x.Lck"] == b["x.Lck"]  # the plant is untouched


def test_sensor_drift_grows_at_its_rate_from_its_start() -> None:
    rate = -5.0  # degC/h
    for w, b, _ in pairs(record(fault("sensor_drift", "Tbot", rate=rate)), record()):
        shift = rate * (w["t"] - START) if sampled_in_window(w) else 0.0
        assert w["y.Tbot"] - b["y.Tbot"] == pytest.approx(shift, abs=1e-9)
        assert w["e.Tbot"] == b["e.Tbot"]


def test_sensor_noise_adds_zero_mean_noise_of_its_standard_deviation() -> None:
    std = 0.5  # degC
    noisy = record({"kind": "sensor_noise", "target": "Tbot", "start": START, "magnitude": std})
    extra = []
    for w, b, _ in pairs(noisy, record()):
        if w["t"] >= START:
            extra.append(w["y.Tbot"] - b["y.Tbot"])
        else:
            assert w["y.Tbot"] == b["y.Tbot"]
        assert w["e.Tbot"] == b["e.Tbot"]
    assert len(extra) >= 49
    assert 0.6 * std < statistics.stdev(extra) < 1.4 * std
    assert abs(statistics.fmean(extra)) < 0.4 * std


def test_sensor_stuck_repeats_its_value_then_reads_true_again() -> None:
    stuck_rows = record(fault("sensor_stuck", "Tbot"))
    held = [w["y.Tbot"] for w in stuck_rows if sampled_in_window(w)]
    free = [b["y.Tbot"] for b in record() if sampled_in_window(b)]
    assert len(held) == 20 and len(set(held)) == 1  # repeated, sample after sample
    assert len(set(free)) == 20  # the true sensor moves
    assert held[0] == free[0]  # frozen at the first sample it saw
    for w, b, _ in pairs(stuck_rows, record()):
        if not sampled_in_window(w):
            assert w["y.Tbot"] == b["y.Tbot"]
        assert w[f"client.{TBOT_TAG}"] == w["y.Tbot"]


def test_sensor_stuck_with_a_magnitude_flickers_between_two_values() -> None:
    """A stuck transmitter whose last digit toggles: the held value or it + magnitude."""
    flicker = 0.01  # degC: one count of the int16 x0.01 register
    rows = record(fault("sensor_stuck", "Tbot", magnitude=flicker, unit="degC"))
    held = [w["y.Tbot"] for w in rows if sampled_in_window(w)]
    steady = [w["y.Tbot"] for w in record(fault("sensor_stuck", "Tbot")) if sampled_in_window(w)]
    assert len(held) == 20 and set(held) == {steady[0], steady[0] + flicker}
    assert 3 <= held.count(steady[0]) <= 17  # at random, both codes seen
    for w, b, _ in pairs(rows, record()):
        if not sampled_in_window(w):
            assert w["y.Tbot"] == b["y.Tbot"]
        assert w[f"client.{TBOT_TAG}"] == pytest.approx(w["y.Tbot"], abs=1e-9)


def test_sensor_dropout_shows_bad_quality_at_the_client() -> None:
    for w, b, _ in pairs(record(fault("sensor_dropout", "Tbot")), record()):
        assert b[f"quality.{TBOT_TAG}"] is Quality.GOOD
        assert b["client.measurement_validity"] == 1.0
        if sampled_in_window(w):
            assert w[f"quality.{TBOT_TAG}"] is Quality.BAD
            assert w["client.measurement_validity"] == 0.0  # Modbus's stand-in for quality
            assert math.isnan(w["y.Tbot"])  # the recording keeps no bad value
        else:
            assert w[f"quality.{TBOT_TAG}"] is Quality.GOOD and w["y.Tbot"] == b["y.Tbot"]
        assert w["quality.shelf_temp_pv"] is Quality.GOOD


# ---------------------------------------------------------------------- actuators
def test_actuator_stuck_holds_the_input_the_plant_had_when_it_started() -> None:
    rows = record(fault("actuator_stuck", "Tsh"))
    before = next(r for r in rows if r["t"] == pytest.approx(0.20))
    held = []
    for w, b, prev in pairs(rows, record()):
        assert w["u.Tsh"] == b["u.Tsh"]  # the PLC asks for the same ramp
        if stepped_in_window(prev):
            held.append(w["in.Tsh"])
        else:
            assert w["in.Tsh"] == pytest.approx(b["in.Tsh"])
    assert len(held) == 20 and set(held) == {before["u.Tsh"]}
    assert before["u.Tsh"] == pytest.approx(-23.0)  # the ramp at 0.20 h
    assert rows[-1]["x.Lck"] < record()[-1]["x.Lck"]  # a colder shelf dries less


def test_actuator_saturation_caps_the_input_at_its_magnitude() -> None:
    cap = -10.0  # degC
    capped = 0
    for w, b, prev in pairs(record(fault("actuator_saturation", "Tsh", magnitude=cap)), record()):
        if stepped_in_window(prev):
            assert prev is not None
            # the step's request, capped, held over the whole step: never a ramp through the cap
            assert w["in.Tsh"] == pytest.approx(min(prev["u.Tsh"], cap), abs=1e-9)
            assert w["in.Tsh"] <= cap
            capped += b["in.Tsh"] > cap
        else:
            assert w["in.Tsh"] == pytest.approx(b["in.Tsh"])
    assert capped >= 9  # the ramp passed -10 degC at 0.42 h: capped from then on


def test_actuator_lag_is_a_first_order_lag_of_its_time_constant() -> None:
    tau = 0.1  # h
    rows = record(fault("actuator_lag", "Tsh", magnitude=tau))
    base = record()
    checked = 0
    for k in range(2, len(rows)):
        w, prev, prev2 = rows[k], rows[k - 1], rows[k - 2]
        if stepped_in_window(prev) and stepped_in_window(prev2):
            dt = w["t"] - prev["t"]
            # the position moves towards the PLC's request of the previous scan
            expected = prev["in.Tsh"] + (prev["u.Tsh"] - prev["in.Tsh"]) * (1 - math.exp(-dt / tau))
            assert w["in.Tsh"] == pytest.approx(expected, abs=1e-9)
            checked += 1
    assert checked == 19
    last = next(i for i in range(len(rows)) if rows[i]["t"] == pytest.approx(END + 0.01))
    # on a 60 degC/h ramp the lag trails by about slope * tau = 6 degC after 4 tau
    assert 4.0 < base[last]["in.Tsh"] - rows[last]["in.Tsh"] < 7.5
    assert rows[last + 1]["in.Tsh"] == pytest.approx(base[last + 1]["in.Tsh"])  # released


# ---------------------------------------------------------------------- equipment
def test_parameter_drift_degrades_the_true_plant_at_its_rate() -> None:
    rate = 2.0  # 1/h: the contact conductance rising 200 %/h
    rows = record({"kind": "parameter_drift", "target": "KC", "start": START, "rate": rate})
    kc0 = rows[0]["p.KC"]
    for w, b, prev in pairs(rows, record()):
        assert b["p.KC"] == kc0
        if prev is not None and prev["t"] >= START:
            assert w["p.KC"] == pytest.approx(kc0 * (1 + rate * (prev["t"] - START)), rel=1e-12)
        else:
            assert w["p.KC"] == kc0 and w["e.Tbot"] == b["e.Tbot"]
    # more heat from the shelf: a warmer product and faster drying, and the sensor sees it
    assert rows[-1]["e.Tbot"] > record()[-1]["e.Tbot"] + 5.0
    assert rows[-1]["x.Lck"] > 1.5 * record()[-1]["x.Lck"]
    assert rows[-1]["y.Tbot"] > record()[-1]["y.Tbot"] + 5.0


# ---------------------------------------------------------------------- communications
def test_comm_bad_status_shows_bad_quality_at_the_client_for_its_tag_only() -> None:
    for w, b, _ in pairs(record(fault("comm_bad_status", TBOT_TAG)), record()):
        assert b[f"quality.{TBOT_TAG}"] is Quality.GOOD
        bad = sampled_in_window(w)
        assert (w[f"quality.{TBOT_TAG}"] is Quality.BAD) == bad
        assert math.isnan(w[f"client.{TBOT_TAG}"]) == bad
        assert w["quality.shelf_temp_pv"] is Quality.GOOD
        assert w["y.Tbot"] == b["y.Tbot"]  # the sensor is fine; the link is not


def test_comm_drop_drops_the_client_once_at_its_start() -> None:
    rows = record({"kind": "comm_drop", "target": "*", "start": START})
    errors = [(r["t"], r["client.error"]) for r in rows if r["client.error"]]
    assert errors == [(pytest.approx(0.22), "the PLC dropped the connection")]
    assert not any(r["client.error"] for r in record())


def test_comm_restart_stops_the_server_for_its_duration() -> None:
    rows = record(fault("comm_restart", "*", duration=0.2))
    for r in rows:
        if START <= r["t"] < START + 0.2:
            assert r["client.error"] == "the PLC is not answering (server stopped)"
    after = [r for r in rows if r["t"] > START + 0.2]
    assert after[0]["client.error"] == "the PLC dropped the connection"  # reconnect once
    assert all(r["client.error"] == "" for r in after[1:])
    assert sum(bool(r["client.error"]) for r in rows) == 11
    assert not any(r["client.error"] for r in record())


async def _timed_reads(latency: float | None, port: int) -> list[float]:
    """Seconds a plain pymodbus client waits for Tbot, on a rig whose server is Modbus TCP."""
    site = _site()
    server = ModbusPlcServer(site.tags, port)
    clock = SteppedClock()
    rig = HilRig(site, clock, [server])
    if latency is not None:
        rig.inject(parse_fault({"kind": "comm_latency", "target": "*", "start": 0.0,
                                "magnitude": latency}))  # fmt: skip
    spec = site.tags.tags[TBOT_TAG].modbus
    assert spec is not None
    await server.start()
    client = AsyncModbusTcpClient("127.0.0.1", port=port, timeout=2)
    try:
        await rig.scan()
        await client.connect()
        waits = []
        for _ in range(3):
            t0 = time.perf_counter()
            rr = await client.read_input_registers(spec.protocol_address, count=spec.count)
            waits.append(time.perf_counter() - t0)
            assert not rr.isError(), rr
        return waits
    finally:
        client.close()
        await server.close()


async def test_comm_latency_delays_every_answer_over_modbus(port_number: int) -> None:
    latency = 0.05  # s of wall-clock time
    without = await _timed_reads(None, port_number)
    with_latency = await _timed_reads(latency, port_number)
    assert min(with_latency) >= latency
    assert statistics.median(without) < latency / 2


# ---------------------------------------------------------------------- refused where it cannot act
def test_comm_latency_is_refused_in_fast_mode_at_injection() -> None:
    site = _site()
    clock = SteppedClock()
    rig = HilRig(site, clock, [MemoryPlcServer(site.tags, clock)])
    latency = {"kind": "comm_latency", "target": "*", "start": 0.0, "magnitude": 0.05}
    with pytest.raises(FaultRefusedError, match="comm_latency fault cannot take effect here"):
        rig.inject(parse_fault(latency))
    assert rig.faults.faults == ()  # nothing held
    with pytest.raises(ValueError, match="hil mode"):
        rig.servers[0].latency = 0.05  # and the in-memory server cannot be told to


def test_comm_latency_is_refused_at_load_by_a_fast_mode_rig(tmp_path: Path) -> None:
    latency = {"kind": "comm_latency", "target": "*", "start": 1.0, "magnitude": 0.05}
    site = load_site(case_site(tmp_path, [latency]))
    clock = SteppedClock()
    with pytest.raises(ConfigError) as info:
        HilRig(site, clock, [MemoryPlcServer(site.tags, clock)])
    (problem,) = info.value.problems
    assert problem.file.endswith("scenario.yaml") and problem.location == "faults.0"
    assert problem.message.startswith("a comm_latency fault cannot take effect here")
    text = str(info.value)
    assert "run this case in hil mode" in text
    hil_rig = HilRig(site, clock, [ModbusPlcServer(site.tags)])  # the hil mode carries it out
    assert [f.kind for f in hil_rig.faults.faults] == ["comm_latency"]


def test_a_fast_mode_campaign_case_with_comm_latency_is_an_error_not_a_pass(
    tmp_path: Path,
) -> None:
    campaign = load_campaign(OQ)
    case = next(c for c in campaign.cases if c.factors.get("faults") == "comm-latency")
    job = {
        "case": case.to_json(),
        "criteria": [c.model_dump(mode="json") for c in campaign.spec.criteria],
        "out": str(tmp_path),
        "site": str(campaign.site_path),
        "controller": None,
        "mode": "fast",
        "rate": 1.0,
    }
    result = run_case(job)
    assert result["status"] == "error"
    assert "comm_latency fault cannot take effect here" in result["error"]
    assert result["verdicts"] == []
