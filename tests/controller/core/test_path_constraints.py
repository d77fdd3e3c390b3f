"""Path constraints hold between samples, on both backends (issue 15).

The freeze dryer's product temperature rises while the shelf temperature is held: a plan
that holds ``Tbot <= limit`` only at the start of each interval overshoots it by the end of
the interval. The constraints are now held at the end of every interval too (and at
``constraint_points`` inner points). The true plant is checked on a fine grid
(:func:`hil.min_time.replay`: the applied inputs replayed through the exact equations in
small steps, the constraint evaluated at every step and just after every input move), not
only at the samples.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import casadi as ca
import numpy as np
import pytest
import yaml

from controller.config import SolverSpec
from controller.controllerfile import load_controller
from controller.core.dompc import element_weights
from controller.core.ocp import transcribe
from controller.core.ocp_stage import points_per_interval, rk4_interval
from controller.core.policy import build_policy
from controller.errors import ConfigError
from controller.plantfile import build_model
from hil.min_time import replay
from hil.plant_runner import PlantRunner
from hil.simulate import ScenarioRun, run_scenario
from plant_models import PlantModel, Role

ROOT = Path(__file__).resolve().parents[3]
PLANT = ROOT / "configs" / "plants" / "lyophilizer.yaml"
LIMIT = -7.0  # degC: T_crit - 2, as the lyophilizer scenarios check it
#: The issue's bar: the true product temperature within 0.05 K of its limit, everywhere.
TOLERANCE = 0.05
pytestmark = pytest.mark.timeout(600)


def _controller_file(tmp_path: Path, backend: str, points: int) -> Path:
    """The shipped freeze-dryer controller with a hard product-temperature limit and an
    estimator that estimates no parameter (the model is perfect)."""
    ctl = yaml.safe_load((ROOT / "configs" / "controllers" / "lyophilizer.yaml").read_text())
    ctl["plant"] = str(PLANT)
    ctl["constraints"] = [
        {"expression": "Tbot", "upper": LIMIT},
        {"expression": "capability_margin", "lower": 0.0, "soft": True, "penalty": 1000.0},
    ]
    ctl["constraint_points"] = points
    ctl["estimator"] = {"kind": "ekf", "measurement_noise_std": {"Tbot": 0.2}}
    ctl.pop("monitoring", None)
    ctl["solver"] = {**ctl["solver"], "backend": backend}
    path = tmp_path / f"lyophilizer-{backend}-{points}.yaml"
    path.write_text(yaml.safe_dump(ctl))
    return path


def _perfect_scenario(tmp_path: Path, backend: str, points: int) -> Path:
    """True plant = the controller's model, no noise, until primary drying ends."""
    sc = {
        "name": f"perfect-{backend}-{points}",
        "plant": str(PLANT),
        "controller": str(_controller_file(tmp_path, backend, points)),
        "duration": 10.0,
    }
    path = tmp_path / f"perfect-{backend}-{points}.yaml"
    path.write_text(yaml.safe_dump(sc))
    return path


def _fine_grid_excess(run: ScenarioRun) -> tuple[float, int]:
    """The worst excess of the true Tbot over the limit with the run's inputs replayed on a
    grid of 1/50 of a sample, and the number of instants looked at."""
    assert run.controller is not None
    rows = [r for r in run.rows if r.get("solve.status") != "end"]
    pieces = [
        (run.controller.sample_time, {n: float(r[f"u.{n}"]) for n in run.model.input_names})
        for r in rows
    ]
    limit = [c for c in run.controller.constraints if c.expression == "Tbot"]
    result = replay(run.model, run.model.initial_state, pieces, limit, overrun=0.0)
    assert result.end == pytest.approx(run.finished_at, rel=1e-5)  # the same trajectory
    return result.worst_excess[f"Tbot <= {LIMIT:g}"], result.points


def _tbot_limit_at_start(model: PlantModel, lck: float) -> float:
    """The shelf temperature at which Tbot is exactly at the limit at this cake thickness
    (bisection: Tbot rises with Tsh)."""
    z_solve = model.algebraic_solver()
    assert z_solve is not None

    def tbot(tsh: float) -> float:
        u = {"Tsh": tsh, "Pch": 0.15}
        z = float(z_solve([-30.0], [lck], model.vector(Role.INPUT, u), model.parameter_vector()))
        return model.evaluate({"Lck": lck}, u, {"Tsub": z}).outputs["Tbot"]

    lo, hi = -45.0, 120.0
    for _ in range(60):
        mid = 0.5 * (lo + hi)
        lo, hi = (mid, hi) if tbot(mid) < LIMIT else (lo, mid)
    return lo


def test_a_limit_held_at_interval_starts_is_overshot_by_the_interval_end() -> None:
    """The failure the end-of-interval rows protect against: the shelf temperature that puts
    Tbot exactly on its limit at a sample, held for one sample, overshoots it by far more
    than the tolerance (Tbot rises as the dried cake thickens)."""
    model = build_model(PLANT)
    lck = 0.3
    tsh = _tbot_limit_at_start(model, lck)
    plant = PlantRunner(model, 0.1 / 50, initial_state={"Lck": lck})
    worst = -np.inf
    for _ in range(50):
        plant.advance({"Tsh": tsh, "Pch": 0.15})
        worst = max(worst, plant.true_state().outputs["Tbot"] - LIMIT)
    assert worst > 4 * TOLERANCE


@pytest.mark.parametrize(("backend", "points"), [("do-mpc", 0), ("fast", 0), ("do-mpc", 2)])
def test_perfect_model_keeps_the_true_product_temperature_within_its_limit_between_samples(
    tmp_path: Path, backend: str, points: int
) -> None:
    run = asyncio.run(run_scenario(_perfect_scenario(tmp_path, backend, points)))
    assert run.plant_fault is None and run.finished_at is not None
    assert all(r["solve.status"] == "success" for r in run.rows[:-1])
    worst, looked_at = _fine_grid_excess(run)
    assert looked_at > 50 * (len(run.rows) - 2)
    assert worst <= TOLERANCE, f"{backend}: true Tbot {worst:.4f} K over its limit"
    # the limit is what shapes the batch: the product is taken up to it
    assert worst >= -TOLERANCE


def test_fast_path_has_a_row_per_constraint_at_every_point_of_every_interval() -> None:
    cfg, model = load_controller(ROOT / "configs" / "controllers" / "lyophilizer.yaml")
    for points in (0, 3):
        c = cfg.model_copy(
            update={"constraint_points": points, "solver": SolverSpec(backend="fast", jit=False)}
        )
        ocp = transcribe(c, model, "<test>", c.solver.integrator_steps)
        n_cons = len(c.constraints)
        assert points_per_interval(c) == points + 2
        moves = 2  # Tsh and Pch have move limits
        n_alg = ocp.z_idx.shape[1]  # one algebraic row per algebraic block
        nx, nu = 1, 2
        assert ocp.g_block == nx + nu + n_alg + moves + (points + 2) * n_cons


def test_inner_constraint_points_are_the_states_at_their_times() -> None:
    """The interval's segment ends (its constraint points) are the RK4 states at j/(N+1) of
    the interval; they agree with an exact integration to the integrator's accuracy."""
    model = build_model(PLANT, smooth=True)
    f, n_blocks = rk4_interval(model, 4, 4)  # 4 segments: 3 inner points and the end
    x0 = np.array([0.2]) / model.scales(Role.STATE)
    u = np.array([20.0, 0.15])
    p = model.parameter_vector()
    zs_sym = ca.SX.sym("zs", n_blocks)
    residual = ca.Function("g", [zs_sym], [f(x0, u, zs_sym, p, 0.4)[1]])
    zs = np.asarray(ca.rootfinder("rf", "newton", residual)(np.full(n_blocks, -2.5))).ravel()
    assert np.max(np.abs(np.asarray(residual(zs)))) < 1e-8
    points = np.asarray(f(x0, u, zs, p, 0.4)[2]).ravel() * model.scales(Role.STATE)
    plant = PlantRunner(model, 0.1, initial_state={"Lck": 0.2})
    for j in range(4):
        plant.advance({"Tsh": 20.0, "Pch": 0.15})
        assert points[j] == pytest.approx(plant.true_state().states["Lck"], rel=1e-6)


def test_collocation_weights_interpolate_the_element_polynomial_exactly() -> None:
    """do-mpc's inner points: the Lagrange weights of an element's nodes reproduce any
    polynomial of the collocation degree, in the right element."""
    deg, elements = 3, 2
    tau_root = [0.0, *ca.collocation_points(deg, "radau")]
    poly = np.poly1d([0.7, -1.1, 0.3, 2.0])  # degree 3 in the element's own time
    for tau in (0.2, 0.5, 0.8, 1.0):
        i, w = element_weights(tau, tau_root, elements)
        assert i == min(int(tau * elements), elements - 1)
        local = tau * elements - i
        assert sum(wr * poly(tr) for wr, tr in zip(w, tau_root, strict=True)) == pytest.approx(
            poly(local), abs=1e-12
        )


@pytest.mark.parametrize("backend", ["do-mpc", "fast"])
def test_first_move_holds_the_limit_to_the_end_of_its_interval(
    tmp_path: Path, backend: str
) -> None:
    """From a state where the limit binds, the first move held for one sample keeps the true
    Tbot within the tolerance on a fine grid (the move that puts Tbot on the limit at the
    start overshoots: see the first test)."""
    cfg, model = load_controller(_controller_file(tmp_path, backend, 0))
    cfg = cfg.model_copy(update={"solver": cfg.solver.model_copy(update={"jit": False})})
    mpc = build_policy(cfg, model)
    x = {"Lck": 0.3}
    u_prev = {"Tsh": _tbot_limit_at_start(build_model(PLANT), 0.3) - 3.0, "Pch": 0.15}
    d = mpc.step(0.0, x, u_prev=u_prev)
    assert d.ok, d.return_status
    assert d.inputs["Tsh"] > u_prev["Tsh"]  # it heats: the limit is what stops it
    hard = [c for c in cfg.constraints if not c.soft]
    piece = [(cfg.sample_time, dict(d.inputs))]
    result = replay(build_model(PLANT), x, piece, hard, overrun=0.0)
    assert -TOLERANCE <= result.worst_excess[f"Tbot <= {LIMIT:g}"] <= TOLERANCE


@pytest.mark.parametrize(("points", "needle"), [(-1, "greater than or equal to 0"), (21, "20")])
def test_bad_constraint_points_are_config_errors(tmp_path: Path, points: int, needle: str) -> None:
    path = _controller_file(tmp_path, "do-mpc", 0)
    data = yaml.safe_load(path.read_text())
    data["constraint_points"] = points
    path.write_text(yaml.safe_dump(data))
    with pytest.raises(ConfigError) as info:
        load_controller(path)
    text = str(info.value)
    assert str(path) in text and "constraint_points" in text and needle in text


@pytest.mark.parametrize("backend", ["do-mpc", "fast"])
def test_soft_limits_hold_between_samples_too(tmp_path: Path, backend: str) -> None:
    """The shipped freeze-dryer problem (its product margin, margin_to_collapse >= 3 K, is a
    soft constraint), perfect model, no noise: the true margin stays within the tolerance
    of its bound on the fine grid, and the plan reported no slack."""
    ctl = yaml.safe_load((ROOT / "configs" / "controllers" / "lyophilizer.yaml").read_text())
    ctl["plant"] = str(PLANT)
    ctl["estimator"] = {"kind": "ekf", "measurement_noise_std": {"Tbot": 0.2}}
    ctl.pop("monitoring", None)
    ctl["solver"] = {**ctl["solver"], "backend": backend}
    ctl_path = tmp_path / "controller.yaml"
    ctl_path.write_text(yaml.safe_dump(ctl))
    sc = {"name": "soft", "plant": str(PLANT), "controller": str(ctl_path), "duration": 10.0}
    path = tmp_path / "soft.yaml"
    path.write_text(yaml.safe_dump(sc))
    run = asyncio.run(run_scenario(path))
    assert run.controller is not None and run.finished_at is not None
    rows = [r for r in run.rows if r.get("solve.status") != "end"]
    assert all(r["solve.status"] == "success" for r in rows)
    slack = [v for r in rows for k, v in r.items() if k.startswith("slack.margin_to_collapse")]
    assert max(slack) <= 1e-4
    pieces = [
        (run.controller.sample_time, {n: float(r[f"u.{n}"]) for n in ("Tsh", "Pch")}) for r in rows
    ]
    soft = [c for c in run.controller.constraints if c.expression == "margin_to_collapse"]
    result = replay(run.model, run.model.initial_state, pieces, soft, overrun=0.0)
    assert -TOLERANCE <= result.worst_excess["3 <= margin_to_collapse"] <= TOLERANCE
