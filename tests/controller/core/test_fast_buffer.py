"""The fast MPC's hot path reads its solutions as before, with fewer numpy calls.

:class:`~controller.core.fast_solver.BufferedSolver` writes ``x``/``g`` and their multipliers
side by side and pins its stats keys once; :func:`~controller.core.fast_solver.drop_inactive`
cleans the joined multipliers in one pass; :class:`~controller.core.fast_decision.DecisionReader`
gathers every trajectory in one call. Same values, bit for bit, as the separate operations.
"""

from __future__ import annotations

import gc
import sys
from pathlib import Path
from types import SimpleNamespace
from typing import Any, cast

import casadi as ca
import numpy as np
import pytest

from controller.controllerfile import load_controller
from controller.core.fast_mpc import FastController
from controller.core.fast_solver import (
    BufferedSolver,
    active_tol,
    clean_multipliers,
    drop_inactive,
)
from controller.core.ocp import Transcription
from controller.core.solver_stats import read_stats
from plant_models import Role

ROOT = Path(__file__).resolve().parents[3]


def _bounds(rng: np.random.Generator, k: int) -> tuple[np.ndarray, ...]:
    """Bounds, values near and off them, and multipliers of every kind qrqp and IPOPT leave
    (zeros of both signs, DBL_MIN, tiny, wrong-side, NaN)."""
    lo = rng.choice([-np.inf, -1.0, 0.0, 0.5], k)
    hi = np.maximum(lo, np.where(rng.random(k) < 0.3, lo, rng.choice([np.inf, 1.0, 3.0], k)))
    near = np.where(np.isfinite(lo), lo, 0.0) + rng.choice([0.0, 1e-9, 1e-5, 0.1], k)
    val = np.where(rng.random(k) < 0.5, near, rng.normal(size=k))
    kinds = np.array([0.0, -0.0, 2.2e-308, -1e-13, 1e-6, -0.3, 0.5, np.nan])
    lam = rng.choice(kinds, k) * np.where(rng.random(k) < 0.5, 1.0, rng.random(k))
    return lo, hi, val, lam


def test_joined_cleaning_equals_the_separate_one() -> None:
    rng = np.random.default_rng(7)
    for _ in range(500):
        lbx, ubx, w, lam_x = _bounds(rng, int(rng.integers(1, 30)))
        lbg, ubg, g, lam_g = _bounds(rng, int(rng.integers(0, 30)))
        ocp = cast(Transcription, SimpleNamespace(lbx=lbx, ubx=ubx, lbg=lbg, ubg=ubg))
        tol_x, tol_g = active_tol(lbx, ubx), active_tol(lbg, ubg)
        sol = {"x": w.copy(), "g": g.copy(), "lam_x": lam_x.copy(), "lam_g": lam_g.copy()}
        _, want_x, want_g = clean_multipliers(sol, ocp, tol_x, tol_g)
        lam = np.concatenate([lam_x, lam_g])
        drop_inactive(
            np.concatenate([w, g]),
            lam,
            np.concatenate([lbx, lbg]),
            np.concatenate([ubx, ubg]),
            np.concatenate([tol_x, tol_g]),
        )
        assert lam.tobytes() == np.concatenate([want_x, want_g]).tobytes()


def _sqp() -> tuple[ca.Function, Transcription]:
    x = ca.SX.sym("x", 3)
    f = (x[0] - 1) ** 2 + (x[1] - 2) ** 2 + x[2] ** 2
    nlp = {"x": x, "f": f, "g": ca.vertcat(x[0] + x[1], x[1] - x[2])}
    quiet = {"print_header": False, "print_iteration": False, "print_status": False}
    qp = {"print_header": False, "print_iter": False, "print_info": False}
    opts: dict[str, Any] = {**quiet, "print_time": False, "qpsol": "qrqp", "qpsol_options": qp}
    bounds = {
        "lbx": np.array([-5.0, -5.0, 0.5]),
        "ubx": np.array([5.0, 1.5, 5.0]),
        "lbg": np.array([-10.0, 0.0]),
        "ubg": np.array([2.0, 0.0]),
    }
    return ca.nlpsol("s", "sqpmethod", nlp, opts), cast(Transcription, SimpleNamespace(**bounds))


def _still_interned(key: str) -> bool:
    fresh = "".join(list(key))  # an equal string built at run time, not interned
    return sys.intern(fresh) is not fresh


def test_buffered_solver_returns_the_plain_call_solution_in_fresh_arrays() -> None:
    solver, ocp = _sqp()
    o = cast(Any, ocp)
    call = BufferedSolver(solver, ocp)
    x0, lam_x0, lam_g0 = np.zeros(3), np.zeros(3), np.zeros(2)
    sol, stats = call(x0, lam_x0, lam_g0, np.zeros(0))
    plain = solver(x0=x0, lbx=o.lbx, ubx=o.ubx, lbg=o.lbg, ubg=o.ubg)
    for key in ("x", "f", "g", "lam_x", "lam_g"):
        assert sol[key].tobytes() == np.asarray(plain[key], dtype=float).ravel().tobytes(), key
    plain_stats = read_stats(solver)
    assert stats.keys() == plain_stats.keys()
    for key in ("success", "return_status", "iter_count", "unified_return_status"):
        assert stats[key] == plain_stats[key], key
    assert stats["success"] is True and stats["iter_count"] >= 1
    # x, g and the multipliers are views of the fresh joined vectors
    assert np.shares_memory(sol["x"], sol["primal"]) and np.shares_memory(sol["g"], sol["primal"])
    assert np.shares_memory(sol["lam_g"], sol["dual"])
    again, _ = call(x0, lam_x0, lam_g0, np.zeros(0))
    assert not np.shares_memory(again["primal"], sol["primal"])  # a new solve: new arrays
    assert again["x"].tobytes() == sol["x"].tobytes()


def test_buffered_solver_keeps_its_stats_keys_interned() -> None:
    """The keys are pinned at the first read only; they stay interned (B5's heap growth)."""
    solver, ocp = _sqp()
    call = BufferedSolver(solver, ocp)
    for _ in range(3):
        _, stats = call(np.zeros(3), np.zeros(3), np.zeros(2), np.zeros(0))
    keys = ["".join(list(k)) for k in stats if k.endswith("_QP")]  # copies, not the keys
    del stats
    gc.collect()
    assert keys and all(_still_interned(k) for k in keys)


def test_decision_reads_every_trajectory_and_slack_of_the_solution() -> None:
    cfg, model = load_controller(ROOT / "configs" / "controllers" / "bioreactor.yaml")
    ctl = FastController(cfg, model, "bioreactor")
    x0 = dict(model.initial_state)
    for t in (0.0, 1.0):  # a cold start (IPOPT), then a warm SQP step
        d = ctl.step(t, x0)
        assert d.ok, d.return_status
        assert ctl._guess is not None
        w, o = ctl._guess[0], ctl.ocp
        xsc, usc = model.scales(Role.STATE), model.scales(Role.INPUT)
        for i, name in enumerate(model.state_names):
            want = (w[o.x_idx] * xsc)[:, i]
            assert np.asarray(d.predicted_states[name]).tobytes() == want.tobytes(), name
        for i, name in enumerate(model.input_names):
            want = (w[o.u_idx] * usc)[:, i]
            assert np.asarray(d.predicted_inputs[name]).tobytes() == want.tobytes(), name
            assert d.inputs[name] == want[0]
        slack = (w[o.eps_idx] * o.eps_scale).max(axis=0)
        assert list(d.soft_slack) == list(o.soft_names)
        assert list(d.soft_slack.values()) == slack.tolist()


if __name__ == "__main__":
    pytest.main([__file__, "-q"])
