"""The freeze dryer's QPs during the shelf ramp: qrqp converges, well within its iteration cap.

With the capability row at its derived scale (1 kg/h) its chamber-pressure coefficient
(~1.2 per scaled unit) outranked the unit coefficients of the bounds in qrqp's choice of the
constraint to enforce: the QP of the SQP's second iteration enforced and dropped that inactive
row in turn until QRQP_MAX_ITER (17 ms a QP, most of the Monte Carlo cases' solver time),
instead of freeing Pch from its upper bound. The config's ``scale: 3.0`` keeps the row's
coefficients below 1. Counts only (no wall time).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import casadi as ca
import numpy as np

from controller.controllerfile import load_controller
from controller.core.fast_mpc import FastController
from controller.core.fast_solver import MIN_MULTIPLIER, QRQP_MAX_ITER, sqp_options
from controller.core.mpc import nl_constraints
from controller.core.ocp_stage import constraint_scales

ROOT = Path(__file__).resolve().parents[3]
CONFIG = ROOT / "configs" / "controllers" / "lyophilizer.yaml"


def _controller(scaled: bool) -> FastController:
    config, model = load_controller(CONFIG)
    if not scaled:
        cons = tuple(c.model_copy(update={"scale": None}) for c in config.constraints)
        config = config.model_copy(update={"constraints": cons})
    return FastController(config, model, str(CONFIG))


def _second_qp_iterations(ctrl: FastController, warm: tuple[Any, ...], p: Any) -> int:
    """qrqp's iterations on the QP of the SQP's second iteration from this warm start
    (QRQP_MAX_ITER when it stops at its cap or fails)."""
    o = ctrl.ocp
    opts = {**sqp_options(ctrl.config.solver), "hess_lag": o.gauss_newton, "max_iter": 1}
    bounds = {"lbx": o.lbx, "ubx": o.ubx, "lbg": o.lbg, "ubg": o.ubg, "p": p}
    w, lx, lg = warm
    r = ca.nlpsol("one", "sqpmethod", o.nlp, opts)(x0=w, lam_x0=lx, lam_g0=lg, **bounds)
    w1, lam_x, lam_g = r["x"], r["lam_x"], r["lam_g"]
    x, pp = o.nlp["x"], o.nlp["p"]
    jac = ca.jacobian(o.nlp["g"], x)
    f = ca.Function("qp", [x, pp], [ca.gradient(o.nlp["f"], x), o.nlp["g"], jac])
    grad, g, a = f(w1, p)
    h = o.gauss_newton(w1, p, 1.0, lam_g)
    qo: dict[str, Any] = {"max_iter": QRQP_MAX_ITER, "min_lam": MIN_MULTIPLIER}
    qo.update(error_on_fail=False, print_header=False, print_iter=False, print_info=False)
    qp = ca.conic("qp", "qrqp", {"h": h.sparsity(), "a": a.sparsity()}, qo)
    qp(h=h, g=grad, a=a, lbx=o.lbx - w1, ubx=o.ubx - w1, lba=o.lbg - g, uba=o.ubg - g,
       lam_x0=lam_x, lam_a0=lam_g)  # fmt: skip
    stats = qp.stats()
    return int(stats["iter_count"]) if stats["success"] else QRQP_MAX_ITER


REPLAY = Path(__file__).with_name("lyophilizer_ramp_cycle.json")


def _replay_warm_start(ctrl: FastController) -> tuple[tuple[Any, ...], Any]:
    """The recorded ramp cycle's warm start (taken with the derived scale, 1) in ``ctrl``'s
    scaling: a row divided by ``s`` has its multiplier times ``s``, its slack divided by ``s``
    and the slack's bound multiplier times ``s``."""
    data = json.loads(REPLAY.read_text())
    w, lx, lg = (np.array(data[k]) for k in ("x0", "lam_x0", "lam_g0"))
    o, s = ctrl.ocp, constraint_scales(ctrl.config, ctrl.model)
    soft = [i for i, c in enumerate(nl_constraints(ctrl.config)) if c.soft]
    for j, i in enumerate(soft):
        w[o.eps_idx[:, j]] /= s[i]
        lx[o.eps_idx[:, j]] *= s[i]
    n_fix = o.x_idx.shape[1] + o.u_idx.shape[1]
    first = o.g_block - len(s) * 2  # the constraint rows after the defects and moves
    for point in range(2):
        for i, scale in enumerate(s):
            lg[n_fix + first + point * len(s) + i :: o.g_block][: ctrl.config.horizon] *= scale
    return (w, lx, lg), np.array(data["p"])


def test_ramp_qp_converges_well_within_the_cap() -> None:
    ctrl = _controller(scaled=True)
    warm, p = _replay_warm_start(ctrl)
    assert _second_qp_iterations(ctrl, warm, p) < QRQP_MAX_ITER // 4


def test_derived_capability_scale_makes_qrqp_cycle() -> None:
    """The failure the configured scale protects against (the same cycle, derived scale)."""
    ctrl = _controller(scaled=False)
    warm, p = _replay_warm_start(ctrl)
    assert _second_qp_iterations(ctrl, warm, p) == QRQP_MAX_ITER
