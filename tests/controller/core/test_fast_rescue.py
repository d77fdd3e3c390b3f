"""The fast MPC's rescues before a cold or IPOPT solve: the convexified SQP retry, and the
warm start kept across a reset one sample after the last solve (fast_mpc).

Before, the bioreactor's exact-Hessian SQP diverged from the shifted warm start at 7 cycles
of the B1 closed loop (86-149, while the biomass rode its soft cap), each an IPOPT fallback
of 40 to 140 ms (with the derivatives assembled by ocp_jacobian: at 3, cycles 114, 131 and
132); and every campaign case solved two cold IPOPT problems where one is due (the
supervisor starts the pipeline at INIT and again at the PLC's handover one sample later).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from controller.controllerfile import load_controller
from controller.core.fast_mpc import FastController
from controller.core.fast_solver import solve_plain

ROOT = Path(__file__).resolve().parents[3]
CONTROLLERS = ROOT / "configs" / "controllers"
#: The B1 bioreactor closed loop's cycle 90: the shifted warm start and NLP parameters.
DIVERGING = Path(__file__).with_name("bioreactor_diverging_cycle.json")


def _warm() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    data = json.loads(DIVERGING.read_text())
    x0, lx, lg, p = (np.array(data[k], dtype=float) for k in ("x0", "lam_x0", "lam_g0", "p"))
    return x0, lx, lg, p


def test_a_diverging_exact_hessian_sqp_is_rescued_by_the_convexified_one() -> None:
    cfg, model = load_controller(CONTROLLERS / "bioreactor.yaml")
    ctl = FastController(cfg, model, "bioreactor")
    warm = _warm()
    _, plain = ctl._sqp_call(*warm)
    assert not plain["success"], "the replayed cycle no longer diverges: re-record it"
    assert plain["return_status"] == "Maximum_Iterations_Exceeded"
    sol, stats, note = ctl._retry_convex(89.0, plain, warm)
    assert stats["success"] and ctl.sqp_retries == 1
    assert "convexified SQP retry; SQP: Maximum_Iterations_Exceeded" in note
    assert ctl.ipopt is not None  # the IPOPT fallback's answer from the same warm start
    ref_sol, ref_stats = solve_plain(ctl.ipopt, ctl._args(*warm))
    assert ref_stats["success"]
    u = ctl.ocp.u_idx
    assert np.allclose(sol["x"][u], ref_sol["x"][u], atol=1e-3)
    assert abs(float(sol["f"][0]) - float(ref_sol["f"][0])) <= 1e-3 * abs(float(ref_sol["f"][0]))


def test_a_gauss_newton_sqp_has_no_convexified_retry() -> None:
    cfg, model = load_controller(CONTROLLERS / "lyophilizer.yaml")
    assert cfg.solver.hessian == "gauss-newton"
    assert FastController(cfg, model, "lyophilizer").sqp_convex is None


def _cstr() -> tuple[FastController, dict[str, float], dict[str, float], float]:
    cfg, model = load_controller(CONTROLLERS / "cstr.yaml")
    ctl = FastController(cfg, model, "cstr")
    return ctl, dict(model.initial_state), dict(model.nominal_inputs), cfg.sample_time


def test_a_reset_one_sample_after_a_solve_keeps_the_warm_start() -> None:
    ctl, x, u, dt = _cstr()
    first = ctl.step(0.0, x, u_prev=u)
    assert first.ok and ctl.cold_starts == 1
    ctl.reset(first.inputs)  # the PLC's handover, one sample on
    kept = ctl.step(dt, x, u_prev=first.inputs)
    assert kept.ok and ctl.cold_starts == 1, "a reset one sample on solved cold again"
    never, _, _, _ = _cstr()  # no reset: exactly what every cycle computes
    never.step(0.0, x, u_prev=u)
    assert never.step(dt, x, u_prev=first.inputs).inputs == kept.inputs
    fresh, _, _, _ = _cstr()  # the same cycle solved cold: the same decision (SQP tolerance)
    cold = fresh.step(dt, x, u_prev=first.inputs)
    assert cold.ok and fresh.cold_starts == 1
    for name, value in cold.inputs.items():
        spec = ctl.config.inputs[name]
        assert abs(kept.inputs[name] - value) <= 1e-3 * (spec.upper - spec.lower)


@pytest.mark.parametrize("later", [0.0, 2.0, 5.5])
def test_a_reset_then_a_step_at_another_time_starts_cold(later: float) -> None:
    ctl, x, u, dt = _cstr()
    first = ctl.step(0.0, x, u_prev=u)
    assert first.ok
    ctl.reset(first.inputs)
    assert ctl.step(later * dt, x, u_prev=first.inputs).ok
    assert ctl.cold_starts == 2


def test_a_reset_is_remembered_until_the_next_step_only() -> None:
    ctl, x, u, dt = _cstr()
    ctl.step(0.0, x, u_prev=u)
    ctl.reset(u)
    ctl.step(3 * dt, x, u_prev=u)  # cold: not one sample on
    ctl.step(4 * dt, x)  # warm, as every cycle
    assert ctl.cold_starts == 2
