"""Fast NMPC: SQP with a sparse QP solver on a multiple-shooting transcription.

:class:`FastController` is the ``solver.backend: fast`` implementation of
:class:`~controller.core.mpc.ModelPredictiveController`. It solves the same problem as the do-mpc
reference (:class:`~controller.core.mpc.DoMpcController`): the same objective (stage terms at the
start of each interval, terminal terms at the end, move penalties on scaled moves), input
bounds, hard per-cycle move limits, state bounds (on the inner nodes ``1..N-1``, as do-mpc
applies them), hard and soft constraints as path constraints (held at the start and the end
of every interval and at ``constraint_points`` inner points, with the interval's input; one
slack per constraint and interval with a linear penalty), horizon and sample time. What
differs is the transcription and the solver:

* one decision block per interval, ``[x_k, u_k, v_k (copy of u_k-1), z_k, eps_k]`` (scaled by
  the variables' ``scale``), then ``x_N``; the state is carried over each interval by
  ``integrator_steps`` RK4 steps (rounded up to a multiple of ``constraint_points + 1``, so
  that every constraint point is a step boundary). For a DAE the algebraic state of every RK4
  stage and of every constraint point is a decision variable and its algebraic equation a
  constraint (the root-finding is lifted);
* minimum time (``objective.min_time``): the time to the batch end ``T`` is one more decision
  (after ``x_N``), interval ``k`` lasts ``a_k + b_k T`` (:class:`EndSchedule`: a free end
  time, or a shrinking horizon on the sample grid; ``a`` and ``b`` are parameters of each
  solve), the cost is ``weight * T`` and the batch-end condition a last constraint row;
* every constraint row is scaled for the QP: move rows act on scaled moves, a soft
  constraint's row and slack are divided by a typical magnitude (:func:`constraint_scales`),
  and rows with Jacobian entries above :data:`ROW_MAX` are normalised. Unscaled rows (move
  coefficients of 1000) left qrqp's KKT matrix near-singular: it cycled for its 1000
  iterations and the SQP ended with ``Search_Direction_Becomes_Too_Small``;
* the NLP is built once and solved by ``sqpmethod`` with ``qpsol`` (qrqp) in full steps,
  with the exact Lagrangian Hessian or a Gauss-Newton one (``solver.hessian``: tracking
  residuals J'J, move penalties and a small diagonal ``regularization``; always convex),
  warm-started from the previous primal solution and its multipliers shifted one interval
  (multipliers of inactive bounds and constraints zeroed: qrqp takes any nonzero one as an
  active constraint);
* a step without a warm start (the first, or after a failure) is solved by IPOPT from a
  simulation of the model (``solver.cold_start: ipopt``); ``cold_starts`` counts them;
* with ``jit`` the SQP's and IPOPT's functions are compiled by the system C compiler into
  shared libraries cached on disk (:class:`LibraryCache`, the only I/O of this module) and
  loaded at construction; a failed compile falls back to CasADi's virtual machine with a
  logged warning;
* when the SQP does not converge, IPOPT solves the same NLP in the same cycle from the same
  warm start (``warm_start_init_point``); ``fallbacks`` counts those cycles, each is logged
  as a warning naming the cycle, and the Decision says so (``fallback``, and a
  ``return_status`` naming IPOPT's result and the SQP's failure). When IPOPT fails too, the
  Decision is FAILED, exactly as with the do-mpc backend.

Times are in the plant model's time unit; values at the interface are physical.
"""

from __future__ import annotations

import hashlib
import itertools
import logging
import math
import os
import shutil
import subprocess
import tempfile
import time
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal, cast

import casadi as ca
import numpy as np

from controller.config import ControllerConfig, robust_scenarios
from controller.core.mpc import (
    ACCEPTED_STATUSES,
    Decision,
    ModelPredictiveController,
    SolveStatus,
    ipopt_options,
    move_limits,
    nl_constraints,
    objective_terms,
)
from controller.errors import ConfigError, Problem
from plant_models import PlantModel, Role

log = logging.getLogger(__name__)

#: RK4 nodes (fraction of a step) and weights.
_RK4_C = (0.0, 0.5, 0.5, 1.0)
_RK4_B = (1.0 / 6, 1.0 / 3, 1.0 / 3, 1.0 / 6)

#: The solver arguments that never change.
BOUNDS = ("lbx", "ubx", "lbg", "ubg")

#: C compiler flags of the jit library.
COMPILE_FLAGS: tuple[str, ...] = ("-O2",)

#: Constraint rows with larger Jacobian entries than this are scaled to 1 (see _row_scaled).
ROW_MAX = 10.0

#: Iteration cap of one qrqp solve (a warm-started QP takes a few; a cycling one is cut off).
QRQP_MAX_ITER = 100

#: A multiplier is kept in the warm start only where its bound or constraint is active to
#: this (scaled) tolerance; IPOPT leaves small nonzero multipliers on inactive ones, which an
#: active-set QP would take as active.
ACTIVE_TOL = 1e-6

#: Extra IPOPT options of the fallback: start from the SQP's warm start and multipliers.
WARM_IPOPT: dict[str, Any] = {
    "ipopt.warm_start_init_point": "yes",
    "ipopt.warm_start_bound_push": 1e-6,
    "ipopt.warm_start_mult_bound_push": 1e-6,
    "ipopt.mu_init": 1e-4,
}


# ---------------------------------------------------------------------- transcription
@dataclass(frozen=True)
class Transcription:
    """The multiple-shooting NLP and where each quantity sits in its vectors.

    ``nlp`` has ``x`` (the decision vector, scaled), ``p`` (``[x0, u_prev, parameters]``,
    physical), ``f`` and ``g``. ``w_block``/``g_block`` are the sizes of one interval's block
    in the decision and constraint vectors (``g`` starts with ``nx`` initial-value rows).
    """

    nlp: dict[str, Any]
    gauss_newton: ca.Function  # nlp_hess_l(x, p, lam_f, lam_g) without constraint curvature
    lbx: np.ndarray
    ubx: np.ndarray
    lbg: np.ndarray
    ubg: np.ndarray
    w_block: int
    g_block: int
    x_idx: np.ndarray  # (N + 1, nx)
    u_idx: np.ndarray  # (N, nu)
    z_idx: np.ndarray  # (N, n_stage * nz)
    eps_idx: np.ndarray  # (N, n_soft)
    soft_names: tuple[str, ...]
    eps_scale: np.ndarray  # (n_soft,) physical slack = eps_scale * scaled slack
    interval: ca.Function  # (xs, u, zs, p) -> (xs_next, alg residuals)
    row_scale: np.ndarray | None = field(default=None)  # g = row_scale * unscaled rows
    # Minimum time: the index of the time to the batch end (scaled by the sample time) in the
    # decision vector, and the batch-end row(s) at the end of g (after the interval blocks).
    t_end_idx: int | None = None
    n_end_rows: int = 0
    # Robust multi-stage (transcribe_robust): ``n_scenarios`` segments of the nominal layout
    # (``segment`` decision entries and ``g_segment`` constraint rows each; the *_idx above
    # are scenario 0's), then ``n_nonanticipative`` equality rows in g. ``scenario_p[s][k]``
    # is the parameter vector of scenario ``s`` at interval ``k`` with the current values
    # replaced by ``fixed``: one dict of uncertain values per combination, by
    # ``scenario_combo[s][k]``.
    n_scenarios: int = 1
    segment: int = 0
    g_segment: int = 0
    n_nonanticipative: int = 0
    fixed: tuple[dict[str, float], ...] = ({},)
    scenario_combo: tuple[tuple[int, ...], ...] = ()

    def scenario_index(self, idx: np.ndarray) -> np.ndarray:
        """``idx`` (scenario 0's indices into the decision vector) for every scenario,
        stacked on a new first axis."""
        offsets = np.arange(self.n_scenarios) * self.segment
        return offsets.reshape((-1,) + (1,) * idx.ndim) + idx[None]


def _named(model: PlantModel, name: str, x: Any, z: Any, u: Any, expr: Any) -> Any:
    for names, vec in (
        (model.state_names, x),
        (model.input_names, u),
        (model.algebraic_names, z),
        (model.expression_names, expr),
    ):
        if name in names:
            return vec[names.index(name)]
    raise KeyError(name)  # check_controller has rejected unknown names already


def _interval(model: PlantModel, steps: int, segments: int = 1) -> tuple[ca.Function, int]:
    """One interval of RK4 on scaled states, in ``segments`` equal parts (constraint points).

    ``interval(xs, u, zs, p, h) -> (xs_end, alg residuals, xs at each segment's end)`` over an
    interval of length ``h``: each segment takes ``ceil(steps / segments)`` RK4 steps, so that
    every constraint point is a step boundary. For a DAE ``zs`` holds the algebraic state of
    every RK4 stage, then one per segment end (its constraint point: consistent with the
    state there and the interval's input ``u``); the residuals follow the same order. The
    second result is the number of algebraic blocks of ``zs`` (0 for an ODE).
    """
    nx, nz = len(model.state_names), len(model.algebraic_names)
    xsc, zsc = model.scales(Role.STATE), model.scales(Role.ALGEBRAIC)
    per_segment = -(-steps // segments)
    n_rk = per_segment * segments
    n_blocks = 4 * n_rk + segments if nz else 0
    xs = ca.SX.sym("xs", nx)
    u = ca.SX.sym("u", len(model.input_names))
    zs = ca.SX.sym("zs", nz * n_blocks)
    p = ca.SX.sym("p", len(model.parameter_names))
    h_interval = ca.SX.sym("h")
    h = h_interval / n_rk

    def z_block(j: int) -> Any:
        return zs[j * nz : (j + 1) * nz] * zsc if nz else ca.SX(0, 1)

    x, res, points, j = xs, [], [], 0
    for step in range(n_rk):
        k_prev: Any = None
        acc: Any = 0
        for c, b in zip(_RK4_C, _RK4_B, strict=True):
            xst = x if k_prev is None else x + c * h * k_prev
            xdot, alg, _, _ = model.function(xst * xsc, z_block(j), u, p)
            if nz:
                res.append(alg)
                j += 1
            k_prev = xdot / xsc
            acc = acc + b * k_prev
        x = x + h * acc
        if (step + 1) % per_segment == 0:
            points.append(x)
    if nz:
        for i, xp in enumerate(points):
            res.append(model.function(xp * xsc, z_block(4 * n_rk + i), u, p)[1])
    return (
        ca.Function(
            "interval",
            [xs, u, zs, p, h_interval],
            [x, ca.vertcat(*res) if res else ca.SX(0, 1), ca.horzcat(*points)],
        ),
        n_blocks,
    )


def _stage(
    config: ControllerConfig,
    model: PlantModel,
    interval: ca.Function,
    n_stage: int,
    eps_weight: float = 1.0,
) -> _Stage:
    """One interval's constraints and cost, and the terminal cost, as SX Functions.

    ``stage(xs, us, vs, zs, eps, xs_next, vs_next, p, h) -> (g, f)`` on scaled variables,
    where ``vs`` is a copy of the previous input (so the Hessian is block diagonal) and ``h``
    the interval's length, with
    ``g = [shooting defect, input copy, algebraic residuals, moves, constraint rows]``;
    ``terminal(xs, p) -> f``. The constraint rows hold every configured constraint at each
    constraint point of the interval (:func:`points_per_interval`: its start, the
    ``constraint_points`` inner points and its end, all with the interval's input), point by
    point; a soft constraint has one slack per interval, shared by its points. The soft
    constraints' penalties are multiplied by ``eps_weight`` (a robust transcription averages
    the stage costs over its scenarios but sums their slack penalties, as do-mpc does: see
    :func:`transcribe_robust`).
    """
    nx, nu, nz = len(model.state_names), len(model.input_names), len(model.algebraic_names)
    xsc, usc, zsc = (model.scales(r) for r in (Role.STATE, Role.INPUT, Role.ALGEBRAIC))
    cons = nl_constraints(config)
    soft = [c for c in cons if c.soft]
    xs, us = ca.SX.sym("xs", nx), ca.SX.sym("us", nu)
    zs, eps = ca.SX.sym("zs", nz * n_stage), ca.SX.sym("eps", len(soft))
    xs_next, before = ca.SX.sym("xs_next", nx), ca.SX.sym("vs", nu)
    vs_next = ca.SX.sym("vs_next", nu)
    p = ca.SX.sym("p", len(model.parameter_names))
    h = ca.SX.sym("h")
    x, u = xs * xsc, us * usc
    z = zs[:nz] * zsc if nz else ca.SX(0, 1)
    expr = model.function(x, z, u, p)[3]

    def symbol(name: str) -> Any:
        return _named(model, name, x, z, u, expr)

    def depends(e: Any) -> bool:
        return bool(ca.depends_on(ca.SX(0) + e, ca.vertcat(us, zs)))

    lterm, mterm = objective_terms(config, model, "<fast>", symbol, depends)
    x_end, alg, x_points = interval(xs, u, zs, p, h)
    g: list[Any] = [xs_next - x_end, vs_next - us, alg]
    for j, name in enumerate(model.input_names):
        down, up = move_limits(config, name)
        if math.isfinite(down) or math.isfinite(up):
            g.append(us[j] - before[j])  # a scaled move: unit coefficients in the QP
    f: Any = ca.SX(0) + lterm
    scales = constraint_scales(config, model)
    for c, scale in zip(cons, scales, strict=True):
        if c.soft:
            f += c.penalty * scale * eps_weight * eps[soft.index(c)]
    # The constraint points: the start (the first RK4 stage's z), then each segment's end
    # with its own algebraic block (the last blocks of zs).
    points = [(x, z, expr)]
    first_point = n_stage - x_points.shape[1] if nz else 0
    for i in range(x_points.shape[1]):
        xp = x_points[:, i] * xsc
        zp = zs[(first_point + i) * nz : (first_point + i + 1) * nz] * zsc if nz else z
        points.append((xp, zp, model.function(xp, zp, u, p)[3]))
    for xp, zp, ep in points:
        for c, scale in zip(cons, scales, strict=True):
            # The row and its slack in units of ``scale``: eps = scale * eps_scaled.
            row = c.sign * _named(model, c.expression, xp, zp, u, ep) / scale
            if c.soft:
                row -= eps[soft.index(c)]
            g.append(row)
    penalty = np.array([config.inputs[n].move_penalty for n in model.input_names])
    moves = ca.dot(ca.DM(penalty), (us - before) ** 2)
    f += moves
    stage = ca.Function(
        "stage", [xs, us, before, zs, eps, xs_next, vs_next, p, h], [ca.vertcat(*g), f]
    )
    # A terminal term depends on states and parameters only (objective_terms checks it).
    m_fun = ca.Function("mterm_full", [xs, us, zs, p], [ca.SX(0) + mterm])
    xs_t = ca.SX.sym("xs", nx)
    terminal = ca.Function(
        "terminal", [xs_t, p], [m_fun(xs_t, ca.DM.zeros(nu), ca.DM.zeros(nz * n_stage), p)]
    )
    # Gauss-Newton Hessian blocks: tracking residuals J'J, the (quadratic) move penalties,
    # and ``regularization`` on the diagonal; no constraint curvature, so they are PSD.
    reg = config.solver.regularization
    block = ca.vertcat(xs, us, before, zs, eps)
    res_stage: list[Any] = []
    res_term: list[Any] = []
    for t in config.objective.tracking:
        var = model.all_variables.get(t.variable)
        err = (symbol(t.variable) - t.setpoint) / (var.scale if var else 1.0)
        res_stage.append(math.sqrt(t.weight) * err)
        if t.terminal_weight > 0:
            res_term.append(math.sqrt(t.terminal_weight) * err)
    h_stage = ca.hessian(moves, block)[0] + reg * ca.SX.eye(block.shape[0])
    if res_stage:
        jr = ca.jacobian(ca.vertcat(*res_stage), block)
        h_stage += 2 * ca.mtimes(jr.T, jr)
    h_term: Any = reg * ca.SX.eye(nx)
    if res_term:
        jt = ca.jacobian(ca.vertcat(*res_term), xs)
        h_term += 2 * ca.mtimes(jt.T, jt)
    stage_hess = ca.Function("stage_hess", [xs, us, before, zs, eps, p], [h_stage])
    terminal_hess = ca.Function("terminal_hess", [xs, p], [h_term])
    return _Stage(stage, terminal, stage_hess, terminal_hess, tuple(c.name for c in soft))


@dataclass(frozen=True)
class _Stage:
    stage: ca.Function
    terminal: ca.Function
    stage_hess: ca.Function
    terminal_hess: ca.Function
    soft_names: tuple[str, ...]


def constraint_scales(config: ControllerConfig, model: PlantModel) -> list[float]:
    """A typical magnitude of every constraint row (:func:`nl_constraints` order).

    The variable's ``scale`` for a model variable; otherwise the power of ten nearest to the
    expression's value at the model's initial state and nominal inputs (1 when that is 0).
    Rows (and their slacks) are divided by it so that the QP sees unit-sized coefficients.
    """
    x = model.vector(Role.STATE, model.initial_state)
    u = model.vector(Role.INPUT, model.nominal_inputs)
    z = model.vector(Role.ALGEBRAIC, model.initial_algebraic) if model.is_dae else np.zeros(0)
    expr = np.asarray(model.function(x, z, u, model.parameter_vector())[3], dtype=float).ravel()
    values = dict(zip(model.expression_names, expr, strict=True))
    out: list[float] = []
    for c in nl_constraints(config):
        var = model.all_variables.get(c.expression)
        if var is not None and var.role is not Role.OUTPUT:
            out.append(float(var.scale))
            continue
        out.append(_magnitude(float(values.get(c.expression, 0.0))))
    return out


def _stage_bounds(config: ControllerConfig, model: PlantModel) -> tuple[list[float], list[float]]:
    """Bounds of one interval's ``g`` rows after the defect and algebraic rows (scaled)."""
    lo: list[float] = []
    hi: list[float] = []
    usc = model.scales(Role.INPUT)
    for j, name in enumerate(model.input_names):
        down, up = move_limits(config, name)
        if math.isfinite(down) or math.isfinite(up):
            lo.append(-down / usc[j])
            hi.append(up / usc[j])
    for _ in range(points_per_interval(config)):
        for c, scale in zip(nl_constraints(config), constraint_scales(config, model), strict=True):
            lo.append(-math.inf)
            hi.append(c.sign * c.bound / scale)
    return lo, hi


def points_per_interval(config: ControllerConfig) -> int:
    """Points of every interval at which the constraints hold: its start, the configured
    ``constraint_points`` inside it (equally spaced) and its end."""
    return config.constraint_points + 2


def transcribe(
    config: ControllerConfig, model: PlantModel, source: str, steps: int
) -> Transcription:
    """Build the multiple-shooting NLP of ``config`` for ``model`` (see the module doc).

    The intervals are one SX ``stage`` Function mapped over the horizon, so the NLP's
    derivatives (and its generated C code) hold one interval's code, not ``N`` copies.
    A config with a ``robust`` section is transcribed by :func:`transcribe_robust`.
    """
    if config.robust is not None:
        return transcribe_robust(config, model, source, steps)
    n = config.horizon
    nx, nu, nz = len(model.state_names), len(model.input_names), len(model.algebraic_names)
    xsc, usc = model.scales(Role.STATE), model.scales(Role.INPUT)
    interval, n_stage = _interval(model, steps, config.constraint_points + 1)
    st = _stage(config, model, interval, n_stage)
    stage, terminal, soft_names = st.stage, st.terminal, st.soft_names
    n_eps = len(soft_names)
    x0, u_prev = ca.MX.sym("x0", nx), ca.MX.sym("u_prev", nu)
    p = ca.MX.sym("p", len(model.parameter_names))
    xs = [ca.MX.sym(f"xs{k}", nx) for k in range(n + 1)]
    us = [ca.MX.sym(f"us{k}", nu) for k in range(n)]
    vs = [ca.MX.sym(f"vs{k}", nu) for k in range(n + 1)]
    zs = [ca.MX.sym(f"zs{k}", nz * n_stage) for k in range(n)]
    eps = [ca.MX.sym(f"eps{k}", n_eps) for k in range(n)]
    w: list[Any] = []
    for k in range(n):
        w += [xs[k], us[k], vs[k], zs[k], eps[k]]
    w += [xs[n], vs[n]]
    mt = config.objective.min_time
    # Interval lengths: the sample time, or (minimum time) a_k + b_k * T with the time to the
    # batch end T a decision (scaled by the sample time) and a, b parameters of each solve.
    durations: Any = ca.DM.ones(1, n) * config.sample_time
    p_timing: list[Any] = []
    end_rows: list[Any] = []
    cost_time: Any = 0
    if mt is not None:
        t_end = ca.MX.sym("t_end")
        a, b = ca.MX.sym("a", n), ca.MX.sym("b", n)
        w.append(t_end)
        p_timing = [a, b]
        durations = (a + b * t_end * config.sample_time).T
        end_row, _ = end_condition(config, model, source)
        end_rows = [end_row(xs[n], p)]
        cost_time = mt.weight * t_end * config.sample_time
    g_map, f_map = stage.map(n)(
        ca.horzcat(*xs[:-1]),
        ca.horzcat(*us),
        ca.horzcat(*vs[:-1]),
        ca.horzcat(*zs),
        ca.horzcat(*eps),
        ca.horzcat(*xs[1:]),
        ca.horzcat(*vs[1:]),
        ca.repmat(p, 1, n),
        durations,
    )
    g = ca.vertcat(xs[0] - x0 / xsc, vs[0] - u_prev / usc, ca.vec(g_map), *end_rows)
    f = ca.sum2(f_map) + terminal(xs[n], p) + cost_time
    p_all = ca.vertcat(x0, u_prev, p, *p_timing)
    h_map = st.stage_hess.map(n)(
        ca.horzcat(*xs[:-1]),
        ca.horzcat(*us),
        ca.horzcat(*vs[:-1]),
        ca.horzcat(*zs),
        ca.horzcat(*eps),
        ca.repmat(p, 1, n),
    )
    wb = h_map.shape[0]
    blocks_h = [h_map[:, k * wb : (k + 1) * wb] for k in range(n)]
    blocks_h += [st.terminal_hess(xs[n], p), config.solver.regularization * ca.MX.eye(nu)]
    if mt is not None:
        blocks_h.append(config.solver.regularization * ca.MX.eye(1))
    w_all, lam_f = ca.vertcat(*w), ca.MX.sym("lam_f")
    lam_g = ca.MX.sym("lam_g", g.shape[0])
    hess = ca.Function(
        "nlp_hess_l",
        [w_all, p_all, lam_f, lam_g],
        [lam_f * ca.diagcat(*blocks_h)],
        ["x", "p", "lam_f", "lam_g"],
        ["hess_gamma_x_x"],
    )

    w_block = nx + 2 * nu + nz * n_stage + n_eps
    n_w = w_block * n + nx + nu + (1 if mt is not None else 0)
    idx = np.arange(n_w)
    blocks = idx[: w_block * n].reshape(n, w_block)
    x_idx = np.vstack([blocks[:, :nx], idx[w_block * n : w_block * n + nx][None, :]])
    u_idx = blocks[:, nx : nx + nu]
    z_idx = blocks[:, nx + 2 * nu : nx + 2 * nu + nz * n_stage]
    eps_idx = blocks[:, nx + 2 * nu + nz * n_stage :]
    lbw, ubw = np.full(n_w, -np.inf), np.full(n_w, np.inf)
    lbw[u_idx] = np.array([config.inputs[nm].lower for nm in model.input_names]) / usc
    ubw[u_idx] = np.array([config.inputs[nm].upper for nm in model.input_names]) / usc
    lbw[eps_idx] = 0.0
    for name, (lo, hi) in config.state_bounds.items():
        i = model.state_names.index(name)
        inner = x_idx[1:n, i]  # do-mpc bounds the inner nodes only (no terminal bounds)
        if lo is not None:
            lbw[inner] = lo / xsc[i]
        if hi is not None:
            ubw[inner] = hi / xsc[i]
    lo_rows, hi_rows = _stage_bounds(config, model)
    n_alg = nz * n_stage
    n_eq = nx + nu + n_alg
    lbg = np.concatenate([np.zeros(nx + nu), np.tile(np.r_[np.zeros(n_eq), lo_rows], n)])
    ubg = np.concatenate([np.zeros(nx + nu), np.tile(np.r_[np.zeros(n_eq), hi_rows], n)])
    if mt is not None:  # the batch end reached (row >= 0); T's bounds are set at each step
        lbg, ubg = np.r_[lbg, 0.0], np.r_[ubg, np.inf]
        lbw[-1], ubw[-1] = 0.0, np.inf
    return Transcription(
        nlp={"x": w_all, "p": p_all, "f": f, "g": g},
        gauss_newton=hess,
        lbx=lbw,
        ubx=ubw,
        lbg=lbg,
        ubg=ubg,
        w_block=w_block,
        g_block=n_eq + len(lo_rows),
        x_idx=x_idx,
        u_idx=u_idx,
        z_idx=z_idx,
        eps_idx=eps_idx,
        soft_names=soft_names,
        eps_scale=np.array(
            [
                sc
                for c, sc in zip(
                    nl_constraints(config), constraint_scales(config, model), strict=True
                )
                if c.soft
            ],
            dtype=float,
        ),
        interval=interval,
        t_end_idx=n_w - 1 if mt is not None else None,
        n_end_rows=len(end_rows),
    )


def end_condition(
    config: ControllerConfig, model: PlantModel, source: str
) -> tuple[ca.Function, float]:
    """The batch end of ``objective.min_time`` as ``end(xs_scaled, p) -> row`` (>= 0 once
    the end is reached, in units of the returned scale: the variable's scale for a model
    variable, else the power of ten nearest to the target's value at nominal).

    Raises ConfigError when the expression or the target depends on inputs or algebraic
    states: the end is a condition on the last node's state, where neither is defined.
    """
    mt = config.objective.min_time
    if mt is None:
        raise ValueError("end_condition needs objective.min_time")
    nx, nu, nz = len(model.state_names), len(model.input_names), len(model.algebraic_names)
    xs, p = ca.SX.sym("xs", nx), ca.SX.sym("p", len(model.parameter_names))
    u, z = ca.SX.sym("u", nu), ca.SX.sym("z", nz)
    x = xs * model.scales(Role.STATE)
    expr = model.function(x, z, u, p)[3]
    value = _named(model, mt.expression, x, z, u, expr)
    target = _named(model, mt.target, x, z, u, expr) if isinstance(mt.target, str) else mt.target
    row = ca.SX(0) + value - target
    if ca.depends_on(row, ca.vertcat(u, z)):
        raise ConfigError(
            [
                Problem(
                    source,
                    "objective.min_time",
                    "the batch end may only depend on states and parameters",
                    [mt.expression, mt.target],
                )
            ]
        )
    var = model.all_variables.get(mt.expression)
    if var is not None and var.role is Role.STATE:
        scale = float(var.scale)
    else:
        at = ca.Function("at", [xs, p], [ca.SX(0) + target])(
            model.vector(Role.STATE, model.initial_state) / model.scales(Role.STATE),
            model.parameter_vector(),
        )
        scale = _magnitude(float(at))
    return ca.Function("batch_end", [xs, p], [row / scale]), scale


def _magnitude(value: float) -> float:
    """The power of ten nearest to ``|value|`` (within 1e-6..1e6); 1 for 0 or non-finite."""
    value = abs(value)
    if not math.isfinite(value) or value < 1e-12:
        return 1.0
    return float(10.0 ** min(6, max(-6, round(math.log10(value)))))


def transcribe_robust(
    config: ControllerConfig, model: PlantModel, source: str, steps: int
) -> Transcription:
    """The multi-stage (scenario-tree) NLP of a robust ``config``, as do-mpc builds it.

    Every combination of the uncertain parameters' values (:func:`robust_scenarios`, do-mpc's
    order) is a branch; the tree branches at each of the first ``n_robust`` intervals, so a
    scenario is a path of ``n_robust`` combinations (interval ``k`` uses the
    ``min(k, n_robust - 1)``-th) and there are ``combinations ** n_robust`` of them. Each
    scenario is a copy of the nominal multiple-shooting problem (same layout, its own
    parameters), and its inputs at interval ``k < n_robust`` equal those of every scenario
    with the same past (non-anticipativity rows at the end of ``g``; with ``n_robust = 1``
    all scenarios share the first input). The objective is do-mpc's: the stage, terminal and
    move terms averaged over the scenarios with equal weights, the soft constraints' slack
    penalties summed over them (do-mpc adds its ``epsterm`` unweighted per branch). The
    uncertain parameters are constants of the NLP; the others come from its ``p``, as in the
    nominal problem, so the solver's interface is unchanged.
    """
    robust = config.robust
    if robust is None:
        raise ValueError("transcribe_robust needs a config with a robust section")
    n = config.horizon
    nx, nu, nz = len(model.state_names), len(model.input_names), len(model.algebraic_names)
    xsc, usc = model.scales(Role.STATE), model.scales(Role.INPUT)
    combos = robust_scenarios(config, model)
    paths = list(itertools.product(range(len(combos)), repeat=robust.n_robust))
    n_s = len(paths)
    stage_combo = tuple(
        tuple(path[min(k, robust.n_robust - 1)] for k in range(n)) for path in paths
    )
    # The nominal problem's layout, bounds and stage Functions (one scenario's segment).
    nominal = transcribe(config.model_copy(update={"robust": None}), model, source, steps)
    interval, n_stage = nominal.interval, nominal.z_idx.shape[1] // max(1, nz)
    st = _stage(config, model, interval, n_stage, eps_weight=float(n_s))
    n_eps = len(st.soft_names)
    x0, u_prev = ca.MX.sym("x0", nx), ca.MX.sym("u_prev", nu)
    p = ca.MX.sym("p", len(model.parameter_names))
    p_combo = [
        ca.vertcat(
            *[
                ca.DM(fixed[name]) if name in fixed else p[i]
                for i, name in enumerate(model.parameter_names)
            ]
        )
        for fixed in combos
    ]
    xs = [[ca.MX.sym(f"xs{s}_{k}", nx) for k in range(n + 1)] for s in range(n_s)]
    us = [[ca.MX.sym(f"us{s}_{k}", nu) for k in range(n)] for s in range(n_s)]
    vs = [[ca.MX.sym(f"vs{s}_{k}", nu) for k in range(n + 1)] for s in range(n_s)]
    zs = [[ca.MX.sym(f"zs{s}_{k}", nz * n_stage) for k in range(n)] for s in range(n_s)]
    eps = [[ca.MX.sym(f"eps{s}_{k}", n_eps) for k in range(n)] for s in range(n_s)]
    w: list[Any] = []
    for s in range(n_s):
        for k in range(n):
            w += [xs[s][k], us[s][k], vs[s][k], zs[s][k], eps[s][k]]
        w += [xs[s][n], vs[s][n]]

    def cols(var: list[list[Any]], lo: int, hi: int) -> Any:
        return ca.horzcat(*[v for s in range(n_s) for v in var[s][lo:hi]])

    p_cols = ca.horzcat(*[p_combo[c] for s in range(n_s) for c in stage_combo[s]])
    g_map, f_map = st.stage.map(n_s * n)(
        cols(xs, 0, n),
        cols(us, 0, n),
        cols(vs, 0, n),
        cols(zs, 0, n),
        cols(eps, 0, n),
        cols(xs, 1, n + 1),
        cols(vs, 1, n + 1),
        p_cols,
        ca.DM.ones(1, n_s * n) * config.sample_time,
    )
    g: list[Any] = []
    for s in range(n_s):
        g += [xs[s][0] - x0 / xsc, vs[s][0] - u_prev / usc, ca.vec(g_map[:, s * n : (s + 1) * n])]
    n_na = 0
    for k in range(robust.n_robust):  # non-anticipativity: one input per past at interval k
        first: dict[tuple[int, ...], int] = {}
        for s, path in enumerate(paths):
            r = first.setdefault(path[:k], s)
            if r != s:
                g.append(us[s][k] - us[r][k])
                n_na += nu
    terminal = sum(st.terminal(xs[s][n], p_combo[stage_combo[s][-1]]) for s in range(n_s))
    f = (ca.sum2(f_map) + terminal) / n_s
    h_map = st.stage_hess.map(n_s * n)(
        cols(xs, 0, n), cols(us, 0, n), cols(vs, 0, n), cols(zs, 0, n), cols(eps, 0, n), p_cols
    )
    wb = h_map.shape[0]
    blocks_h: list[Any] = []
    for s in range(n_s):
        blocks_h += [h_map[:, (s * n + k) * wb : (s * n + k + 1) * wb] for k in range(n)]
        blocks_h += [
            st.terminal_hess(xs[s][n], p_combo[stage_combo[s][-1]]),
            config.solver.regularization * ca.MX.eye(nu),
        ]
    w_all, lam_f = ca.vertcat(*w), ca.MX.sym("lam_f")
    g_all = ca.vertcat(*g)
    lam_g = ca.MX.sym("lam_g", g_all.shape[0])
    hess = ca.Function(
        "nlp_hess_l",
        [w_all, ca.vertcat(x0, u_prev, p), lam_f, lam_g],
        [lam_f / n_s * ca.diagcat(*blocks_h)],
        ["x", "p", "lam_f", "lam_g"],
        ["hess_gamma_x_x"],
    )
    segment, g_segment = nominal.lbx.shape[0], nominal.lbg.shape[0]
    return replace(
        nominal,
        nlp={"x": w_all, "p": ca.vertcat(x0, u_prev, p), "f": f, "g": g_all},
        gauss_newton=hess,
        lbx=np.tile(nominal.lbx, n_s),
        ubx=np.tile(nominal.ubx, n_s),
        lbg=np.r_[np.tile(nominal.lbg, n_s), np.zeros(n_na)],
        ubg=np.r_[np.tile(nominal.ubg, n_s), np.zeros(n_na)],
        n_scenarios=n_s,
        segment=segment,
        g_segment=g_segment,
        n_nonanticipative=n_na,
        fixed=tuple(combos),
        scenario_combo=stage_combo,
    )


# ---------------------------------------------------------------------- compile cache
def default_cache_dir() -> Path:
    """``$PHARMATWIN_CACHE``, else ``~/.cache/pharmatwin``."""
    env = os.environ.get("PHARMATWIN_CACHE")
    return Path(env) if env else Path.home() / ".cache" / "pharmatwin"


class LibraryCache:
    """Compiled NLP libraries on disk, keyed by the CasADi version and the C code's hash.

    The only I/O of the fast path. A library is compiled to a temporary file in the cache
    folder and moved into place with ``os.replace``, so two processes compiling the same
    problem at once both end up loading a complete file.
    """

    def __init__(
        self,
        directory: Path | None = None,
        compiler: str = "gcc",
        flags: tuple[str, ...] = COMPILE_FLAGS,
    ) -> None:
        self.directory = directory if directory is not None else default_cache_dir()
        self.compiler = compiler
        self.flags = flags
        self.compiled = 0  # compiler runs by this instance

    def library(self, code: str) -> Path:
        """The shared library built from C ``code``; compiles it on a cache miss.

        Raises OSError or subprocess.CalledProcessError when it cannot be built.
        """
        head = f"casadi {ca.CasadiMeta.version()} {self.compiler} {' '.join(self.flags)}\n"
        key = hashlib.sha256(f"{head}{code}".encode()).hexdigest()[:32]
        path = self.directory / f"nlp_{key}.so"
        if path.exists():
            return path
        if shutil.which(self.compiler) is None:
            raise OSError(f"C compiler {self.compiler!r} not found on PATH")
        self.directory.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=self.directory) as tmp:
            src, lib = Path(tmp) / "nlp.c", Path(tmp) / "nlp.so"
            src.write_text(code, encoding="utf-8")
            cmd = [self.compiler, *self.flags, "-fPIC", "-shared", str(src), "-o", str(lib)]
            subprocess.run(cmd, check=True, capture_output=True, timeout=600)
            self.compiled += 1
            os.replace(lib, path)
        return path


def nlp_code(solver: ca.Function) -> str:
    """C code of every function ``solver`` evaluates (its oracle and derivatives)."""
    gen = ca.CodeGenerator("nlp.c")
    gen.add(solver.oracle())
    for name in solver.get_function():
        gen.add(solver.get_function(name))
    return str(gen.dump())


# ---------------------------------------------------------------------- hot-path helpers
class BufferedSolver:
    """An nlpsol called through a CasADi ``FunctionBuffer`` on preallocated numpy vectors.

    A plain call converts every numpy input to a DM and every output back (with a dict by
    name each way): about 0.15 ms of a 1 ms SQP step. Here the bounds are written once, the
    warm start and parameters are copied into place, and the solver writes its outputs into
    numpy vectors directly; the solve itself is the same (same inputs, same code).
    """

    def __init__(self, solver: ca.Function, ocp: Transcription) -> None:
        self.solver = solver
        self.args = {n: np.zeros(solver.nnz_in(n)) for n in solver.name_in()}
        self.res = {n: np.zeros(solver.nnz_out(n)) for n in solver.name_out()}
        for name, value in zip(BOUNDS, (ocp.lbx, ocp.ubx, ocp.lbg, ocp.ubg), strict=True):
            self.args[name][:] = value
        buf, self._eval = solver.buffer()
        # CasADi's stubs miss set_arg's and set_res's buffer-protocol overload.
        self._buf = cast(Any, buf)
        # The buffer keeps raw pointers: these arrays are only ever written in place.
        for i, name in enumerate(solver.name_in()):
            self._buf.set_arg(i, self.args[name].data)
        for i, name in enumerate(solver.name_out()):
            self._buf.set_res(i, self.res[name].data)

    def __call__(
        self, x0: np.ndarray, lam_x0: np.ndarray, lam_g0: np.ndarray, p: np.ndarray
    ) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
        """The solution (fresh 1-D arrays ``x``, ``f``, ``g``, ``lam_x``, ``lam_g``), stats."""
        a = self.args
        a["x0"][:], a["lam_x0"][:], a["lam_g0"][:], a["p"][:] = x0, lam_x0, lam_g0, p
        self._eval()
        r = self.res
        sol = {k: r[k].copy() for k in ("x", "f", "g", "lam_x", "lam_g")}
        try:
            stats = dict(self._buf.stats())
        except RuntimeError as exc:  # sqpmethod leaves no status when e.g. its QP setup fails
            stats = {"success": False, "return_status": f"no status ({exc})".splitlines()[0]}
        return sol, stats


def _active_tol(lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
    """The activity tolerance of every bound or constraint row (see :data:`ACTIVE_TOL`)."""
    with np.errstate(invalid="ignore"):
        return ACTIVE_TOL * np.maximum(1.0, np.abs(np.where(np.isfinite(lo), lo, hi)))


def _shift_index(ocp: Transcription, n: int) -> tuple[np.ndarray, np.ndarray]:
    """Gather indices that shift a primal (or bound multiplier) and a constraint multiplier
    vector one interval on: block ``k`` takes block ``k + 1``; the last block takes ``x_N``
    and the copy of ``u_N-1`` and keeps the rest; ``x_N``, its copy and the initial-value
    rows stay. A robust problem is shifted scenario by scenario; its non-anticipativity
    rows keep their multipliers."""
    nx, nu = ocp.x_idx.shape[1], ocp.u_idx.shape[1]
    n_w = ocp.segment or ocp.lbx.shape[0]
    n_g = ocp.g_segment or ocp.lbg.shape[0]
    idx = np.arange(n_w)
    blocks = idx[: ocp.w_block * n].reshape(n, ocp.w_block).copy()
    tail = idx[ocp.w_block * n :]  # x_N, the copy of u_N-1 (and the time to the end)
    blocks[:-1] = blocks[1:]
    blocks[-1, :nx] = tail[:nx]
    blocks[-1, nx + nu : nx + 2 * nu] = tail[nx : nx + nu]
    gdx = np.arange(n_g)
    gb = gdx[nx + nu : nx + nu + n * ocp.g_block].reshape(n, ocp.g_block).copy()
    gb[:-1] = gb[1:]
    w_shift = np.concatenate([blocks.ravel(), tail])
    g_shift = np.concatenate([gdx[: nx + nu], gb.ravel(), gdx[nx + nu + n * ocp.g_block :]])
    if ocp.n_scenarios == 1:
        return w_shift, g_shift
    n_s = ocp.n_scenarios
    w_all = (np.arange(n_s)[:, None] * n_w + w_shift[None]).ravel()
    g_all = (np.arange(n_s)[:, None] * n_g + g_shift[None]).ravel()
    na = n_s * n_g + np.arange(ocp.n_nonanticipative)
    return w_all, np.concatenate([g_all, na])


def _input_limits(
    config: ControllerConfig, model: PlantModel, tol: float = 1e-6
) -> tuple[np.ndarray, np.ndarray]:
    """The limits of ``ModelPredictiveController._within_input_limits`` as vectors."""
    lo, hi = [], []
    for name in model.input_names:
        spec = config.inputs[name]
        span = max(1.0, abs(spec.upper - spec.lower))
        lo.append(spec.lower - tol * span)
        hi.append(spec.upper + tol * span)
    return np.array(lo, dtype=float), np.array(hi, dtype=float)


def _numpy(sol: Mapping[str, Any]) -> dict[str, np.ndarray]:
    """A solver's DM outputs as fresh 1-D numpy vectors."""
    return {k: np.asarray(v, dtype=float).ravel() for k, v in sol.items()}


# ---------------------------------------------------------------------- minimum time
#: A plan's end within this fraction of a sample of an interval's start is at that start.
END_TOL = 1e-3


class EndSchedule:
    """The interval lengths of a minimum-time plan (``objective.min_time``), solve by solve.

    Interval ``k`` lasts ``a[k] + b[k] * T`` with ``T`` the time to the batch end, a decision
    of the solve within ``[lower, upper]`` (:meth:`timing`). ``free_end``: the first interval
    lasts one sample, the others share ``T`` minus that sample equally. ``shrinking``: the
    first ``active - 1`` intervals last one sample, the next one ends at the batch end and the
    rest last nothing; ``T`` lies in that last interval. After each solve :meth:`advance`
    moves on one sample (``active`` counts down with the plan's end); a plan that cannot reach
    the end in ``active`` intervals is retried over the whole horizon (:meth:`widen`).
    ``uniform`` (the offline optimum, :mod:`hil.min_time`): every interval lasts ``T / N``.
    """

    def __init__(
        self,
        mode: Literal["free_end", "shrinking", "uniform"],
        horizon: int,
        sample_time: float,
        max_time: float | None = None,
    ) -> None:
        self.mode = mode
        self.horizon = horizon
        self.dt = sample_time
        self.max_time = max_time if max_time is not None else math.inf
        self.active = horizon
        self.settled = False  # shrinking: one interval fewer was just found infeasible

    @classmethod
    def of(cls, config: ControllerConfig) -> EndSchedule | None:
        """The schedule ``objective.min_time`` asks for (None without minimum time)."""
        mt = config.objective.min_time
        if mt is None:
            return None
        return cls(mt.mode, config.horizon, config.sample_time, mt.max_time)

    def timing(self) -> tuple[np.ndarray, np.ndarray, float, float]:
        """``(a, b, lower, upper)``: interval lengths ``a + b * T`` and the bounds of ``T``."""
        n, dt = self.horizon, self.dt
        a, b = np.zeros(n), np.zeros(n)
        if self.mode == "uniform":
            b[:] = 1.0 / n
            return a, b, 0.0, self.max_time
        if self.mode == "free_end":
            a[0], a[1:], b[1:] = dt, -dt / (n - 1), 1.0 / (n - 1)
            return a, b, dt, max(dt, self.max_time)
        m = self.active
        a[: m - 1] = dt
        a[m - 1], b[m - 1] = -(m - 1) * dt, 1.0
        return a, b, (m - 1) * dt, min(m * dt, max(self.max_time, (m - 1) * dt))

    def guess(self, previous: float | None) -> float:
        """A first guess of ``T``: the last plan's one sample on, else the whole horizon at
        one sample per interval, within the bounds."""
        _, _, lo, hi = self.timing()
        if previous is None:
            return min(max(self.horizon * self.dt, lo), hi)
        return min(max(previous - self.dt, lo), hi)

    def durations(self, t_end: float) -> np.ndarray:
        a, b, _, _ = self.timing()
        return a + b * t_end

    def advance(self, t_end: float) -> None:
        """The plan ending ``t_end`` from now was applied for one sample."""
        self.active = max(1, min(self.horizon, math.ceil(t_end / self.dt - END_TOL) - 1))
        self.settled = False

    def widen(self) -> bool:
        """Plan over the whole horizon again; False when it already did."""
        if self.mode != "shrinking" or self.active == self.horizon:
            return False
        self.active = self.horizon
        self.settled = False
        return True

    def could_end_sooner(self, t_end: float) -> bool:
        """Shrinking: the plan's end sits at the start of its last interval, so one interval
        fewer may do (unless that was just found not to)."""
        if self.mode != "shrinking" or self.active <= 1 or self.settled:
            return False
        return t_end <= (self.active - 1 + END_TOL) * self.dt


# ---------------------------------------------------------------------- controller
class FastController(ModelPredictiveController):
    """SQP on multiple shooting, compiled and cached; IPOPT fallback in the same cycle.

    ``library`` is the compiled library in use (None without jit or after a failed
    compile); ``cache`` says whether this construction compiled (``cache.compiled``).
    """

    def __init__(self, config: ControllerConfig, model: PlantModel, source: str = "<config>"):
        super().__init__(config, model, source)
        spec = config.solver
        #: minimum time: the interval lengths of the plans (None: every one a sample)
        self.schedule = self._schedule(config)
        self._t_end: float | None = None  # the last plan's time to the batch end
        self.ocp = transcribe(config, model, source, spec.integrator_steps)
        self._z_guess = model.vector(Role.ALGEBRAIC, model.initial_algebraic)
        self._z_root = self._stage_solver()
        self.ocp = self._row_scaled(self.ocp)
        # Converted once: a numpy vector costs ~30 us to convert at every call.
        o = self.ocp
        self._bounds = {
            k: ca.DM(v) for k, v in zip(BOUNDS, (o.lbx, o.ubx, o.lbg, o.ubg), strict=True)
        }
        self.fallbacks = 0
        self.cycles = 0  # step calls (the log names a fallback's cycle by it)
        self.cold_starts = 0  # steps without a warm start, solved by IPOPT (cold_start: ipopt)
        self.cache = LibraryCache()
        self.library: Path | None = None  # the SQP's library
        self.libraries: list[Path] = []  # every library loaded (the SQP's, IPOPT's)
        self.sqp = self._build_sqp()
        self.ipopt: ca.Function | None = None
        self.ipopt_cold: ca.Function | None = None
        if spec.fallback == "ipopt":
            opts = {**ipopt_options(config), "calc_lam_p": False}
            self.ipopt = self._build("fast_fallback", "ipopt", {**opts, **WARM_IPOPT})
            self.ipopt_cold = self._build("fast_cold", "ipopt", opts)
        self._guess: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None
        # Constants of the hot path (step), computed once.
        self._x_names, self._u_names = model.state_names, model.input_names
        self._xsc, self._usc = model.scales(Role.STATE), model.scales(Role.INPUT)
        self._zsc = model.scales(Role.ALGEBRAIC)
        self._tol_x, self._tol_g = _active_tol(o.lbx, o.ubx), _active_tol(o.lbg, o.ubg)
        self._shift_w, self._shift_g = _shift_index(o, config.horizon)
        self._u_lo, self._u_hi = _input_limits(config, model)
        self._sqp_call = BufferedSolver(self.sqp, o)
        n_steps, n_soft = o.eps_idx.shape  # n_soft may be 0: no soft constraints
        self._eps_all = o.scenario_index(o.eps_idx).reshape(o.n_scenarios * n_steps, n_soft)

    # ------------------------------------------------------------------ building
    def _schedule(self, config: ControllerConfig) -> EndSchedule | None:
        """The minimum-time schedule of the plans (a subclass may plan otherwise)."""
        return EndSchedule.of(config)

    def _row_scaled(self, ocp: Transcription) -> Transcription:
        """``ocp`` with every constraint row whose Jacobian entries exceed :data:`ROW_MAX`
        (at the cold guess from the model's initial state) divided by its largest entry.

        The solution is the same; the QP's KKT matrix is better conditioned (the
        lyophilizer's algebraic rows reach several hundred per unit of ``Lck``).
        """
        m = self.model
        x0 = m.vector(Role.STATE, m.initial_state)
        p = m.parameter_vector(self._params)
        w = self._cold_guess(x0, p, ocp)
        jac = ca.Function(
            "jac_g", [ocp.nlp["x"], ocp.nlp["p"]], [ca.jacobian(ocp.nlp["g"], ocp.nlp["x"])]
        )
        j = jac(w, self._parameters(x0, p))
        rows = np.asarray(j.sparsity().get_triplet()[0], dtype=int)
        row_max = np.zeros(ocp.lbg.shape[0])
        np.maximum.at(row_max, rows, np.abs(np.asarray(j.nonzeros(), dtype=float)))
        d = np.ones_like(row_max)
        big = np.isfinite(row_max) & (row_max > ROW_MAX)
        d[big] = 1.0 / row_max[big]
        if not big.any():
            return ocp
        nlp = dict(ocp.nlp)
        nlp["g"] = ocp.nlp["g"] * ca.DM(d)
        return replace(ocp, nlp=nlp, lbg=ocp.lbg * d, ubg=ocp.ubg * d, row_scale=d)

    def _sqp_options(self) -> dict[str, Any]:
        spec = self.config.solver
        quiet = {"print_header": False, "print_iter": False, "print_info": False}
        qp_opts: dict[str, Any] = {"error_on_fail": False}
        qp_opts.update(quiet if spec.qpsol == "qrqp" else {"printLevel": "none"})
        if spec.qpsol == "qrqp":
            qp_opts["max_iter"] = QRQP_MAX_ITER
        return {
            "qpsol": spec.qpsol,
            "qpsol_options": qp_opts,
            "max_iter": spec.max_iter,
            "tol_pr": spec.tol,
            "tol_du": spec.tol,
            # Full steps: the multipliers stay exactly the QP's, so the QP's active set is
            # warm-started from clean signs (a partial step leaves tiny nonzero multipliers
            # that qrqp takes as active constraints). Warm-started MPC steps need no
            # globalization; a cold start is solved by IPOPT (``cold_start``).
            "max_iter_ls": 0 if not spec.line_search else 3,
            "min_step_size": 1e-9,
            "print_header": False,
            "print_iteration": False,
            "print_status": False,
            "print_time": False,
            "error_on_fail": False,
            "calc_lam_p": False,  # the parameters' multipliers are never used
        }

    def _build_sqp(self) -> ca.Function:
        extra = {}
        if self.config.solver.hessian == "gauss-newton":
            extra["hess_lag"] = self.ocp.gauss_newton
        sqp = self._build("fast_sqp", "sqpmethod", self._sqp_options(), extra)
        self.library = self._library
        return sqp

    def _build(
        self, name: str, plugin: str, opts: dict[str, Any], extra: dict[str, Any] | None = None
    ) -> ca.Function:
        """An nlpsol of the NLP; with ``jit`` loaded from its compiled (cached) library.

        ``extra`` options (such as a custom ``hess_lag``) only shape the generated code: the
        library holds every function the solver evaluates under its standard name.
        """
        plain = ca.nlpsol(name, plugin, self.ocp.nlp, {**opts, **(extra or {})})
        self._library: Path | None = None
        if not self.config.solver.jit:
            return plain
        try:
            self._library = self.cache.library(nlp_code(plain))
            if self._library not in self.libraries:
                self.libraries.append(self._library)
            return ca.nlpsol(name, plugin, str(self._library), opts)
        except (OSError, RuntimeError, subprocess.SubprocessError) as exc:
            log.warning("%s: jit compile failed, solving without it: %s", self.source, exc)
            return plain

    def _stage_solver(self) -> ca.Function | None:
        """For a DAE: the stage algebraic states of one interval, given (x, u, p)."""
        if not self.model.is_dae:
            return None
        f = self.ocp.interval
        zs, h = ca.SX.sym("zs", f.size1_in(2)), ca.SX.sym("h")
        xs, u, p = (ca.SX.sym(n, f.size1_in(i)) for i, n in ((0, "xs"), (1, "u"), (3, "p")))
        res = ca.Function("res", [zs, ca.vertcat(xs, u, p, h)], [f(xs, u, zs, p, h)[1]])
        return ca.rootfinder("stage_z", "newton", res, {"error_on_fail": True})

    # ------------------------------------------------------------------ running
    def reset(self, u_prev: Mapping[str, float]) -> None:
        """Forget the warm start; the next step starts from the working setpoints ``u_prev``."""
        self._u_prev = self.model.vector(Role.INPUT, u_prev)
        self._guess = None

    def _cold_guess(
        self, x0: np.ndarray, p: np.ndarray, ocp: Transcription | None = None
    ) -> np.ndarray:
        """Simulate the model with the setpoints held (the algebraic states solved); with
        minimum time, over the intervals of the schedule's guessed end time."""
        o, m = ocp if ocp is not None else self.ocp, self.model
        xsc, usc = m.scales(Role.STATE), m.scales(Role.INPUT)
        zsc = m.scales(Role.ALGEBRAIC)
        w = np.zeros(o.lbx.shape[0])
        n_stage = o.z_idx.shape[1] // max(1, len(m.algebraic_names))
        names = m.parameter_names
        durations = np.full(self.config.horizon, self.config.sample_time)
        if self.schedule is not None and o.t_end_idx is not None:
            t_end = self.schedule.guess(None)
            durations = self.schedule.durations(t_end)
            w[o.t_end_idx] = t_end / self.config.sample_time
        for s in range(o.n_scenarios):  # a robust problem: each scenario with its parameters
            off = s * o.segment
            xs, us = x0 / xsc, self._u_prev / usc
            zs = np.tile(self._z_guess / zsc, n_stage) if m.is_dae else np.zeros(0)
            w[off + o.u_idx + o.u_idx.shape[1]] = us  # the copies of the previous input
            last = off + int(o.x_idx[-1, -1]) + 1  # the copy of u_N-1 follows x_N
            w[last : last + len(us)] = us
            for k in range(self.config.horizon):
                pk = p
                if o.scenario_combo:
                    fixed = o.fixed[o.scenario_combo[s][k]]
                    pk = np.array([fixed.get(nm, p[i]) for i, nm in enumerate(names)])
                u_idx = off + o.u_idx[k]
                w[off + o.x_idx[k]], w[u_idx] = xs, np.clip(us, o.lbx[u_idx], o.ubx[u_idx])
                h = durations[k]
                if self._z_root is not None:
                    try:
                        args = np.concatenate([xs, self._u_prev, pk, [h]])
                        zs = np.asarray(self._z_root(zs, args)).ravel()
                    except RuntimeError:
                        pass
                    w[off + o.z_idx[k]] = zs
                nxt = np.asarray(o.interval(xs, self._u_prev, zs, pk, h)[0]).ravel()
                xs = nxt if np.all(np.isfinite(nxt)) else xs
            w[off + o.x_idx[-1]] = xs
        return w

    def _shifted(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """The last solution (primal, bound and constraint multipliers) one interval on."""
        if self._guess is None:
            raise RuntimeError("no previous solution to shift")
        w, lam_x, lam_g = self._guess
        return w[self._shift_w], lam_x[self._shift_w], lam_g[self._shift_g]

    def scenario_inputs(self) -> np.ndarray:
        """Every scenario's planned inputs of the last successful solve, physical, shaped
        ``(n_scenarios, horizon, n_inputs)`` (one scenario when nominal). Scenarios with the
        same past share their input (non-anticipativity): with ``n_robust = 1`` every
        ``[:, 0, :]`` is the applied first move."""
        if self._guess is None:
            raise RuntimeError("no successful solve to read")
        return self._guess[0][self.ocp.scenario_index(self.ocp.u_idx)] * self._usc

    def step(
        self,
        t: float,
        x_hat: Mapping[str, float],
        params: Mapping[str, float] | None = None,
        u_prev: Mapping[str, float] | None = None,
    ) -> Decision:
        """Solve the MPC from state ``x_hat`` at time ``t``.

        ``u_prev`` is the setpoint in force (defaults to the last planned input); the move
        limits and move penalties are relative to it. Never raises on a failed solve.
        """
        x0 = self._begin(t, x_hat, params, u_prev)
        if isinstance(x0, Decision):
            return x0
        p = self.model.parameter_vector(self._params)
        self.cycles += 1
        decision = self._attempt(t, x0, p)
        if self.schedule is None:
            return decision
        if not decision.ok and self.schedule.widen():  # the end is farther than planned
            log.info(
                "%s: cycle %d: planning to the batch end over the whole horizon again",
                self.source,
                self.cycles,
            )
            decision = self._attempt(t, x0, p)
        while decision.ok and self.schedule.could_end_sooner(decision.end_time - t):
            decision = self._sooner(self.schedule, t, x0, p, decision)
        if decision.ok:
            self.schedule.advance(decision.end_time - t)
        return decision

    def _sooner(
        self, schedule: EndSchedule, t: float, x0: np.ndarray, p: np.ndarray, decision: Decision
    ) -> Decision:
        """Shrinking horizon: the plan ends at the start of its last interval, so try one
        interval fewer from the same solution; keep ``decision`` if that fails."""
        kept = (self._guess, self._t_end, self._u_prev.copy())
        schedule.active -= 1
        trial = self._attempt(t, x0, p, shift=False)
        if trial.ok:
            return trial
        schedule.active += 1
        self._guess, self._t_end, self._u_prev = kept
        schedule.settled = True
        return decision

    def _parameters(self, x0: np.ndarray, p: np.ndarray) -> np.ndarray:
        """The NLP's parameter vector: state, setpoint in force, model parameters and (with
        minimum time) the schedule's interval lengths ``a``, ``b``."""
        if self.schedule is None:
            return np.concatenate([x0, self._u_prev, p])
        a, b, _, _ = self.schedule.timing()
        return np.concatenate([x0, self._u_prev, p, a, b])

    def _set_end_bounds(self, shift: bool = True) -> float | None:
        """Minimum time: the bounds of this solve's time to the batch end, in the transcription
        and both solvers' arguments; returns its scaled guess (None without minimum time)."""
        o, schedule = self.ocp, self.schedule
        if schedule is None or o.t_end_idx is None:
            return None
        _, _, lo, hi = schedule.timing()
        dt = self.config.sample_time
        o.lbx[o.t_end_idx], o.ubx[o.t_end_idx] = lo / dt, hi / dt
        self._sqp_call.args["lbx"][o.t_end_idx] = lo / dt
        self._sqp_call.args["ubx"][o.t_end_idx] = hi / dt
        self._bounds["lbx"], self._bounds["ubx"] = ca.DM(o.lbx), ca.DM(o.ubx)
        if not shift and self._t_end is not None:
            return min(max(self._t_end, lo), hi) / dt
        return schedule.guess(self._t_end) / dt

    def _attempt(self, t: float, x0: np.ndarray, p: np.ndarray, shift: bool = True) -> Decision:
        """One solve from ``x0``, warm-started when the last one succeeded: from its solution
        one interval on (``shift``), or as it is (a retry in the same cycle)."""
        if self._sqp_call.solver is not self.sqp:  # the SQP was replaced after construction
            self._sqp_call = BufferedSolver(self.sqp, self.ocp)
        t_end = self._set_end_bounds(shift)
        if self._guess is None:
            w0 = self._cold_guess(x0, p)
            lam_x0, lam_g0 = np.zeros_like(w0), np.zeros_like(self.ocp.lbg)
        elif shift:
            w0, lam_x0, lam_g0 = self._shifted()
        else:
            w0, lam_x0, lam_g0 = (v.copy() for v in self._guess)
            if t_end is not None and self.ocp.t_end_idx is not None:
                w0[self.ocp.t_end_idx] = t_end
        p_all = self._parameters(x0, p)
        cold_solver = self.ipopt_cold if self.config.solver.cold_start == "ipopt" else None
        cold_solver = cold_solver if self._guess is None else None
        started = time.perf_counter()
        fallback: str | None = None  # the SQP's status when IPOPT took over
        try:
            if cold_solver is not None:  # no warm start: IPOPT from the simulated guess
                self.cold_starts += 1
                sol, stats = self._solve(cold_solver, self._args(w0, lam_x0, lam_g0, p_all))
            else:
                sol, stats = self._sqp_call(w0, lam_x0, lam_g0, p_all)
                if not stats.get("success", False) and self.ipopt is not None:
                    fallback = str(stats.get("return_status", "unknown"))
                    warm = (w0, lam_x0, lam_g0, p_all)
                    sol, stats = self._fall_back(self.ipopt, t, stats, started, warm)
        except RuntimeError as exc:
            self._guess = None
            return self._failed(t, SolveStatus.ERROR, f"{type(exc).__name__}: {exc}")
        elapsed = time.perf_counter() - started
        decision, u0 = self._decision(t, sol, stats, elapsed, fallback)
        if decision.ok:
            self._u_prev = u0.copy()  # decision.inputs' values, in input order
            self._guess = self._clean(sol)
            self._t_end = decision.end_time - t if self.schedule is not None else None
        else:
            self._guess = None
            self._t_end = None
        return decision

    def _fall_back(
        self,
        ipopt: ca.Function,
        t: float,
        sqp_stats: Mapping[str, Any],
        started: float,
        warm: tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray],
    ) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
        """IPOPT from the SQP's warm start, counted in ``fallbacks`` and logged as a warning
        naming the cycle: a fallback costs one to three orders of magnitude of solve time."""
        self.fallbacks += 1
        sqp_ms = 1e3 * (time.perf_counter() - started)
        sol, stats = self._solve(ipopt, self._args(*warm))
        stats["iter_count"] = int(sqp_stats.get("iter_count", 0)) + int(stats.get("iter_count", 0))
        log.warning(
            "%s: cycle %d (t=%g %s): the SQP did not converge (%s, %.3g ms); IPOPT fallback "
            "%s (%.3g ms in all); fallbacks so far: %d",
            self.source,
            self.cycles,
            t,
            self.model.time_unit,
            sqp_stats.get("return_status", "unknown"),
            sqp_ms,
            stats.get("return_status", "unknown"),
            1e3 * (time.perf_counter() - started),
            self.fallbacks,
        )
        return sol, stats

    def _args(
        self, x0: np.ndarray, lam_x0: np.ndarray, lam_g0: np.ndarray, p: np.ndarray
    ) -> dict[str, Any]:
        """The arguments of a plain (IPOPT) solver call."""
        return {"x0": x0, "lam_x0": lam_x0, "lam_g0": lam_g0, "p": p, **self._bounds}

    def _clean(self, sol: Mapping[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """The solution with the multipliers of inactive bounds and constraints set to 0.

        ``sol`` holds fresh 1-D vectors owned by this step: the multipliers are cleaned in
        place.
        """
        o = self.ocp
        w, g, lam_x, lam_g = sol["x"], sol["g"], sol["lam_x"], sol["lam_g"]
        with np.errstate(invalid="ignore"):
            for val, lo, hi, tol, lam in (
                (w, o.lbx, o.ubx, self._tol_x, lam_x),
                (g, o.lbg, o.ubg, self._tol_g, lam_g),
            ):
                active = (val - lo <= tol) | (hi - val <= tol)
                lam[~active | (np.abs(lam) < 1e-12)] = 0.0
        return w, lam_x, lam_g

    @staticmethod
    def _solve(
        solver: ca.Function, args: Mapping[str, Any]
    ) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
        sol = solver(**args)
        try:
            stats = dict(solver.stats())
        except RuntimeError as exc:  # sqpmethod leaves no status when e.g. its QP setup fails
            stats = {"success": False, "return_status": f"no status ({exc})".splitlines()[0]}
        return _numpy(sol), stats

    def _decision(
        self,
        t: float,
        sol: Mapping[str, np.ndarray],
        stats: Mapping[str, Any],
        elapsed: float,
        fallback: str | None,
    ) -> tuple[Decision, np.ndarray]:
        """The Decision of a solution, and its first move as a vector (input order);
        ``fallback`` is the SQP's status when IPOPT produced the solution."""
        o = self.ocp
        w = sol["x"]
        xs = w[o.x_idx] * self._xsc
        us = w[o.u_idx] * self._usc
        u0 = us[0]
        status_text = str(stats.get("return_status", "unknown"))
        inputs = dict(zip(self._u_names, u0.tolist(), strict=True))
        status = SolveStatus.SUCCESS
        if not stats.get("success", False) and status_text not in ACCEPTED_STATUSES:
            status = SolveStatus.FAILED
        elif not np.all(np.isfinite(u0)) or (np.any(u0 < self._u_lo) or np.any(u0 > self._u_hi)):
            status, status_text = (
                SolveStatus.INVALID,
                f"{status_text}; input outside limits {inputs}",
            )
        if fallback is not None:
            status_text = f"{status_text} (IPOPT fallback; SQP: {fallback})"
        eps_idx = o.eps_idx if o.n_scenarios == 1 else self._eps_all
        eps = w[eps_idx] * o.eps_scale  # robust: the largest slack over every scenario
        slack = dict(zip(o.soft_names, eps.max(axis=0).tolist(), strict=True))
        if self.model.is_dae and status is SolveStatus.SUCCESS:
            self._z_guess = w[o.z_idx[0, : self._zsc.shape[0]]] * self._zsc
        decision = Decision(
            t=t,
            inputs=inputs,
            status=status,
            return_status=status_text,
            iterations=int(stats.get("iter_count", -1)),
            solve_time_s=elapsed,
            objective=float(sol["f"][0]),
            predicted_states=dict(zip(self._x_names, xs.T, strict=True)),
            predicted_inputs=dict(zip(self._u_names, us.T, strict=True)),
            soft_slack=slack,
            fallback=fallback is not None,
            end_time=(
                t + float(w[o.t_end_idx]) * self.config.sample_time
                if o.t_end_idx is not None
                else math.nan
            ),
        )
        return decision, u0
