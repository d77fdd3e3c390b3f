"""HIL faults: each kind changes what is seen exactly as specified; degradation on the plant."""

from __future__ import annotations

import math
import re
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from controller.errors import ScenarioError
from controller.plantfile import build_model
from hil.faultcheck import (
    FaultRefusedError,
    FaultTargets,
    check_fault,
    fault_problems,
    parse_fault,
    scheduled_fault_problems,
)
from hil.faults import CommState, FaultEvent, FaultSet
from hil.faultspec import FaultSpec
from hil.plant_runner import PlantRunner

ROOT = Path(__file__).resolve().parents[2]
CSTR = ROOT / "configs" / "plants" / "cstr.yaml"


def spec(kind: str, target: str = "y", start: float = 1.0, **kw: Any) -> FaultSpec:
    return FaultSpec.model_validate({"kind": kind, "target": target, "start": start, **kw})


def fault_set(*specs: FaultSpec, seed: int = 0) -> tuple[FaultSet, list[FaultEvent]]:
    events: list[FaultEvent] = []
    return FaultSet(specs, np.random.default_rng(seed), on_event=events.append), events


# ---------------------------------------------------------------------- sensors
def test_sensor_bias_only_inside_its_window_and_only_on_its_target() -> None:
    fs, _ = fault_set(spec("sensor_bias", start=1.0, duration=2.0, magnitude=0.5))
    values = {"y": 10.0, "z": 3.0}
    assert fs.measurements(0.5, values)[0] == values
    assert fs.measurements(1.0, values)[0] == {"y": 10.5, "z": 3.0}
    assert fs.measurements(2.9, values)[0] == {"y": 10.5, "z": 3.0}
    assert fs.measurements(3.0, values)[0] == values


def test_sensor_drift_grows_with_its_slope() -> None:
    fs, _ = fault_set(spec("sensor_drift", start=2.0, rate=0.25))
    seen = [fs.measurements(t, {"y": 1.0})[0]["y"] for t in (1.0, 2.0, 4.0, 10.0)]
    assert seen == pytest.approx([1.0, 1.0, 1.5, 3.0])


def test_sensor_noise_std_matches_magnitude() -> None:
    fs, _ = fault_set(spec("sensor_noise", start=0.0, magnitude=0.3), seed=7)
    samples = np.array([fs.measurements(float(k), {"y": 5.0})[0]["y"] for k in range(4000)])
    assert abs(samples.mean() - 5.0) < 0.03
    assert samples.std() == pytest.approx(0.3, rel=0.05)


def test_sensor_stuck_holds_first_value_after_activation_then_releases() -> None:
    fs, _ = fault_set(spec("sensor_stuck", start=1.0, duration=3.0))
    assert fs.measurements(0.0, {"y": 1.0})[0]["y"] == 1.0
    assert fs.measurements(1.5, {"y": 2.0})[0]["y"] == 2.0  # first call after activation
    assert fs.measurements(2.0, {"y": 7.0})[0]["y"] == 2.0
    assert fs.measurements(3.9, {"y": -4.0})[0]["y"] == 2.0
    assert fs.measurements(4.0, {"y": 9.0})[0]["y"] == 9.0


def test_sensor_dropout_flags_bad_and_keeps_the_value() -> None:
    fs, _ = fault_set(spec("sensor_dropout", start=1.0, duration=1.0))
    assert fs.measurements(0.0, {"y": 1.0, "z": 2.0}) == ({"y": 1.0, "z": 2.0}, set())
    assert fs.measurements(1.2, {"y": 1.0, "z": 2.0}) == ({"y": 1.0, "z": 2.0}, {"y"})
    assert fs.measurements(2.0, {"y": 1.0, "z": 2.0})[1] == set()


def test_sensor_fault_on_absent_name_is_ignored() -> None:
    fs, _ = fault_set(spec("sensor_bias", target="other", magnitude=1.0))
    assert fs.measurements(2.0, {"y": 1.0}) == ({"y": 1.0}, set())


# ---------------------------------------------------------------------- actuators
def test_actuator_stuck_holds_the_value_it_had_when_it_started() -> None:
    fs, _ = fault_set(spec("actuator_stuck", target="u", start=1.0, duration=2.0))
    assert fs.actuators(0.0, {"u": 10.0}, 0.5) == {"u": 10.0}
    assert fs.actuators(0.5, {"u": 12.0}, 0.5) == {"u": 12.0}
    assert fs.actuators(1.0, {"u": 20.0}, 0.5) == {"u": 12.0}
    assert fs.actuators(2.5, {"u": 30.0}, 0.5) == {"u": 12.0}
    assert fs.actuators(3.0, {"u": 30.0}, 0.5) == {"u": 30.0}


def test_actuator_stuck_without_history_holds_the_first_request() -> None:
    fs, _ = fault_set(spec("actuator_stuck", target="u", start=0.0))
    assert fs.actuators(0.0, {"u": 4.0}, 1.0) == {"u": 4.0}
    assert fs.actuators(1.0, {"u": 8.0}, 1.0) == {"u": 4.0}


def test_actuator_saturation_caps_from_above() -> None:
    fs, _ = fault_set(spec("actuator_saturation", target="Q_dot", start=0.0, magnitude=-3000.0))
    assert fs.actuators(0.0, {"Q_dot": -4500.0}, 1.0) == {"Q_dot": -4500.0}
    assert fs.actuators(1.0, {"Q_dot": -1000.0}, 1.0) == {"Q_dot": -3000.0}  # whatever the sign
    fs2, _ = fault_set(spec("actuator_saturation", target="F", start=0.0, magnitude=20.0))
    assert fs2.actuators(0.0, {"F": 50.0}, 1.0) == {"F": 20.0}
    assert fs2.actuators(0.0, {"F": 5.0}, 1.0) == {"F": 5.0}


def test_actuator_lag_reaches_63_percent_after_one_time_constant() -> None:
    tau, dt = 2.0, 0.05
    fs, _ = fault_set(spec("actuator_lag", target="u", start=0.0, magnitude=tau))
    assert fs.actuators(0.0, {"u": 0.0}, dt) == {"u": 0.0}  # starts at the request
    t, y = 0.0, 0.0
    for _ in range(round(tau / dt)):
        t += dt
        y = fs.actuators(t, {"u": 1.0}, dt)["u"]
    assert t == pytest.approx(tau)
    assert y == pytest.approx(1.0 - math.exp(-1.0), abs=0.01)
    for _ in range(round(4 * tau / dt)):
        t += dt
        y = fs.actuators(t, {"u": 1.0}, dt)["u"]
    assert y == pytest.approx(1.0, abs=0.01)


def test_actuator_lag_starts_from_the_request_at_activation() -> None:
    fs, _ = fault_set(spec("actuator_lag", target="u", start=1.0, duration=1.0, magnitude=10.0))
    assert fs.actuators(0.0, {"u": 3.0}, 0.5) == {"u": 3.0}
    assert fs.actuators(1.0, {"u": 5.0}, 0.5) == {"u": 5.0}  # no jump at activation
    lagged = fs.actuators(1.5, {"u": 15.0}, 0.5)["u"]
    assert 5.0 < lagged < 6.0
    assert fs.actuators(2.0, {"u": 15.0}, 0.5) == {"u": 15.0}  # ended: the request again


# ---------------------------------------------------------------------- equipment
def test_parameter_drift_kw_minus_one_percent_per_hour_for_ten_hours_stays() -> None:
    fs, _ = fault_set(spec("parameter_drift", target="Kw", start=2.0, duration=10.0, rate=-0.01))
    nominal = {"Kw": 4032.0, "A_R": 0.215}
    assert fs.parameters(1.0, nominal) == nominal
    assert fs.parameters(7.0, nominal)["Kw"] == pytest.approx(4032.0 * 0.95)
    assert fs.parameters(12.0, nominal)["Kw"] == pytest.approx(4032.0 * 0.90)
    later = fs.parameters(50.0, nominal)
    assert later["Kw"] == pytest.approx(4032.0 * 0.90)  # degradation does not heal
    assert later["A_R"] == 0.215
    assert nominal == {"Kw": 4032.0, "A_R": 0.215}


def test_parameter_drift_cleared_is_repaired() -> None:
    fs, events = fault_set(spec("parameter_drift", target="Kw", start=0.0, rate=-0.01))
    assert fs.parameters(10.0, {"Kw": 100.0})["Kw"] == pytest.approx(90.0)
    removed = fs.clear(kind="parameter_drift")
    assert [s.target for s in removed] == ["Kw"]
    assert fs.parameters(20.0, {"Kw": 100.0}) == {"Kw": 100.0}
    assert events[-1].action == "clear" and events[-1].t == 10.0


# ---------------------------------------------------------------------- communications
def test_comm_state_latency_bad_tags_restart_and_drop_edge() -> None:
    fs, _ = fault_set(
        spec("comm_latency", target="*", start=1.0, duration=2.0, magnitude=0.2),
        spec("comm_latency", target="*", start=2.0, duration=2.0, magnitude=0.3),
        spec("comm_bad_status", target="Tbot", start=1.0, duration=1.0),
        spec("comm_restart", target="*", start=5.0, duration=1.0),
        spec("comm_drop", target="*", start=3.0),
    )
    assert fs.comms(0.0) == CommState()
    s1 = fs.comms(1.0)
    assert s1.latency_s == pytest.approx(0.2)
    assert s1.bad_tags == frozenset({"Tbot"})
    assert not s1.servers_down and not s1.drop_now
    assert fs.comms(2.5).latency_s == pytest.approx(0.5)
    assert fs.comms(3.5).drop_now  # the edge, once
    assert not fs.comms(3.6).drop_now
    assert fs.comms(5.5).servers_down
    assert fs.comms(6.0) == CommState()


def test_runtime_drop_is_reported_once_at_the_next_call() -> None:
    fs, _ = fault_set()
    assert not fs.comms(1.0).drop_now
    fs.inject(spec("comm_drop", target="*", start=0.0), now=1.0)
    assert fs.comms(1.0).drop_now
    assert not fs.comms(1.0).drop_now


# ---------------------------------------------------------------------- events, runtime
def test_events_for_scheduled_start_and_end() -> None:
    fs, events = fault_set(spec("sensor_bias", start=1.0, duration=2.0, magnitude=1.0))
    fs.active(0.0)
    assert events == []
    assert [s.kind for s in fs.active(1.5)] == ["sensor_bias"]
    fs.active(2.0)
    fs.active(3.5)
    fs.active(4.0)
    assert [(e.action, e.t, e.source, e.kind, e.target) for e in events] == [
        ("start", 1.0, "schedule", "sensor_bias", "y"),
        ("end", 3.0, "schedule", "sensor_bias", "y"),
    ]


def test_a_window_skipped_between_calls_still_reports_start_and_end() -> None:
    fs, events = fault_set(spec("sensor_stuck", start=1.0, duration=0.5))
    fs.measurements(0.0, {"y": 1.0})
    fs.measurements(5.0, {"y": 1.0})
    assert [e.action for e in events] == ["start", "end"]


def test_inject_is_relative_to_now_and_reported() -> None:
    fs, events = fault_set()
    placed = fs.inject(spec("sensor_bias", start=0.0, duration=1.0, magnitude=2.0), now=10.0)
    assert placed.start == 10.0
    assert [(e.action, e.source, e.t) for e in events] == [
        ("inject", "runtime", 10.0),
        ("start", "runtime", 10.0),
    ]
    assert fs.measurements(10.5, {"y": 0.0})[0]["y"] == 2.0
    assert fs.measurements(11.0, {"y": 0.0})[0]["y"] == 0.0
    assert events[-1].action == "end" and events[-1].t == 11.0

    later = fs.inject(spec("sensor_bias", start=3.0, magnitude=1.0), now=12.0)
    assert later.start == 15.0
    assert fs.active(14.0) == []
    assert fs.active(15.0) == [later]


def test_clear_by_kind_and_target() -> None:
    fs, events = fault_set(
        spec("sensor_bias", target="a", magnitude=1.0),
        spec("sensor_bias", target="b", magnitude=1.0),
        spec("sensor_dropout", target="a"),
    )
    fs.inject(spec("actuator_stuck", target="u", start=0.0), now=0.0)
    assert len(fs.clear(kind="sensor_bias", target="a", now=2.0)) == 1
    assert [(s.kind, s.target) for s in fs.faults] == [
        ("sensor_bias", "b"),
        ("sensor_dropout", "a"),
        ("actuator_stuck", "u"),
    ]
    assert events[-1] == FaultEvent(2.0, "sensor_bias", "a", "clear", "schedule", events[-1].detail)
    assert len(fs.clear(target="a")) == 1
    assert len(fs.clear()) == 2
    assert fs.faults == ()
    assert fs.measurements(3.0, {"a": 1.0, "b": 1.0}) == ({"a": 1.0, "b": 1.0}, set())


# ---------------------------------------------------------------------- determinism, purity
def _run_all(seed: int) -> list[Any]:
    fs, events = fault_set(
        spec("sensor_noise", start=0.0, magnitude=0.5),
        spec("sensor_drift", target="z", start=1.0, rate=0.1),
        spec("actuator_lag", target="u", start=0.5, magnitude=1.0),
        spec("parameter_drift", target="Kw", start=0.0, rate=-0.02),
        seed=seed,
    )
    seen: list[Any] = []
    for k in range(50):
        t = 0.1 * k
        seen.append(fs.measurements(t, {"y": 1.0, "z": 2.0}))
        seen.append(fs.actuators(t, {"u": float(k % 7)}, 0.1))
        seen.append(fs.parameters(t, {"Kw": 4000.0}))
        seen.append(fs.comms(t))
    return [*seen, events]


def test_deterministic_for_the_same_seed() -> None:
    assert _run_all(3) == _run_all(3)
    assert _run_all(3) != _run_all(4)


def test_inputs_are_never_mutated() -> None:
    fs, _ = fault_set(
        spec("sensor_bias", start=0.0, magnitude=1.0),
        spec("sensor_stuck", target="z", start=0.0),
        spec("actuator_saturation", target="u", start=0.0, magnitude=1.0),
        spec("actuator_lag", target="v", start=0.0, magnitude=1.0),
        spec("parameter_drift", target="Kw", start=0.0, rate=-0.1),
    )
    values, requested, nominal = {"y": 1.0, "z": 2.0}, {"u": 5.0, "v": 3.0}, {"Kw": 10.0}
    for t in (0.0, 1.0, 2.0):
        out, _ = fs.measurements(t, values)
        applied = fs.actuators(t, requested, 1.0)
        params = fs.parameters(t, nominal)
        assert out is not values and applied is not requested and params is not nominal
    assert values == {"y": 1.0, "z": 2.0}
    assert requested == {"u": 5.0, "v": 3.0}
    assert nominal == {"Kw": 10.0}


# ---------------------------------------------------------------------- the true plant
def test_plant_runner_with_fouled_jacket_evolves_differently() -> None:
    model = build_model(CSTR)
    nominal = PlantRunner(model, 0.005)
    fouled = PlantRunner(model, 0.005)
    kw = fouled.parameters["Kw"]
    assert kw == 4032.0
    fouled.set_parameters({"Kw": 0.7 * kw})
    assert fouled.parameters["Kw"] == pytest.approx(0.7 * 4032.0)
    assert fouled.parameters["A_R"] == nominal.parameters["A_R"]
    inputs = model.nominal_inputs
    for _ in range(10):
        nominal.advance(inputs)
        fouled.advance(inputs)
    a, b = nominal.true_state().states, fouled.true_state().states
    # less jacket coupling: the cooled jacket pulls the reactor down less, and cools further
    assert b["T_R"] > a["T_R"] + 0.1
    assert b["T_K"] < a["T_K"] - 0.1


def test_plant_runner_rejects_unknown_or_non_finite_parameters() -> None:
    runner = PlantRunner(build_model(CSTR), 0.005)
    before = runner.parameters
    with pytest.raises(ScenarioError, match="Kv_nope"):
        runner.set_parameters({"Kw": 3000.0, "Kv_nope": 1.0})
    with pytest.raises(ScenarioError, match="Kw"):
        runner.set_parameters({"Kw": math.nan})
    assert runner.parameters == before


# ---------------------------------------------------------------------- validation
def _targets(**kw: Any) -> FaultTargets:
    base: dict[str, Any] = {
        "time_unit": "h",
        "outputs": {"y": "degC"},
        "inputs": {"u": "degC"},
        "input_limits": {"u": (-45.0, 120.0)},
        "parameter_units": {"Kw": "W/K", "off": "1"},
        "tags": ("y_tag", "u_sp"),
        "parameters": {"Kw": 4000.0, "off": 0.0},
        "plant_step": 0.02,
    }
    return FaultTargets(**(base | kw))


@pytest.mark.parametrize(
    ("fault", "sentence"),
    [
        (spec("parameter_drift", target="off", rate=0.1), "off is 0 in the true plant"),
        (spec("actuator_saturation", target="u", magnitude=120.0), "can never cap u"),
        (spec("actuator_lag", target="u", magnitude=0.004), "leaves less than 1 %"),
        (spec("sensor_bias", magnitude=1.0, duration=0.019), "shorter than one plant step"),
        (spec("sensor_drift", rate=1.0, unit="degC"), "is in 'degC/h', not 'degC'"),
        (spec("parameter_drift", target="Kw", rate=0.1, unit="%/h"), "is in '1/h', not '%/h'"),
        (spec("comm_bad_status", target="y_tagg"), "did you mean 'y_tag'?"),
        (spec("sensor_bias", target="u", magnitude=1.0), "unknown measured output 'u'"),
    ],
)
def test_faults_that_could_not_act_are_refused(fault: FaultSpec, sentence: str) -> None:
    problems = fault_problems(fault, _targets())
    assert len(problems) == 1 and sentence in problems[0], problems


def test_valid_faults_pass_and_unknown_values_leave_their_check_to_the_rig() -> None:
    assert fault_problems(spec("sensor_drift", rate=1.0, unit="degC/h"), _targets()) == []
    assert (
        fault_problems(spec("actuator_saturation", target="u", magnitude=119.0), _targets()) == []
    )
    site_only = _targets(parameters=None, plant_step=None)  # what the CLI knows
    assert fault_problems(spec("parameter_drift", target="off", rate=0.1), site_only) == []
    assert fault_problems(spec("actuator_lag", target="u", magnitude=0.004), site_only) == []


def test_a_fault_scheduled_after_the_run_would_never_act() -> None:
    late = spec("sensor_bias", start=3.0, magnitude=1.0)
    (problem,) = scheduled_fault_problems([late], _targets(), "s.yaml", run_end=2.5)
    assert problem.location == "faults.0"
    assert "starts at 3 h, when the run (2.5 h) is over" in problem.message
    assert scheduled_fault_problems([late], _targets(), "s.yaml", run_end=3.5) == []


def test_unsupported_kinds_are_refused_with_the_servers_reason() -> None:
    targets = _targets(unsupported={"comm_latency": "no wall clock here"})
    latency = spec("comm_latency", target="*", magnitude=0.1)
    with pytest.raises(FaultRefusedError) as info:
        check_fault(latency, targets)
    assert info.value.problems == (
        "a comm_latency fault cannot take effect here: no wall clock here",
    )


@pytest.mark.parametrize(
    ("fields", "sentence"),
    [
        (
            {"kind": "sensor_dropout", "magnitude": 1.0},
            "a sensor_dropout fault takes no 'magnitude'",
        ),
        (
            {"kind": "sensor_stuck", "unit": "degC"},
            "without a 'magnitude' has nothing to give a 'unit'",
        ),
        ({"kind": "sensor_bias", "magnitude": 1.0, "rate": 1.0}, "takes no 'rate'"),
        ({"kind": "sensor_dropout", "unit": "degC"}, "has no magnitude or rate to give a 'unit'"),
        ({"kind": "comm_drop", "target": "*", "duration": 1.0}, "it takes no 'duration'"),
        ({"kind": "comm_restart", "target": "Tbot", "duration": 1.0}, "its target must be '*'"),
    ],
)
def test_fields_a_kind_would_ignore_are_refused(fields: dict[str, Any], sentence: str) -> None:
    with pytest.raises(FaultRefusedError, match=re.escape(sentence)):
        parse_fault({"target": "y", "start": 0.0} | fields)
