"""The planning region of :mod:`controller.core.rk4_check`: its box, its sampling, and the
model's Jacobians, derivatives and constraint values at the points drawn (pure computing).

See :mod:`controller.core.rk4_check` for what the region is and why.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from dataclasses import dataclass

import casadi as ca
import numpy as np

from controller.config import ControllerConfig, robust_values
from controller.core.mpc import NlConstraint, nl_constraints
from controller.core.ocp_stage import constraint_scales, named
from controller.core.prediction import algebraic_newton
from plant_models import PlantModel, Role

__all__ = [
    "ALGEBRAIC_TOL",
    "BATCH",
    "EDGE",
    "MAX_CANDIDATES",
    "MIN_INSIDE",
    "SEED",
    "SOFT_MARGIN",
    "Box",
    "Evaluated",
    "Evaluator",
    "bounds_of",
    "corners",
    "monotone",
    "planning_box",
    "random_points",
    "soft_bound",
]

#: Every corner of the box is sampled up to this many dimensions; beyond, random corners.
MAX_CORNER_DIMS = 12
#: Candidate points are drawn (in batches of :data:`BATCH`) until this many lie inside the
#: controller's constraints, or :data:`MAX_CANDIDATES` were drawn.
MIN_INSIDE = 256
BATCH = 2048
MAX_CANDIDATES = 65536
SEED = 20261206
#: A soft constraint's bound is widened by this fraction of its magnitude (at least of the
#: constraint's scale) for the filter (see the module docstring).
SOFT_MARGIN = 0.1
#: A state's validity bound is sampled this fraction of its scale inside (see planning_box).
EDGE = 1e-6
#: A DAE point counts when its algebraic residual is at most this (a solved z).
ALGEBRAIC_TOL = 1e-6


@dataclass(frozen=True)
class Box:
    """The planning region: per state, parameter and input, ``name -> (low, high)``."""

    states: dict[str, tuple[float, float]]
    parameters: dict[str, tuple[float, float]]
    inputs: dict[str, tuple[float, float]]
    #: states with no finite bound on one side or both (sampled around the initial value)
    unbounded: tuple[str, ...]
    #: estimated parameters with no plausible range (held at their nominal value)
    held: tuple[str, ...] = ()


def _tightest(pairs: Sequence[tuple[float | None, float | None]]) -> tuple[float, float]:
    lo, hi = -math.inf, math.inf
    for a, b in pairs:
        if a is not None:
            lo = max(lo, float(a))
        if b is not None:
            hi = min(hi, float(b))
    return lo, hi


def planning_box(config: ControllerConfig, model: PlantModel) -> Box:
    """The box the controller plans in (see the module docstring); its constraints on
    expressions are not in it (:func:`rk4_margin` filters the points by them), nor the
    narrowing of monotone unbounded states (:func:`rk4_margin` does it)."""
    caps: dict[str, list[tuple[float | None, float | None]]] = {}
    scales = constraint_scales(config, model)
    for c, scale in zip(nl_constraints(config), scales, strict=True):
        if c.expression in model.state_names:
            bound = soft_bound(c, scale)
            pair = (None, bound) if c.sign > 0 else (bound, None)
            caps.setdefault(c.expression, []).append(pair)
    states: dict[str, tuple[float, float]] = {}
    unbounded: list[str] = []
    for name in model.state_names:
        v = model.variable(name)
        pairs = [(v.lower, v.upper), *caps.get(name, [])]
        if name in config.state_bounds:
            pairs.append(config.state_bounds[name])
        lo, hi = _tightest(pairs)
        # a validity bound itself is left by EDGE of the scale (the margin the plant's domain
        # check allows): it may be where the equations stop holding (V = 0, T = 0 K)
        lo += EDGE * v.scale if lo == v.lower else 0.0
        hi -= EDGE * v.scale if hi == v.upper else 0.0
        if not (math.isfinite(lo) and math.isfinite(hi)):
            unbounded.append(name)
            x0 = float(model.initial_state.get(name, 0.0))
            lo, hi = (
                (lo if math.isfinite(lo) else min(x0, hi)),
                (hi if math.isfinite(hi) else max(x0, lo)),
            )
        states[name] = (lo, hi)
    parameters = {
        n: (float(p.lower), float(p.upper))
        for n, p in model.parameter_set.parameters.items()
        if math.isfinite(p.lower) and math.isfinite(p.upper)
    }
    # a robust controller plans with its scenarios' values too (inside the plausible range,
    # which the controller file's check enforces: this adds a parameter without one)
    for name, values in robust_values(config, model).items():
        lo, hi = parameters.get(name, (min(values), max(values)))
        parameters[name] = (min(lo, *values), max(hi, *values))
    held = tuple(n for n in config.estimator.estimated if n not in parameters)
    inputs: dict[str, tuple[float, float]] = {}
    for name in model.input_names:
        v = model.variable(name)
        spec = config.inputs.get(name)
        lo, hi = _tightest([(v.lower, v.upper)] + ([(spec.lower, spec.upper)] if spec else []))
        if not (math.isfinite(lo) and math.isfinite(hi)):
            u0 = float(model.nominal_inputs.get(name, 0.0))
            lo, hi = (lo, lo) if math.isfinite(lo) else (hi, hi) if math.isfinite(hi) else (u0, u0)
        inputs[name] = (lo, hi)
    return Box(states, parameters, inputs, tuple(unbounded), held)


def soft_bound(c: NlConstraint, scale: float) -> float:
    """The bound of one constraint side as the filter uses it: a soft one widened by
    :data:`SOFT_MARGIN` of its magnitude (at least of the constraint's scale)."""
    if not c.soft:
        return c.bound
    return c.bound + c.sign * SOFT_MARGIN * max(abs(c.bound), scale)


def corners(lows: np.ndarray, highs: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Every corner of the box up to :data:`MAX_CORNER_DIMS` varying dimensions (else
    :data:`BATCH` random ones) and its centre; one point per row."""
    varying = np.flatnonzero(highs > lows)
    if len(varying) <= MAX_CORNER_DIMS:
        picks = np.array(list(itertools.product((0.0, 1.0), repeat=len(varying))))
    else:
        picks = rng.integers(0, 2, size=(BATCH, len(varying))).astype(float)
    corners = np.tile(lows, (len(picks), 1))
    corners[:, varying] = lows[varying] + picks * (highs - lows)[varying]
    return np.vstack([corners, (lows + highs) / 2.0])


class Evaluator:
    """The model's reduced Jacobian, its algebraic residual and the worst constraint
    violation (``max sign * (expression - bound)``, <= 0 inside) at points given as rows of
    ``[states, parameters in the box, inputs]``, a DAE's algebraic states solved first."""

    def __init__(self, config: ControllerConfig, model: PlantModel, box: Box) -> None:
        self.model, self.box = model, box
        s = model.symbols
        x, z, u, p = s[Role.STATE], s[Role.ALGEBRAIC], s[Role.INPUT], s[Role.PARAMETER]
        xdot, alg, _, expr = model.evaluate_symbolic(x, z, u, p)
        jac = ca.jacobian(xdot, x)
        res = ca.SX.zeros(1)
        if model.algebraic_names:
            jac = jac - ca.mtimes(
                ca.jacobian(xdot, z), ca.solve(ca.jacobian(alg, z), ca.jacobian(alg, x))
            )
            res = ca.norm_inf(alg)
        scales = constraint_scales(config, model)
        sides = [
            c.sign * (named(model, c.expression, x, z, u, expr) - soft_bound(c, scale))
            for c, scale in zip(nl_constraints(config), scales, strict=True)
        ]
        worst = ca.mmax(ca.vertcat(*sides)) if sides else ca.SX.zeros(1) - 1.0
        self.f = ca.Function("rk4_check", [x, z, u, p], [jac, res, worst, xdot])
        # a DAE's algebraic states: the Newton solve of the EKF's compiled prediction
        # (``(z, residual)``, never raises; the residual is checked in ``f``'s own units)
        self.z_solve = algebraic_newton(model, f"{model.name}_rk4_check_z")
        nx, nq = len(box.states), len(box.parameters)
        self._slices = (nx, nq)
        self._p_index = [model.parameter_names.index(n) for n in box.parameters]
        self._u_index = [model.input_names.index(n) for n in box.inputs]
        self._p0 = model.parameter_vector(model.parameters)
        self._z0 = model.vector(Role.ALGEBRAIC, model.initial_algebraic)

    def split(self, pts: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """(x, z, u, p), one point per row."""
        nx, nq = self._slices
        n = len(pts)
        p = np.tile(self._p0, (n, 1))
        p[:, self._p_index] = pts[:, nx : nx + nq]
        u = np.zeros((n, len(self.model.input_names)))
        u[:, self._u_index] = pts[:, nx + nq :]
        x = pts[:, :nx]
        z = np.zeros((n, 0))
        if self.z_solve is not None:
            z0 = np.tile(self._z0, (n, 1))
            z = np.asarray(self.z_solve.map(n)(z0.T, x.T, u.T, p.T)[0], dtype=float).T
        return x, z, u, p

    def __call__(self, pts: np.ndarray) -> Evaluated:
        """The Jacobians, derivatives and constraint values at ``pts`` (one per row)."""
        x, z, u, p = self.split(pts)
        n_pts, n = len(pts), len(self.model.state_names)
        j_all, res, worst, xdot = self.f.map(n_pts)(x.T, z.T, u.T, p.T)
        # the map's Jacobians are side by side: n x (n * points), column-major
        mats = np.asarray(j_all, dtype=float).reshape((n, n, n_pts), order="F").transpose(2, 0, 1)
        solved = np.ones(n_pts, dtype=bool)
        if self.z_solve is not None:
            solved = np.asarray(res, dtype=float).ravel() <= ALGEBRAIC_TOL
            solved &= np.all(np.isfinite(z), axis=1)
        worst = np.asarray(worst, dtype=float).ravel()
        finite = np.all(np.isfinite(mats), axis=(1, 2))
        # inside the constraints (a non-finite constraint value is not known to be outside)
        inside = solved & ~(worst > 0.0)
        return Evaluated(pts, mats, np.asarray(xdot, dtype=float).T, solved, finite, inside)


@dataclass(frozen=True)
class Evaluated:
    """Per point (rows of ``pts``): the Jacobian, the state derivatives, whether a DAE's
    algebraic states were solved, whether the Jacobian is finite, and whether the point is
    inside the controller's constraints (solved and not outside)."""

    pts: np.ndarray
    mats: np.ndarray
    xdot: np.ndarray
    solved: np.ndarray
    finite: np.ndarray
    inside: np.ndarray


def monotone(box: Box, model: PlantModel, seen: Evaluated) -> Box:
    """``box`` with each unbounded state that never moves towards its finite bound (its
    derivative of one sign at every point seen inside the region) held at its initial
    value on that side: the plan cannot take it there (see the module docstring)."""
    states = dict(box.states)
    ok = seen.inside & np.all(np.isfinite(seen.xdot), axis=1)
    if not ok.any():
        return box
    for i, name in enumerate(model.state_names):
        if name not in box.unbounded:
            continue
        x0 = float(model.initial_state.get(name, 0.0))
        lo, hi = states[name]
        rates = seen.xdot[ok, i]
        if rates.min() >= 0.0 and lo < x0:  # never decreases: stays at or above x0
            lo = x0
        if rates.max() <= 0.0 and hi > x0:  # never increases: stays at or below x0
            hi = x0
        states[name] = (lo, max(lo, hi))
    return Box(states, box.parameters, box.inputs, box.unbounded, box.held)


def bounds_of(box: Box) -> tuple[list[str], np.ndarray, np.ndarray]:
    names = [*box.states, *box.parameters, *box.inputs]
    bounds = [*box.states.values(), *box.parameters.values(), *box.inputs.values()]
    lows = np.array([b[0] for b in bounds], dtype=float)
    highs = np.array([b[1] for b in bounds], dtype=float)
    return names, lows, highs


def random_points(lows: np.ndarray, highs: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """:data:`BATCH` uniform random points of the box."""
    return lows + rng.random((BATCH, len(lows))) * (highs - lows)
