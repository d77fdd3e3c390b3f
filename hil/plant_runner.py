"""The "true plant": the same model with its own parameters, noise and disturbances.

:class:`PlantRunner` advances one sample step at a time with the model's CasADi integrator
(cvodes or idas), using the exact (non-smoothed, **unclipped**) equations, the scenario's
parameter values (plant-model mismatch), seeded Gaussian measurement noise and additive input
disturbances. It knows nothing of the controller; it sees only the inputs that are in place.

Honesty rules (validation teams file what it says as evidence):

* The state is never corrected. Operating limits (X <= 3.7 g/L, T_R <= 140 degC) are for
  constraints, checks and campaign criteria; the plant integrates through them.
* A state that leaves the model's physical validity domain (where the equations hold) is a
  plant fault: it is kept as :attr:`PlantRunner.fault` and raised as
  :class:`PlantDomainError`, naming the variable, the value and the time. So is an output or
  expression outside the model's ``expression_domain`` (the freeze dryer's Tbot > 0 degC:
  meltback), and an input, disturbance included, outside its actuator's physical range
  (``lower``/``upper``): it is not integrated, and the fault is stamped at the start of the
  piece of step that would have applied it (a ramp leaving the range inside a piece: at that
  piece's start).
* Inputs are applied exactly inside a step: a ramp (a recipe's, or a disturbance starting
  mid-step) is integrated as a ramp, not sampled at the step's start.
* The batch's natural end (the end of primary drying) is located inside the step, so its time
  is exact; from then on the plant holds its final state.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from types import MappingProxyType

import numpy as np

from controller.core.prediction import BufferedFunction
from controller.errors import ScenarioError, unknown_name
from hil.plant_ahead import Window
from hil.plant_compiled import AlgebraicStart, grid_stepper
from hil.plant_domain import Domain
from hil.plant_fault import PlantDomainError, PlantFault
from hil.plant_functions import plant_functions
from hil.scenario import Disturbance, Segment, split_at_disturbances
from plant_models import PlantModel, Role


@dataclass(frozen=True)
class PlantState:
    """The plant's true condition at one instant (physical units)."""

    t: float
    states: Mapping[str, float]
    algebraic: Mapping[str, float]
    inputs: Mapping[str, float]
    outputs: Mapping[str, float]
    expressions: Mapping[str, float]


class PlantRunner:
    """Integrates the true plant one sample at a time (time in the model's unit); with a
    ``lookahead`` > 1, held inputs over several at once (:mod:`hil.plant_ahead`)."""

    def __init__(
        self,
        model: PlantModel,
        sample_time: float,
        *,
        initial_state: Mapping[str, float] | None = None,
        noise_std: Mapping[str, float] | None = None,
        disturbances: Sequence[Disturbance] = (),
        seed: int = 0,
        t0: float = 0.0,
        initial_inputs: Mapping[str, float] | None = None,
        lookahead: int = 1,
    ) -> None:
        if not (math.isfinite(sample_time) and sample_time > 0):
            raise ScenarioError(
                f"true plant {model.name!r}: sample step must be > 0, got {sample_time!r}"
            )
        if not (isinstance(lookahead, int) and lookahead >= 1):
            raise ScenarioError(
                f"true plant {model.name!r}: lookahead must be an integer >= 1, got {lookahead!r}"
            )
        self.model = model
        self.sample_time = sample_time
        # the model's functions (built once per model kind, hil.plant_functions) called on its
        # own vectors through buffers of its own (no DM round trip); names looked up once
        fns = plant_functions(model)
        self._step, self._f = BufferedFunction(fns.stepper), BufferedFunction(fns.function)
        alg, scales = fns.algebraic, model.scales(Role.ALGEBRAIC)
        self._alg = AlgebraicStart(alg, fns.first_look, scales) if alg is not None else None
        self._names = {role: model.names(role) for role in (Role.STATE, Role.ALGEBRAIC, Role.INPUT)}
        grid = grid_stepper(model, fns.library, lookahead) if lookahead > 1 else None
        self.ahead = Window(None if grid is None else BufferedFunction(grid), lookahead)
        self._out_names, self._expr_names = model.output_names, fns.expression_names
        self._param_names = model.parameter_names
        self._has_margin = type(model).finish_margin is not PlantModel.finish_margin
        self._has_end = type(model).finished is not PlantModel.finished
        names = self._names
        self._domain = Domain(
            model, names[Role.STATE], names[Role.ALGEBRAIC], names[Role.INPUT], self._expr_names
        )
        self._p = model.parameter_vector()
        self._params = self._param_dict()  # and read-only, for the model's hooks:
        self._params_view = MappingProxyType(self._params)
        self._domain.use(self._p, self._params_view)  # its bounds that depend on them
        self._x = model.vector(Role.STATE, {**model.initial_state, **(initial_state or {})})
        self._z = model.vector(Role.ALGEBRAIC, model.initial_algebraic)
        self._u = model.vector(Role.INPUT, {**model.nominal_inputs, **(initial_inputs or {})})
        self._noise = {name: float(s) for name, s in (noise_std or {}).items() if s > 0}
        self._disturbances = tuple(disturbances)
        self._rng = np.random.default_rng(seed)
        self.t = t0
        #: the exact time of the batch's natural end, once reached (model time unit)
        self.finished_at: float | None = None
        #: the validity-domain excursion that stopped the plant, if any
        self.fault: PlantFault | None = None
        #: the true state at the exact time of the batch's natural end, once reached
        self.end_state: PlantState | None = None
        self._truth: PlantState | None = None  # the last true_state(), and its condition
        # the condition it was evaluated at: the time and the very vectors (never changed in
        # place: every step, algebraic solve and parameter change assigns new arrays)
        self._truth_key: tuple[float, np.ndarray, np.ndarray, np.ndarray, np.ndarray] | None = None
        self._margin_key: tuple[np.ndarray, np.ndarray] | None = None  # _margin_now's x, p
        self._margin_value: float | None = None
        # the outputs and expressions at the last condition looked at: (x, z, u, p), (y, expr)
        self._seen: tuple[tuple[np.ndarray, ...], tuple[np.ndarray, np.ndarray]] | None = None
        if self._alg is not None:
            self._z = self._alg(self._z, self._x, self._u, self._p)
        start = self._domain.input_violations(self._u) + self._domain.violations(
            self._x, self._z, self._outputs(self._x, self._z, self._u)[1]
        )
        if start:
            raise PlantDomainError(PlantFault(t0, model.time_unit, tuple(start)))
        margin = self._margin(self._x)
        if margin is not None and margin <= 0:
            self.finished_at = t0

    # ------------------------------------------------------------------ stepping
    def disturbed(self, inputs: Mapping[str, float], t: float) -> dict[str, float]:
        u = dict(inputs)
        for d in self._disturbances:
            if d.start <= t < d.end:
                u[d.input] = u[d.input] + d.offset
        return u

    def advance(
        self, inputs: Mapping[str, float], *, segments: Sequence[Segment] | None = None
    ) -> None:
        """Integrate one sample step.

        Without ``segments`` the ``inputs`` are held over the step. With them (an open-loop
        recipe's profile over ``[t, t + sample_time]``) the inputs follow the profile exactly.
        Disturbances switch at their own start and end times, inside the step if need be.
        Raises :class:`PlantDomainError` if a state leaves the validity domain, and
        :class:`ScenarioError` if the integrator fails.
        """
        if self.fault is not None:
            raise PlantDomainError(self.fault)
        t0, t1 = self.t, self.t + self.sample_time
        if not segments and not self._disturbances:
            # inputs held, nothing switching inside the step: the general path's arithmetic
            # (a ramp between equal ends, a zero offset) on the vector, without its dicts
            if self.finished_at is None and t1 - t0 > 0:
                v = self._inputs(inputs)
                self._check_inputs(v, v, t0)
                u = v + (v - v) * 0.0
                u = u + (u - u)
                if not self._step_ahead(u, t1 - t0):
                    self._integrate_vectors(t0, t1, u, u)
            self.t = t1
            return
        pieces = list(segments) if segments else [(t0, t1, inputs, inputs)]
        for ta, tb, ua, ub in split_at_disturbances(pieces, self._disturbances):
            if self.finished_at is not None:
                break
            self._integrate(ta, tb, ua, ub)
        self.t = t1

    def _integrate(
        self, ta: float, tb: float, ua: Mapping[str, float], ub: Mapping[str, float]
    ) -> None:
        if tb - ta <= 0:
            return
        # a disturbance active on the piece applies to its whole length (pieces are split
        # at the disturbances' edges)
        mid = 0.5 * (ta + tb)
        offsets = {n: v - ua[n] for n, v in self.disturbed(ua, mid).items() if n in ua}
        u0 = self._inputs({n: ua[n] + offsets.get(n, 0.0) for n in ua})
        u1 = self._inputs({n: ub[n] + offsets.get(n, 0.0) for n in ub})
        self._check_inputs(u0, u1, ta)
        self._integrate_vectors(ta, tb, u0, u1)

    def _check_inputs(self, u0: np.ndarray, u1: np.ndarray, t: float) -> None:
        """Inputs ramping from ``u0`` to ``u1`` from ``t`` on must lie in their physical
        range (the ends suffice for a straight line), else a plant fault at ``t``."""
        domain = self._domain
        if domain.inputs_hold(u0) and (u1 is u0 or domain.inputs_hold(u1)):
            return
        bad = u0 if not domain.inputs_hold(u0) else u1
        self.t = t  # nothing integrated with them: the state stays the one at t
        self.fault = PlantFault(t, self.model.time_unit, tuple(domain.input_violations(bad)))
        raise PlantDomainError(self.fault)

    def _integrate_vectors(self, ta: float, tb: float, u0: np.ndarray, u1: np.ndarray) -> None:
        """Integrate from ``ta`` to ``tb`` (> ``ta``), the input vectors ramping from ``u0``
        to ``u1``; locates the batch's natural end inside the piece."""
        x, z = self._solve(ta, tb - ta, u0, u1)
        margin0, margin1 = self._margin_now(), self._margin(x)
        if margin0 is not None and margin1 is not None and margin0 > 0 >= margin1:
            h = self._locate_end(tb - ta, u0, u1, margin0, margin1, ta)
            x, z = self._solve(ta, h, u0, u0 + (u1 - u0) * (h / (tb - ta)))
            tb, u1 = ta + h, u0 + (u1 - u0) * (h / (tb - ta))
            self._check_domain(x, z, u1, tb)
            self._x, self._z, self._u = x, z, u1
            self.finished_at = tb
            self.end_state = self.true_state(t=tb)
            return
        self._check_domain(x, z, u1, tb)
        self._x, self._z, self._u = x, z, u1

    def _step_ahead(self, u: np.ndarray, h: float) -> bool:
        """Take this held-input step of length ``h`` from the look-ahead window
        (:mod:`hil.plant_ahead`); False when it must be integrated on its own: no
        look-ahead, a window not worth opening or failed, or a step that crosses the batch's
        natural end or leaves the validity domain (the single step locates the end, or
        reports the fault, with its own numbers)."""
        ahead = self.ahead
        if ahead.grid is None:
            return False
        held = ahead.note(self._u, u)
        if not ahead.follows(self._x, self._p, u):
            if not ahead.worth_opening(held):
                ahead.close()
                return False
            z = self._consistent_z(self._x, self._z, u)
            if not ahead.open(self._x, z, u, self._p, h):
                return False
        got = ahead.take()
        if got is None:  # pragma: no cover - an opened window has every step
            return False
        x, z = got
        margin0, margin1 = self._margin_now(), self._margin(x)
        crosses = margin0 is not None and margin1 is not None and margin0 > 0 >= margin1
        if crosses or not self._domain.holds(x, z, self._bounded(x, z, u)):
            ahead.close()
            return False
        self._x, self._z, self._u = x, z, u
        ahead.mark(x, self._p, u)
        return True

    def _consistent_z(self, x: np.ndarray, z: np.ndarray, u0: np.ndarray) -> np.ndarray:
        """The algebraic state consistent with ``x`` and the inputs at the step's start.

        After a large input jump (a shelf from -35 to +120 degC) the previous algebraic value
        is a poor guess for the integrator's own initialisation (IDACalcIC fails); a Newton
        solve at the new inputs, from the previous value, gives it a consistent start."""
        if self._alg is None:
            return z
        try:
            zc = self._alg(z, x, u0, self._p)
        except RuntimeError:
            return z  # the integrator's own initialisation has its chance
        return zc if np.all(np.isfinite(zc)) else z

    def _solve(
        self, ta: float, h: float, u0: np.ndarray, u1: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray]:
        """Integrate ``h`` from the current state, the inputs ramping from ``u0`` to ``u1``.

        A step the integrator cannot take whole is retried in halves (down to 1/16 of it):
        the stiff last moments of a drying front or a sharp input ramp. A step that still
        fails raises :class:`ScenarioError` naming the time and the inputs."""
        return self._solve_from(self._x, self._z, ta, h, u0, u1, depth=0)

    def _solve_from(
        self,
        x: np.ndarray,
        z: np.ndarray,
        ta: float,
        h: float,
        u0: np.ndarray,
        u1: np.ndarray,
        depth: int,
    ) -> tuple[np.ndarray, np.ndarray]:
        try:
            xf, zf = self._step(x, self._consistent_z(x, z, u0), u0, u1, self._p, h)
            return xf, zf
        except RuntimeError as exc:
            # Where the equations stop holding (the front temperature reaching 0 degC: meltback)
            # the integrator fails before any state is returned: the algebraic state consistent
            # with the step's start tells whether it failed on the domain's edge.
            zc = self._consistent_z(x, z, u0)
            edge = self._domain.violations(x, zc, self._bounded(x, zc, u0))
            if edge:
                self._x, self._z, self.t = x, zc, ta
                self.fault = PlantFault(ta, self.model.time_unit, tuple(edge))
                raise PlantDomainError(self.fault) from exc
            if depth >= 4:
                raise ScenarioError(
                    f"true plant {self.model.name!r} failed to integrate at t={ta:g} "
                    f"{self.model.time_unit} (a step of {h:.3g}) with inputs "
                    f"{self.model.as_dict(Role.INPUT, u0)}: {exc}"
                ) from exc
        um = 0.5 * (u0 + u1)
        xm, zm = self._solve_from(x, z, ta, h / 2, u0, um, depth + 1)
        return self._solve_from(xm, zm, ta + h / 2, h / 2, um, u1, depth + 1)

    def _margin(self, x: np.ndarray) -> float | None:
        if not self._has_margin:  # the model has no natural end to locate
            return None
        return self.model.finish_margin(self._as_dict(Role.STATE, x), self._params_view)

    def _margin_now(self) -> float | None:
        """:meth:`_margin` of the current state, evaluated once per state and parameters
        (both are replaced, never changed in place)."""
        key = self._margin_key
        if key is None or key[0] is not self._x or key[1] is not self._p:
            self._margin_value = self._margin(self._x)
            self._margin_key = (self._x, self._p)
        return self._margin_value

    def _locate_end(
        self, h: float, u0: np.ndarray, u1: np.ndarray, m0: float, m1: float, ta: float
    ) -> float:
        """The step length at which the finish margin falls through 0 (Illinois method)."""
        lo, hi, f_lo, f_hi = 0.0, h, m0, m1
        side = 0
        for _ in range(60):
            mid = hi - f_hi * (hi - lo) / (f_hi - f_lo) if f_hi != f_lo else 0.5 * (lo + hi)
            if not lo < mid < hi:
                mid = 0.5 * (lo + hi)
            x, _ = self._solve(ta, mid, u0, u0 + (u1 - u0) * (mid / h))
            f_mid = self._margin(x)
            if f_mid is None:  # pragma: no cover - margin exists when this is called
                return mid
            if abs(f_mid) <= 1e-12 or hi - lo <= 1e-12 * max(h, 1.0):
                return mid
            if f_mid > 0:
                lo, f_lo = mid, f_mid
                if side == 1:
                    f_hi /= 2
                side = 1
            else:
                hi, f_hi = mid, f_mid
                if side == -1:
                    f_lo /= 2
                side = -1
        return hi

    def _check_domain(self, x: np.ndarray, z: np.ndarray, u: np.ndarray, t: float) -> None:
        found = self._domain.outside(x, z, self._bounded(x, z, u))
        if found:
            # keep the state the equations gave: the recording shows the excursion as it was
            self._x, self._z, self._u, self.t = x, z, u, t
            self.fault = PlantFault(t, self.model.time_unit, tuple(found))
            raise PlantDomainError(self.fault)

    def hold_step(self) -> None:
        """After the batch's end: time moves on one step, the plant holds its final state
        (nothing is integrated: the batch is over, not the physics corrected)."""
        if self.fault is not None:
            raise PlantDomainError(self.fault)
        self.t += self.sample_time

    @property
    def parameters(self) -> dict[str, float]:
        """The true plant's current parameter values (model units), as used by ``advance``."""
        return dict(self._params)

    def _param_dict(self) -> dict[str, float]:
        return dict(zip(self._param_names, self._p.tolist(), strict=True))

    def _as_dict(self, role: Role, v: np.ndarray) -> dict[str, float]:
        """A state, algebraic or input vector by name (as ``model.as_dict``)."""
        return dict(zip(self._names[role], v.tolist(), strict=True))

    def _inputs(self, values: Mapping[str, float]) -> np.ndarray:
        """The input vector in declaration order (``model.vector``'s error when one is missing)."""
        try:
            return np.array([float(values[n]) for n in self._names[Role.INPUT]], dtype=float)
        except KeyError:
            return self.model.vector(Role.INPUT, values)

    def set_parameters(self, values: Mapping[str, float]) -> None:
        """Change some of the true plant's parameters (model units) from the next ``advance``.

        Names not given keep their current values. Unknown names or non-finite values raise
        :class:`ScenarioError` naming them; nothing is changed then. A value outside the
        parameter's physical domain (:attr:`plant_models.PlantModel.parameter_domain`) is a
        plant fault (:class:`PlantDomainError`, the plant stops). The state outside a bound
        that depends on them (Lck <= Lpr0) is a fault: raised by the next ``advance``.
        """
        names = self.model.parameter_names
        unknown = sorted(set(values) - set(names))
        if unknown:
            what = "; ".join(unknown_name("parameter", n, sorted(names)) for n in unknown)
            raise ScenarioError(f"true plant {self.model.name!r}: {what}")
        bad = {n: v for n, v in values.items() if not math.isfinite(float(v))}
        if bad:
            raise ScenarioError(
                f"true plant {self.model.name!r}: parameter value(s) not finite: {bad}"
            )
        outside = self.model.parameter_violations(values)
        if outside:  # where the equations do not hold: a plant fault, never a clipped value
            self.fault = PlantFault(self.t, self.model.time_unit, tuple(outside))
            raise PlantDomainError(self.fault)
        p = self._p.copy()
        for name, value in values.items():
            p[names.index(name)] = float(value)
        self._p = p
        self._params = self._param_dict()
        self._params_view = MappingProxyType(self._params)
        self._domain.use(p, self._params_view)
        bounded = self._bounded(self._x, self._z, self._u)
        found = self._domain.outside(self._x, self._z, bounded) if self.fault is None else []
        if found:
            self.fault = PlantFault(self.t, self.model.time_unit, tuple(found))
        elif self.finished_at is None and self.finished():  # the change ended the batch
            self.finished_at, self.end_state = self.t, self.true_state()

    # ------------------------------------------------------------------ observing
    def true_state(self, t: float | None = None) -> PlantState:
        """The true state now (stamped ``t`` if given): the model evaluated at the current
        state, inputs and parameters. Evaluated once per distinct condition: a second call
        with nothing changed returns the same numbers without evaluating again."""
        key = self._truth_key
        if (
            self._truth is None
            or key is None
            or key[0] != self.t
            or key[1] is not self._x
            or key[2] is not self._z
            or key[3] is not self._u
            or key[4] is not self._p
        ):
            self._truth = self._evaluate()
            self._truth_key = (self.t, self._x, self._z, self._u, self._p)
        truth = self._truth
        if t is None or t == truth.t:
            return truth
        return PlantState(
            t, truth.states, truth.algebraic, truth.inputs, truth.outputs, truth.expressions
        )

    def _evaluate(self) -> PlantState:
        """The model's outputs and expressions at the current condition: the same call as
        :meth:`PlantModel.evaluate`, on the vectors the plant holds (no dict round trip)."""
        y, expr = self._outputs(self._x, self._z, self._u)
        return PlantState(
            self.t,
            self._as_dict(Role.STATE, self._x),
            self._as_dict(Role.ALGEBRAIC, self._z),
            self._as_dict(Role.INPUT, self._u),
            dict(zip(self._out_names, y.tolist(), strict=True)),
            dict(zip(self._expr_names, expr.tolist(), strict=True)),
        )

    def _outputs(
        self, x: np.ndarray, z: np.ndarray, u: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray]:
        """The outputs and expressions at ``x, z, u`` and the parameters in force; kept for
        the same vectors (never changed in place), so the domain's look after a step and
        the true state's evaluation of it cost one call."""
        seen = self._seen
        if seen is not None:
            k = seen[0]
            if k[0] is x and k[1] is z and k[2] is u and k[3] is self._p:
                return seen[1]
        zz = z if self._names[Role.ALGEBRAIC] else np.zeros(0)
        y, expr = self._f(x, zz, u, self._p)[2:4]
        self._seen = ((x, z, u, self._p), (y, expr))
        return y, expr

    def _bounded(self, x: np.ndarray, z: np.ndarray, u: np.ndarray) -> np.ndarray | None:
        """The expression vector at ``x, z, u`` when the model bounds some (else None)."""
        return self._outputs(x, z, u)[1] if self._domain.watches_expressions else None

    def measure(self) -> dict[str, float]:
        """Measured outputs with seeded Gaussian noise."""
        outputs = dict(self.true_state().outputs)
        for name, std in self._noise.items():
            outputs[name] += float(self._rng.normal(0.0, std))
        return outputs

    def finished(self) -> bool:
        """The batch has reached its natural end (the plant holds its final state since)."""
        if self.finished_at is not None:
            return True
        return self._has_end and self.model.finished(
            self._as_dict(Role.STATE, self._x), self._params_view
        )
