"""Drift detection and predictive maintenance on the estimator's output.

Pure computing: numpy and scipy only, no I/O, no clocks, no logging. Times are in the model's
``time_unit`` (the ``t`` the caller passes), values in physical units.

Charts
------
Each :class:`~controller.config.ChartSpec` watches one signal of every
:class:`~controller.core.estimator.Estimate` handed to :meth:`DriftMonitor.update`:

* a measured output: a *residual chart* on ``z = innovation / innovation_std``, which is
  N(0, 1) and white while the model and the filter's noise settings hold. A cycle without an
  innovation (the first, full-state feedback) or with a zero/non-finite std is skipped;
* an estimated parameter (``EstimatorSpec.parameters``): a *parameter chart* on
  ``z = (estimate - reference) / sigma``; ``reference`` defaults to the plant file's value.

EWMA: ``E = lam z + (1 - lam) E``, ``E = 0`` at the start; it alarms HIGH when
``E > L sqrt(lam / (2 - lam))`` (L times the asymptotic std of ``E``), LOW when below minus
that. CUSUM: ``S_high = max(0, S_high + z - k)``, ``S_low = max(0, S_low - z - k)``, alarm
when above ``h``; the sums stop growing at ``CUSUM_CAP * h`` so that an alarm that has stood
for long clears within about ``(CUSUM_CAP - clear_fraction) h / k`` samples of the process
coming back, not after as long as it accumulated (the cap is above ``h``: it never delays a
raise). Nothing else restarts a statistic: only :meth:`DriftMonitor.reset` (after
maintenance) does, together with the warm-up, the alarms and the trend histories. During
``warmup`` (model time after the monitor's first update) a chart is not evaluated.

Recommended defaults (the ChartSpec defaults)
---------------------------------------------
Average run lengths (ARL, samples) on independent N(0, 1) data with a mean shift of ``d``
sigma, computed with a 400-state Markov chain (Brook & Evans 1972; Lucas & Saccucci 1990),
two-sided charts; the in-control ARL was checked by simulation (see the tests)::

    chart                       in control   d=0.5   d=1   d=1.5   d=2   d=3
    CUSUM k=0.5, h=13  (default)   1.4e6       200     26     14     9.3   5.8
    EWMA lam=0.05, L=4.8 (default) 1.3e6       197     28     15    10     6.3
    CUSUM k=0.5, h=8               9.5e3        84     16      8.7   6.0   3.8
    CUSUM k=0.5, h=5 (textbook)    465          38     10      5.7   4.0   2.6
    EWMA lam=0.1, L=2.8 (textbook) 480          31     10      6.0   4.3   2.9

The textbook designs (ARL0 ~ 500) are for hand-sampled quality data. Here a chart runs every
control cycle, several charts per unit: at the CSTR's 18 s an ARL0 of 500 is a false alarm per
chart every 2.5 h, which an operator learns to ignore. The defaults give ARL0 ~ 1.3e6 samples
(about 270 days per chart at 18 s, 15 years at the lyophilizer's 6 min) and still see a
1-sigma shift in under 30 samples, a 2-sigma one in about 10. Both are matched to each other:
CUSUM is the better choice for a sudden shift, EWMA for a slowly growing one and for telling
how large the mean deviation is (``E`` estimates it, in sigma). Where the sample time is long
(the bioreactor's 1 h), ``h = 8`` cuts the detection delay by 40 % at ARL0 ~ 1e4 samples
(1 year at 1 h). ``clear_fraction = 0.5``: an alarm clears once its statistic is back below half the
limit; from there a process in control needs as long as from 0 to re-raise it (ARL 1.3e6 from
half the limit, by the same Markov chains), so the alarm does not chatter, and it does not
stand for long after the cause is gone.

Residual charts assume that ``measurement_noise_std`` in the estimator settings matches the
sensors: if the normalized innovations' in-control std is 1.2 instead of 1, the ARL0 falls to
3e4 (CUSUM) or 4e4 (EWMA) samples. Check that std at commissioning (the CSTR's EKF as
configured gives 0.87-0.98).

*Parameter charts and ``sigma``.* A random-walk parameter estimate is strongly autocorrelated
(lag-1 ``rho`` about 1 minus the filter's gain on it, typically 0.9-0.99): its sum over ``n``
samples has about ``(1 + rho) / (1 - rho)`` (= 39 at rho = 0.95) times the variance of ``n``
independent ones, so charting it against its plain std alarms all the time. Give ``sigma`` as
the *long-run* std of the in-control estimate: its std times ``sqrt((1 + rho) / (1 - rho))``
(or an engineering tolerance, if larger: a change worth reporting is about ``2 k sigma``).
With that scale the charts' sums have the variance the ARL table assumes and the marginal
spread of ``z`` is well below 1, so the table's in-control ARLs are conservative (2e8 AR(1)
samples at rho = 0.95 raised no alarm) while shifts of 1 sigma and more are seen about as
fast as in the table. Example: the CSTR's EKF as configured, at constant Kw, gives a Kw
estimate with std 14 kJ/h/m^2/K and rho 0.95 (its ``parameter_std`` says 28), so a long-run
std of about 90, i.e. ``sigma_relative: 0.025``: a 5 % fouling is a 2-sigma shift.

Alarms
------
An alarm (``key`` like ``"cusum:Kw:low"``) is raised once, when its side's statistic goes
beyond the limit; it then stays in :attr:`MonitorResult.active` (refreshed with the current
statistic and value every evaluated cycle) and is reported in ``cleared`` when the statistic
is back below ``clear_fraction`` times the limit. ``since`` is the estimated onset: for CUSUM
the last time the side's sum was 0 before the alarm (Page's change-point estimate: from then
on the data exceeded the reference ``k``); for EWMA the last time ``E`` was within one
in-control std ``sqrt(lam / (2 - lam))`` of the reference side (``E <= +std`` for HIGH), the
EWMA's counterpart of ``k``. Measured over 200 seeds with the defaults, for a step of 1
(2) sigma, 90 % of the onsets fall within -11..+6 (-11..-1) samples of the true one for
CUSUM and -11..+11 (-11..+3) for EWMA; the last time ``E`` crossed 0 would be earlier by up
to 50 samples (the in-control ``E`` often sits on the alarm's side already), the time it
left half the limit later by 9 (3). Before the first zero the onset is the chart's first
evaluated sample.

Predictive maintenance
----------------------
:class:`TrendForecaster` fits a straight line to the ``(t, estimate)`` history of the last
``window`` and forecasts when it crosses ``threshold``. The fit's residuals are treated as
AR(1): the lag-1 autocorrelation ``r`` of the OLS residuals (corrected for its small-sample
bias, ``r + (1 + 4 r) / n``, clipped to ``[0, MAX_AUTOCORRELATION]``) gives the variance
inflation ``f = (1 + r) / (1 - r)`` and the effective sample size ``n_eff = n / f``. The
residual variance is ``SSE / (n - 2 f)`` (the line absorbs about ``2 f`` of the noise's
degrees of freedom), the long-run variance ``c`` is ``f`` times it, and the line's pointwise
band is ``yhat(t) +- q sqrt(c (1/n + (t - tbar)^2 / Sxx))`` with ``q`` the Student-t quantile
at ``(1 + confidence) / 2`` on ``n_eff - 2`` degrees of freedom (``scipy.special.stdtrit``).
The crossing interval is the set of future times at which that band contains the threshold
(Fieller's inversion), so it covers the true crossing time exactly when the band covers the
true line there. Measured on
a linear decline in AR(1) noise (rho = 0.95, 500 seeds), a 90 % interval covers the true
crossing in 91 % of the runs when the window holds 400-2000 samples (20-100 correlation
times), 80 % ones in 82 %, 95 % ones in 94 %; with only 10 correlation times in the window
the residual autocorrelation is underestimated and 90 % intervals cover 77 %: make
``window`` at least 20 times ``1 / (1 - rho)`` samples (the CSTR's Kw: 0.1 h, so >= 2 h).
On the CSTR's own EKF (true Kw falling 2 %/h from 0.5 h, open loop) the 95 % interval held
the true crossing in 8 of 8 seeds with a 2-h window at 3 h, but in only 8 of 12 with a 4-h
window at 7 h (point forecasts within 11 %): the filter's Kw error also wanders on a scale of
hours (together with its C_A0 estimate), which a lag-1 model does not see, and the interval
is about the *estimate's* crossing. Read the interval as a lower bound of the uncertainty.

Statuses: ``"crossed"`` when the latest estimate is past the threshold (``t_cross`` is when
it went past); ``"insufficient data"`` with fewer than ``min_points`` points or
``n_eff - 2 < 1``; ``"approaching"`` when the slope is toward the threshold and significant
at ``confidence`` (then the band's edges each meet the threshold once and ``low``/``high``
are finite); otherwise ``"no trend"``: ``time_to_threshold`` and ``high`` are inf, and
``low`` is the earliest time the band's near edge reaches the threshold (inf if it never
does), the open-ended confidence set ``[low, inf)``.

Failure behaviour
-----------------
* :class:`DriftMonitor` construction raises :class:`~controller.errors.ConfigError` listing
  every problem (key such as ``monitoring.charts.2.signal``, the value and what is allowed):
  unknown signal (neither a measured output nor an estimated parameter), a parameter chart
  without ``sigma``/``sigma_relative`` (or with ``sigma_relative`` on a zero reference), a
  residual chart with parameter settings, a duplicate chart, a maintenance parameter that is
  not estimated, a threshold on the wrong side of the nominal value or outside the
  parameter's plausible range (the estimator never leaves it).
* :meth:`DriftMonitor.update` raises :class:`MonitoringError` for a non-finite ``t`` or one
  not after the previous update, and leaves the monitor unchanged. Missing or non-finite
  values in the estimate are skipped (that chart is not updated), never raised.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Literal

import numpy as np
from scipy import special

from controller.config import ChartSpec, MaintenanceSpec, MonitoringSpec
from controller.core.estimator import Estimate
from controller.errors import ConfigError, PharmaTwinError, Problem
from plant_models import PlantModel

__all__ = [
    "CUSUM_CAP",
    "MAX_AUTOCORRELATION",
    "Alarm",
    "DriftMonitor",
    "MaintenanceForecast",
    "MonitorResult",
    "MonitoringError",
    "TrendForecaster",
    "check_monitoring",
]

Side = Literal["high", "low"]
ForecastStatus = Literal["insufficient data", "no trend", "approaching", "crossed"]

#: A baseline keeps collecting past its time until it has this many usable samples.
BASELINE_MIN_SAMPLES = 3
#: CUSUM sums stop growing at this multiple of ``h``.
CUSUM_CAP = 2.0
#: Largest lag-1 autocorrelation the forecaster uses (variance inflation at most 399).
MAX_AUTOCORRELATION = 0.995


class MonitoringError(PharmaTwinError):
    """The monitor was fed inconsistent data (a time that is not finite or not increasing)."""


# ---------------------------------------------------------------------- results
@dataclass(frozen=True)
class Alarm:
    """One drift alarm on one side of one chart.

    ``statistic``/``limit`` are as in :attr:`MonitorResult.statistics` (EWMA: signed, the LOW
    limit negative; CUSUM: the side's sum and ``h``). ``value`` is the current estimate
    (parameter charts) or residual ``y - y_pred`` (residual charts, ``reference`` 0), in
    ``unit``; ``deviation = value - reference`` and ``deviation_percent`` relative to
    ``|reference|`` (nan for a zero reference). ``raised_at``/``since``/``cleared_at`` are
    model times.
    """

    key: str
    signal: str
    chart: Literal["ewma", "cusum"]
    side: Side
    raised_at: float
    since: float
    statistic: float
    limit: float
    value: float
    reference: float
    deviation: float
    deviation_percent: float
    unit: str
    message: str
    cleared_at: float | None = None


@dataclass(frozen=True)
class MaintenanceForecast:
    """When a parameter is expected to cross its maintenance threshold.

    ``time_to_threshold``, ``low`` and ``high`` are model time from now: the expected
    crossing and the ``confidence`` interval around it; 0 once crossed. When not approaching
    ``time_to_threshold`` and ``high`` are inf and ``low`` is the earliest time the band
    reaches the threshold (inf if never, and always inf without a fit). ``t_cross`` is the
    absolute expected crossing (or when it crossed; inf when not approaching), ``slope`` in
    parameter units per time unit (nan without a fit), ``points`` the history used and
    ``effective_points`` its effective sample size (0 without a fit).
    """

    parameter: str
    label: str
    threshold: float
    estimate: float
    slope: float
    time_to_threshold: float
    low: float
    high: float
    t_cross: float
    status: ForecastStatus
    confidence: float
    points: int
    effective_points: float
    message: str


@dataclass(frozen=True)
class MonitorResult:
    """The outcome of one :meth:`DriftMonitor.update`.

    ``statistics`` maps every chart key (``"ewma:<signal>"``, ``"cusum:<signal>:high"``,
    ``"cusum:<signal>:low"``) to its current value, for the historian.
    """

    raised: list[Alarm]
    cleared: list[Alarm]
    active: list[Alarm]
    statistics: dict[str, float]
    maintenance: list[MaintenanceForecast]


# ---------------------------------------------------------------------- configuration
@dataclass(frozen=True)
class _Signal:
    """A chart's signal resolved against the model: what ``z`` is and how to word it."""

    name: str
    kind: Literal["residual", "parameter"]
    description: str
    unit: str
    reference: float
    sigma: float
    offset: float = 0.0  # residual charts: the learned mean z of the baseline

    def sample(self, estimate: Estimate) -> tuple[float, float] | None:
        """``(z, value)`` of this cycle, or None when the estimate has no usable value."""
        if self.kind == "residual":
            value, std = estimate.innovation.get(self.name), estimate.innovation_std.get(self.name)
            if value is None or std is None:
                return None
            value, std = float(value), float(std)
            if not (math.isfinite(value) and math.isfinite(std) and std > 0):
                return None
            return value / std - self.offset, value
        raw = estimate.parameters.get(self.name)
        if raw is None or not math.isfinite(float(raw)):
            return None
        value = float(raw)
        return (value - self.reference) / self.sigma, value


def _chart_key(spec: ChartSpec) -> str:
    return f"{spec.chart}:{spec.signal}"


def _chart_problems(
    i: int, c: ChartSpec, model: PlantModel, estimated: Sequence[str], source: str
) -> list[Problem]:
    loc = f"monitoring.charts.{i}"
    outputs = model.output_names
    if c.signal in outputs:
        fields = ("reference", "sigma", "sigma_relative")
        given = [f for f in fields if getattr(c, f) is not None]
        return [
            Problem(source, f"{loc}.{f}", "applies to parameter charts only", getattr(c, f))
            for f in given
        ]
    if c.signal not in estimated:
        why = (
            f"parameter {c.signal!r} is not estimated (estimator.parameters: {list(estimated)})"
            if c.signal in model.parameter_names
            else "unknown signal"
        )
        allowed = f"measured outputs {list(outputs)} or estimated parameters {list(estimated)}"
        return [Problem(source, f"{loc}.signal", f"{why}; allowed: {allowed}", c.signal)]
    reference = _reference(c, model)
    if c.sigma is None and c.sigma_relative is None:
        return [
            Problem(
                source,
                f"{loc}.sigma",
                "a parameter chart needs 'sigma' (physical units, the estimate's long-run "
                "std) or 'sigma_relative' (a fraction of |reference|)",
                None,
            )
        ]
    if c.sigma is None and reference == 0.0:
        return [
            Problem(
                source,
                f"{loc}.sigma_relative",
                "the reference is 0, so a relative sigma is 0; give 'sigma' instead",
                c.sigma_relative,
            )
        ]
    return []


def _maintenance_problems(
    j: int, m: MaintenanceSpec, model: PlantModel, estimated: Sequence[str], source: str
) -> list[Problem]:
    loc = f"monitoring.maintenance.{j}"
    if m.parameter not in estimated:
        return [
            Problem(
                source,
                f"{loc}.parameter",
                f"not an estimated parameter; allowed: {list(estimated)}",
                m.parameter,
            )
        ]
    p = model.parameter_set.parameters[m.parameter]
    falling = m.direction == "falling"
    if (falling and m.threshold >= p.value) or (not falling and m.threshold <= p.value):
        side = "below" if falling else "above"
        return [
            Problem(
                source,
                f"{loc}.threshold",
                f"a {m.direction} parameter's threshold must lie {side} its nominal value "
                f"{p.value:g} {p.unit}",
                m.threshold,
            )
        ]
    if not p.lower <= m.threshold <= p.upper:
        return [
            Problem(
                source,
                f"{loc}.threshold",
                f"can never be reached: the estimator keeps {m.parameter} within its plausible "
                f"range [{p.lower:g}, {p.upper:g}] {p.unit}",
                m.threshold,
            )
        ]
    return []


def check_monitoring(
    spec: MonitoringSpec, model: PlantModel, estimated: Sequence[str], source: str = "<monitoring>"
) -> list[Problem]:
    """Every problem of ``spec`` against the model and the estimated parameters.

    ``estimated`` is ``EstimatorSpec.parameters`` (names the model lacks are left to the
    estimator's own check); locations start with ``monitoring.``.
    """
    estimated = [name for name in estimated if name in model.parameter_names]
    problems: list[Problem] = []
    seen: dict[str, int] = {}
    for i, c in enumerate(spec.charts):
        problems += _chart_problems(i, c, model, estimated, source)
        key = _chart_key(c)
        if key in seen:
            problems.append(
                Problem(
                    source,
                    f"monitoring.charts.{i}",
                    f"duplicate of monitoring.charts.{seen[key]}: one {c.chart} chart per signal",
                    c.signal,
                )
            )
        seen.setdefault(key, i)
    for j, m in enumerate(spec.maintenance):
        problems += _maintenance_problems(j, m, model, estimated, source)
    return problems


def _reference(c: ChartSpec, model: PlantModel) -> float:
    if c.reference is not None:
        return c.reference
    return model.parameter_set.parameters[c.signal].value


def _resolve(c: ChartSpec, model: PlantModel) -> _Signal:
    if c.signal in model.output_names:
        v = model.variable(c.signal)
        return _Signal(c.signal, "residual", c.description or v.description, v.unit, 0.0, 1.0)
    p = model.parameter_set.parameters[c.signal]
    reference = _reference(c, model)
    sigma = c.sigma if c.sigma is not None else float(c.sigma_relative or 0.0) * abs(reference)
    return _Signal(c.signal, "parameter", c.description or p.description, p.unit, reference, sigma)


# ---------------------------------------------------------------------- charts
class _Chart:
    """The running statistic(s) of one ChartSpec, with each side's onset time."""

    def __init__(self, spec: ChartSpec, signal: _Signal) -> None:
        self.spec, self.signal = spec, signal
        self.sides: tuple[Side, ...] = ("high", "low") if spec.sides == "both" else (spec.sides,)
        ewma_std = math.sqrt(spec.lam / (2.0 - spec.lam))  # in-control asymptotic std of E
        self.limit = spec.limit * ewma_std if spec.chart == "ewma" else spec.h
        self.onset_level = ewma_std if spec.chart == "ewma" else 0.0
        self._configured = signal
        self._learned = False
        self._baseline: list[float] = []
        self.running = False
        self.reset()

    def learn(self, t: float, t_start: float, estimate: Estimate) -> bool:
        """While the baseline is being learned: collect this cycle's sample; True until it
        is learned.

        Parameter charts: the reference becomes the mean estimate over
        ``[t_start, t_start + baseline)`` and a relative sigma is taken of it. Residual
        charts: the mean normalized innovation over that time becomes an offset taken off
        ``z`` (a steady model mismatch the EKF does not absorb is not a drift)."""
        spec = self.spec
        if spec.baseline is None or self._learned:
            return False
        # collect over the baseline time, and on until there are enough usable samples (bad
        # data or a missing innovation during the window must not leave the chart dead)
        if t - t_start < spec.baseline or len(self._baseline) < BASELINE_MIN_SAMPLES:
            sample = self._configured.sample(estimate)
            if sample is not None:
                z, value = sample
                self._baseline.append(z if self._configured.kind == "residual" else value)
            return True
        if not self._baseline:
            return True  # nothing usable yet: keep learning
        reference = float(np.mean(self._baseline))
        if self._configured.kind == "residual":
            self.signal = replace(self._configured, offset=reference)
            self._learned = True
            return False
        sigma = (
            spec.sigma if spec.sigma is not None else (spec.sigma_relative or 0.0) * abs(reference)
        )
        if not sigma > 0:  # a zero mean with a relative sigma: relative to the configured one
            sigma = (spec.sigma_relative or 0.0) * abs(self._configured.reference)
        if not sigma > 0:
            sigma = self._configured.sigma if self._configured.sigma > 0 else 1.0
        self.signal = replace(self._configured, reference=reference, sigma=sigma)
        self._learned = True
        return False

    def reset(self) -> None:
        self.signal = self._configured
        self._learned = False
        self._baseline = []
        self.running = False
        self.ewma = 0.0
        self.sums: dict[Side, float] = {side: 0.0 for side in self.sides}
        self.onset: dict[Side, float | None] = {side: None for side in self.sides}
        self.z, self.value = math.nan, math.nan

    def key(self, side: Side) -> str:
        return f"{_chart_key(self.spec)}:{side}"

    def observe(self, t: float, z: float, value: float) -> None:
        spec = self.spec
        self.running = True
        self.z, self.value = z, value
        if spec.chart == "ewma":
            self.ewma = spec.lam * z + (1.0 - spec.lam) * self.ewma
        else:
            cap = CUSUM_CAP * spec.h
            for side in self.sides:
                step = z if side == "high" else -z
                self.sums[side] = min(max(0.0, self.sums[side] + step - spec.k), cap)
        for side in self.sides:
            if self.magnitude(side) <= self.onset_level or self.onset[side] is None:
                self.onset[side] = t

    def magnitude(self, side: Side) -> float:
        """The statistic on ``side``, positive toward an alarm (compared with ``limit``)."""
        if self.spec.chart == "ewma":
            return self.ewma if side == "high" else -self.ewma
        return self.sums[side]

    def statistic(self, side: Side) -> float:
        return self.ewma if self.spec.chart == "ewma" else self.sums[side]

    def signed_limit(self, side: Side) -> float:
        return -self.limit if self.spec.chart == "ewma" and side == "low" else self.limit

    def statistics(self) -> dict[str, float]:
        """Each statistic; NaN while the chart is not running yet (warm-up, baseline)."""
        if self.spec.chart == "ewma":
            return {_chart_key(self.spec): self.ewma if self.running else math.nan}
        return {
            self.key(side): self.sums[side] if self.running else math.nan for side in self.sides
        }


def _num(x: float, digits: int = 4) -> str:
    """``x`` to ``digits`` significant digits, without an exponent below 1e9."""
    text = f"{x:.{digits}g}"
    return f"{x:.0f}" if "e+" in text and abs(x) < 1e9 else text


# ---------------------------------------------------------------------- forecasting
@dataclass(frozen=True)
class _Trend:
    """A line fitted to autocorrelated data: value ``mean + slope (t - t_mean)``."""

    t_mean: float
    mean: float
    slope: float
    long_run_var: float  # c: residual variance times the inflation factor
    sxx: float
    n: int
    n_eff: float
    q: float  # Student-t quantile on n_eff - 2 degrees of freedom
    estimate_var: float = 0.0  # the estimator's own variance of the parameter (see _band_times)

    @property
    def slope_se(self) -> float:
        return math.sqrt(self.long_run_var / self.sxx)


def _fit(t: np.ndarray, y: np.ndarray, confidence: float) -> _Trend | None:
    """The trend of ``y(t)`` with AR(1)-corrected uncertainty; None when it cannot be told."""
    n = len(t)
    u = t - t.mean()
    sxx = float(u @ u)
    if n < 3 or sxx <= 0.0:
        return None
    mean = float(y.mean())
    slope = float(u @ (y - mean)) / sxx
    res = y - mean - slope * u
    sse = float(res @ res)
    rounding = n * (1e-12 * float(np.max(np.abs(y)))) ** 2  # an exact line leaves only this
    r = float(res[1:] @ res[:-1]) / sse if sse > rounding else 0.0
    r = min(max(r + (1.0 + 4.0 * r) / n, 0.0), MAX_AUTOCORRELATION)
    inflation = (1.0 + r) / (1.0 - r)
    n_eff = n / inflation
    if n_eff - 2.0 < 1.0:
        return None
    long_run_var = inflation * sse / (n - 2.0 * inflation)
    q = float(special.stdtrit(n_eff - 2.0, 0.5 + confidence / 2.0))  # Student-t quantile
    return _Trend(float(t.mean()), mean, slope, long_run_var, sxx, n, n_eff, q)


def _band_times(trend: _Trend, threshold: float, t: float) -> tuple[float, float]:
    """From ``t`` on, the first and last times at which the line's band contains
    ``threshold`` (Fieller's set); ``last`` is inf when the set is open-ended and both are inf
    when the set lies wholly before ``t``.

    The band is for the *true* parameter, not for the line through its estimates: the
    estimator's own variance of the parameter (``estimate_var``, its ``parameter_std``
    squared) is added to the line's. A random-walk EKF follows a ramp with a lag, so its
    estimates run parallel to the truth, offset by about one std; without this term the
    interval brackets where the *estimates* cross, a lag later than the plant does.

    The set is where ``Q(u) = g u^2 + 2 d b u + c0 <= 0``, ``u = time - t_mean``, with
    ``g = b^2 - q^2 var(b)``: a bounded interval when the slope is significant (``g > 0``),
    the outside of the roots (or everything) when it is not.
    """
    b, q2c = trend.slope, trend.q**2 * trend.long_run_var
    g, d = b * b - q2c / trend.sxx, trend.mean - threshold
    c0 = d * d - q2c / trend.n - trend.q**2 * trend.estimate_var
    disc, u_now = (d * b) ** 2 - g * c0, t - trend.t_mean
    if g == 0.0:  # degenerate (a noise-free flat line): Q is linear or constant
        if d * b == 0.0:
            return (0.0, math.inf) if c0 <= 0.0 else (math.inf, math.inf)
        u_star = -c0 / (2.0 * d * b)
        if d * b < 0.0:
            return max(u_star - u_now, 0.0), math.inf
        return (0.0, u_star - u_now) if u_now <= u_star else (math.inf, math.inf)
    root = math.sqrt(max(disc, 0.0))
    u1, u2 = sorted(((-d * b - root) / g, (-d * b + root) / g))
    if g > 0.0:
        return (math.inf, math.inf) if u2 < u_now else (max(u1 - u_now, 0.0), u2 - u_now)
    if disc <= 0.0 or not u1 < u_now < u2:
        return 0.0, math.inf
    return u2 - u_now, math.inf


class _History:
    """``(t, value)`` pairs in time order in one numpy buffer; old ones slide off the front."""

    def __init__(self) -> None:
        self._buf = np.empty((256, 2))
        self._lo = self._hi = 0

    def __len__(self) -> int:
        return self._hi - self._lo

    def clear(self) -> None:
        self._lo = self._hi = 0

    def append(self, t: float, value: float) -> None:
        if self._hi == len(self._buf):
            n = len(self)
            buf = np.empty((2 * len(self._buf), 2)) if 2 * n > len(self._buf) else self._buf
            buf[:n] = self._buf[self._lo : self._hi]
            self._buf, self._lo, self._hi = buf, 0, n
        self._buf[self._hi] = (t, value)
        self._hi += 1

    def drop_before(self, t: float) -> None:
        self._lo += int(np.searchsorted(self._buf[self._lo : self._hi, 0], t, side="left"))

    def since(self, t: float) -> tuple[np.ndarray, np.ndarray]:
        """Copies of the times and values at or after ``t``."""
        view = self._buf[self._lo : self._hi]
        view = view[int(np.searchsorted(view[:, 0], t, side="left")) :]
        return view[:, 0].copy(), view[:, 1].copy()


class TrendForecaster:
    """When will an estimated parameter cross its maintenance threshold (see module doc)?

    Feed it every estimate with :meth:`update`; it keeps the ``window`` of history. ``unit``
    (the parameter's) and ``time_unit`` are used in messages only.
    """

    def __init__(self, spec: MaintenanceSpec, *, unit: str = "", time_unit: str = "h") -> None:
        self.spec, self._unit, self._time_unit = spec, unit, time_unit
        self._history = _History()
        self._crossed_at: float | None = None
        self._std = 0.0

    def reset(self) -> None:
        """Forget the history (after maintenance)."""
        self._history.clear()
        self._crossed_at = None

    def _past(self, value: float) -> bool:
        falling = self.spec.direction == "falling"
        return value <= self.spec.threshold if falling else value >= self.spec.threshold

    def add(self, t: float, value: float) -> None:
        """Record one estimate (a non-finite value is ignored) and drop what left the window.

        Times must increase (:class:`DriftMonitor` checks that)."""
        if math.isfinite(value):
            self._history.append(t, value)
            if not self._past(value):
                self._crossed_at = None
            elif self._crossed_at is None:
                self._crossed_at = t
        self._history.drop_before(t - self.spec.window)

    def update(self, t: float, value: float, std: float = 0.0) -> MaintenanceForecast:
        """:meth:`add` then :meth:`forecast` at ``t``; ``std`` is the estimator's current
        standard deviation of the parameter (widens the interval, see :func:`_band_times`)."""
        self.add(t, value)
        self._std = float(std) if math.isfinite(std) and std > 0 else 0.0
        return self.forecast(t)

    def forecast(self, t: float) -> MaintenanceForecast:
        """The forecast at time ``t`` from the history within ``window`` before it."""
        spec = self.spec
        ts, ys = self._history.since(t - spec.window)
        estimate = float(ys[-1]) if len(ys) else math.nan
        trend = _fit(ts, ys, spec.confidence) if len(ts) >= spec.min_points else None
        if trend is not None and self._std > 0:
            trend = replace(trend, estimate_var=self._std**2)
        status, (time_to, low, high, t_cross) = self._status(t, estimate, trend)
        forecast = MaintenanceForecast(
            parameter=spec.parameter,
            label=spec.label,
            threshold=spec.threshold,
            estimate=estimate,
            slope=trend.slope if trend is not None else math.nan,
            time_to_threshold=time_to,
            low=low,
            high=high,
            t_cross=t_cross,
            status=status,
            confidence=spec.confidence,
            points=len(ts),
            effective_points=trend.n_eff if trend is not None else 0.0,
            message="",
        )
        message = _forecast_message(forecast, spec.min_points, self._unit, self._time_unit)
        return replace(forecast, message=message)

    def _status(
        self, t: float, estimate: float, trend: _Trend | None
    ) -> tuple[ForecastStatus, tuple[float, float, float, float]]:
        """The status and ``(time_to_threshold, low, high, t_cross)``."""
        never = (math.inf,) * 4
        if math.isfinite(estimate) and self._past(estimate) and self._crossed_at is not None:
            return "crossed", (0.0, 0.0, 0.0, self._crossed_at)
        if trend is None:
            return "insufficient data", never
        toward = trend.slope < 0 if self.spec.direction == "falling" else trend.slope > 0
        significant = abs(trend.slope) > trend.q * trend.slope_se
        first, last = _band_times(trend, self.spec.threshold, t)
        if not (toward and significant):
            return "no trend", (math.inf, first, math.inf, math.inf)
        expected = trend.t_mean + (self.spec.threshold - trend.mean) / trend.slope - t
        expected = max(expected, 0.0)
        if math.isinf(first):  # the line's whole band is past the threshold already
            first = last = 0.0
        return "approaching", (expected, first, last, t + expected)


def _forecast_message(f: MaintenanceForecast, min_points: int, unit: str, time_unit: str) -> str:
    head = f"{f.label or 'maintenance'}: {f.parameter} threshold {_num(f.threshold)}"
    unit = f" {unit}" if unit and unit != "-" else ""
    sign = "+" if f.slope > 0 else ""
    trend = f"trend {sign}{_num(f.slope, 3)} /{time_unit}" if math.isfinite(f.slope) else "no fit"
    now = f"(estimate {_num(f.estimate)}{unit}, {trend})"
    pct = f"{100 * f.confidence:.3g} %"
    if f.status == "approaching":
        body = (
            f"in {_num(f.time_to_threshold, 3)} {time_unit}, {pct} interval "
            f"{_num(f.low, 3)}-{_num(f.high, 3)} {time_unit} {now}"
        )
    elif f.status == "crossed":
        body = f"crossed since t={_num(f.t_cross)} {time_unit} {now}"
    elif f.status == "no trend":
        body = f"not approached: no trend toward it significant at {pct} {now}"
    elif f.points < min_points:
        body = f"insufficient data for a trend ({f.points} of {min_points} points) {now}"
    else:
        body = (
            f"insufficient data for a trend ({f.points} points, but fewer than 3 independent "
            f"ones: the window spans too few correlation times of the estimate) {now}"
        )
    return f"{head} {body}"


# ---------------------------------------------------------------------- the monitor
class DriftMonitor:
    """Drift charts and maintenance forecasts on the estimator's output, every cycle.

    ``estimated`` is ``EstimatorSpec.parameters``; ``source`` names the config file in
    problems. Raises :class:`~controller.errors.ConfigError` listing every problem.
    """

    def __init__(
        self,
        spec: MonitoringSpec,
        model: PlantModel,
        estimated: Sequence[str],
        *,
        source: str = "<monitoring>",
    ) -> None:
        problems = check_monitoring(spec, model, estimated, source)
        if problems:
            raise ConfigError(problems)
        self.spec = spec
        self._time_unit = model.time_unit
        self._charts = [_Chart(c, _resolve(c, model)) for c in spec.charts]
        params = model.parameter_set.parameters
        self._forecasters = [
            TrendForecaster(m, unit=params[m.parameter].unit, time_unit=model.time_unit)
            for m in spec.maintenance
        ]
        self._active: dict[str, Alarm] = {}
        self._t_first: float | None = None
        self._t_last: float | None = None

    @property
    def active(self) -> list[Alarm]:
        """The alarms raised and not yet cleared."""
        return list(self._active.values())

    def alarm_word(self, alarms: Sequence[Alarm]) -> int:
        """Bit i set: chart i of ``spec.charts`` (either side) has an alarm in ``alarms``
        (charts beyond the 32nd share no bit)."""
        index = {_chart_key(c.spec): i for i, c in enumerate(self._charts) if i < 32}
        word = 0
        for a in alarms:
            i = index.get(f"{a.chart}:{a.signal}")
            if i is not None:
                word |= 1 << i
        return word

    def reset(self) -> list[Alarm]:
        """Restart every statistic, warm-up and trend history (after a maintenance action).

        Returns the alarms that were active; they are dropped without a ``cleared`` report.
        """
        dropped = list(self._active.values())
        for chart in self._charts:
            chart.reset()
        for forecaster in self._forecasters:
            forecaster.reset()
        self._active.clear()
        self._t_first = None
        return dropped

    def update(self, t: float, estimate: Estimate) -> MonitorResult:
        """Evaluate every chart and forecast on the estimate at model time ``t``."""
        t = float(t)
        if not math.isfinite(t) or (self._t_last is not None and t <= self._t_last):
            raise MonitoringError(
                f"monitor update at t={t!r}: time must be finite and after the previous "
                f"update (t={self._t_last!r} {self._time_unit})"
            )
        self._t_last = t
        if self._t_first is None:
            self._t_first = t
        raised: list[Alarm] = []
        cleared: list[Alarm] = []
        for chart in self._charts:
            if t - self._t_first < chart.spec.warmup:
                continue
            if chart.learn(t, self._t_first + chart.spec.warmup, estimate):
                continue
            sample = chart.signal.sample(estimate)
            if sample is None:
                continue
            chart.observe(t, *sample)
            for side in chart.sides:
                self._judge(t, chart, side, raised, cleared)
        maintenance = [
            f.update(
                t,
                float(estimate.parameters.get(f.spec.parameter, math.nan)),
                float(estimate.parameter_std.get(f.spec.parameter, 0.0)),
            )
            for f in self._forecasters
        ]
        statistics = {k: v for c in self._charts for k, v in c.statistics().items()}
        return MonitorResult(raised, cleared, self.active, statistics, maintenance)

    def _judge(
        self, t: float, chart: _Chart, side: Side, raised: list[Alarm], cleared: list[Alarm]
    ) -> None:
        key, level = chart.key(side), chart.magnitude(side)
        alarm = self._active.get(key)
        if alarm is None:
            if level > chart.limit:
                since = chart.onset[side]
                alarm = self._alarm(chart, side, t, t if since is None else since)
                self._active[key] = alarm
                raised.append(alarm)
        elif level < self.spec.clear_fraction * chart.limit:
            del self._active[key]
            cleared.append(self._alarm(chart, side, alarm.raised_at, alarm.since, cleared_at=t))
        else:
            self._active[key] = self._alarm(chart, side, alarm.raised_at, alarm.since)

    def _alarm(
        self,
        chart: _Chart,
        side: Side,
        raised_at: float,
        since: float,
        cleared_at: float | None = None,
    ) -> Alarm:
        sig = chart.signal
        deviation = chart.value - sig.reference
        percent = 100.0 * deviation / abs(sig.reference) if sig.reference != 0 else math.nan
        if cleared_at is None:
            message = _raise_message(chart, side, since, self._time_unit)
        else:
            clear_level = self.spec.clear_fraction * chart.signed_limit(side)
            message = _clear_message(chart, side, raised_at, since, clear_level, self._time_unit)
        return Alarm(
            key=chart.key(side),
            signal=sig.name,
            chart=chart.spec.chart,
            side=side,
            raised_at=raised_at,
            since=since,
            statistic=chart.statistic(side),
            limit=chart.signed_limit(side),
            value=chart.value,
            reference=sig.reference,
            deviation=deviation,
            deviation_percent=percent,
            unit=sig.unit,
            message=message,
            cleared_at=cleared_at,
        )


def _describe(chart: _Chart) -> tuple[str, str]:
    """``(signal with description, value vs reference)`` for alarm messages."""
    sig = chart.signal
    name = f"{sig.name} ({sig.description})" if sig.description else sig.name
    unit = f" {sig.unit}" if sig.unit and sig.unit != "-" else ""
    if sig.kind == "parameter":
        dev = chart.value - sig.reference
        pct = f" ({100.0 * dev / abs(sig.reference):+.1f} %)" if sig.reference != 0 else ""
        ref = "this run's baseline" if chart.spec.baseline is not None else "reference"
        return name, f"estimate {_num(chart.value)} vs {ref} {_num(sig.reference)}{unit}{pct}"
    where = "above" if chart.value > 0 else "below"
    return name, (
        f"residual {chart.value:+.4g}{unit} (measured {where} the model's prediction, "
        f"{chart.z:+.2g} sigma)"
    )


def _raise_message(chart: _Chart, side: Side, since: float, time_unit: str) -> str:
    stat, lim = chart.statistic(side), chart.signed_limit(side)
    word = "h" if chart.spec.chart == "cusum" else "limit"
    op = "<" if lim < 0 else ">"
    name, what = _describe(chart)
    return (
        f"drift alarm: {name} {side.upper()} - {chart.spec.chart.upper()} {stat:.3g} {op} "
        f"{word} {lim:.3g}; {what}; drifting since t={_num(since)} {time_unit}"
    )


def _clear_message(
    chart: _Chart, side: Side, raised_at: float, since: float, level: float, time_unit: str
) -> str:
    stat = chart.statistic(side)
    op = ">" if level < 0 else "<"
    name, what = _describe(chart)
    return (
        f"drift alarm cleared: {name} {side.upper()} - {chart.spec.chart.upper()} {stat:.3g} "
        f"{op} clear level {level:.3g}; {what}; raised at t={_num(raised_at)} {time_unit}, "
        f"drifting since t={_num(since)} {time_unit}"
    )
