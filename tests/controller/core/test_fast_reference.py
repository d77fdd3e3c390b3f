"""The fast MPC's first cold start from the reference solution (controller.core.ocp_memo).

Every Monte Carlo case builds its own controller, and its first solve started cold: the SQP
from the simulated guess (up to 10 iterations), IPOPT when that failed, ~28 ms of a ~250 ms
freeze-dryer case. The first problems of all cases are close (the same start; parameters
after one EKF correction), so the first cold start now tries the warm SQP from the problem
solved at the model's initial state and nominal parameters (kept per process). What must
hold: it agrees with the cold path, it takes fewer iterations, and a case's decision does not
depend on what the process solved before (the campaign's results must not depend on the
worker or the order of the cases).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from controller.controllerfile import load_controller
from controller.core import fast_mpc, ocp_memo
from controller.core.fast_mpc import FastController
from controller.core.mpc import Decision

ROOT = Path(__file__).resolve().parents[3]
U_PREV = {"Tsh": -35.0, "Pch": 0.15}
#: the lyophilizer-oq campaign's first case at its first solve (t 0.1 h): Lck, R0, KC
FIRST = (0.000761777036428978, 1.4446650481055603, 0.00027700198012234426)


def _controller() -> FastController:
    cfg, model = load_controller(ROOT / "configs" / "controllers" / "lyophilizer.yaml")
    return FastController(cfg, model, "lyophilizer")


def _first(ctl: FastController, lck: float, r0: float, kc: float) -> Decision:
    return ctl.step(0.1, {"Lck": lck}, {"R0": r0, "KC": kc}, U_PREV)


@pytest.fixture(autouse=True)
def _fresh_memo() -> None:
    ocp_memo.clear()


def test_the_first_cold_start_from_the_reference_agrees_with_the_cold_path_in_fewer_iterations(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    referenced = _first(_controller(), *FIRST)
    with monkeypatch.context() as m:
        m.setattr(fast_mpc, "reference_first", lambda ctrl, p_all: None)
        cold = _first(_controller(), *FIRST)
    assert referenced.ok and cold.ok, (referenced.return_status, cold.return_status)
    assert not referenced.fallback and not cold.fallback
    # measured: 2 SQP iterations from the reference, 6 from the simulated guess
    assert referenced.iterations < cold.iterations
    for name, value in cold.inputs.items():  # the same optimum, to the solver's tolerance
        assert referenced.inputs[name] == pytest.approx(value, abs=1e-3), name


def test_a_case_decides_alike_whatever_the_process_solved_before() -> None:
    alone = _first(_controller(), *FIRST)  # the reference is solved here
    other = _first(_controller(), 0.004, 2.6, 1.8e-4)  # another case's first problem
    assert other.ok
    again = _first(_controller(), *FIRST)  # the reference is kept now
    assert again.inputs == alone.inputs  # bit for bit
    assert again.iterations == alone.iterations
    for name, trajectory in alone.predicted_states.items():
        np.testing.assert_array_equal(again.predicted_states[name], trajectory)


def test_only_the_first_cold_start_of_a_controller_uses_it() -> None:
    ctl = _controller()
    assert _first(ctl, *FIRST).ok and ctl.cold_starts == 1
    p_all = np.zeros(1)  # the state at the head: Lck 0, the start
    assert ocp_memo.reference_first(ctl, p_all) is not None  # still its first
    ctl.cold_starts = 2  # a later cold start (after a failure, or resumed far from a plan)
    assert ocp_memo.reference_first(ctl, p_all) is None


def test_a_first_step_far_from_the_start_starts_as_configured() -> None:
    """A controller taking over mid-batch (the front at 0.3 cm) gains nothing from the
    start's solution: its cold start is the SQP from the simulated guess, as before."""
    ctl = _controller()
    d = ctl.step(1.5, {"Lck": 0.3}, {"R0": 1.4, "KC": 2.75e-4}, U_PREV)
    assert d.ok and ctl.cold_starts == 1
    assert not ocp_memo._REFERENCES.data  # no reference solved, none tried
    near = _controller()
    assert _first(near, *FIRST).ok
    assert len(ocp_memo._REFERENCES.data) == 1
