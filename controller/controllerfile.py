"""Loading a controller config: its schema, then every name it uses against its plant model.

:func:`load_controller` validates ``configs/controllers/<name>.yaml`` as a
:class:`~controller.config.ControllerConfig`, builds its plant model (the optimizer's smooth
copy) and checks every name, limit and option against it (:func:`check_controller`): all
problems, of the schema and against the model, in one :class:`~controller.errors.ConfigError`.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from controller.config import MAX_ROBUST_SCENARIOS, ControllerConfig, robust_values
from controller.configfile import existing, parse, read_yaml, resolve
from controller.errors import ConfigError, Problem, unknown_name
from controller.plantfile import build_model
from plant_models import PlantModel, Role

__all__ = ["check_controller", "load_controller"]


def check_controller(cfg: ControllerConfig, model: PlantModel, source: str) -> list[Problem]:
    """Every name in a controller config must exist in its plant model."""
    states, inputs = model.state_names, model.input_names
    named = set(states) | set(inputs) | set(model.algebraic_names) | set(model.expression_names)
    problems: list[Problem] = []

    def need(loc: str, name: str, allowed: set[str] | tuple[str, ...], what: str) -> None:
        if name not in allowed:
            problems.append(Problem(source, loc, unknown_name(what, name, sorted(allowed)), name))

    for i, e in enumerate(cfg.objective.economic):
        need(f"objective.economic.{i}.expression", e.expression, named, "expression")
    for i, t in enumerate(cfg.objective.tracking):
        need(f"objective.tracking.{i}.variable", t.variable, named, "variable")
    for name, spec in cfg.inputs.items():
        need(f"inputs.{name}", name, inputs, "input")
        if name in inputs:
            v = model.variable(name)
            if spec.lower < v.lower or spec.upper > v.upper:
                problems.append(
                    Problem(
                        source,
                        f"inputs.{name}",
                        f"limits must lie within the model's physical bounds [{v.lower}, {v.upper}]"
                        f" {v.unit}",
                        [spec.lower, spec.upper],
                    )
                )
    for name in inputs:
        if name not in cfg.inputs:
            problems.append(
                Problem(source, f"inputs.{name}", "every model input needs limits", None)
            )
    for name, (lo, hi) in cfg.state_bounds.items():
        need(f"state_bounds.{name}", name, states, "state")
        if lo is not None and hi is not None and lo > hi:
            problems.append(
                Problem(source, f"state_bounds.{name}", "lower must not exceed upper", [lo, hi])
            )
    for i, c in enumerate(cfg.constraints):
        need(f"constraints.{i}.expression", c.expression, named, "expression")
    est = cfg.estimator
    params = model.parameter_names
    for i, pname in enumerate(est.parameters):
        need(f"estimator.parameters.{i}", pname, params, "parameter")
    for key, allowed in (
        ("process_noise_std", (*states, *est.parameters)),
        ("initial_std", (*states, *est.parameters)),
        ("measurement_noise_std", model.names(Role.OUTPUT)),
    ):
        for name in getattr(est, key):
            need(f"estimator.{key}.{name}", name, allowed, "name")
    problems += _check_robust(cfg, model, source)
    problems += _check_min_time(cfg, model, source)
    return problems


def _check_min_time(cfg: ControllerConfig, model: PlantModel, source: str) -> list[Problem]:
    """The names of ``objective.min_time`` and what it can be combined with."""
    mt = cfg.objective.min_time
    if mt is None:
        return []
    named = set(model.state_names) | set(model.expression_names)
    loc = "objective.min_time"
    problems: list[Problem] = []
    if mt.expression not in named:
        what = unknown_name("state or expression", mt.expression, sorted(named))
        problems.append(Problem(source, f"{loc}.expression", what, mt.expression))
    if isinstance(mt.target, str) and mt.target not in named:
        what = unknown_name("state or expression", mt.target, sorted(named))
        problems.append(Problem(source, f"{loc}.target", what, mt.target))
    if cfg.solver.backend != "fast":
        problems.append(
            Problem(source, loc, "minimum time needs solver.backend: fast", cfg.solver.backend)
        )
    if cfg.robust is not None:
        problems.append(Problem(source, loc, "minimum time cannot be combined with 'robust'"))
    if mt.mode == "free_end" and cfg.horizon < 2:
        problems.append(
            Problem(source, "horizon", "a free end time needs a horizon of 2 or more", cfg.horizon)
        )
    return problems


def _check_robust(cfg: ControllerConfig, model: PlantModel, source: str) -> list[Problem]:
    if cfg.robust is None:
        return []
    problems: list[Problem] = []
    params = model.parameter_set.parameters
    known = True
    for name, values in cfg.robust.parameters.items():
        loc = f"robust.parameters.{name}"
        par = params.get(name)
        if par is None:
            known = False
            problems.append(
                Problem(source, loc, unknown_name("parameter", name, model.parameter_names), name)
            )
            continue
        bounded = math.isfinite(par.lower) and math.isfinite(par.upper)
        if values == "range":
            if not bounded:
                problems.append(
                    Problem(
                        source,
                        loc,
                        "'range' needs a plausible range for this parameter in the plant file "
                        "(parameters.<name>.range); give the values instead",
                        values,
                    )
                )
            continue
        outside = [v for v in values if not par.lower <= v <= par.upper]
        if outside:
            problems.append(
                Problem(
                    source,
                    loc,
                    f"values must lie within the plausible range [{par.lower}, {par.upper}] "
                    f"{par.unit} of the plant file",
                    list(values),
                )
            )
    if known and not problems:
        n_comb = math.prod(len(v) for v in robust_values(cfg, model).values())
        n_scen = n_comb**cfg.robust.n_robust
        if n_scen > MAX_ROBUST_SCENARIOS:
            problems.append(
                Problem(
                    source,
                    "robust.n_robust",
                    f"{n_comb} combinations ** n_robust gives {n_scen} scenarios; at most "
                    f"{MAX_ROBUST_SCENARIOS} are allowed",
                    cfg.robust.n_robust,
                )
            )
    return problems


def _raw_name_problems(data: Mapping[str, Any], model: PlantModel, source: str) -> list[Problem]:
    """Name checks on a file that failed its schema, so that one error lists everything."""
    problems: list[Problem] = []
    sections = (
        ("inputs", model.input_names, "input"),
        ("state_bounds", model.state_names, "state"),
    )
    for key, allowed, what in sections:
        section = data.get(key)
        if isinstance(section, Mapping):
            for name in section:
                if name not in allowed:
                    problems.append(
                        Problem(
                            source,
                            f"{key}.{name}",
                            unknown_name(what, name, allowed),
                            name,
                        )
                    )
    return problems


def load_controller(path: Path) -> tuple[ControllerConfig, PlantModel]:
    """Load a controller config and its plant model (the optimizer's smooth copy).

    Schema problems and problems against the plant model are reported in one ConfigError.
    """
    data = read_yaml(path)
    try:
        cfg = parse(ControllerConfig, data, str(path))
    except ConfigError as exc:
        extra: list[Problem] = []
        plant_ref = data.get("plant")
        if isinstance(plant_ref, str):
            try:
                plant = existing(resolve(path, plant_ref), str(path), "plant")
                extra = _raw_name_problems(data, build_model(plant), str(path))
            except ConfigError as inner:
                extra = list(inner.problems)
        raise ConfigError([*exc.problems, *extra]) from exc
    model = build_model(existing(resolve(path, cfg.plant), str(path), "plant"), smooth=True)
    problems = check_controller(cfg, model, str(path))
    if problems:
        raise ConfigError(problems)
    return cfg, model
