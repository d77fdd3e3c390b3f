"""Whether the fast path's RK4 steps hold over the region the controller plans in.

The fast MPC (:mod:`controller.core.fast_mpc`) carries the state over an interval with
``integrator_steps`` explicit RK4 steps of length ``h``. Where the model is stiff (a mode
``lambda`` of its Jacobian with ``|h lambda|`` large), that discretization is wrong, and
the SQP plans on it without knowing: on the bioreactor at the low edge of its plausible
yield the substrate's consumption decays at -4.93 /h near S = 0, and with two steps an hour
(``h lambda = -2.47``) RK4's second stage flipped the substrate's sign. The problem came out
infeasible (IPOPT's ``Infeasible_Problem_Detected``) where it was feasible, or "solved" with
no feed at all where the accurate answer feeds (bioreactor-oq, before the shipped config
took three steps).

:func:`rk4_margin` samples the planning region and returns the largest ``|h lambda|`` of
the model's Jacobian ``d xdot / d x`` found there (a DAE's reduced one,
``f_x - f_z g_z^-1 g_x``, at algebraic states solved for each point). The region
(:func:`planning_box`, then a filter):

* each state between its tightest bounds of the validity domain, the controller's
  ``state_bounds`` and its constraints on the state itself (operating limits are the
  process's, enforced by the PLC, not by the plan: they are not used);
* each parameter over its plausible range; a robust controller's scenario values of a
  parameter without one (the plant file's check keeps scenario values inside a range);
  an estimated parameter with neither is held at its nominal value, and the report says so
  (:attr:`Rk4Margin.held`);
* each input between the controller's limits;
* of the points drawn, those where every constraint of the controller holds (the
  crystallizer's supersaturation band: its concentration's validity domain reaches far
  beyond where the plan may go). A soft constraint's bound is widened by
  :data:`SOFT_MARGIN` of its magnitude (at least of its scale): the plan may cross it, paying
  its penalty, and the estimate may sit beyond it (the bioreactor's X cap of 3.7 is
  checked up to 4.07).

A state with no finite bound on a side is sampled from its finite bound (or its initial
value) to its initial value on that side, and from its initial value only when the model
never moves it towards that bound anywhere in the region
(:func:`controller.core.rk4_region.monotone`: the bioreactor's volume only grows, so it is
held at its initial 120 L rather than sampled down to the empty vessel, where the dilution
rate ``u / V`` is singular). The check cannot
speak for what lies beyond, and its report names such states (:attr:`Rk4Margin.unbounded`).
The bioreactor's substrate is sampled over [0, 0.5] g/L, the crystallizer's moments at their
seeded values.

:data:`RK4_STAGE_LIMIT` is the limit: ``|h lambda| <= 2``. On a decaying real mode that is
where RK4's second stage ``x + h/2 k1`` stops keeping the sign of the deviation
(``1 + h lambda / 2 >= 0``); every complex ``h lambda`` of that magnitude in the left
half-plane is inside RK4's stability region too (its amplification at most 1 there), and a
real growing mode (an exothermic reactor's runaway) is held to the same magnitude, where
RK4's growth factor is within 6 % of the exact one (an oscillating growing mode of that
magnitude is less accurate). It is a sufficient condition, not a necessary one: a model
stiffer than that somewhere in the region may still plan well where it really goes, but no
one can tell that at load time, so :func:`check_rk4_steps` refuses the configuration and
says how many steps would do. It refuses too when it could not look: no point of the region
evaluated, or a point where the Jacobian is not finite (a singularity inside the region).

``h`` is the longest interval over the RK4 steps (:func:`longest_interval`): a sample, or a
free-end minimum-time plan's stretched intervals when ``max_time`` bounds them; without it
their length is each solve's decision, and only the sample is checked.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from controller.config import ControllerConfig
from controller.core.end_schedule import EndSchedule
from controller.core.memo import Lru, model_data
from controller.core.rk4_region import (
    MAX_CANDIDATES,
    MIN_INSIDE,
    SEED,
    Box,
    Evaluated,
    Evaluator,
    bounds_of,
    corners,
    monotone,
    planning_box,
    random_points,
)
from controller.errors import ConfigError, Problem
from plant_models import PlantModel

__all__ = [
    "RK4_STAGE_LIMIT",
    "Box",
    "Rk4Margin",
    "check_rk4_steps",
    "longest_interval",
    "planning_box",
    "rk4_margin",
    "rk4_steps",
]

#: The largest ``|h lambda|`` accepted (see the module docstring).
RK4_STAGE_LIMIT = 2.0
#: Configurations whose margin is remembered per process.
MEMO_SIZE = 16


@dataclass(frozen=True)
class Rk4Margin:
    """The stiffest point found: ``h`` and ``|h lambda|`` there, with the point itself."""

    h: float
    worst: float  # max |h lambda| over the sampled points
    eigenvalue: complex  # lambda at the worst point (per model time unit)
    state: dict[str, float]
    parameters: dict[str, float]
    inputs: dict[str, float]
    points: int  # points inside the controller's constraints, evaluated
    unsolved: int  # a DAE's points where the algebraic states were not solved (not counted)
    singular: int  # points where the Jacobian was not finite (the check then fails)
    outside: int  # candidates drawn outside the controller's constraints (not evaluated)
    unbounded: tuple[str, ...]
    held: tuple[str, ...] = ()

    def coverage(self) -> str:
        """What the check looked at, for its report."""
        parts = [f"{self.points} points of the planning region"]
        if self.outside:
            parts.append(f"{self.outside} drawn outside the controller's constraints")
        if self.unsolved:
            parts.append(f"{self.unsolved} with the algebraic states not solved")
        if self.unbounded:
            parts.append(f"{', '.join(self.unbounded)} sampled only up to the initial value")
        if self.held:
            parts.append(f"{', '.join(self.held)} held at nominal (no plausible range)")
        return "; ".join(parts)

    @property
    def ok(self) -> bool:
        """Looked at some of the region, found no singularity and no mode too fast."""
        return self.points > 0 and self.singular == 0 and self.worst <= RK4_STAGE_LIMIT

    def steps_needed(self, steps: int) -> int:
        """The fewest RK4 steps per interval that would meet the limit."""
        return max(steps, math.ceil(steps * self.worst / RK4_STAGE_LIMIT))


log = logging.getLogger(__name__)

_CHECKED: Lru[str, Rk4Margin] = Lru(MEMO_SIZE)


def longest_interval(config: ControllerConfig) -> float:
    """The longest interval of a plan whose length is known at load time: a sample, or a
    minimum-time plan's longest interval at its schedule's largest time to the end
    (:class:`~controller.core.end_schedule.EndSchedule`; a free-end plan's stretched
    intervals when ``max_time`` bounds them). Without such a bound their length is the
    solve's decision and the sample is all that can be checked."""
    dt, schedule = config.sample_time, EndSchedule.of(config)
    if schedule is None:
        return dt
    a, b, _, t_max = schedule.timing()
    return max(dt, float(np.max(a + b * t_max))) if math.isfinite(t_max) else dt


def rk4_margin(config: ControllerConfig, model: PlantModel, steps: int) -> Rk4Margin:
    """The largest ``|h lambda|`` of the model's Jacobian over the planning region, with
    ``h`` the longest interval over ``steps`` RK4 steps (see the module docstring)."""
    box = planning_box(config, model)
    rng = np.random.default_rng(SEED)
    evaluate = Evaluator(config, model, box)
    if box.unbounded:  # a first look, to hold monotone unbounded states (see monotone)
        _, lows, highs = bounds_of(box)
        first = np.vstack([corners(lows, highs, rng), random_points(lows, highs, rng)])
        box = monotone(box, model, evaluate(first))
    names, lows, highs = bounds_of(box)
    kept: list[Evaluated] = []
    drawn = 0
    candidates = corners(lows, highs, rng)
    while True:
        seen = evaluate(candidates)
        kept.append(seen)
        drawn += len(candidates)
        if sum(int(e.inside.sum()) for e in kept) >= MIN_INSIDE or drawn >= MAX_CANDIDATES:
            break
        candidates = random_points(lows, highs, rng)
    pts = np.vstack([e.pts for e in kept])
    mats = np.concatenate([e.mats for e in kept])
    inside = np.concatenate([e.inside for e in kept])
    finite = np.concatenate([e.finite for e in kept])
    solved = np.concatenate([e.solved for e in kept])
    singular = inside & ~finite
    good = inside & finite
    h = longest_interval(config) / steps
    counts = {
        "points": int(good.sum()),
        "unsolved": int((~solved).sum()),
        "singular": int(singular.sum()),
        "outside": int((solved & ~inside).sum()),
        "unbounded": box.unbounded,
        "held": box.held,
    }
    if singular.any():  # the first singular point is the report's
        k = int(np.flatnonzero(singular)[0])
        return _margin(h, math.inf, complex(math.nan), names, pts[k], box, counts)
    if not good.any():
        return _margin(h, 0.0, 0j, names, None, box, counts)
    eig = np.linalg.eigvals(mats[good])
    each = np.abs(eig).argmax(axis=1)
    lam = eig[np.arange(len(eig)), each]
    k = int(np.abs(lam).argmax())
    return _margin(h, float(abs(lam[k]) * h), complex(lam[k]), names, pts[good][k], box, counts)


def _margin(
    h: float,
    worst: float,
    lam: complex,
    names: list[str],
    point: np.ndarray | None,
    box: Box,
    counts: dict[str, Any],
) -> Rk4Margin:
    values = dict(zip(names, point, strict=True)) if point is not None else {}
    return Rk4Margin(
        h=h,
        worst=worst,
        eigenvalue=lam,
        state={n: float(values[n]) for n in box.states if n in values},
        parameters={n: float(values[n]) for n in box.parameters if n in values},
        inputs={n: float(values[n]) for n in box.inputs if n in values},
        **counts,
    )


def _point(values: Mapping[str, float]) -> str:
    return ", ".join(f"{n} {v:.4g}" for n, v in values.items())


def rk4_steps(config: ControllerConfig, steps: int | None = None) -> int:
    """The RK4 steps the fast path really takes per sample: ``steps`` (default the config's
    ``solver.integrator_steps``) rounded up to a multiple of the constraint points' segments
    (:func:`controller.core.ocp_stage.rk4_interval`)."""
    n = config.solver.integrator_steps if steps is None else steps
    segments = config.constraint_points + 1
    return -(-n // segments) * segments


def check_rk4_steps(
    config: ControllerConfig, model: PlantModel, source: str, steps: int | None = None
) -> Rk4Margin | None:
    """Raise ConfigError when the fast path's RK4 steps (``steps``, default the config's
    ``solver.integrator_steps``) are too few somewhere in the planning region
    (:func:`rk4_margin` above :data:`RK4_STAGE_LIMIT`); else the margin found. None (nothing
    checked) for the do-mpc backend, which integrates by collocation. Remembered per process
    for each configuration and model (a campaign loads the same controller for every case)."""
    if config.solver.backend != "fast":
        return None
    n = rk4_steps(config, steps)
    data = {"config": config.model_dump(mode="json"), "steps": n, "model": model_data(model)}
    key = hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()
    m = _CHECKED.get(key)
    if m is None:
        m = rk4_margin(config, model, n)
        _CHECKED.put(key, m)
    if m.ok:
        if m.points < MIN_INSIDE:
            log.warning(
                "%s: the RK4 check of model %r looked at only %d points (%s)",
                source,
                model.name,
                m.points,
                m.coverage(),
            )
        return m
    given = config.solver.integrator_steps if steps is None else steps
    raise ConfigError(
        [Problem(source, "solver.integrator_steps", _refusal(m, model, given, n), given)]
    )


def _refusal(m: Rk4Margin, model: PlantModel, given: int, n: int) -> str:
    """Why ``given`` RK4 steps (``n`` taken) are refused, naming the point and what would do."""
    unit = model.time_unit
    steps = f"{given} RK4 step{'s' if given != 1 else ''}{f' (taken as {n})' if n != given else ''}"
    where = "; ".join(p for p in (_point(m.state), _point(m.parameters), _point(m.inputs)) if p)
    looked = f" (the check looked at {m.coverage()})"
    if m.singular:
        return (
            f"cannot check {steps} for model {model.name!r}: its Jacobian is not finite at "
            f"{where}, inside the planning region: narrow state_bounds or the constraints so "
            f"that the plan keeps away from the singularity{looked}"
        )
    if m.points == 0:
        return (
            f"cannot check {steps} for model {model.name!r}: no point of the planning region "
            f"could be evaluated (the constraints hold nowhere in the box drawn, or the "
            f"algebraic states were not solved){looked}"
        )
    lam = m.eigenvalue
    shown = f"{lam.real:.3g}" if abs(lam.imag) < 1e-12 else f"{lam:.3g}"
    return (
        f"{steps} per interval of {m.h * n:g} {unit} are too few for model {model.name!r}: "
        f"at {where} its Jacobian has an eigenvalue of {shown} per {unit}, so "
        f"|h lambda| = {m.worst:.3g} (allowed <= {RK4_STAGE_LIMIT:g}: beyond it RK4's stages "
        f"overshoot and the plan is computed on a wrong model); use integrator_steps >= "
        f"{m.steps_needed(n)}{looked}"
    )
