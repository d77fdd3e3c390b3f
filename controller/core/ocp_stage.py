"""One interval of the fast MPC's transcription, as CasADi Functions (pure computing).

:func:`rk4_interval` carries the scaled state over one interval by RK4 (with the algebraic
states of a DAE lifted to decisions); :func:`stage_functions` builds one interval's
constraint rows and cost, the terminal cost and the Gauss-Newton Hessian blocks from the
controller config; :func:`constraint_scales` and :func:`end_condition` give the typical
magnitudes the rows are divided by. :mod:`controller.core.ocp` maps them over the horizon.
Times are in the plant model's time unit.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import casadi as ca
import numpy as np

from controller.config import ControllerConfig
from controller.core.mpc import move_limits, nl_constraints, objective_terms
from controller.errors import ConfigError, Problem
from plant_models import PlantModel, Role

#: RK4 nodes (fraction of a step) and weights.
_RK4_C = (0.0, 0.5, 0.5, 1.0)
_RK4_B = (1.0 / 6, 1.0 / 3, 1.0 / 3, 1.0 / 6)


def named(model: PlantModel, name: str, x: Any, z: Any, u: Any, expr: Any) -> Any:
    """The symbol of variable or expression ``name`` among the vectors ``x, z, u, expr``."""
    for names, vec in (
        (model.state_names, x),
        (model.input_names, u),
        (model.algebraic_names, z),
        (model.expression_names, expr),
    ):
        if name in names:
            return vec[names.index(name)]
    raise KeyError(name)  # check_controller has rejected unknown names already


@dataclass(frozen=True)
class StageFunctions:
    """What :func:`stage_functions` builds: one interval's ``stage`` (constraint rows, cost),
    the ``terminal`` cost, their Gauss-Newton Hessian blocks and the soft constraints' names."""

    stage: ca.Function
    terminal: ca.Function
    stage_hess: ca.Function
    terminal_hess: ca.Function
    soft_names: tuple[str, ...]


def rk4_interval(model: PlantModel, steps: int, segments: int = 1) -> tuple[ca.Function, int]:
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


def stage_functions(
    config: ControllerConfig,
    model: PlantModel,
    interval: ca.Function,
    n_stage: int,
    eps_weight: float = 1.0,
) -> StageFunctions:
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
        return named(model, name, x, z, u, expr)

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
            row = c.sign * named(model, c.expression, xp, zp, u, ep) / scale
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
    return StageFunctions(stage, terminal, stage_hess, terminal_hess, tuple(c.name for c in soft))


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
    # a configured ``scale`` wins (nl_constraints' order: each constraint's upper, then lower)
    given = [c.scale for c in config.constraints for b in (c.upper, c.lower) if b is not None]
    for c, scale in zip(nl_constraints(config), given, strict=True):
        if scale is not None:
            out.append(float(scale))
            continue
        var = model.all_variables.get(c.expression)
        if var is not None and var.role is not Role.OUTPUT:
            out.append(float(var.scale))
            continue
        out.append(magnitude(float(values.get(c.expression, 0.0))))
    return out


def points_per_interval(config: ControllerConfig) -> int:
    """Points of every interval at which the constraints hold: its start, the configured
    ``constraint_points`` inside it (equally spaced) and its end."""
    return config.constraint_points + 2


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
    value = named(model, mt.expression, x, z, u, expr)
    target = named(model, mt.target, x, z, u, expr) if isinstance(mt.target, str) else mt.target
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
        scale = magnitude(float(at))
    return ca.Function("batch_end", [xs, p], [row / scale]), scale


def magnitude(value: float) -> float:
    """The power of ten nearest to ``|value|`` (within 1e-6..1e6); 1 for 0 or non-finite."""
    value = abs(value)
    if not math.isfinite(value) or value < 1e-12:
        return 1.0
    return float(10.0 ** min(6, max(-6, round(math.log10(value)))))
