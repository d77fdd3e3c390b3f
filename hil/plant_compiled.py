"""The true plant's functions compiled to C, and a first look before its algebraic solves.

The true plant steps with CVODES/IDAS on the model's exact equations (``hil.plant_runner``).
Per step the integrator evaluates the right-hand side and its Jacobian dozens of times through
CasADi's virtual machine. Here those very functions (the integrator's own ``dae``, ``daeF``
and ``jacF``, and the model's evaluation ``f``) are generated as C code, compiled once into
the runtime's library cache (:class:`~controller.runtime.solver_cache.LibraryCache`) and
loaded: the integrator is rebuilt on the compiled ``dae`` and finds its derived functions in
the same library. The compiled code performs the same floating-point operations in the same
order, so the numbers are the same bit for bit (``tests/hil/test_plant_compiled.py`` checks
it against the symbolic functions; the golden masters check it end to end). When nothing can
be compiled (no C compiler) the plant runs the symbolic functions, after a logged warning.

:class:`AlgebraicStart` is the DAE plant's consistent algebraic start of every step: the
model's Newton solve, called only when needed. Newton's method stops at its first iterate,
leaving the guess as it is, when the residual there is already within its tolerance
(:data:`plant_models.integrators.ALGEBRAIC_ABSTOL`): that is a step the integrator's last
algebraic state usually is. The first look evaluates the residual with the solver's own
function; the solve itself runs only when the look finds it needed.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass

import casadi as ca
import numpy as np

from controller.core.jit import LibraryBuilder
from controller.core.prediction import BufferedFunction, c_code
from plant_models import PlantModel, is_shipped
from plant_models.integrators import ALGEBRAIC_ABSTOL, stepper, stepper_integrator

log = logging.getLogger(__name__)

__all__ = ["AlgebraicStart", "CompiledPlant", "compile_plant", "first_look"]

#: The name of the integrator's right-hand side in the library (CasADi's name for it).
DAE = "dae"


@dataclass(frozen=True)
class CompiledPlant:
    """The model's ``stepper`` and ``function`` running compiled code from ``library``,
    and the first look of its algebraic solver (None for an ODE or when unknown)."""

    stepper: ca.Function
    function: ca.Function
    first_look: ca.Function | None
    library: str


def plant_code(model: PlantModel, algebraic: ca.Function | None) -> str:
    """The C code of the stepper's integrator's functions, the model's evaluation and the
    first look of ``algebraic`` (the model's algebraic solver), in one file."""
    raw = stepper_integrator(model)
    functions = [raw.oracle(), *(raw.get_function(n) for n in raw.get_function() if n != DAE)]
    functions.append(model.function)
    look = first_look(algebraic) if algebraic is not None else None
    return c_code(functions if look is None else [*functions, look])


def compile_plant(
    model: PlantModel, algebraic: ca.Function | None, builder: LibraryBuilder
) -> CompiledPlant | None:
    """The compiled functions of ``model`` (built by ``builder``, see the module docstring);
    None, after a logged warning, when they cannot be built or loaded."""
    try:
        path = str(builder.library(plant_code(model, algebraic)))
        dae = ca.external(DAE, path)
        look = first_look(algebraic) if algebraic is not None else None
        return CompiledPlant(
            stepper(model, dae=dae),
            ca.external(model.function.name(), path),
            ca.external(look.name(), path) if look is not None else None,
            path,
        )
    except (OSError, RuntimeError) as exc:
        log.warning(
            "true plant %r: compiling its functions failed, running them uncompiled: %s",
            model.name,
            exc,
        )
        return None


def first_look(algebraic: ca.Function) -> ca.Function | None:
    """The function the Newton rootfinder inside ``algebraic`` (the model's algebraic
    solver) evaluates at every iterate: ``(zs, [x; u; p]) -> (jacobian, residual)``, scaled.
    None when ``algebraic`` is not one Newton call between the scalings (then there is no
    first look: the solve always runs)."""
    calls = [
        algebraic.instruction_MX(k).which_function()
        for k in range(algebraic.n_instructions())
        if algebraic.instruction_id(k) == ca.OP_CALL
    ]
    if len(calls) != 1 or calls[0].class_name() != "Newton":
        return None
    jacobians = [n for n in calls[0].get_function() if n.startswith("jac_")]
    return calls[0].get_function(jacobians[0]) if len(jacobians) == 1 else None


class AlgebraicStart:
    """``z`` consistent with ``x``, ``u`` and ``p`` from the guess ``z``: the algebraic
    solver's result, bit for bit, without running it when its first iterate is the answer.

    ``solver`` is the model's algebraic solver (``Z(z_guess, x, u, p) -> z``), ``look`` its
    :func:`first_look` (possibly compiled; None: always solve) and ``scales`` the algebraic
    variables' scales (the solver iterates on ``z / scales`` and returns ``scales * zs``).
    """

    def __init__(self, solver: ca.Function, look: ca.Function | None, scales: np.ndarray) -> None:
        self._solve = BufferedFunction(solver)
        self._look = BufferedFunction(look) if look is not None else None
        self._scales = np.asarray(scales, dtype=float)
        #: solves the first look spared, and solves run (for tests and profiles)
        self.spared = 0
        self.solved = 0

    def __call__(self, z: np.ndarray, x: np.ndarray, u: np.ndarray, p: np.ndarray) -> np.ndarray:
        """The solver's ``z``; RuntimeError when the solve fails (as the solver's call)."""
        if self._look is not None:
            zs = z / self._scales
            # Newton's convergence test at its first iterate: max |residual| <= abstol
            # (strictly below it: at a tie, a NaN or a failed look, the solve decides)
            if self._residual(zs, x, u, p) < ALGEBRAIC_ABSTOL:
                self.spared += 1
                return self._scales * zs
        self.solved += 1
        return self._solve(z, x, u, p)[0]

    def _residual(self, zs: np.ndarray, x: np.ndarray, u: np.ndarray, p: np.ndarray) -> float:
        """The largest absolute residual at ``zs`` (NaN when the look cannot tell)."""
        if self._look is None:
            return math.nan  # no look: it cannot tell
        try:
            residual = self._look(zs, np.concatenate((x, u, p)))[1]
        except RuntimeError:
            return math.nan
        return float(np.max(np.abs(residual))) if residual.size else math.nan


_GRIDS: dict[tuple[type[PlantModel], bool, str | None, int], ca.Function] = {}


def grid_stepper(model: PlantModel, library: str | None, grid: int) -> ca.Function:
    """:func:`plant_models.integrators.stepper` with ``grid`` output intervals, on the
    compiled right-hand side of ``library`` (None: the symbolic one); built once per model
    kind, library and grid in a process (like :func:`hil.plant_functions.plant_functions`,
    for the shipped models; a plugin's model gets its own)."""
    key = (type(model), bool(model.smooth), library, grid)
    shipped = is_shipped(model)
    if shipped and key in _GRIDS:
        return _GRIDS[key]
    dae = ca.external(DAE, library) if library is not None else None
    built = stepper(model, dae=dae, grid=grid)
    if shipped:
        _GRIDS[key] = built
    return built
