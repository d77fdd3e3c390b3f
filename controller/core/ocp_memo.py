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
kept then), and each campaign case has its own site file.

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
from typing import Any, Protocol

import casadi as ca
import numpy as np

from controller.config import ControllerConfig
from controller.core.fast_guess import stage_root
from controller.core.memo import Lru, model_data
from controller.core.ocp import Transcription, transcribe
from plant_models import PlantModel

__all__ = ["clear", "controller_key", "transcribed"]

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
        ocp = transcribe(ctrl.config, ctrl.model, ctrl.source, steps)
        ctrl._z_root = root = stage_root(ocp, ctrl.model)
        hit = (ctrl._row_scaled(ocp), root)
        _BUILT.put(key, hit)
    return fresh(hit[0]), hit[1]


def clear() -> None:
    """Forget every problem built in this process (tests)."""
    _BUILT.data.clear()
