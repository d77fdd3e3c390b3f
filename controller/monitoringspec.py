"""The ``monitoring:`` section of a controller config: drift charts and maintenance forecasts.

Schema only; the statistics these specs configure are :mod:`controller.twin.monitoring`'s.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import ConfigDict, Field, model_validator

from controller.configfile import Finite, PositiveFinite, Strict

__all__ = ["ChartSpec", "MaintenanceSpec", "MonitoringSpec"]


_EWMA_ONLY = frozenset({"lam", "limit"})


_CUSUM_ONLY = frozenset({"k", "h"})


class ChartSpec(Strict):
    """One drift chart (see :mod:`controller.twin.monitoring` for the statistics and defaults).

    ``signal`` is a measured output (a residual chart on ``innovation / innovation_std``) or
    an estimated parameter (a parameter chart on ``(estimate - reference) / sigma``, with
    ``sigma`` in physical units or ``sigma_relative`` times ``|reference|``: exactly one).
    ``lambda``/``limit`` apply to EWMA charts, ``k``/``h`` to CUSUM charts (sigma units);
    ``warmup`` is in model time units after the monitor's first update.
    """

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)  # lam/lambda

    signal: Annotated[str, Field(min_length=1)]
    chart: Literal["ewma", "cusum"]
    lam: Annotated[float, Field(alias="lambda", gt=0, le=1, allow_inf_nan=False)] = 0.05
    limit: PositiveFinite = 4.8
    k: Annotated[float, Field(ge=0, allow_inf_nan=False)] = 0.5
    h: PositiveFinite = 13.0
    sides: Literal["both", "high", "low"] = "both"
    reference: Finite | None = None
    sigma: PositiveFinite | None = None
    sigma_relative: PositiveFinite | None = None
    warmup: Annotated[float, Field(ge=0, allow_inf_nan=False)] = 0.0
    #: parameter charts: learn the reference as the mean estimate over this long (model time)
    #: after the warm-up: drift is then a change from this run's own start (the commissioned
    #: plant), not from the plant file's value
    baseline: Annotated[float, Field(gt=0, allow_inf_nan=False)] | None = None
    description: str = ""

    @model_validator(mode="after")
    def _consistent(self) -> ChartSpec:
        foreign = _CUSUM_ONLY if self.chart == "ewma" else _EWMA_ONLY
        fields = type(self).model_fields
        changed = [f for f in foreign if getattr(self, f) != fields[f].default]
        given = sorted("lambda" if f == "lam" else f for f in changed)
        if given:  # a default (as in a dumped config) is accepted: it changes nothing
            other = "cusum" if self.chart == "ewma" else "ewma"
            raise ValueError(f"{given} apply to {other} charts only (this chart is {self.chart})")
        if self.sigma is not None and self.sigma_relative is not None:
            raise ValueError("give 'sigma' or 'sigma_relative', not both")
        if self.baseline is not None and self.reference is not None:
            raise ValueError("give 'reference' or 'baseline' (learn it), not both")
        return self


class MaintenanceSpec(Strict):
    """Forecast when an estimated parameter crosses a maintenance threshold.

    ``threshold`` is in the parameter's unit; ``window`` (model time units) is the history
    used for the trend fit; ``confidence`` is the two-sided level of the crossing interval.
    """

    parameter: Annotated[str, Field(min_length=1)]
    threshold: Finite
    direction: Literal["falling", "rising"]
    window: PositiveFinite
    min_points: Annotated[int, Field(ge=3, le=1_000_000)] = 10
    confidence: Annotated[float, Field(gt=0, lt=1, allow_inf_nan=False)] = 0.9
    label: str = ""


class MonitoringSpec(Strict):
    """Drift charts and maintenance forecasts run on every estimate (controller.twin.monitoring).

    An active alarm clears when its statistic falls below ``clear_fraction`` times its limit.
    ``alarm_tag`` names the tag that carries the alarm state to the PLC/SCADA.
    """

    charts: tuple[ChartSpec, ...] = ()
    maintenance: tuple[MaintenanceSpec, ...] = ()
    alarm_tag: Annotated[str, Field(min_length=1)] | None = None
    clear_fraction: Annotated[float, Field(gt=0, lt=1, allow_inf_nan=False)] = 0.5
