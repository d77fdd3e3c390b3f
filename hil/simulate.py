"""The offline digital model: a scenario's closed (or open) loop, as fast as it can run.

``run_scenario`` wires a true plant (:class:`~hil.plant_runner.PlantRunner`) to the control
pipeline through the in-memory port on a :class:`~controller.clock.SteppedClock`, so the
offline loop uses the same interfaces as the networked one. Each tick: the plant publishes
its measurements, the controller reads a snapshot, estimates, solves, passes the result
through safety and writes the setpoints; the plant then integrates one sample with the
setpoints in place and the clock advances.

A row's ``u.<input>`` is the setpoint in place at ``t`` (what the PLC port holds, for the step
from ``t``); ``i.<input>`` is what the true plant had at ``t``, the end of its previous step
(its state's inputs: disturbances included), so the two differ where the plant did not get
what was asked (and, for one row, after a setpoint changes).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from controller.clock import SteppedClock
from controller.config import Constraint, ControllerConfig, EstimatorSpec
from controller.configfile import resolve
from controller.controllerfile import load_controller
from controller.core.estimator import make_estimator
from controller.core.pipeline import ControlPipeline, CycleResult, Policy, input_limits
from controller.core.policy import build_policy
from controller.core.recipe import RecipePlayer
from controller.core.safety import InputLimit
from controller.errors import ScenarioError
from controller.plantfile import build_model
from controller.ports.memory import MemoryPort, TagTable
from controller.runtime.solver_cache import LibraryCache
from controller.timebase import TimeBase
from hil.plant_runner import PlantDomainError, PlantFault, PlantRunner, PlantState
from hil.scenario import ScenarioConfig, load_scenario
from plant_models import PlantModel


@dataclass
class ScenarioRun:
    """Everything a finished run produced (rows are per sample, true values unless named)."""

    scenario: ScenarioConfig
    model: PlantModel
    controller: ControllerConfig | None
    rows: list[dict[str, Any]] = field(default_factory=list)
    wall_time_s: float = 0.0
    finished_at: float | None = None
    #: the true plant left its validity domain (the run stopped there; a plant fault)
    plant_fault: PlantFault | None = None
    limits: dict[str, InputLimit] = field(default_factory=dict)
    constraints: tuple[Constraint, ...] = ()


def _limits(model: PlantModel, cfg: ControllerConfig | None) -> dict[str, InputLimit]:
    if cfg is not None:
        return input_limits(cfg)
    return {
        n: InputLimit(n, model.variable(n).lower, model.variable(n).upper, math.inf)
        for n in model.input_names
    }


def _row(t: float, plant: PlantState, y: dict[str, float], cycle: CycleResult) -> dict[str, Any]:
    d = cycle.decision
    row: dict[str, Any] = {"t": t}
    row.update({f"x.{k}": v for k, v in plant.states.items()})
    row.update({f"z.{k}": v for k, v in plant.algebraic.items()})
    row.update({f"y.{k}": v for k, v in y.items()})  # measured (noise and all)
    row.update({f"o.{k}": v for k, v in plant.outputs.items()})  # true outputs
    row.update({f"e.{k}": v for k, v in plant.expressions.items() if k not in plant.outputs})
    if cycle.estimate is not None:
        row.update({f"xhat.{k}": v for k, v in cycle.estimate.states.items()})
        row.update(
            {f"phat.{k}": cycle.estimate.parameters[k] for k in cycle.estimate.parameter_std}
        )
    row.update({f"u.{k}": v for k, v in cycle.outcome.setpoints.items()})
    row.update({f"i.{k}": v for k, v in plant.inputs.items()})  # what the plant received
    row.update({f"mpc.{k}": v for k, v in d.inputs.items()})
    row["solve.status"] = d.status.value
    row["solve.return_status"] = d.return_status
    row["solve.iterations"] = d.iterations
    row["solve.time_s"] = d.solve_time_s
    row["solve.fallback"] = d.fallback  # the fast path's SQP handed over to IPOPT
    row["estimator.failed"] = cycle.estimator_failed  # the cycle held
    row["estimator.rejected"] = len(cycle.rejected)  # outputs the innovation gate kept out
    row["safety.held"] = cycle.outcome.held
    row["safety.interventions"] = len(cycle.outcome.interventions)
    for name, slack in d.soft_slack.items():
        row[f"slack.{name}"] = slack
    return row


def faults_refusal(path: Path, sc: ScenarioConfig) -> str:
    """Why ``simulate`` refuses a scenario with faults, and where they do act (one line)."""
    kinds = ", ".join(dict.fromkeys(f"{f.kind} on {f.target}" for f in sc.faults))
    return (
        f"{path}: faults: {kinds}: simulate cannot apply them; run it as a site's hil "
        "scenario (`pharmatwin-hil serve`) or in a campaign, where faults act"
    )


def initial_inputs(
    sc: ScenarioConfig, model: PlantModel, limits: dict[str, InputLimit]
) -> dict[str, float]:
    """The setpoints in force at the start: the scenario's ``initial_inputs``, the others at
    the plant file's nominal values. A nominal value outside the controller's limits starts
    at the nearest limit (the scenario's own values are checked at load, never clamped)."""
    out = {}
    for name, value in model.nominal_inputs.items():
        if name in sc.initial_inputs:
            out[name] = float(sc.initial_inputs[name])
        else:
            out[name] = min(max(value, limits[name].lower), limits[name].upper)
    return out


async def run_scenario(
    path: Path,
    *,
    max_steps: int | None = None,
    on_tick: Callable[[float, float], None] | None = None,
) -> ScenarioRun:
    """Run the scenario at ``path`` to its end (or ``max_steps`` samples).

    A scenario with ``faults:`` is refused (:class:`ScenarioError`): the offline loop has no
    virtual PLC, servers or fault schedule, so its faults would silently do nothing."""
    sc = load_scenario(path)
    if sc.faults:
        raise ScenarioError(faults_refusal(path, sc))
    true_model = build_model(resolve(path, sc.plant))
    true_model = type(true_model)(true_model.parameter_set.with_values(sc.true_plant.parameters))
    cfg: ControllerConfig | None = None
    policy: Policy
    if sc.controller is not None:
        cfg, ctl_model = load_controller(resolve(path, sc.controller))
        source = str(resolve(path, sc.controller))
        policy = build_policy(cfg, ctl_model, compile=LibraryCache(), source=source)
        dt = cfg.sample_time
        spec = cfg.estimator
    else:
        ctl_model = build_model(resolve(path, sc.plant), smooth=True)
        if sc.recipe is None or sc.sample_time is None:  # guaranteed by ScenarioConfig
            raise ValueError("scenario without controller needs a recipe and sample_time")
        policy = RecipePlayer(sc.recipe, ctl_model.input_names)
        dt = sc.sample_time
        # the recipe needs no estimate: a bystander EKF on the CVODES/IDAS reference prediction
        # (no compiled step to build, valid at any sample time)
        spec = EstimatorSpec(kind="ekf", prediction="reference")
    limits = _limits(ctl_model, cfg)
    run = ScenarioRun(sc, true_model, cfg, limits=limits)
    run.constraints = cfg.constraints if cfg else ()
    working = initial_inputs(sc, ctl_model, limits)
    plant = PlantRunner(
        true_model,
        dt,
        initial_state=sc.true_plant.initial_state,
        noise_std=sc.true_plant.noise_std,
        disturbances=sc.true_plant.disturbances,
        seed=sc.true_plant.seed,
        initial_inputs=working,  # the plant's t = 0 algebraic state and outputs see them
    )
    estimator = make_estimator(ctl_model, spec, dt, compile=LibraryCache())
    pipeline = ControlPipeline(ctl_model, estimator, policy, limits)
    pipeline.start(working)
    clock = SteppedClock()
    timebase = TimeBase.of(true_model)
    table = TagTable()
    for name in ctl_model.input_names:
        table.allow_writes(name, true_model.variable(name).lower, true_model.variable(name).upper)
    table.publish(clock.now(), working)
    n_steps = round(sc.duration / dt)
    if max_steps is not None:
        n_steps = min(n_steps, max_steps)
    output_tags = list(ctl_model.output_names)
    started = time.perf_counter()
    async with MemoryPort(table, clock) as port:
        for k in range(n_steps):
            t = k * dt
            y_true = plant.measure()
            table.publish(clock.now(), y_true)
            snap = await port.read(output_tags)
            bad = snap.bad(output_tags)
            cycle = pipeline.step(t, snap.numbers(output_tags), data_ok=not bad)
            if cycle.outcome.setpoints:
                await port.write(dict(cycle.outcome.setpoints))
            in_place = {n: table.current(n) for n in ctl_model.input_names}
            pipeline.applied(in_place)
            run.rows.append(
                _row(t, plant.true_state(), y_true, cycle)
                | {f"u.{n}": v for n, v in in_place.items()}
            )
            try:
                plant.advance(in_place, segments=_recipe_segments(policy, t, dt, in_place))
            except PlantDomainError as exc:
                run.plant_fault = exc.fault
                break
            clock.advance(timebase.seconds(dt))
            if on_tick is not None:
                on_tick(plant.t, sc.duration)
            if sc.stop_when_finished and plant.finished():
                break
    run.finished_at = plant.finished_at
    final = plant.end_state or plant.true_state()
    run.rows.append(_final_row(final))
    run.wall_time_s = time.perf_counter() - started
    return run


def _recipe_segments(
    policy: Policy, t: float, dt: float, in_place: dict[str, float]
) -> list[Any] | None:
    """An open-loop recipe's exact profile over the sample, when it is what the plant got.

    The recipe is applied as a ramp inside the step (not its value at the step's start). If
    safety or the port changed the setpoint, the plant holds what is really in place."""
    if not isinstance(policy, RecipePlayer):
        return None
    start = policy.inputs_at(t)
    if any(abs(start[n] - v) > 1e-9 * max(1.0, abs(v)) for n, v in in_place.items()):
        return None
    return list(policy.segments(t, t + dt))


def _final_row(plant: PlantState) -> dict[str, Any]:
    row: dict[str, Any] = {"t": plant.t}
    row.update({f"x.{k}": v for k, v in plant.states.items()})
    row.update({f"z.{k}": v for k, v in plant.algebraic.items()})
    row.update({f"y.{k}": v for k, v in plant.outputs.items()})
    row.update({f"o.{k}": v for k, v in plant.outputs.items()})
    row.update({f"e.{k}": v for k, v in plant.expressions.items() if k not in plant.outputs})
    row.update({f"u.{k}": v for k, v in plant.inputs.items()})
    row.update({f"i.{k}": v for k, v in plant.inputs.items()})
    row["solve.status"] = "end"
    return row
