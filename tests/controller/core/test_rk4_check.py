"""The load-time check of the fast path's RK4 steps (controller/core/rk4_check.py).

The failure it protects against is in test_fast_stiff.py: two RK4 steps an hour on the
bioreactor made a feasible problem infeasible and starved the plant at the low edge of the
plausible yield. Here: such a controller is refused wherever it is loaded or built (with
the file, the key, the value and the steps that would do), the shipped ones pass, and the
margin is what the model's own equations say.
"""

from __future__ import annotations

import dataclasses
import io
import math
from pathlib import Path

import casadi as ca
import numpy as np
import pytest
from rich.console import Console

from controller.config import ControllerConfig
from controller.controllerfile import load_controller
from controller.core import ocp_memo
from controller.core.fast_mpc import FastController
from controller.core.ocp_stage import rk4_interval
from controller.core.rk4_check import (
    RK4_STAGE_LIMIT,
    check_rk4_steps,
    longest_interval,
    planning_box,
    rk4_margin,
    rk4_steps,
)
from controller.core.rk4_region import EDGE, MIN_INSIDE, SOFT_MARGIN, Evaluator
from controller.errors import ConfigError, Problem
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


def _copied(src: Path, dest: Path, *changes: tuple[str, str]) -> Path:
    """``src`` written to ``dest`` with each ``(old, new)`` of ``changes`` made (each must be
    there), then every ``../`` reference made absolute (into ``configs/``)."""
    text = src.read_text(encoding="utf-8")
    for old, new in changes:
        assert old in text, old
        text = text.replace(old, new)
    dest.write_text(text.replace("../", f"{(ROOT / 'configs').as_posix()}/"), encoding="utf-8")
    return dest


def _bad_bioreactor(tmp_path: Path) -> Path:
    """The shipped bioreactor controller with two RK4 steps an hour, in its own folder."""
    two = ("integrator_steps: 3}", "integrator_steps: 2}")
    return _copied(CONTROLLERS / "bioreactor.yaml", tmp_path / "bioreactor-2.yaml", two)


def _naming(tmp_path: Path, src: Path, controller: Path) -> Path:
    """A copy of ``src`` (a site or scenario naming the shipped bioreactor controller) that
    names ``controller`` instead."""
    named = ("../controllers/bioreactor.yaml", controller.as_posix())
    return _copied(src, tmp_path / src.name, named)


def _steps_problem(err: pytest.ExceptionInfo[ConfigError]) -> Problem:
    [problem] = [p for p in err.value.problems if p.location == "solver.integrator_steps"]
    return problem


@pytest.mark.parametrize("name", SHIPPED_FAST)
def test_every_shipped_fast_controller_passes(name: str) -> None:
    cfg, model = load_controller(CONTROLLERS / name)
    m = check_rk4_steps(cfg, model, name)
    assert m is not None and m.ok
    assert m.points >= MIN_INSIDE  # the check looked at enough of the region
    assert m.singular == 0 and m.unsolved == 0  # every point drawn inside was evaluated
    assert 0.0 < m.worst <= RK4_STAGE_LIMIT


def test_the_bioreactor_margin_is_its_substrate_stiffness_at_the_plausible_edge() -> None:
    """The stiffest point found is where test_fast_stiff's analysis put it: S 0, X at its
    cap, the lowest plausible yield; lambda is the model's own d(dS/dt)/dS there."""
    cfg, model = load_controller(CONTROLLERS / "bioreactor.yaml")
    m = rk4_margin(cfg, model, 2)
    assert m.state["S"] == 0.0 and m.state["X"] == pytest.approx(4.07)  # the soft cap, widened
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
    assert m.state["V"] == 120.0  # the volume only grows: held at its initial value


def test_the_region_widens_soft_caps_and_ignores_operating_limits() -> None:
    """X <= 3.7 is soft: the estimate may sit above it (the plan pays its penalty), so the
    region reaches 10 % beyond (4.07). X's operating limit (also 3.7) is the PLC's to
    enforce, not the plan's: it does not narrow the region."""
    cfg, model = load_controller(CONTROLLERS / "bioreactor.yaml")
    assert model.variable("X").operating[1] == pytest.approx(3.7)
    box = planning_box(cfg, model)
    assert box.states["X"] == (EDGE, pytest.approx(3.7 + SOFT_MARGIN * 3.7))  # validity: 0
    assert box.states["S"] == (0.0, 0.5)  # S >= 0 by state_bounds (validity: -0.01)
    assert box.states["V"] == (EDGE * 100.0, 120.0)  # validity 0, V's scale 100 L
    m = rk4_margin(cfg, model, 3)
    assert m.ok and m.state["X"] == pytest.approx(4.07)  # stiffest at the widened cap


def test_a_singularity_inside_the_region_is_refused() -> None:
    """A validity bound is sampled just inside (EDGE of the scale): the empty vessel of the
    shipped bioreactor (V = 0, dilution u / V infinite) is at its validity bound. A plant
    file that widens V's validity below 0 while the controller bounds V from 0 puts the
    empty vessel inside the region: the Jacobian is not finite there, and the check says
    it cannot vouch for it rather than skipping the point."""
    cfg, model = load_controller(CONTROLLERS / "bioreactor.yaml")
    wide = type(model)(
        dataclasses.replace(model.parameter_set, bounds={"V": (-10.0, math.inf)}), smooth=True
    )
    bounded = cfg.model_copy(update={"state_bounds": {**cfg.state_bounds, "V": (0.0, 200.0)}})
    m = rk4_margin(bounded, wide, 3)
    assert not m.ok and m.singular > 0 and m.state["V"] == 0.0
    with pytest.raises(ConfigError, match=r"its Jacobian is not finite at .*V 0"):
        check_rk4_steps(bounded, wide, "x")
    # with the shipped validity (V >= 0) the same bounds sample V from 1e-4 L: not singular,
    # but far too stiff there (u / V = 2000 /h), which is refused as such
    edge = rk4_margin(bounded, model, 3)
    assert edge.singular == 0 and edge.state["V"] == pytest.approx(EDGE * 100.0)
    assert not edge.ok and edge.worst > 100.0


def test_a_controller_file_with_too_few_steps_is_refused_by_check_config(
    tmp_path: Path,
) -> None:
    path = _bad_bioreactor(tmp_path)
    load_controller(path)  # the schema and the names are fine: only the steps are wrong
    out = io.StringIO()
    rc = check_config([path], Console(file=out, width=400), CHECKERS)
    text = out.getvalue()
    assert rc == 1 and "FAIL" in text, text
    line = next(i for i, t in enumerate(path.read_text().splitlines(), 1) if "steps: 2}" in t)
    assert f"{path}:{line}:" in text and "solver.integrator_steps: 2 RK4 steps" in text
    assert "X 4.07, S 0" in text and "-5.43 per h" in text and "|h lambda| = 2.71" in text
    assert "use integrator_steps >= 3" in text
    assert "Traceback" not in text


def test_check_config_says_how_near_the_limit_a_controller_is() -> None:
    """The "ok" of a controller file says what the RK4 check found, not only that it ran."""
    out = io.StringIO()
    path = CONTROLLERS / "bioreactor.yaml"
    assert check_config([path], Console(file=out, width=400), CHECKERS) == 0
    expected = f"ok   {path} (controller; RK4 |h lambda| 1.81 of 2 with 3 steps per 1 h, "
    assert out.getvalue().startswith(expected), out.getvalue()


def test_a_site_naming_such_a_controller_is_refused(tmp_path: Path) -> None:
    controller = _bad_bioreactor(tmp_path)
    site = _naming(tmp_path, ROOT / "configs" / "sites" / "bioreactor-modbus.yaml", controller)
    with pytest.raises(ConfigError) as err:
        load_site(site)
    problem = _steps_problem(err)
    assert problem.file == str(controller) and problem.value == 2


def test_the_fast_controller_is_not_built_with_too_few_steps() -> None:
    """Every path that builds the fast path (run, campaigns, simulate, tuning) goes through
    its transcription, which checks first: a config changed in memory is refused too."""
    cfg, model = load_controller(CONTROLLERS / "bioreactor.yaml")
    ocp_memo.clear()
    with pytest.raises(ConfigError, match=r"solver\.integrator_steps: 2 RK4 steps"):
        FastController(_with_steps(cfg, 2), model, "tuned in memory")


def test_steps_are_counted_as_the_transcription_rounds_them() -> None:
    """With a constraint point inside each interval (two segments), one step asked is two
    taken (one per segment): two are refused on the bioreactor, and the message says so."""
    cfg, model = load_controller(CONTROLLERS / "bioreactor.yaml")
    two_points = cfg.model_copy(update={"constraint_points": 1})
    assert rk4_steps(two_points, 3) == 4 and rk4_steps(two_points, 1) == 2
    assert rk4_steps(cfg, 2) == 2
    # the transcription's own count, read off a DAE's stage blocks (4 per RK4 step, 1 per
    # segment end): the freeze dryer with two segments takes 2 steps for 1 asked
    lyo, lyo_model = load_controller(CONTROLLERS / "lyophilizer.yaml")
    lyo_two = lyo.model_copy(update={"constraint_points": 1})
    _, blocks = rk4_interval(lyo_model, 1, 2)
    assert blocks == 4 * rk4_steps(lyo_two, 1) + 2
    with pytest.raises(ConfigError, match=r"1 RK4 step \(taken as 2\) per interval of 1 h"):
        check_rk4_steps(_with_steps(two_points, 1), model, "x")
    m = check_rk4_steps(_with_steps(two_points, 3), model, "x")  # taken as 4
    assert m is not None and m.h == pytest.approx(0.25)


def test_the_constraints_bound_the_region_the_crystallizer_is_checked_in() -> None:
    """The crystallizer's concentration may be anything in [0, 1] g/g by its validity domain,
    but its plan stays inside the supersaturation band its constraints set. Without them
    the box's corners (C 1.0, far above the metastable limit) would refuse the shipped
    controller: a false refusal is what the filter protects against."""
    cfg, model = load_controller(CONTROLLERS / "crystallizer.yaml")
    assert planning_box(cfg, model).states["C"] == (0.1 * EDGE, 1.0 - 0.1 * EDGE)  # scale 0.1
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
    ev = Evaluator(cfg, model, box)
    lows = np.array(
        [b[0] for b in [*box.states.values(), *box.parameters.values(), *box.inputs.values()]]
    )
    highs = np.array(
        [b[1] for b in [*box.states.values(), *box.parameters.values(), *box.inputs.values()]]
    )
    point = (lows + highs) / 2.0
    seen = ev(point[None, :])
    assert seen.solved[0] and seen.finite[0]  # (the centre is outside the constraints)
    mats = seen.mats
    x, z, u, p = ev.split(point[None, :])
    f = model.function
    solve = ev.z_solve
    assert solve is not None
    d = 1e-6 * max(1.0, abs(float(x[0, 0])))
    slopes = []
    for sign in (1.0, -1.0):
        xs = x[0].copy()
        xs[0] += sign * d
        zs = np.asarray(solve(z[0], xs, u[0], p[0])[0]).ravel()
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


def test_a_robust_scenario_parameter_without_a_range_is_sampled(tmp_path: Path) -> None:
    """The controller file's check keeps scenario values inside a plausible range; a
    parameter with none (mu_m) is sampled over its scenario values. mu_m 0.03 1/h (nominal
    0.02) makes the substrate stiffer (-8.1 /h at X 4.07, the widened soft cap, and Y_x 0.3),
    and three steps no longer do. An estimated parameter without a range is held at
    nominal, and the report says so."""
    mu = ("    Y_x: [0.5, 0.4, 0.3]\n", "    Y_x: [0.5, 0.4, 0.3]\n    mu_m: [0.02, 0.03]\n")
    path = _copied(CONTROLLERS / "bioreactor-robust.yaml", tmp_path / "robust-mu.yaml", mu)
    cfg, model = load_controller(path)  # a loadable file: mu_m has no plausible range
    assert not math.isfinite(model.parameter_set.parameters["mu_m"].upper)
    assert planning_box(cfg, model).parameters["mu_m"] == (0.02, 0.03)
    m = rk4_margin(cfg, model, 3)
    assert not m.ok and m.parameters["mu_m"] == pytest.approx(0.03)
    assert m.steps_needed(3) == 5
    with pytest.raises(ConfigError, match="use integrator_steps >= 5"):
        check_rk4_steps(cfg, model, str(path))
    est = cfg.estimator.model_copy(update={"parameters": ("S_in", "Y_x", "K_m")})
    held = rk4_margin(cfg.model_copy(update={"estimator": est}), model, 4)
    assert held.held == ("K_m",) and "K_m held at nominal" in held.coverage()


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


def test_a_scenario_naming_such_a_controller_is_refused(tmp_path: Path) -> None:
    """The HIL tools' loaders check it too (a scenario here; campaigns and tuning candidates
    go through the same call): a refused controller is a problem of the file naming it."""
    from hil.scenario import load_scenario

    controller = _bad_bioreactor(tmp_path)
    scenario = _naming(tmp_path, ROOT / "configs" / "scenarios" / "bioreactor-mpc.yaml", controller)
    with pytest.raises(ConfigError) as err:
        load_scenario(scenario)
    problem = _steps_problem(err)
    assert problem.file == str(controller) and "use integrator_steps >= 3" in problem.message
