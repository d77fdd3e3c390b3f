"""The fast NMPC path against the do-mpc reference: first moves, closed loops, fallback, cache.

The compiled libraries go to the runtime's default cache (``$PHARMATWIN_CACHE`` or
``~/.cache/pharmatwin``: :data:`CACHE`, handed in as ``compile``), so each model is compiled once,
not once per test run; the cache tests use a small problem in a temporary folder.
"""

from __future__ import annotations

import asyncio
import importlib
import logging
import math
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml

from controller.config import ControllerConfig, SolverSpec
from controller.controllerfile import load_controller
from controller.core.dompc import DoMpcController
from controller.core.fast_mpc import FastController
from controller.core.mpc import ModelPredictiveController, SolveStatus
from controller.core.policy import build_policy
from controller.errors import ConfigError
from controller.runtime.solver_cache import LibraryCache
from hil.kpis import compute_kpis
from hil.simulate import run_scenario
from plant_models import PlantModel

ROOT = Path(__file__).resolve().parents[3]
CONTROLLERS = ROOT / "configs" / "controllers"
SCENARIOS = ROOT / "configs" / "scenarios"
MODELS = ("bioreactor", "crystallizer", "cstr", "lyophilizer")
#: Closed-loop samples per model (short runs; B1 in bench/b1_nmpc.py runs longer ones).
STEPS = {"bioreactor": 15, "crystallizer": 8, "cstr": 15, "lyophilizer": 10}
#: First move: within this fraction of the input's operating span (RK4 vs collocation).
MOVE_TOL = 0.02
#: Closed loop: objective within this relative difference (plus a small absolute floor).
OBJ_RTOL = 0.02
#: The library builder of the fast controllers (the default on-disk cache).
CACHE = LibraryCache()


def _with_solver(cfg: ControllerConfig, **solver: Any) -> ControllerConfig:
    """``cfg`` with its solver section updated (the configured fast-path settings are kept)."""
    spec = SolverSpec(**{**cfg.solver.model_dump(), **solver})
    return cfg.model_copy(update={"solver": spec})


@pytest.fixture(scope="module", params=MODELS)
def pair(request: pytest.FixtureRequest) -> tuple[DoMpcController, FastController]:
    cfg, model = load_controller(CONTROLLERS / f"{request.param}.yaml")
    ref = build_policy(_with_solver(cfg, backend="do-mpc"), model)
    fast = build_policy(_with_solver(cfg, backend="fast"), model, compile=CACHE)
    assert isinstance(ref, DoMpcController) and isinstance(fast, FastController)
    return ref, fast


def test_entry_point_dispatches_on_backend(
    pair: tuple[DoMpcController, FastController],
) -> None:
    ref, fast = pair
    assert ref.config.solver.backend == "do-mpc" and fast.config.solver.backend == "fast"
    assert fast.library is not None and fast.library.suffix == ".so"


def test_first_move_matches_do_mpc(pair: tuple[DoMpcController, FastController]) -> None:
    ref, fast = pair
    model = ref.model
    u_prev = model.nominal_inputs
    ref.reset(u_prev)
    fast.reset(u_prev)
    a = ref.step(0.0, model.initial_state, u_prev=u_prev)
    b = fast.step(0.0, model.initial_state, u_prev=u_prev)
    assert a.ok, a.return_status
    assert b.ok, b.return_status
    for name, spec in ref.config.inputs.items():
        span = spec.upper - spec.lower
        assert b.inputs[name] == pytest.approx(a.inputs[name], abs=MOVE_TOL * span), name
    assert len(b.predicted_states[model.state_names[0]]) == ref.config.horizon + 1
    assert len(b.predicted_inputs[model.input_names[0]]) == ref.config.horizon
    assert set(b.soft_slack) == set(a.soft_slack)


def _scenario_copy(
    tmp_path: Path, model: str, backend: str, solver: dict[str, Any] | None = None
) -> Path:
    ctl = yaml.safe_load((CONTROLLERS / f"{model}.yaml").read_text())
    ctl["plant"] = str(ROOT / "configs" / "plants" / f"{model}.yaml")
    ctl["solver"] = {**ctl.get("solver", {}), "backend": backend, **(solver or {})}
    ctl_path = tmp_path / f"{model}-{backend}-controller.yaml"
    ctl_path.write_text(yaml.safe_dump(ctl))
    sc = yaml.safe_load((SCENARIOS / f"{model}-mpc.yaml").read_text())
    sc["plant"] = str(ROOT / "configs" / "plants" / f"{model}.yaml")
    sc["controller"] = str(ctl_path)
    path = tmp_path / f"{model}-{backend}.yaml"
    path.write_text(yaml.safe_dump(sc))
    return path


@pytest.mark.parametrize("model", MODELS)
def test_short_closed_loop_has_the_same_kpis(tmp_path: Path, model: str) -> None:
    kpis = {
        backend: compute_kpis(
            asyncio.run(
                run_scenario(_scenario_copy(tmp_path, model, backend), max_steps=STEPS[model])
            )
        )
        for backend in ("do-mpc", "fast")
    }
    ref, fast = kpis["do-mpc"], kpis["fast"]
    assert fast.failed_solves <= ref.failed_solves == 0
    assert fast.steps == ref.steps
    assert fast.objective == pytest.approx(ref.objective, rel=OBJ_RTOL, abs=1e-3)
    for name, value in ref.cqas.items():
        assert fast.cqas[name] == pytest.approx(value, rel=OBJ_RTOL, abs=1e-6), name
    assert fast.violation_count <= ref.violation_count


def _cstr(tmp_path: Path | None = None, **changes: Any) -> tuple[ControllerConfig, PlantModel]:
    cfg, model = load_controller(CONTROLLERS / "cstr.yaml")
    solver = changes.pop("solver", {})
    cfg = cfg.model_copy(update={**changes, "solver": SolverSpec(backend="fast", **solver)})
    return cfg, model


def test_sqp_failure_falls_back_to_ipopt_in_the_same_cycle() -> None:
    cfg, model = _cstr(horizon=8, solver={"max_iter": 1, "cold_start": "sqp"})
    mpc = build_policy(cfg, model, compile=CACHE)
    assert isinstance(mpc, FastController)
    u = model.nominal_inputs
    d = mpc.step(0.0, model.initial_state, u_prev=u)
    assert d.ok and d.fallback, d.return_status
    # the status names IPOPT's result and the SQP's failure it stands in for
    assert d.return_status.startswith(("Solve_Succeeded", "Solved_To_Acceptable_Level"))
    assert "IPOPT fallback; SQP: Maximum_Iterations_Exceeded" in d.return_status
    assert mpc.fallbacks == 1 and d.iterations > 1
    for name, spec in cfg.inputs.items():
        assert spec.lower <= d.inputs[name] <= spec.upper
        assert abs(d.inputs[name] - u[name]) <= spec.max_move + 1e-6


def test_an_sqp_limited_to_one_iteration_is_counted_logged_and_shown(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """The failure this protects against: with ``max_iter: 1`` every warm SQP step fails and
    IPOPT solves it, so every Decision is a success and only the solve time (100-1000x) gave
    it away. Now each such cycle is a warning naming the cycle, a row of the recording, a
    KPI (``solver_fallbacks``) and a row of bench B1."""
    path = _scenario_copy(tmp_path, "cstr", "fast", solver={"max_iter": 1, "jit": False})
    with caplog.at_level(logging.WARNING, logger="controller.core.fast_mpc"):
        run = asyncio.run(run_scenario(path, max_steps=6))
    kpis = compute_kpis(run)
    rows = run.rows[:-1]
    assert kpis.failed_solves == 0  # IPOPT did solve every cycle...
    # ...the first as the cold start, most later ones as the SQP's fallback (a warm start
    # close enough to the optimum now and then lets one iteration converge)
    fell_back = [bool(r["solve.fallback"]) for r in rows]
    assert not fell_back[0] and fell_back[1] and sum(fell_back) >= 3
    n = sum(fell_back)
    assert kpis.solver_fallbacks == n and kpis.as_dict()["solver_fallbacks"] == n
    for r, fb in zip(rows, fell_back, strict=True):
        assert (
            "IPOPT fallback; SQP: Maximum_Iterations_Exceeded" in r["solve.return_status"]
        ) == fb
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == n
    assert "cycle 2 (t=0.005 h)" in warnings[0] and "did not converge" in warnings[0]
    assert f"fallbacks so far: {n}" in warnings[-1]
    b1 = _bench_b1()
    fast = {"steps": 6, "fallbacks_kpi": kpis.solver_fallbacks, "constraint_points": 0}
    bench_rows = b1._rows("cstr", _bench_run(), _bench_run(**fast))
    shown = {r["metric"]: r["value"] for r in bench_rows}
    assert shown["fast fallbacks to IPOPT (KPI solver_fallbacks)"] == n
    assert shown["fast fallbacks to IPOPT, share of steps"] == pytest.approx(100 * n / 6, abs=0.01)
    assert shown["constraint points per interval"] == "start + 0 inner + end"


def _bench_b1() -> Any:
    bench = ROOT / "bench"
    if str(bench) not in sys.path:
        sys.path.insert(0, str(bench))
    return importlib.import_module("b1_nmpc")


def _bench_run(**changes: Any) -> dict[str, Any]:
    """One side of B1's comparison, as ``b1_nmpc._run`` returns it."""
    base: dict[str, Any] = {
        "setup_s": 1.0,
        "steps": 6,
        "step_median_ms": 10.0,
        "step_p95_ms": 12.0,
        "first_step_ms": 20.0,
        "solver_only_median_ms": 9.0,
        "iterations_median": 3.0,
        "failed_steps": 0,
        "failed_statuses": {},
        "fallbacks": 0,
        "fallbacks_kpi": 0,
        "cold_starts": 1,
        "objective": 1.0,
        "constraint_points": 0,
    }
    return {**base, **changes}


def test_failed_fallback_is_a_failed_decision() -> None:
    # C_b >= 1.9 mol/L as a hard bound is unreachable from C_b = 0.5: both solvers fail.
    cfg, model = _cstr(horizon=8, state_bounds={"C_b": (1.9, 2.0)}, solver={"cold_start": "sqp"})
    mpc = build_policy(cfg, model, compile=CACHE)
    d = mpc.step(0.0, model.initial_state, u_prev=model.nominal_inputs)
    assert d.status is SolveStatus.FAILED and not d.ok and d.fallback
    assert d.return_status not in ("Solve_Succeeded", "Solved_To_Acceptable_Level")
    assert mpc.fallbacks == 1


def test_without_fallback_a_failed_sqp_is_a_failed_decision() -> None:
    cfg, model = _cstr(horizon=8, solver={"max_iter": 1, "fallback": "none"})
    mpc = build_policy(cfg, model, compile=CACHE)
    d = mpc.step(0.0, model.initial_state, u_prev=model.nominal_inputs)
    assert d.status is SolveStatus.FAILED and not d.fallback and mpc.fallbacks == 0


def test_a_controller_without_soft_constraints_builds_and_solves() -> None:
    cfg, model = load_controller(CONTROLLERS / "lyophilizer.yaml")
    cfg = cfg.model_copy(update={"constraints": (), "horizon": 6})
    mpc = build_policy(cfg, model, compile=CACHE)
    assert isinstance(mpc, FastController)
    d = mpc.step(0.0, model.initial_state, u_prev=model.nominal_inputs)
    assert d.ok and d.soft_slack == {}
    d = mpc.step(0.1, model.initial_state, u_prev=d.inputs)  # the warm-started SQP path
    assert d.ok, d.return_status


def test_non_finite_state_is_refused_without_solving() -> None:
    cfg, model = _cstr(horizon=3)
    mpc = build_policy(cfg, model, compile=CACHE)
    d = mpc.step(0.0, dict(model.initial_state, C_a=math.nan))
    assert d.status is SolveStatus.INVALID and d.inputs == {}


@pytest.mark.slow
def test_compiled_library_is_cached_on_disk(tmp_path: Path) -> None:
    cache = LibraryCache(tmp_path / "cache")
    cfg, model = _cstr(horizon=3)
    first = build_policy(cfg, model, compile=cache)
    assert isinstance(first, FastController)
    # Two libraries: the SQP's (Gauss-Newton Hessian) and IPOPT's (exact Hessian).
    assert cache.compiled == 2 and first.library is not None
    assert first.library in first.libraries and len(first.libraries) == 2
    assert all(lib.parent == tmp_path / "cache" and lib.exists() for lib in first.libraries)
    again = LibraryCache(tmp_path / "cache")  # another process: the same folder
    second = build_policy(cfg, model, compile=again)
    assert isinstance(second, FastController)
    assert again.compiled == 0 and second.libraries == first.libraries
    assert sorted((tmp_path / "cache").iterdir()) == sorted(first.libraries)  # no temporary
    a = first.step(0.0, model.initial_state, u_prev=model.nominal_inputs)
    b = second.step(0.0, model.initial_state, u_prev=model.nominal_inputs)
    assert a.ok and b.ok and a.inputs == pytest.approx(b.inputs)


def test_compile_failure_falls_back_to_no_jit_with_a_warning(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))  # no C compiler to be found
    cfg, model = _cstr(horizon=3)
    with caplog.at_level(logging.WARNING, logger="controller.core.fast_mpc"):
        mpc = build_policy(cfg, model, compile=LibraryCache(tmp_path / "cache"))
    assert isinstance(mpc, FastController) and mpc.library is None
    assert "jit compile failed" in caplog.text and "gcc" in caplog.text
    d = mpc.step(0.0, model.initial_state, u_prev=model.nominal_inputs)
    assert d.ok, d.return_status


class CountingBuilder:
    """A :class:`controller.core.jit.LibraryBuilder` that keeps the code it is asked to build
    and builds nothing (OSError, as a cache without a compiler)."""

    def __init__(self) -> None:
        self.codes: list[str] = []

    def library(self, code: str) -> Path:
        self.codes.append(code)
        raise OSError("counting builder: builds nothing")


def test_build_policy_picks_the_backend_from_the_config() -> None:
    cfg, model = _cstr(horizon=3)
    fast = build_policy(cfg, model)
    ref = build_policy(_with_solver(cfg, backend="do-mpc"), model, compile=CountingBuilder())
    assert type(fast) is FastController and type(ref) is DoMpcController
    assert isinstance(fast, ModelPredictiveController) and fast.config.solver.backend == "fast"
    assert isinstance(ref, ModelPredictiveController) and ref.config.solver.backend == "do-mpc"


def test_the_fast_controller_asks_its_builder_for_every_library(
    caplog: pytest.LogCaptureFixture,
) -> None:
    cfg, model = _cstr(horizon=3)
    builder = CountingBuilder()
    with caplog.at_level(logging.WARNING, logger="controller.core.fast_mpc"):
        mpc = build_policy(cfg, model, compile=builder)
    assert isinstance(mpc, FastController)
    # The SQP's code (Gauss-Newton Hessian), then IPOPT's for the fallback and the cold start
    # (the same NLP and exact Hessian: the same code).
    sqp, fallback, cold = builder.codes
    assert sqp != fallback and fallback == cold and "casadi" in sqp
    assert mpc.library is None and mpc.libraries == []  # nothing built: solved uncompiled
    assert caplog.text.count("jit compile failed") == 3 and "counting builder" in caplog.text
    d = mpc.step(0.0, model.initial_state, u_prev=model.nominal_inputs)
    assert d.ok, d.return_status


def test_without_a_builder_or_without_jit_nothing_is_built() -> None:
    cfg, model = _cstr(horizon=3)
    assert cfg.solver.jit
    mpc = build_policy(cfg, model)  # no builder: the core compiles nothing itself
    assert isinstance(mpc, FastController) and mpc.builder is None
    assert mpc.library is None and mpc.libraries == []
    d = mpc.step(0.0, model.initial_state, u_prev=model.nominal_inputs)
    assert d.ok, d.return_status
    builder = CountingBuilder()
    no_jit = _with_solver(cfg, jit=False)
    assert isinstance(build_policy(no_jit, model, compile=builder), FastController)
    assert builder.codes == []


def test_warm_start_is_shifted_and_parameters_flow_in() -> None:
    cfg, model = _cstr(horizon=8)
    mpc = build_policy(cfg, model, compile=CACHE)
    x, u = model.initial_state, model.nominal_inputs
    a = mpc.step(0.0, x, params={"C_A0": 5.1}, u_prev=u)
    b = mpc.step(0.0, x, params={"C_A0": 5.1}, u_prev=u)  # warm: converges at once
    assert a.ok and b.ok and b.iterations <= a.iterations
    mpc.reset(u)
    c = mpc.step(0.0, x, params={"C_A0": 5.6}, u_prev=u)
    assert c.ok and not np.allclose(a.predicted_states["C_a"], c.predicted_states["C_a"])


def _controller_file(tmp_path: Path, solver: Any) -> Path:
    data = yaml.safe_load((CONTROLLERS / "cstr.yaml").read_text())
    data["plant"] = str(ROOT / "configs" / "plants" / "cstr.yaml")
    data["solver"] = solver
    path = tmp_path / "cstr.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


@pytest.mark.parametrize(
    ("solver", "location", "needle"),
    [
        ({"backend": "acados"}, "solver.backend", "'do-mpc' or 'fast'"),
        ({"backend": "fast", "qpsol": "gurobi"}, "solver.qpsol", "'qpoases' or 'qrqp'"),
        ({"backend": "fast", "max_iter": 0}, "solver.max_iter", "greater than or equal to 1"),
        ({"backend": "fast", "fallback": "bonmin"}, "solver.fallback", "'ipopt' or 'none'"),
        ({"backend": "fast", "speed": "max"}, "solver.speed", "unknown key"),
    ],
)
def test_bad_solver_settings_are_config_errors(
    tmp_path: Path, solver: dict[str, Any], location: str, needle: str
) -> None:
    path = _controller_file(tmp_path, solver)
    with pytest.raises(ConfigError) as info:
        load_controller(path)
    text = str(info.value)
    assert str(path) in text and location in text and needle in text
    bad = next(iter(v for k, v in solver.items() if location.endswith(k)))
    assert repr(bad) in text
