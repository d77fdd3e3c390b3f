"""The do-mpc wrapper: bounds, move limits, soft constraints, failures as values, bounded memory."""

from __future__ import annotations

import asyncio
from pathlib import Path

import numpy as np
import pytest
import yaml

from controller.config import SolverSpec
from controller.controllerfile import load_controller
from controller.core.dompc import DoMpcController
from controller.core.mpc import Decision, ModelPredictiveController, SolveStatus
from controller.core.policy import build_policy
from controller.core.safety import InputLimit, Reason, SafetyFilter
from controller.errors import ConfigError
from hil.scenario import load_scenario
from hil.simulate import run_scenario

ROOT = Path(__file__).resolve().parents[3]
CONTROLLERS = ROOT / "configs" / "controllers"


def _controller(name: str, tmp_path: Path | None = None, **changes: object) -> DoMpcController:
    """The do-mpc backend (whatever the shipped config's default is); fast: test_fast_mpc."""
    path = CONTROLLERS / f"{name}.yaml"
    if changes:
        assert tmp_path is not None
        data = yaml.safe_load(path.read_text())
        data.update(changes)
        data["plant"] = str(ROOT / "configs" / "plants" / f"{name}.yaml")
        path = tmp_path / f"{name}.yaml"
        path.write_text(yaml.safe_dump(data))
    cfg, model = load_controller(path)
    cfg = cfg.model_copy(update={"solver": SolverSpec(backend="do-mpc")})
    mpc = build_policy(cfg, model, source=str(path))
    assert isinstance(mpc, DoMpcController)
    return mpc


@pytest.fixture(scope="module")
def cstr() -> DoMpcController:
    return _controller("cstr")


def _check_plan(mpc: ModelPredictiveController, d: Decision, u_prev: dict[str, float]) -> None:
    cfg = mpc.config
    for name, spec in cfg.inputs.items():
        plan = np.concatenate([[u_prev[name]], d.predicted_inputs[name]])
        # IPOPT relaxes bounds by bound_relax_factor (1e-8, relative); the safety layer clips.
        tol = 1e-7 * max(1.0, abs(spec.lower), abs(spec.upper))
        assert np.all(plan[1:] >= spec.lower - tol) and np.all(plan[1:] <= spec.upper + tol)
        moves = np.diff(plan)
        up = min(spec.max_move, spec.max_rise if spec.max_rise is not None else np.inf)
        down = min(spec.max_move, spec.max_fall if spec.max_fall is not None else np.inf)
        assert np.all(moves <= up + 1e-6) and np.all(-moves <= down + 1e-6), name
    for name, (lo, hi) in cfg.state_bounds.items():
        xs = d.predicted_states[name][1:]
        if lo is not None:
            assert np.all(xs >= lo - 1e-6), name
        if hi is not None:
            assert np.all(xs <= hi + 1e-6), name


def test_hard_bounds_and_move_limits_hold_at_every_step(cstr: ModelPredictiveController) -> None:
    model = cstr.model
    x = model.initial_state
    u_prev = model.nominal_inputs
    step = model.integrator(cstr.config.sample_time)
    cstr.reset(u_prev)
    for k in range(8):
        d = cstr.step(k * cstr.config.sample_time, x, u_prev=u_prev)
        assert d.ok, d.return_status
        assert d.iterations > 0 and d.solve_time_s > 0
        assert len(d.predicted_states["C_b"]) == cstr.config.horizon + 1
        _check_plan(cstr, d, u_prev)
        u_prev = dict(d.inputs)
        xf, _ = step(
            np.array([x[n] for n in model.state_names]),
            [],
            np.array([u_prev[n] for n in model.input_names]),
            model.parameter_vector(),
        )
        x = dict(zip(model.state_names, np.asarray(xf).ravel(), strict=True))


def test_crystallizer_plan_never_heats() -> None:
    mpc = _controller("crystallizer")
    model = mpc.model
    u_prev = model.nominal_inputs
    d = mpc.step(0.0, model.initial_state, u_prev=u_prev)
    assert d.ok, d.return_status
    plan = np.concatenate([[u_prev["T"]], d.predicted_inputs["T"]])
    assert np.all(np.diff(plan) <= 1e-6)
    _check_plan(mpc, d, u_prev)


def test_soft_constraint_violation_is_reported(tmp_path: Path) -> None:
    # T_R <= 120 degC cannot be met from T_R = 134 degC within the horizon's first moves.
    mpc = _controller(
        "cstr",
        tmp_path,
        constraints=[{"expression": "T_R", "upper": 120.0, "soft": True, "penalty": 10.0}],
    )
    d = mpc.step(0.0, mpc.model.initial_state, u_prev=mpc.model.nominal_inputs)
    assert d.ok, d.return_status
    assert d.soft_slack and max(d.soft_slack.values()) > 1.0


def test_infeasible_problem_is_a_failed_decision_and_safety_holds(tmp_path: Path) -> None:
    # C_b >= 1.9 mol/L as a hard bound is unreachable from C_b = 0.5 within one move.
    mpc = _controller("cstr", tmp_path, state_bounds={"C_b": [1.9, 2.0]})
    u_prev = mpc.model.nominal_inputs
    d = mpc.step(0.0, mpc.model.initial_state, u_prev=u_prev)
    assert d.status is SolveStatus.FAILED and not d.ok
    assert d.return_status not in ("Solve_Succeeded", "Solved_To_Acceptable_Level")
    limits = {n: InputLimit(n, s.lower, s.upper, s.max_move) for n, s in mpc.config.inputs.items()}
    safety = SafetyFilter(limits)
    safety.reset(u_prev)
    outcome = safety.step(dict(d.inputs), solve_ok=d.ok)
    assert outcome.held and dict(outcome.setpoints) == u_prev
    assert {i.reason for i in outcome.interventions} == {Reason.HELD_SOLVER_FAILED}


def test_non_finite_state_is_refused_without_solving(cstr: ModelPredictiveController) -> None:
    x = dict(cstr.model.initial_state, C_a=float("nan"))
    d = cstr.step(0.0, x)
    assert d.status is SolveStatus.INVALID and d.inputs == {}


def test_initial_guess_is_set_so_do_mpc_never_sleeps(cstr: DoMpcController) -> None:
    cstr.reset(cstr.model.nominal_inputs)
    cstr.step(0.0, cstr.model.initial_state)
    assert cstr.mpc.flags["set_initial_guess"] is True


def test_history_stays_bounded(tmp_path: Path) -> None:
    mpc = _controller("cstr", tmp_path, history_limit=3)
    x, u = mpc.model.initial_state, mpc.model.nominal_inputs
    for k in range(7):
        d = mpc.step(k * 0.005, x, u_prev=u)
        u = dict(d.inputs)
        assert mpc.mpc.data["_time"].shape[0] < 3


def test_parameters_flow_into_the_solve(cstr: ModelPredictiveController) -> None:
    x, u = cstr.model.initial_state, cstr.model.nominal_inputs
    cstr.reset(u)
    a = cstr.step(0.0, x, params={"C_A0": 5.1}, u_prev=u)
    cstr.reset(u)
    b = cstr.step(0.0, x, params={"C_A0": 5.6}, u_prev=u)
    cstr.set_parameters({"C_A0": 5.1})
    assert a.ok and b.ok
    assert not np.allclose(a.predicted_states["C_a"], b.predicted_states["C_a"])


def _lyophilizer_scenario(tmp_path: Path, **changes: object) -> Path:
    sc = yaml.safe_load((ROOT / "configs" / "scenarios" / "lyophilizer-mpc.yaml").read_text())
    sc["plant"] = str(ROOT / "configs" / "plants" / "lyophilizer.yaml")
    ctl = yaml.safe_load((CONTROLLERS / "lyophilizer.yaml").read_text())
    ctl["plant"] = sc["plant"]
    ctl["solver"] = {"backend": "do-mpc"}
    ctl_path = tmp_path / "controller.yaml"
    ctl_path.write_text(yaml.safe_dump(ctl))
    sc["controller"] = str(ctl_path)
    sc.update(changes)
    path = tmp_path / "scenario.yaml"
    path.write_text(yaml.safe_dump(sc))
    return path


def test_initial_inputs_come_from_the_scenario(tmp_path: Path) -> None:
    """The working setpoints at the start are the scenario's, not the plant file's nominal
    values: the first move (at most 6 degC up) starts from them."""
    first = {}
    for tsh in (None, -42.0):
        changes = {} if tsh is None else {"initial_inputs": {"Tsh": tsh}}
        run = asyncio.run(run_scenario(_lyophilizer_scenario(tmp_path, **changes), max_steps=1))
        first[tsh] = run.rows[0]["u.Tsh"]
    assert first[None] == pytest.approx(-35.0 + 6.0)  # nominal -35 degC, heated at once
    assert first[-42.0] == pytest.approx(-42.0 + 6.0)


@pytest.mark.parametrize(
    ("initial", "location", "needle"),
    [
        ({"Tsh": 130.0}, "initial_inputs.Tsh", "outside the controller's input limits"),
        ({"Tshelf": -40.0}, "initial_inputs.Tshelf", "Tshelf"),
        ({"Tsh": "cold"}, "initial_inputs.Tsh", "valid number"),
    ],
)
def test_bad_initial_inputs_are_config_errors(
    tmp_path: Path, initial: dict[str, object], location: str, needle: str
) -> None:
    path = _lyophilizer_scenario(tmp_path, initial_inputs=initial)
    with pytest.raises(ConfigError) as info:
        load_scenario(path)
    text = str(info.value)
    assert str(path) in text and location in text and needle in text
