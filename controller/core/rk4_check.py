"""Whether the fast path's RK4 steps hold over the region the controller plans in.

The fast MPC (:mod:`controller.core.fast_mpc`) carries the state over an interval with
``integrator_steps`` explicit RK4 steps of length ``h``. Where the model is stiff (a mode
``lambda`` of its Jacobian with ``|h lambda|`` large), that discretization is wrong, and
the SQP plans on it without knowing: on the bioreactor at the low edge of its plausible
yield the substrate's consumption decays at -4.9 /h near S = 0, and with two steps an hour
(``h lambda = -2.46``) RK4's second stage flipped the substrate's sign. The problem came out
infeasible (IPOPT's ``Infeasible_Problem_Detected``) where it was feasible, or "solved" with
no feed at all where the accurate answer feeds (bioreactor-oq, before the shipped config
took three steps).

:func:`rk4_margin` samples the planning region (:func:`planning_box`: each state between
its tightest lower and upper bound of the validity domain, the operating range, the
controller's ``state_bounds`` and its constraints on the state itself; each parameter over
its plausible range, widened to a robust controller's scenario values; each input between
the controller's bounds), keeps the points where
every constraint of the controller holds (the crystallizer's supersaturation band: its
concentration's validity domain reaches far beyond where the plan may go), evaluates the
model's Jacobian ``d xdot / d x`` there (a DAE's reduced one, ``f_x - f_z g_z^-1 g_x``, at
algebraic states solved for each point) and returns the largest ``|h lambda|`` found.

:data:`RK4_STAGE_LIMIT` is the limit: ``|h lambda| <= 2``. On a decaying real mode that is
where RK4's second stage ``x + h/2 k1`` stops keeping the sign of the deviation
(``1 + h lambda / 2 >= 0``); every complex ``h lambda`` of that magnitude in the left
half-plane is inside RK4's stability region too (its amplification at most 1 there), and a
growing mode (an exothermic reactor's runaway) is held to the same magnitude, where RK4's
growth factor is within 6 % of the exact one. It is a sufficient condition, not a
necessary one: a model stiffer than that somewhere in the box may still plan well where
it really goes, but no one can tell that at load time, so :func:`check_rk4_steps` refuses
the configuration and says how many steps would do.

A state with no finite bound on a side is sampled from its finite bound (or its initial
value) to its initial value on that side: the check cannot speak for what lies beyond, and
its report names such states (:attr:`Rk4Margin.unbounded`). The bioreactor's substrate is
sampled over [0, 0.5] g/L and its volume over [0, 120] L, the crystallizer's moments from 0
to their seeded values.

``h`` is the longest interval over the RK4 steps (:func:`longest_interval`): a sample, or a
free-end minimum-time plan's stretched intervals when ``max_time`` bounds them; without it
their length is each solve's decision, and only the sample is checked.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import casadi as ca
import numpy as np

from controller.config import ControllerConfig, robust_values
from controller.core.memo import Lru, model_data
from controller.core.mpc import nl_constraints
from controller.core.ocp_stage import named
from controller.errors import ConfigError, Problem
from plant_models import PlantModel, Role

__all__ = [
    "RK4_STAGE_LIMIT",
    "Box",
    "Rk4Margin",
    "check_rk4_steps",
    "longest_interval",
    "planning_box",
    "rk4_margin",
    "rk4_steps",
]

#: The largest ``|h lambda|`` accepted (see the module docstring).
RK4_STAGE_LIMIT = 2.0
#: Every corner of the box is sampled up to this many dimensions; beyond, random corners.
MAX_CORNER_DIMS = 12
#: Random points inside the box (and random corners beyond :data:`MAX_CORNER_DIMS`).
INTERIOR_POINTS = 512
#: Candidate points are drawn (in batches of :data:`BATCH`) until this many lie inside the
#: controller's constraints, or :data:`MAX_CANDIDATES` were drawn.
MIN_INSIDE = 256
BATCH = 2048
MAX_CANDIDATES = 65536
SEED = 20261206
#: A DAE point counts when its algebraic residual is at most this (a solved z).
ALGEBRAIC_TOL = 1e-6
#: Configurations whose margin is remembered per process.
MEMO_SIZE = 16


@dataclass(frozen=True)
class Box:
    """The planning region: per state, parameter and input, ``name -> (low, high)``."""

    states: dict[str, tuple[float, float]]
    parameters: dict[str, tuple[float, float]]
    inputs: dict[str, tuple[float, float]]
    #: states with no finite bound on one side or both (sampled around the initial value)
    unbounded: tuple[str, ...]


@dataclass(frozen=True)
class Rk4Margin:
    """The stiffest point found: ``h`` and ``|h lambda|`` there, with the point itself."""

    h: float
    worst: float  # max |h lambda| over the sampled points
    eigenvalue: complex  # lambda at the worst point (per model time unit)
    state: dict[str, float]
    parameters: dict[str, float]
    inputs: dict[str, float]
    points: int  # points inside the controller's constraints, evaluated
    skipped: int  # of those, where the Jacobian was not finite (or a DAE's z not solved)
    outside: int  # candidates drawn outside the controller's constraints (not evaluated)
    unbounded: tuple[str, ...]

    @property
    def ok(self) -> bool:
        return self.worst <= RK4_STAGE_LIMIT

    def steps_needed(self, steps: int) -> int:
        """The fewest RK4 steps per interval that would meet the limit."""
        return max(steps, math.ceil(steps * self.worst / RK4_STAGE_LIMIT))


_CHECKED: Lru[str, Rk4Margin] = Lru(MEMO_SIZE)


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
    expressions are not in it (:func:`rk4_margin` filters the points by them)."""
    caps: dict[str, list[tuple[float | None, float | None]]] = {}
    for c in config.constraints:
        if c.expression in model.state_names:
            caps.setdefault(c.expression, []).append((c.lower, c.upper))
    states: dict[str, tuple[float, float]] = {}
    unbounded: list[str] = []
    for name in model.state_names:
        v = model.variable(name)
        pairs = [(v.lower, v.upper), v.operating, *caps.get(name, [])]
        if name in config.state_bounds:
            pairs.append(config.state_bounds[name])
        lo, hi = _tightest(pairs)
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
    # a robust controller plans with its scenarios' values too, which may lie beyond them
    for name, values in robust_values(config, model).items():
        lo, hi = parameters.get(name, (min(values), max(values)))
        parameters[name] = (min(lo, *values), max(hi, *values))
    inputs: dict[str, tuple[float, float]] = {}
    for name in model.input_names:
        v = model.variable(name)
        spec = config.inputs.get(name)
        lo, hi = _tightest([(v.lower, v.upper)] + ([(spec.lower, spec.upper)] if spec else []))
        if not (math.isfinite(lo) and math.isfinite(hi)):
            u0 = float(model.nominal_inputs.get(name, 0.0))
            lo, hi = (lo, lo) if math.isfinite(lo) else (hi, hi) if math.isfinite(hi) else (u0, u0)
        inputs[name] = (lo, hi)
    return Box(states, parameters, inputs, tuple(unbounded))


def _corners(lows: np.ndarray, highs: np.ndarray, rng: np.random.Generator) -> np.ndarray:
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


class _Evaluator:
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
        sides = [
            c.sign * (named(model, c.expression, x, z, u, expr) - c.bound)
            for c in nl_constraints(config)
        ]
        worst = ca.mmax(ca.vertcat(*sides)) if sides else ca.SX.zeros(1) - 1.0
        self.f = ca.Function("rk4_check", [x, z, u, p], [jac, res, worst])
        self.z_solve: ca.Function | None = None
        if model.algebraic_names:
            zs = ca.SX.sym("zs", len(model.algebraic_names))
            zsc = model.scales(Role.ALGEBRAIC)
            _, alg_s, _, _ = model.evaluate_symbolic(x, zs * zsc, u, p)
            g = ca.Function("g", [zs, ca.vertcat(x, u, p)], [alg_s])
            rf = ca.rootfinder("rk4_check_z", "newton", g, {"error_on_fail": False})
            zg = ca.MX.sym("zg", len(model.algebraic_names))
            xm, um, pm = (
                ca.MX.sym(n, len(v))
                for n, v in (
                    ("x", model.state_names),
                    ("u", model.input_names),
                    ("p", model.parameter_names),
                )
            )
            zsol = rf(zg / zsc, ca.vertcat(xm, um, pm)) * zsc
            self.z_solve = ca.Function("rk4_check_Z", [zg, xm, um, pm], [zsol])
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
            z = np.asarray(self.z_solve.map(n)(z0.T, x.T, u.T, p.T), dtype=float).T
        return x, z, u, p

    def __call__(self, pts: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Per point: the Jacobian (n x n), whether it was evaluated (finite, z solved), and
        the worst constraint violation (NaN where not evaluated)."""
        x, z, u, p = self.split(pts)
        n_pts, n = len(pts), len(self.model.state_names)
        j_all, res, worst = self.f.map(n_pts)(x.T, z.T, u.T, p.T)
        # the map's Jacobians are side by side: n x (n * points), column-major
        mats = np.asarray(j_all, dtype=float).reshape((n, n, n_pts), order="F").transpose(2, 0, 1)
        worst = np.asarray(worst, dtype=float).ravel()
        good = np.all(np.isfinite(mats), axis=(1, 2)) & np.isfinite(worst)
        if self.z_solve is not None:
            good &= np.asarray(res, dtype=float).ravel() <= ALGEBRAIC_TOL
        return mats, good, np.where(good, worst, np.nan)


def longest_interval(config: ControllerConfig) -> float:
    """The longest interval of a plan whose length is known at load time: a sample, or a
    free-end minimum-time plan's stretched intervals when ``max_time`` bounds them (the
    first lasts a sample, the other ``horizon - 1`` share the rest). Without ``max_time``
    their length is the solve's decision and the sample is all that can be checked."""
    mt, dt = config.objective.min_time, config.sample_time
    if mt is None or mt.mode != "free_end" or mt.max_time is None or config.horizon < 2:
        return dt
    return max(dt, (mt.max_time - dt) / (config.horizon - 1))


def rk4_margin(config: ControllerConfig, model: PlantModel, steps: int) -> Rk4Margin:
    """The largest ``|h lambda|`` of the model's Jacobian over the planning region, with
    ``h`` the sample time over ``steps`` RK4 steps (see the module docstring)."""
    box = planning_box(config, model)
    names = [*box.states, *box.parameters, *box.inputs]
    bounds = [*box.states.values(), *box.parameters.values(), *box.inputs.values()]
    lows = np.array([b[0] for b in bounds], dtype=float)
    highs = np.array([b[1] for b in bounds], dtype=float)
    rng = np.random.default_rng(SEED)
    evaluate = _Evaluator(config, model, box)
    kept_pts, kept_mats = [], []
    drawn, skipped, outside = 0, 0, 0
    candidates = _corners(lows, highs, rng)
    while True:
        mats, good, worst = evaluate(candidates)
        inside = good & (worst <= 0.0)
        skipped += int((~good).sum())
        outside += int((good & ~inside).sum())
        kept_pts.append(candidates[inside])
        kept_mats.append(mats[inside])
        drawn += len(candidates)
        if sum(len(k) for k in kept_pts) >= MIN_INSIDE or drawn >= MAX_CANDIDATES:
            break
        candidates = lows + rng.random((BATCH, len(lows))) * (highs - lows)
    pts, mats = np.vstack(kept_pts), np.concatenate(kept_mats)
    h = longest_interval(config) / steps
    if len(pts) == 0:
        return Rk4Margin(h, 0.0, 0j, {}, {}, {}, 0, skipped, outside, box.unbounded)
    eig = np.linalg.eigvals(mats)
    each = np.abs(eig).argmax(axis=1)
    lam = eig[np.arange(len(eig)), each]
    k = int(np.abs(lam).argmax())
    values = dict(zip(names, pts[k], strict=True))
    return Rk4Margin(
        h=h,
        worst=float(abs(lam[k]) * h),
        eigenvalue=complex(lam[k]),
        state={n: float(values[n]) for n in box.states},
        parameters={n: float(values[n]) for n in box.parameters},
        inputs={n: float(values[n]) for n in box.inputs},
        points=len(pts),
        skipped=skipped,
        outside=outside,
        unbounded=box.unbounded,
    )


def _point(values: Mapping[str, float]) -> str:
    return ", ".join(f"{n} {v:.4g}" for n, v in values.items())


def rk4_steps(config: ControllerConfig, steps: int | None = None) -> int:
    """The RK4 steps the fast path really takes per sample: ``steps`` (default the config's
    ``solver.integrator_steps``) rounded up to a multiple of the constraint points' segments
    (:func:`controller.core.ocp_stage.rk4_interval`)."""
    n = config.solver.integrator_steps if steps is None else steps
    segments = config.constraint_points + 1
    return -(-n // segments) * segments


def check_rk4_steps(
    config: ControllerConfig, model: PlantModel, source: str, steps: int | None = None
) -> Rk4Margin | None:
    """Raise ConfigError when the fast path's RK4 steps (``steps``, default the config's
    ``solver.integrator_steps``) are too few somewhere in the planning region
    (:func:`rk4_margin` above :data:`RK4_STAGE_LIMIT`); else the margin found. None (nothing
    checked) for the do-mpc backend, which integrates by collocation. Remembered per process
    for each configuration and model (a campaign loads the same controller for every case)."""
    if config.solver.backend != "fast":
        return None
    n = rk4_steps(config, steps)
    data = {"config": config.model_dump(mode="json"), "steps": n, "model": model_data(model)}
    key = hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()
    m = _CHECKED.get(key)
    if m is None:
        m = rk4_margin(config, model, n)
        _CHECKED.put(key, m)
    if m.ok:
        return m
    lam = m.eigenvalue
    shown = f"{lam.real:.3g}" if abs(lam.imag) < 1e-12 else f"{lam:.3g}"
    where = "; ".join(p for p in (_point(m.state), _point(m.parameters), _point(m.inputs)) if p)
    unit = model.time_unit
    given = config.solver.integrator_steps if steps is None else steps
    taken = f" (taken as {n})" if n != given else ""
    message = (
        f"{given} RK4 step{'s' if given != 1 else ''}{taken} per interval of "
        f"{m.h * n:g} {unit} are too few for model {model.name!r}: at {where} "
        f"its Jacobian has an eigenvalue of {shown} per {unit}, so |h lambda| = {m.worst:.3g} "
        f"(allowed <= {RK4_STAGE_LIMIT:g}: beyond it RK4's stages overshoot and the plan is "
        f"computed on a wrong model); use integrator_steps >= {m.steps_needed(n)}"
    )
    raise ConfigError([Problem(source, "solver.integrator_steps", message, given)])
