"""The forecast's simulation: the exact model integrated to the batch end under one plan.

:class:`Simulator` integrates the plant's own (non-smoothed) equations with fixed parameters
(cvodes; idas for the DAEs, whose algebraic states are re-solved at every sample from the last
values). A step that takes the model out of its validity domain (where its equations hold:
:meth:`~plant_models.PlantModel.validity_violations`) fails the plan there, as it is a plant fault
of the HIL's true plant: nothing is clipped back. A :class:`Policy` gives the inputs of each
sample: :class:`TablePolicy` (a recipe or an alternative plan, clipped to the controller's input
limits) or :class:`MpcPolicy` (the site's MPC through the same safety limits as on the plant).
:func:`simulate` runs one plan to the batch end (the model's ``finished``, the section's
durations), locating the end inside the last sample by bisection; :func:`evaluate` gives the
model's expressions along the result.

Pure computing: no I/O. See :mod:`controller.twin.forecast` for the rules in full.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import casadi as ca
import numpy as np

from controller.core.pipeline import input_limits
from controller.core.policy import build_policy
from controller.core.recipe import RecipePlayer
from controller.core.safety import SafetyFilter
from controller.errors import PharmaTwinError, Problem
from controller.twin.forecast_spec import (
    ForecastError,
    ForecastSection,
    ForecastSetup,
    ForecastStart,
    Plan,
    derived_quantities,
)
from plant_models import PlantModel, Role

__all__ = [
    "BISECTIONS",
    "MpcPolicy",
    "Policy",
    "Simulator",
    "TablePolicy",
    "Trajectory",
    "columns",
    "evaluate",
    "nothing_ahead",
    "policy",
    "simulate",
    "solver_message",
    "start_point",
]

#: Halvings of the last sample that locate the batch end (resolution sample_time / 128).
BISECTIONS = 7
FloatArray = np.ndarray


# ---------------------------------------------------------------------- the model
class _SimulationFailed(Exception):
    """The model could not be integrated or solved; the plan fails with this message."""


def solver_message(exc: Exception) -> str:
    """The informative last line of a CasADi error (the rest is its call stack)."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    last = lines[-1] if lines else type(exc).__name__
    return last.split(": ", 1)[1] if last.startswith(".../") and ": " in last else last


class Simulator:
    """The exact model with fixed parameters: steps of any length, algebraic solves, ends."""

    def __init__(self, model: PlantModel, parameters: Mapping[str, float]) -> None:
        self.model = model
        self.parameters = dict(parameters)
        self.p = model.parameter_vector(parameters)
        self._steps: dict[float, ca.Function] = {}
        self._alg = model.algebraic_solver()
        self._all_parameters = dict(zip(model.parameter_names, self.p.tolist(), strict=True))
        self._watch_expressions = bool(model.expression_domain)

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
                self._where(t, u, f"integration failed: {solver_message(exc)}")
            ) from exc
        x_new = np.asarray(xf, dtype=float).ravel()
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
                self._where(t, u, f"algebraic solve failed: {solver_message(exc)}")
            ) from exc
        if not np.all(np.isfinite(z_new)):
            raise _SimulationFailed(self._where(t, u, "algebraic solve gave non-finite values"))
        return z_new

    def check_domain(self, x: FloatArray, z: FloatArray, u: FloatArray, t: float) -> None:
        """Raise (the plan fails) when ``x, z`` (under ``u``, at ``t``) lie outside the
        model's validity domain, with the parameters' bounds (the integrator's round-off, 1e-6
        of a variable's scale, is not a fault)."""
        m = self.model
        expressions = None
        if self._watch_expressions:
            expr = np.asarray(m.function(x, z if m.is_dae else np.zeros(0), u, self.p)[3])
            expressions = dict(zip(m.expression_names, expr.ravel().tolist(), strict=True))
        found = m.validity_violations(
            m.as_dict(Role.STATE, x),
            m.as_dict(Role.ALGEBRAIC, z) if m.is_dae else None,
            self._all_parameters,
            expressions=expressions,
        )
        if found:
            what = "; ".join(v.describe() for v in found)
            raise _SimulationFailed(
                self._where(t, u, f"the model left its validity domain (where its equations "
                                  f"hold; nothing is corrected): {what}")
            )  # fmt: skip

    def finished(self, x: FloatArray) -> bool:
        return bool(self.model.finished(self.model.as_dict(Role.STATE, x), self.parameters))

    def _where(self, t: float, u: FloatArray, what: str) -> str:
        inputs = {k: round(v, 6) for k, v in self.model.as_dict(Role.INPUT, u).items()}
        return f"t={t:.6g} {self.model.time_unit}, inputs {inputs}: {what}"


class Policy:
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


class TablePolicy(Policy):
    """A table (recipe or plan) at ``t - offset``; unnamed inputs hold; clipped to the limits.

    ``linear`` tables hold each sample at the table's mean over the sample (the PLC follows a
    ramp continuously; the mean delivers the same amount), ``previous`` ones at the value in
    force at the start of the sample.
    """

    def __init__(self, setup: ForecastSetup, plan: Plan, start: ForecastStart) -> None:
        if plan.recipe is None:
            raise ForecastError(
                [Problem("<plan>", f"plans.{plan.name}.recipe", "a table plan needs a table", None)]
            )
        model = setup.model
        named = tuple(n for n in model.input_names if n in plan.recipe.table[0].inputs)
        self._linear = plan.recipe.interpolation == "linear"
        self._player = RecipePlayer(plan.recipe, named)
        self._times = np.array([row.t for row in plan.recipe.table], dtype=float)
        self._values = {
            n: np.array([row.inputs[n] for row in plan.recipe.table], dtype=float) for n in named
        }
        self._offset = start.t if plan.time_base == "now" else 0.0
        self._held = {n: float(start.inputs[n]) for n in model.input_names if n not in named}
        self._limits = {n: (s.lower, s.upper) for n, s in setup.controller.inputs.items()}
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


class MpcPolicy(Policy):
    """The site's MPC through the safety limits, started bumplessly from the inputs in place."""

    def __init__(self, setup: ForecastSetup, start: ForecastStart) -> None:
        cfg = setup.controller
        self._mpc = build_policy(cfg, setup.model, compile=setup.compile, source=setup.source)
        self._safety = SafetyFilter(input_limits(cfg))
        now = {n: float(start.inputs[n]) for n in setup.model.input_names}
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
class Trajectory:
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


def nothing_ahead(
    sim: Simulator, start: ForecastStart, dt: float, fc: ForecastSection
) -> str | None:
    """Why no plan can be applied from ``start`` (the batch has ended there), else None.

    The same tests :func:`simulate` makes before its first step: a plan simulated from such a
    start would be its start point alone, never applied."""
    model = sim.model
    unit = f" {model.time_unit}".rstrip()
    x = model.vector(Role.STATE, start.states)
    if sim.finished(x):
        return (
            "nothing left to forecast: the model is finished at the start "
            f"(t = {start.t:.6g}{unit})"
        )
    t_batch, t_cap = _limits(fc, start.t)
    t_end = min(t_batch, t_cap)
    if start.t >= t_end - 1e-9 * dt:
        which = "batch_duration" if t_batch <= t_cap else "max_duration"
        return (
            f"nothing left to forecast: the batch ended at the start (t = {start.t:.6g}{unit}; "
            f"{which} ends it at {t_end:.6g}{unit})"
        )
    return None


def start_point(sim: Simulator, start: ForecastStart) -> Trajectory:
    """The start alone, with the inputs in place (the trajectory of a plan never applied)."""
    model = sim.model
    x = model.vector(Role.STATE, start.states)
    z = model.vector(Role.ALGEBRAIC, model.initial_algebraic)
    u = model.vector(Role.INPUT, start.inputs)
    return _close(Trajectory(), sim, start.t, x, z, u)


def simulate(
    sim: Simulator,
    policy: Policy,
    start: ForecastStart,
    dt: float,
    fc: ForecastSection,
) -> tuple[Trajectory, bool, str | None]:
    """Run one plan to the batch end; returns the trajectory, finished, failure (or None).

    From a start where the batch has ended (:func:`nothing_ahead`) the trajectory is the start
    point alone and no input of the plan was applied: the caller reports that."""
    model = sim.model
    t_batch, t_cap = _limits(fc, start.t)
    t_end = min(t_batch, t_cap)
    eps = 1e-9 * dt
    t = start.t
    x = model.vector(Role.STATE, start.states)
    z = model.vector(Role.ALGEBRAIC, model.initial_algebraic)
    u = model.vector(Role.INPUT, start.inputs)
    traj = Trajectory()
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
            if sim.finished(x_next):  # the end, located inside the step: its state is the end's
                h, x_next, z_next = _bisect(sim, x, z, u, h, t, x_next, z_next)
                t_next = t + h
            else:
                if h != dt:
                    t_next = t_end
                sim.check_domain(x_next, z_next, u, t_next)
            k += 1
            t, x, z = t_next, x_next, z_next
    except _SimulationFailed as exc:
        return traj, False, str(exc)
    except (PharmaTwinError, RuntimeError) as exc:  # e.g. the MPC raised
        return traj, False, f"t={t:.6g} {model.time_unit}: {solver_message(exc)}"


def _close(
    traj: Trajectory, sim: Simulator, t: float, x: FloatArray, z: FloatArray, u: FloatArray
) -> Trajectory:
    """Add the end point (the last input held; algebraic states consistent with it)."""
    traj.add(t, x, sim.consistent(x, z, u, t), u)
    return traj


def _bisect(
    sim: Simulator,
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


def evaluate(sim: Simulator, traj: Trajectory) -> dict[str, FloatArray]:
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
    states = columns(model.state_names, traj.x)
    out.update({n: f(states) for n, f in derived_quantities(model).items()})
    return out


def columns(names: Sequence[str], rows: list[FloatArray]) -> dict[str, FloatArray]:
    arr = np.array(rows, dtype=float).reshape(len(rows), len(names))
    return {n: arr[:, i].copy() for i, n in enumerate(names)}


def policy(setup: ForecastSetup, plan: Plan, start: ForecastStart) -> Policy:
    """The inputs of ``plan``: the site's MPC (``mpc``) or its input table."""
    if plan.kind == "mpc":
        return MpcPolicy(setup, start)
    return TablePolicy(setup, plan, start)
