"""The open-loop minimum time of a batch: offline optimal control over the whole batch.

:func:`open_loop_minimum` takes a controller config with ``objective.min_time`` (and, from a
scenario, the true plant's parameters, initial state and initial inputs) and solves one
optimal-control problem from the start of the batch to its end: the same model, input
limits, path constraints (held at the start and end of every interval and at the config's
``constraint_points``) and batch-end condition as the controller, with piecewise-constant
inputs, minimizing the end time ``T``. It is the fast path's own transcription
(:mod:`controller.core.fast_mpc`, RK4 multiple shooting), solved by IPOPT. Differences from the
closed loop, all in the optimum's favour: the time to the end is the whole cost (no move
penalties), every constraint is hard (soft ones too), and inputs may move by their whole
range from one interval to the next (move limits are per sample, and a uniform grid is not
the sample grid), so the result is a lower bound for a loop whose move limits bind.

Two grids: the controller's own sample grid (the default: inputs held for a sample each,
the last interval ending at the batch end, i.e. the inputs the loop itself can apply; the
fewest samples that reach the end are searched), or a uniform grid of ``intervals``
intervals, which tends to the continuous-time optimum as the grid is refined.

The optimum is then checked on the true plant (:func:`replay`, the exact equations with
CVODES/IDAS): its inputs are applied interval by interval in fine steps, the batch's end is
located inside a step, and every constraint's worst excess over its bound is measured at
every fine step and at the start of every interval (just after the input moved). The
figure to compare a closed loop with is that replayed end time.

    pharmatwin-hil min-time configs/controllers/lyophilizer-min-time.yaml
    pharmatwin-hil min-time configs/controllers/lyophilizer-min-time.yaml --intervals 400
"""

from __future__ import annotations

import argparse
import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
from rich.console import Console

from controller.config import Constraint, ControllerConfig, InputSpec
from controller.configfile import read_yaml, resolve
from controller.controllerfile import load_controller
from controller.core.end_schedule import EndSchedule
from controller.core.fast_mpc import FastController
from controller.core.mpc import Decision
from controller.core.pipeline import input_limits
from controller.errors import ConfigError, Problem, SolverError
from controller.filekinds import detect
from controller.plantfile import build_model
from hil.plant_runner import PlantRunner
from hil.scenario import load_scenario
from hil.simulate import initial_inputs
from plant_models import PlantModel, Role

#: IPOPT iterations of the one offline solve (a cold start over the whole batch).
MAX_ITER = 3000
#: Most samples a batch may take on the sample grid.
MAX_SAMPLES = 2000


@dataclass(frozen=True)
class Replay:
    """A piecewise-constant input profile applied to the true plant on a fine grid."""

    end: float | None  # the batch's exact end (None: not reached)
    worst_excess: dict[str, float]  # per constraint: the largest excess over its bound (<= 0 ok)
    points: int  # instants at which the constraints were evaluated


@dataclass(frozen=True)
class MinimumTime:
    """The open-loop minimum time of one batch (times in the model's time unit)."""

    source: str
    time_unit: str
    grid: str  # the input grid: the controller's sample grid, or a uniform one
    intervals: int
    planned_end: float  # the optimizer's T (RK4 model)
    end: float | None  # the true plant's end with the optimal inputs (the figure to use)
    worst_excess: dict[str, float]
    inputs: dict[str, list[float]]  # per interval
    return_status: str
    iterations: int


class OpenLoopPlanner(FastController):
    """The fast path's transcription on a uniform grid: every interval lasts ``T / N``."""

    def _schedule(self, config: ControllerConfig) -> EndSchedule:
        mt = config.objective.min_time
        max_time = mt.max_time if mt is not None else None
        return EndSchedule("uniform", config.horizon, config.sample_time, max_time)


def offline_config(
    cfg: ControllerConfig,
    intervals: int,
    steps: int,
    sample_time: float | None = None,
) -> ControllerConfig:
    """``cfg`` as the offline problem over ``intervals`` intervals: the time to the end is the
    whole cost (no move penalties), every constraint hard, no move limits, IPOPT. With
    ``sample_time`` (the sample grid): the controller's shrinking plan on that grid; else a
    uniform grid over a first guess of the batch (``max_time``, else the controller's
    horizon)."""
    mt = cfg.objective.min_time
    if mt is None:
        raise ConfigError([Problem("<min-time>", "objective.min_time", "missing", None)])
    free = {
        name: InputSpec(
            lower=s.lower,
            upper=s.upper,
            max_move=max(s.upper - s.lower, s.max_move),
        )
        for name, s in cfg.inputs.items()
    }
    hard = tuple(c.model_copy(update={"soft": False}) for c in cfg.constraints)
    solver = cfg.solver.model_copy(
        update={
            "backend": "fast",
            "jit": False,
            "fallback": "ipopt",
            "cold_start": "ipopt",
            "integrator_steps": steps,
        }
    )
    guess = mt.max_time if mt.max_time is not None else cfg.horizon * cfg.sample_time
    objective = cfg.objective.model_copy(
        update={"min_time": mt.model_copy(update={"mode": "shrinking", "max_time": None})}
    )
    return cfg.model_copy(
        update={
            "horizon": intervals,
            "sample_time": sample_time if sample_time is not None else guess / intervals,
            "objective": objective,
            "inputs": free,
            "constraints": hard,
            "robust": None,
            "monitoring": None,
            "solver": solver,
            "ipopt": {**cfg.ipopt, "max_iter": MAX_ITER},
        }
    )


def open_loop_minimum(path: Path, *, intervals: int | None = None, steps: int = 2) -> MinimumTime:
    """The open-loop minimum time of the batch a controller config or scenario describes.

    ``intervals`` None: on the controller's sample grid (inputs held for a sample each, the
    last interval ending at the batch end: the inputs the loop itself can apply); else on a
    uniform grid of that many intervals. A scenario gives the true plant (its parameters),
    the initial state and the initial inputs; a controller config its own model at the plant
    file's values. Raises ConfigError for a file that is neither or has no
    ``objective.min_time``, SolverError when the optimizer finds no solution.
    """
    cfg, model, x0, u0, source = _problem(path)
    if cfg.objective.min_time is None:
        raise ConfigError(
            [Problem(source, "objective.min_time", "the controller plans no minimum time", None)]
        )
    if intervals is None:
        decision, lengths = _on_sample_grid(cfg, model, x0, u0, steps, source)
        grid = f"sample grid ({cfg.sample_time:g} {model.time_unit})"
    else:
        planner = OpenLoopPlanner(offline_config(cfg, intervals, steps), model, source)
        decision = planner.step(0.0, x0, u_prev=u0)
        lengths = [decision.end_time / intervals] * intervals
        grid = f"uniform ({intervals} intervals)"
    if not decision.ok:
        raise SolverError(
            f"{source}: no open-loop minimum time found on the {grid}: {decision.return_status}"
        )
    pieces = [
        (h, {name: float(decision.predicted_inputs[name][k]) for name in model.input_names})
        for k, h in enumerate(lengths)
        if h > 0
    ]
    true = type(model)(model.parameter_set)  # the exact (non-smoothed) equations
    result = replay(true, x0, pieces, cfg.constraints)
    return MinimumTime(
        source=source,
        time_unit=model.time_unit,
        grid=grid,
        intervals=len(pieces),
        planned_end=decision.end_time,
        end=result.end,
        worst_excess=result.worst_excess,
        inputs={n: [u[n] for _, u in pieces] for n in model.input_names},
        return_status=decision.return_status,
        iterations=decision.iterations,
    )


def _on_sample_grid(
    cfg: ControllerConfig,
    model: PlantModel,
    x0: Mapping[str, float],
    u0: Mapping[str, float],
    steps: int,
    source: str,
) -> tuple[Decision, list[float]]:
    """The optimum over inputs held for a sample each: the fewest intervals ``m`` whose plan
    reaches the end (its last interval ends there), found from a uniform grid's end time.

    With ``m`` intervals the end lies in the last one; an optimum at its start says ``m - 1``
    may do, an infeasible plan that ``m + 1`` is needed."""
    dt = cfg.sample_time
    first = OpenLoopPlanner(offline_config(cfg, 50, steps), model, source)
    rough = first.step(0.0, x0, u_prev=u0)
    m = max(1, math.ceil(rough.end_time / dt)) if rough.ok else cfg.horizon
    tried: dict[int, Decision] = {}
    while m not in tried and 1 <= m <= MAX_SAMPLES:
        ctl = FastController(offline_config(cfg, m, steps, dt), model, source)
        d = tried[m] = ctl.step(0.0, x0, u_prev=u0)
        if not d.ok:
            m += 1
        elif m > 1 and d.end_time <= (m - 1) * dt * (1 + 1e-6):
            m -= 1
        else:
            break
    ok = [k for k, d in tried.items() if d.ok]
    if not ok:
        return tried[m if m in tried else max(tried)], []
    best = min(ok, key=lambda k: tried[k].end_time)
    d = tried[best]
    return d, [dt] * (best - 1) + [d.end_time - (best - 1) * dt]


def _problem(
    path: Path,
) -> tuple[ControllerConfig, PlantModel, dict[str, float], dict[str, float], str]:
    """(controller config, model with the true parameters, x0, u0, source) of ``path``."""
    source = str(path)
    found = detect(read_yaml(path))
    if found is not None and found.name == "scenario":
        sc = load_scenario(path)
        if sc.controller is None:
            why = "an open-loop scenario: no controller to take the problem from"
            raise ConfigError([Problem(source, "controller", why, None)])
        cfg, _ = load_controller(resolve(path, sc.controller))
        plant = build_model(resolve(path, sc.plant), smooth=True)
        values = plant.parameter_set.with_values(sc.true_plant.parameters)
        model = type(plant)(values, smooth=True)
        x0 = {**model.initial_state, **sc.true_plant.initial_state}
        return cfg, model, x0, initial_inputs(sc, model, input_limits(cfg)), source
    if found is not None and found.name == "controller":
        cfg, model = load_controller(path)
        limits = input_limits(cfg)
        u0 = {
            n: min(max(v, limits[n].lower), limits[n].upper)
            for n, v in model.nominal_inputs.items()
        }
        return cfg, model, dict(model.initial_state), u0, source
    what = found.name if found is not None else "unrecognised"
    raise ConfigError(
        [Problem(source, "", f"give a scenario or a controller config (this is a {what} file)")]
    )


def replay(
    model: PlantModel,
    x0: Mapping[str, float],
    pieces: Sequence[tuple[float, Mapping[str, float]]],
    constraints: Sequence[Constraint],
    *,
    substeps: int = 50,
    overrun: float = 0.1,
) -> Replay:
    """Apply ``pieces`` (``(length, inputs)``, each held for its length) to the true plant
    from ``x0``, in steps of ``1 / substeps`` of the longest piece.

    The steps are CVODES/IDAS on the exact equations; the batch end is located inside a step.
    A piece shorter than the longest takes its length rounded to whole steps. After the last
    piece its inputs are held for up to ``overrun`` of the profile's length while the batch
    has not ended. Every constraint is evaluated at the start of each piece (the algebraic
    states solved at the new inputs) and after every step.
    """
    fine = max(h for h, _ in pieces) / substeps
    plant = PlantRunner(model, fine, initial_state=x0)
    z_solve = model.algebraic_solver()
    p = model.parameter_vector()
    worst = {_label(c): -math.inf for c in constraints}
    points = 0

    def record(values: Mapping[str, float]) -> None:
        nonlocal points
        points += 1
        for c in constraints:
            v = values[c.expression]
            excess = max(
                v - c.upper if c.upper is not None else -math.inf,
                c.lower - v if c.lower is not None else -math.inf,
            )
            worst[_label(c)] = max(worst[_label(c)], excess)

    total = sum(h for h, _ in pieces)
    extra = [(fine, pieces[-1][1])] * math.ceil(overrun * total / fine)
    for h, u in [*pieces, *extra]:
        if plant.finished():
            break
        state = plant.true_state()
        z = state.algebraic
        if z_solve is not None:
            zv = z_solve(
                model.vector(Role.ALGEBRAIC, z),
                model.vector(Role.STATE, state.states),
                model.vector(Role.INPUT, u),
                p,
            )
            z = model.as_dict(Role.ALGEBRAIC, np.asarray(zv, dtype=float).ravel())
        ev = model.evaluate(state.states, u, z)
        record({**state.states, **z, **u, **ev.outputs, **ev.expressions})
        for _ in range(max(1, round(h / fine))):
            plant.advance(u)
            s = plant.end_state or plant.true_state()
            record({**s.states, **s.algebraic, **s.inputs, **s.outputs, **s.expressions})
            if plant.finished():
                break
    return Replay(plant.finished_at, worst, points)


def _label(c: Constraint) -> str:
    bounds = [f"{c.lower:g} <=" if c.lower is not None else "", c.expression]
    bounds.append(f"<= {c.upper:g}" if c.upper is not None else "")
    return " ".join(b for b in bounds if b)


# ---------------------------------------------------------------------- command line
def add_parser(sub: Any) -> None:
    """The ``min-time`` subcommand of ``pharmatwin-hil``."""
    mt = sub.add_parser(
        "min-time",
        help="open-loop minimum time of a batch (offline optimal control), checked on the plant",
        epilog=(
            "examples:\n"
            "  pharmatwin-hil min-time configs/controllers/lyophilizer-min-time.yaml\n"
            "  pharmatwin-hil min-time configs/controllers/lyophilizer-min-time.yaml "
            "--intervals 400 --json min-time.json\n"
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    mt.add_argument("file", type=Path, help="a scenario or a controller config with min_time")
    mt.add_argument(
        "--intervals",
        type=int,
        default=None,
        help="a uniform grid of this many intervals (default: the controller's sample grid)",
    )
    mt.add_argument("--steps", type=int, default=2, help="RK4 steps per interval (default 2)")
    mt.add_argument("--json", type=Path, default=None, help="also write the result here")


def command(args: argparse.Namespace, console: Console) -> int:
    """Run ``min-time``; 0 when the optimum reaches the batch end on the true plant."""
    if args.intervals is not None and not 1 <= args.intervals <= 2000:
        raise ConfigError(
            [Problem("--intervals", "", "must be between 1 and 2000", args.intervals)]
        )
    if not 1 <= args.steps <= 20:
        raise ConfigError([Problem("--steps", "", "must be between 1 and 20", args.steps)])
    if args.json is not None:
        from controller.outpaths import file_problem
        from hil.cli_serve import refuse_output

        if refuse_output(console, [file_problem(args.json, "--json")]):
            return 2
    result = open_loop_minimum(args.file, intervals=args.intervals, steps=args.steps)
    u = result.time_unit
    end = f"{result.end:.6g} {u}" if result.end is not None else "not reached"
    console.print(
        f"open-loop minimum time of {result.source} on the {result.grid}, {result.intervals} "
        "intervals"
    )
    console.print(f"  optimizer's end time: {result.planned_end:.6g} {u} ({result.return_status})")
    console.print(f"  true plant's end with those inputs: {end}")
    for label, excess in result.worst_excess.items():
        console.print(f"  worst excess over '{label}' (fine grid): {excess:.4g}")
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)  # checked above: it can be made
        args.json.write_text(json.dumps(asdict(result), indent=1), encoding="utf-8")
    return 0 if result.end is not None else 1
