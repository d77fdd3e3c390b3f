"""The true plant's CasADi functions, built once per model kind in a process.

Building a model's integrator, its evaluation and its algebraic solver takes tens of
milliseconds (about 45 ms for the freeze dryer here): more than a campaign case's whole
control loop costs per sample budget. Their symbolic form depends on the model's class and its
``smooth`` flag only: parameter values enter through the ``p`` argument (the contract that
:meth:`hil.plant_runner.PlantRunner.set_parameters` relies on), and a variable's bounds, which a
parameter file may override, do not appear in them. So the plant of every case of a Monte Carlo
campaign (each with its own parameter draw) can share them.

Only the models shipped in :mod:`plant_models` are shared (their equations read parameters
from ``p`` alone; ``tests/hil/test_plant_functions.py`` checks it for each); a model from a
plugin gets its own functions, built for it. The functions are shared, never their call
buffers: each :class:`~hil.plant_runner.PlantRunner` makes its own. The shared functions run
compiled code from the runtime's library cache (:mod:`hil.plant_compiled`: the same numbers,
bit for bit), or the symbolic functions when nothing can be compiled.
"""

from __future__ import annotations

from dataclasses import dataclass

import casadi as ca

from controller.runtime.solver_cache import LibraryCache
from hil.plant_compiled import compile_plant, first_look
from plant_models import PlantModel, is_shipped

__all__ = ["PlantFunctions", "plant_functions"]


@dataclass(frozen=True)
class PlantFunctions:
    """``stepper`` (:meth:`PlantModel.stepper`), ``function`` (:attr:`PlantModel.function`),
    ``algebraic`` (:meth:`PlantModel.algebraic_solver`, None for an ODE) and the model's
    ``expression_names``, in its declaration order."""

    stepper: ca.Function
    function: ca.Function
    algebraic: ca.Function | None
    expression_names: tuple[str, ...]
    #: the algebraic solver's first look (:func:`hil.plant_compiled.first_look`), if any
    first_look: ca.Function | None = None
    #: the compiled library ``stepper`` and ``function`` run from (None: uncompiled)
    library: str | None = None


_SHARED: dict[tuple[type[PlantModel], bool], PlantFunctions] = {}


def shared(model: PlantModel) -> bool:
    """Whether ``model``'s functions are shared between instances (a shipped model)."""
    return is_shipped(model)


def plant_functions(model: PlantModel) -> PlantFunctions:
    """The functions of ``model``: the process's shared ones for a shipped model of this kind
    (built at the first call), else built for this instance."""
    key = (type(model), bool(model.smooth))
    if shared(model) and key in _SHARED:
        return _SHARED[key]
    algebraic = model.algebraic_solver()
    look = first_look(algebraic) if algebraic is not None else None
    built = PlantFunctions(model.stepper(), model.function, algebraic, model.expression_names, look)
    if shared(model):
        # compiled once per kind (hil.plant_compiled: the same numbers, bit for bit)
        done = compile_plant(model, algebraic, LibraryCache())
        if done is not None:
            built = PlantFunctions(
                done.stepper,
                done.function,
                algebraic,
                model.expression_names,
                done.first_look,
                done.library,
            )
        _SHARED[key] = built
    return built
