"""State and parameter estimation on the plant model: an extended Kalman filter.

Pure computing: numpy and CasADi only, no clocks, no asyncio. The one exception, as in the
fast MPC, is the compiled prediction's shared library, built and cached on disk by
:class:`controller.core.fast_mpc.LibraryCache` (pass ``cache`` to choose the folder).

Model
-----
:class:`ExtendedKalmanFilter` is a discrete-time EKF on the augmented state
``[x; theta]``: the model's differential states ``x`` (``model.state_names``) and the
parameters named in ``EstimatorSpec.parameters`` (``theta``), each modelled as a random walk.
Every other parameter stays fixed at its value (nominal, or as given). One call of
:meth:`ExtendedKalmanFilter.update` is one sample:

1. *predict* (skipped when ``u_applied is None``, i.e. on the first call): the model over
   ``sample_time`` with ``u_applied`` held (or ramping linearly to ``u_end``, a recipe's
   ramp) and the current parameter estimates, and the
   covariance propagated with ``A = d[xf; theta]/d[x; theta]``. With ``prediction:
   compiled`` (the default) this is :func:`controller.core.prediction.discrete_step` (RK4 with a
   DAE's algebraic states solved by Newton at the new input), its Jacobian by automatic
   differentiation, the whole filter step generated as C code and compiled; with
   ``prediction: reference`` it is CVODES/IDAS with their sensitivities;
2. *correct* with the measured outputs ``y = h(x, z, u, p)``; for DAEs ``z`` solves the
   algebraic equations at ``x``, so ``H = dh/d[x; theta]`` includes ``dz/dx``. An output
   whose normalized innovation ``|y - y_pred| / sqrt(diag(H P H' + R))`` exceeds
   ``innovation_gate`` is *rejected*: it takes no part in this cycle's correction and is
   listed in ``Estimate.rejected`` (the caller counts, logs and records it); the gate is
   armed after the first ``innovation_gate_warmup`` corrections, and an output rejected
   ``innovation_gate_cycles`` times in a row is used again with a widened covariance
   (re-acquisition: never a filter locked out by its own gate; not ``ok`` meanwhile).
   Outputs the caller passes in ``exclude`` (bad quality) take no part either, and are not
   listed. The covariance update uses the Joseph form and is kept symmetric. Afterwards
   states are clipped into their physical bounds (``model.variable(name).lower/upper``) and
   parameters into their plausible range (``Parameter.lower/upper``).

The input used in ``h`` is the one in effect when ``y`` was sampled: ``u_end`` (default
``u_applied``), or the last applied input (the model's ``nominal_inputs`` before any) on the
first call.

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
A failure of the filter's own computing is a value, never an exception: ``update`` returns an
:class:`Estimate` with ``ok=False`` and a ``reason``. A prediction that fails (non-finite
values, or algebraic equations left unsolved) is retried with CVODES/IDAS from algebraic
states solved at the new input, then with CVODES/IDAS in :data:`RECOVERY_SUBSTEPS` substeps
(``recoveries`` counts the predictions saved so); when everything fails, the states and
parameters are held, the covariance grows by ``Q`` (a sample passed without a prediction),
the measurements correct that held state, and the next ``update`` predicts from there (a
state the model cannot leave, such as a volume of 0, is so corrected back into one it can).
The estimate of such a sample, and of a re-acquisition, is not ``ok``: the caller must not
act on it (the pipeline holds, counts and falls back after ``max_bad_cycles``).

:class:`controller.errors.EstimatorError` is raised for bad *arguments* only, and a failed
``update`` then leaves the filter unchanged:

* construction: unknown estimated parameter, unknown name in ``initial_state`` or
  ``initial_parameters``, non-finite initial value, non-positive sample time;
* ``update``: a missing measured output or input (named), a non-finite or non-numeric value
  (named, with the value), an unknown name in ``exclude``; keys of ``y`` that are not
  outputs/inputs of the model are ignored.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Collection, Mapping
from dataclasses import dataclass, field
from typing import Any

import casadi as ca
import numpy as np
import numpy.typing as npt

from controller.config import EstimatorSpec
from controller.core.fast_mpc import LibraryCache
from controller.core.prediction import (
    ALGEBRAIC_TOL,
    PREDICTION_TOL,
    BufferedFunction,
    algebraic_newton,
    compiled_or_plain,
    discrete_step,
)
from controller.errors import EstimatorError
from plant_models import PlantModel, Role

log = logging.getLogger(__name__)

__all__ = ["Estimate", "ExtendedKalmanFilter", "FullStateFeedback", "make_estimator"]

FloatArray = npt.NDArray[np.float64]

#: Substeps of the last-resort CVODES/IDAS prediction.
RECOVERY_SUBSTEPS = 10


@dataclass(frozen=True)
class Estimate:
    """One estimate, all in physical units.

    ``parameters`` holds every model parameter (the estimated ones replaced by their
    estimates); ``parameter_std`` only the estimated ones. ``innovation`` is ``y - y_pred``
    per measured output (empty for full-state feedback and before the first correction),
    ``innovation_std`` its predicted standard deviation ``sqrt(diag(H P H' + R))``, so that
    ``innovation / innovation_std`` is a standard normal residual while the model holds;
    both are given for rejected outputs too (excluded ones are left out).
    ``algebraic`` holds consistent algebraic states for DAEs (empty for ODEs).
    ``rejected``: the outputs the innovation gate kept out of this correction.
    ``ok`` is False when the estimator failed this cycle (``reason`` says why): the states
    are then the last good ones, held, and must not be acted on.
    """

    states: Mapping[str, float]
    parameters: Mapping[str, float]
    state_std: Mapping[str, float]
    parameter_std: Mapping[str, float]
    innovation: Mapping[str, float]
    algebraic: Mapping[str, float]
    innovation_std: Mapping[str, float] = field(default_factory=dict)
    rejected: tuple[str, ...] = ()
    ok: bool = True
    reason: str = ""


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


def _measured(
    model: PlantModel, y: Mapping[str, Any], exclude: Collection[str]
) -> tuple[FloatArray, FloatArray]:
    """The measured outputs (0 where excluded) and the mask of those to use (1/0)."""
    names = model.output_names
    unknown = sorted(set(exclude) - set(names))
    if unknown:
        raise EstimatorError(
            f"model {model.name!r}: cannot exclude unknown output(s) {unknown}; "
            f"outputs: {list(names)}"
        )
    if not exclude:
        return _vector_of(model, Role.OUTPUT, y, "measured output"), np.ones(len(names))
    given = {n: y[n] for n in names if n not in exclude and n in y}
    missing = [n for n in names if n not in exclude and n not in y]
    if missing:
        raise EstimatorError(
            f"model {model.name!r}: missing measured output(s) {missing}; "
            f"expected {[n for n in names if n not in exclude]} (excluded: {sorted(exclude)})"
        )
    values = [_value("measured output", n, given[n], model) if n in given else 0.0 for n in names]
    return np.array(values, dtype=float), np.array([n not in exclude for n in names], dtype=float)


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


def correction(n: int, ny: int) -> ca.Function:
    """The gated Kalman correction on scaled quantities, an SX Function.

    ``(xi, P, innovation, H, r, use, reacquire, lo, hi, gate) -> (xi+, P+, innovation_std,
    accepted, inflation)``: ``r`` holds the measurement variances, ``use`` is 1 for an output
    offered to the correction (0: excluded by the caller). An offered output is *accepted*
    when ``|innovation| <= gate * innovation_std`` with ``innovation_std = sqrt(diag(H P H'
    + r))``, or when ``reacquire`` is 1 for it; only accepted outputs correct (the rows of
    ``H`` and the innovations of the others are zeroed, which gives exactly the filter
    without them). For a re-acquired output the covariance is first widened by the factor
    ``inflation >= 1`` that brings its normalized innovation back to the gate (the filter
    had grown too sure of a state the measurement disagrees with). ``xi+`` is clipped into
    ``[lo, hi]``; ``P+`` is the Joseph form, symmetrized.
    """
    xi, P = ca.SX.sym("xi", n), ca.SX.sym("P", n, n)
    innov, H = ca.SX.sym("innovation", ny), ca.SX.sym("H", ny, n)
    r, use, reacquire = ca.SX.sym("r", ny), ca.SX.sym("use", ny), ca.SX.sym("reacquire", ny)
    lo, hi, gate = ca.SX.sym("lo", n), ca.SX.sym("hi", n), ca.SX.sym("gate")
    R = ca.diag(r)
    hph = ca.diag(H @ P @ H.T)
    std = ca.sqrt(hph + r)
    need = use * reacquire * (innov**2 / gate**2 - r) / ca.fmax(hph, 1e-300)
    inflation = ca.fmax(1.0, ca.mmax(ca.vertcat(need, 0.0)))
    accepted = use * ca.fmax(reacquire, ca.fabs(innov) <= gate * std)
    Pa = inflation * P
    Ha = ca.diag(accepted) @ H
    Sa = Ha @ Pa @ Ha.T + R
    K = ca.solve(Sa, Ha @ Pa).T
    xi_new = ca.fmin(ca.fmax(xi + K @ (accepted * innov), lo), hi)
    IKH = ca.SX.eye(n) - K @ Ha
    P_new = IKH @ Pa @ IKH.T + K @ R @ K.T
    return ca.Function(
        "ekf_correction",
        [xi, P, innov, H, r, use, reacquire, lo, hi, gate],
        [xi_new, (P_new + P_new.T) / 2, std, accepted, inflation],
        ["xi", "P", "innovation", "H", "r", "use", "reacquire", "lo", "hi", "gate"],
        ["xi_new", "P_new", "innovation_std", "accepted", "inflation"],
    )


@dataclass(frozen=True)
class _Posterior:
    """One correction's result, scaled (see :func:`correction`)."""

    xi: FloatArray
    P: FloatArray
    z: FloatArray
    innovation: FloatArray
    innovation_std: FloatArray
    accepted: FloatArray
    inflation: float


class _PredictionFailed(Exception):
    """Internal: every way of predicting failed (the message says how)."""


# ---------------------------------------------------------------------- EKF
class ExtendedKalmanFilter:
    """Discrete EKF on ``[x; theta]``; see the module docstring for semantics and failures.

    ``library`` is the compiled filter's shared library (None when not compiled);
    ``recoveries`` counts predictions saved by the CVODES/IDAS retries, ``failures`` the
    updates reported not ``ok``.
    """

    def __init__(
        self,
        model: PlantModel,
        spec: EstimatorSpec,
        sample_time: float,
        initial_state: Mapping[str, float] | None = None,
        initial_parameters: Mapping[str, float] | None = None,
        *,
        cache: LibraryCache | None = None,
    ) -> None:
        if not (math.isfinite(sample_time) and sample_time > 0):
            raise EstimatorError(f"model {model.name!r}: sample time must be > 0: {sample_time!r}")
        unknown = [n for n in spec.parameters if n not in model.parameter_names]
        if unknown:
            raise EstimatorError(
                f"model {model.name!r}: cannot estimate unknown parameter(s) {unknown}; "
                f"known: {list(model.parameter_names)}"
            )
        self._model, self._spec, self._dt, self._time = model, spec, float(sample_time), 0.0
        self._names = (*model.state_names, *spec.parameters)
        self._n = len(model.state_names)
        self._est_index = [model.parameter_names.index(n) for n in spec.parameters]
        params = _merged(model, model.parameters, initial_parameters, "parameter")
        states = _merged(model, model.initial_state, initial_state, "state")
        self._p = model.parameter_vector(params)
        theta_scale = np.array([_parameter_scale(model, n) for n in spec.parameters], dtype=float)
        self._scale = np.concatenate([model.scales(Role.STATE), theta_scale])
        self._y_scale = model.scales(Role.OUTPUT)
        lower, upper = self._bounds(spec)
        self._lo, self._hi = lower / self._scale, upper / self._scale
        physical = np.concatenate([model.vector(Role.STATE, states), self._p[self._est_index]])
        self._xi = np.clip(physical, lower, upper) / self._scale
        rel = spec.default_relative_std
        self._P = np.diag((self._stds(spec.initial_std, rel, self._scale) / self._scale) ** 2)
        self._q = (self._stds(spec.process_noise_std, rel, self._scale) / self._scale) ** 2
        y_std = [spec.measurement_noise_std.get(n, rel * s) for n, s in self._output_scales()]
        self._r = (np.array(y_std, dtype=float) / self._y_scale) ** 2
        self._gate = float(spec.innovation_gate) if spec.innovation_gate else math.inf
        self._corrections = 0  # updates that corrected (the gate is armed after the warm-up)
        self._gate_failed = np.zeros(len(model.output_names), dtype=int)  # in a row, per output
        self._u = model.vector(Role.INPUT, model.nominal_inputs)
        self._z = model.vector(Role.ALGEBRAIC, model.initial_algebraic)
        self._reference: ca.Function | None = None  # CVODES/IDAS, built on first use
        self.recoveries = 0
        self.failures = 0
        self._innovation: dict[str, float] = {}
        self._innovation_std: dict[str, float] = {}
        self._rejected: tuple[str, ...] = ()
        self._ok, self._reason = True, ""
        functions = self._build_functions()
        loaded, self.library = compiled_or_plain(
            list(functions.values()), spec.jit, f"model {model.name!r} estimator", cache
        )
        calls = {k: BufferedFunction(f) for k, f in zip(functions, loaded, strict=True)}
        self._correct_call = calls["correct"]
        self._z_call = calls.get("z_solve")
        self._step_call = calls.get("step")
        z = self._consistent(self._xi, self._z, self._u)
        if z is None:
            raise EstimatorError(
                f"model {model.name!r}: no consistent algebraic state at the initial "
                f"state {states} and inputs {model.nominal_inputs}"
            )
        self._z = z
        if "predict" in calls:
            self._check_prediction(calls["predict"])

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

    def _physical(self, xi: Any, p_fixed: Any) -> tuple[Any, Any]:
        """``(x, p)`` of a scaled augmented state: states, and the parameter vector with
        the estimated entries replaced by ``theta``."""
        n = self._n
        phys = xi * ca.DM(self._scale)
        estimated = dict(zip(self._est_index, range(n, len(self._names)), strict=True))
        p = ca.vertcat(
            *[phys[estimated[i]] if i in estimated else p_fixed[i] for i in range(p_fixed.numel())]
        )
        return phys[:n], p

    def _build_functions(self) -> dict[str, ca.Function]:
        """``correct``, ``z_solve`` (DAE), ``predict`` and ``step`` (compiled prediction).

        ``correct(xi, P, z_guess, u, p, y, use, reacquire, r, lo, hi, gate) -> (xi_new,
        P_new, z, innovation, innovation_std, accepted, inflation, residual)``; ``step``
        takes ``u_end`` after ``u`` and ``q`` after ``reacquire``, predicts over one sample
        (the inputs ramping from ``u`` to ``u_end``) and corrects at ``u_end``, and also
        returns the prediction's ``error``; ``z_solve(z_guess, x, u, p) -> (z, residual)``;
        ``predict`` is :func:`~controller.core.prediction.discrete_step`.
        ``y``, ``innovation`` and its std are scaled outputs, ``p`` the full physical
        parameter vector (estimated entries replaced by ``theta``).
        """
        model, n, nt = self._model, self._n, len(self._names)
        ny, nz = len(model.output_names), len(model.algebraic_names)
        xi, P = ca.MX.sym("xi", nt), ca.MX.sym("P", nt, nt)
        z_guess, u = ca.MX.sym("z_guess", nz), ca.MX.sym("u", len(model.input_names))
        u_end = ca.MX.sym("u_end", len(model.input_names))
        p_fixed = ca.MX.sym("p", len(model.parameter_names))
        y, use = ca.MX.sym("y", ny), ca.MX.sym("use", ny)
        q, r = ca.MX.sym("q", nt), ca.MX.sym("r", ny)
        lo, hi, gate = ca.MX.sym("lo", nt), ca.MX.sym("hi", nt), ca.MX.sym("gate")
        reacquire = ca.MX.sym("reacquire", ny)
        z_solve = algebraic_newton(model, f"{model.name}_ekf_z")

        def algebraic(x: Any, p: Any, guess: Any) -> tuple[Any, Any]:
            if z_solve is None:
                return ca.MX(0, 1), ca.MX(0.0)
            z, res = z_solve(guess, x, u, p)
            return z, res

        x, p = self._physical(xi, p_fixed)
        z, res_measure = algebraic(x, p, z_guess)
        y_pred = model.function(x, z, u, p)[2] / ca.DM(self._y_scale)
        H = ca.jacobian(y_pred, xi)
        innovation = y - y_pred
        xi_new, P_new, std, accepted, inflation = correction(nt, ny)(
            xi, P, innovation, H, r, use, reacquire, lo, hi, gate
        )
        x_new, p_new = self._physical(xi_new, p_fixed)
        z_new, res_new = algebraic(x_new, p_new, z)
        names = ["xi", "P", "z_guess", "u", "p", "y", "use", "reacquire", "r", "lo", "hi", "gate"]
        out_names = [
            "xi_new", "P_new", "z", "innovation", "innovation_std", "accepted", "inflation"
        ]  # fmt: skip
        correct = ca.Function(
            f"{model.name}_ekf_correct",
            [xi, P, z_guess, u, p_fixed, y, use, reacquire, r, lo, hi, gate],
            [
                xi_new,
                P_new,
                z_new,
                innovation,
                std,
                accepted,
                inflation,
                ca.fmax(res_measure, res_new),
            ],
            names,
            [*out_names, "residual"],
        )
        functions = {"correct": correct}
        if z_solve is not None:
            functions["z_solve"] = z_solve
        if self._spec.prediction == "compiled":
            F = discrete_step(model, self._dt, self._spec.integrator_steps, f"{model.name}_ekf_F")
            xf, zf, res_predict, error = F(x, z_guess, u, p, u_end)
            theta = xi[n:] if nt > n else ca.MX(0, 1)  # xi[n:] is 1x0 when empty
            xi_pred = ca.vertcat(xf / ca.DM(self._scale[:n]), theta)
            A = ca.jacobian(xi_pred, xi)
            P_pred = A @ P @ A.T + ca.diag(q)
            P_pred = (P_pred + P_pred.T) / 2
            out = correct(xi_pred, P_pred, zf, u_end, p_fixed, y, use, reacquire, r, lo, hi, gate)
            functions["predict"] = F
            functions["step"] = ca.Function(
                f"{model.name}_ekf_step",
                [xi, P, z_guess, u, u_end, p_fixed, y, use, reacquire, q, r, lo, hi, gate],
                [*out[:-1], ca.fmax(res_predict, out[-1]), error],
                [*names[:4], "u_end", *names[4:8], "q", *names[8:]],
                [*out_names, "residual", "error"],
            )
        if not model.is_dae:  # no Newton solves: the SX form evaluates faster
            functions = {k: f.expand() for k, f in functions.items()}
        return functions

    def _check_prediction(self, predict: BufferedFunction) -> None:
        """The compiled step against CVODES/IDAS at the plant file's initial state and
        nominal inputs and parameters.

        Raises EstimatorError when they differ by more than :data:`PREDICTION_TOL` of a
        state's scale: too few ``integrator_steps`` for the sample time, so that every
        cycle would fall back to CVODES/IDAS. Logs a warning when the reference itself
        fails there (nothing to check against).
        """
        model = self._model
        x = model.vector(Role.STATE, model.initial_state)
        z = model.vector(Role.ALGEBRAIC, model.initial_algebraic)
        u, p = model.vector(Role.INPUT, model.nominal_inputs), model.parameter_vector()
        try:
            xr = np.asarray(model.integrator(self._dt)(x, z, u, p)[0], dtype=float).ravel()
        except RuntimeError as exc:
            log.warning(
                "model %r: cannot check the compiled prediction, cvodes/idas failed at the "
                "initial state: %s", model.name, _first_line(exc),
            )  # fmt: skip
            return
        err = np.abs(predict(x, z, u, p, u)[0] - xr) / self._scale[: self._n]
        err = np.where(np.isfinite(err), err, np.inf)
        if err.max() > PREDICTION_TOL:
            raise EstimatorError(
                f"model {model.name!r}: estimator.integrator_steps = "
                f"{self._spec.integrator_steps} is too few for a sample time of {self._dt:g} "
                f"{model.time_unit}: the compiled prediction of "
                f"{model.state_names[int(err.argmax())]} differs from cvodes/idas by "
                f"{err.max():.3g} of its scale at the initial state (allowed "
                f"{PREDICTION_TOL:g}); raise it"
            )

    def _reference_predict(self) -> ca.Function:
        """CVODES/IDAS over ``h``, the inputs ramping from ``u`` to ``u_end``:
        ``(xi, z_guess, u, u_end, p, h) -> (xi_next, A, zf)`` with sensitivities (built on
        first use; :meth:`~plant_models.PlantModel.stepper`)."""
        if self._reference is not None:
            return self._reference
        model, n = self._model, self._n
        xi = ca.MX.sym("xi", len(self._names))
        z_guess = ca.MX.sym("z_guess", len(model.algebraic_names))
        u, u_end = (ca.MX.sym(k, len(model.input_names)) for k in ("u", "u_end"))
        p_fixed, h = ca.MX.sym("p_fixed", len(model.parameter_names)), ca.MX.sym("h")
        x, p = self._physical(xi, p_fixed)
        xf, zf = model.stepper()(x, z_guess, u, u_end, p, h)
        theta = xi[n:] if len(self._names) > n else ca.MX(0, 1)  # xi[n:] is 1x0 when empty
        xi_next = ca.vertcat(xf / ca.DM(self._scale[:n]), theta)
        self._reference = ca.Function(
            f"{model.name}_ekf_reference",
            [xi, z_guess, u, u_end, p_fixed, h],
            [xi_next, ca.jacobian(xi_next, xi), zf],
            ["xi", "z_guess", "u", "u_end", "p", "h"],
            ["xi_next", "A", "zf"],
        )
        return self._reference

    # ------------------------------------------------------------------ filter steps
    def _posterior(self, out: list[FloatArray]) -> _Posterior | str:
        """The outputs of ``correct``/``step`` as a posterior, or what is wrong with them
        (``step`` has one more output: the prediction's estimated error)."""
        nt = len(self._names)
        if not all(np.all(np.isfinite(o)) for o in out):
            return "non-finite values"
        if out[7][0] > ALGEBRAIC_TOL:
            return f"algebraic equations unsolved (residual {out[7][0]:.3g})"
        if len(out) > 8 and out[8][0] > PREDICTION_TOL:
            return (
                f"estimated error {out[8][0]:.3g} of a state's scale (allowed "
                f"{PREDICTION_TOL:g}): too stiff here for {self._spec.integrator_steps} RK4 steps"
            )
        xi, P, z, innovation, std, accepted = out[:6]
        return _Posterior(xi, P.reshape(nt, nt), z, innovation, std, accepted, float(out[6][0]))

    def _consistent(self, xi: FloatArray, z_guess: FloatArray, u: FloatArray) -> FloatArray | None:
        """Algebraic states consistent at ``xi`` and input ``u`` (None if Newton fails)."""
        if self._z_call is None:
            return z_guess
        x = xi[: self._n] * self._scale[: self._n]
        p = self._p.copy()
        p[self._est_index] = xi[self._n :] * self._scale[self._n :]
        try:
            z, res = self._z_call(z_guess, x, u, p)
        except RuntimeError:
            return None
        return z if np.all(np.isfinite(z)) and res[0] <= ALGEBRAIC_TOL else None

    @property
    def _armed(self) -> float:
        """The gate in force: none (inf) for the first ``innovation_gate_warmup`` corrections,
        which compare the measurements with the configured initial guess and its covariance,
        not with a prediction the filter has earned (a plant that moved before the first
        sample would be gated out, and the filter would start by holding the loop)."""
        return self._gate if self._corrections >= self._spec.innovation_gate_warmup else math.inf

    def _reacquire(self) -> FloatArray:
        """1 for an output that failed the gate ``innovation_gate_cycles`` times in a row
        (it is used again: re-acquisition), else 0."""
        return (self._gate_failed >= self._spec.innovation_gate_cycles).astype(float)

    def _correct(
        self, xi: FloatArray, P: FloatArray, z: FloatArray, u: FloatArray, y: FloatArray,
        use: FloatArray,
    ) -> _Posterior | str:  # fmt: skip
        args = (xi, P, z, u, self._p, y / self._y_scale, use, self._reacquire(), self._r)
        try:
            return self._posterior(self._correct_call(*args, self._lo, self._hi, self._armed))
        except RuntimeError as exc:
            return f"{type(exc).__name__}: {exc}"

    def _predict_reference(
        self, u: FloatArray, u_end: FloatArray
    ) -> tuple[FloatArray, FloatArray, FloatArray]:
        """``(xi, P, z)`` predicted by CVODES/IDAS, in one step or in substeps.

        The algebraic guess is first made consistent at the new input. Raises
        _PredictionFailed naming every attempt's failure."""
        z0 = self._consistent(self._xi, self._z, u)
        problems = [] if z0 is not None else ["no consistent algebraic state at the new input"]
        predict = self._reference_predict()
        for substeps in (1, RECOVERY_SUBSTEPS):
            xi, z = self._xi, self._z if z0 is None else z0
            A = np.eye(len(xi))
            ramp = [u + (u_end - u) * (i / substeps) for i in range(substeps + 1)]
            try:
                for i in range(substeps):
                    out = predict(xi, z, ramp[i], ramp[i + 1], self._p, self._dt / substeps)
                    xi_k, a, zf = (np.asarray(o, dtype=float) for o in out)
                    xi, z, A = xi_k.ravel(), zf.ravel(), a @ A
            except RuntimeError as exc:
                problems.append(f"cvodes/idas in {substeps} step(s): {_first_line(exc)}")
                continue
            if np.all(np.isfinite(xi)) and np.all(np.isfinite(A)) and np.all(np.isfinite(z)):
                P = A @ self._P @ A.T + np.diag(self._q)
                return xi, (P + P.T) / 2, z
            problems.append(f"cvodes/idas in {substeps} step(s): non-finite values")
        raise _PredictionFailed("; ".join(problems))

    def _predict_and_correct(
        self, u: FloatArray, u_end: FloatArray, y: FloatArray, use: FloatArray
    ) -> tuple[_Posterior | None, str]:
        """One sample: the compiled step, else the CVODES/IDAS retries, then the correction
        (at ``u_end``); when every prediction fails, the correction of the held state
        (``P + Q``).

        Returns the posterior (None if even the correction failed) and what went wrong
        ("" when nothing did, or when a retry saved the prediction).
        """
        problem = ""
        if self._step_call is not None:
            args = (self._xi, self._P, self._z, u, u_end, self._p, y / self._y_scale, use)
            try:
                got = self._posterior(
                    self._step_call(
                        *args, self._reacquire(), self._q, self._r, self._lo, self._hi, self._armed
                    )
                )
            except RuntimeError as exc:
                got = f"{type(exc).__name__}: {_first_line(exc)}"
            if isinstance(got, _Posterior):
                return got, ""
            problem = f"compiled prediction: {got}"
        try:
            xi, P, z = self._predict_reference(u, u_end)
        except _PredictionFailed as exc:
            failed = "; ".join(t for t in (problem, str(exc)) if t)
            xi, P, z = self._xi, self._P + np.diag(self._q), self._z
            got = self._correct(xi, P, z, u_end, y, use)
            if isinstance(got, _Posterior):
                return got, f"prediction failed ({failed}): corrected the held state"
            return None, f"prediction failed ({failed}); correction of the held state: {got}"
        got = self._correct(xi, P, z, u_end, y, use)
        if isinstance(got, _Posterior):
            self.recoveries += bool(problem)
            return got, ""
        return None, "; ".join(t for t in (problem, f"correction: {got}") if t)

    def update(
        self,
        u_applied: Mapping[str, float] | None,
        y: Mapping[str, float],
        *,
        exclude: Collection[str] = (),
        u_end: Mapping[str, float] | None = None,
    ) -> Estimate:
        """Predict over one sample with ``u_applied`` (unless None), correct with ``y``.

        ``u_end``: the inputs at the end of the sample when they ramped linearly from
        ``u_applied`` over it (a recipe ramp; default: held). ``exclude`` names outputs not
        to use this cycle (bad quality; their values may be missing or non-finite): the
        filter then rides on its prediction for them. Returns the estimate; ``ok=False``
        when the filter failed (see the module docstring).
        """
        model = self._model
        y_vec, use = _measured(model, y, exclude)
        u = self._u if u_applied is None else _vector_of(model, Role.INPUT, u_applied, "input")
        u1 = u if u_end is None else _vector_of(model, Role.INPUT, u_end, "input at the end")
        where = f"model {model.name!r} at t={self._time:g} {model.time_unit}"
        if u_applied is None:
            got = self._correct(self._xi, self._P, self._z, u1, y_vec, use)
            post, problem = (got, "") if isinstance(got, _Posterior) else (None, got)
        else:
            post, problem = self._predict_and_correct(u, u1, y_vec, use)
            self._time += self._dt
        self._u = u1
        problems = [f"estimator failed: {problem}"] if problem else []
        if post is not None:
            problems += self._accept(post, use)
        else:
            self._hold(predicted=u_applied is not None)
        self._ok = not problems
        self._reason = f"{where}: {'; '.join(problems)}" if problems else ""
        self.failures += bool(problems)
        return self.estimate

    def _accept(self, post: _Posterior, use: FloatArray) -> list[str]:
        """Take a posterior and count gate failures; returns the re-acquisitions (not ok)."""
        names = self._model.output_names
        self._xi, self._P, self._z = post.xi, post.P, post.z
        used = use > 0
        failed = used & (np.abs(post.innovation) > self._armed * post.innovation_std)
        self._corrections += 1
        reacquired = failed & (post.accepted > 0.5)
        self._gate_failed = np.where(failed, self._gate_failed + 1, 0)
        innovation = (post.innovation * self._y_scale).tolist()
        std = (post.innovation_std * self._y_scale).tolist()
        self._innovation, self._innovation_std, gated = {}, {}, []
        for name, k, v, sd, r in zip(
            names, used, innovation, std, failed & ~reacquired, strict=True
        ):
            if k:
                self._innovation[name], self._innovation_std[name] = v, sd
                if r:
                    gated.append(name)
        self._rejected = tuple(gated)
        if not reacquired.any():
            return []
        what = ", ".join(
            f"{n} ({abs(v) / sd:.3g} sigma)"
            for n, v, sd, r in zip(names, innovation, std, reacquired, strict=True)
            if r
        )
        cycles = self._spec.innovation_gate_cycles
        return [
            f"re-acquiring {what}: outside the innovation gate ({self._gate:g} sigma) for "
            f"more than {cycles} cycle(s) in a row, used again (covariance widened "
            f"x{post.inflation:.3g})"
        ]

    def _hold(self, *, predicted: bool) -> None:
        """Hold the states; a sample passed without information when ``predicted``."""
        if predicted:
            self._P = self._P + np.diag(self._q)
        self._innovation, self._innovation_std, self._rejected = {}, {}, ()

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
            rejected=self._rejected,
            ok=self._ok,
            reason=self._reason,
        )

    @property
    def time(self) -> float:
        """Time of the current estimate since the first sample, in ``model.time_unit``."""
        return self._time


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[-1] if text else type(exc).__name__


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
    *,
    cache: LibraryCache | None = None,
) -> ExtendedKalmanFilter | FullStateFeedback:
    """The estimator ``spec.kind`` asks for (``ekf``, ``mhe`` or ``full_state``); a
    :class:`~controller.core.mhe.MovingHorizonEstimator` is an ExtendedKalmanFilter."""
    if spec.kind == "full_state":
        return FullStateFeedback(model, initial_parameters, initial_state)
    if spec.kind == "mhe":
        from controller.core.mhe import MovingHorizonEstimator  # it builds on this module

        return MovingHorizonEstimator(
            model, spec, sample_time, initial_state, initial_parameters, cache=cache
        )
    return ExtendedKalmanFilter(
        model, spec, sample_time, initial_state, initial_parameters, cache=cache
    )
