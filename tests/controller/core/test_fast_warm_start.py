"""The fast MPC's warm start after IPOPT and qrqp's initial active set (fast_solver).

Before, the lyophilizer's first SQP after an IPOPT solve failed in nearly every OQ campaign
case (cycle 3, then IPOPT again at ~100 ms): the warm start dropped the multipliers of
bounds IPOPT had active (its interior point ends a few 1e-6 inside them), and qrqp took
the DBL_MIN multipliers it leaves on weakly active bounds as active in the next SQP
iteration's QP, and cycled.
"""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace
from typing import Any, cast

import numpy as np
import pytest

from controller.config import SolverSpec
from controller.controllerfile import load_controller
from controller.core.fast_mpc import FastController
from controller.core.fast_solver import MIN_MULTIPLIER, clean_multipliers, sqp_options
from controller.core.ocp import Transcription

ROOT = Path(__file__).resolve().parents[3]

#: The lyophilizer-oq campaign's first case (c000-site-none-s1), cycles 2 to 4 as the runtime
#: handed them to the controller (cycle 2 after a reset: a cold start): time (h), Lck (cm),
#: the setpoints in force (Tsh degC, Pch Torr) and the EKF's R0 and KC.
CAMPAIGN_CYCLES = [
    (0.1, 0.000761777036428978, (-35.0, 0.15), 1.4446650481055603, 0.00027700198012234426),
    (0.2, 0.00219954268769229, (-29.000000366614444, 0.15406200135197673), 1.4265445247913908,
     0.0002761285437904782),
    (0.3, 0.005218268690031651, (-23.000000366614444, 0.1672397498143664), 1.4459957381616897,
     0.00027724679580531236),
]  # fmt: skip


def test_first_sqp_cycles_after_a_cold_start_need_no_fallback() -> None:
    """Without the IPOPT-aware cleaning the SQP failed at t=0.2 h; without ``min_lam`` at
    t=0.3 h (Maximum_Iterations_Exceeded, Search_Direction_Becomes_Too_Small)."""
    cfg, model = load_controller(ROOT / "configs" / "controllers" / "lyophilizer.yaml")
    ctl = FastController(cfg, model, "lyophilizer")
    state = model.state_names[0]
    for t, lck, u_prev, r0, kc in CAMPAIGN_CYCLES:
        params = {"R0": r0, "KC": kc}
        d = ctl.step(t, {state: lck}, params, dict(zip(model.input_names, u_prev, strict=True)))
        assert d.ok and not d.fallback, (t, d.return_status)
    assert (ctl.cold_starts, ctl.fallbacks) == (1, 0)


def _ocp(lo: list[float], hi: list[float]) -> Transcription:
    bounds = np.array(lo), np.array(hi)
    return cast(Transcription, SimpleNamespace(lbx=bounds[0], ubx=bounds[1], lbg=np.zeros(0),
                                               ubg=np.zeros(0)))  # fmt: skip


def _clean(w: list[float], lam: list[float], ocp: Transcription) -> np.ndarray:
    sol: dict[str, Any] = {"x": np.array(w), "lam_x": np.array(lam, dtype=float)}
    sol |= {"g": np.zeros(0), "lam_g": np.zeros(0)}
    tol = np.full(len(w), 1e-6)
    return clean_multipliers(sol, ocp, tol, np.zeros(0))[1]


def test_ipopt_active_bounds_keep_their_multipliers() -> None:
    """IPOPT's figures at the lyophilizer's pressure bound (scaled upper bound 3): active ones
    3.4e-6 and 1.6e-6 inside with multipliers 0.074 and 0.15; inactive ones 0.04 inside with
    6e-6; a lower bound 1e-9 inside with -1e4 (a slack at zero)."""
    ocp = _ocp([0.5, 0.5, 0.5, 0.0], [3.0, 3.0, 3.0, np.inf])
    w = [3.0 - 3.4e-6, 3.0 - 1.6e-6, 3.0 - 0.039, 1e-9]
    lam = [0.0738, 0.1497, 6.3e-6, -1e4]
    assert _clean(w, lam, ocp).tolist() == [0.0738, 0.1497, 0.0, -1e4]


def test_a_multiplier_of_the_wrong_side_or_tiny_is_dropped() -> None:
    ocp = _ocp([0.0, 0.0, 0.0], [1.0, 1.0, 1.0])
    # upper-bound sign but near the lower bound only; a DBL_MIN marker; a far one
    w, lam = [1e-5, 1.0, 0.5], [0.1, 2.2250738585072014e-308, 0.1]
    assert _clean(w, lam, ocp).tolist() == [0.0, 0.0, 0.0]


def test_qrqp_ignores_tiny_multipliers_in_its_initial_active_set() -> None:
    opts = sqp_options(SolverSpec(backend="fast", qpsol="qrqp"))
    assert opts["qpsol_options"]["min_lam"] == MIN_MULTIPLIER
    assert MIN_MULTIPLIER >= 2.2250738585072014e-308  # qrqp's weakly-active marker is below


def test_dual_tolerance_defaults_to_tol() -> None:
    spec = SolverSpec(backend="fast", tol=1e-4)
    assert sqp_options(spec)["tol_du"] == sqp_options(spec)["tol_pr"] == 1e-4
    loose = sqp_options(spec.model_copy(update={"tol_du": 1e-2}))
    assert (loose["tol_pr"], loose["tol_du"]) == (1e-4, 1e-2)


if __name__ == "__main__":
    pytest.main([__file__, "-q"])
