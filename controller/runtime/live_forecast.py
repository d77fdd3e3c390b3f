"""What-if from a running supervisor's live estimate (:meth:`Supervisor.forecast`)."""

from __future__ import annotations

from collections.abc import Sequence

from controller.core.estimate import Estimate
from controller.errors import Problem
from controller.runtime.forecast_files import default_plans
from controller.runtime.site import Site
from controller.runtime.solver_cache import LibraryCache
from controller.twin.forecast import Forecast, forecast, start_from_estimate
from controller.twin.forecast_spec import ForecastError, ForecastSetup, Plan

Live = tuple[float, Estimate, dict[str, float]]


def live_forecast(site: Site, live: Live | None, plans: Sequence[Plan] | None = None) -> Forecast:
    """The batch to its end from ``live`` (the time, estimate and working inputs the loop
    took at the end of its last good cycle) under each plan (default: the MPC's, the PLC's
    local recipe). Raises ForecastError before the first good cycle."""
    if live is None:
        problem = "no estimate yet: the runtime has not completed a good cycle"
        raise ForecastError([Problem(site.name, "forecast", problem, None)])
    t, estimate, inputs = live
    start = start_from_estimate(t, estimate, inputs or site.model.nominal_inputs)
    setup = ForecastSetup(
        site.model, site.controller, site.forecast, site.name, str(site.path), LibraryCache()
    )
    if plans is None:
        plans = default_plans(site.model, site.forecast, site.path)
    return forecast(setup, start, plans)
