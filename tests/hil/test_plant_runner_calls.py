"""The true plant calls its CasADi functions through buffers (no DM round trip): the numbers
are bit for bit those of the plain calls, for every model (ODE and DAE)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from controller.plantfile import build_model
from hil.plant_runner import PlantRunner
from plant_models import Role

PLANTS = Path(__file__).resolve().parents[2] / "configs" / "plants"
STEPS = 4


@pytest.mark.parametrize("name", ["bioreactor", "crystallizer", "cstr", "lyophilizer"])
def test_the_plants_steps_and_outputs_are_the_plain_calls_bits(name: str) -> None:
    model = build_model(PLANTS / f"{name}.yaml")
    dt = {"cstr": 0.005, "lyophilizer": 0.05}.get(name, 0.1)
    plant = PlantRunner(model, dt)
    step, f, alg = model.stepper(), model.function, model.algebraic_solver()
    x = model.vector(Role.STATE, model.initial_state)
    z = model.vector(Role.ALGEBRAIC, model.initial_algebraic)
    u, p = model.vector(Role.INPUT, model.nominal_inputs), model.parameter_vector()
    if alg is not None:
        z = np.asarray(alg(z, x, u, p), dtype=float).ravel()
    t = 0.0
    for _ in range(STEPS):
        h, t = (t + dt) - t, t + dt  # the step as the runner measures it
        if alg is not None:  # the runner's consistent start of each step
            z = np.asarray(alg(z, x, u, p), dtype=float).ravel()
        xf, zf = step(x, z, u, u, p, h)
        x, z = np.asarray(xf, dtype=float).ravel(), np.asarray(zf, dtype=float).ravel()
        plant.advance(model.nominal_inputs)
        truth = plant.true_state()
        assert np.array(list(truth.states.values())).tobytes() == x.tobytes()
        assert np.array(list(truth.algebraic.values())).tobytes() == z.tobytes()
        y = np.asarray(f(x, z if model.is_dae else np.zeros(0), u, p)[2], dtype=float).ravel()
        assert np.array(list(truth.outputs.values())).tobytes() == y.tobytes()


@pytest.mark.parametrize("name", ["bioreactor", "lyophilizer"])
def test_the_quick_domain_look_agrees_with_the_models_check_at_the_edges(name: str) -> None:
    model = build_model(PLANTS / f"{name}.yaml")
    plant = PlantRunner(model, 0.01)
    states, alg = model.state_names, model.algebraic_names
    x0 = model.vector(Role.STATE, model.initial_state)
    z0 = model.vector(Role.ALGEBRAIC, model.initial_algebraic)
    for i, n in enumerate((*states, *alg)):
        v = model.variable(n)
        tol = 1e-6 * v.scale
        edges = [v.lower - tol, v.upper + tol, np.nextafter(v.lower - tol, -np.inf)]
        edges += [np.nextafter(v.upper + tol, np.inf), np.nan, np.inf, -np.inf]
        for value in edges:
            x, z = x0.copy(), z0.copy()
            if i < len(states):
                x[i] = value
            else:
                z[i - len(states)] = value
            found = model.validity_violations(
                dict(zip(states, x.tolist(), strict=True)),
                dict(zip(alg, z.tolist(), strict=True)),
                parameters=plant.parameters,  # and the bounds that depend on them (Lck <= Lpr0)
            )
            assert plant._domain.holds(x, z) is (not found), (n, value)
