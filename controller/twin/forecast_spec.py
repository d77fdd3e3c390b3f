"""What a what-if forecast is asked: the site's ``forecast`` section, the start and the plans.

The config schema of a site's ``forecast:`` section (:class:`ForecastSection`, its
:class:`ForecastCqa` list and the table columns a CQA may not be named after), the names a CQA
may use for a model (:func:`forecast_names`, with the :data:`DERIVED` quantities), where a
forecast starts (:class:`ForecastStart`), the plans to compare (:class:`Plan`, with the check
of their input tables) and everything else the computation is handed
(:class:`ForecastSetup`: the model, the controller config, the section, a compiler).

Pure data and checks: no I/O. :mod:`controller.twin.forecast` computes the forecast;
:mod:`controller.runtime.forecast_files` reads plans, recipes and historians.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Literal

import numpy as np
from pydantic import model_validator

from controller.config import ControllerConfig, Recipe
from controller.configfile import Finite, PositiveFinite, Strict
from controller.core.jit import LibraryBuilder
from controller.errors import PharmaTwinError, Problem, unknown_name
from plant_models import PlantModel

__all__ = [
    "DERIVED",
    "END_TIME",
    "FORECAST_COLUMNS",
    "ForecastCqa",
    "ForecastError",
    "ForecastSection",
    "ForecastSetup",
    "ForecastStart",
    "Plan",
    "derived_quantities",
    "forecast_names",
    "table_problems",
]

#: The CQA expression that stands for the batch time at which the forecast ends.
END_TIME = "end_time"
#: Columns of a forecast's table besides the CQAs (:meth:`controller.twin.forecast.Forecast.table`).
FORECAST_COLUMNS = ("plan", "kind", "end_time", "finished", "status", "notes")

FloatArray = np.ndarray
Series = Mapping[str, FloatArray]


class ForecastError(PharmaTwinError):
    """A forecast cannot be made as asked; ``problems`` name the file, key and value."""

    def __init__(self, problems: Iterable[Problem]) -> None:
        self.problems: tuple[Problem, ...] = tuple(problems)
        super().__init__("; ".join(str(p) for p in self.problems) or "forecast error")


# ---------------------------------------------------------------------- the site's section
class ForecastCqa(Strict):
    """One critical quality attribute of a forecast: an expression's value at the end, or its
    largest or smallest value over the forecast.

    ``expression`` names a state, algebraic state, input or model expression, a derived
    quantity (:data:`DERIVED`, e.g. ``fines_ratio``), or ``end_time``: the batch time at which
    the forecast ends (the batch end) in the model's time unit.
    """

    name: str
    expression: str
    at: Literal["end", "max", "min"] = "end"
    #: the acceptable range (either end may be left out): a plan whose value falls outside,
    #: or cannot be told, says so in its status; a CQA with neither is shown, not judged
    lower: Finite | None = None
    upper: Finite | None = None

    @model_validator(mode="after")
    def _ordered(self) -> ForecastCqa:
        if self.lower is not None and self.upper is not None and self.lower > self.upper:
            raise ValueError(f"lower {self.lower:g} is above upper {self.upper:g}")
        return self

    @property
    def judged(self) -> bool:
        return self.lower is not None or self.upper is not None

    def limits(self, digits: int = 7) -> str:
        """``>= lower``, ``<= upper``, ``in [lower, upper]``, or "not judged"."""
        if self.lower is not None and self.upper is not None:
            return f"in [{self.lower:.{digits}g}, {self.upper:.{digits}g}]"
        if self.lower is not None:
            return f">= {self.lower:.{digits}g}"
        return f"<= {self.upper:.{digits}g}" if self.upper is not None else "not judged"

    def outside(self, value: float) -> str | None:
        """Why ``value`` is not acceptable; None when it is, or when nothing is judged."""
        if not self.judged:
            return None
        if not math.isfinite(value):
            return f"{self.name} cannot be told ({value}), limit {self.limits()}"
        low = self.lower is not None and value < self.lower
        if low or (self.upper is not None and value > self.upper):
            # as many digits as tell the value and the limits apart ("3.75 not <= 3.75" did not)
            shown = {float(v) for v in (value, self.lower, self.upper) if v is not None}
            d = next(
                (d for d in range(7, 18) if len({f"{v:.{d}g}" for v in shown}) == len(shown)), 17
            )
            return f"{self.name} {value:.{d}g} not {self.limits(d)}"
        return None


class ForecastSection(Strict):
    """How ``pharmatwin forecast`` predicts this site's batch (times in the model's unit).

    The batch ends when the model says it is finished (e.g. primary drying complete), or at
    ``batch_duration`` since the batch start, whichever comes first; ``max_duration`` is a
    hard cap. For a ``continuous`` process both durations count from the forecast start (the
    forecast horizon) instead of the batch start. ``local_recipe``: the PLC's local recipe, a
    scenario file with a ``recipe:`` key or a bare recipe file, relative to the site file.
    """

    local_recipe: str | None = None
    batch_duration: PositiveFinite | None = None
    max_duration: PositiveFinite
    continuous: bool = False
    cqas: tuple[ForecastCqa, ...] = ()

    @model_validator(mode="after")
    def _consistent(self) -> ForecastSection:
        if self.batch_duration is not None and self.batch_duration > self.max_duration:
            raise ValueError(
                f"batch_duration {self.batch_duration} is above max_duration {self.max_duration}"
            )
        names = [c.name for c in self.cqas]
        repeated = sorted({n for n in names if names.count(n) > 1})
        if repeated:
            raise ValueError(f"CQA names must be unique; repeated: {repeated}")
        reserved = sorted(set(names) & set(FORECAST_COLUMNS))
        if reserved:
            raise ValueError(f"CQA names {reserved} are taken by the forecast table's columns")
        return self


# ---------------------------------------------------------------------- derived quantities
def _fines_ratio(states: Series) -> FloatArray:
    """Volume fraction of nucleated crystals: mu3n / (mu3 + mu3n) [-]."""
    total = states["mu3"] + states["mu3n"]
    return np.divide(states["mu3n"], total, out=np.full_like(total, math.nan), where=total > 0)


#: Quantities the forecast computes from the states when the model has no expression of the
#: name: model name -> name -> function of the state trajectories.
DERIVED: Mapping[str, Mapping[str, Callable[[Series], FloatArray]]] = {
    "crystallizer": {"fines_ratio": _fines_ratio},
}


def derived_quantities(model: PlantModel) -> dict[str, Callable[[Series], FloatArray]]:
    """The :data:`DERIVED` quantities of ``model`` that it has no expression of."""
    return {n: f for n, f in DERIVED.get(model.name, {}).items() if n not in model.expression_names}


def forecast_names(model: PlantModel) -> set[str]:
    """Every name a forecast CQA may use for ``model`` (see :class:`ForecastCqa`)."""
    return {
        *model.state_names,
        *model.algebraic_names,
        *model.input_names,
        *model.expression_names,
        *derived_quantities(model),
        END_TIME,
    }


# ---------------------------------------------------------------------- start, plans, setup
@dataclass(frozen=True)
class ForecastStart:
    """Where a forecast starts: batch time ``t`` (model unit), states, every parameter value
    (estimated ones replaced by their estimates; missing ones take the plant file's value)
    and the inputs in place."""

    t: float
    states: Mapping[str, float]
    parameters: Mapping[str, float]
    inputs: Mapping[str, float]


@dataclass(frozen=True)
class Plan:
    """One what-if: the MPC, or an input table (``recipe``: batch time; ``table``: either)."""

    name: str
    kind: Literal["mpc", "recipe", "table"]
    recipe: Recipe | None = None
    time_base: Literal["now", "batch"] = "batch"


@dataclass(frozen=True)
class ForecastSetup:
    """What a forecast computes with: the site's ``model`` (its MPC's), the controller config
    (sample time, input limits, the MPC), the site's forecast ``section`` (None: the site has
    none, and :func:`controller.twin.forecast.forecast` says so), the site's ``name`` (shown
    in the result), ``source`` (the site file, named in problems and by the MPC) and
    ``compile``: the builder of the MPC's compiled solver library (None: uncompiled)."""

    model: PlantModel
    controller: ControllerConfig
    section: ForecastSection | None
    name: str = ""
    source: str = "<site>"
    compile: LibraryBuilder | None = None


def table_problems(recipe: Recipe, model: PlantModel, source: str, key: str) -> list[Problem]:
    """A plan's input table: every row names the same known inputs (at least one)."""
    problems: list[Problem] = []
    first = set(recipe.table[0].inputs)
    allowed = list(model.input_names)
    if not first:
        problems.append(
            Problem(source, f"{key}table.0.inputs", f"name at least one of {allowed}", {})
        )
    for j, row in enumerate(recipe.table):
        for name in row.inputs:
            if name not in allowed:
                where = f"{key}table.{j}.inputs.{name}"
                problems.append(Problem(source, where, unknown_name("input", name, allowed), name))
        if set(row.inputs) != first:
            problems.append(
                Problem(
                    source,
                    f"{key}table.{j}.inputs",
                    f"every row must name the same inputs as the first: {sorted(first)}",
                    sorted(row.inputs),
                )
            )
    return problems
