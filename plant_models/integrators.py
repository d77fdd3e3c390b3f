"""The CasADi integrators of a plant model, and its do-mpc view.

Each function takes a model (a :class:`SymbolicModel`, such as
:class:`~plant_models.base.PlantModel`) and builds from its one
right-hand side (:meth:`~plant_models.base.PlantModel.evaluate_symbolic`):

* :func:`integrator`: one sample step (cvodes for ODEs, idas for DAEs) on scaled states;
* :func:`stepper`: a step of any length with inputs ramping inside it (the true plant);
* :func:`algebraic_solver`: the algebraic equations solved for ``z`` (DAEs);
* :func:`do_mpc_model`: a do-mpc ``Model`` with every parameter as ``_p``.

Values at every function's boundary are physical. Pure: no I/O.
"""

from __future__ import annotations

import math
import warnings
from typing import Any, Protocol

import casadi as ca
import numpy as np

from plant_models.errors import ModelError
from plant_models.variables import Role

__all__ = [
    "ALGEBRAIC_ABSTOL",
    "SymbolicModel",
    "algebraic_solver",
    "do_mpc_model",
    "integrator",
    "stepper",
    "stepper_integrator",
]

#: The largest residual (of the scaled algebraic equations) at which the algebraic solver's
#: Newton iteration stops, leaving its guess as it is.
ALGEBRAIC_ABSTOL = 1e-10


class SymbolicModel(Protocol):
    """What these builders need of a model (a :class:`~plant_models.base.PlantModel` is one)."""

    @property
    def name(self) -> str: ...

    @property
    def state_names(self) -> tuple[str, ...]: ...

    @property
    def algebraic_names(self) -> tuple[str, ...]: ...

    @property
    def input_names(self) -> tuple[str, ...]: ...

    @property
    def parameter_names(self) -> tuple[str, ...]: ...

    @property
    def expression_names(self) -> tuple[str, ...]: ...

    @property
    def is_dae(self) -> bool: ...

    @property
    def symbols(self) -> dict[Role, Any]: ...

    def scales(self, role: Role) -> np.ndarray: ...

    def evaluate_symbolic(self, x: Any, z: Any, u: Any, p: Any) -> tuple[Any, Any, Any, Any]: ...


def integrator(
    model: SymbolicModel, dt: float, *, rtol: float = 1e-8, atol: float = 1e-10
) -> ca.Function:
    """A CasADi integrator over one sample step ``dt`` (in ``time_unit``).

    Returns ``F(x0, z0, u, p) -> (xf, zf)`` with physical values; inside, states are
    divided by their ``scale``. cvodes for ODEs, idas for DAEs (``z0`` is only a guess:
    idas computes consistent algebraic values).
    """
    if not (math.isfinite(dt) and dt > 0):
        raise ModelError(f"model {model.name!r}: sample step must be > 0, got {dt!r}")
    s = model.symbols
    xs = ca.SX.sym("xs", len(model.state_names))
    zs = ca.SX.sym("zs", len(model.algebraic_names))
    u, p = s[Role.INPUT], s[Role.PARAMETER]
    xsc, zsc = model.scales(Role.STATE), model.scales(Role.ALGEBRAIC)
    xdot, alg, _, _ = model.evaluate_symbolic(xs * xsc, zs * zsc, u, p)
    dae: dict[str, Any] = {"x": xs, "p": ca.vertcat(u, p), "ode": xdot / xsc}
    opts: dict[str, Any] = {"reltol": rtol, "abstol": atol}
    if model.is_dae:
        dae.update(z=zs, alg=alg)
        plugin = "idas"
    else:
        plugin = "cvodes"
    raw = ca.integrator(f"{model.name}_F", plugin, dae, 0.0, float(dt), opts)
    x0, z0 = ca.MX.sym("x0", len(model.state_names)), ca.MX.sym("z0", len(model.algebraic_names))
    uu, pp = ca.MX.sym("u", len(model.input_names)), ca.MX.sym("p", len(model.parameter_names))
    call: dict[str, Any] = {"x0": x0 / xsc, "p": ca.vertcat(uu, pp)}
    if model.is_dae:
        call["z0"] = z0 / zsc
    r = raw(**call)
    zf = r["zf"] * zsc if model.is_dae else ca.MX(0, 1)
    return ca.Function(
        f"{model.name}_step",
        [x0, z0, uu, pp],
        [r["xf"] * xsc, zf],
        ["x0", "z0", "u", "p"],
        ["xf", "zf"],
    )


def stepper(
    model: SymbolicModel,
    *,
    rtol: float = 1e-8,
    atol: float = 1e-10,
    dae: ca.Function | None = None,
    grid: int = 1,
) -> ca.Function:
    """An integrator over a step of any length, with inputs ramping inside it.

    Returns ``S(x0, z0, u0, u1, p, h) -> (xf, zf)``: the exact (unclipped) equations are
    integrated over ``h`` time units while the inputs move linearly from ``u0`` to ``u1``
    (a ramp stays a ramp inside the step; ``u1 = u0`` holds them). Internally time is
    scaled to [0, 1] and states by their ``scale``; values at the boundary are physical.
    ``dae`` replaces the right-hand side by the same one in another form (the ``oracle()``
    of :func:`stepper_integrator`'s integrator, compiled: the same numbers, faster).
    With ``grid`` > 1 the step is taken in one integration with ``grid`` equal output
    intervals: ``xf`` and ``zf`` have a column per interval's end (not the numbers of
    ``grid`` separate steps: the integrator is not restarted at the interval ends).
    """
    raw = stepper_integrator(model, rtol=rtol, atol=atol, dae=dae, grid=grid)
    xsc, zsc = model.scales(Role.STATE), model.scales(Role.ALGEBRAIC)
    xsc_end = xsc if grid == 1 else ca.repmat(ca.DM(xsc), 1, grid)
    zsc_end = zsc if grid == 1 else ca.repmat(ca.DM(zsc), 1, grid)
    x0, z0 = ca.MX.sym("x0", len(model.state_names)), ca.MX.sym("z0", len(model.algebraic_names))
    a, b = ca.MX.sym("u0", len(model.input_names)), ca.MX.sym("u1", len(model.input_names))
    pp, hh = ca.MX.sym("p", len(model.parameter_names)), ca.MX.sym("h")
    call: dict[str, Any] = {"x0": x0 / xsc, "p": ca.vertcat(a, b, pp, hh)}
    if model.is_dae:
        call["z0"] = z0 / zsc
    r = raw(**call)
    zf = r["zf"] * zsc_end if model.is_dae else ca.MX(0, grid)
    return ca.Function(
        f"{model.name}_stepper",
        [x0, z0, a, b, pp, hh],
        [r["xf"] * xsc_end, zf],
        ["x0", "z0", "u0", "u1", "p", "h"],
        ["xf", "zf"],
    )


def stepper_integrator(
    model: SymbolicModel,
    *,
    rtol: float = 1e-8,
    atol: float = 1e-10,
    dae: ca.Function | None = None,
    grid: int = 1,
) -> ca.Function:
    """The CasADi integrator inside :func:`stepper`: scaled states, time scaled to [0, 1],
    ``p = [u0; u1; p; h]``. With ``dae`` (its own ``oracle()``, e.g. compiled) it is built
    on that function instead of the symbolic equations; ``grid`` equal output intervals."""
    # the caller reports a failed step itself (with the time, the inputs, the domain)
    opts: dict[str, Any] = {"reltol": rtol, "abstol": atol, "disable_internal_warnings": True}
    plugin = "idas" if model.is_dae else "cvodes"
    tout: float | list[float] = 1.0 if grid == 1 else [k / grid for k in range(1, grid + 1)]
    if dae is not None:
        return ca.integrator(f"{model.name}_S", plugin, dae, 0.0, tout, opts)
    s = model.symbols
    tau = ca.SX.sym("tau")
    xs = ca.SX.sym("xs", len(model.state_names))
    zs = ca.SX.sym("zs", len(model.algebraic_names))
    u0 = ca.SX.sym("u0", len(model.input_names))
    u1 = ca.SX.sym("u1", len(model.input_names))
    h = ca.SX.sym("h")
    p = s[Role.PARAMETER]
    xsc, zsc = model.scales(Role.STATE), model.scales(Role.ALGEBRAIC)
    u = u0 + (u1 - u0) * tau
    xdot, alg, _, _ = model.evaluate_symbolic(xs * xsc, zs * zsc, u, p)
    problem: dict[str, Any] = {"x": xs, "t": tau, "p": ca.vertcat(u0, u1, p, h)}
    problem["ode"] = h * xdot / xsc
    if model.is_dae:
        problem.update(z=zs, alg=alg)
    return ca.integrator(f"{model.name}_S", plugin, problem, 0.0, tout, opts)


def algebraic_solver(model: SymbolicModel) -> ca.Function | None:
    """``Z(z_guess, x, u, p) -> z`` solving the algebraic equations (None for ODEs)."""
    if not model.is_dae:
        return None
    s = model.symbols
    zs = ca.SX.sym("zs", len(model.algebraic_names))
    xup = ca.vertcat(s[Role.STATE], s[Role.INPUT], s[Role.PARAMETER])
    _, alg, _, _ = model.evaluate_symbolic(
        s[Role.STATE], zs * model.scales(Role.ALGEBRAIC), s[Role.INPUT], s[Role.PARAMETER]
    )
    g = ca.Function("g", [zs, xup], [alg])
    rf = ca.rootfinder(f"{model.name}_alg", "newton", g, {"abstol": ALGEBRAIC_ABSTOL})
    zg, x = ca.MX.sym("zg", len(model.algebraic_names)), ca.MX.sym("x", len(model.state_names))
    u, p = ca.MX.sym("u", len(model.input_names)), ca.MX.sym("p", len(model.parameter_names))
    zsc = model.scales(Role.ALGEBRAIC)
    zsol = rf(zg / zsc, ca.vertcat(x, u, p)) * zsc
    return ca.Function(f"{model.name}_Z", [zg, x, u, p], [zsol], ["z_guess", "x", "u", "p"], ["z"])


def do_mpc_model(model: SymbolicModel) -> Any:
    """A do-mpc continuous ``Model`` (every parameter is a ``_p`` so estimates flow in).

    All named expressions are registered as aux expressions.
    """
    with warnings.catch_warnings():  # do-mpc warns about optional extras on import
        warnings.simplefilter("ignore")
        import do_mpc

    m = do_mpc.model.Model("continuous", "SX")
    x = ca.vertcat(*[m.set_variable("_x", n) for n in model.state_names])
    z = ca.vertcat(*[m.set_variable("_z", n) for n in model.algebraic_names])
    u = ca.vertcat(*[m.set_variable("_u", n) for n in model.input_names])
    p = ca.vertcat(*[m.set_variable("_p", n) for n in model.parameter_names])
    if not model.is_dae:
        z = ca.SX(0, 1)
    xdot, alg, _, expr = model.evaluate_symbolic(x, z, u, p)
    for i, n in enumerate(model.state_names):
        m.set_rhs(n, xdot[i])
    for i in range(alg.shape[0]):
        m.set_alg(f"alg_{i}", alg[i])
    for i, n in enumerate(model.expression_names):
        m.set_expression(n, expr[i])
    m.setup()
    return m
