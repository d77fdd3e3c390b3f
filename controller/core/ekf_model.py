"""The extended Kalman filter's CasADi functions, on the augmented and scaled state.

Pure computing: the symbolic filter step that :class:`controller.core.ekf.ExtendedKalmanFilter`
runs (and the moving-horizon estimator reuses), built once per filter.

Units and shapes
----------------
The filter's state is ``[x; theta]`` (:class:`AugmentedState`): the model's differential
states and the estimated parameters. Everything at the filter's API is in physical units;
internally it works in scaled coordinates: each state divided by its ``Variable.scale``,
each estimated parameter by ``|nominal|`` (half its plausible range, or 1, when the nominal
is 0), each output by its ``Variable.scale``. ``process_noise_std`` (per state and
estimated parameter, per sample), ``measurement_noise_std`` (per output) and
``initial_std`` are 1-sigma in physical units; a name they do not give defaults to
``default_relative_std`` times the variable's scale (states, outputs) or times the
parameter's scale above (:func:`covariances`).
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from typing import Any

import casadi as ca
import numpy as np

from controller.config import EstimatorSpec
from controller.core.estimate import FloatArray
from controller.core.prediction import (
    PREDICTION_TOL,
    BufferedFunction,
    algebraic_newton,
    discrete_step,
)
from controller.errors import EstimatorError
from plant_models import PlantModel, Role

log = logging.getLogger(__name__)

__all__ = [
    "AugmentedState",
    "check_prediction",
    "correction",
    "covariances",
    "filter_functions",
    "first_line",
    "parameter_scale",
    "reference_step",
]


def parameter_scale(model: PlantModel, name: str) -> float:
    """``|nominal|``; for a zero nominal half the plausible range if finite, else 1."""
    p = model.parameter_set.parameters[name]
    if p.value != 0.0:
        return abs(p.value)
    half_width = (p.upper - p.lower) / 2
    return half_width if math.isfinite(half_width) and half_width > 0 else 1.0


def first_line(exc: BaseException) -> str:
    """The last line of an exception's text (CasADi's messages end with the cause)."""
    text = str(exc).strip().splitlines()
    return text[-1] if text else type(exc).__name__


@dataclass(frozen=True, eq=False)
class AugmentedState:
    """The filter's state ``[x; theta]`` and its scaling (see the module docstring).

    ``scale`` has one entry per state then per estimated parameter, ``y_scale`` one per
    output; ``estimated`` names the parameters in ``theta``, in order.
    """

    model: PlantModel
    estimated: tuple[str, ...]
    scale: FloatArray
    y_scale: FloatArray

    @classmethod
    def of(cls, model: PlantModel, spec: EstimatorSpec) -> AugmentedState:
        """The augmented state of ``spec.parameters`` (names checked by the caller)."""
        theta_scale = np.array([parameter_scale(model, n) for n in spec.parameters], dtype=float)
        scale = np.concatenate([model.scales(Role.STATE), theta_scale])
        return cls(model, tuple(spec.parameters), scale, model.scales(Role.OUTPUT))

    @property
    def n(self) -> int:
        """Number of differential states (``theta`` starts there)."""
        return len(self.model.state_names)

    @property
    def names(self) -> tuple[str, ...]:
        """The states' then the estimated parameters' names."""
        return (*self.model.state_names, *self.estimated)

    @property
    def est_index(self) -> list[int]:
        """Where the estimated parameters sit in the model's parameter vector."""
        return [self.model.parameter_names.index(n) for n in self.estimated]

    def bounds(self) -> tuple[FloatArray, FloatArray]:
        """Physical lower and upper bounds: the states' validity domain, the parameters'
        plausible range."""
        model = self.model
        states = [model.variable(n) for n in model.state_names]
        params = [model.parameter_set.parameters[n] for n in self.estimated]
        lower = [v.lower for v in states] + [p.lower for p in params]
        upper = [v.upper for v in states] + [p.upper for p in params]
        return np.array(lower, dtype=float), np.array(upper, dtype=float)

    def physical(self, xi: Any, p_fixed: Any) -> tuple[Any, Any]:
        """``(x, p)`` of a scaled augmented state: states, and the parameter vector with
        the estimated entries replaced by ``theta``."""
        n = self.n
        phys = xi * ca.DM(self.scale)
        estimated = dict(zip(self.est_index, range(n, len(self.names)), strict=True))
        p = ca.vertcat(
            *[phys[estimated[i]] if i in estimated else p_fixed[i] for i in range(p_fixed.numel())]
        )
        return phys[:n], p


def covariances(aug: AugmentedState, spec: EstimatorSpec) -> tuple[FloatArray, ...]:
    """``(P0, q, r)``, scaled: the initial covariance (a matrix), the process noise
    variances per entry of ``[x; theta]`` and the measurement variances per output."""
    rel = spec.default_relative_std

    def stds(given: dict[str, float] | Any) -> FloatArray:
        return np.array([given.get(n, rel * s) for n, s in zip(aug.names, aug.scale, strict=True)])

    P0 = np.diag((stds(spec.initial_std) / aug.scale) ** 2)
    q = (stds(spec.process_noise_std) / aug.scale) ** 2
    outputs = zip(aug.model.output_names, aug.y_scale.tolist(), strict=True)
    y_std = [spec.measurement_noise_std.get(n, rel * s) for n, s in outputs]
    r = (np.array(y_std, dtype=float) / aug.y_scale) ** 2
    return P0, q, r


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


#: Inputs and outputs of the filter's ``correct`` function; ``step`` takes ``u_end`` after
#: ``u`` and ``q`` after ``reacquire``, and also returns the prediction's ``error``.
_CORRECT_IN = ("xi", "P", "z_guess", "u", "p", "y", "use", "reacquire", "r", "lo", "hi", "gate")
_CORRECT_OUT = (
    "xi_new", "P_new", "z", "innovation", "innovation_std", "accepted", "inflation", "residual"
)  # fmt: skip
_STEP_IN = (*_CORRECT_IN[:4], "u_end", *_CORRECT_IN[4:8], "q", *_CORRECT_IN[8:])


def filter_functions(aug: AugmentedState, spec: EstimatorSpec, dt: float) -> dict[str, ca.Function]:
    """``correct``, ``z_solve`` (DAE), ``predict`` and ``step`` (compiled prediction).

    ``correct(xi, P, z_guess, u, p, y, use, reacquire, r, lo, hi, gate) -> (xi_new,
    P_new, z, innovation, innovation_std, accepted, inflation, residual)``; ``step``
    takes ``u_end`` after ``u`` and ``q`` after ``reacquire``, predicts over one sample
    (the inputs ramping from ``u`` to ``u_end``) and corrects at ``u_end``, and also
    returns the prediction's ``error``; ``z_solve(z_guess, x, u, p) -> (z, residual)``;
    ``predict`` is :func:`~controller.core.prediction.discrete_step` over ``dt`` (model
    time unit). ``y``, ``innovation`` and its std are scaled outputs, ``p`` the full
    physical parameter vector (estimated entries replaced by ``theta``).
    """
    model = aug.model
    z_solve = algebraic_newton(model, f"{model.name}_ekf_z")
    correct = _correct_function(aug, z_solve)
    functions = {"correct": correct}
    if z_solve is not None:
        functions["z_solve"] = z_solve
    if spec.prediction == "compiled":
        F = discrete_step(model, dt, spec.integrator_steps, f"{model.name}_ekf_F")
        functions["predict"] = F
        functions["step"] = _step_function(aug, F, correct)
    if not model.is_dae:  # no Newton solves: the SX form evaluates faster
        functions = {k: f.expand() for k, f in functions.items()}
    return functions


def _symbols(aug: AugmentedState) -> dict[str, Any]:
    """One MX symbol per input name of ``correct`` and ``step``."""
    model, nt = aug.model, len(aug.names)
    ny, nu = len(model.output_names), len(model.input_names)
    sizes: dict[str, int | tuple[int, int]] = {
        "xi": nt, "P": (nt, nt), "z_guess": len(model.algebraic_names), "u": nu, "u_end": nu,
        "p": len(model.parameter_names), "y": ny, "use": ny, "reacquire": ny, "q": nt,
        "r": ny, "lo": nt, "hi": nt, "gate": 1,
    }  # fmt: skip
    return {
        k: ca.MX.sym(k, *v) if isinstance(v, tuple) else ca.MX.sym(k, v) for k, v in sizes.items()
    }


def _correct_function(aug: AugmentedState, z_solve: ca.Function | None) -> ca.Function:
    """The filter's ``correct`` (see :func:`filter_functions`): the gated correction at
    the algebraic states consistent before and after it."""
    model, s = aug.model, _symbols(aug)
    xi, u, p_fixed = s["xi"], s["u"], s["p"]

    def algebraic(x: Any, p: Any, guess: Any) -> tuple[Any, Any]:
        if z_solve is None:
            return ca.MX(0, 1), ca.MX(0.0)
        z, res = z_solve(guess, x, u, p)
        return z, res

    x, p = aug.physical(xi, p_fixed)
    z, res_measure = algebraic(x, p, s["z_guess"])
    y_pred = model.function(x, z, u, p)[2] / ca.DM(aug.y_scale)
    innovation = s["y"] - y_pred
    xi_new, P_new, std, accepted, inflation = correction(len(aug.names), len(model.output_names))(
        xi, s["P"], innovation, ca.jacobian(y_pred, xi), s["r"], s["use"], s["reacquire"],
        s["lo"], s["hi"], s["gate"],
    )  # fmt: skip
    x_new, p_new = aug.physical(xi_new, p_fixed)
    z_new, res_new = algebraic(x_new, p_new, z)
    outputs = [xi_new, P_new, z_new, innovation, std, accepted, inflation]
    return ca.Function(
        f"{model.name}_ekf_correct",
        [s[k] for k in _CORRECT_IN],
        [*outputs, ca.fmax(res_measure, res_new)],
        list(_CORRECT_IN),
        list(_CORRECT_OUT),
    )


def _step_function(aug: AugmentedState, F: ca.Function, correct: ca.Function) -> ca.Function:
    """The filter's ``step`` (see :func:`filter_functions`): ``F`` over one sample, the
    covariance propagated with ``A = d xi_pred / d xi``, then ``correct`` at ``u_end``."""
    model, n, s = aug.model, aug.n, _symbols(aug)
    xi, P = s["xi"], s["P"]
    x, p = aug.physical(xi, s["p"])
    xf, zf, res_predict, error = F(x, s["z_guess"], s["u"], p, s["u_end"])
    theta = xi[n:] if len(aug.names) > n else ca.MX(0, 1)  # xi[n:] is 1x0 when empty
    xi_pred = ca.vertcat(xf / ca.DM(aug.scale[:n]), theta)
    A = ca.jacobian(xi_pred, xi)
    P_pred = A @ P @ A.T + ca.diag(s["q"])
    P_pred = (P_pred + P_pred.T) / 2
    args = [s[k] for k in ("p", "y", "use", "reacquire", "r", "lo", "hi", "gate")]
    out = correct(xi_pred, P_pred, zf, s["u_end"], *args)
    return ca.Function(
        f"{model.name}_ekf_step",
        [s[k] for k in _STEP_IN],
        [*out[:-1], ca.fmax(res_predict, out[-1]), error],
        list(_STEP_IN),
        [*_CORRECT_OUT, "error"],
    )


def check_prediction(
    aug: AugmentedState, spec: EstimatorSpec, dt: float, predict: BufferedFunction
) -> None:
    """The compiled step against CVODES/IDAS at the plant file's initial state and
    nominal inputs and parameters.

    Raises EstimatorError when they differ by more than :data:`PREDICTION_TOL` of a
    state's scale: too few ``integrator_steps`` for the sample time, so that every
    cycle would fall back to CVODES/IDAS. Logs a warning when the reference itself
    fails there (nothing to check against).
    """
    model = aug.model
    x = model.vector(Role.STATE, model.initial_state)
    z = model.vector(Role.ALGEBRAIC, model.initial_algebraic)
    u, p = model.vector(Role.INPUT, model.nominal_inputs), model.parameter_vector()
    try:
        xr = np.asarray(model.integrator(dt)(x, z, u, p)[0], dtype=float).ravel()
    except RuntimeError as exc:
        log.warning(
            "model %r: cannot check the compiled prediction, cvodes/idas failed at the "
            "initial state: %s", model.name, first_line(exc),
        )  # fmt: skip
        return
    err = np.abs(predict(x, z, u, p, u)[0] - xr) / aug.scale[: aug.n]
    err = np.where(np.isfinite(err), err, np.inf)
    if err.max() > PREDICTION_TOL:
        raise EstimatorError(
            f"model {model.name!r}: estimator.integrator_steps = "
            f"{spec.integrator_steps} is too few for a sample time of {dt:g} "
            f"{model.time_unit}: the compiled prediction of "
            f"{model.state_names[int(err.argmax())]} differs from cvodes/idas by "
            f"{err.max():.3g} of its scale at the initial state (allowed "
            f"{PREDICTION_TOL:g}); raise it"
        )


def reference_step(aug: AugmentedState) -> ca.Function:
    """CVODES/IDAS over ``h``, the inputs ramping from ``u`` to ``u_end``:
    ``(xi, z_guess, u, u_end, p, h) -> (xi_next, A, zf)`` with sensitivities (built on
    :meth:`~plant_models.PlantModel.stepper`; the filter builds it on first use)."""
    model, n = aug.model, aug.n
    xi = ca.MX.sym("xi", len(aug.names))
    z_guess = ca.MX.sym("z_guess", len(model.algebraic_names))
    u, u_end = (ca.MX.sym(k, len(model.input_names)) for k in ("u", "u_end"))
    p_fixed, h = ca.MX.sym("p_fixed", len(model.parameter_names)), ca.MX.sym("h")
    x, p = aug.physical(xi, p_fixed)
    xf, zf = model.stepper()(x, z_guess, u, u_end, p, h)
    theta = xi[n:] if len(aug.names) > n else ca.MX(0, 1)  # xi[n:] is 1x0 when empty
    xi_next = ca.vertcat(xf / ca.DM(aug.scale[:n]), theta)
    return ca.Function(
        f"{model.name}_ekf_reference",
        [xi, z_guess, u, u_end, p_fixed, h],
        [xi_next, ca.jacobian(xi_next, xi), zf],
        ["xi", "z_guess", "u", "u_end", "p", "h"],
        ["xi_next", "A", "zf"],
    )
