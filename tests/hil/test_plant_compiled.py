"""The true plant's compiled functions and the first look before its algebraic solves give the
numbers of the symbolic functions bit for bit (:mod:`hil.plant_compiled`); a plant whose
functions cannot be compiled runs the symbolic ones; the held-input path of
:meth:`PlantRunner.advance` gives the general path's numbers."""

from __future__ import annotations

import logging
from pathlib import Path

import casadi as ca
import numpy as np
import pytest

from controller.core.prediction import BufferedFunction
from controller.plantfile import build_model
from hil.plant_compiled import AlgebraicStart, compile_plant, first_look
from hil.plant_functions import plant_functions
from hil.plant_runner import PlantRunner
from plant_models import PlantModel, Role

PLANTS = Path(__file__).resolve().parents[2] / "configs" / "plants"
MODELS = ["bioreactor", "crystallizer", "cstr", "lyophilizer"]
STEP = {"cstr": 0.005, "lyophilizer": 0.05}


def _point(model: PlantModel) -> tuple[np.ndarray, ...]:
    x = model.vector(Role.STATE, model.initial_state)
    z = model.vector(Role.ALGEBRAIC, model.initial_algebraic)
    return x, z, model.vector(Role.INPUT, model.nominal_inputs), model.parameter_vector()


@pytest.mark.parametrize("name", MODELS)
def test_the_compiled_plant_steps_and_evaluates_bit_for_bit_as_the_symbolic_one(
    name: str,
) -> None:
    model = build_model(PLANTS / f"{name}.yaml")
    fns = plant_functions(model)
    assert fns.library is not None  # compiled (the test machine has a C compiler)
    plain, fast = BufferedFunction(model.stepper()), BufferedFunction(fns.stepper)
    f_plain, f_fast = BufferedFunction(model.function), BufferedFunction(fns.function)
    x, z, u, p = _point(model)
    rng = np.random.default_rng(7)
    h = STEP.get(name, 0.1)
    for _ in range(20):
        u1 = u * (1 + rng.uniform(-0.05, 0.05, u.size))
        a, b = plain(x, z, u, u1, p, h), fast(x, z, u, u1, p, h)
        assert [r.tobytes() for r in a] == [r.tobytes() for r in b]
        assert [r.tobytes() for r in f_plain(x, z, u, p)] == [
            r.tobytes() for r in f_fast(x, z, u, p)
        ]
        x, z, u = a[0], a[1], u1


def test_the_integrator_runs_the_librarys_functions() -> None:
    model = build_model(PLANTS / "lyophilizer.yaml")
    fns = plant_functions(model)
    assert fns.library is not None
    raw = [
        fns.stepper.instruction_MX(k).which_function()
        for k in range(fns.stepper.n_instructions())
        if fns.stepper.instruction_id(k) == ca.OP_CALL
    ]
    assert len(raw) == 1
    kinds = {n: raw[0].get_function(n).class_name() for n in raw[0].get_function()}
    assert kinds and set(kinds.values()) == {"External"}, kinds
    assert fns.function.class_name() == "External"


class _NoCompiler:
    def library(self, code: str) -> Path:
        raise OSError("C compiler 'gcc' not found on PATH")


def test_a_plant_that_cannot_be_compiled_says_so_and_runs_uncompiled(
    caplog: pytest.LogCaptureFixture,
) -> None:
    model = build_model(PLANTS / "lyophilizer.yaml")
    with caplog.at_level(logging.WARNING, logger="hil.plant_compiled"):
        assert compile_plant(model, model.algebraic_solver(), _NoCompiler()) is None
    assert "compiling its functions failed" in caplog.text and "not found" in caplog.text


def _near_consistent(model: PlantModel, n: int) -> list[tuple[np.ndarray, ...]]:
    """Points (z guess, x, u) at, next to and away from the algebraic solution."""
    solver = model.algebraic_solver()
    assert solver is not None
    solve = BufferedFunction(solver)
    x0, _, u0, p = _point(model)
    rng = np.random.default_rng(3)
    out: list[tuple[np.ndarray, ...]] = []
    for _ in range(n):
        x = x0 + rng.uniform(0, 1.0, x0.size)
        u = u0.copy()
        u[0] = rng.uniform(-45, 40)
        z = solve(np.array([-30.0]), x, u, p)[0]
        for guess in (z, np.nextafter(z, 0), z + rng.normal(0, 1e-9), z * (1 + 1e-7), z + 5):
            out.append((guess, x, u))
    return out


def test_the_first_look_spares_solves_and_returns_the_solvers_bits() -> None:
    model = build_model(PLANTS / "lyophilizer.yaml")
    fns = plant_functions(model)
    assert fns.algebraic is not None and fns.first_look is not None
    start = AlgebraicStart(fns.algebraic, fns.first_look, model.scales(Role.ALGEBRAIC))
    solve = BufferedFunction(fns.algebraic)
    p = model.parameter_vector()
    for z, x, u in _near_consistent(model, 200):
        assert start(z, x, u, p).tobytes() == solve(z, x, u, p)[0].tobytes()
    assert start.spared > 0 and start.solved > 0  # both ways were taken


def test_a_guess_off_the_solution_is_solved_not_returned() -> None:
    """The failure the look must never cause: a guess handed back as if consistent."""
    model = build_model(PLANTS / "lyophilizer.yaml")
    solver = model.algebraic_solver()
    assert solver is not None
    start = AlgebraicStart(solver, first_look(solver), model.scales(Role.ALGEBRAIC))
    x, _, u, p = _point(model)
    z = BufferedFunction(solver)(np.array([-30.0]), x, u, p)[0]
    got = start(z + 1.0, x, u, p)
    assert start.spared == 0 and start.solved == 1
    assert abs(got[0] - z[0]) < 1e-9 and got[0] != z[0] + 1.0


def test_a_solver_that_is_not_one_newton_call_gets_no_first_look() -> None:
    zz, x = ca.MX.sym("z"), ca.MX.sym("x")
    assert first_look(ca.Function("Z", [zz, x], [2 * zz + x])) is None


@pytest.mark.parametrize("name", MODELS)
def test_held_inputs_take_the_general_paths_numbers(name: str) -> None:
    model = build_model(PLANTS / f"{name}.yaml")
    dt = STEP.get(name, 0.1)
    held, general = PlantRunner(model, dt), PlantRunner(model, dt)
    inputs = dict(model.nominal_inputs)
    for k in range(6):
        inputs = {n: v * (1.01 if k % 2 else 0.995) for n, v in inputs.items()}
        t0 = general.t
        held.advance(inputs)
        general.advance(inputs, segments=[(t0, t0 + dt, inputs, inputs)])
        a, b = held.true_state(), general.true_state()
        assert held.t == general.t and a == b
        assert np.array(list(a.states.values())).tobytes() == (
            np.array(list(b.states.values())).tobytes()
        )
        assert np.array(list(a.inputs.values())).tobytes() == (
            np.array(list(b.inputs.values())).tobytes()
        )
