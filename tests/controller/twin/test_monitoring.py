"""Tests of drift detection and predictive maintenance (controller.twin.monitoring, charts,
maintenance).

Synthetic series on the CSTR model (sample time 0.005 h): residuals are i.i.d. N(0, 1)
times an innovation std; parameter estimates are a reference plus AR(1) noise with
rho = 0.95 (what the CSTR's EKF gives for Kw at constant fouling), charted with ``sigma`` =
the noise's long-run std as the module docstring recommends. Detection bounds come from the
noise-free recursions of the charts (stated in each test) widened by three standard
deviations of the statistic's noise at the crossing.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.signal import lfilter

from controller.configfile import parse
from controller.controllerfile import load_controller
from controller.core.ekf import ExtendedKalmanFilter
from controller.core.estimate import Estimate
from controller.errors import ConfigError, Problem
from controller.monitoringspec import ChartSpec, MonitoringSpec
from controller.plantfile import build_model
from controller.runtime.solver_cache import LibraryCache
from controller.twin.charts import CUSUM_CAP
from controller.twin.maintenance import TrendForecaster
from controller.twin.monitoring import Alarm, DriftMonitor, MonitoringError, MonitorResult
from plant_models import PlantModel, Role

ROOT = Path(__file__).resolve().parents[3]
PLANTS = ROOT / "configs" / "plants"
CONTROLLERS = ROOT / "configs" / "controllers"

DT = 0.005  # h, the CSTR controller's sample time
ESTIMATED = ("Kw", "C_A0")
OUTPUT = "T_R_meas"
INNOVATION_STD = 0.1  # degC
KW_REF = 4032.0
RHO = 0.95
KW_NOISE = 14.0  # marginal std of the EKF's Kw estimate (kJ/h/m^2/K)
KW_SIGMA = KW_NOISE * math.sqrt((1 + RHO) / (1 - RHO))  # long-run std, about 87
LAM, L, K, H = 0.05, 4.8, 0.5, 13.0  # the recommended defaults
EWMA_STD = math.sqrt(LAM / (2 - LAM))
EWMA_LIMIT = L * EWMA_STD


@pytest.fixture(scope="module")
def model() -> PlantModel:
    return build_model(PLANTS / "cstr.yaml")


# ---------------------------------------------------------------------------------------------
# Helpers
# ---------------------------------------------------------------------------------------------
def estimate(
    model: PlantModel,
    *,
    kw: float | None = None,
    residual: float | None = None,
    std: float = INNOVATION_STD,
) -> Estimate:
    """An estimate with Kw (default: nominal) and, if given, a T_R_meas residual."""
    params = {**model.parameters, **({} if kw is None else {"Kw": kw})}
    innovation = {} if residual is None else {OUTPUT: residual}
    innovation_std = {} if residual is None else {OUTPUT: std}
    return Estimate(
        states=dict(model.initial_state),
        parameters=params,
        state_std={},
        parameter_std={"Kw": 28.0, "C_A0": 0.01},
        innovation=innovation,
        algebraic={},
        innovation_std=innovation_std,
    )


def make_monitor(
    model: PlantModel,
    charts: Iterable[Mapping[str, Any]] = (),
    maintenance: Iterable[Mapping[str, Any]] = (),
    **extra: Any,
) -> DriftMonitor:
    spec = parse(
        MonitoringSpec,
        {"charts": list(charts), "maintenance": list(maintenance), **extra},
        "test.yaml",
    )
    return DriftMonitor(spec, model, ESTIMATED, source="test.yaml")


def residual_chart(chart: str, **extra: Any) -> dict[str, Any]:
    return {"signal": OUTPUT, "chart": chart, **extra}


def kw_chart(chart: str, **extra: Any) -> dict[str, Any]:
    return {"signal": "Kw", "chart": chart, "sigma": KW_SIGMA, **extra}


def ar1(rng: np.random.Generator, n: int, rho: float, std: float) -> np.ndarray:
    """A stationary AR(1) series with marginal standard deviation ``std``."""
    shocks = rng.normal(0.0, std * math.sqrt(1 - rho**2), n)
    return lfilter([1.0], [1.0, -rho], shocks, zi=[rho * rng.normal(0.0, std)])[0]


def feed_residuals(mon: DriftMonitor, model: PlantModel, z: Sequence[float]) -> list[MonitorResult]:
    """Normalized residuals ``z`` as T_R_meas innovations, one per sample from t = 0."""
    return [
        mon.update(i * DT, estimate(model, residual=INNOVATION_STD * float(zi)))
        for i, zi in enumerate(z)
    ]


def feed_kw(mon: DriftMonitor, model: PlantModel, kw: Sequence[float]) -> list[MonitorResult]:
    return [mon.update(i * DT, estimate(model, kw=float(v))) for i, v in enumerate(kw)]


def first_raise(results: Sequence[MonitorResult]) -> tuple[int, Alarm]:
    for i, r in enumerate(results):
        if r.raised:
            return i, r.raised[0]
    raise AssertionError("no alarm was raised")


def noise_free_delay(chart: str, mean: Callable[[int], float], side: str = "high") -> int:
    """Samples after the onset (sample 0 is the first shifted one) until the noise-free chart
    crosses its limit: E = lam m + (1 - lam) E > L sqrt(lam/(2-lam)), or
    S = max(0, S + m - k) > h (m negated for a LOW side)."""
    sign = 1.0 if side == "high" else -1.0
    stat = 0.0
    for n in range(100_000):
        m = sign * mean(n)
        stat = LAM * m + (1 - LAM) * stat if chart == "ewma" else max(0.0, stat + m - K)
        if stat > (EWMA_LIMIT if chart == "ewma" else H):
            return n
    raise AssertionError("never crosses")


# ---------------------------------------------------------------------------------------------
# Configuration
# ---------------------------------------------------------------------------------------------
def test_chart_spec_reads_lambda_and_has_the_recommended_defaults() -> None:
    spec = ChartSpec.model_validate({"signal": "Kw", "chart": "ewma", "lambda": 0.2})
    assert spec.lam == 0.2
    assert ChartSpec(signal="Kw", chart="ewma", lam=0.3).lam == 0.3
    default = ChartSpec(signal="Kw", chart="cusum")
    assert (default.lam, default.limit, default.k, default.h) == (LAM, L, K, H)
    assert MonitoringSpec().clear_fraction == 0.5
    # a dumped spec (every default written out) loads again, by alias or by name
    full = MonitoringSpec.model_validate({"charts": [kw_chart("ewma"), kw_chart("cusum")]})
    assert MonitoringSpec.model_validate(full.model_dump(by_alias=True)) == full
    assert MonitoringSpec.model_validate(full.model_dump()) == full


BAD_SPECS: list[tuple[dict[str, Any], str, str]] = [
    ({"charts": [{"signal": "Kw", "chart": "ewma", "lambda": 0}]}, "charts.0.lambda", "greater"),
    ({"charts": [{"signal": "Kw", "chart": "ewma", "lambda": 1.5}]}, "charts.0.lambda", "less"),
    ({"charts": [{"signal": "Kw", "chart": "ewma", "limit": -1}]}, "charts.0.limit", "greater"),
    ({"charts": [{"signal": "Kw", "chart": "cusum", "h": 0}]}, "charts.0.h", "greater"),
    ({"charts": [{"signal": "Kw", "chart": "cusum", "k": math.nan}]}, "charts.0.k", "finite"),
    ({"charts": [{"signal": "Kw", "chart": "shewhart"}]}, "charts.0.chart", "'ewma' or 'cusum'"),
    ({"charts": [{"signal": "Kw", "chart": "cusum", "sides": "up"}]}, "charts.0.sides", "'both'"),
    ({"charts": [{"signal": "Kw", "chart": "ewma", "h": 5}]}, "charts.0", "cusum charts only"),
    (
        {"charts": [{"signal": "Kw", "chart": "cusum", "lambda": 0.2}]},
        "charts.0",
        "ewma charts only",
    ),
    (
        {"charts": [{"signal": "Kw", "chart": "cusum", "sigma": 1, "sigma_relative": 0.1}]},
        "charts.0",
        "not both",
    ),
    ({"charts": [{"signal": "Kw", "chart": "cusum", "warmup": -1}]}, "charts.0.warmup", "greater"),
    ({"charts": [{"signal": "Kw", "chart": "cusum", "colour": 1}]}, "charts.0.colour", "unknown"),
    ({"clear_fraction": 1.0}, "clear_fraction", "less"),
    ({"alarm_tag": ""}, "alarm_tag", "at least 1"),
    (
        {"maintenance": [{"parameter": "Kw", "threshold": 3000, "direction": "down", "window": 1}]},
        "maintenance.0.direction",
        "'falling' or 'rising'",
    ),
    (
        {
            "maintenance": [
                {"parameter": "Kw", "threshold": 3e3, "direction": "falling", "window": 0}
            ]
        },
        "maintenance.0.window",
        "greater",
    ),
    (
        {
            "maintenance": [
                {
                    "parameter": "Kw",
                    "threshold": 3e3,
                    "direction": "falling",
                    "window": 1,
                    "confidence": 1.0,
                }
            ]
        },
        "maintenance.0.confidence",
        "less",
    ),
]


@pytest.mark.parametrize(("data", "location", "words"), BAD_SPECS)
def test_bad_monitoring_values_name_the_key_and_the_value(
    data: dict[str, Any], location: str, words: str
) -> None:
    with pytest.raises(ConfigError) as exc:
        parse(MonitoringSpec, data, "ctl.yaml")
    problems = {p.location: p for p in exc.value.problems}
    assert location in problems, problems
    assert problems[location].file == "ctl.yaml"
    assert words in problems[location].message
    assert words in str(exc.value)


def test_a_controller_file_carries_a_monitoring_section(tmp_path: Path) -> None:
    data = yaml.safe_load((CONTROLLERS / "cstr.yaml").read_text(encoding="utf-8"))
    data["plant"] = str(PLANTS / "cstr.yaml")
    data["monitoring"] = {
        "charts": [{"signal": "Kw", "chart": "cusum", "sigma_relative": 0.025, "h": 8.0}],
        "maintenance": [
            {"parameter": "Kw", "threshold": 3000, "direction": "falling", "window": 4}
        ],
        "alarm_tag": "drift_alarm",
    }
    path = tmp_path / "cstr.yaml"
    path.write_text(yaml.safe_dump(data), encoding="utf-8")
    cfg, model = load_controller(path)
    assert cfg.monitoring is not None
    assert cfg.monitoring.charts[0].h == 8.0
    mon = DriftMonitor(cfg.monitoring, model, cfg.estimator.parameters, source=str(path))
    assert mon.update(0.0, estimate(model)).statistics == {
        "cusum:Kw:high": 0.0,
        "cusum:Kw:low": 0.0,
    }
    # and a file without one still loads
    assert load_controller(CONTROLLERS / "bioreactor.yaml")[0].monitoring is None


def _by_location(problems: Iterable[Problem]) -> dict[str, Problem]:
    out = {p.location: p for p in problems}
    return out


def test_unknown_and_misused_names_are_all_reported_at_once(model: PlantModel) -> None:
    charts = [
        {"signal": "T_X_meas", "chart": "ewma"},  # 0: no such output or parameter
        {"signal": "k0_ab", "chart": "cusum", "sigma": 1.0},  # 1: a parameter, not estimated
        {"signal": OUTPUT, "chart": "cusum", "sigma": 1.0},  # 2: residual with a sigma
        {"signal": "Kw", "chart": "ewma"},  # 3: parameter chart without sigma
        kw_chart("cusum"),  # 4: fine
        kw_chart("cusum", description="again"),  # 5: duplicate of 4
        {"signal": "C_A0", "chart": "ewma", "reference": 0.0, "sigma_relative": 0.1},  # 6
    ]
    maintenance = [
        {"parameter": "k0_ab", "threshold": 1.0, "direction": "falling", "window": 1},
        {"parameter": "Kw", "threshold": 4100, "direction": "falling", "window": 1},
        {"parameter": "Kw", "threshold": 2000, "direction": "falling", "window": 1},
        {"parameter": "C_A0", "threshold": 5.0, "direction": "rising", "window": 1},
    ]
    with pytest.raises(ConfigError) as exc:
        make_monitor(model, charts, maintenance)
    problems = _by_location(exc.value.problems)
    assert all(p.file == "test.yaml" for p in problems.values())
    expected = {
        "monitoring.charts.0.signal": ("T_X_meas", ["unknown signal", OUTPUT, "Kw", "C_A0"]),
        "monitoring.charts.1.signal": ("k0_ab", ["not estimated", "Kw"]),
        "monitoring.charts.2.sigma": (1.0, ["parameter charts only"]),
        "monitoring.charts.3.sigma": (None, ["sigma", "sigma_relative"]),
        "monitoring.charts.5": ("Kw", ["duplicate of monitoring.charts.4"]),
        "monitoring.charts.6.sigma_relative": (0.1, ["reference is 0"]),
        "monitoring.maintenance.0.parameter": ("k0_ab", ["not an estimated parameter", "Kw"]),
        "monitoring.maintenance.1.threshold": (4100, ["below its nominal value 4032"]),
        "monitoring.maintenance.2.threshold": (2000, ["never be reached", "[2500, 4500]"]),
        "monitoring.maintenance.3.threshold": (5.0, ["above its nominal value 5.1"]),
    }
    assert set(problems) == set(expected)
    for location, (value, words) in expected.items():
        assert problems[location].value == value, location
        for word in words:
            assert word in problems[location].message, (location, word)
    text = str(exc.value)
    assert text.startswith("10 configuration problems")
    assert "test.yaml: monitoring.charts.0.signal: unknown signal" in text


# ---------------------------------------------------------------------------------------------
# Detection of steps and ramps
# ---------------------------------------------------------------------------------------------
ONSET = 300  # sample of the first shifted value
SEEDS = range(30)


def _three_sigma_samples(noise_std: float, slope: float) -> int:
    """Three standard deviations of the crossing time: the statistic's noise over its rate of
    rise at the crossing, plus one sample of rounding."""
    return math.ceil(3 * noise_std / slope) + 1


@pytest.mark.parametrize(("shape", "shift"), [("step", 2.0), ("ramp", 0.02)])
def test_residual_ewma_detects_a_step_and_a_ramp_in_time(
    model: PlantModel, shape: str, shift: float
) -> None:
    """Theory: noise-free, a step of 2 sigma takes n* = 10 samples (E = 2 (1 - 0.95^n) passes
    0.769), a ramp of 0.02 sigma/sample n* = 57 (E lags the ramp by (1 - lam)/lam = 19
    samples). E's noise has std sqrt(lam/(2-lam)) = 0.16 and E rises at lam (m - E) per
    sample at the crossing (0.062 for the step, about 0.02 for the ramp): every seed must
    detect within n* +- 3 std of the crossing time (+-9 and +-25 samples)."""

    def mean(n: int) -> float:
        return shift if shape == "step" else shift * (n + 1)

    n_star = noise_free_delay("ewma", mean)
    assert n_star == (9 if shape == "step" else 56)  # 0-based: the 10th / 57th sample
    rate = LAM * (mean(n_star) - EWMA_LIMIT)
    tolerance = _three_sigma_samples(EWMA_STD, rate)
    for seed in SEEDS:
        rng = np.random.default_rng(seed)
        z = rng.normal(size=ONSET + 200)
        z[ONSET:] += [mean(n) for n in range(200)]
        mon = make_monitor(model, [residual_chart("ewma")])
        i, alarm = first_raise(feed_residuals(mon, model, z))
        assert abs((i - ONSET) - n_star) <= tolerance, (seed, i - ONSET, n_star)
        assert alarm.key == f"ewma:{OUTPUT}:high" and alarm.side == "high"


@pytest.mark.parametrize(("shape", "shift"), [("step", -2.0), ("ramp", -0.01)])
def test_parameter_cusum_detects_a_step_and_a_ramp_in_time(
    model: PlantModel, shape: str, shift: float
) -> None:
    """Kw = reference + AR(1) noise (rho 0.95) + a fall, charted in long-run sigmas (the noise
    of z then has marginal std 0.16 and long-run std 1). Theory, noise-free: a step of -2
    sigma takes n* = ceil(13 / 1.5) = 9 samples; a ramp of -0.01 sigma/sample starts to count
    after k / 0.01 = 50 samples and then needs sqrt(2 h / 0.01) = 51 more (n* = 100). The sum
    of z's noise over the m samples that counted has std about sqrt(m) (long-run std 1), at
    most 0.16 m; S rises at |m| - k per sample at the crossing: every seed within n* +- 3
    std of the crossing time."""

    def mean(n: int) -> float:
        return shift if shape == "step" else shift * (n + 1)

    n_star = noise_free_delay("cusum", mean, side="low")
    assert n_star == (8 if shape == "step" else 100)
    counted = n_star + 1 if shape == "step" else n_star + 1 - int(K / abs(shift))
    noise = min(math.sqrt(counted), 0.16 * counted)
    tolerance = _three_sigma_samples(noise, abs(mean(n_star)) - K)
    for seed in SEEDS:
        rng = np.random.default_rng(seed)
        kw = KW_REF + ar1(rng, ONSET + 200, RHO, KW_NOISE)
        kw[ONSET:] += KW_SIGMA * np.array([mean(n) for n in range(200)])
        mon = make_monitor(model, [kw_chart("cusum")])
        i, alarm = first_raise(feed_kw(mon, model, kw))
        assert abs((i - ONSET) - n_star) <= tolerance, (seed, i - ONSET, n_star, tolerance)
        assert alarm.key == "cusum:Kw:low" and alarm.side == "low"
        assert alarm.value == pytest.approx(kw[i])
        assert alarm.deviation == pytest.approx(kw[i] - KW_REF)


def test_in_control_series_raise_no_alarm_with_the_recommended_defaults(
    model: PlantModel,
) -> None:
    """20 seeds x 3000 samples (60 000 per chart) of i.i.d. N(0, 1) residuals and of AR(1)
    Kw estimates in long-run sigmas. The Markov-chain ARL0 of the defaults is 1.3e6 (EWMA)
    and 1.4e6 (CUSUM), so the two residual charts stay quiet with probability about 0.91
    (exp(-60000/1.26e6 - 60000/1.41e6)) and the parameter charts practically always (2e8
    simulated AR(1) samples raised none)."""
    charts = [residual_chart("ewma"), residual_chart("cusum"), kw_chart("ewma"), kw_chart("cusum")]
    for seed in range(20):
        rng = np.random.default_rng(1000 + seed)
        z = rng.normal(size=3000)
        kw = KW_REF + ar1(rng, 3000, RHO, KW_NOISE)
        mon = make_monitor(model, charts)
        peak: dict[str, float] = {}
        for i in range(3000):
            est = estimate(model, kw=float(kw[i]), residual=INNOVATION_STD * float(z[i]))
            result = mon.update(i * DT, est)
            assert not result.raised, (seed, i, result.raised[0].message)
            for key, value in result.statistics.items():
                peak[key] = max(peak.get(key, 0.0), abs(value))
        assert set(peak) == {
            f"ewma:{OUTPUT}",
            f"cusum:{OUTPUT}:high",
            f"cusum:{OUTPUT}:low",
            "ewma:Kw",
            "cusum:Kw:high",
            "cusum:Kw:low",
        }
        assert 0 < peak[f"cusum:{OUTPUT}:high"] < H and 0 < peak[f"ewma:{OUTPUT}"] < EWMA_LIMIT


# ---------------------------------------------------------------------------------------------
# Latching, hysteresis, onset and messages
# ---------------------------------------------------------------------------------------------
def test_cusum_alarm_latches_then_clears_with_hysteresis_and_its_cap(model: PlantModel) -> None:
    """z = 2 for 30 samples, then 0. S_high = 1.5 n passes h = 13 at n = 9 (sample 8) and
    stops at the cap 2 h = 26; from there it falls by k = 0.5 a sample and clears below
    0.5 h = 6.5 after 40 samples."""
    z = [2.0] * 30 + [0.0] * 60
    results = feed_residuals(make_monitor(model, [residual_chart("cusum")]), model, z)
    raised = [(i, a) for i, r in enumerate(results) for a in r.raised]
    cleared = [(i, a) for i, r in enumerate(results) for a in r.cleared]
    assert [(i, a.key) for i, a in raised] == [(8, f"cusum:{OUTPUT}:high")]
    assert [(i, a.key) for i, a in cleared] == [(69, f"cusum:{OUTPUT}:high")]
    assert max(r.statistics[f"cusum:{OUTPUT}:high"] for r in results) == CUSUM_CAP * H
    for i, r in enumerate(results):
        assert [a.key for a in r.active] == ([f"cusum:{OUTPUT}:high"] if 8 <= i < 69 else [])
    alarm, done = raised[0][1], cleared[0][1]
    assert (alarm.raised_at, alarm.statistic, alarm.limit) == (8 * DT, 13.5, H)
    assert alarm.cleared_at is None and alarm.since == 0.0
    assert (done.raised_at, done.since, done.cleared_at) == (8 * DT, 0.0, 69 * DT)
    assert done.statistic == pytest.approx(6.0)
    assert done.message.startswith("drift alarm cleared: T_R_meas")
    assert "< clear level 6.5" in done.message
    # while active the alarm is refreshed with the current statistic
    assert results[20].active[0].statistic == CUSUM_CAP * H
    assert results[20].active[0].raised_at == 8 * DT


def test_an_alarm_between_the_clear_level_and_the_limit_stays_latched(model: PlantModel) -> None:
    # S: 15 (raise), falls to 12 (below h, above 6.5: still active), rises to 18 (no second
    # raise), falls below 6.5 (clear), then rises again: a new alarm.
    z = [2.0] * 10 + [0.0] * 6 + [2.0] * 4 + [0.0] * 30 + [2.0] * 20
    results = feed_residuals(make_monitor(model, [residual_chart("cusum")]), model, z)
    events = [
        (i, kind)
        for i, r in enumerate(results)
        for kind, alarms in (("raised", r.raised), ("cleared", r.cleared))
        if alarms
    ]
    stats = [r.statistics[f"cusum:{OUTPUT}:high"] for r in results]
    assert stats[9] == 15.0 and stats[15] == 12.0 and stats[19] == 18.0
    assert [kind for _, kind in events] == ["raised", "cleared", "raised"]
    assert events[0][0] == 8
    assert stats[events[1][0]] < 6.5 <= stats[events[1][0] - 1]


def test_ewma_low_alarm_latches_and_clears_as_computed(model: PlantModel) -> None:
    """z = -3: E = -3 (1 - 0.95^n) passes -0.769 at n = 6; with z = 0 afterwards E decays by
    0.95 per sample and clears once |E| < 0.385."""
    z = [-3.0] * 15 + [0.0] * 80
    results = feed_residuals(make_monitor(model, [residual_chart("ewma")]), model, z)
    e_peak = -3 * (1 - 0.95**15)
    clear_after = math.ceil(math.log(0.5 * EWMA_LIMIT / abs(e_peak)) / math.log(0.95))
    raised = [i for i, r in enumerate(results) if r.raised]
    cleared = [i for i, r in enumerate(results) if r.cleared]
    assert raised == [5] and cleared == [14 + clear_after]
    alarm = results[5].raised[0]
    assert alarm.key == f"ewma:{OUTPUT}:low" and alarm.side == "low"
    assert alarm.limit == pytest.approx(-EWMA_LIMIT) and alarm.statistic < alarm.limit
    assert alarm.value == pytest.approx(-0.3) and alarm.reference == 0.0
    assert math.isnan(alarm.deviation_percent)


@pytest.mark.parametrize("chart", ["ewma", "cusum"])
def test_since_is_near_the_true_onset(model: PlantModel, chart: str) -> None:
    """A 2-sigma step at sample 300: the onset estimate (CUSUM: last zero of S; EWMA: last
    time E was within its in-control std) must be within 3 samples of the truth in the
    median and within 15 samples in 90 % of 40 seeds (measured over 200: 90 % within
    -11..+3, the in-control statistic is sometimes already off zero before the step)."""
    errors = []
    for seed in range(40):
        rng = np.random.default_rng(500 + seed)
        z = rng.normal(size=ONSET + 100)
        z[ONSET:] += 2.0
        i, alarm = first_raise(
            feed_residuals(make_monitor(model, [residual_chart(chart)]), model, z)
        )
        assert alarm.since <= alarm.raised_at == i * DT
        errors.append(round(alarm.since / DT) - ONSET)
    errors_abs = np.abs(errors)
    assert np.median(errors_abs) <= 3, errors
    assert np.mean(errors_abs <= 15) >= 0.9, errors


def test_parameter_alarm_message_names_signal_direction_distance_and_onset(
    model: PlantModel,
) -> None:
    # Kw in control for 100 samples, then 15.9 % fouled: a -7.4 sigma step
    kw = [KW_REF] * 100 + [3390.0] * 10
    mon = make_monitor(model, [kw_chart("cusum", description="jacket heat-transfer coefficient")])
    i, alarm = first_raise(feed_kw(mon, model, kw))
    assert i == 101  # S = 2 (6.88 - 0.5) = 12.8 after one sample, 19.1 after two
    assert alarm.since == pytest.approx(99 * DT)  # the last sample at which S was 0
    assert alarm.deviation == pytest.approx(3390.0 - KW_REF)
    assert alarm.deviation_percent == pytest.approx(-15.92, abs=0.01)
    assert alarm.unit == "kJ/h/m^2/K"
    pattern = (
        r"drift alarm: Kw \(jacket heat-transfer coefficient\) LOW - CUSUM (?P<stat>[\d.]+) > "
        r"h (?P<h>[\d.]+); estimate 3390 vs reference 4032 kJ/h/m\^2/K \(-15\.9 %\); "
        r"drifting since t=(?P<since>[\d.]+) h"
    )
    match = re.fullmatch(pattern, alarm.message)
    assert match, alarm.message
    assert float(match["stat"]) == pytest.approx(alarm.statistic, rel=1e-2)
    assert float(match["h"]) == H
    assert float(match["since"]) == pytest.approx(alarm.since)


def test_residual_alarm_message_and_description_from_the_model(model: PlantModel) -> None:
    z = [0.0] * 50 + [3.0] * 20
    results = feed_residuals(make_monitor(model, [residual_chart("ewma")]), model, z)
    i, alarm = first_raise(results)
    assert i == 50 + noise_free_delay("ewma", lambda n: 3.0)  # 3 (1 - 0.95^6) > 0.769
    assert alarm.message == (
        f"drift alarm: T_R_meas (reactor temperature) HIGH - EWMA {alarm.statistic:.3g} > "
        f"limit {EWMA_LIMIT:.3g}; residual +0.3 degC (measured above the model's prediction, "
        f"+3 sigma); drifting since t={alarm.since:.4g} h"
    )
    assert alarm.since == pytest.approx(50 * DT)  # E = 0.15 at the first shifted sample


# ---------------------------------------------------------------------------------------------
# Skips, warm-up, reset, time
# ---------------------------------------------------------------------------------------------
def test_residual_chart_skips_cycles_without_a_usable_innovation(model: PlantModel) -> None:
    mon = make_monitor(model, [residual_chart("cusum")])
    key = f"cusum:{OUTPUT}:high"
    assert math.isnan(mon.update(0.0, estimate(model)).statistics[key])  # not running yet
    assert mon.update(DT, estimate(model, residual=0.3)).statistics[key] == pytest.approx(2.5)
    for i, std in enumerate([0.0, math.nan, math.inf, -0.1], start=2):
        result = mon.update(i * DT, estimate(model, residual=0.3, std=std))
        assert result.statistics[key] == pytest.approx(2.5)
    nan_residual = estimate(model, residual=math.nan)
    assert mon.update(7 * DT, nan_residual).statistics[key] == pytest.approx(2.5)
    assert mon.update(8 * DT, estimate(model, residual=0.3)).statistics[key] == pytest.approx(5.0)


def test_charts_wait_for_their_warmup_and_reset_restarts_everything(model: PlantModel) -> None:
    charts = [kw_chart("cusum", warmup=0.05), kw_chart("ewma")]
    maintenance = [{"parameter": "Kw", "threshold": 3000, "direction": "falling", "window": 1}]
    mon = make_monitor(model, charts, maintenance)
    low = KW_REF - 3 * KW_SIGMA
    results = [mon.update(1.0 + i * DT, estimate(model, kw=low)) for i in range(20)]
    # warm-up 0.05 h = 10 samples after the first update: samples 0-9 are not evaluated
    assert all(math.isnan(r.statistics["cusum:Kw:low"]) for r in results[:10])  # NaN: not running
    assert results[10].statistics["cusum:Kw:low"] == pytest.approx(2.5)
    assert results[0].statistics["ewma:Kw"] == pytest.approx(-3 * LAM)
    assert {a.key for a in mon.active} == {"cusum:Kw:low", "ewma:Kw:low"}
    assert mon.active[0].since >= 1.0 + 10 * DT or mon.active[0].key == "ewma:Kw:low"
    dropped = mon.reset()
    assert {a.key for a in dropped} == {"cusum:Kw:low", "ewma:Kw:low"}
    assert mon.active == []
    after = mon.update(2.0, estimate(model, kw=KW_REF))
    assert after.statistics["ewma:Kw"] == 0.0
    assert math.isnan(after.statistics["cusum:Kw:high"])  # warming up again
    assert math.isnan(after.statistics["cusum:Kw:low"])
    assert after.raised == after.cleared == []
    assert after.maintenance[0].points == 1  # the trend history restarted too


def test_time_must_increase_and_a_rejected_update_changes_nothing(model: PlantModel) -> None:
    mon = make_monitor(model, [residual_chart("cusum")])
    mon.update(1.0, estimate(model, residual=0.3))
    for bad in (1.0, 0.5, math.nan, math.inf):
        with pytest.raises(MonitoringError, match="time must be finite and after"):
            mon.update(bad, estimate(model, residual=0.3))
    assert mon.update(1.0 + DT, estimate(model, residual=0.0)).statistics[
        f"cusum:{OUTPUT}:high"
    ] == pytest.approx(2.0)


@settings(max_examples=40, deadline=None)
@given(
    z=st.lists(st.floats(min_value=-12.0, max_value=12.0), min_size=1, max_size=150),
    clear_fraction=st.floats(min_value=0.05, max_value=0.95),
)
def test_any_series_gives_bounded_statistics_and_well_ordered_alarm_events(
    model: PlantModel, z: list[float], clear_fraction: float
) -> None:
    mon = make_monitor(
        model,
        [residual_chart("cusum"), residual_chart("ewma", sides="high")],
        clear_fraction=clear_fraction,
    )
    active: set[str] = set()
    cusum = {"high": 0.0, "low": 0.0}
    ewma = 0.0
    for i, zi in enumerate(z):
        result = mon.update(i * DT, estimate(model, residual=INNOVATION_STD * zi))
        cusum = {
            "high": min(max(0.0, cusum["high"] + zi - K), CUSUM_CAP * H),
            "low": min(max(0.0, cusum["low"] - zi - K), CUSUM_CAP * H),
        }
        ewma = LAM * zi + (1 - LAM) * ewma
        for side in ("high", "low"):
            assert result.statistics[f"cusum:{OUTPUT}:{side}"] == pytest.approx(cusum[side])
        assert result.statistics[f"ewma:{OUTPUT}"] == pytest.approx(ewma)
        for alarm in result.raised:
            assert alarm.key not in active
            assert alarm.key != f"ewma:{OUTPUT}:low"  # that side is not charted
            active.add(alarm.key)
        for alarm in result.cleared:
            assert alarm.key in active
            assert alarm.cleared_at == i * DT
            active.remove(alarm.key)
        assert {a.key for a in result.active} == active


# ---------------------------------------------------------------------------------------------
# Predictive maintenance
# ---------------------------------------------------------------------------------------------
FOULING = {
    "parameter": "Kw",
    "threshold": 3000.0,
    "direction": "falling",
    "window": 10.0,
    "label": "jacket fouling",
}


def forecaster(model: PlantModel, **extra: Any) -> TrendForecaster:
    spec = parse(MonitoringSpec, {"maintenance": [{**FOULING, **extra}]}, "test.yaml")
    return TrendForecaster(spec.maintenance[0], unit="kJ/h/m^2/K", time_unit=model.time_unit)


def declining_forecast(
    model: PlantModel, seed: int, confidence: float, slope: float = -20.0
) -> tuple[float, Any]:
    """Kw = 4000 + slope t through AR(1) noise (rho 0.95, std 20), 1000 samples over 10 h
    (50 correlation times); returns the true time to the threshold and the forecast."""
    f = forecaster(model, confidence=confidence)
    t = np.arange(1000) * 0.01
    kw = 4000.0 + slope * t + ar1(np.random.default_rng(seed), len(t), RHO, 20.0)
    for ti, v in zip(t, kw, strict=True):
        f.add(float(ti), float(v))
    truth = (3000.0 - 4000.0) / slope - t[-1] if slope else math.inf
    return truth, f.forecast(float(t[-1]))


def test_forecaster_brackets_the_true_crossing_of_a_linear_decline(model: PlantModel) -> None:
    """A 95 % interval must bracket the true crossing in >= 90 % of 100 seeds, a 90 % one in
    >= 85 % (measured over 500 seeds: 94 % and 91 %, the intervals are calibrated; at those
    rates the checks fail for 3 % and 1 % of seed sets)."""
    hits = {0.95: 0, 0.9: 0}
    for seed in range(100):
        for confidence in hits:
            truth, fc = declining_forecast(model, seed, confidence)
            assert fc.status == "approaching"
            assert 0 < fc.low <= fc.time_to_threshold <= fc.high < math.inf
            assert fc.t_cross == pytest.approx(9.99 + fc.time_to_threshold)
            hits[confidence] += fc.low <= truth <= fc.high
    assert hits[0.95] >= 90, hits
    assert hits[0.9] >= 85, hits


def test_forecaster_finds_no_trend_on_a_flat_series(model: PlantModel) -> None:
    """Flat Kw: the slope is significantly toward the threshold in 5 % of the seeds at 90 %
    (two-sided); at least 34 of 40 must say "no trend", with open-ended times."""
    statuses = []
    for seed in range(40):
        _, fc = declining_forecast(model, 100 + seed, 0.9, slope=0.0)
        statuses.append(fc.status)
        if fc.status == "no trend":
            assert fc.time_to_threshold == fc.high == fc.t_cross == math.inf
            assert fc.low > 0  # the band reaches 3000 only far ahead (or never)
            assert "not approached" in fc.message
    assert statuses.count("no trend") >= 34, statuses


def test_forecast_message_reads_like_the_operator_needs_it(model: PlantModel) -> None:
    _, fc = declining_forecast(model, 7, 0.9)
    pattern = (
        r"jacket fouling: Kw threshold 3000 in (?P<t>[\d.]+) h, 90 % interval "
        r"(?P<low>[\d.]+)-(?P<high>[\d.]+) h \(estimate (?P<est>[\d.]+) kJ/h/m\^2/K, "
        r"trend (?P<slope>[-+\d.]+) /h\)"
    )
    match = re.fullmatch(pattern, fc.message)
    assert match, fc.message
    assert float(match["t"]) == pytest.approx(fc.time_to_threshold, rel=0.01)
    assert float(match["low"]) == pytest.approx(fc.low, rel=0.01)
    assert float(match["high"]) == pytest.approx(fc.high, rel=0.01)
    assert float(match["slope"]) == pytest.approx(fc.slope, rel=0.01)
    assert -25 < fc.slope < -15


def test_forecaster_needs_data_and_reports_a_crossing(model: PlantModel) -> None:
    f = forecaster(model, window=1.0)
    for i in range(9):
        fc = f.update(i * 0.1, 3500.0 - i)
    assert fc.status == "insufficient data" and fc.points == 9
    assert math.isnan(fc.slope) and fc.time_to_threshold == math.inf
    assert fc.message.startswith("jacket fouling: Kw threshold 3000 insufficient data")
    fc = f.update(0.9, 2999.0)
    assert fc.status == "crossed" and fc.t_cross == 0.9 and fc.time_to_threshold == 0.0
    assert "crossed since t=0.9 h" in fc.message
    assert f.update(1.0, 2990.0).t_cross == 0.9  # still the first crossing
    assert f.update(1.1, 3100.0).status != "crossed"
    # the window slides: 1 h of history at most
    assert f.update(5.0, 3100.0).points == 1
    f.reset()
    assert f.forecast(5.0).points == 0


@settings(max_examples=40, deadline=None)
@given(
    start=st.floats(min_value=10.0, max_value=1000.0),
    rate=st.floats(min_value=0.01, max_value=50.0),
    distance=st.floats(min_value=1.0, max_value=500.0),
    rising=st.booleans(),
)
def test_a_noise_free_line_is_forecast_exactly(
    start: float, rate: float, distance: float, rising: bool
) -> None:
    """No noise: the band has zero width, so the forecast is the line's own crossing."""
    sign = 1.0 if rising else -1.0
    threshold = start + sign * distance
    spec = parse(
        MonitoringSpec,
        {
            "maintenance": [
                {
                    "parameter": "p",
                    "threshold": threshold,
                    "direction": "rising" if rising else "falling",
                    "window": 100.0,
                }
            ]
        },
        "test.yaml",
    ).maintenance[0]
    f = TrendForecaster(spec)
    for i in range(20):
        fc = f.update(float(i), start - sign * rate * (19 - i))  # reaches `start` at t = 19
    expected = distance / rate
    assert fc.status == "approaching"
    assert fc.slope == pytest.approx(sign * rate)
    assert fc.time_to_threshold == pytest.approx(expected, rel=1e-6)
    assert fc.low == pytest.approx(expected, rel=1e-3) and fc.high == pytest.approx(
        expected, rel=1e-3
    )
    # a line going the other way never gets there
    g = TrendForecaster(spec)
    for i in range(20):
        fc = g.update(float(i), start + sign * rate * (i - 19))
        fc = g.update(float(i) + 0.5, start - sign * rate * (i + 1))
    assert fc.status == "no trend"


def test_monitor_runs_the_forecasts_on_every_update(model: PlantModel) -> None:
    mon = make_monitor(model, maintenance=[{**FOULING, "window": 2.0}])
    rng = np.random.default_rng(3)
    kw = 4000.0 - 20.0 * np.arange(600) * DT + ar1(rng, 600, RHO, 5.0)
    results = feed_kw(mon, model, kw)
    assert results[0].maintenance[0].status == "insufficient data"
    last = results[-1].maintenance[0]
    assert last.parameter == "Kw" and last.label == "jacket fouling"
    assert last.status == "approaching"
    assert last.points in (400, 401)  # 2 h of 0.005 h samples (the edge is a rounding away)
    truth = (3000.0 - 4000.0) / -20.0 - 599 * DT
    assert last.low <= truth <= last.high


# ---------------------------------------------------------------------------------------------
# On the CSTR's own EKF: a jacket that starts fouling
# ---------------------------------------------------------------------------------------------
def test_a_fouling_jacket_seen_through_the_ekf_raises_kw_low_and_a_forecast() -> None:
    """The true Kw falls by 2 %/h from t = 0.5 h; the CSTR's EKF (as configured) estimates
    it; the monitor charts Kw in long-run sigmas (sigma_relative 0.025, measured for this
    EKF at constant Kw) and T_R_meas's residuals. Theory, noise-free and without filter lag:
    z falls by 0.8 sigma/h, so the CUSUM starts to count after 0.625 h and needs
    sqrt(2 h / 0.004) = 81 more samples (206 after the onset, t = 1.53 h); the noise (long-run
    std 1, sqrt(81) = 9 over a rise of 0.32 per sample) gives +-3 std = 0.43 h. Over 8 seeds
    the alarms came at 1.41-1.83 h, no residual chart alarmed (the EKF tracks Kw, its
    innovations stay white), and at 3 h the 95 % interval held the true crossing in all."""
    cfg, model = load_controller(CONTROLLERS / "cstr.yaml")
    plant = build_model(PLANTS / "cstr.yaml")
    spec = {
        "charts": [
            {"signal": "Kw", "chart": "cusum", "sigma_relative": 0.025, "warmup": 0.25},
            residual_chart("ewma"),
            residual_chart("cusum"),
        ],
        "maintenance": [{**FOULING, "window": 2.0, "confidence": 0.95}],
    }
    mon = DriftMonitor(parse(MonitoringSpec, spec, "cstr.yaml"), model, cfg.estimator.parameters)
    ekf = ExtendedKalmanFilter(model, cfg.estimator, cfg.sample_time, compile=LibraryCache())
    onset, rate = 0.5, -0.02 * KW_REF  # h, kJ/h/m^2/K per h
    sigma = 0.025 * KW_REF
    n_star = noise_free_delay("cusum", lambda n: rate * (n + 1) * DT / sigma, side="low")
    assert onset + (n_star + 1) * DT == pytest.approx(1.53)  # 206 samples after the onset

    step = plant.integrator(DT)
    u = plant.vector(Role.INPUT, plant.nominal_inputs)
    x = plant.vector(Role.STATE, plant.initial_state)
    p = plant.parameter_vector()
    kw_at = plant.parameter_names.index("Kw")
    noise = cfg.estimator.measurement_noise_std
    rng = np.random.default_rng(0)
    raised: list[Alarm] = []
    for k in range(601):  # 3 h
        t = k * DT
        if k:
            x = np.asarray(step(x, np.zeros(0), u, p)[0]).ravel()
        p[kw_at] = KW_REF + rate * max(0.0, t - onset)
        y = np.asarray(plant.function(x, np.zeros(0), u, p)[2]).ravel()
        measured = {
            n: float(v) + rng.normal(0.0, noise[n])
            for n, v in zip(plant.output_names, y, strict=True)
        }
        result = mon.update(t, ekf.update(plant.nominal_inputs if k else None, measured))
        raised += result.raised
    assert [a.key for a in raised] == ["cusum:Kw:low"]
    alarm = raised[0]
    assert abs(alarm.raised_at - (onset + (n_star + 1) * DT)) <= 0.43
    assert onset < alarm.since < alarm.raised_at
    assert "Kw (jacket heat-transfer coefficient (fouling)) LOW - CUSUM" in alarm.message
    forecast = result.maintenance[0]
    truth = onset + (3000.0 - KW_REF) / rate - 3.0
    assert forecast.status == "approaching"
    assert forecast.low <= truth <= forecast.high
    assert forecast.time_to_threshold == pytest.approx(truth, rel=0.3)


def test_a_baseline_without_usable_samples_in_its_window_keeps_learning(model: PlantModel) -> None:
    """Bad data (no usable sample) through the whole baseline window must not leave the chart
    dead: it learns from the next usable samples instead."""
    chart = kw_chart("cusum")
    chart.pop("reference", None)
    chart["baseline"] = 0.02
    mon = make_monitor(model, [chart])
    for i in range(10):  # 0.05 h of samples without a Kw estimate
        mon.update(i * DT, estimate(model, kw=math.nan))
    results = [mon.update((10 + i) * DT, estimate(model, kw=KW_REF)) for i in range(5)]
    assert math.isnan(results[2].statistics["cusum:Kw:low"])  # learning from 3 samples
    assert results[3].statistics["cusum:Kw:low"] == 0.0  # running, against the learned mean
