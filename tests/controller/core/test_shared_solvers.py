"""Inside :func:`controller.core.jit.shared_solvers` (a campaign worker's case), solvers
loaded from a compiled library are loaded once per process and shared
(:func:`controller.core.jit.loaded_nlpsol`): the worker's next case builds its controller
without loading its four solvers again. An nlpsol is not safe to call from two threads at
once (it corrupts its work memory), and a plain call's ``stats()`` reads a memory of the
solver's, so every call of a shared solver and the reading of its stats hold the solver's
lock (:func:`controller.core.jit.exclusive`). Outside a case nothing is shared: the web
view's what-if forecast builds a second controller of the live one's configuration, and must
not make the live solve wait."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import casadi as ca
import numpy as np
import pytest

import controller.core.fast_solver as fast_solver
from controller.controllerfile import load_controller
from controller.core.fast_mpc import FastController
from controller.core.jit import (
    compiled_nlpsol,
    exclusive,
    loaded_nlpsol,
    shared_solvers,
    stateless,
)
from controller.core.policy import build_policy
from controller.runtime.solver_cache import LibraryCache

ROOT = Path(__file__).resolve().parents[3]
LYO = ROOT / "configs" / "controllers" / "lyophilizer.yaml"
CACHE = LibraryCache()
QUIET = {"print_time": False, "ipopt": {"print_level": 0, "sb": "yes"}}
SOLVERS = ("sqp", "sqp_cold", "ipopt", "ipopt_cold")


def _tiny() -> tuple[ca.Function, Path]:
    """min (x - 1)^2 + (y - 2)^2 with x + y = p over a box: a solver compiled and loaded
    (shared)."""
    x, p = ca.MX.sym("x", 2), ca.MX.sym("p")
    nlp = {"x": x, "p": p, "f": ca.sumsqr(x - ca.DM([1.0, 2.0])), "g": x[0] + x[1] - p}
    plain = ca.nlpsol("tiny", "ipopt", nlp, QUIET)
    return compiled_nlpsol(CACHE, "tiny", "ipopt", plain, QUIET)


def test_outside_a_case_controllers_of_one_configuration_share_no_solver() -> None:
    """The live controller and the forecast's second one: shared, the live solve would wait
    on the forecast's (one lock); by default each has its own solvers and locks."""
    cfg, model = load_controller(LYO)
    with shared_solvers():
        live = build_policy(cfg, model, compile=CACHE)
        forecast = build_policy(cfg, model, compile=CACHE)
    assert isinstance(live, FastController) and isinstance(forecast, FastController)
    assert exclusive(live.sqp) is exclusive(forecast.sqp)  # the hazard: one lock for both
    live = build_policy(cfg, model, compile=CACHE)
    forecast = build_policy(cfg, model, compile=CACHE)
    assert isinstance(live, FastController) and isinstance(forecast, FastController)
    for name in SOLVERS:
        assert getattr(live, name) is not getattr(forecast, name), name
    assert exclusive(live.sqp) is not exclusive(forecast.sqp)
    for name in SOLVERS:
        assert exclusive(getattr(live, name)) is not exclusive(getattr(forecast, name)), name
    held = [exclusive(getattr(forecast, name)) for name in SOLVERS]
    for lock in held:  # the forecast's solves in progress do not hold the live step
        lock.acquire()
    try:
        first = live.step(0.0, model.initial_state, u_prev=model.nominal_inputs)
        again = live.step(0.1, model.initial_state, u_prev=first.inputs)
    finally:
        for lock in held:
            lock.release()
    assert first.ok and again.ok


def test_controllers_of_one_configuration_share_their_solvers_not_their_buffers() -> None:
    cfg, model = load_controller(LYO)
    with shared_solvers():
        a = build_policy(cfg, model, compile=CACHE)
        b = build_policy(cfg, model, compile=CACHE)
    assert isinstance(a, FastController) and isinstance(b, FastController)
    assert a.library is not None and a.library == b.library
    for name in SOLVERS:
        assert getattr(a, name) is not None and getattr(a, name) is getattr(b, name), name
    assert a._sqp_call is not b._sqp_call  # each its own buffer: its own memory
    # each solves its own problem: b's cold first step is a's, and a's next step is its own
    u, x0 = model.nominal_inputs, model.initial_state
    da = a.step(0.0, x0, u_prev=u)
    db = b.step(0.0, x0, u_prev=u)
    assert da.ok and db.ok and da.inputs == db.inputs
    moved = {**x0, "Lck": x0["Lck"] + 0.05}
    da2 = a.step(0.1, moved, u_prev=da.inputs)
    with shared_solvers():
        fresh = build_policy(cfg, model, compile=CACHE)
    fresh.step(0.0, x0, u_prev=u)
    assert fresh.step(0.1, moved, u_prev=da.inputs).inputs == da2.inputs


RACE = """
import sys, threading
import casadi as ca
from controller.core.fast_solver import solve_plain

x, p = ca.MX.sym("x", 2), ca.MX.sym("p")
nlp = {"x": x, "p": p, "f": ca.sumsqr(x - ca.DM([1.0, 2.0])), "g": x[0] + x[1] - p}
s = ca.nlpsol("tiny", "ipopt", nlp, {"print_time": False, "ipopt": {"print_level": 0, "sb": "yes"}})
setattr(s, "_pharmatwin_exclusive", threading.Lock())  # as loaded_nlpsol marks a shared one
ok = dict(x0=[0, 0], p=3, lbx=[-5, -5], ubx=[5, 5], lbg=0, ubg=0)
bad = dict(x0=[0, 0], p=5, lbx=[0, 0], ubx=[1, 1], lbg=0, ubg=0)
locked = sys.argv[1] == "locked"
wrong, calls, stop = [0], [0], threading.Event()

def call(args):
    if locked:
        return solve_plain(s, args)[1]
    s(**args)
    return s.stats()

def worker(args, want):
    while not stop.is_set() and calls[0] < 4000:
        calls[0] += 1
        if call(args)["return_status"] != want:
            wrong[0] += 1
            stop.set()

pairs = ((ok, "Solve_Succeeded"), (bad, "Infeasible_Problem_Detected"))
threads = [threading.Thread(target=worker, args=a) for a in pairs]
for t in threads:
    t.start()
for t in threads:
    t.join()
print(f"calls {calls[0]} wrong {wrong[0]}")
sys.exit(3 if wrong[0] else 0)
"""


def _race(mode: str) -> subprocess.CompletedProcess[str]:
    env = os.environ | {"PYTHONPATH": str(ROOT)}
    return subprocess.run(
        [sys.executable, "-c", RACE, mode], env=env, capture_output=True, text=True, timeout=300
    )


@pytest.mark.slow
def test_two_threads_in_one_solver_break_it_unless_each_call_holds_its_lock() -> None:
    """The failure the lock protects against: two threads calling one IPOPT solver at once
    (in a child process: it can crash) get each other's stats or corrupt the solver's work
    memory (seen: "Memory corruption detected for output jac_g_x", then a segfault). It is a
    race: a child that happened not to collide is run again (at most 5 children)."""
    broken = []
    for _ in range(5):
        child = _race("unlocked")
        broken.append(child.returncode != 0)
        if broken[-1]:
            break
    assert any(broken), "two unlocked threads never collided in 5 x 4000 calls"
    guarded = _race("locked")  # the same calls through solve_plain: one at a time
    assert guarded.returncode == 0, guarded.stdout + guarded.stderr[-2000:]
    assert "wrong 0" in guarded.stdout


def test_every_call_of_a_shared_solver_holds_its_lock() -> None:
    with shared_solvers():
        solver, path = _tiny()
        assert loaded_nlpsol("tiny", "ipopt", path, QUIET) is solver  # loaded once, shared
    assert loaded_nlpsol("tiny", "ipopt", path, QUIET) is not solver  # outside: its own
    assert exclusive(solver) is exclusive(solver)  # one lock per shared solver
    ok = {"x0": [0.0, 0.0], "p": 3.0, "lbx": [-5.0, -5.0], "ubx": [5.0, 5.0], "lbg": 0, "ubg": 0}
    seen: list[bool] = []
    real = fast_solver.read_stats

    def read_stats(source: Any) -> dict[str, Any]:
        seen.append(exclusive(solver).locked())
        return real(source)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(fast_solver, "read_stats", read_stats)
        sol, stats = fast_solver.solve_plain(solver, ok)
    assert seen == [True] and not exclusive(solver).locked()
    assert stats["return_status"] == "Solve_Succeeded"
    assert np.allclose(sol["x"], [1.0, 2.0], atol=1e-6)
    # a controller's buffered SQP: its evaluation and stats under the lock too
    cfg, model = load_controller(LYO)
    with shared_solvers():
        ctrl = build_policy(cfg, model, compile=CACHE)
    assert isinstance(ctrl, FastController)
    call, lock = ctrl._sqp_call, exclusive(ctrl.sqp)
    assert call._exclusive is lock
    evaluate = call._eval
    buffered: list[bool] = []

    def watched() -> None:
        buffered.append(lock.locked())
        evaluate()

    call._eval = watched
    x0, u = model.initial_state, model.nominal_inputs
    first = ctrl.step(0.0, x0, u_prev=u)  # cold
    warm = ctrl.step(0.1, {**x0, "Lck": x0["Lck"] + 0.02}, u_prev=first.inputs)
    assert first.ok and warm.ok and ctrl.cold_starts == 1  # the second step: the warm SQP
    assert buffered and all(buffered) and not lock.locked()


def test_only_solvers_that_keep_nothing_between_calls_are_shared() -> None:
    """An SQP on qpOASES hot-starts each QP from its last one: shared, a controller's result
    would depend on which controller solved before it. It is loaded for each controller."""
    x = ca.MX.sym("x", 2)
    nlp = {"x": x, "f": ca.sumsqr(x - ca.DM([1.0, 2.0]))}
    quiet = {"print_time": False, "print_header": False, "print_iteration": False}
    quiet |= {"print_status": False}
    qrqp = {**quiet, "qpsol": "qrqp", "qpsol_options": {"print_iter": False, "print_header": False}}
    plain = ca.nlpsol("tiny_sqp", "sqpmethod", nlp, qrqp)
    assert stateless("sqpmethod", qrqp) and stateless("ipopt", QUIET)
    qpoases = {**quiet, "qpsol": "qpoases", "qpsol_options": {"printLevel": "none"}}
    assert not stateless("sqpmethod", qpoases) and not stateless("sqpmethod", quiet)
    with shared_solvers():
        solver, path = compiled_nlpsol(CACHE, "tiny_sqp", "sqpmethod", plain, qrqp)
        assert loaded_nlpsol("tiny_sqp", "sqpmethod", path, qrqp) is solver
        first = loaded_nlpsol("tiny_sqp", "sqpmethod", path, qpoases)
        assert loaded_nlpsol("tiny_sqp", "sqpmethod", path, qpoases) is not first
    sol = first(x0=[0.0, 0.0])
    assert np.allclose(np.asarray(sol["x"]).ravel(), [1.0, 2.0], atol=1e-6)
