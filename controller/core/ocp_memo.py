"""The fast MPC's transcribed problem, built once per process and configuration.

Transcribing a controller config (:func:`controller.core.ocp.transcribe`), building its stage
root-finder (:func:`controller.core.fast_guess.stage_root`) and scaling its constraint rows at
the cold guess (:meth:`controller.core.fast_mpc.FastController._row_scaled`) takes ~30 ms for
the freeze dryer, for every controller built: every case of a Monte Carlo campaign paid it,
though all of them run the same controller file. :func:`transcribed` keeps the result per
process, keyed by everything a controller is built from (:func:`controller_key`): the
controller's class, the whole config, the RK4 steps, and the model instance's defining data
(:func:`controller.core.memo.model_data`: class, ``smooth``, every variable with its bounds
and scale, every parameter, the initial state, algebraic guesses and nominal inputs; a
plugin model's equations too). Not its source's name: it
only names the config in the errors of a problem that cannot be transcribed (nothing is
kept then), and each campaign case has its own site file. A configuration's RK4 steps are
checked before it is first transcribed (:func:`controller.core.rk4_check.check_rk4_steps`:
ConfigError when they are too few), so nothing kept here skipped that check.

No state is shared: each controller gets its own copies of the problem's arrays and dicts
(a controller moves its own bounds in place, e.g. the time to the batch end of a
minimum-time problem); the CasADi expressions and Functions, which nothing changes, are
shared. Pure: memory only, no I/O.
"""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import json
from collections.abc import Callable
from typing import Any, Protocol

import casadi as ca
import numpy as np

from controller.config import ControllerConfig
from controller.core.fast_guess import cold_solve, stage_root
from controller.core.fast_solver import BufferedSolver, Cleaner
from controller.core.memo import Lru, model_data
from controller.core.ocp import Transcription, transcribe
from controller.core.rk4_check import check_rk4_steps
from plant_models import PlantModel, Role

__all__ = ["clear", "controller_key", "reference_first", "transcribed"]

#: Bumped whenever a controller's problem is built differently: part of every key.
GENERATOR = "ocp_memo 1"
#: Configurations remembered per process (the oldest is dropped first).
MEMO_SIZE = 16


class Controller(Protocol):
    """What :func:`transcribed` needs of the controller being built (a
    :class:`~controller.core.fast_mpc.FastController`, set up but for its problem)."""

    config: ControllerConfig
    model: PlantModel
    source: str
    _z_root: ca.Function | None

    def _row_scaled(self, ocp: Transcription) -> Transcription: ...


_BUILT: Lru[str, tuple[Transcription, ca.Function | None]] = Lru(MEMO_SIZE)


def controller_key(ctrl: Controller, steps: int) -> str:
    """A digest of everything ``ctrl``'s problem is built from (see the module's docstring)."""
    cls = type(ctrl)
    data = {
        "generator": GENERATOR,
        "casadi": ca.CasadiMeta.version(),
        "controller": f"{cls.__module__}.{cls.__qualname__}#{id(cls)}",
        "config": ctrl.config.model_dump(mode="json"),
        "steps": steps,
        "model": model_data(ctrl.model),
    }
    return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()


def _own(value: Any) -> Any:
    """A controller's own copy of a problem field: arrays, dicts, lists and tuples copied
    (deeply, CasADi objects shared), everything else as it is."""
    if isinstance(value, np.ndarray):
        return value.copy()
    if isinstance(value, dict):
        return {k: _own(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_own(v) for v in value]
    if isinstance(value, tuple):
        return tuple(_own(v) for v in value)
    if isinstance(value, ca.MX | ca.SX | ca.DM | ca.Function):
        return value
    return copy.copy(value)


def fresh(ocp: Transcription) -> Transcription:
    """``ocp`` with its own copy of every mutable field (:func:`_own`)."""
    fields = {f.name: _own(getattr(ocp, f.name)) for f in dataclasses.fields(ocp)}
    return dataclasses.replace(ocp, **fields)


def transcribed(ctrl: Controller, steps: int) -> tuple[Transcription, ca.Function | None]:
    """``ctrl``'s row-scaled problem and stage root-finder (None for an ODE): built at the
    first sight of its key in this process, then copies (:func:`fresh`). ``ctrl`` must have
    its config, model, source, parameters, previous inputs, algebraic guess and schedule
    set."""
    key = controller_key(ctrl, steps)
    hit = _BUILT.get(key)
    if hit is None:
        # the RK4 steps must hold where the plan goes (ConfigError when too few)
        check_rk4_steps(ctrl.config, ctrl.model, ctrl.source, steps)
        ocp = transcribe(ctrl.config, ctrl.model, ctrl.source, steps)
        ctrl._z_root = root = stage_root(ocp, ctrl.model)
        hit = (ctrl._row_scaled(ocp), root)
        _BUILT.put(key, hit)
    return fresh(hit[0]), hit[1]


def clear() -> None:
    """Forget every problem and reference solution built in this process (tests)."""
    _BUILT.data.clear()
    _REFERENCES.data.clear()


class Referenced(Controller, Protocol):
    """What :func:`reference_first` needs of the controller (a
    :class:`~controller.core.fast_mpc.FastController`)."""

    ocp: Transcription
    cold_starts: int
    sqp_cold: ca.Function | None
    ipopt_cold: ca.Function | None
    _u_prev: np.ndarray
    _sqp_call: BufferedSolver
    _clean: Cleaner

    @property
    def schedule(self) -> object | None: ...

    def _cold_guess(self, x0: np.ndarray, p: np.ndarray) -> np.ndarray: ...

    def _parameters(self, x0: np.ndarray, p: np.ndarray) -> np.ndarray: ...

    def _args(
        self, x0: np.ndarray, lam_x0: np.ndarray, lam_g0: np.ndarray, p: np.ndarray
    ) -> dict[str, Any]: ...


#: How near the model's initial state (in each state's scale) a first step's state must be
#: for the reference solution to be tried (the freeze dryer's front: 0.05 cm of 0.69).
REFERENCE_NEAR = 0.05

#: Reference solutions by controller (:func:`controller_key`) and setpoints in force; an
#: empty tuple: its cold start did not converge (not tried again in this process).
_REFERENCES: Lru[tuple[str, tuple[float, ...]], tuple[Any, ...]] = Lru(16)


def reference_first(
    ctrl: Referenced, p_all: np.ndarray
) -> Callable[[], tuple[dict[str, Any], dict[str, Any]]] | None:
    """The first cold start of a controller's life (its batch's first solve), with
    ``solver.cold_start: sqp-ipopt``: the warm SQP from the *reference solution*, the problem
    solved cold at the model's initial state and nominal parameters with the same setpoints
    in force. None (the cold start as configured) for any later cold start, for a first one
    whose state (the head of ``p_all``) is farther than :data:`REFERENCE_NEAR` of a scale
    from the initial state (a controller taking over mid-batch: the simulated guess serves
    better), with minimum time, or when the reference's own cold start failed.

    Each case of a campaign builds its own controller and solves its first step cold from a
    problem close to every other case's (the same start, the parameters after one
    correction): ~28 ms of the freeze dryer's ~250 ms case. The reference is solved once per
    process and kept (:data:`_REFERENCES`); it depends on nothing but the configuration, the
    model and the setpoints, never on which case came first, so a case's result does not
    depend on the worker or the order it ran in. The controller that solves it does so with
    its cold-start solvers (in a campaign worker, shared with the other cases' controllers:
    :func:`controller.core.jit.shared_solvers`), so only a QP solver that keeps nothing from
    one call to the next may be used (qrqp; qpOASES hot-starts from its last QP: that
    controller's own cold path would then start elsewhere than a later one's).
    """
    sqp, ipopt, model = ctrl.sqp_cold, ctrl.ipopt_cold, ctrl.model
    if ctrl.cold_starts != 1 or ctrl.schedule is not None or sqp is None or ipopt is None:
        return None
    if ctrl.config.solver.qpsol != "qrqp":  # see below
        return None
    x0 = model.vector(Role.STATE, model.initial_state)
    near = REFERENCE_NEAR * model.scales(Role.STATE)
    if np.any(np.abs(p_all[: len(x0)] - x0) > near):  # not at the start: no use
        return None
    key = (controller_key(ctrl, ctrl.config.solver.integrator_steps), tuple(ctrl._u_prev))
    ref = _REFERENCES.get(key)
    if ref is None:
        p = model.parameter_vector()
        w = ctrl._cold_guess(x0, p)
        zeros = np.zeros_like(w), np.zeros_like(ctrl.ocp.lbg)
        sol, stats = cold_solve(sqp, ipopt, ctrl._args(w, *zeros, ctrl._parameters(x0, p)))
        ref = tuple(v.copy() for v in ctrl._clean(sol)) if stats.get("success") else ()
        _REFERENCES.put(key, ref)
    if not ref:
        return None
    w, lam_x, lam_g = (v.copy() for v in ref)
    return lambda: ctrl._sqp_call(w, lam_x, lam_g, p_all)
