"""The conformance check every plant model passes (in the spirit of Gymnasium's env_checker).

:func:`check_model` verifies the declaration and the equations at nominal values and raises
one :class:`ModelError` that lists every problem it found.
"""

from __future__ import annotations

import math

import numpy as np

from plant_models.base import PlantModel
from plant_models.errors import ModelError
from plant_models.variables import Evaluation, Role


def check_model(model: PlantModel) -> None:
    """Check shapes, bounds, finiteness and determinism of ``model`` at its nominal point.

    Raises :class:`ModelError` listing every problem; returns None when the model conforms.
    """
    problems: list[str] = []
    problems += _check_declaration(model)
    # The equations are checked even when the declaration has problems (bad bounds do not
    # stop an evaluation), so that one run reports everything; only if a broken declaration
    # makes the evaluation itself impossible is that reported instead of raised.
    try:
        problems += _check_equations(model)
    except Exception as exc:
        if not problems:
            raise
        problems.append(f"the equations cannot be checked: {type(exc).__name__}: {exc}")
    if problems:
        raise ModelError(
            f"model {model.name!r} fails its conformance check:\n"
            + "\n".join(f"  - {p}" for p in problems)
        )


def _check_declaration(model: PlantModel) -> list[str]:
    problems: list[str] = []
    seen: set[str] = set()
    for v in model.all_variables.values():
        if v.name in seen or v.name in model.parameter_names:
            problems.append(f"name {v.name!r} is declared twice")
        seen.add(v.name)
        if not v.unit:
            problems.append(f"variable {v.name!r} has no unit")
        if math.isnan(v.lower) or math.isnan(v.upper) or v.lower > v.upper:
            problems.append(f"variable {v.name!r} has unordered bounds [{v.lower}, {v.upper}]")
        if not (math.isfinite(v.scale) and v.scale > 0):
            problems.append(f"variable {v.name!r} has a bad scale {v.scale!r}")
    for name in model.expression_names:
        if not model.unit_of(name):
            problems.append(f"expression {name!r} has no unit (expression_units)")
    for name, (lo, hi, _) in model.expression_domain.items():
        if name not in model.expression_names:
            problems.append(f"expression_domain names {name!r}, not an output or expression")
        if math.isnan(lo) or math.isnan(hi) or lo > hi:
            problems.append(f"expression_domain of {name!r} has unordered bounds [{lo}, {hi}]")
    if not model.state_names:
        problems.append("the model declares no state")
    if not model.input_names:
        problems.append("the model declares no input")
    if not model.output_names:
        problems.append("the model declares no measured output")
    if not model.time_unit:
        problems.append("the model declares no time unit")
    for role, values in ((Role.STATE, model.initial_state), (Role.INPUT, model.nominal_inputs)):
        for name, value in values.items():
            v = model.variable(name)
            if not v.lower <= value <= v.upper:
                problems.append(
                    f"nominal {role.value} {name}={value} is outside its bounds "
                    f"[{v.lower}, {v.upper}] {v.unit}"
                )
    return problems


def _check_equations(model: PlantModel) -> list[str]:
    problems: list[str] = []
    f = model.function
    n_x, n_z = len(model.state_names), len(model.algebraic_names)
    n_u, n_p = len(model.input_names), len(model.parameter_names)
    expected_in = [(n_x, 1), (n_z, 1), (n_u, 1), (n_p, 1)]
    for i, shape in enumerate(expected_in):
        if f.size_in(i) != shape and not (shape[0] == 0 and f.numel_in(i) == 0):
            problems.append(f"input {f.name_in(i)} has shape {f.size_in(i)}, expected {shape}")
    n_y = len(model.output_names)
    for name, expected in (("xdot", n_x), ("alg", n_z), ("y", n_y)):
        if f.numel_out(name) != expected:
            problems.append(f"{name} has {f.numel_out(name)} entries, expected {expected}")
    if problems:
        return problems
    ev1 = model.evaluate(model.initial_state, model.nominal_inputs)
    ev2 = model.evaluate(model.initial_state, model.nominal_inputs)
    for group, values in (
        ("derivative", ev1.xdot),
        ("output", ev1.outputs),
        ("expression", ev1.expressions),
    ):
        for name, value in values.items():
            if not math.isfinite(value):
                problems.append(f"{group} {name} is not finite at nominal: {value}")
    if not all(math.isfinite(a) for a in ev1.alg):
        problems.append(f"algebraic residuals are not finite at nominal: {ev1.alg}")
    if not _same_evaluation(ev1, ev2):
        problems.append("two evaluations at the same point differ: the model is not deterministic")
    problems += _check_step(model)
    return problems


def _same_evaluation(a: Evaluation, b: Evaluation) -> bool:
    """Exact equality with NaN equal to NaN (a NaN is already reported as non-finite)."""

    def flat(ev: Evaluation) -> tuple[list[str], np.ndarray]:
        groups = (ev.xdot, ev.outputs, ev.expressions)
        keys = [k for g in groups for k in g]
        return keys, np.array([v for g in groups for v in g.values()] + list(ev.alg), float)

    (ka, va), (kb, vb) = flat(a), flat(b)
    return ka == kb and np.array_equal(va, vb, equal_nan=True)


def _check_step(model: PlantModel) -> list[str]:
    """One integrator step from nominal must be finite and repeatable."""
    try:
        step = model.integrator(_typical_step(model))
    except Exception as exc:  # CasADi raises RuntimeError with its own text
        return [f"cannot build the integrator: {exc}"]
    args = (
        model.vector(Role.STATE, model.initial_state),
        model.vector(Role.ALGEBRAIC, model.initial_algebraic) if model.is_dae else np.zeros(0),
        model.vector(Role.INPUT, model.nominal_inputs),
        model.parameter_vector(),
    )
    try:
        a = np.asarray(step(*args)[0], dtype=float)
        b = np.asarray(step(*args)[0], dtype=float)
    except RuntimeError as exc:
        return [f"one integrator step from nominal fails: {exc}"]
    problems = []
    if not np.all(np.isfinite(a)):
        problems.append(f"one integrator step from nominal gives non-finite states {a.ravel()}")
    if not np.array_equal(a, b):
        problems.append("two integrator steps from the same point differ")
    return problems


def _typical_step(model: PlantModel) -> float:
    return 60.0 if model.time_unit == "s" else 0.01
