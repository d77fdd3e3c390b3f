"""The twin never says "fine" when it does not know: failed estimates, time going back,
a non-finite chart input and charts that have not run yet.

Each test is one defect a reviewer found: soft sensors written from an estimate the
estimator marked as failed (``ok=False``, "must not be acted on"), a drift alarm raised on
such an estimate, a maintenance countdown running upward when model time went back, an EWMA
statistic stuck at inf/NaN after one non-finite ``z``, and "no drift" (0) published before any
chart had evaluated a sample. The CSTR's shipped controller config and tag map are used.
"""

from __future__ import annotations

import dataclasses
import math
import re
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from controller.configfile import parse
from controller.controllerfile import load_controller
from controller.core.estimate import Estimate
from controller.monitoringspec import MonitoringSpec
from controller.tags import load_tag_map
from controller.twin.monitoring import DriftMonitor, MonitoringError
from controller.twin.publish import Publisher, Source, source_of
from controller.twin.services import TwinCycle, TwinServices

ROOT = Path(__file__).resolve().parents[3]
CONFIGS = ROOT / "configs"
pytestmark = pytest.mark.timeout(120)

DT = 0.005  # h, the CSTR's 18 s sample time
ALARM_TAGS = ("drift_alarm_count", "drift_alarm_word")


@pytest.fixture(scope="module")
def cstr() -> tuple[Any, Any, Any]:
    cfg, model = load_controller(CONFIGS / "controllers" / "cstr.yaml")
    return cfg, model, load_tag_map(CONFIGS / "tags" / "cstr.yaml")


def estimate(
    model: Any,
    kw: float = 4032.0,
    *,
    ok: bool = True,
    reason: str = "",
    states: dict[str, float] | None = None,
    resid: float = 0.01,
) -> Estimate:
    """An estimate with every output's innovation (``resid`` over a std of 0.1)."""
    outputs = model.output_names
    return Estimate(
        states=states if states is not None else dict(model.initial_state),
        parameters={**model.parameters, "Kw": kw},
        state_std={n: 0.01 for n in model.state_names},
        parameter_std={"Kw": 28.0, "C_A0": 0.01},
        innovation={o: resid for o in outputs},
        algebraic={},
        innovation_std={o: 0.1 for o in outputs},
        ok=ok,
        reason=reason,
    )


def services(cstr: tuple[Any, Any, Any]) -> TwinServices:
    cfg, model, tags = cstr
    return TwinServices(model, tags, cfg.monitoring, cfg.estimator.estimated, source="cstr")


def run_good(twin: TwinServices, model: Any, n: int, t0: float = 0.0) -> Any:
    out = None
    for k in range(n):
        out = twin.update(t0 + DT * k, estimate(model), model.nominal_inputs, data_good=True)
    return out


def estimate_targets(twin: TwinServices, model: Any, estimated: Any) -> list[str]:
    """Every publishing tag computed from the estimate (not from the twin's own figures)."""
    publisher = twin.publisher
    assert publisher is not None
    return [
        tag
        for tag, name in publisher.names().items()
        if source_of(name, model, estimated) is not Source.EXTRA
    ]


# ---------------------------------------------------------------- 1: failed estimate
@pytest.mark.parametrize("data_good", [False, True])
def test_nothing_from_a_failed_estimate_is_published(
    cstr: tuple[Any, Any, Any], data_good: bool
) -> None:
    """The supervisor hands the twin the failed estimate (data_good False, as it does when
    the estimator fails): no state, parameter, std or expression may go to the PLC."""
    cfg, model, _ = cstr
    twin = services(cstr)
    good = run_good(twin, model, 100)  # past warm-up and baseline: the alarm tags go out
    targets = estimate_targets(twin, model, cfg.estimator.estimated)
    assert len(targets) == 5 and set(targets) <= set(good.publication.values)
    wild = {n: v * 1.5 for n, v in model.initial_state.items()}
    failed = estimate(model, 2500.0, ok=False, reason="EKF diverged", states=wild)
    out = twin.update(100 * DT, failed, model.nominal_inputs, data_good=data_good)
    for tag in targets:
        assert tag not in out.publication.values, tag
        assert out.publication.omitted[tag] == "EKF diverged"
    # the twin's own figures do not come from this estimate: they still go out
    assert {t: out.publication.values[t] for t in ALARM_TAGS} == dict.fromkeys(ALARM_TAGS, 0.0)
    assert out.publication.values["maintenance_kw_hours"] > 0


def test_the_publisher_omits_estimate_values_but_keeps_extras(
    cstr: tuple[Any, Any, Any],
) -> None:
    _, model, tags = cstr
    publisher = Publisher(tags, model, ("Kw", "C_A0"))
    extra = {"alarm.active": 1.0, "alarm.word": 1.0, "maintenance.Kw.time_to_threshold": 2.0}
    failed = estimate(model, ok=False, reason="estimate outside the model's domain")
    pub = publisher.publication(failed, model.nominal_inputs, extra)
    assert pub.values == {
        "drift_alarm_count": 1.0,
        "drift_alarm_word": 1.0,
        "maintenance_kw_hours": 2.0,
    }
    for tag, name in publisher.names().items():
        if not name.startswith(("alarm.", "maintenance.")):
            assert pub.omitted[tag] == "estimate outside the model's domain", tag
    nameless = publisher.publication(estimate(model, ok=False), model.nominal_inputs, extra)
    assert nameless.omitted["jacket_coefficient"]  # a reason even when the estimator gave none
    assert "jacket_coefficient" not in nameless.values


# ---------------------------------------------------------------- 2: monitor on ok=False
def test_a_failed_estimate_raises_no_alarm_and_feeds_no_forecast(
    cstr: tuple[Any, Any, Any],
) -> None:
    _, model, _ = cstr
    twin = services(cstr)
    before = run_good(twin, model, 200)
    assert before.monitor["alarm.active"] == 0.0
    for k in range(200, 260):  # the estimator fails with a garbage Kw, data otherwise good
        failed = estimate(model, 3000.0, ok=False, reason="prediction failed")
        out = twin.update(DT * k, failed, model.nominal_inputs, data_good=True)
        assert not out.raised, out.raised[0].message
    assert out.monitor["alarm.active"] == 0.0
    assert out.monitor["chart.cusum:Kw:low"] == before.monitor["chart.cusum:Kw:low"]
    assert out.maintenance[0].status != "crossed"
    assert out.monitor["maintenance.Kw.estimate"] == pytest.approx(4032.0)


def test_the_drift_monitor_skips_a_failed_estimate(cstr: tuple[Any, Any, Any]) -> None:
    cfg, model, _ = cstr
    mon = DriftMonitor(cfg.monitoring, model, cfg.estimator.estimated)
    for k in range(200):
        mon.update(DT * k, estimate(model))
    kept = mon.update(200 * DT, estimate(model)).statistics
    for k in range(201, 260):
        r = mon.update(DT * k, estimate(model, 3000.0, ok=False, reason="prediction failed"))
        assert not r.raised and not r.cleared and not r.active
        assert r.statistics == kept
        assert r.maintenance[0].status != "crossed" and r.maintenance[0].estimate == 4032.0
    with pytest.raises(MonitoringError, match=re.escape("t=1.0")):  # time is still checked
        mon.update(1.0, estimate(model, ok=False))


# ---------------------------------------------------------------- 3: time going back
def test_model_time_going_back_is_an_error_not_a_silent_skip(
    cstr: tuple[Any, Any, Any],
) -> None:
    _, model, _ = cstr
    twin = services(cstr)
    rng = np.random.default_rng(1)
    for k in range(400):  # Kw falling by 400 per h from t=0.5 h on
        t = DT * k
        kw = 4032.0 - max(t - 0.5, 0.0) * 400.0 + rng.normal(0.0, 5.0)
        out = twin.update(t, estimate(model, kw), model.nominal_inputs, data_good=True)
    t_last = DT * 399
    ttt = out.monitor["maintenance.Kw.time_to_threshold"]
    assert math.isfinite(ttt) and ttt > 0
    same = twin.update(t_last, estimate(model, 2000.0), model.nominal_inputs, data_good=True)
    assert same.monitor["maintenance.Kw.time_to_threshold"] == ttt  # t == last: skipped
    for earlier in (1.0, 0.0):
        with pytest.raises(MonitoringError, match=re.escape(f"t={earlier!r}")):
            twin.update(earlier, estimate(model, 2000.0), model.nominal_inputs, data_good=True)
    # while the monitor is not fed the countdown never runs upward
    back = twin.update(1.0, estimate(model), model.nominal_inputs, data_good=False)
    assert back.monitor["maintenance.Kw.time_to_threshold"] <= ttt
    with pytest.raises(MonitoringError, match="nan"):
        twin.update(math.nan, estimate(model), model.nominal_inputs, data_good=True)


# ---------------------------------------------------------------- 4: non-finite z
def test_a_non_finite_z_is_skipped_and_the_chart_keeps_working(
    cstr: tuple[Any, Any, Any],
) -> None:
    _, model, _ = cstr
    spec = parse(MonitoringSpec, {"charts": [{"signal": "T_R_meas", "chart": "ewma"}]}, "x.yaml")
    mon = DriftMonitor(spec, model, ("Kw", "C_A0"))

    def residual(value: float, std: float = 0.1) -> Estimate:
        return dataclasses.replace(
            estimate(model), innovation={"T_R_meas": value}, innovation_std={"T_R_meas": std}
        )

    mon.update(0.0, residual(0.01))
    for k, huge in enumerate((1e300, -1e300), start=1):
        r = mon.update(DT * k, residual(huge, 1e-10))  # both finite, their ratio is not
        assert not r.raised
        assert all(math.isfinite(v) for v in r.statistics.values()), r.statistics
    results = [mon.update(DT * k, residual(0.5)) for k in range(3, 200)]  # a 5-sigma shift
    assert any(r.raised for r in results)  # the chart still raises alarms
    results = [mon.update(DT * k, residual(0.0)) for k in range(200, 400)]
    assert any(r.cleared for r in results) and not results[-1].active  # and clears them


# ---------------------------------------------------------------- 5: charts not running
def test_no_drift_is_not_published_before_every_chart_has_run(
    cstr: tuple[Any, Any, Any],
) -> None:
    cfg, model, _ = cstr
    n = len(cfg.monitoring.charts)
    twin = services(cstr)
    out = TwinCycle()
    for k in range(60):  # within warm-up (0.15 h) + baseline (0.25 h) of every chart
        e = estimate(model, 1500.0, resid=5.0)  # Kw at 37 %, residuals at 50 sigma
        out = twin.update(DT * k, e, model.nominal_inputs, data_good=True)
    for tag in ALARM_TAGS:
        assert tag not in out.publication.values
        assert out.publication.omitted[tag] == (
            f"drift monitor not running yet: 0 of {n} charts evaluated"
        )
    # a residual chart whose output never has an innovation never runs: its 0 is not "fine"
    twin = services(cstr)
    silent = dataclasses.replace(estimate(model), innovation={}, innovation_std={})
    for k in range(200):
        out = twin.update(DT * k, silent, model.nominal_inputs, data_good=True)
    assert out.publication.omitted["drift_alarm_word"] == (
        f"drift monitor not running yet: 2 of {n} charts evaluated"
    )
    # once every chart has evaluated a sample, "no alarm" is published
    out = run_good(twin, model, 5, t0=DT * 200)
    assert out.publication.values["drift_alarm_count"] == 0.0
    assert out.publication.values["drift_alarm_word"] == 0.0
