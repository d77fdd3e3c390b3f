"""A second build of the same controller in one process generates no code (the cache's
memo of problem keys), never reuses a library across a changed problem, and never shares a
solver's warm start between the controllers built from it.

The compiled libraries go to a temporary cache folder (a small CSTR problem: a few seconds
of gcc per test module).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pytest

from controller.config import ControllerConfig, SolverSpec
from controller.controllerfile import load_controller
from controller.core import jit
from controller.core.fast_mpc import FastController
from controller.core.jit import shared_solvers
from controller.core.policy import build_policy
from controller.runtime.solver_cache import LibraryCache
from plant_models import PlantModel

ROOT = Path(__file__).resolve().parents[3]
CSTR = ROOT / "configs" / "controllers" / "cstr.yaml"


def cstr(tmp: Path, setpoint: float = 0.6) -> tuple[ControllerConfig, PlantModel]:
    """The CSTR controller on a 3-step horizon, tracking C_b to ``setpoint``."""
    text = CSTR.read_text(encoding="utf-8")
    text = text.replace("plant: ../plants/cstr.yaml", f"plant: {ROOT}/configs/plants/cstr.yaml")
    text = text.replace("setpoint: 0.6,", f"setpoint: {setpoint},")
    path = tmp / f"cstr-{setpoint}.yaml"
    path.write_text(text, encoding="utf-8")
    cfg, model = load_controller(path)
    solver = SolverSpec(**{**cfg.solver.model_dump(), "backend": "fast"})
    return cfg.model_copy(update={"horizon": 3, "solver": solver}), model


def fast(cfg: ControllerConfig, model: PlantModel, builder: Any) -> FastController:
    mpc = build_policy(cfg, model, compile=builder)
    assert isinstance(mpc, FastController)
    return mpc


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("memo")


def test_a_second_build_generates_no_code_and_loads_the_same_libraries(folder: Path) -> None:
    cfg, model = cstr(folder)
    cache = LibraryCache(folder / "cache")
    first = fast(cfg, model, cache)
    generated = cache.generated
    assert generated == 2 and len(first.libraries) == 2  # the SQP's and IPOPT's code
    second = fast(cfg, model, LibraryCache(folder / "cache"))  # a new instance: same memo
    assert cache.generated == generated and second.libraries == first.libraries
    # another folder or other flags are another cache: nothing known there
    other = LibraryCache(folder / "other", flags=("-O1",))
    assert other.known(next(iter(k for (_, k) in LibraryCache._resolved))) is None


def test_the_ipopt_library_is_compiled_with_the_rare_flags(folder: Path) -> None:
    cc, runs = folder / "logging-cc", folder / "cc.log"
    cc.write_text(f'#!/bin/sh\necho "$1 $(head -n 1 "$4")" >> {runs}\nexec gcc "$@"\n')
    cc.chmod(0o755)
    cfg, model = cstr(folder, 0.55)
    cache = LibraryCache(folder / "flags", compiler=str(cc))
    mpc = fast(cfg, model, cache)
    assert mpc.library is not None and len(mpc.libraries) == 2
    sqp, ipopt = sorted(runs.read_text().splitlines(), key=lambda line: jit.RARELY_RUN in line)
    assert sqp.startswith(f"{cache.flags[0]} ") and jit.RARELY_RUN.strip() not in sqp
    assert cache.rare_flags != cache.flags and len(cache.rare_flags) == 1
    assert ipopt == f"{cache.rare_flags[0]} {jit.RARELY_RUN.strip()}"
    assert mpc.step(0.0, model.initial_state, u_prev=model.nominal_inputs).ok


def test_a_changed_problem_never_reuses_a_library(
    folder: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    a_cfg, model = cstr(folder, 0.6)
    b_cfg, _ = cstr(folder, 0.7)
    plain_b = fast(b_cfg, model, None).step(0.0, model.initial_state, u_prev=model.nominal_inputs)
    assert plain_b.ok, plain_b.return_status
    # The hazard: with a key blind to the problem, B silently loads A's libraries.
    blind = folder / "blind"
    monkeypatch.setattr(jit, "problem_key", lambda plugin, nlp, opts, rare: f"{plugin}{rare}")
    a = fast(a_cfg, model, LibraryCache(blind))
    b = fast(b_cfg, model, LibraryCache(blind))
    assert b.libraries == a.libraries
    stale = b.step(0.0, model.initial_state, u_prev=model.nominal_inputs)
    assert stale.inputs != pytest.approx(plain_b.inputs, rel=1e-3)  # A's answer, not B's
    monkeypatch.undo()
    # The real key: B gets its own libraries and B's own answer.
    a = fast(a_cfg, model, LibraryCache(folder / "cache"))
    b = fast(b_cfg, model, LibraryCache(folder / "cache"))
    assert not set(a.libraries) & set(b.libraries)
    d = b.step(0.0, model.initial_state, u_prev=model.nominal_inputs)
    assert d.ok and d.inputs == pytest.approx(plain_b.inputs, rel=1e-4, abs=1e-6)


def test_a_deleted_library_is_built_again_not_trusted(folder: Path) -> None:
    cfg, model = cstr(folder, 0.65)
    cache = LibraryCache(folder / "deleted")
    first = fast(cfg, model, cache)
    for lib in first.libraries:
        lib.unlink()
    again = fast(cfg, model, cache)
    assert again.libraries == first.libraries and all(p.exists() for p in again.libraries)
    assert cache.compiled == 4


def test_controllers_built_from_the_memo_share_no_warm_start(folder: Path) -> None:
    cfg, model = cstr(folder)
    cache = LibraryCache(folder / "cache")
    with shared_solvers():  # as in a campaign worker's cases
        a = fast(cfg, model, cache)
        generated = cache.generated
        b = fast(cfg, model, cache)
    assert cache.generated == generated  # b came from the memo
    # the solvers, which keep nothing between calls, are shared; each controller has its own
    # warm start and its own buffer (memory) of the SQP
    assert cfg.solver.qpsol == "qrqp"
    assert a.sqp is b.sqp and a.ipopt is b.ipopt and a.ipopt_cold is b.ipopt_cold
    assert a._sqp_call is not b._sqp_call
    u, x = model.nominal_inputs, model.initial_state
    a_first = a.step(0.0, x, u_prev=u)
    for k in range(1, 4):  # a runs on, warm-started from its own solutions
        assert a.step(k * cfg.sample_time, x, u_prev=u).ok
    b_first = b.step(0.0, x, u_prev=u)  # b still starts cold, as a did
    assert a.cold_starts == 1 and b.cold_starts == 1
    assert a_first.ok and b_first.ok
    assert b_first.inputs == a_first.inputs and b_first.iterations == a_first.iterations
    assert math.isclose(b_first.objective, a_first.objective, rel_tol=0, abs_tol=0)
