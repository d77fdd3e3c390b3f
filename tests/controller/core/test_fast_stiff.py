"""The fast path's RK4 steps on the bioreactor at the low edge of its plausible yield.

Near S = 0 the substrate's consumption is stiff: dS/dt ~ -mu_m X S / (Y_x K_m), some -4.8 /h
at X 3.7 g/L (the soft cap) and Y_x 0.307 (the plausible range is 0.3 to 0.5). With two RK4
steps per hour (z = -2.4, near the edge of RK4's stability interval, -2.79) the
discretization was wrong there: in ``bioreactor-oq`` the low-edge cases c002, c003 and c008
had 21, 12 and 5 solves that ended ``Infeasible_Problem_Detected`` (the IPOPT fallback
after the SQP), and from S = 0.01 g/L the SQP "succeeded" with no feed at all where the
accurate answer feeds 0.008 L/h. The state below is c002's EKF estimate at t = 104 h.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import casadi as ca
import pytest

from controller.config import ControllerConfig
from controller.controllerfile import load_controller
from controller.core import ocp_memo
from controller.core.fast_mpc import FastController
from plant_models.base import PlantModel

ROOT = Path(__file__).resolve().parents[3]
CONFIG = ROOT / "configs" / "controllers" / "bioreactor.yaml"
STATE = {"X": 3.7005761389842458, "P": 0.9878179953033613, "V": 126.69686398434612}
PARAMETERS = {"S_in": 180.35936102863602, "Y_x": 0.30709186737991834}  # as c002 estimated
PREVIOUS_FEED = {"u": 0.0014}  # L/h, c002's last written feed
REFERENCE_STEPS = 6


def _config(steps: int | None = None) -> tuple[ControllerConfig, PlantModel]:
    cfg, model = load_controller(CONFIG)
    if steps is not None:
        solver = cfg.solver.model_copy(update={"integrator_steps": steps})
        cfg = cfg.model_copy(update={"solver": solver})
    return cfg, model


def _first_move(steps: int | None, substrate: float) -> tuple[str, float]:
    cfg, model = _config(steps)
    ctl = FastController(cfg, model, f"bioreactor-{steps}")
    d = ctl.step(104.0, {**STATE, "S": substrate}, PARAMETERS, PREVIOUS_FEED)
    return str(d.return_status), float(d.inputs["u"])


def _substrate_rate(model: PlantModel, biomass: float, yield_x: float) -> float:
    """d(dS/dt)/dS at S = 0 and no feed (1/h): the stiffness of the substrate's consumption,
    from the model's own equations."""
    s = ca.SX.sym("S")
    x = {**STATE, "X": biomass, "S": s}
    p = {**model.parameters, **PARAMETERS, "Y_x": yield_x}
    rate = model.ode(x, {}, {"u": 0.0}, p)["S"]
    return float(ca.Function("dsds", [s], [ca.jacobian(rate, s)])(0.0))


def test_the_shipped_steps_keep_rk4_stable_at_the_plausible_edge() -> None:
    cfg, model = _config()
    cap = next(c.upper for c in cfg.constraints if c.expression == "X")
    lowest_yield = model.parameter_set.parameters["Y_x"].lower
    lam = _substrate_rate(model, cap, lowest_yield)
    assert lam < -4.0  # stiff: about -4.9 /h at X 3.7 and Y_x 0.3
    h = cfg.sample_time / cfg.solver.integrator_steps
    # RK4's second stage keeps the substrate's sign: 1 + h*lambda/2 > 0 (with two steps an
    # hour it is 1 - 1.23: the stage's substrate is negative)
    assert 1.0 + h * lam / 2.0 > 0.0, (cfg.solver.integrator_steps, h * lam)


@pytest.fixture
def unchecked(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """The load-time RK4 check turned off, and no problem built without it left cached."""
    monkeypatch.setattr(ocp_memo, "check_rk4_steps", lambda *args, **kwargs: None)
    ocp_memo.clear()
    try:
        yield
    finally:
        ocp_memo.clear()


@pytest.mark.usefixtures("unchecked")
def test_two_rk4_steps_an_hour_made_the_feasible_problem_infeasible() -> None:
    """The failure the shipped setting protects against (kept as evidence of the cause). A
    controller of two steps is refused since (tests/controller/core/test_rk4_check.py): the
    load-time check is turned off here to show what it protects against."""
    status, _ = _first_move(2, 0.0)
    assert status == "Infeasible_Problem_Detected"


@pytest.mark.parametrize("substrate", [-0.00096, 0.0, 0.01])
def test_the_shipped_controller_solves_and_agrees_with_a_finer_discretization(
    substrate: float,
) -> None:
    status, u = _first_move(None, substrate)
    ref_status, ref_u = _first_move(REFERENCE_STEPS, substrate)
    assert ref_status == "Solve_Succeeded"
    assert status == "Solve_Succeeded"
    assert u > 0.005  # it feeds: the starving plan of two steps (u = 0 at S 0.01) is gone
    assert abs(u - ref_u) <= 5e-4, (u, ref_u)
