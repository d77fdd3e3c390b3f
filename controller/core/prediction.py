"""Compiled discrete-time prediction of a plant model over one sample, for the estimators.

:func:`discrete_step` turns a model into one CasADi Function of one sample,
``F(x, z_guess, u, p) -> (xf, zf, residual)``, that can be generated as C code and compiled:

* ``steps`` classic Runge-Kutta (RK4) steps of length ``dt / steps`` on scaled states
  (each state divided by its ``Variable.scale``), the inputs held or ramped linearly;
* for a DAE, the algebraic state of every RK4 stage is solved by Newton's method
  (CasADi's ``fast_newton``, which generates C code) from the previous stage's value; the
  first solve starts from ``z_guess`` *with the new input*, so a large input step (a shelf
  from -35 to +120 degC) is a Newton solve at the new input, not a consistent
  initialization from values that were consistent with the old one. ``zf`` is solved at the
  end state. Derivatives through the solves follow the implicit-function theorem (CasADi's
  automatic differentiation), so ``jacobian(xf, x)`` is exact for the discrete map;
* ``residual`` is the largest absolute algebraic residual over every solve (0 for an ODE):
  ``fast_newton`` stops silently after its iteration cap, so the caller must look at it
  (see :data:`ALGEBRAIC_TOL`);
* ``error`` estimates the step's error by taking the same sample again in twice as many
  steps (see :data:`PREDICTION_TOL`): where the model is too stiff for the fixed step, RK4
  returns finite nonsense (a CSTR started at a runaway 220 degC), and this is how it shows.

CVODES/IDAS (:meth:`plant_models.PlantModel.integrator`) stays the reference the tests check
this step against.

:func:`compiled` generates C code for Functions, has a handed-in
:class:`~controller.core.jit.LibraryBuilder` build it (the runtime's one on-disk cache of
compiled libraries; the core itself writes no file) and loads it; :class:`BufferedFunction`
calls a Function on preallocated numpy vectors.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any, cast

import casadi as ca
import numpy as np

from controller.core.jit import LibraryBuilder
from plant_models import PlantModel, Role

log = logging.getLogger(__name__)

__all__ = [
    "ALGEBRAIC_TOL",
    "PREDICTION_TOL",
    "BufferedFunction",
    "algebraic_newton",
    "c_code",
    "compiled",
    "discrete_step",
    "load",
    "uncompiled",
]

#: Largest algebraic residual (in the model's residual units) a prediction may leave.
ALGEBRAIC_TOL = 1e-6

#: Largest estimated error of a prediction, per state in units of its ``scale``.
PREDICTION_TOL = 1e-4

#: Newton iterations per algebraic solve (a warm-started stage takes one or two).
NEWTON_MAX_ITER = 60

_RK4_C = (0.0, 0.5, 0.5, 1.0)
_RK4_B = (1.0 / 6, 1.0 / 3, 1.0 / 3, 1.0 / 6)


def _scaled_model(model: PlantModel) -> tuple[ca.Function, ca.Function | None]:
    """``rhs(xs, zs, u, p) -> xdot / xsc`` and, for a DAE, ``alg(zs, [xs; u; p])``
    (``xs``, ``zs`` scaled by the variables' ``scale``)."""
    nx, nz = len(model.state_names), len(model.algebraic_names)
    nu, npar = len(model.input_names), len(model.parameter_names)
    xsc, zsc = model.scales(Role.STATE), model.scales(Role.ALGEBRAIC)
    xs, zs = ca.SX.sym("xs", nx), ca.SX.sym("zs", nz)
    u, p = ca.SX.sym("u", nu), ca.SX.sym("p", npar)
    xdot, alg, _, _ = model.function(xs * xsc, zs * zsc, u, p)
    rhs = ca.Function("rhs", [xs, zs, u, p], [xdot / xsc])
    if not nz:
        return rhs, None
    return rhs, ca.Function("alg", [zs, ca.vertcat(xs, u, p)], [alg])


def algebraic_newton(model: PlantModel, name: str = "") -> ca.Function | None:
    """``Z(z_guess, x, u, p) -> (z, residual)`` by Newton's method, C-code ready (None for
    an ODE); physical values at the boundary. ``residual`` is the largest absolute residual
    left (Newton stops silently after :data:`NEWTON_MAX_ITER` iterations)."""
    _, alg = _scaled_model(model)
    if alg is None:
        return None
    solve = _newton(model, alg, name)
    nx, nz = len(model.state_names), len(model.algebraic_names)
    xsc, zsc = model.scales(Role.STATE), model.scales(Role.ALGEBRAIC)
    zg, x = ca.MX.sym("z_guess", nz), ca.MX.sym("x", nx)
    u, p = ca.MX.sym("u", len(model.input_names)), ca.MX.sym("p", len(model.parameter_names))
    xup = ca.vertcat(x / xsc, u, p)
    zs = solve(zg / zsc, xup)
    residual = ca.norm_inf(alg(zs, xup))
    return ca.Function(
        name or f"{model.name}_newton",
        [zg, x, u, p],
        [zs * zsc, residual],
        ["z_guess", "x", "u", "p"],
        ["z", "residual"],
    )


def _newton(model: PlantModel, alg: ca.Function, name: str) -> ca.Function:
    opts = {"abstol": 1e-10, "abstolStep": 1e-12, "max_iter": NEWTON_MAX_ITER}
    return ca.rootfinder(f"{name or model.name}_z", "fast_newton", alg, opts)


def discrete_step(model: PlantModel, dt: float, steps: int, name: str = "") -> ca.Function:
    """One sample ``dt`` (model time unit) of ``steps`` RK4 steps: see the module docstring.

    ``F(x, z_guess, u, p, u_end) -> (xf, zf, residual, error)``, physical values at the
    boundary, an MX Function (a DAE's Newton solves are calls of a ``fast_newton``
    rootfinder). The inputs move linearly from ``u`` to ``u_end`` over the sample (a ramp
    stays a ramp, as in the true plant); ``u_end = u`` holds them. ``error``
    estimates the error of ``xf``: the largest difference, in units of each state's
    ``scale``, from the same sample taken in ``2 * steps`` steps (fixed-step RK4 returns
    finite nonsense where the model is too stiff for the step; this is how it shows).
    """
    if not (np.isfinite(dt) and dt > 0) or steps < 1:
        raise ValueError(f"discrete_step: need dt > 0 and steps >= 1, got {dt!r}, {steps!r}")
    rhs, alg = _scaled_model(model)
    nx, nz = len(model.state_names), len(model.algebraic_names)
    xsc, zsc = model.scales(Role.STATE), model.scales(Role.ALGEBRAIC)
    x0, zg = ca.MX.sym("x", nx), ca.MX.sym("z_guess", nz)
    u, p = ca.MX.sym("u", len(model.input_names)), ca.MX.sym("p", len(model.parameter_names))
    u_end = ca.MX.sym("u_end", len(model.input_names))
    solve = _newton(model, alg, name) if alg is not None else None
    residuals: list[Any] = []

    def z_at(xs: Any, guess: Any, ut: Any) -> Any:
        if solve is None or alg is None:
            return ca.MX(0, 1)
        xup = ca.vertcat(xs, ut, p)
        zs = solve(guess, xup)
        residuals.append(ca.norm_inf(alg(zs, xup)))
        return zs

    def rk4(xs: Any, zs: Any, n: int) -> tuple[Any, Any]:
        h = float(dt) / n
        for j in range(n):
            k: Any = None
            acc: Any = 0
            for c, b in zip(_RK4_C, _RK4_B, strict=True):
                ut = u + (u_end - u) * ((j + c) / n)
                xst = xs if k is None else xs + c * h * k
                if nz and k is not None:
                    zs = z_at(xst, zs, ut)
                k = rhs(xst, zs, ut, p)
                acc = acc + b * k
            xs = xs + h * acc
            if nz:
                zs = z_at(xs, zs, u + (u_end - u) * ((j + 1) / n))
        return xs, zs

    z0 = z_at(x0 / xsc, zg / zsc, u) if nz else ca.MX(0, 1)
    xs, zs = rk4(x0 / xsc, z0, steps)
    fine, _ = rk4(x0 / xsc, z0, 2 * steps)
    residual = ca.mmax(ca.vertcat(*residuals)) if residuals else ca.MX(0.0)
    return ca.Function(
        name or f"{model.name}_discrete_step",
        [x0, zg, u, p, u_end],
        [xs * xsc, zs * zsc if nz else ca.MX(0, 1), residual, ca.norm_inf(fine - xs)],
        ["x", "z_guess", "u", "p", "u_end"],
        ["xf", "zf", "residual", "error"],
    )


def c_code(functions: Sequence[ca.Function]) -> str:
    """The C code of ``functions``, in one file."""
    gen = ca.CodeGenerator("prediction.c")
    for fn in functions:
        gen.add(fn)
    return str(gen.dump())


def load(names: Sequence[str], path: str | Path) -> list[ca.Function]:
    """The Functions ``names`` from the compiled library ``path`` (RuntimeError when CasADi
    cannot load one)."""
    return [ca.external(name, str(path)) for name in names]


def compiled(
    functions: Sequence[ca.Function], builder: LibraryBuilder
) -> tuple[list[ca.Function], str]:
    """``functions`` compiled to C in one shared library (built by ``builder``) and loaded.

    Returns the loaded Functions and the library's path. Raises OSError (from ``builder``)
    or RuntimeError when the code cannot be built or loaded (the caller decides whether
    CasADi's virtual machine will do instead).
    """
    path = builder.library(c_code(functions))
    return load([fn.name() for fn in functions], path), str(path)


def uncompiled(what: str, exc: Exception) -> None:
    """Log that ``what``'s prediction runs uncompiled because building it failed (``exc``)."""
    log.warning("%s: compiling the prediction failed, running it uncompiled: %s", what, exc)


def compiled_or_plain(
    functions: Sequence[ca.Function], jit: bool, what: str, builder: LibraryBuilder | None = None
) -> tuple[list[ca.Function], str | None]:
    """:func:`compiled` when ``jit`` and a ``builder`` is handed in; otherwise, or on a
    failed build (a logged warning), the Functions as they are (CasADi's virtual machine:
    same results, slower). Returns the Functions and the library's path (None: uncompiled)."""
    if not jit or builder is None:
        return list(functions), None
    try:
        loaded, path = compiled(functions, builder)
    except (OSError, RuntimeError) as exc:
        uncompiled(what, exc)
        return list(functions), None
    return loaded, path


class BufferedFunction:
    """A CasADi Function called on preallocated numpy vectors (a ``FunctionBuffer``).

    ``args[i]``/``res[i]`` are the i-th input/output, flat, column-major (for a matrix) and
    written in place: a plain call converts every numpy argument to a DM and back.
    """

    def __init__(self, fn: ca.Function) -> None:
        self.fn = fn
        self.args = [np.zeros(fn.nnz_in(i)) for i in range(fn.n_in())]
        self.res = [np.zeros(fn.nnz_out(i)) for i in range(fn.n_out())]
        buf, self._eval = fn.buffer()
        self._buf = cast(Any, buf)  # CasADi's stubs miss the buffer-protocol overloads
        for i, a in enumerate(self.args):
            self._buf.set_arg(i, a.data)
        for i, r in enumerate(self.res):
            self._buf.set_res(i, r.data)

    def __call__(self, *values: Any) -> list[np.ndarray]:
        """Evaluate on ``values`` (one per input, copied in); fresh copies of the outputs.

        Raises RuntimeError when the evaluation reports a failure."""
        for a, v in zip(self.args, values, strict=True):
            # a flat vector is copied as it is; anything else (a matrix, a scalar, a list)
            # flattened column-major first (np.ravel's own cost: ~0.4 us an argument)
            if type(v) is np.ndarray and v.ndim == 1:
                a[:] = v
            else:
                a[:] = np.ravel(v, order="F")
        self._eval()
        flag = self._buf.ret()
        if flag:
            raise RuntimeError(f"{self.fn.name()}: evaluation failed (flag {flag})")
        return [r.copy() for r in self.res]
