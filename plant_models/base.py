"""Declarative plant models: variables with units, bounds and roles; parameters as data.

A plant model is a small class that declares its variables (states, algebraic states, inputs,
measured outputs, parameters) and writes its right-hand side once, in CasADi symbols, in the
units of its source. Parameter *values* never live in code: they come from
``configs/plants/<name>.yaml`` through :class:`ParameterSet`.

Everything here is pure: no I/O, no clocks, no networking. The variables, roles and
parameter data are declared with the types of :mod:`plant_models.variables`. The base class
turns the declaration into

* ``function``: one CasADi ``Function`` ``(x, z, u, p) -> (xdot, alg, y, expr)``;
* :meth:`PlantModel.integrator`: a one-sample-step CasADi integrator (cvodes for ODEs, idas
  for DAEs) working on scaled states, with physical values at its boundary;
* :meth:`PlantModel.do_mpc_model`: a do-mpc ``Model`` with every parameter as ``_p``

(the last ones, with :meth:`PlantModel.stepper` and :meth:`PlantModel.algebraic_solver`, are
built in :mod:`plant_models.integrators`).

Vectors are ordered as the declaration (``state_names``, ``input_names``, ...).
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from functools import cached_property
from typing import Any, ClassVar

import casadi as ca
import numpy as np

from plant_models import integrators
from plant_models.domains import Interval
from plant_models.errors import ModelError, unknown_name
from plant_models.variables import (
    SECONDS_PER_UNIT,
    DomainViolation,
    Evaluation,
    ParameterSet,
    Role,
    SymMap,
    Variable,
)

_NAMES: dict[tuple[int, Role], tuple[tuple[Variable, ...], tuple[str, ...]]] = {}
#: The shipped models' evaluation functions, by class and ``smooth`` (:attr:`function`),
#: and their expressions' names, by class (:attr:`expression_names`).
_FUNCTIONS: dict[tuple[type, bool], ca.Function] = {}
_EXPRESSION_NAMES: dict[type, tuple[str, ...]] = {}


def is_shipped(model: object) -> bool:
    """Whether ``model``'s class is one of this package's (a shipped model): made of its
    class, parameter data and ``smooth`` flag only, its equations its class's alone (the
    parameters are symbols), so what is built of them may be shared per process."""
    return type(model).__module__.split(".")[0] == __name__.split(".")[0]


def _names_of(variables: tuple[Variable, ...], role: Role) -> tuple[str, ...]:
    """The names of one role, in declaration order (declarations are class constants).

    Cached by the declaration's identity, which the cache keeps alive (a ``functools.cache``
    hashed every variable of it on every call: the control loop asks many times a cycle)."""
    hit = _NAMES.get((id(variables), role))
    if hit is not None and hit[0] is variables:
        return hit[1]
    names = tuple(v.name for v in variables if v.role is role)
    _NAMES[(id(variables), role)] = (variables, names)
    return names


class PlantModel(ABC):
    """Base class of every unit-operation model.

    Subclasses declare ``name``, ``time_unit``, ``variables`` (states, algebraics, inputs,
    outputs) and ``parameters`` (name -> unit), and implement :meth:`ode`, :meth:`outputs`
    and optionally :meth:`algebraic` and :meth:`expressions`. Symbols arrive as dicts of
    CasADi ``SX`` keyed by variable name, in physical units.
    """

    name: ClassVar[str]
    time_unit: ClassVar[str]
    description: ClassVar[str] = ""
    variables: ClassVar[tuple[Variable, ...]]
    parameter_units: ClassVar[Mapping[str, str]]
    #: the unit of every named expression (plots, KPI tables and reports label axes with it)
    expression_units: ClassVar[Mapping[str, str]] = {}
    #: where each parameter's value lets the equations hold (a parameter not named: any
    #: finite value); a value outside is refused, never clipped
    parameter_domain: ClassVar[Mapping[str, Interval]] = {}
    #: validity bounds of outputs and expressions, ``name -> (lower, upper, what it is)``:
    #: where the equations hold (the freeze dryer's frozen layer is ice, Tbot <= 0 degC);
    #: checked by :meth:`validity_violations` given the expressions' values
    expression_domain: ClassVar[Mapping[str, tuple[float, float, str]]] = {}

    def __init__(self, parameter_set: ParameterSet, *, smooth: bool = False) -> None:
        """Bind the declaration to parameter data.

        ``smooth`` asks for smooth approximations of non-smooth terms (for optimizers); the
        "true plant" uses the exact equations. Raises :class:`ModelError` when the data do
        not match the declaration (missing/unknown parameters, wrong units).
        """
        self.parameter_set = parameter_set
        self.smooth = smooth
        self._check_parameter_set()
        overrides = parameter_set.bounds
        self._vars: dict[str, Variable] = {}
        for v in self.variables:
            if v.name in overrides:
                lo, hi = overrides[v.name]
                v = Variable(v.name, v.unit, v.role, lo, hi, v.description, v.scale, v.operating)
            self._vars[v.name] = v

    # ----------------------------------------------------------------- declaration
    def _check_parameter_set(self) -> None:
        ps = self.parameter_set
        problems: list[str] = []
        if ps.model != self.name:
            problems.append(f"parameter set is for model {ps.model!r}, not {self.name!r}")
        missing = sorted(set(self.parameter_units) - set(ps.parameters))
        unknown = sorted(set(ps.parameters) - set(self.parameter_units))
        if missing:
            problems.append(f"missing parameter(s): {missing}")
        if unknown:
            problems.append(unknown_name("parameter(s)", unknown, sorted(self.parameter_units)))
        for pname, unit in self.parameter_units.items():
            p = ps.parameters.get(pname)
            if p is not None and p.unit != unit:
                problems.append(f"parameter {pname!r} has unit {p.unit!r}, expected {unit!r}")
            if p is not None and not math.isfinite(p.value):
                problems.append(f"parameter {pname!r} is not finite: {p.value!r}")
        values = {n: p.value for n, p in ps.parameters.items() if math.isfinite(p.value)}
        problems += [v.describe() for v in self.parameter_violations(values)]
        names = {v.name for v in self.variables}
        for key, group in (
            ("initial_state", ps.initial_state),
            ("nominal_inputs", ps.nominal_inputs),
        ):
            for vname in group:
                if vname not in names:
                    problems.append(f"{key}: {unknown_name('variable', vname, sorted(names))}")
        for vname in ps.bounds:
            if vname not in names:
                problems.append(f"bounds: {unknown_name('variable', vname, sorted(names))}")
        if set(ps.initial_state) != set(self.names(Role.STATE)):
            problems.append(
                f"initial_state must give every state {list(self.names(Role.STATE))}, "
                f"got {sorted(ps.initial_state)}"
            )
        if set(ps.nominal_inputs) != set(self.names(Role.INPUT)):
            problems.append(
                f"nominal_inputs must give every input {list(self.names(Role.INPUT))}, "
                f"got {sorted(ps.nominal_inputs)}"
            )
        if problems:
            raise ModelError(f"{ps.source}: " + "; ".join(problems))

    @classmethod
    def parameter_violations(cls, values: Mapping[str, float]) -> list[DomainViolation]:
        """The parameters of ``values`` outside their :attr:`parameter_domain`."""
        domain, units = cls.parameter_domain, cls.parameter_units
        return [
            DomainViolation(n, float(v), iv.lower, iv.upper, units.get(n, ""), rule=iv.describe())
            for n, v in values.items()
            if (iv := domain.get(n)) is not None and not iv.contains(float(v))
        ]

    @property
    def seconds_per_unit(self) -> float:
        """Seconds in one ``time_unit`` (ModelError for an unknown unit)."""
        try:
            return SECONDS_PER_UNIT[self.time_unit]
        except KeyError as exc:
            known = list(SECONDS_PER_UNIT)
            raise ModelError(
                f"model {self.name!r}: {unknown_name('time unit', self.time_unit, known)}"
            ) from exc

    @classmethod
    def names(cls, role: Role) -> tuple[str, ...]:
        return _names_of(cls.variables, role)

    @property
    def state_names(self) -> tuple[str, ...]:
        return self.names(Role.STATE)

    @property
    def algebraic_names(self) -> tuple[str, ...]:
        return self.names(Role.ALGEBRAIC)

    @property
    def input_names(self) -> tuple[str, ...]:
        return self.names(Role.INPUT)

    @property
    def output_names(self) -> tuple[str, ...]:
        return self.names(Role.OUTPUT)

    @property
    def parameter_names(self) -> tuple[str, ...]:
        return tuple(self.parameter_units)

    @property
    def is_dae(self) -> bool:
        return bool(self.algebraic_names)

    def variable(self, name: str) -> Variable:
        try:
            return self._vars[name]
        except KeyError as exc:
            known = sorted(self._vars)
            raise ModelError(
                f"model {self.name!r}: {unknown_name('variable', name, known)}"
            ) from exc

    def unit_of(self, name: str) -> str:
        """The unit of a variable, expression or parameter (``""`` if the name is unknown)."""
        if name in self._vars:
            return self._vars[name].unit
        if name in self.expression_units:
            return self.expression_units[name]
        return self.parameter_units.get(name, "")

    def label(self, name: str) -> str:
        """``name [unit]`` for an axis or a table column (just ``name`` when unitless)."""
        unit = self.unit_of(name)
        return f"{name} [{unit}]" if unit else name

    @property
    def all_variables(self) -> Mapping[str, Variable]:
        return dict(self._vars)

    def scales(self, role: Role) -> np.ndarray:
        return np.array([self._vars[n].scale for n in self.names(role)], dtype=float)

    @property
    def parameters(self) -> dict[str, float]:
        return self.parameter_set.values()

    def parameter_vector(self, values: Mapping[str, float] | None = None) -> np.ndarray:
        merged = {**self.parameters, **(values or {})}
        return np.array([merged[n] for n in self.parameter_names], dtype=float)

    def vector(self, role: Role, values: Mapping[str, float]) -> np.ndarray:
        """Order a mapping as the declaration; raises ModelError naming missing entries.

        Called on the control loop's every cycle: the names are cached, and the missing ones
        are looked for only when one is missing."""
        names = self.names(role)
        try:
            return np.array([float(values[n]) for n in names], dtype=float)
        except KeyError:
            missing = [n for n in names if n not in values]
            raise ModelError(
                f"model {self.name!r}: missing {role.value} value(s) {missing}"
            ) from None

    def as_dict(self, role: Role, vector: Sequence[float] | np.ndarray) -> dict[str, float]:
        arr = np.asarray(vector, dtype=float).ravel()
        return {n: float(v) for n, v in zip(self.names(role), arr, strict=True)}

    @property
    def initial_state(self) -> dict[str, float]:
        return dict(self.parameter_set.initial_state)

    @property
    def nominal_inputs(self) -> dict[str, float]:
        return dict(self.parameter_set.nominal_inputs)

    @property
    def initial_algebraic(self) -> dict[str, float]:
        base = {n: 0.0 for n in self.algebraic_names}
        return {**base, **self.parameter_set.initial_algebraic}

    # ----------------------------------------------------------------- equations
    @abstractmethod
    def ode(self, x: SymMap, z: SymMap, u: SymMap, p: SymMap) -> dict[str, Any]:
        """Time derivatives of every state, in state units per ``time_unit``."""

    def algebraic(self, x: SymMap, z: SymMap, u: SymMap, p: SymMap) -> list[Any]:
        """Residuals of the algebraic equations (0 = r); one per algebraic state."""
        return []

    @abstractmethod
    def outputs(self, x: SymMap, z: SymMap, u: SymMap, p: SymMap) -> dict[str, Any]:
        """Measured outputs, keyed by output name."""

    def expressions(self, x: SymMap, z: SymMap, u: SymMap, p: SymMap) -> dict[str, Any]:
        """Named expressions usable in objectives, constraints and KPIs (outputs included)."""
        return {}

    def finished(self, x: Mapping[str, float], p: Mapping[str, float]) -> bool:
        """Whether the batch has reached its natural end (e.g. primary drying complete)."""
        return False

    # ----------------------------------------------------------------- CasADi views
    @cached_property
    def symbols(self) -> dict[Role, Any]:
        return {
            Role.STATE: ca.SX.sym("x", len(self.state_names)),
            Role.ALGEBRAIC: ca.SX.sym("z", len(self.algebraic_names)),
            Role.INPUT: ca.SX.sym("u", len(self.input_names)),
            Role.PARAMETER: ca.SX.sym("p", len(self.parameter_names)),
        }

    def _split(self, role: Role, vec: Any) -> dict[str, Any]:
        names = self.parameter_names if role is Role.PARAMETER else self.names(role)
        return {n: vec[i] for i, n in enumerate(names)}

    def evaluate_symbolic(self, x: Any, z: Any, u: Any, p: Any) -> tuple[Any, Any, Any, Any]:
        """(xdot, alg, y, expr) as CasADi column vectors for the given symbol vectors."""
        xd, zd = self._split(Role.STATE, x), self._split(Role.ALGEBRAIC, z)
        ud, pd = self._split(Role.INPUT, u), self._split(Role.PARAMETER, p)
        rhs = self.ode(xd, zd, ud, pd)
        missing = [n for n in self.state_names if n not in rhs]
        if missing:
            raise ModelError(f"model {self.name!r}: ode() gives no derivative for {missing}")
        xdot = ca.vertcat(*[rhs[n] for n in self.state_names])
        alg = self.algebraic(xd, zd, ud, pd)
        y = self.outputs(xd, zd, ud, pd)
        expr = {**y, **self.expressions(xd, zd, ud, pd)}
        return (
            xdot,
            ca.vertcat(*alg) if alg else ca.SX(0, 1),
            ca.vertcat(*[y[n] for n in self.output_names]) if y else ca.SX(0, 1),
            ca.vertcat(*expr.values()) if expr else ca.SX(0, 1),
        )

    @cached_property
    def expression_names(self) -> tuple[str, ...]:
        """The outputs' and expressions' names, in order: a shipped model's (of this
        package) once per class and process, any other model's for the instance."""
        shared = is_shipped(self)
        hit = _EXPRESSION_NAMES.get(type(self)) if shared else None
        if hit is None:
            hit = self._expression_names()
            if shared:
                _EXPRESSION_NAMES[type(self)] = hit
        return hit

    def _expression_names(self) -> tuple[str, ...]:
        s = self.symbols
        xd, zd = (
            self._split(Role.STATE, s[Role.STATE]),
            self._split(Role.ALGEBRAIC, s[Role.ALGEBRAIC]),
        )
        ud, pd = (
            self._split(Role.INPUT, s[Role.INPUT]),
            self._split(Role.PARAMETER, s[Role.PARAMETER]),
        )
        y = self.outputs(xd, zd, ud, pd)
        return tuple({**y, **self.expressions(xd, zd, ud, pd)})

    @cached_property
    def function(self) -> ca.Function:
        """``f(x, z, u, p) -> (xdot, alg, y, expr)`` in physical units.

        A shipped model's (of this package) depends on its class and ``smooth`` alone (the
        parameters are its input ``p``): built once per process for each (:data:`_FUNCTIONS`;
        a campaign builds a model per case). Any other model's is built for the instance."""
        shared = is_shipped(self)
        key = (type(self), bool(self.smooth))
        if shared and key in _FUNCTIONS:
            return _FUNCTIONS[key]
        s = self.symbols
        args = [s[Role.STATE], s[Role.ALGEBRAIC], s[Role.INPUT], s[Role.PARAMETER]]
        outs = self.evaluate_symbolic(*args)
        built = ca.Function(
            f"{self.name}_f", args, list(outs), ["x", "z", "u", "p"], ["xdot", "alg", "y", "expr"]
        )
        if shared:
            _FUNCTIONS[key] = built
        return built

    def evaluate(
        self,
        x: Mapping[str, float],
        u: Mapping[str, float],
        z: Mapping[str, float] | None = None,
        p: Mapping[str, float] | None = None,
    ) -> Evaluation:
        """Evaluate the model numerically at one point (physical units)."""
        zz = z if z is not None else self.initial_algebraic
        res = self.function(
            self.vector(Role.STATE, x),
            self.vector(Role.ALGEBRAIC, zz) if self.is_dae else np.zeros(0),
            self.vector(Role.INPUT, u),
            self.parameter_vector(p),
        )
        xdot, alg, y, expr = (np.asarray(r, dtype=float).ravel() for r in res)
        return Evaluation(
            xdot=dict(zip(self.state_names, map(float, xdot), strict=True)),
            alg=[float(a) for a in alg],
            outputs=dict(zip(self.output_names, map(float, y), strict=True)),
            expressions=dict(zip(self.expression_names, map(float, expr), strict=True)),
        )

    def integrator(self, dt: float, *, rtol: float = 1e-8, atol: float = 1e-10) -> ca.Function:
        """A CasADi integrator over one sample step ``dt`` (in ``time_unit``):
        ``F(x0, z0, u, p) -> (xf, zf)``; see :func:`plant_models.integrators.integrator`."""
        return integrators.integrator(self, dt, rtol=rtol, atol=atol)

    def stepper(self, *, rtol: float = 1e-8, atol: float = 1e-10) -> ca.Function:
        """An integrator over a step of any length with ramping inputs:
        ``S(x0, z0, u0, u1, p, h) -> (xf, zf)``; see :func:`plant_models.integrators.stepper`."""
        return integrators.stepper(self, rtol=rtol, atol=atol)

    def algebraic_solver(self) -> ca.Function | None:
        """``Z(z_guess, x, u, p) -> z`` solving the algebraic equations (None for ODEs)."""
        return integrators.algebraic_solver(self)

    def do_mpc_model(self) -> Any:
        """A do-mpc continuous ``Model`` (every parameter is a ``_p`` so estimates flow in)."""
        return integrators.do_mpc_model(self)

    def state_bounds(self, p: Mapping[str, float]) -> dict[str, tuple[float, float, str]]:
        """Validity bounds of states that depend on the parameters ``p`` (all of them, by name).

        ``name -> (lower, upper, what the bound is)``; :meth:`validity_violations`, given the
        parameters, checks them together with the variable's ``lower/upper`` (they can only
        narrow the domain: the freeze dryer's dried cake is at most as thick as the frozen
        product was). None by default.
        """
        return {}

    def validity_violations(
        self,
        states: Mapping[str, float],
        algebraic: Mapping[str, float] | None = None,
        parameters: Mapping[str, float] | None = None,
        *,
        inputs: Mapping[str, float] | None = None,
        expressions: Mapping[str, float] | None = None,
    ) -> list[DomainViolation]:
        """States, algebraic states and inputs outside the physical validity domain
        (``lower/upper``; an input's is its actuator's physical range), and outputs or
        expressions outside :attr:`expression_domain` (those named in ``expressions``).

        With ``parameters`` (every parameter, by name), the bounds that depend on them
        (:meth:`state_bounds`) are checked too. A margin of 1e-6 of each variable's scale
        absorbs the integrator's round-off (a substrate at -1e-12 g/L is not a fault);
        anything beyond it is reported, never corrected. Operating limits are not looked at
        here.
        """
        found: list[DomainViolation] = []
        tight = self.state_bounds(parameters) if parameters is not None else {}
        for values in (states, algebraic or {}, inputs or {}):
            for name, value in values.items():
                v = self._vars[name]
                lo, hi, note = tight.get(name, (v.lower, v.upper, ""))
                if v.role is Role.INPUT:
                    note = "the actuator's physical range"
                lower, upper = max(lo, v.lower), min(hi, v.upper)  # never wider than the static
                tol = 1e-6 * v.scale
                if not math.isfinite(value) or value < lower - tol or value > upper + tol:
                    # the note names the parameter bound only when it is the one crossed
                    crossed = (value < lower and lower == lo) or (value > upper and upper == hi)
                    why = note if crossed else ""
                    found.append(DomainViolation(name, float(value), lower, upper, v.unit, why))
        for name, (lower, upper, note) in self.expression_domain.items():
            got = (expressions or {}).get(name)
            var = self._vars.get(name)
            tol = 1e-6 * (var.scale if var is not None else 1.0)
            if got is not None and not lower - tol <= got <= upper + tol:
                found.append(
                    DomainViolation(name, float(got), lower, upper, self.unit_of(name), note)
                )
        return found

    def finish_margin(self, x: Mapping[str, float], p: Mapping[str, float]) -> float | None:
        """How far the batch is from its natural end, as a number that falls through 0 there.

        ``None`` for models without such an event. The true plant locates the zero inside a
        step, so the end time is exact, not rounded to a sample.
        """
        return None
