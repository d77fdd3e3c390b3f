"""Drift charts: EWMA and CUSUM statistics on one signal of the estimator's output.

Part of the drift monitor (:mod:`controller.twin.monitoring`, which raises and clears the
alarms). Pure computing: no I/O, no clocks. Times are in the model's ``time_unit``.

Charts
------
Each :class:`~controller.monitoringspec.ChartSpec` watches one signal of every
:class:`~controller.core.estimate.Estimate` handed to
:meth:`~controller.twin.monitoring.DriftMonitor.update`:

* a measured output: a *residual chart* on ``z = innovation / innovation_std``, which is
  N(0, 1) and white while the model and the filter's noise settings hold. A cycle without an
  innovation (the first, full-state feedback), with a zero/non-finite std or with a ``z``
  that is not finite (a huge innovation over a tiny std) is skipped;
* an estimated parameter (``EstimatorSpec.parameters``): a *parameter chart* on
  ``z = (estimate - reference) / sigma``; ``reference`` defaults to the plant file's value.

EWMA: ``E = lam z + (1 - lam) E``, ``E = 0`` at the start; it alarms HIGH when
``E > L sqrt(lam / (2 - lam))`` (L times the asymptotic std of ``E``), LOW when below minus
that. CUSUM: ``S_high = max(0, S_high + z - k)``, ``S_low = max(0, S_low - z - k)``, alarm
when above ``h``; the sums stop growing at ``CUSUM_CAP * h`` so that an alarm that has stood
for long clears within about ``(CUSUM_CAP - clear_fraction) h / k`` samples of the process
coming back, not after as long as it accumulated (the cap is above ``h``: it never delays a
raise). Nothing else restarts a statistic: only the monitor's ``reset`` (after
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

Onsets
------
Each side of a chart keeps the estimated onset of a drift: for CUSUM the last time the side's
sum was 0 (Page's change-point estimate), for EWMA the last time ``E`` was within one in-control
std ``sqrt(lam / (2 - lam))`` of the reference side; before the first such time it is the
chart's first evaluated sample (see the monitor's docstring for the measured accuracy).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Literal

import numpy as np

from controller.core.estimate import Estimate
from controller.monitoringspec import ChartSpec
from plant_models import PlantModel

__all__ = [
    "BASELINE_MIN_SAMPLES",
    "CUSUM_CAP",
    "Chart",
    "Side",
    "Signal",
    "chart_key",
    "num",
    "reference_of",
    "resolve_signal",
]

Side = Literal["high", "low"]
_SIDES: tuple[Side, ...] = ("high", "low")

#: A baseline keeps collecting past its time until it has this many usable samples.
BASELINE_MIN_SAMPLES = 3
#: CUSUM sums stop growing at this multiple of ``h``.
CUSUM_CAP = 2.0


# ---------------------------------------------------------------------- signals
@dataclass(frozen=True)
class Signal:
    """A chart's signal resolved against the model: what ``z`` is and how to word it."""

    name: str
    kind: Literal["residual", "parameter"]
    description: str
    unit: str
    reference: float
    sigma: float
    offset: float = 0.0  # residual charts: the learned mean z of the baseline

    def sample(self, estimate: Estimate) -> tuple[float, float] | None:
        """``(z, value)`` of this cycle, or None when the estimate has no usable value.

        A ``z`` that is not finite (a finite innovation over a tiny std overflows) is no
        usable value either: it would leave an EWMA at inf or NaN for good."""
        if self.kind == "residual":
            value, std = estimate.innovation.get(self.name), estimate.innovation_std.get(self.name)
            if value is None or std is None:
                return None
            value, std = float(value), float(std)
            if not (math.isfinite(value) and math.isfinite(std) and std > 0):
                return None
            z = value / std - self.offset
        else:
            raw = estimate.parameters.get(self.name)
            if raw is None or not math.isfinite(float(raw)):
                return None
            value = float(raw)
            z = (value - self.reference) / self.sigma
        return (z, value) if math.isfinite(z) else None


def chart_key(spec: ChartSpec) -> str:
    """``<chart>:<signal>``, e.g. ``cusum:Kw`` (one chart of a kind per signal)."""
    return f"{spec.chart}:{spec.signal}"


def reference_of(c: ChartSpec, model: PlantModel) -> float:
    """A parameter chart's configured reference, else the plant file's value."""
    if c.reference is not None:
        return c.reference
    return model.parameter_set.parameters[c.signal].value


def resolve_signal(c: ChartSpec, model: PlantModel) -> Signal:
    """The chart's signal against ``model`` (a checked spec: see ``check_monitoring``)."""
    if c.signal in model.output_names:
        v = model.variable(c.signal)
        return Signal(c.signal, "residual", c.description or v.description, v.unit, 0.0, 1.0)
    p = model.parameter_set.parameters[c.signal]
    reference = reference_of(c, model)
    sigma = c.sigma if c.sigma is not None else float(c.sigma_relative or 0.0) * abs(reference)
    return Signal(c.signal, "parameter", c.description or p.description, p.unit, reference, sigma)


# ---------------------------------------------------------------------- charts
class Chart:
    """The running statistic(s) of one ChartSpec, with each side's onset time."""

    def __init__(self, spec: ChartSpec, signal: Signal) -> None:
        self.spec, self.signal = spec, signal
        self.sides: tuple[Side, ...] = ("high", "low") if spec.sides == "both" else (spec.sides,)
        ewma_std = math.sqrt(spec.lam / (2.0 - spec.lam))  # in-control asymptotic std of E
        self.limit = spec.limit * ewma_std if spec.chart == "ewma" else spec.h
        self.onset_level = ewma_std if spec.chart == "ewma" else 0.0
        self._configured = signal
        #: the chart's keys (its spec never changes): not formatted again every cycle
        self._chart_key = chart_key(spec)
        self._keys: dict[Side, str] = {side: f"{self._chart_key}:{side}" for side in _SIDES}
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
        return self._keys[side]

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
            return {self._chart_key: self.ewma if self.running else math.nan}
        keys = self._keys
        return {keys[side]: self.sums[side] if self.running else math.nan for side in self.sides}


def num(x: float, digits: int = 4) -> str:
    """``x`` to ``digits`` significant digits, without an exponent below 1e9."""
    text = f"{x:.{digits}g}"
    return f"{x:.0f}" if "e+" in text and abs(x) < 1e9 else text
