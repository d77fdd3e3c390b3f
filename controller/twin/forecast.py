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
clipped to the controller config's input limits: the clipped values are the ones reported,
and the notes say how often each input was clipped. After each step the states are clipped
into their physical bounds, as the HIL plant does.

Batch end. The batch ends when the model says it is finished (``PlantModel.finished``, e.g.
primary drying complete), or at ``forecast.batch_duration`` since the batch start, whichever
comes first; ``forecast.max_duration`` is a hard cap (``finished`` is then False). For a
``continuous`` site both durations count from the forecast start. Inside the sample in which
the model finishes, the end is located by bisection to ``sample_time / 2**7``.

CQAs. Each of the site's ``forecast.cqas`` is an expression's value at the end (``at: end``)
or its largest/smallest value over the forecast (``max``/``min``; the start, every sample and
the end). Expressions are states, algebraic states, inputs, model expressions (outputs
included), derived quantities (:data:`DERIVED`, e.g. the crystallizer's ``fines_ratio`` =
``mu3n / (mu3 + mu3n)`` when the model has none), or ``end_time``: the batch time of the end.
Every value at a time point is evaluated with the input applied from that point on (the last
input at the end). Times are batch times in the model's time unit; values are physical.

Failure behaviour. A plan whose simulation fails (integrator or algebraic solver error,
non-finite states, an MPC that cannot be built) is reported with ``failed`` set, its
trajectory up to the failure and NaN CQAs; the other plans are not affected. Bad input (a
start missing a state, an unknown plan input, a plan or recipe file that does not validate, a
historian without an estimate) raises :class:`ForecastError`, whose problems name the file,
key and value.

I/O. The maths (:func:`forecast` and what it calls) does none. The last section reads
historians, plan and recipe files, and writes the JSON and the plot.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import casadi as ca
import numpy as np

from controller.config import Recipe, parse, read_yaml, recipe_input_problems
from controller.core.estimator import Estimate
from controller.core.mpc import ModelPredictiveController
from controller.core.pipeline import input_limits
from controller.core.recipe import RecipePlayer
from controller.core.safety import SafetyFilter
from controller.errors import ConfigError, PharmaTwinError, Problem
from controller.jsonfile import json_safe
from controller.jsonfile import write_json as write_json_file
from controller.runtime.historian import CycleRecord, HistorianError, SqliteHistorian
from controller.runtime.site import ForecastCqa, ForecastSection, Site
from plant_models import PlantModel, Role

__all__ = [
    "DERIVED",
    "END_TIME",
    "Forecast",
    "ForecastError",
    "ForecastStart",
    "Plan",
    "PlanForecast",
    "default_plans",
    "forecast",
    "forecast_names",
    "load_plan",
    "load_recipe",
    "plot_forecast",
    "recipe_problems",
    "start_from_estimate",
    "start_from_historian",
    "write_json",
]

#: The CQA expression that stands for the batch time at which the forecast ends.
END_TIME = "end_time"
#: Halvings of the last sample that locate the batch end (resolution sample_time / 128).
BISECTIONS = 7
FloatArray = np.ndarray
Series = Mapping[str, FloatArray]


class ForecastError(PharmaTwinError):
    """A forecast cannot be made as asked; ``problems`` name the file, key and value."""

    def __init__(self, problems: Iterable[Problem]) -> None:
        self.problems: tuple[Problem, ...] = tuple(problems)
        super().__init__("; ".join(str(p) for p in self.problems) or "forecast error")


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


def _derived(model: PlantModel) -> dict[str, Callable[[Series], FloatArray]]:
    return {n: f for n, f in DERIVED.get(model.name, {}).items() if n not in model.expression_names}


def forecast_names(model: PlantModel) -> set[str]:
    """Every name a forecast CQA may use for ``model`` (see the module docstring)."""
    return {
        *model.state_names,
        *model.algebraic_names,
        *model.input_names,
        *model.expression_names,
        *_derived(model),
        END_TIME,
    }


# ---------------------------------------------------------------------- the API's data
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
            row["status"] = "failed: " + pf.failed if pf.failed else "ok"
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
        "notes": list(pf.notes),
        "t": pf.t,
        "inputs": dict(pf.inputs),
        "states": dict(pf.states),
        "expressions": dict(pf.expressions),
    }


def start_from_estimate(t: float, estimate: Estimate, inputs: Mapping[str, float]) -> ForecastStart:
    """A start from an :class:`~controller.core.estimator.Estimate` at batch time ``t``."""
    return ForecastStart(
        float(t),
        {k: float(v) for k, v in estimate.states.items()},
        {k: float(v) for k, v in estimate.parameters.items()},
        {k: float(v) for k, v in inputs.items()},
    )


# ---------------------------------------------------------------------- simulation
class _SimulationFailed(Exception):
    """The model could not be integrated or solved; the plan fails with this message."""


def _solver_message(exc: Exception) -> str:
    """The informative last line of a CasADi error (the rest is its call stack)."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    last = lines[-1] if lines else type(exc).__name__
    return last.split(": ", 1)[1] if last.startswith(".../") and ": " in last else last


class _Simulator:
    """The exact model with fixed parameters: steps of any length, algebraic solves, ends."""

    def __init__(self, model: PlantModel, parameters: Mapping[str, float]) -> None:
        self.model = model
        self.parameters = dict(parameters)
        self.p = model.parameter_vector(parameters)
        self._steps: dict[float, ca.Function] = {}
        self._alg = model.algebraic_solver()
        self._lo = np.array([model.variable(n).lower for n in model.state_names])
        self._hi = np.array([model.variable(n).upper for n in model.state_names])

    def step(
        self, x: FloatArray, z: FloatArray, u: FloatArray, h: float, t: float
    ) -> tuple[FloatArray, FloatArray]:
        """Hold ``u`` over ``h`` from state ``x`` (algebraic guess ``z``) at time ``t``."""
        key = round(h, 12)
        if key not in self._steps:
            self._steps[key] = self.model.integrator(h)
        try:
            xf, zf = self._steps[key](x, z, u, self.p)
        except RuntimeError as exc:
            raise _SimulationFailed(
                self._where(t, u, f"integration failed: {_solver_message(exc)}")
            ) from exc
        x_new = np.clip(np.asarray(xf, dtype=float).ravel(), self._lo, self._hi)
        z_new = np.asarray(zf, dtype=float).ravel()
        if not (np.all(np.isfinite(x_new)) and np.all(np.isfinite(z_new))):
            raise _SimulationFailed(self._where(t, u, "integration gave non-finite values"))
        return x_new, z_new

    def consistent(self, x: FloatArray, z: FloatArray, u: FloatArray, t: float) -> FloatArray:
        """Algebraic states consistent with ``x`` and ``u`` (the guess ``z`` kept warm)."""
        if self._alg is None:
            return z
        try:
            z_new = np.asarray(self._alg(z, x, u, self.p), dtype=float).ravel()
        except RuntimeError as exc:
            raise _SimulationFailed(
                self._where(t, u, f"algebraic solve failed: {_solver_message(exc)}")
            ) from exc
        if not np.all(np.isfinite(z_new)):
            raise _SimulationFailed(self._where(t, u, "algebraic solve gave non-finite values"))
        return z_new

    def finished(self, x: FloatArray) -> bool:
        return bool(self.model.finished(self.model.as_dict(Role.STATE, x), self.parameters))

    def _where(self, t: float, u: FloatArray, what: str) -> str:
        inputs = {k: round(v, 6) for k, v in self.model.as_dict(Role.INPUT, u).items()}
        return f"t={t:.6g} {self.model.time_unit}, inputs {inputs}: {what}"


class _Inputs:
    """A plan as a function of (time, sample length, state) -> inputs, plus its notes."""

    def __call__(self, t: float, h: float, x: Mapping[str, float]) -> dict[str, float]:
        raise NotImplementedError

    def notes(self) -> list[str]:
        return []


def _mean_over(times: FloatArray, values: FloatArray, a: float, b: float) -> float:
    """Mean over [a, b] of the piecewise-linear interpolant of a table (held at its ends)."""
    if b <= a:
        return float(np.interp(a, times, values))
    pts = np.concatenate([[a], times[(times > a) & (times < b)], [b]])
    vals = np.interp(pts, times, values)
    return float(np.sum((vals[1:] + vals[:-1]) / 2 * np.diff(pts)) / (b - a))


class _TableInputs(_Inputs):
    """A table (recipe or plan) at ``t - offset``; unnamed inputs hold; clipped to the limits.

    ``linear`` tables hold each sample at the table's mean over the sample (the PLC follows a
    ramp continuously; the mean delivers the same amount), ``previous`` ones at the value in
    force at the start of the sample.
    """

    def __init__(self, site: Site, plan: Plan, start: ForecastStart) -> None:
        if plan.recipe is None:
            raise ForecastError(
                [Problem("<plan>", f"plans.{plan.name}.recipe", "a table plan needs a table", None)]
            )
        model = site.model
        named = tuple(n for n in model.input_names if n in plan.recipe.table[0].inputs)
        self._linear = plan.recipe.interpolation == "linear"
        self._player = RecipePlayer(plan.recipe, named)
        self._times = np.array([row.t for row in plan.recipe.table], dtype=float)
        self._values = {
            n: np.array([row.inputs[n] for row in plan.recipe.table], dtype=float) for n in named
        }
        self._offset = start.t if plan.time_base == "now" else 0.0
        self._held = {n: float(start.inputs[n]) for n in model.input_names if n not in named}
        self._limits = {n: (s.lower, s.upper) for n, s in site.controller.inputs.items()}
        self._clipped = dict.fromkeys(named, 0)

    def _wanted(self, t: float, h: float) -> dict[str, float]:
        a = max(t - self._offset, 0.0)
        if not self._linear:
            return self._player.inputs_at(a + 1e-9 * h)  # a row at t applies from t on
        b = max(t + h - self._offset, 0.0)
        return {n: _mean_over(self._times, v, a, b) for n, v in self._values.items()}

    def __call__(self, t: float, h: float, x: Mapping[str, float]) -> dict[str, float]:
        out = dict(self._held)
        for name, value in self._wanted(t, h).items():
            lo, hi = self._limits[name]
            out[name] = min(max(value, lo), hi)
            if out[name] != value:
                self._clipped[name] += 1
        return out

    def notes(self) -> list[str]:
        return [
            f"{name} clipped to the controller's limits {list(self._limits[name])} "
            f"in {count} sample(s)"
            for name, count in self._clipped.items()
            if count
        ]


class _MpcInputs(_Inputs):
    """The site's MPC through the safety limits, started bumplessly from the inputs in place."""

    def __init__(self, site: Site, start: ForecastStart) -> None:
        cfg = site.controller
        self._mpc = ModelPredictiveController(cfg, site.model, str(site.path))
        self._safety = SafetyFilter(input_limits(cfg))
        now = {n: float(start.inputs[n]) for n in site.model.input_names}
        self._safety.reset(now)
        self._mpc.reset(now)
        self._params = dict(start.parameters)
        self._failed: list[str] = []
        self._solves = 0

    def __call__(self, t: float, h: float, x: Mapping[str, float]) -> dict[str, float]:
        decision = self._mpc.step(t, x, self._params, u_prev=dict(self._safety.last))
        self._solves += 1
        if not decision.ok:
            self._failed.append(f"t={t:.4g}: {decision.status.value} {decision.return_status}")
        self._safety.step(dict(decision.inputs) or None, solve_ok=decision.ok)
        return dict(self._safety.last)

    def notes(self) -> list[str]:
        if not self._failed:
            return [f"{self._solves} MPC solves, none failed"]
        return [
            f"{len(self._failed)} of {self._solves} MPC solves failed (inputs held); "
            f"first: {self._failed[0]}"
        ]


@dataclass
class _Trajectory:
    """Points of a simulation so far (lists, one entry per time point)."""

    t: list[float] = field(default_factory=list)
    x: list[FloatArray] = field(default_factory=list)
    z: list[FloatArray] = field(default_factory=list)
    u: list[FloatArray] = field(default_factory=list)

    def add(self, t: float, x: FloatArray, z: FloatArray, u: FloatArray) -> None:
        self.t.append(t)
        self.x.append(x)
        self.z.append(z)
        self.u.append(u)


def _limits(fc: ForecastSection, t0: float) -> tuple[float, float]:
    """(time at which the batch ends by duration, hard cap), in batch time."""
    base = t0 if fc.continuous else 0.0
    by_duration = base + fc.batch_duration if fc.batch_duration is not None else math.inf
    return by_duration, base + fc.max_duration


def _simulate(
    sim: _Simulator,
    policy: _Inputs,
    start: ForecastStart,
    dt: float,
    fc: ForecastSection,
) -> tuple[_Trajectory, bool, str | None]:
    """Run one plan to the batch end; returns the trajectory, finished, failure (or None)."""
    model = sim.model
    t_batch, t_cap = _limits(fc, start.t)
    t_end = min(t_batch, t_cap)
    eps = 1e-9 * dt
    t = start.t
    x = model.vector(Role.STATE, start.states)
    z = model.vector(Role.ALGEBRAIC, model.initial_algebraic)
    u = model.vector(Role.INPUT, start.inputs)
    traj = _Trajectory()
    k = 0  # samples done: the grid is start.t + k * dt (no sum of rounding errors)
    try:
        while True:
            if sim.finished(x):
                return _close(traj, sim, t, x, z, u), True, None
            if t >= t_end - eps:
                return _close(traj, sim, t, x, z, u), t_batch <= t_cap, None
            t_next = start.t + (k + 1) * dt
            h = dt if t_next <= t_end + eps else t_end - t
            u = model.vector(Role.INPUT, policy(t, h, model.as_dict(Role.STATE, x)))
            z = sim.consistent(x, z, u, t)
            traj.add(t, x, z, u)
            x_next, z_next = sim.step(x, z, u, h, t)
            if sim.finished(x_next):
                h, x_next, z_next = _bisect(sim, x, z, u, h, t, x_next, z_next)
                t_next = t + h
            elif h != dt:
                t_next = t_end
            k += 1
            t, x, z = t_next, x_next, z_next
    except _SimulationFailed as exc:
        return traj, False, str(exc)
    except (PharmaTwinError, RuntimeError) as exc:  # e.g. the MPC raised
        return traj, False, f"t={t:.6g} {model.time_unit}: {_solver_message(exc)}"


def _close(
    traj: _Trajectory, sim: _Simulator, t: float, x: FloatArray, z: FloatArray, u: FloatArray
) -> _Trajectory:
    """Add the end point (the last input held; algebraic states consistent with it)."""
    traj.add(t, x, sim.consistent(x, z, u, t), u)
    return traj


def _bisect(
    sim: _Simulator,
    x: FloatArray,
    z: FloatArray,
    u: FloatArray,
    h: float,
    t: float,
    x_end: FloatArray,
    z_end: FloatArray,
) -> tuple[float, FloatArray, FloatArray]:
    """The first time within (0, h] at which the model is finished, to h / 2**BISECTIONS."""
    lo, hi = 0.0, h
    for _ in range(BISECTIONS):
        mid = (lo + hi) / 2
        xm, zm = sim.step(x, z, u, mid, t)
        if sim.finished(xm):
            hi, x_end, z_end = mid, xm, zm
        else:
            lo = mid
    return hi, x_end, z_end


def _evaluate(sim: _Simulator, traj: _Trajectory) -> dict[str, FloatArray]:
    """Model expressions, algebraic states and derived quantities at every point."""
    model = sim.model
    names = model.expression_names
    rows = []
    for x, z, u in zip(traj.x, traj.z, traj.u, strict=True):
        expr = model.function(x, z if model.is_dae else np.zeros(0), u, sim.p)[3]
        rows.append(np.asarray(expr, dtype=float).ravel())
    values = np.array(rows).reshape(len(traj.t), len(names))
    out = {n: values[:, i] for i, n in enumerate(names)}
    zs = np.array(traj.z).reshape(len(traj.t), len(model.algebraic_names))
    out.update({n: zs[:, i] for i, n in enumerate(model.algebraic_names)})
    states = _columns(model.state_names, traj.x)
    out.update({n: f(states) for n, f in _derived(model).items()})
    return out


def _columns(names: Sequence[str], rows: list[FloatArray]) -> dict[str, FloatArray]:
    arr = np.array(rows, dtype=float).reshape(len(rows), len(names))
    return {n: arr[:, i].copy() for i, n in enumerate(names)}


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


def _policy(site: Site, plan: Plan, start: ForecastStart) -> _Inputs:
    if plan.kind == "mpc":
        return _MpcInputs(site, start)
    return _TableInputs(site, plan, start)


def _run_plan(
    site: Site, fc: ForecastSection, sim: _Simulator, start: ForecastStart, plan: Plan
) -> PlanForecast:
    model = sim.model
    failed: str | None = None
    notes: list[str] = []
    try:
        policy = _policy(site, plan, start)
    except (PharmaTwinError, RuntimeError) as exc:  # e.g. an MPC that cannot be built
        traj, finished, failed = _Trajectory(), False, f"cannot start the plan: {exc}"
    else:
        traj, finished, failed = _simulate(sim, policy, start, site.controller.sample_time, fc)
        notes = policy.notes()
    states = _columns(model.state_names, traj.x)
    inputs = _columns(model.input_names, traj.u)
    expressions = _evaluate(sim, traj) if traj.t else {}
    end_time = traj.t[-1] if traj.t else start.t
    if failed is None:
        cqas = _cqa_values(fc.cqas, {**states, **inputs, **expressions}, end_time)
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
            problems.append(
                Problem(
                    where,
                    f"parameters.{name}",
                    f"unknown parameter; allowed: {list(model.parameter_names)}",
                    name,
                )
            )
        elif not _finite(v):
            problems.append(Problem(where, f"parameters.{name}", "not finite", v))
    if not _finite(start.t):
        problems.append(Problem(where, "t", "not finite", start.t))
    return problems


def _check_plans(site: Site, plans: Sequence[Plan]) -> list[Problem]:
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
            problems += _table_problems(plan.recipe, site.model, f"<plan {plan.name}>", "")
    return problems


def forecast(site: Site, start: ForecastStart, plans: Sequence[Plan]) -> Forecast:
    """Predict the batch from ``start`` under every plan (see the module docstring).

    Raises ForecastError when the site has no ``forecast`` section, or the start or a plan is
    malformed; a plan whose simulation fails is reported with ``failed`` set instead.
    """
    fc = site.forecast
    if fc is None:
        raise ForecastError(
            [Problem(str(site.path), "forecast", "the site has no forecast section", None)]
        )
    problems = _check_start(site.model, start) + _check_plans(site, plans)
    if problems:
        raise ForecastError(problems)
    exact = type(site.model)(site.model.parameter_set)  # the plant's equations, not smoothed
    sim = _Simulator(exact, {**exact.parameters, **start.parameters})
    full = ForecastStart(start.t, start.states, sim.parameters, start.inputs)
    results = [_run_plan(site, fc, sim, full, plan) for plan in plans]
    return Forecast(full, results, exact.time_unit, fc.cqas, site.name)


# ---------------------------------------------------------------------- I/O: files
class PlanFile(Recipe):
    """An alternative plan (``--plan FILE``): a named input table.

    ``time_base: now`` (the default): t = 0 is the forecast start; ``batch``: batch time.
    Inputs the table does not name hold their value at the start.
    """

    name: str
    description: str = ""
    time_base: Literal["now", "batch"] = "now"


def _table_problems(recipe: Recipe, model: PlantModel, source: str, key: str) -> list[Problem]:
    """Every row names the same known inputs (at least one)."""
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
                problems.append(
                    Problem(
                        source,
                        f"{key}table.{j}.inputs.{name}",
                        f"unknown input; allowed: {allowed}",
                        name,
                    )
                )
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


def _config_problems(exc: ConfigError, prefix: str) -> list[Problem]:
    return [
        Problem(
            p.file,
            f"{prefix}{p.location}" if p.location else prefix.rstrip("."),
            p.message,
            p.value,
        )
        for p in exc.problems
    ]


def recipe_problems(path: Path, model: PlantModel) -> tuple[Recipe | None, list[Problem]]:
    """Read a recipe from a scenario file (its ``recipe:`` key) or a bare recipe file.

    Every row must give every input of ``model`` (it is what the PLC applies). Returns the
    recipe (None when it does not validate) and the problems found.
    """
    try:
        data = read_yaml(path)
    except ConfigError as exc:
        return None, list(exc.problems)
    scenario = "recipe" in data or "plant" in data  # else a bare recipe file
    raw, prefix = (data.get("recipe"), "recipe.") if scenario else (data, "")
    if not isinstance(raw, Mapping):
        why = "a scenario used as a recipe needs a 'recipe' table (interpolation, table)"
        return None, [Problem(str(path), "recipe", why, raw)]
    try:
        recipe = parse(Recipe, raw, str(path))
    except ConfigError as exc:
        return None, _config_problems(exc, prefix)
    problems = recipe_input_problems(recipe, model, str(path), prefix)
    return (None if problems else recipe), problems


def load_recipe(path: Path, model: PlantModel) -> Recipe:
    """:func:`recipe_problems`, raising ForecastError when there are any."""
    if not Path(path).is_file():
        raise ForecastError([Problem(str(path), "", "recipe file not found", str(path))])
    recipe, problems = recipe_problems(Path(path), model)
    if problems or recipe is None:
        raise ForecastError(problems)
    return recipe


def load_plan(path: Path, model: PlantModel) -> Plan:
    """Read ``--plan FILE`` (see :class:`PlanFile`); ForecastError names file, key and value."""
    try:
        pf = parse(PlanFile, read_yaml(Path(path)), str(path))
    except ConfigError as exc:
        raise ForecastError(exc.problems) from exc
    recipe = Recipe(interpolation=pf.interpolation, table=pf.table)
    problems = _table_problems(recipe, model, str(path), "")
    if problems:
        raise ForecastError(problems)
    return Plan(pf.name, "table", recipe, pf.time_base)


def default_plans(site: Site, plan_file: Path | None) -> list[Plan]:
    """``mpc``, ``recipe`` (the site's local recipe, if configured) and the plan file's plan."""
    plans = [Plan("mpc", "mpc")]
    fc = site.forecast
    if fc is not None and fc.local_recipe is not None:
        path = site.file(fc.local_recipe)
        if not path.is_file():
            raise ForecastError(
                [
                    Problem(
                        str(site.path),
                        "forecast.local_recipe",
                        f"file not found: {path}",
                        fc.local_recipe,
                    )
                ]
            )
        plans.append(Plan("recipe", "recipe", load_recipe(path, site.model)))
    if plan_file is not None:
        plan = load_plan(plan_file, site.model)
        taken = [p.name for p in plans]
        if plan.name in taken:
            raise ForecastError(
                [Problem(str(plan_file), "name", f"taken by a built-in plan {taken}", plan.name)]
            )
        plans.append(plan)
    return plans


# ---------------------------------------------------------------------- I/O: historian
def _last_estimated(hist: SqliteHistorian, run_id: str) -> CycleRecord | None:
    """The newest cycle of ``run_id`` with an estimate (reading back in growing chunks)."""
    limit = 64
    while True:
        cycles = hist.cycles(run_id, limit=limit)
        for record in reversed(cycles):
            if record.estimates:
                return record
        if len(cycles) < limit:
            return None
        limit *= 4


def _input_value(site: Site, record: CycleRecord, name: str) -> float | None:
    """The input in place from the record's time on: the setpoint written in that cycle (closed
    loop), else its PV tag, else its setpoint tag as read (both of good quality)."""
    tags = site.tags
    candidates = []
    pv = tags.reading_tags().get(name)
    if pv is not None:
        candidates.append(record.measurements.get(pv))
    sp = tags.setpoint_tag(name)
    if sp is not None and sp in record.setpoints:
        return float(record.setpoints[sp])
    if sp is not None:
        candidates.append(record.measurements.get(sp))
    for m in candidates:
        if m is not None and m.quality == "good" and math.isfinite(m.value):
            return float(m.value)
    return None


def start_from_historian(
    site: Site, historian_path: Path, run_id: str | None = None
) -> ForecastStart:
    """The start of a forecast from a runtime's historian (a running one is fine: read only).

    Takes the newest cycle with an estimate of ``run_id`` (default: the newest run): states
    and estimated parameters from it (the others from the plant file), inputs in place (the
    setpoints written in that cycle, else the input PV tags of the site's tag map, else the
    setpoint tags as read), ``t = record.t / seconds_per_unit``
    (process seconds since the run started -> model time). Raises ForecastError (or
    HistorianError for a file that cannot be read) naming the file and what is missing.
    """
    path = Path(historian_path)
    src = str(path)
    if not path.is_file():
        raise ForecastError([Problem(src, "", "historian file not found", src)])
    model = site.model
    try:
        hist = SqliteHistorian(path)
    except HistorianError as exc:
        raise ForecastError([Problem(src, "", f"cannot open the historian: {exc}", src)]) from exc
    with hist:
        runs = hist.runs()
        if not runs:
            raise ForecastError([Problem(src, "runs", "the historian holds no run", [])])
        known = [r.run_id for r in runs]
        if run_id is None:
            info = runs[-1]
        else:
            found = [r for r in runs if r.run_id == run_id]
            if not found:
                raise ForecastError(
                    [Problem(src, "run_id", f"unknown run; known: {known}", run_id)]
                )
            info = found[0]
        if info.model != model.name:
            raise ForecastError(
                [
                    Problem(
                        src,
                        f"runs.{info.run_id}.model",
                        f"the run is of another model than the site's {model.name!r}",
                        info.model,
                    )
                ]
            )
        record = _last_estimated(hist, info.run_id)
    if record is None:
        raise ForecastError(
            [Problem(src, f"runs.{info.run_id}.cycles", "no cycle with an estimate yet", None)]
        )
    return _start_from_record(site, record, src)


def _start_from_record(site: Site, record: CycleRecord, src: str) -> ForecastStart:
    model = site.model
    key = f"runs.{record.run_id}.cycles.{record.cycle}"
    missing = [n for n in model.state_names if n not in record.estimates]
    if missing:
        raise ForecastError(
            [
                Problem(
                    src, f"{key}.estimates", f"missing state(s) {missing}", sorted(record.estimates)
                )
            ]
        )
    inputs = {n: _input_value(site, record, n) for n in model.input_names}
    unknown = [n for n, v in inputs.items() if v is None]
    if unknown:
        raise ForecastError(
            [
                Problem(
                    src,
                    f"{key}.measurements",
                    f"no good PV or setpoint of the input(s) {unknown}",
                    sorted(record.measurements),
                )
            ]
        )
    params = model.parameters
    params.update({k: float(v) for k, v in record.estimates.items() if k in params})
    return ForecastStart(
        record.t / model.seconds_per_unit,
        {n: float(record.estimates[n]) for n in model.state_names},
        params,
        {n: float(v) for n, v in inputs.items() if v is not None},
    )


# ---------------------------------------------------------------------- I/O: outputs
def write_json(fc: Forecast, path: Path) -> Path:
    """Write :meth:`Forecast.to_dict` as JSON (non-finite numbers as null)."""
    return write_json_file(Path(path), fc.to_dict())


def _key_expressions(fc: Forecast) -> list[str]:
    """The trajectories worth a panel: the CQAs' expressions (else the states)."""
    names = list(dict.fromkeys(c.expression for c in fc.cqas if c.expression != END_TIME))
    if not names and fc.plans:
        names = list(fc.plans[0].states)
    return names


def _label(pf: PlanForecast) -> str:
    if pf.failed:
        return f"{pf.plan.name}: FAILED"
    values = ", ".join(f"{k}={v:.4g}" for k, v in pf.cqas.items())
    return f"{pf.plan.name}: {values}" if values else pf.plan.name


def plot_forecast(fc: Forecast, path: Path, units: Mapping[str, str] | None = None) -> Path:
    """Inputs and key expressions over batch time, one colour per plan, CQAs in the legend.

    ``units`` (name -> unit) labels every y axis. A forecast with nothing ahead (the batch
    has ended, or every plan failed) is drawn as a page that says why, not as empty panels.
    """
    from matplotlib.figure import Figure

    units = units or {}
    inputs = list(fc.plans[0].inputs) if fc.plans else list(fc.start.inputs)
    panels = [*inputs, *_key_expressions(fc)]
    ahead = [pf for pf in fc.plans if len(pf.t) > 1 and not pf.failed]
    if not ahead:
        return _plot_nothing_ahead(fc, Path(path))
    fig = Figure(figsize=(9.0, 2.2 * max(len(panels), 1) + 0.6), layout="constrained")
    axes = fig.subplots(max(len(panels), 1), 1, sharex=True, squeeze=False)[:, 0]
    for i, pf in enumerate(fc.plans):
        color = f"C{i}"
        for ax, name in zip(axes, panels, strict=False):
            series = {**pf.inputs, **pf.states, **pf.expressions}.get(name)
            if series is None or not len(pf.t):
                continue
            step = name in pf.inputs
            ax.plot(
                pf.t,
                series,
                color=color,
                drawstyle="steps-post" if step else "default",
                label=_label(pf),
            )
    for ax, name in zip(axes, panels, strict=False):
        ax.set_ylabel(f"{name} [{units[name]}]" if units.get(name) else name)
        ax.axvline(fc.start.t, color="grey", linestyle=":", linewidth=1)
        ax.grid(True, alpha=0.3)
    axes[-1].set_xlabel(f"batch time [{fc.time_unit}]" if fc.time_unit else "batch time")
    if fc.plans:
        handles, labels = axes[0].get_legend_handles_labels()
        fig.legend(handles, labels, loc="outside lower center", fontsize="small")
    fig.suptitle(f"{fc.site} forecast from t = {fc.start.t:.4g} {fc.time_unit}".strip())
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    return path


def _plot_nothing_ahead(fc: Forecast, path: Path) -> Path:
    """A page saying why there is nothing to draw (never empty panels that look like data)."""
    from matplotlib.figure import Figure

    if not fc.plans:
        why = "no plan was forecast"
    elif all(pf.failed for pf in fc.plans):
        why = "every plan failed: " + "; ".join(f"{pf.plan.name}: {pf.failed}" for pf in fc.plans)
    else:
        why = (
            f"the batch has ended: nothing is left to forecast from t = {fc.start.t:.4g} "
            f"{fc.time_unit}".rstrip()
        )
    fig = Figure(figsize=(9.0, 2.0))
    fig.text(0.5, 0.5, f"{fc.site} forecast: {why}", ha="center", va="center", wrap=True)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    return path
