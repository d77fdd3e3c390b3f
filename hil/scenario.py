"""Scenario files (``configs/scenarios/<name>.yaml``): one run against a "true" plant.

A scenario runs the closed loop (``controller``) or an open-loop recipe (``recipe``) against
a true plant with its own parameters, initial state, measurement noise, input disturbances
and scheduled faults (:mod:`hil.faultspec`), and names the CQAs and checks to judge it by.
HIL owns this schema: the controller never reads a scenario file. :func:`load_scenario`
checks every name against the plant model and, in closed loop, the initial inputs against
the controller's input limits; it refuses a true-plant initial state outside the model's
validity domain (:func:`initial_state_problems`), a recipe value outside its input's physical
(actuator) range (:func:`recipe_range_problems`), a duration that is not a whole number of
samples (:func:`duration_problems`) and disturbances that would take an input out of its
physical range (:func:`disturbance_problems`), and raises one ConfigError listing every
problem.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Annotated

from pydantic import Field, field_validator, model_validator

from controller.config import (
    Constraint,
    Recipe,
    recipe_input_problems,
    recipe_range_problems,
    sample_time_long_enough,
)
from controller.configfile import (
    Finite,
    PositiveFinite,
    Strict,
    existing,
    parse,
    read_yaml,
    resolve,
)
from controller.core.recipe import RecipePlayer
from controller.errors import ConfigError, Problem, unknown_name
from controller.plantfile import build_model, start_problems
from controller.runtime.site import load_checked_controller
from hil.faultspec import FaultSpec, check_faults
from plant_models import PlantModel

__all__ = [
    "Disturbance",
    "ScenarioConfig",
    "Segment",
    "TruePlant",
    "check_scenario",
    "disturbance_problems",
    "duration_problems",
    "initial_input_problems",
    "initial_state_problems",
    "load_scenario",
    "recipe_range_problems",
    "split_at_disturbances",
]

#: One piece of an input profile: (t_start, t_end, inputs at t_start, inputs at t_end); the
#: inputs move linearly in between. Times in the model's unit.
Segment = tuple[float, float, Mapping[str, float], Mapping[str, float]]


class Disturbance(Strict):
    """An additive input disturbance acting on the true plant from ``start`` to ``end``."""

    input: str
    start: Annotated[float, Field(ge=0, allow_inf_nan=False)]
    end: Finite = math.inf
    offset: Finite


def split_at_disturbances(
    pieces: Sequence[Segment], disturbances: Sequence[Disturbance]
) -> list[Segment]:
    """``pieces`` cut at every disturbance's start and end (a disturbance then acts on a
    piece's whole length or not at all); the inputs at a cut are on the piece's line."""
    edges = sorted({e for d in disturbances for e in (d.start, d.end)})
    out: list[Segment] = []
    for ta, tb, ua, ub in pieces:
        cuts = [ta, *(e for e in edges if ta < e < tb), tb]
        for a, b in itertools.pairwise(cuts):
            out.append((a, b, _lerp(ta, tb, ua, ub, a), _lerp(ta, tb, ua, ub, b)))
    return out


def _lerp(
    ta: float, tb: float, ua: Mapping[str, float], ub: Mapping[str, float], t: float
) -> dict[str, float]:
    """Inputs at ``t`` on the straight line from ``(ta, ua)`` to ``(tb, ub)``."""
    w = 0.0 if tb <= ta else (t - ta) / (tb - ta)
    return {n: ua[n] + (ub[n] - ua[n]) * w for n in ua}


class TruePlant(Strict):
    parameters: dict[str, Finite] = Field(default_factory=dict)
    initial_state: dict[str, Finite] = Field(default_factory=dict)
    noise_std: dict[str, Annotated[float, Field(ge=0, allow_inf_nan=False)]] = Field(
        default_factory=dict
    )
    disturbances: tuple[Disturbance, ...] = ()
    seed: Annotated[int, Field(ge=0)] = 0


class ScenarioConfig(Strict):
    """A closed-loop (``controller``) or open-loop (``recipe``) run against a true plant.

    ``initial_inputs``: the setpoints the plant works with at the start (the PLC's working
    setpoints before the controller's first write), by input name; inputs not given start at
    the plant file's ``nominal_inputs``. They must lie within the controller's input limits
    and the model's physical bounds (for an open-loop run, those bounds alone): they are never
    clamped.
    """

    name: str
    description: str = ""
    plant: str
    controller: str | None = None
    recipe: Recipe | None = None
    sample_time: PositiveFinite | None = None
    duration: PositiveFinite
    true_plant: TruePlant = TruePlant()
    cqas: tuple[str, ...] = ()
    checks: tuple[Constraint, ...] = ()
    faults: tuple[FaultSpec, ...] = ()
    stop_when_finished: bool = True
    initial_inputs: dict[str, Finite] = Field(default_factory=dict)

    @field_validator("sample_time")
    @classmethod
    def _not_too_short(cls, value: float | None) -> float | None:
        return None if value is None else sample_time_long_enough(value)

    @model_validator(mode="after")
    def _one_driver(self) -> ScenarioConfig:
        if (self.controller is None) == (self.recipe is None):
            raise ValueError("give exactly one of 'controller' (closed loop) or 'recipe'")
        if self.recipe is not None and self.sample_time is None:
            raise ValueError("an open-loop recipe needs 'sample_time'")
        return self


#: One name a scenario uses: (key path, name, what it must be, the names allowed).
_Name = tuple[str, str, str, Sequence[str]]


def _unknown(names: Iterable[_Name], source: str) -> list[Problem]:
    """A problem for each name that is not among those allowed."""
    return [
        Problem(source, loc, unknown_name(what, name, allowed), name)
        for loc, name, what, allowed in names
        if name not in allowed
    ]


def check_scenario(
    sc: ScenarioConfig, model: PlantModel, source: str, *, recipe_drives: bool = True
) -> list[Problem]:
    """Every name in a scenario must exist in its plant model; the true plant starts inside
    its validity domain (:func:`initial_state_problems`); a recipe gives every input
    within its physical range, and the initial inputs of an open loop lie within the model's
    physical bounds; an open loop's duration is a whole number of samples; no
    disturbance takes an input out of its physical range (:func:`disturbance_problems`;
    ``recipe_drives``: whether the scenario's recipe is what the plant gets)."""
    tp = sc.true_plant
    named = sorted(
        {*model.state_names, *model.input_names, *model.algebraic_names, *model.expression_names}
    )
    true_plant: list[_Name] = [
        *(
            (f"true_plant.parameters.{n}", n, "parameter", model.parameter_names)
            for n in tp.parameters
        ),
        *(
            (f"true_plant.initial_state.{n}", n, "state", model.state_names)
            for n in tp.initial_state
        ),
        *(
            (f"true_plant.noise_std.{n}", n, "measured output", model.output_names)
            for n in tp.noise_std
        ),
        *(
            (f"true_plant.disturbances.{i}.input", d.input, "input", model.input_names)
            for i, d in enumerate(tp.disturbances)
        ),
        *(
            (f"checks.{i}.expression", c.expression, "expression", named)
            for i, c in enumerate(sc.checks)
        ),
    ]
    problems = _unknown(true_plant, source) + check_faults(sc.faults, model, source)
    problems += [
        Problem(
            source,
            f"true_plant.parameters.{v.name}",
            f"{v.describe()}; allowed: {v.rule}",
            v.value,
        )
        for v in model.parameter_violations(tp.parameters)
    ]
    problems += _unknown(((f"cqas.{i}", n, "name", named) for i, n in enumerate(sc.cqas)), source)
    problems += initial_state_problems(sc, model, source)
    recipe_ok = True
    if sc.recipe is not None:
        bad_rows = recipe_input_problems(sc.recipe, model, source, "recipe.")
        bad_rows += recipe_range_problems(sc.recipe, model, source, "recipe.")
        recipe_ok, problems = not bad_rows, problems + bad_rows
    problems += disturbance_problems(sc, model, source, recipe_ok=recipe_ok and recipe_drives)
    # closed loop: load_scenario checks them against the controller's input limits
    bounds = {n: (model.variable(n).lower, model.variable(n).upper) for n in model.input_names}
    if sc.controller is not None:
        bounds = {n: (-math.inf, math.inf) for n in bounds}
    problems += initial_input_problems(sc.initial_inputs, bounds, source, "physical bounds")
    if sc.controller is None and sc.sample_time is not None:  # closed loop: load_scenario
        where = "the scenario's sample_time"
        problems += duration_problems(sc.duration, sc.sample_time, model, source, where)
    return problems


#: where a scenario gives the true plant's initial states and inputs
_START_KEYS = ("true_plant.initial_state", "initial_inputs")


def initial_state_problems(sc: ScenarioConfig, model: PlantModel, source: str) -> list[Problem]:
    """The true plant's initial state (the plant file's, with ``true_plant.initial_state``
    over it) outside the model's validity domain, with the true plant's parameters: the
    plant would fault at t = 0. A state the scenario does not give is outside only through
    a bound that depends on the parameters (Lck <= Lpr0): that is the parameters' problem."""
    tp = sc.true_plant
    given = {n: v for n, v in tp.initial_state.items() if n in model.state_names}
    known = {n: v for n, v in tp.parameters.items() if n in model.parameter_names}
    params = model.parameter_set.values()
    if len(known) == len(tp.parameters) and not model.parameter_violations(known):
        params |= known  # else the parameters' own problems are reported
    states = {**model.initial_state, **given}
    problems = []
    for p in start_problems(model, source, states, {}, params, keys=_START_KEYS):
        if p.location.rsplit(".", 1)[-1] in given:
            problems.append(p)
        else:
            why = f"with these parameters the plant file's initial state is outside: {p.message}"
            problems.append(Problem(source, "true_plant.parameters", why, tp.parameters))
    return problems


#: how far from a whole number of samples a duration may be (relative): round-off only
DURATION_RTOL = 1e-9


def duration_problems(
    duration: float, sample_time: float, model: PlantModel, source: str, whence: str
) -> list[Problem]:
    """A ``duration`` that is not a whole number (one or more) of samples of ``sample_time``
    (``whence``: where that sample time comes from). A run steps whole samples: a shorter
    duration would run no step (an empty run reported as a clean one), any other would be
    cut short or overrun."""
    unit = model.time_unit
    samples = duration / sample_time
    n = round(samples)
    if n >= 1 and abs(n * sample_time - duration) <= DURATION_RTOL * duration:
        return []
    dt = f"sample_time {sample_time:g} {unit} ({whence})"
    if samples < 1:
        why = (
            f"{duration:g} {unit} is shorter than one sample, {dt}: the run would have no "
            f"step; allowed: a whole number of samples ({sample_time:g} {unit}, "
            f"{2 * sample_time:g} {unit}, ...)"
        )
    else:
        below = math.floor(samples) * sample_time
        why = (
            f"{duration:g} {unit} is not a whole number of samples: {samples:.6g} samples of "
            f"{dt}; allowed: a whole number of samples, the nearest: "
            f"{below:g} {unit} or {below + sample_time:g} {unit}"
        )
    return [Problem(source, "duration", why, duration)]


def disturbance_problems(
    sc: ScenarioConfig, model: PlantModel, source: str, *, recipe_ok: bool = True
) -> list[Problem]:
    """Disturbances that would push an input outside its physical (actuator) range, as far
    as the scenario tells statically (the true plant faults on the rest at run time).

    On each stretch of ``[0, duration)`` where the disturbances on an input add up to a
    constant offset: a recipe (``recipe_ok``: every row gives every input, and it is what the
    plant gets) is clipped to the physical range by safety, so any value of it that the
    offset takes out of the range is refused (even if the batch might end before). A site's
    scenario has a recipe too: the PLC's local recipe, which the plant gets in local mode or
    on fallback, so it is judged the same way unless the caller says the controller drives
    (``recipe_ok=False``). Without a recipe the setpoints are not known statically, so only
    an offset larger than the range's width (no value in range stays in it) is refused.
    One problem per disturbance.
    """
    found: dict[int, Problem] = {}
    player = RecipePlayer(sc.recipe, model.input_names) if sc.recipe and recipe_ok else None
    dist = list(enumerate(sc.true_plant.disturbances))
    for name in model.input_names:
        mine = [(i, d) for i, d in dist if d.input == name]
        cuts = {0.0, sc.duration, *(min(e, sc.duration) for _, d in mine for e in (d.start, d.end))}
        for a, b in itertools.pairwise(sorted(cuts)):
            acting = [(i, d) for i, d in mine if d.start <= a < d.end]
            if acting and acting[0][0] not in found:
                why = _pushed_out(name, sum(d.offset for _, d in acting), a, b, model, player)
                if why:
                    i, d = acting[0]
                    loc = f"true_plant.disturbances.{i}.offset"
                    found[i] = Problem(source, loc, why, d.offset)
    return [found[i] for i in sorted(found)]


def _pushed_out(
    name: str,
    offset: float,
    a: float,
    b: float,
    model: PlantModel,
    player: RecipePlayer | None,
) -> str:
    """Why ``offset`` on input ``name`` over ``[a, b)`` leaves its physical range ("" if it
    may not): against the recipe's values there, or (no recipe) any value in the range."""
    var = model.variable(name)
    lo, hi, tol, unit = var.lower, var.upper, 1e-6 * var.scale, var.unit
    span = f"from t={a:g} to {b:g} {model.time_unit}"
    where = f"outside its physical (actuator) range [{lo:g}, {hi:g}] {unit}"
    if player is None:
        if abs(offset) <= hi - lo + 2 * tol:
            return ""
        return (
            f"offset {offset:g} {unit} on {name} {span} puts every value of {name} {where}; "
            f"allowed: at most {hi - lo:g} {unit} in size"
        )
    ends = [v for piece in player.segments(a, b) for v in (piece[2][name], piece[3][name])]
    low, high = (min(max(v, lo), hi) for v in (min(ends), max(ends)))  # as safety clips
    if low + offset >= lo - tol and high + offset <= hi + tol:
        return ""
    worst = low + offset if low + offset < lo - tol else high + offset
    return (
        f"offset {offset:g} {unit} on {name} {span} takes the recipe's {name} "
        f"(from {low:g} to {high:g} {unit}) to {worst:g} {unit}, {where}; allowed there: "
        f"offsets from {lo - low:g} to {hi - high:g} {unit}"
    )


def initial_input_problems(
    values: Mapping[str, float],
    limits: Mapping[str, tuple[float, float]],
    source: str,
    what: str,
) -> list[Problem]:
    """``initial_inputs`` that name no input, or lie outside ``limits`` (``what`` they are)."""
    problems: list[Problem] = []
    for name, value in values.items():
        loc = f"initial_inputs.{name}"
        if name not in limits:
            problems.append(Problem(source, loc, unknown_name("input", name, list(limits)), name))
        elif not limits[name][0] <= value <= limits[name][1]:
            lo, hi = limits[name]
            problems.append(Problem(source, loc, f"outside the {what} [{lo:g}, {hi:g}]", value))
    return problems


def load_scenario(path: Path) -> ScenarioConfig:
    """Load a scenario and check every name it uses against its plant model."""
    sc = parse(ScenarioConfig, read_yaml(path), str(path))
    model = build_model(existing(resolve(path, sc.plant), str(path), "plant"))
    problems = check_scenario(sc, model, str(path))
    if sc.controller is not None:
        ctrl_path = existing(resolve(path, sc.controller), str(path), "controller")
        try:
            cfg, cmodel = load_checked_controller(ctrl_path)
        except ConfigError as exc:
            problems += list(exc.problems)
        else:
            whence = f"the controller's, {ctrl_path}"
            problems += duration_problems(sc.duration, cfg.sample_time, model, str(path), whence)
            limits = {n: (s.lower, s.upper) for n, s in cfg.inputs.items()}
            known = {n: v for n, v in sc.initial_inputs.items() if n in limits}
            problems += initial_input_problems(
                known, limits, str(path), "controller's input limits"
            )
            # the scenario's plant file may narrow an input's physical range (``bounds``)
            inside = {n: v for n, v in known.items() if limits[n][0] <= v <= limits[n][1]}
            problems += start_problems(model, str(path), {}, inside, keys=_START_KEYS)
            if cmodel.name != model.name:
                problems.append(
                    Problem(
                        str(path),
                        "controller",
                        f"controller is for model {cmodel.name!r}, scenario plant is "
                        f"{model.name!r}",
                        sc.controller,
                    )
                )
    if problems:
        raise ConfigError(problems)
    return sc
