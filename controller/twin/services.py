"""The twin's own view of each control cycle: drift alarms, maintenance forecasts, soft sensors.

:class:`TwinServices` joins the pure pieces the supervisor needs once it has an estimate:

* :class:`controller.twin.monitoring.DriftMonitor` (the controller config's ``monitoring:``
  section): EWMA/CUSUM charts on the EKF's normalized innovations and on its parameter
  estimates, and the time-to-threshold forecasts of degradation parameters;
* :class:`controller.twin.publish.Publisher` (the tag map's ``publish`` tags): the soft-sensor
  values to write.

One :meth:`TwinServices.update` per cycle with good, fresh data gives a :class:`TwinCycle`:
the figures for the historian (``monitor``, flat name -> float), the alarms raised and cleared
this cycle, and the publications. The monitor is not fed while the data are bad or stale
(the estimate is then a prediction only, and a frozen sensor must not look like a drift),
nor with an estimate that is not ``ok`` (the estimator failed: it must not be acted on);
publications are still computed from the last estimate so that the HMI sees the twin's
current belief, except from one that is not ``ok``: then only the twin's own figures (alarms,
maintenance) go out, every value of the estimate is omitted with its ``reason``. Model time
must not go back: :class:`~controller.twin.monitoring.MonitoringError` (see
:meth:`TwinServices.update`). Names in ``monitor``:

* ``chart.<chart key>``: each chart's statistic (e.g. ``chart.cusum:Kw:low``);
* ``maintenance.<parameter>.{threshold, estimate, slope, time_to_threshold, low, high}``
  (times from now in the model's time unit; inf when no trend toward the threshold is
  significant, published as the tag's upper limit: "not in sight"; NaN, not published, while
  there are too few points for a trend; 0 once crossed);
* ``alarm.active`` (how many drift alarms are active) and ``alarm.word`` (bit i: the chart i
  of ``monitoring.charts`` has an active alarm). Their publications are omitted ("drift
  monitor not running yet: k of n charts evaluated") while no alarm is active and some chart
  has not evaluated a sample yet (warm-up, baseline, no usable value ever): 0 would say "no
  drift" where a chart cannot tell;
* ``pub.<tag>``: the value the PLC accepted into each publishing tag this cycle (filled in
  by the supervisor from the write report).

Pure computing: no I/O, no clocks. The supervisor does the audit, the historian, the log
and the writes.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from controller.core.estimate import Estimate
from controller.monitoringspec import MonitoringSpec
from controller.tags import TagMap
from controller.twin.maintenance import MaintenanceForecast
from controller.twin.monitoring import Alarm, DriftMonitor, MonitoringError
from controller.twin.publish import Publication, Publisher
from plant_models import PlantModel

__all__ = ["TwinCycle", "TwinServices"]


@dataclass
class TwinCycle:
    """What the twin computed in one cycle (see the module docstring for ``monitor``)."""

    monitor: dict[str, float] = field(default_factory=dict)
    raised: list[Alarm] = field(default_factory=list)
    cleared: list[Alarm] = field(default_factory=list)
    active: list[Alarm] = field(default_factory=list)
    maintenance: list[MaintenanceForecast] = field(default_factory=list)
    publication: Publication = field(default_factory=Publication)
    alarm_word: int = 0


class TwinServices:
    """Drift monitor and publisher of one site (either may be absent).

    ``monitoring`` is the controller config's ``monitoring:`` section (None: no monitor),
    ``estimated`` its estimated parameters (``estimator.estimated``), ``tags`` the site's tag
    map (no ``publish`` tags: no publisher) and ``source`` the controller config's file, named
    in problems. Raises :class:`~controller.errors.ConfigError` for a monitoring section that
    does not fit the model.
    """

    def __init__(
        self,
        model: PlantModel,
        tags: TagMap,
        monitoring: MonitoringSpec | None,
        estimated: Sequence[str],
        *,
        source: str = "<controller config>",
    ) -> None:
        self.monitor = (
            DriftMonitor(monitoring, model, estimated, source=source)
            if monitoring is not None
            else None
        )
        publishes = bool(tags.publication_tags())
        self.publisher = Publisher(tags, model, estimated) if publishes else None
        self.alarm_tag = monitoring.alarm_tag if monitoring is not None else None
        self._active: list[Alarm] = []
        self._maintenance: list[MaintenanceForecast] = []
        self._statistics: dict[str, float] = {}
        self._t_last: float | None = None

    @property
    def enabled(self) -> bool:
        return self.monitor is not None or self.publisher is not None

    def update(
        self,
        t: float,
        estimate: Estimate | None,
        inputs: Mapping[str, float],
        *,
        data_good: bool,
    ) -> TwinCycle:
        """One cycle at model time ``t``; the monitor only sees good, fresh data and an
        estimate that is ``ok``.

        Raises :class:`MonitoringError` (the twin unchanged) for a ``t`` that is not finite,
        or earlier than the last time the monitor was fed when it would be fed again; the
        same ``t`` again is skipped (one update per estimate)."""
        t = float(t)
        if not math.isfinite(t):
            raise MonitoringError(f"twin update at t={t!r}: model time must be finite")
        out = TwinCycle()
        drift = self.monitor
        if drift is not None and estimate is not None and estimate.ok and data_good:
            if self._t_last is not None and t < self._t_last:
                raise MonitoringError(
                    f"twin update at t={t!r}: model time went back before the last monitored "
                    f"update (t={self._t_last!r}); the drift monitor is fed in time order only"
                )
            if self._t_last is None or t > self._t_last:
                self._t_last = t
                result = drift.update(t, estimate)
                out.raised, out.cleared = list(result.raised), list(result.cleared)
                self._active = list(result.active)
                self._maintenance = list(result.maintenance)
                self._statistics = dict(result.statistics)
        out.active, out.maintenance = list(self._active), list(self._maintenance)
        out.alarm_word = drift.alarm_word(out.active) if drift is not None else 0
        monitor = out.monitor
        monitor.update({f"chart.{k}": float(v) for k, v in self._statistics.items()})
        # a forecast made at an earlier cycle (bad data since) counts down from then on
        elapsed = max(t - self._t_last, 0.0) if self._t_last is not None else 0.0
        for m in out.maintenance:
            monitor.update(_maintenance_figures(m, elapsed))
        withheld: dict[str, str] = {}
        if drift is not None:
            monitor["alarm.active"] = float(len(out.active))
            monitor["alarm.word"] = float(out.alarm_word)
            withheld = _alarm_withheld(drift, out.active)
        if self.publisher is not None and estimate is not None:
            out.publication = self.publisher.publication(
                estimate, inputs, monitor, withheld=withheld
            )
        return out


def _alarm_withheld(drift: DriftMonitor, active: Sequence[Alarm]) -> dict[str, str]:
    """``alarm.active`` / ``alarm.word`` -> why they are not published, while they would
    say "no drift" without every chart having evaluated a sample (an active alarm is
    published all the same: each alarm it counts is real)."""
    done, charts = drift.evaluated, drift.charts
    if done >= charts or active:
        return {}
    why = f"drift monitor not running yet: {done} of {charts} charts evaluated"
    return {"alarm.active": why, "alarm.word": why}


def _maintenance_figures(m: MaintenanceForecast, elapsed: float) -> dict[str, float]:
    """``maintenance.<parameter>.*`` of one forecast made ``elapsed`` model time ago."""
    prefix = f"maintenance.{m.parameter}"
    out = {
        f"{prefix}.threshold": float(m.threshold),
        f"{prefix}.estimate": float(m.estimate),
        f"{prefix}.slope": float(m.slope),
    }
    times = tuple(max(v - elapsed, 0.0) for v in (m.time_to_threshold, m.low, m.high))
    if m.status == "no trend":  # not in sight: a tag shows its upper limit
        times = (math.inf, math.inf, math.inf)
    elif m.status == "insufficient data":
        times = (math.nan, math.nan, math.nan)
    for name, v in zip(("time_to_threshold", "low", "high"), times, strict=True):
        out[f"{prefix}.{name}"] = float(v)
    return out
