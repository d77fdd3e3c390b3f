"""The freeze dryer's MPC after skipped cycles, and its cold starts.

The pipeline holds the setpoints without a solve on bad data, a failed estimator or a
measurement rejected by the innovation gate, and steps the policy again without a reset. In
the Monte Carlo OQ (configs/campaigns/lyophilizer-mc.yaml) the MPC of case c022 was stepped at
t = 1.5 h and next at 2.9 h: its plan of 1.5 h, shifted one interval, warm-started the SQP,
which stopped at its iteration cap, and IPOPT took over from that plan: 92 iterations to a
worse local optimum (objective 4772 instead of -1134, the shelf 12 degC cooler). 7 of the 9
fallbacks of 30 cases came after such a hold. Now a plan 1.5 samples old or more is stale:
the SQP still starts from it (it converges after most holds), IPOPT from the simulated guess.
The replay (lyophilizer_gap_cycle.json) holds the recorded step calls around the hold.
Counts and values only (no wall time).
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import casadi as ca
import numpy as np
import pytest

from controller.config import ControllerConfig
from controller.controllerfile import load_controller
from controller.core import fast_guess, fast_mpc
from controller.core.fast_guess import COLD_MAX_ITER, cold_solve
from controller.core.fast_mpc import FastController
from controller.core.fast_solver import solve_plain, sqp_options
from controller.core.mpc import Decision
from plant_models import PlantModel, Role

ROOT = Path(__file__).resolve().parents[3]
CONFIG = ROOT / "configs" / "controllers" / "lyophilizer.yaml"
REPLAY = json.loads(Path(__file__).with_name("lyophilizer_gap_cycle.json").read_text())


def _config(**solver: object) -> tuple[ControllerConfig, PlantModel]:
    config, model = load_controller(CONFIG)
    spec = config.solver.model_copy(update=solver)
    return config.model_copy(update={"solver": spec}), model


def _replay(case: str) -> tuple[FastController, Decision]:
    """A fresh controller stepped through a case's recorded calls; the last decision."""
    ctl = FastController(*_config(), str(CONFIG))
    decision = None
    for s in REPLAY["cases"][case]:
        decision = ctl.step(s["t"], s["x_hat"], s["params"], s["u_prev"])
        assert decision.ok, decision.return_status
    assert decision is not None
    return ctl, decision


def test_after_a_hold_ipopt_starts_from_the_simulated_guess() -> None:
    ctl, fresh = _replay("c022-none-d022")
    assert ctl.fallbacks == 1 and fresh.fallback  # the SQP still fails from the old plan
    assert fresh.objective < -1000.0 and fresh.iterations < 40


def test_ipopt_from_the_stale_plan_ends_at_a_worse_optimum(monkeypatch: pytest.MonkeyPatch) -> None:
    """The failure the stale rule protects against: the same calls, IPOPT from the old plan."""
    monkeypatch.setattr(fast_mpc, "STALE_SAMPLES", math.inf)
    ctl, stale = _replay("c022-none-d022")
    assert ctl.fallbacks == 1
    assert stale.objective > 4000.0 and stale.iterations > 80


def test_where_both_starts_reach_the_same_optimum_the_decision_is_the_same(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    _, fresh = _replay("c001-none-d001")
    monkeypatch.setattr(fast_mpc, "STALE_SAMPLES", math.inf)
    ctl, stale = _replay("c001-none-d001")
    for name, value in fresh.inputs.items():
        spec = ctl.config.inputs[name]
        assert abs(stale.inputs[name] - value) <= 1e-4 * (spec.upper - spec.lower)


@pytest.mark.parametrize(
    ("samples", "stale"), [(1.0, False), (1.4, False), (1.6, True), (14, True)]
)
def test_a_plan_is_stale_after_one_and_a_half_samples(samples: float, stale: bool) -> None:
    ctl = FastController(*_config(), str(CONFIG))
    s = REPLAY["cases"]["c001-none-d001"][0]
    first = ctl.step(s["t"], s["x_hat"], s["params"], s["u_prev"])
    ctl.step(s["t"] + samples * ctl.config.sample_time, s["x_hat"], s["params"], first.inputs)
    assert ctl._stale is stale


def test_a_cold_start_by_the_sqp_decides_as_ipopt() -> None:
    """``cold_start: sqp-ipopt`` (the config's): the first step solved by the SQP from the
    simulated guess, no IPOPT; the same first move as IPOPT's cold start (1e-3 of the range)."""
    s = REPLAY["cases"]["c001-none-d001"][0]
    decisions = {}
    for cold in ("sqp-ipopt", "ipopt"):
        ctl = FastController(*_config(cold_start=cold), str(CONFIG))
        decisions[cold] = ctl.step(s["t"], s["x_hat"], s["params"], s["u_prev"])
        assert ctl.cold_starts == 1 and ctl.fallbacks == 0
    by_sqp = decisions["sqp-ipopt"]
    assert by_sqp.ok and by_sqp.iterations <= COLD_MAX_ITER < decisions["ipopt"].iterations
    for name, value in decisions["ipopt"].inputs.items():
        spec = ctl.config.inputs[name]
        assert abs(by_sqp.inputs[name] - value) <= 1e-3 * (spec.upper - spec.lower)


def test_a_cold_sqp_that_does_not_converge_hands_over_to_ipopt(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    config, model = _config()
    ctl = FastController(config, model, str(CONFIG))
    o = ctl.ocp
    one = ca.nlpsol("one", "sqpmethod", o.nlp, {**sqp_options(config.solver), "max_iter": 1})
    s = REPLAY["cases"]["c001-none-d001"][0]
    x0 = model.vector(Role.STATE, s["x_hat"])
    p = model.parameter_vector(s["params"])
    ctl._u_prev = model.vector(Role.INPUT, s["u_prev"])
    w = ctl._cold_guess(x0, p)
    args = ctl._args(w, np.zeros_like(w), np.zeros_like(o.lbg), ctl._parameters(x0, p))
    calls: list[tuple[str, bool]] = []

    def spy(solver: ca.Function, a: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
        sol, stats = solve_plain(solver, a)
        calls.append((solver.name(), bool(stats.get("success"))))
        return sol, stats

    monkeypatch.setattr(fast_guess, "solve_plain", spy)
    assert ctl.ipopt_cold is not None
    _, stats = cold_solve(one, ctl.ipopt_cold, args)
    assert calls == [("one", False), ("fast_cold", True)] and stats["success"]
