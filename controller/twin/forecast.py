"""What-if batch forecasts: from the live estimate, how does the batch end under each plan?

From a :class:`ForecastStart` (the estimated states and parameters at batch time ``t0``, and
the inputs in place) the batch is simulated to its end under several :class:`Plan`\\ s:

* ``mpc``: the site's MPC in closed loop on the model ("keep the twin in control"): a
  :class:`~controller.core.mpc.ModelPredictiveController` started bumplessly from the inputs in
  place, its moves passed through the same safety limits as on the plant (a failed solve holds
  the last inputs, and is counted in the plan's notes), fed the simulated state (no noise) and
  the start's parameters;
* ``recipe``: an input table in batch time, e.g. the PLC's local recipe;
* ``table``: an alternative plan, an input table in time since the forecast start
  (``time_base: now``) or in batch time (``batch``); inputs it does not name hold their value
  at the start.

Simulation. The exact (non-smoothed) plant model with the start's parameters, no noise and no
disturbance, is integrated with its CasADi integrator (cvodes; idas for the DAEs, whose
algebraic states are re-solved at every sample from the last values, so the guess stays warm)
at the controller's sample time. Inputs are held over each sample: a ``linear`` table at its
mean over the sample (the PLC follows a ramp continuously; the mean delivers the same amount),
a ``previous``-value table at the value in force at the start of the sample. Table inputs are
clipped to the controller config's input limits (what the PLC would take): the clipped values
are the ones reported, and the notes say how often each input was clipped. A step that takes
the model out of its validity domain (where its equations hold) fails the plan there, as the
HIL's true plant stops at a plant fault: the states are never clipped back.

Batch end. The batch ends when the model says it is finished (``PlantModel.finished``, e.g.
primary drying complete), or at ``forecast.batch_duration`` since the batch start, whichever
comes first; ``forecast.max_duration`` is a hard cap (``finished`` is then False). For a
``continuous`` site both durations count from the forecast start. Inside the sample in which
the model finishes, the end is located by bisection to ``sample_time / 2**7``.

CQAs. Each of the site's ``forecast.cqas`` is an expression's value at the end (``at: end``) or its
largest/smallest value over the forecast (``max``/``min``; the start, every sample and the end). A
CQA with ``lower``/``upper`` limits is judged: a plan whose value falls outside (or cannot be told)
has the status ``outside limits`` naming it; one without is shown, not judged. Expressions are
states, algebraic states, inputs, model expressions (outputs included), derived quantities
(:data:`DERIVED`, e.g. the crystallizer's ``fines_ratio`` = ``mu3n / (mu3 + mu3n)`` when the model
has none), or ``end_time``: the batch time of the end. Every value at a time point is evaluated
with the input applied from that point on (the last input at the end). Times are batch times in the
model's time unit; values are physical.

Nothing ahead. From a start where the batch has already ended (the model finished, or at or
past its duration), no plan is applied: each is reported ``not applied`` (its ``not_applied``
says why), with the start point alone and NaN CQAs, never as an ``ok`` plan.

Failure behaviour. A plan whose simulation fails (integrator or algebraic solver error,
non-finite states, an MPC that cannot be built) is reported with ``failed`` set, its
trajectory up to the failure and NaN CQAs; the other plans are not affected. Bad input (a
start missing a state, an unknown plan input, a plan or recipe file that does not validate, a
historian without an estimate) raises :class:`ForecastError`, whose problems name the file,
key and value.

Modules. :mod:`controller.twin.forecast_spec` holds the site's ``forecast`` section, the start,
the plans and the :class:`~controller.twin.forecast_spec.ForecastSetup` (model, controller
config, section, compiler) the computation is handed; :mod:`controller.twin.forecast_sim` the
simulation and the plans' policies; this module the result and :func:`forecast`. None of them
does I/O: :mod:`controller.runtime.forecast_files` reads plans, recipes and historians, and
:mod:`controller.runtime.forecast_report` writes the JSON and the plot.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from controller.core.estimate import Estimate
from controller.errors import PharmaTwinError, Problem, unknown_name
from controller.jsonfile import json_safe
from controller.twin.forecast_sim import (
    FloatArray,
    Simulator,
    Trajectory,
    columns,
    evaluate,
    nothing_ahead,
    policy,
    simulate,
    start_point,
)
from controller.twin.forecast_spec import (
    END_TIME,
    ForecastCqa,
    ForecastError,
    ForecastSection,
    ForecastSetup,
    ForecastStart,
    Plan,
    table_problems,
)
from plant_models import PlantModel

__all__ = ["Forecast", "PlanForecast", "forecast", "start_from_estimate"]


# ---------------------------------------------------------------------- the result
@dataclass(frozen=True)
class PlanForecast:
    """One plan's predicted batch: arrays over the time points ``t`` (start, every sample,
    end); ``inputs[name][k]`` is applied from ``t[k]`` on. ``expressions`` holds the model's
    expressions (outputs included), its algebraic states and the derived quantities."""

    plan: Plan
    t: np.ndarray
    states: dict[str, np.ndarray]
    inputs: dict[str, np.ndarray]
    expressions: dict[str, np.ndarray]
    cqas: dict[str, float]
    end_time: float
    finished: bool
    failed: str | None
    notes: tuple[str, ...] = ()
    not_applied: str | None = None
    #: the CQAs outside their limits (:meth:`ForecastCqa.outside`), each with its value
    outside: tuple[str, ...] = ()

    @property
    def status(self) -> str:
        """``failed: <why>``, ``not applied: <why>`` (no input of the plan was applied:
        nothing was left to forecast from the start), ``outside limits: <which>`` (a CQA
        predicted outside its limits), or ``ok`` (forecast, every judged CQA within)."""
        if self.failed:
            return "failed: " + self.failed
        if self.not_applied:
            return "not applied: " + self.not_applied
        if self.outside:
            return "outside limits: " + "; ".join(self.outside)
        return "ok"


@dataclass(frozen=True)
class Forecast:
    """Every plan's forecast from one start."""

    start: ForecastStart
    plans: list[PlanForecast]
    time_unit: str = ""
    cqas: tuple[ForecastCqa, ...] = ()
    site: str = ""

    def table(self) -> list[dict[str, Any]]:
        """One row per plan: name, kind, every CQA, end time, finished, status, notes."""
        rows = []
        for pf in self.plans:
            row: dict[str, Any] = {"plan": pf.plan.name, "kind": pf.plan.kind}
            row.update(pf.cqas)
            row["end_time"] = pf.end_time
            row["finished"] = pf.finished
            row["status"] = pf.status
            row["notes"] = "; ".join(pf.notes)
            rows.append(row)
        return rows

    def to_dict(self) -> dict[str, Any]:
        """Everything as JSON-ready data (non-finite numbers become None)."""
        s = self.start
        return json_safe(
            {
                "site": self.site,
                "time_unit": self.time_unit,
                "start": {
                    "t": float(s.t),
                    "states": dict(s.states),
                    "parameters": dict(s.parameters),
                    "inputs": dict(s.inputs),
                },
                "cqas": [c.model_dump() for c in self.cqas],
                "table": self.table(),
                "plans": [_plan_dict(pf) for pf in self.plans],
            }
        )


def _plan_dict(pf: PlanForecast) -> dict[str, Any]:
    return {
        "name": pf.plan.name,
        "kind": pf.plan.kind,
        "time_base": pf.plan.time_base,
        "cqas": dict(pf.cqas),
        "end_time": pf.end_time,
        "finished": pf.finished,
        "failed": pf.failed,
        "not_applied": pf.not_applied,
        "outside": list(pf.outside),
        "status": pf.status,
        "notes": list(pf.notes),
        "t": pf.t,
        "inputs": dict(pf.inputs),
        "states": dict(pf.states),
        "expressions": dict(pf.expressions),
    }


def start_from_estimate(t: float, estimate: Estimate, inputs: Mapping[str, float]) -> ForecastStart:
    """A start from an :class:`~controller.core.estimate.Estimate` at batch time ``t``."""
    return ForecastStart(
        float(t),
        {k: float(v) for k, v in estimate.states.items()},
        {k: float(v) for k, v in estimate.parameters.items()},
        {k: float(v) for k, v in inputs.items()},
    )


# ---------------------------------------------------------------------- computing
def _cqa_values(
    cqas: Sequence[ForecastCqa], series: Mapping[str, FloatArray], end_time: float
) -> dict[str, float]:
    out: dict[str, float] = {}
    for c in cqas:
        if c.expression == END_TIME:
            out[c.name] = float(end_time)
            continue
        arr = series[c.expression]
        if not len(arr):
            out[c.name] = math.nan
        elif c.at == "end":
            out[c.name] = float(arr[-1])
        else:
            out[c.name] = float(np.max(arr) if c.at == "max" else np.min(arr))
    return out


def _not_applied(
    fc: ForecastSection, sim: Simulator, start: ForecastStart, plan: Plan, why: str
) -> PlanForecast:
    """A plan none of whose inputs was applied: the start point alone, no CQA attributed."""
    model = sim.model
    traj = start_point(sim, start)
    return PlanForecast(
        plan,
        np.array(traj.t, dtype=float),
        columns(model.state_names, traj.x),
        columns(model.input_names, traj.u),
        evaluate(sim, traj),
        {c.name: math.nan for c in fc.cqas},
        float(start.t),
        False,
        None,
        (),
        why,
    )


def _run_plan(
    setup: ForecastSetup, fc: ForecastSection, sim: Simulator, start: ForecastStart, plan: Plan
) -> PlanForecast:
    model = sim.model
    failed: str | None = None
    notes: list[str] = []
    dt = setup.controller.sample_time
    ended = nothing_ahead(sim, start, dt, fc)
    if ended is not None:
        return _not_applied(fc, sim, start, plan, ended)
    try:
        inputs_of = policy(setup, plan, start)
    except (PharmaTwinError, RuntimeError) as exc:  # e.g. an MPC that cannot be built
        traj, finished, failed = Trajectory(), False, f"cannot start the plan: {exc}"
    else:
        traj, finished, failed = simulate(sim, inputs_of, start, dt, fc)
        notes = inputs_of.notes()
        if failed is None and len(traj.t) < 2:  # not one step: nothing of the plan applied
            return _not_applied(fc, sim, start, plan, "nothing left to forecast (no step made)")
    states = columns(model.state_names, traj.x)
    inputs = columns(model.input_names, traj.u)
    expressions = evaluate(sim, traj) if traj.t else {}
    end_time = traj.t[-1] if traj.t else start.t
    outside: tuple[str, ...] = ()
    if failed is None:
        cqas = _cqa_values(fc.cqas, {**states, **inputs, **expressions}, end_time)
        outside = tuple(w for c in fc.cqas if (w := c.outside(cqas[c.name])) is not None)
    else:
        cqas = {c.name: math.nan for c in fc.cqas}
    return PlanForecast(
        plan,
        np.array(traj.t, dtype=float),
        states,
        inputs,
        expressions,
        cqas,
        float(end_time),
        finished and failed is None,
        failed,
        tuple(notes),
        outside=outside,
    )


def _finite(v: object) -> bool:
    try:
        return math.isfinite(float(v))  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return False


def _check_start(model: PlantModel, start: ForecastStart) -> list[Problem]:
    where = "<forecast start>"
    problems = []
    for group, names in (
        ("states", model.state_names),
        ("inputs", model.input_names),
    ):
        values = getattr(start, group)
        for name in names:
            v = values.get(name)
            if not _finite(v):
                problems.append(Problem(where, f"{group}.{name}", "missing or not finite", v))
    for name, v in start.parameters.items():
        if name not in model.parameter_names:
            why = unknown_name("parameter", name, model.parameter_names)
            problems.append(Problem(where, f"parameters.{name}", why, name))
        elif not _finite(v):
            problems.append(Problem(where, f"parameters.{name}", "not finite", v))
    if not _finite(start.t):
        problems.append(Problem(where, "t", "not finite", start.t))
    return problems


def _check_plans(model: PlantModel, plans: Sequence[Plan]) -> list[Problem]:
    problems = []
    names = [p.name for p in plans]
    for i, plan in enumerate(plans):
        if names.count(plan.name) > 1:
            problems.append(Problem("<plans>", f"{i}.name", "plan names must be unique", plan.name))
        if plan.kind != "mpc" and plan.recipe is None:
            problems.append(
                Problem("<plans>", f"{i}.recipe", f"a {plan.kind} plan needs a table", None)
            )
        if plan.recipe is not None:
            problems += table_problems(plan.recipe, model, f"<plan {plan.name}>", "")
    return problems


def forecast(setup: ForecastSetup, start: ForecastStart, plans: Sequence[Plan]) -> Forecast:
    """Predict the batch from ``start`` under every plan (see the module docstring).

    Raises ForecastError when the setup has no forecast section, or the start or a plan is
    malformed; a plan whose simulation fails is reported with ``failed`` set instead.
    """
    fc = setup.section
    if fc is None:
        raise ForecastError(
            [Problem(setup.source, "forecast", "the site has no forecast section", None)]
        )
    problems = _check_start(setup.model, start) + _check_plans(setup.model, plans)
    if problems:
        raise ForecastError(problems)
    exact = type(setup.model)(setup.model.parameter_set)  # the plant's equations, not smoothed
    sim = Simulator(exact, {**exact.parameters, **start.parameters})
    full = ForecastStart(start.t, start.states, sim.parameters, start.inputs)
    results = [_run_plan(setup, fc, sim, full, plan) for plan in plans]
    return Forecast(full, results, exact.time_unit, fc.cqas, setup.name)
