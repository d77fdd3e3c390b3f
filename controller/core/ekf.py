"""State and parameter estimation on the plant model: an extended Kalman filter.

Pure computing: numpy and CasADi only, no clocks, no asyncio, no files. The filter's
CasADi functions (:mod:`controller.core.ekf_model`) are compiled when the caller hands in a
:class:`controller.core.jit.LibraryBuilder` (``compile``) and ``EstimatorSpec.jit`` is on;
otherwise they run uncompiled (same results, slower).

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
   parameters into their plausible range (``Parameter.lower/upper``). A corrected estimate
   still outside the model's validity domain (an algebraic state beyond its bounds, or a
   state beyond a bound that depends on the parameters, :meth:`PlantModel.state_bounds`:
   the freeze dryer's cake thicker than the frozen product was) is kept, never corrected
   to fit, and reported not ``ok``: the model's equations do not hold there, so nothing may
   be computed from it.

The input used in ``h`` is the one in effect when ``y`` was sampled: ``u_end`` (default
``u_applied``), or the last applied input (the model's ``nominal_inputs`` before any) on the
first call.

Everything at the API is in physical units, in mappings keyed by variable name; the scaled
coordinates inside are described in :mod:`controller.core.ekf_model`.

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
from dataclasses import dataclass

import casadi as ca
import numpy as np

from controller.config import EstimatorSpec
from controller.core.ekf_memo import built_filter, mark_checked, was_checked
from controller.core.ekf_model import (
    AugmentedState,
    check_prediction,
    covariances,
    first_line,
    reference_step,
)
from controller.core.estimate import Estimate, FloatArray
from controller.core.jit import LibraryBuilder
from controller.core.named_values import measured, merged, vector_of
from controller.core.prediction import (
    ALGEBRAIC_TOL,
    PREDICTION_TOL,
    BufferedFunction,
)
from controller.errors import EstimatorError, unknown_name
from plant_models import PlantModel, Role

log = logging.getLogger(__name__)

__all__ = ["ExtendedKalmanFilter"]

#: Substeps of the last-resort CVODES/IDAS prediction.
RECOVERY_SUBSTEPS = 10


@dataclass(frozen=True)
class _Posterior:
    """One correction's result, scaled (see :func:`controller.core.ekf_model.correction`)."""

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

    ``sample_time`` is in the model's time unit; ``compile`` builds the compiled filter's
    library (None: uncompiled). ``library`` is the compiled filter's shared library (None
    when not compiled); ``recoveries`` counts predictions saved by the CVODES/IDAS retries,
    ``failures`` the updates reported not ``ok``.
    """

    def __init__(
        self,
        model: PlantModel,
        spec: EstimatorSpec,
        sample_time: float,
        initial_state: Mapping[str, float] | None = None,
        initial_parameters: Mapping[str, float] | None = None,
        *,
        compile: LibraryBuilder | None = None,
    ) -> None:
        if not (math.isfinite(sample_time) and sample_time > 0):
            raise EstimatorError(f"model {model.name!r}: sample time must be > 0: {sample_time!r}")
        unknown = [n for n in spec.parameters if n not in model.parameter_names]
        if unknown:
            raise EstimatorError(
                f"model {model.name!r}: cannot estimate "
                + "; ".join(unknown_name("parameter", n, model.parameter_names) for n in unknown)
            )
        self._model, self._spec, self._dt, self._time = model, spec, float(sample_time), 0.0
        self._aug = aug = AugmentedState.of(model, spec)
        self._names, self._n, self._est_index = aug.names, aug.n, aug.est_index
        self._role_names = (model.state_names, model.algebraic_names, model.parameter_names)
        self._scale, self._y_scale = aug.scale, aug.y_scale
        params = merged(model, model.parameters, initial_parameters, "parameter")
        states = merged(model, model.initial_state, initial_state, "state")
        self._p = model.parameter_vector(params)
        lower, upper = aug.bounds()
        self._lo, self._hi = lower / self._scale, upper / self._scale
        physical = np.concatenate([model.vector(Role.STATE, states), self._p[self._est_index]])
        self._xi = np.clip(physical, lower, upper) / self._scale
        self._P, self._q, self._r = covariances(aug, spec)
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
        build = built_filter(aug, spec, self._dt, compile)  # once per configuration
        self.library = build.library
        calls = {k: BufferedFunction(f) for k, f in build.functions.items()}
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
        if "predict" in calls and not was_checked(build):
            check_prediction(aug, spec, self._dt, calls["predict"])
            mark_checked(build)

    # ------------------------------------------------------------------ filter steps
    def _posterior(self, out: list[FloatArray]) -> _Posterior | str:
        """The outputs of ``correct``/``step`` as a posterior, or what is wrong with them
        (``step`` has one more output: the prediction's estimated error)."""
        nt = len(self._names)
        if not np.isfinite(np.concatenate(out)).all():  # one look at every output
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
        if self._reference is None:
            self._reference = reference_step(self._aug)
        predict = self._reference
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
                problems.append(f"cvodes/idas in {substeps} step(s): {first_line(exc)}")
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
                got = f"{type(exc).__name__}: {first_line(exc)}"
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
        states: Mapping[str, float] | None = None,
        *,
        exclude: Collection[str] = (),
        u_end: Mapping[str, float] | None = None,
    ) -> Estimate:
        """Predict over one sample with ``u_applied`` (unless None), correct with ``y``.

        The step of every estimator (:class:`controller.core.estimate.Estimator`):
        ``states`` (a measured full state) is not used by the filter. ``u_end``: the
        inputs at the end of the sample when they ramped linearly from ``u_applied`` over
        it (a recipe ramp; default: held). ``exclude`` names outputs not to use this cycle
        (bad quality; their values may be missing or non-finite): the filter then rides on
        its prediction for them. Returns the estimate; ``ok=False`` when the filter failed
        (see the module docstring).
        """
        model = self._model
        y_vec, use = measured(model, y, exclude)
        u = self._u if u_applied is None else vector_of(model, Role.INPUT, u_applied, "input")
        u1 = u if u_end is None else vector_of(model, Role.INPUT, u_end, "input at the end")
        t = self._time  # the time the problems below are reported at
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
            problems += self._outside_domain()
        else:
            self._hold(predicted=u_applied is not None)
        self._ok = not problems
        where = f"model {model.name!r} at t={t:g} {model.time_unit}" if problems else ""
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

    def _outside_domain(self) -> list[str]:
        """The posterior's states and algebraic states outside the model's validity domain,
        its bounds that depend on the (estimated) parameters included; each is a problem."""
        model, n = self._model, self._n
        phys = (self._xi * self._scale).tolist()
        params = dict(zip(model.parameter_names, self._p.tolist(), strict=True))
        params.update(zip(self._names[n:], phys[n:], strict=True))
        found = model.validity_violations(
            dict(zip(model.state_names, phys[:n], strict=True)),
            dict(zip(model.algebraic_names, self._z.tolist(), strict=True)),
            params,
        )
        return [
            f"the estimate is outside the model's validity domain: {v.describe()}" for v in found
        ]

    def _hold(self, *, predicted: bool) -> None:
        """Hold the states; a sample passed without information when ``predicted``."""
        if predicted:
            self._P = self._P + np.diag(self._q)
        self._innovation, self._innovation_std, self._rejected = {}, {}, ()

    @property
    def estimate(self) -> Estimate:
        """The current estimate (the prior, before the first ``update``)."""
        n, (states, algebraic, parameters) = self._n, self._role_names
        phys = self._xi * self._scale
        # (the values of np.clip(np.diag(P), 0, None) and model.as_dict, fewer calls)
        std = np.sqrt(self._P.diagonal().clip(0.0, None)) * self._scale
        params = dict(zip(parameters, self._p.tolist(), strict=True))
        theta_names = self._names[n:]
        params.update(zip(theta_names, phys[n:].tolist(), strict=True))
        return Estimate(
            states=dict(zip(states, phys[:n].tolist(), strict=True)),
            parameters=params,
            state_std=dict(zip(states, std[:n].tolist(), strict=True)),
            parameter_std=dict(zip(theta_names, std[n:].tolist(), strict=True)),
            innovation=dict(self._innovation),
            algebraic=dict(zip(algebraic, self._z.tolist(), strict=True)),
            innovation_std=dict(self._innovation_std),
            rejected=self._rejected,
            ok=self._ok,
            reason=self._reason,
        )

    @property
    def time(self) -> float:
        """Time of the current estimate since the first sample, in ``model.time_unit``."""
        return self._time
