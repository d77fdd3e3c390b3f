"""The load-time check of the fast path's RK4 steps (controller/core/rk4_check.py).

The failure it protects against is in test_fast_stiff.py: two RK4 steps an hour on the
bioreactor made a feasible problem infeasible and starved the plant at the low edge of the
plausible yield. Here: such a controller is refused wherever it is loaded or built (with
the file, the key, the value and the steps that would do), the shipped ones pass, and the
margin is what the model's own equations say.
"""

from __future__ import annotations

import io
from pathlib import Path

import casadi as ca
import numpy as np
import pytest
from rich.console import Console

from controller.config import ControllerConfig
from controller.controllerfile import load_controller
from controller.core import ocp_memo, rk4_check
from controller.core.fast_mpc import FastController
from controller.core.rk4_check import (
    RK4_STAGE_LIMIT,
    check_rk4_steps,
    longest_interval,
    planning_box,
    rk4_margin,
    rk4_steps,
)
from controller.errors import ConfigError
from controller.runtime.cli_config import CHECKERS, check_config
from controller.runtime.site import load_site
from plant_models import Role

ROOT = Path(__file__).resolve().parents[3]
CONTROLLERS = ROOT / "configs" / "controllers"
SHIPPED_FAST = sorted(
    p.name for p in CONTROLLERS.glob("*.yaml") if load_controller(p)[0].solver.backend == "fast"
)


def _with_steps(cfg: ControllerConfig, steps: int) -> ControllerConfig:
    return cfg.model_copy(
        update={"solver": cfg.solver.model_copy(update={"integrator_steps": steps})}
    )


def _bad_bioreactor(tmp_path: Path) -> Path:
    """The shipped bioreactor controller with two RK4 steps an hour, in its own folder."""
    text = (CONTROLLERS / "bioreactor.yaml").read_text(encoding="utf-8")
    plant = (ROOT / "configs" / "plants" / "bioreactor.yaml").as_posix()
    text = text.replace("plant: ../plants/bioreactor.yaml", f"plant: {plant}")
    assert "integrator_steps: 3}" in text
    path = tmp_path / "bioreactor-2.yaml"
    path.write_text(text.replace("integrator_steps: 3}", "integrator_steps: 2}"), encoding="utf-8")
    return path


@pytest.mark.parametrize("name", SHIPPED_FAST)
def test_every_shipped_fast_controller_passes(name: str) -> None:
    cfg, model = load_controller(CONTROLLERS / name)
    m = check_rk4_steps(cfg, model, name)
    assert m is not None and m.ok
    assert m.points >= rk4_check.MIN_INSIDE  # the check looked at enough of the region
    assert 0.0 < m.worst <= RK4_STAGE_LIMIT


def test_the_bioreactor_margin_is_its_substrate_stiffness_at_the_plausible_edge() -> None:
    """The stiffest point found is where test_fast_stiff's analysis put it: S 0, X at its
    cap, the lowest plausible yield; lambda is the model's own d(dS/dt)/dS there."""
    cfg, model = load_controller(CONTROLLERS / "bioreactor.yaml")
    m = rk4_margin(cfg, model, 2)
    assert m.state["S"] == 0.0 and m.state["X"] == pytest.approx(3.7)
    assert m.parameters["Y_x"] == pytest.approx(0.3)
    s = ca.SX.sym("S")
    x = {**m.state, "S": s}
    p = {**model.parameters, **m.parameters}
    rate = model.ode(x, {}, m.inputs, p)["S"]
    dsds = float(ca.Function("dsds", [s], [ca.jacobian(rate, s)])(0.0))
    # the eigenvalue is the S-S entry but for the small coupling with X (2e-4 of it)
    assert m.eigenvalue.real == pytest.approx(dsds, rel=1e-3) and m.eigenvalue.imag == 0.0
    assert m.worst == pytest.approx(abs(m.eigenvalue) / 2)  # h = 1/2 h
    assert not m.ok and m.steps_needed(2) == 3
    assert rk4_margin(cfg, model, 3).ok
    assert set(m.unbounded) == {"S", "V"}  # sampled up to their initial values, and said so


def test_a_controller_file_with_too_few_steps_is_refused_by_check_config(
    tmp_path: Path,
) -> None:
    path = _bad_bioreactor(tmp_path)
    load_controller(path)  # the schema and the names are fine: only the steps are wrong
    out = io.StringIO()
    rc = check_config([path], Console(file=out, width=400), CHECKERS)
    text = out.getvalue()
    assert rc == 1 and "FAIL" in text, text
    assert f"{path}:40:" in text and "solver.integrator_steps: 2 RK4 steps" in text
    assert "-4.93 per h" in text and "|h lambda| = 2.47" in text
    assert "use integrator_steps >= 3" in text
    assert "Traceback" not in text


def test_a_site_naming_such_a_controller_is_refused(tmp_path: Path) -> None:
    controller = _bad_bioreactor(tmp_path)
    site = (ROOT / "configs" / "sites" / "bioreactor-modbus.yaml").read_text(encoding="utf-8")
    folder = (ROOT / "configs").as_posix()
    site = site.replace("../plants/", f"{folder}/plants/").replace("../tags/", f"{folder}/tags/")
    site = site.replace("../scenarios/", f"{folder}/scenarios/")
    site = site.replace("../controllers/bioreactor.yaml", controller.as_posix())
    path = tmp_path / "site.yaml"
    path.write_text(site, encoding="utf-8")
    with pytest.raises(ConfigError) as err:
        load_site(path)
    [problem] = [p for p in err.value.problems if p.location == "solver.integrator_steps"]
    assert problem.file == str(controller) and problem.value == 2


def test_the_fast_controller_is_not_built_with_too_few_steps() -> None:
    """Every path that builds the fast path (run, campaigns, simulate, tuning) goes through
    its transcription, which checks first: a config changed in memory is refused too."""
    cfg, model = load_controller(CONTROLLERS / "bioreactor.yaml")
    ocp_memo.clear()
    with pytest.raises(ConfigError, match=r"solver\.integrator_steps: 2 RK4 steps"):
        FastController(_with_steps(cfg, 2), model, "tuned in memory")


def test_steps_are_counted_as_the_transcription_rounds_them() -> None:
    cfg, model = load_controller(CONTROLLERS / "bioreactor.yaml")
    two_points = cfg.model_copy(update={"constraint_points": 1})  # two segments an interval
    assert rk4_steps(two_points, 3) == 4 and rk4_steps(two_points, 2) == 2
    assert rk4_steps(cfg, 2) == 2
    # one RK4 step asked, two taken (one per segment): 2 would be refused, this is not
    m = check_rk4_steps(_with_steps(two_points, 3), model, "x")
    assert m is not None and m.h == pytest.approx(0.25)


def test_the_constraints_bound_the_region_the_crystallizer_is_checked_in() -> None:
    """The crystallizer's concentration may be anything in [0, 1] g/g by its validity domain,
    but its plan stays inside the supersaturation band its constraints set. Without them
    the box's corners (C 1.0, far above the metastable limit) would refuse the shipped
    controller: a false refusal is what the filter protects against."""
    cfg, model = load_controller(CONTROLLERS / "crystallizer.yaml")
    assert planning_box(cfg, model).states["C"] == (0.0, 1.0)
    with_constraints = rk4_margin(cfg, model, 1)
    assert with_constraints.ok and with_constraints.outside > 0
    bare = rk4_margin(cfg.model_copy(update={"constraints": []}), model, 1)
    assert not bare.ok and bare.outside == 0


def test_a_dae_is_checked_on_its_reduced_jacobian() -> None:
    """The freeze dryer's one differential state, with the algebraic ones solved: the
    reduced Jacobian is the derivative of xdot along the algebraic manifold (a central
    difference with z solved again at each side)."""
    cfg, model = load_controller(CONTROLLERS / "lyophilizer.yaml")
    box = planning_box(cfg, model)
    ev = rk4_check._Evaluator(cfg, model, box)
    lows = np.array(
        [b[0] for b in [*box.states.values(), *box.parameters.values(), *box.inputs.values()]]
    )
    highs = np.array(
        [b[1] for b in [*box.states.values(), *box.parameters.values(), *box.inputs.values()]]
    )
    point = (lows + highs) / 2.0
    mats, good, _ = ev(point[None, :])
    assert good[0]
    x, z, u, p = ev.split(point[None, :])
    f = model.function
    solve = ev.z_solve
    assert solve is not None
    d = 1e-6 * max(1.0, abs(float(x[0, 0])))
    slopes = []
    for sign in (1.0, -1.0):
        xs = x[0].copy()
        xs[0] += sign * d
        zs = np.asarray(solve(z[0], xs, u[0], p[0])).ravel()
        slopes.append(float(np.asarray(f(xs, zs, u[0], p[0])[0]).ravel()[0]))
    assert mats[0, 0, 0] == pytest.approx((slopes[0] - slopes[1]) / (2 * d), rel=1e-5)
    assert len(model.vector(Role.ALGEBRAIC, model.initial_algebraic)) > 0


def test_the_do_mpc_backend_is_not_checked() -> None:
    """do-mpc integrates by collocation: there are no RK4 steps to check."""
    cfg, model = load_controller(CONTROLLERS / "bioreactor.yaml")
    reference = cfg.model_copy(
        update={"solver": cfg.solver.model_copy(update={"backend": "do-mpc"})}
    )
    assert check_rk4_steps(_with_steps(reference, 1), model, "x") is None


def test_a_robust_controllers_scenarios_widen_the_parameter_range() -> None:
    """Scenarios beyond the plausible range are planned with too: a yield of 0.2 (plausible
    0.3-0.5) makes the substrate stiffer (-7.4 /h at X 3.7), and three steps no longer do."""
    cfg, model = load_controller(CONTROLLERS / "bioreactor-robust.yaml")
    assert cfg.robust is not None
    assert rk4_margin(cfg, model, 3).ok  # the shipped scenarios: the plausible range's ends
    robust = cfg.robust.model_copy(update={"parameters": {"Y_x": [0.5, 0.2], "S_in": "range"}})
    wide = cfg.model_copy(update={"robust": robust})
    assert planning_box(wide, model).parameters["Y_x"] == (0.2, 0.5)
    m = rk4_margin(wide, model, 3)
    assert not m.ok and m.parameters["Y_x"] == pytest.approx(0.2)
    assert m.steps_needed(3) == 4


def test_a_bounded_free_end_plan_is_checked_on_its_longest_interval() -> None:
    """The freeze dryer's minimum-time plan: the first interval lasts a sample (0.1 h), the
    other 19 share the rest of the time to the end. Bounded by ``max_time`` they are checked
    at their longest; unbounded, only the sample can be."""
    cfg, model = load_controller(CONTROLLERS / "lyophilizer-min-time.yaml")
    mt = cfg.objective.min_time
    assert mt is not None and mt.mode == "free_end" and mt.max_time is None
    assert longest_interval(cfg) == cfg.sample_time
    sample = rk4_margin(cfg, model, 1)
    bounded = cfg.model_copy(
        update={
            "objective": cfg.objective.model_copy(
                update={"min_time": mt.model_copy(update={"max_time": 40.0})}
            )
        }
    )
    longest = (40.0 - cfg.sample_time) / (cfg.horizon - 1)
    assert longest_interval(bounded) == pytest.approx(longest)
    m = rk4_margin(bounded, model, 1)
    assert m.h == pytest.approx(longest)
    assert m.worst == pytest.approx(sample.worst * longest / cfg.sample_time)
    assert not m.ok  # 2.1 h per RK4 step is too long for the dryer's fastest mode
    with pytest.raises(ConfigError, match=r"per interval of 2\.1 h are too few"):
        check_rk4_steps(bounded, model, "x")
