"""Helpers of the estimator tests: a "true" plant and a closed estimation run on it.

Not a test module: the estimator tests in this folder import it (pytest puts the folder on
``sys.path``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from controller.config import ControllerConfig, EstimatorSpec
from controller.controllerfile import load_controller
from controller.core.estimate import Estimate, Estimator
from controller.plantfile import build_model
from plant_models import PlantModel, Role

ROOT = Path(__file__).resolve().parents[3]
CONTROLLERS = ROOT / "configs" / "controllers"
PLANTS = ROOT / "configs" / "plants"


# ---------------------------------------------------------------------------------------------
# A true plant and a closed estimation run
# ---------------------------------------------------------------------------------------------
def true_plant(name: str, parameters: Mapping[str, float]) -> PlantModel:
    nominal = build_model(PLANTS / f"{name}.yaml")
    return type(nominal)(nominal.parameter_set.with_values(parameters))


@dataclass(frozen=True)
class Run:
    """True states/algebraics and the estimate after each sample (index 0: first sample)."""

    states: list[dict[str, float]]
    algebraic: list[dict[str, float]]
    estimates: list[Estimate]

    def error(self, k: int, name: str) -> float:
        return self.estimates[k].states[name] - self.states[k][name]


def simulate(
    plant: PlantModel,
    ekf: Estimator,
    sample_time: float,
    inputs: Mapping[str, float] | Sequence[Mapping[str, float]],
    steps: int,
    noise_std: Mapping[str, float],
    seed: int,
    initial_state: Mapping[str, float] | None = None,
) -> Run:
    """Run ``plant`` and feed its noisy outputs to ``ekf``; ``inputs`` are held, or given
    per interval (``inputs[k]`` from sample ``k`` to ``k + 1``; ``inputs[0]`` at sample 0).

    The plant's algebraic states are solved at the new input before each step, so that its
    own integrator (idas) starts consistently whatever the move."""
    schedule = [inputs] * steps if isinstance(inputs, Mapping) else list(inputs)
    step = plant.integrator(sample_time)
    solve_z = plant.algebraic_solver()
    p = plant.parameter_vector()
    x = plant.vector(Role.STATE, {**plant.initial_state, **(initial_state or {})})
    z = plant.vector(Role.ALGEBRAIC, plant.initial_algebraic)
    rng = np.random.default_rng(seed)
    run = Run([], [], [])
    for k in range(steps + 1):
        u = plant.vector(Role.INPUT, schedule[max(k - 1, 0)])
        if k and solve_z is not None:
            z = np.asarray(solve_z(z, x, u, p)).ravel()
        if k:
            xf, zf = step(x, z, u, p)
            x, z = np.asarray(xf).ravel(), np.asarray(zf).ravel()
        if solve_z is not None:
            z = np.asarray(solve_z(z, x, u, p)).ravel()
        y = np.asarray(plant.function(x, z, u, p)[2]).ravel()
        measured = {
            n: float(v) + rng.normal(0.0, noise_std[n])
            for n, v in zip(plant.output_names, y, strict=True)
        }
        run.estimates.append(ekf.update(dict(schedule[k - 1]) if k else None, measured))
        run.states.append(plant.as_dict(Role.STATE, x))
        run.algebraic.append(plant.as_dict(Role.ALGEBRAIC, z))
    return run


def controller(name: str) -> tuple[ControllerConfig, PlantModel]:
    return load_controller(CONTROLLERS / f"{name}.yaml")


#: The freeze dryer's closed runs: samples, and the inputs held over them.
LYO_STEPS = 40
LYO_INPUTS = {"Tsh": -10.0, "Pch": 0.1}


def kc_r0(spec: EstimatorSpec) -> EstimatorSpec:
    """The freeze dryer's filter as shipped before A1 was estimated too (KC and R0 only):
    the studies whose figures were measured with it keep it."""
    keep = {"Lck", "KC", "R0"}
    return spec.model_copy(
        update={
            "parameters": ("KC", "R0"),
            "process_noise_std": {k: v for k, v in spec.process_noise_std.items() if k in keep},
            "initial_std": {k: v for k, v in spec.initial_std.items() if k in keep},
        }
    )
