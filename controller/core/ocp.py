"""The fast MPC's optimal-control problem: the multiple-shooting NLP of a controller config.

:func:`transcribe` builds the NLP once (decision layout, bounds, constraint rows, the
Gauss-Newton Hessian) as a :class:`Transcription`; :func:`transcribe_robust` builds the
multi-stage (scenario-tree) NLP of a ``robust`` config. The intervals are the SX Functions of
:mod:`controller.core.ocp_stage`, mapped over the horizon. See
:mod:`controller.core.fast_mpc` for the layout and the solver that uses it. Pure computing:
no I/O. Times are in the plant model's time unit.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass, field, replace
from typing import Any

import casadi as ca
import numpy as np

from controller.config import ControllerConfig, robust_scenarios
from controller.core.mpc import move_limits, nl_constraints
from controller.core.ocp_jacobian import stage_gradient, stage_hessian, stage_jacobian
from controller.core.ocp_stage import (
    constraint_scales,
    end_condition,
    points_per_interval,
    rk4_interval,
    stage_functions,
)
from plant_models import PlantModel, Role


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
    # ``(x, p) -> (grad_f_x, jac_g_x)``: the objective's gradient and g's Jacobian (rows not
    # scaled) assembled from one interval's (:mod:`controller.core.ocp_jacobian`); None:
    # CasADi's own are used.
    jac_fg: ca.Function | None = None
    # ``(x, p, lam_f, lam_g) -> hess_gamma_x_x``: the Lagrangian's exact Hessian (``lam_g`` of
    # the rows not scaled) assembled likewise; None: CasADi's own.
    hess_l: ca.Function | None = None

    def scenario_index(self, idx: np.ndarray) -> np.ndarray:
        """``idx`` (scenario 0's indices into the decision vector) for every scenario,
        stacked on a new first axis."""
        offsets = np.arange(self.n_scenarios) * self.segment
        return offsets.reshape((-1,) + (1,) * idx.ndim) + idx[None]


def stage_bounds(config: ControllerConfig, model: PlantModel) -> tuple[list[float], list[float]]:
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


def transcribe(
    config: ControllerConfig, model: PlantModel, source: str, steps: int
) -> Transcription:
    """The multiple-shooting NLP of ``config`` for ``model`` (:mod:`controller.core.fast_mpc`).

    The intervals are one SX ``stage`` Function mapped over the horizon, so the NLP's
    derivatives (and its generated C code) hold one interval's code, not ``N`` copies.
    Without minimum time the objective's gradient, the constraints' Jacobian and the exact
    Lagrangian Hessian are also assembled from one interval's, mapped (``jac_fg``,
    ``hess_l``: :mod:`controller.core.ocp_jacobian`), instead of CasADi's MX derivatives.
    A config with a ``robust`` section is transcribed by :func:`transcribe_robust`.
    """
    if config.robust is not None:
        return transcribe_robust(config, model, source, steps)
    n = config.horizon
    nx, nu, nz = len(model.state_names), len(model.input_names), len(model.algebraic_names)
    xsc, usc = model.scales(Role.STATE), model.scales(Role.INPUT)
    interval, n_stage = rk4_interval(model, steps, config.constraint_points + 1)
    st = stage_functions(config, model, interval, n_stage)
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
    stage_args = [
        ca.horzcat(*xs[:-1]),
        ca.horzcat(*us),
        ca.horzcat(*vs[:-1]),
        ca.horzcat(*zs),
        ca.horzcat(*eps),
        ca.horzcat(*xs[1:]),
        ca.horzcat(*vs[1:]),
        ca.repmat(p, 1, n),
        durations,
    ]
    g_map, f_map = stage.map(n)(*stage_args)
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
    # Minimum time: T enters every interval (CasADi's own derivatives then).
    jac_fg = hess_l = None
    if mt is None:
        layout = (n, nx, nu, w_block, n_w)
        j = stage_jacobian(stage, stage_args, *layout)
        grad = stage_gradient(stage, stage_args, *layout)
        grad += ca.gradient(terminal(xs[n], p), w_all)
        names = (["x", "p"], ["grad_f_x", "jac_g_x"])
        jac_fg = ca.Function("jac_fg", [w_all, p_all], [grad, j], *names)
        lam = (lam_f, lam_g)
        h = stage_hessian(stage, terminal, stage_args, xs[n], p, lam, layout)
        names = (["x", "p", "lam_f", "lam_g"], ["hess_gamma_x_x"])
        hess_l = ca.Function("hess_l", [w_all, p_all, lam_f, lam_g], [h], *names)
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
    lo_rows, hi_rows = stage_bounds(config, model)
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
        jac_fg=jac_fg,
        hess_l=hess_l,
    )


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
    st = stage_functions(config, model, interval, n_stage, eps_weight=float(n_s))
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
        jac_fg=None,  # the nominal's assembled derivatives are not this NLP's
        hess_l=None,
    )
