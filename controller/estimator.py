"""State and parameter estimation on the plant model: an extended Kalman filter.

Pure computing: numpy and CasADi only, no I/O, no clocks, no asyncio.

Model
-----
:class:`ExtendedKalmanFilter` is a discrete-time EKF on the augmented state
``[x; theta]``: the model's differential states ``x`` (``model.state_names``) and the
parameters named in ``EstimatorSpec.parameters`` (``theta``), each modelled as a random walk.
Every other parameter stays fixed at its value (nominal, or as given). One call of
:meth:`ExtendedKalmanFilter.update` is one sample:

1. *predict* (skipped when ``u_applied is None``, i.e. on the first call): integrate the model
   over ``sample_time`` with ``u_applied`` held and the current parameter estimates, and
   propagate the covariance with ``A = d[xf; theta]/d[x; theta]`` (CasADi sensitivities through
   cvodes/idas);
2. *correct* with the measured outputs ``y = h(x, z, u, p)``; for DAEs ``z`` solves the
   algebraic equations at ``x``, so ``H = dh/d[x; theta]`` includes ``dz/dx``. The covariance
   update uses the Joseph form and is kept symmetric. Afterwards states are clipped into their
   physical bounds (``model.variable(name).lower/upper``) and parameters into their plausible
   range (``Parameter.lower/upper``).

The input used in ``h`` is the one in effect when ``y`` was sampled: ``u_applied``, or the last
applied input (the model's ``nominal_inputs`` before any) on the first call.

Units and shapes
----------------
Everything at the API is in physical units, in mappings keyed by variable name. Internally the
filter works in scaled coordinates: each state divided by its ``Variable.scale``, each
estimated parameter by ``|nominal|`` (half its plausible range, or 1, when the nominal is 0),
each output by its ``Variable.scale``. ``process_noise_std`` (per state and estimated
parameter, per sample), ``measurement_noise_std`` (per output) and ``initial_std`` are 1-sigma
in physical units; a name they do not give defaults to ``default_relative_std`` times the
variable's scale (states, outputs) or times the parameter's scale above.

Failure behaviour
-----------------
Every error is :class:`controller.errors.EstimatorError`; a failed ``update`` leaves the filter
unchanged.

* construction: unknown estimated parameter, unknown name in ``initial_state`` or
  ``initial_parameters``, non-finite initial value, non-positive sample time;
* ``update``: a missing measured output or input (named), a non-finite or non-numeric value
  (named, with the value); keys that are not outputs/inputs of the model are ignored;
* a CasADi failure (integrator or algebraic solver, ``RuntimeError``) or a non-finite
  prediction, raised ``from`` the cause with the model name and the time since the first
  sample.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import casadi as ca
import numpy as np
import numpy.typing as npt

from controller.config import EstimatorSpec
from controller.errors import EstimatorError
from plant_models import PlantModel, Role

__all__ = ["Estimate", "ExtendedKalmanFilter", "FullStateFeedback", "make_estimator"]

FloatArray = npt.NDArray[np.float64]


@dataclass(frozen=True)
class Estimate:
    """One estimate, all in physical units.

    ``parameters`` holds every model parameter (the estimated ones replaced by their
    estimates); ``parameter_std`` only the estimated ones. ``innovation`` is ``y - y_pred``
    per measured output (empty for full-state feedback and before the first correction),
    ``innovation_std`` its predicted standard deviation ``sqrt(diag(H P H' + R))``, so that
    ``innovation / innovation_std`` is a standard normal residual while the model holds;
    ``algebraic`` holds consistent algebraic states for DAEs (empty for ODEs).
    """

    states: Mapping[str, float]
    parameters: Mapping[str, float]
    state_std: Mapping[str, float]
    parameter_std: Mapping[str, float]
    innovation: Mapping[str, float]
    algebraic: Mapping[str, float]
    innovation_std: Mapping[str, float] = field(default_factory=dict)


# ---------------------------------------------------------------------- input checking
def _value(what: str, name: str, raw: Any, model: PlantModel) -> float:
    try:
        value = float(raw)
    except (TypeError, ValueError) as exc:
        raise EstimatorError(
            f"model {model.name!r}: {what} {name!r} is not a number: {raw!r}"
        ) from exc
    if not math.isfinite(value):
        raise EstimatorError(f"model {model.name!r}: {what} {name!r} is not finite: {value!r}")
    return value


def _vector_of(model: PlantModel, role: Role, values: Mapping[str, Any], what: str) -> FloatArray:
    """Order ``values`` as the model's ``role`` names; unknown keys are ignored."""
    names = model.names(role)
    missing = [n for n in names if n not in values]
    if missing:
        raise EstimatorError(
            f"model {model.name!r}: missing {what}(s) {missing}; expected {list(names)}"
        )
    return np.array([_value(what, n, values[n], model) for n in names], dtype=float)


def _merged(
    model: PlantModel, base: Mapping[str, float], given: Mapping[str, float] | None, what: str
) -> dict[str, float]:
    given = given or {}
    unknown = sorted(set(given) - set(base))
    if unknown:
        raise EstimatorError(
            f"model {model.name!r}: unknown {what}(s) {unknown}; known: {sorted(base)}"
        )
    return {n: _value(what, n, given.get(n, v), model) for n, v in base.items()}


def _parameter_scale(model: PlantModel, name: str) -> float:
    """``|nominal|``; for a zero nominal half the plausible range if finite, else 1."""
    p = model.parameter_set.parameters[name]
    if p.value != 0.0:
        return abs(p.value)
    half_width = (p.upper - p.lower) / 2
    return half_width if math.isfinite(half_width) and half_width > 0 else 1.0


def _solve_algebraic(
    model: PlantModel, solver: Any, z_guess: FloatArray, x: FloatArray, u: FloatArray, p: FloatArray
) -> FloatArray:
    try:
        z = np.asarray(solver(z_guess, x, u, p), dtype=float).ravel()
    except RuntimeError as exc:
        raise EstimatorError(
            f"model {model.name!r}: algebraic solver failed at x={x.tolist()}: {exc}"
        ) from exc
    if not np.all(np.isfinite(z)):
        raise EstimatorError(f"model {model.name!r}: algebraic solver gave {z.tolist()}")
    return z


# ---------------------------------------------------------------------- EKF
class ExtendedKalmanFilter:
    """Discrete EKF on ``[x; theta]``; see the module docstring for semantics and failures."""

    def __init__(
        self,
        model: PlantModel,
        spec: EstimatorSpec,
        sample_time: float,
        initial_state: Mapping[str, float] | None = None,
        initial_parameters: Mapping[str, float] | None = None,
    ) -> None:
        if not (math.isfinite(sample_time) and sample_time > 0):
            raise EstimatorError(f"model {model.name!r}: sample time must be > 0: {sample_time!r}")
        unknown = [n for n in spec.parameters if n not in model.parameter_names]
        if unknown:
            raise EstimatorError(
                f"model {model.name!r}: cannot estimate unknown parameter(s) {unknown}; "
                f"known: {list(model.parameter_names)}"
            )
        self._model, self._dt, self._time = model, float(sample_time), 0.0
        self._names = (*model.state_names, *spec.parameters)
        self._n = len(model.state_names)
        self._est_index = [model.parameter_names.index(n) for n in spec.parameters]
        params = _merged(model, model.parameters, initial_parameters, "parameter")
        states = _merged(model, model.initial_state, initial_state, "state")
        self._p = model.parameter_vector(params)
        theta_scale = np.array([_parameter_scale(model, n) for n in spec.parameters], dtype=float)
        self._scale = np.concatenate([model.scales(Role.STATE), theta_scale])
        self._y_scale = model.scales(Role.OUTPUT)
        self._lower, self._upper = self._bounds(spec)
        physical = np.concatenate([model.vector(Role.STATE, states), self._p[self._est_index]])
        self._xi = np.clip(physical, self._lower, self._upper) / self._scale
        rel = spec.default_relative_std
        self._P = np.diag((self._stds(spec.initial_std, rel, self._scale) / self._scale) ** 2)
        self._Q = np.diag((self._stds(spec.process_noise_std, rel, self._scale) / self._scale) ** 2)
        y_std = [spec.measurement_noise_std.get(n, rel * s) for n, s in self._output_scales()]
        self._R = np.diag((np.array(y_std, dtype=float) / self._y_scale) ** 2)
        self._u = model.vector(Role.INPUT, model.nominal_inputs)
        self._algebraic_solver = model.algebraic_solver()
        self._z = model.vector(Role.ALGEBRAIC, model.initial_algebraic)
        self._predict_fn, self._measure_fn = self._build_functions()
        self._innovation: dict[str, float] = {}
        self._innovation_std: dict[str, float] = {}
        if model.is_dae:
            self._z = _solve_algebraic(
                model, self._algebraic_solver, self._z, physical[: self._n], self._u, self._p
            )

    # ------------------------------------------------------------------ construction
    def _output_scales(self) -> list[tuple[str, float]]:
        return list(zip(self._model.output_names, self._y_scale.tolist(), strict=True))

    def _stds(self, given: Mapping[str, float], rel: float, scale: FloatArray) -> FloatArray:
        return np.array([given.get(n, rel * s) for n, s in zip(self._names, scale, strict=True)])

    def _bounds(self, spec: EstimatorSpec) -> tuple[FloatArray, FloatArray]:
        model = self._model
        states = [model.variable(n) for n in model.state_names]
        params = [model.parameter_set.parameters[n] for n in spec.parameters]
        lower = [v.lower for v in states] + [p.lower for p in params]
        upper = [v.upper for v in states] + [p.upper for p in params]
        return np.array(lower, dtype=float), np.array(upper, dtype=float)

    def _build_functions(self) -> tuple[ca.Function, ca.Function]:
        """``predict(xi, z, u, p) -> (xi+, A, zf)`` and ``measure(xi, z, u, p) -> (ys, H, z)``.

        ``xi`` is the scaled augmented state, ``p`` the full physical parameter vector whose
        estimated entries are replaced by ``theta`` from ``xi``; ``ys`` are scaled outputs.
        """
        model, n = self._model, self._n
        xi = ca.MX.sym("xi", len(self._names))
        z_guess = ca.MX.sym("z_guess", len(model.algebraic_names))
        u = ca.MX.sym("u", len(model.input_names))
        p_fixed = ca.MX.sym("p_fixed", len(model.parameter_names))
        phys = xi * ca.DM(self._scale)
        estimated = dict(zip(self._est_index, range(n, len(self._names)), strict=True))
        p = ca.vertcat(
            *[phys[estimated[i]] if i in estimated else p_fixed[i] for i in range(p_fixed.numel())]
        )
        x = phys[:n]
        xf, zf = model.integrator(self._dt)(x, z_guess, u, p)
        theta = xi[n:] if len(self._names) > n else ca.MX(0, 1)  # xi[n:] is 1x0 when empty
        xi_next = ca.vertcat(xf / ca.DM(self._scale[:n]), theta)
        args, names = [xi, z_guess, u, p_fixed], ["xi", "z_guess", "u", "p"]
        predict = ca.Function(
            f"{model.name}_ekf_predict",
            args,
            [xi_next, ca.jacobian(xi_next, xi), zf],
            names,
            ["xi_next", "A", "zf"],
        )
        z = (
            self._algebraic_solver(z_guess, x, u, p)
            if self._algebraic_solver is not None
            else ca.MX(0, 1)
        )
        y = model.function(x, z, u, p)[2] / ca.DM(self._y_scale)
        measure = ca.Function(
            f"{model.name}_ekf_measure", args, [y, ca.jacobian(y, xi), z], names, ["y", "H", "z"]
        )
        return predict, measure

    # ------------------------------------------------------------------ filter steps
    def _call(
        self, fn: ca.Function, what: str, xi: FloatArray, z: FloatArray, u: FloatArray
    ) -> list[FloatArray]:
        where = f"model {self._model.name!r}: {what} at t={self._time:g} {self._model.time_unit}"
        try:
            out = fn(xi, z, u, self._p)
        except RuntimeError as exc:
            raise EstimatorError(f"{where} failed: {exc}") from exc
        arrays = [np.asarray(o, dtype=float) for o in out]
        if not all(np.all(np.isfinite(a)) for a in arrays):
            states = (xi * self._scale).tolist()
            raise EstimatorError(f"{where} gave non-finite values from {states} (x; theta)")
        return arrays

    def _predict(self, u: FloatArray) -> tuple[FloatArray, FloatArray, FloatArray]:
        xi, a, zf = self._call(
            self._predict_fn,
            f"integration over {self._dt:g} {self._model.time_unit}",
            self._xi,
            self._z,
            u,
        )
        P = a @ self._P @ a.T + self._Q
        return xi.ravel(), (P + P.T) / 2, zf.ravel()

    def _correct(
        self, xi: FloatArray, P: FloatArray, z: FloatArray, u: FloatArray, y: FloatArray
    ) -> tuple[FloatArray, FloatArray, FloatArray, FloatArray, FloatArray]:
        if not len(y):
            return xi, P, z, y, y
        y_pred, H, z = self._call(self._measure_fn, "output prediction", xi, z, u)
        innovation = y / self._y_scale - y_pred.ravel()
        S = H @ P @ H.T + self._R
        innovation_std = np.sqrt(np.clip(np.diag(S), 0.0, None)) * self._y_scale
        K = np.linalg.solve(S, H @ P).T
        xi = np.clip(xi + K @ innovation, self._lower / self._scale, self._upper / self._scale)
        I_KH = np.eye(len(xi)) - K @ H
        P = I_KH @ P @ I_KH.T + K @ self._R @ K.T
        if self._model.is_dae:
            z = self._call(self._measure_fn, "algebraic solve", xi, z.ravel(), u)[2]
        return xi, (P + P.T) / 2, z.ravel(), innovation * self._y_scale, innovation_std

    def update(self, u_applied: Mapping[str, float] | None, y: Mapping[str, float]) -> Estimate:
        """Predict over one sample with ``u_applied`` (unless None), correct with ``y``."""
        model = self._model
        y_vec = _vector_of(model, Role.OUTPUT, y, "measured output")
        u = self._u if u_applied is None else _vector_of(model, Role.INPUT, u_applied, "input")
        xi, P, z, time = self._xi, self._P, self._z, self._time
        if u_applied is not None:
            xi, P, z = self._predict(u)
            time += self._dt
        xi, P, z, innovation, innovation_std = self._correct(xi, P, z, u, y_vec)
        self._xi, self._P, self._z, self._u, self._time = xi, P, z, u, time
        self._innovation = model.as_dict(Role.OUTPUT, innovation)
        self._innovation_std = model.as_dict(Role.OUTPUT, innovation_std)
        return self.estimate

    @property
    def estimate(self) -> Estimate:
        """The current estimate (the prior, before the first ``update``)."""
        model, n = self._model, self._n
        phys = self._xi * self._scale
        std = np.sqrt(np.clip(np.diag(self._P), 0.0, None)) * self._scale
        params = dict(zip(model.parameter_names, self._p.tolist(), strict=True))
        theta_names = self._names[n:]
        params.update(zip(theta_names, phys[n:].tolist(), strict=True))
        return Estimate(
            states=model.as_dict(Role.STATE, phys[:n]),
            parameters=params,
            state_std=model.as_dict(Role.STATE, std[:n]),
            parameter_std=dict(zip(theta_names, std[n:].tolist(), strict=True)),
            innovation=dict(self._innovation),
            algebraic=model.as_dict(Role.ALGEBRAIC, self._z),
            innovation_std=dict(self._innovation_std),
        )

    @property
    def time(self) -> float:
        """Time of the current estimate since the first sample, in ``model.time_unit``."""
        return self._time


# ---------------------------------------------------------------------- full state
class FullStateFeedback:
    """Pass measured states straight through (plants that measure every state, and tests).

    Parameters stay at their nominal values (or ``initial_parameters``); standard deviations
    are zero. For DAEs the algebraic states are solved at the given states and input.
    """

    def __init__(
        self,
        model: PlantModel,
        initial_parameters: Mapping[str, float] | None = None,
        initial_state: Mapping[str, float] | None = None,
    ) -> None:
        self._model = model
        self._params = _merged(model, model.parameters, initial_parameters, "parameter")
        self._u = model.vector(Role.INPUT, model.nominal_inputs)
        self._solver = model.algebraic_solver()
        self._z = model.vector(Role.ALGEBRAIC, model.initial_algebraic)
        states = _merged(model, model.initial_state, initial_state, "state")
        self._estimate = self._make(model.vector(Role.STATE, states), self._u)

    def _make(self, x: FloatArray, u: FloatArray) -> Estimate:
        model = self._model
        if self._solver is not None:
            p = model.parameter_vector(self._params)
            self._z = _solve_algebraic(model, self._solver, self._z, x, u, p)
        return Estimate(
            states=model.as_dict(Role.STATE, x),
            parameters=dict(self._params),
            state_std={n: 0.0 for n in model.state_names},
            parameter_std={},
            innovation={},
            algebraic=model.as_dict(Role.ALGEBRAIC, self._z),
        )

    def update(
        self,
        u_applied: Mapping[str, float] | None,
        y: Mapping[str, float],
        states: Mapping[str, float],
    ) -> Estimate:
        """Return ``states`` as the estimate; ``y`` is not used (kept for a uniform call)."""
        model = self._model
        x = _vector_of(model, Role.STATE, states, "state")
        u = self._u if u_applied is None else _vector_of(model, Role.INPUT, u_applied, "input")
        self._estimate = self._make(x, u)
        self._u = u
        return self._estimate

    @property
    def estimate(self) -> Estimate:
        return self._estimate


def make_estimator(
    model: PlantModel,
    spec: EstimatorSpec,
    sample_time: float,
    initial_state: Mapping[str, float] | None = None,
    initial_parameters: Mapping[str, float] | None = None,
) -> ExtendedKalmanFilter | FullStateFeedback:
    """The estimator ``spec.kind`` asks for (``ekf`` or ``full_state``)."""
    if spec.kind == "full_state":
        return FullStateFeedback(model, initial_parameters, initial_state)
    return ExtendedKalmanFilter(model, spec, sample_time, initial_state, initial_parameters)
