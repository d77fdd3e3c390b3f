"""The fast MPC's cold start: an initial guess simulated from the model.

A solve without a warm start (the first, after a failure or after skipped cycles) starts
from :func:`simulated_guess`: the model run over the horizon with the setpoints in force
held, the algebraic states of a DAE solved at every interval by :func:`stage_root`. With
``solver.cold_start: sqp-ipopt`` :func:`cold_solve` tries the SQP from it first (its own
iteration cap, :data:`COLD_MAX_ITER`) and IPOPT only when that fails.
Pure computing on a :class:`controller.core.ocp.Transcription`; times are in the plant
model's time unit.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Mapping
from typing import Any

import casadi as ca
import numpy as np

from controller.core.fast_solver import solve_plain
from controller.core.ocp import Transcription
from plant_models import PlantModel, Role

__all__ = ["COLD_MAX_ITER", "cold_solve", "simulated_guess", "stage_root"]

#: The iteration cap of the SQP from a simulated guess (``cold_start: sqp-ipopt``). The
#: freeze dryer's cold starts (51 in 40 Monte Carlo OQ cases) took 2 to 7 SQP iterations
#: (3 of 51 more: 9, 10, 19; 2 diverged); at the warm steps' cap of 6, 16 of 51 stopped a
#: step short. Converged, the first move agreed with IPOPT's from the same guess within
#: 1e-3 (degC, Torr); IPOPT solves the cold start when the SQP does not converge.
COLD_MAX_ITER = 10


def stage_root(ocp: Transcription, model: PlantModel) -> ca.Function | None:
    """For a DAE: a Newton solver of one interval's stage algebraic states, called as
    ``root(zs_guess, [xs, u, p, h])``; None for an ODE."""
    if not model.is_dae:
        return None
    f = ocp.interval
    zs, h = ca.SX.sym("zs", f.size1_in(2)), ca.SX.sym("h")
    xs, u, p = (ca.SX.sym(n, f.size1_in(i)) for i, n in ((0, "xs"), (1, "u"), (3, "p")))
    res = ca.Function("res", [zs, ca.vertcat(xs, u, p, h)], [f(xs, u, zs, p, h)[1]])
    return ca.rootfinder("stage_z", "newton", res, {"error_on_fail": True})


def simulated_guess(
    ocp: Transcription,
    model: PlantModel,
    x0: np.ndarray,
    p: np.ndarray,
    u_prev: np.ndarray,
    z_guess: np.ndarray,
    z_root: ca.Function | None,
    durations: np.ndarray,
) -> np.ndarray:
    """The decision vector (scaled) of the model simulated from state ``x0`` with the inputs
    ``u_prev`` held, over intervals of the given ``durations`` (one per interval), every
    scenario of a robust problem with its own parameters. The algebraic states start from
    ``z_guess`` and are solved by ``z_root`` where it converges. A minimum-time decision is
    left at 0 (the caller sets it)."""
    o, m = ocp, model
    xsc, usc = m.scales(Role.STATE), m.scales(Role.INPUT)
    zsc = m.scales(Role.ALGEBRAIC)
    w = np.zeros(o.lbx.shape[0])
    n_stage = o.z_idx.shape[1] // max(1, len(m.algebraic_names))
    names = m.parameter_names
    for s in range(o.n_scenarios):  # a robust problem: each scenario with its parameters
        off = s * o.segment
        xs, us = x0 / xsc, u_prev / usc
        zs = np.tile(z_guess / zsc, n_stage) if m.is_dae else np.zeros(0)
        w[off + o.u_idx + o.u_idx.shape[1]] = us  # the copies of the previous input
        last = off + int(o.x_idx[-1, -1]) + 1  # the copy of u_N-1 follows x_N
        w[last : last + len(us)] = us
        for k, h in enumerate(durations):
            pk = p
            if o.scenario_combo:
                fixed = o.fixed[o.scenario_combo[s][k]]
                pk = np.array([fixed.get(nm, p[i]) for i, nm in enumerate(names)])
            u_idx = off + o.u_idx[k]
            w[off + o.x_idx[k]], w[u_idx] = xs, np.clip(us, o.lbx[u_idx], o.ubx[u_idx])
            if z_root is not None:
                # Newton may fail far from the solution: keep the last guess then.
                with contextlib.suppress(RuntimeError):
                    zs = np.asarray(z_root(zs, np.concatenate([xs, u_prev, pk, [h]]))).ravel()
                w[off + o.z_idx[k]] = zs
            nxt = np.asarray(o.interval(xs, u_prev, zs, pk, h)[0]).ravel()
            xs = nxt if np.all(np.isfinite(nxt)) else xs
        w[off + o.x_idx[-1]] = xs
    return w


def cold_solve(
    sqp: ca.Function | None,
    ipopt: ca.Function,
    args: Mapping[str, Any],
    first: Callable[[], tuple[dict[str, Any], dict[str, Any]]] | None = None,
) -> tuple[dict[str, Any], dict[str, Any]]:
    """A cold start from ``args`` (the simulated guess, zero multipliers): ``first`` (a warm
    solve from the reference solution, :func:`controller.core.ocp_memo.reference_first`)
    when given and it converges, else the SQP when there is one and it converges, else
    IPOPT from the same arguments. The result's ``iter_count`` counts every attempt's."""
    spent = 0
    for attempt in (first, (lambda: solve_plain(sqp, args)) if sqp is not None else None):
        if attempt is not None:
            sol, stats = attempt()
            if stats.get("success", False):
                stats["iter_count"] = spent + int(stats.get("iter_count", 0))
                return sol, stats
            spent += int(stats.get("iter_count", 0))
    sol, stats = solve_plain(ipopt, args)
    stats["iter_count"] = spent + int(stats.get("iter_count", 0))
    return sol, stats
