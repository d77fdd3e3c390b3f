"""Moving-horizon estimation: the last ``horizon`` samples fitted by a bounded least-squares SQP.

:class:`MovingHorizonEstimator` (``estimator.kind: mhe``) is an
:class:`~controller.core.ekf.ExtendedKalmanFilter` whose estimate is refined, every sample,
by a moving-horizon problem over the window of the last ``N = horizon`` samples:

* nodes ``x_0 .. x_N`` (scaled states; node 0 is the sample just before the window, node
  ``N`` the current one) and one parameter vector ``theta`` for the whole window;
* cost: the arrival cost ``|L (xi_0 - xi_prior)|^2`` (``xi_0 = [x_0; theta]``), plus per
  interval ``|(x_k+1 - F(x_k, u, theta)) / sqrt(q)|^2`` (the model's one-sample
  prediction, :func:`controller.core.prediction.discrete_step`), plus per node ``k >= 1``
  ``|(y_k - h(x_k)) / sqrt(r)|^2`` over the outputs the filter used that sample (excluded
  and gate-rejected measurements stay out);
* bounds: every node's states within the model's validity domain
  (``Variable.lower/upper``) and ``theta`` within the parameters' plausible range
  (``Parameter.lower/upper``): constraints of the problem, not a clip afterwards;
* arrival cost: the filter's posterior at node 0 (``xi_prior``, covariance ``P_0`` with the
  parameters' random walk over the window added, ``L' L = P^-1``). The filter runs every
  sample (it gives the innovations, the gate, the covariance and the arrival cost) and is
  reset to the moving-horizon estimate after every successful solve, so later arrival
  costs carry it: the information of a sample enters once, through the window, then
  through the arrival cost;
* solved by CasADi's ``sqpmethod`` with the ``qrqp`` QP solver and a Gauss-Newton Hessian
  (``2 J' J`` of the residuals: convex QPs), warm-started from the filter's trajectory,
  compiled (``jit``) by the :class:`~controller.core.jit.LibraryBuilder` the caller hands in
  (``compile``; none: uncompiled), like the fast MPC's solver.

Until the window is full (the first ``horizon`` samples) the estimate is the filter's.
A failed solve (not converged within ``max_iter``, an error, or a solution whose predictions
leave algebraic equations unsolved or whose RK4 error estimate is too large: see
:mod:`controller.core.prediction`) falls back to the filter's estimate for that sample:
``fallbacks`` counts it and a warning is logged. A failure of
the filter itself is an estimate with ``ok=False``, as for the EKF.
"""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import Collection, Mapping
from dataclasses import dataclass
from typing import Any

import casadi as ca
import numpy as np

from controller.config import EstimatorSpec
from controller.core.ekf import ExtendedKalmanFilter
from controller.core.estimate import Estimate, FloatArray
from controller.core.fast_solver import solve_plain
from controller.core.jit import LibraryBuilder, compiled_nlpsol
from controller.core.named_values import measured, vector_of
from controller.core.prediction import (
    ALGEBRAIC_TOL,
    PREDICTION_TOL,
    algebraic_newton,
    discrete_step,
)
from plant_models import PlantModel, Role

log = logging.getLogger(__name__)

__all__ = ["MovingHorizonEstimator"]

#: Iteration cap of one qrqp solve.
QRQP_MAX_ITER = 200

#: sqpmethod statuses taken as converged besides success: the QP's step fell below
#: ``min_step_size`` (the point is stationary for the Gauss-Newton model to that precision,
#: but the absolute dual tolerance was not met, as happens with noise-weighted residuals).
STALLED_AT_SOLUTION = frozenset({"Search_Direction_Becomes_Too_Small"})


@dataclass(frozen=True)
class _Sample:
    """One sample of the window: the filter's posterior there (scaled), its algebraic
    states, the inputs over the interval before it (from ``u0`` to ``u``, the input in
    effect at the sample), the scaled measurements and which of them the filter used."""

    xi: FloatArray
    P: FloatArray
    z: FloatArray
    u0: FloatArray
    u: FloatArray
    y: FloatArray
    use: FloatArray


class MovingHorizonEstimator(ExtendedKalmanFilter):
    """Bounded moving-horizon estimation on top of the EKF; see the module docstring.

    ``solves`` counts the successful window solves, ``fallbacks`` the samples whose solve
    failed (the filter's estimate was given); ``library`` (inherited) is the filter's
    compiled library, ``mhe_library`` the window solver's (None when not compiled).
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
        super().__init__(
            model, spec, sample_time, initial_state, initial_parameters, compile=compile
        )
        self._horizon = spec.horizon
        self._window: deque[_Sample] = deque(maxlen=spec.horizon + 1)
        self.solves = 0
        self.fallbacks = 0
        self.mhe_library: str | None = None
        self._solver = self._build_solver(compile)

    # ------------------------------------------------------------------ building
    def _residuals(self) -> tuple[ca.MX, ca.MX, ca.MX, dict[str, slice]]:
        """The decision vector ``w``, the parameter vector ``p``, the residuals ``r(w, p)``
        (cost ``|r|^2``) and where each block sits in ``p``."""
        model, n, nt, N = self._model, self._n, len(self._names), self._horizon
        nth, ny, nu = nt - n, len(model.output_names), len(model.input_names)
        nz, npar = len(model.algebraic_names), len(model.parameter_names)
        F = discrete_step(model, self._dt, self._spec.integrator_steps, f"{model.name}_mhe_F")
        Z = algebraic_newton(model, f"{model.name}_mhe_z")
        if not model.is_dae:
            F = F.expand()
        xs0, xs1 = ca.MX.sym("xs0", n), ca.MX.sym("xs1", n)
        theta, zg = ca.MX.sym("theta", nth), ca.MX.sym("z_guess", nz)
        u0, u, p_fixed = ca.MX.sym("u0", nu), ca.MX.sym("u", nu), ca.MX.sym("p", npar)
        y, use = ca.MX.sym("y", ny), ca.MX.sym("use", ny)
        wq, wr = ca.MX.sym("wq", n), ca.MX.sym("wr", ny)
        x0, p = self._aug.physical(ca.vertcat(xs0, theta), p_fixed)
        xf, zf, res_f, error = F(x0, zg, u0, p, u)
        x1, _ = self._aug.physical(ca.vertcat(xs1, theta), p_fixed)
        z1, res_z = Z(zf, x1, u, p) if Z is not None else (ca.MX(0, 1), ca.MX(0.0))
        y1 = model.function(x1, z1, u, p)[2] / ca.DM(self._y_scale)
        args = [xs0, xs1, theta, zg, u0, u, p_fixed, y, use, wq, wr]
        interval = ca.Function(
            "mhe_interval", args, [(xs1 - xf / ca.DM(self._scale[:n])) * wq, use * (y - y1) * wr]
        )
        quality = ca.Function("mhe_quality", args, [ca.fmax(res_f, res_z), error])
        sizes = {
            "prior": nt, "L": nt * nt, "Y": ny * N, "USE": ny * N, "U0": nu * N, "U": nu * N,
            "ZG": nz * N, "p": npar, "wq": n, "wr": ny,
        }  # fmt: skip
        where, at = {}, 0
        for key, size in sizes.items():
            where[key], at = slice(at, at + size), at + size
        w, pv = ca.MX.sym("w", (N + 1) * n + nth), ca.MX.sym("p", at)
        X = ca.reshape(w[: (N + 1) * n], n, N + 1)
        th = w[(N + 1) * n :]

        def block(key: str, rows: int) -> Any:
            return ca.reshape(pv[where[key]], rows, N) if rows else ca.MX(0, N)

        mapped = (
            X[:, :N], X[:, 1:], ca.repmat(th, 1, N), block("ZG", nz), block("U0", nu),
            block("U", nu), ca.repmat(pv[where["p"]], 1, N), block("Y", ny), block("USE", ny),
            ca.repmat(pv[where["wq"]], 1, N), ca.repmat(pv[where["wr"]], 1, N),
        )  # fmt: skip
        r_dyn, r_meas = interval.map(N)(*mapped)
        residual, error = (ca.mmax(v) for v in quality.map(N)(*mapped))
        self._quality = ca.Function("mhe_check", [w, pv], [residual, error])
        L = ca.reshape(pv[where["L"]], nt, nt)
        r_arr = L @ (ca.vertcat(X[:, 0], th) - pv[where["prior"]])
        return w, pv, ca.vertcat(r_arr, ca.vec(r_dyn), ca.vec(r_meas)), where

    def _build_solver(self, builder: LibraryBuilder | None) -> ca.Function:
        """The window's sqpmethod (Gauss-Newton Hessian), compiled by ``builder`` when
        ``jit`` (uncompiled without a builder, or when the build fails: logged)."""
        w, pv, r, self._where = self._residuals()
        nlp = {"x": w, "p": pv, "f": ca.dot(r, r), "g": ca.MX(0, 1)}
        J = ca.jacobian(r, w)
        lam_f, lam_g = ca.MX.sym("lam_f"), ca.MX.sym("lam_g", 0)
        hess = ca.Function(
            "nlp_hess_l",
            [w, pv, lam_f, lam_g],
            [lam_f * 2 * (J.T @ J)],
            ["x", "p", "lam_f", "lam_g"],
            ["hess_gamma_x_x"],
        )
        quiet = {"print_header": False, "print_iter": False, "print_info": False}
        opts: dict[str, Any] = {
            "qpsol": "qrqp",
            "qpsol_options": {**quiet, "error_on_fail": False, "max_iter": QRQP_MAX_ITER},
            "max_iter": self._spec.max_iter,
            "tol_pr": 1e-6,
            "tol_du": 1e-6,
            "print_header": False,
            "print_iteration": False,
            "print_status": False,
            "print_time": False,
            "error_on_fail": False,
            "calc_lam_p": False,
        }
        name = f"{self._model.name}_mhe"
        plain = ca.nlpsol(name, "sqpmethod", nlp, {**opts, "hess_lag": hess})
        if not self._spec.jit or builder is None:
            return plain
        try:
            solver, path = compiled_nlpsol(builder, name, "sqpmethod", plain, opts)
        except (OSError, RuntimeError) as exc:
            log.warning("model %r MHE: jit compile failed, solving without it: %s", name, exc)
            return plain
        self.mhe_library = str(path)
        return solver

    # ------------------------------------------------------------------ running
    def update(
        self,
        u_applied: Mapping[str, float] | None,
        y: Mapping[str, float],
        states: Mapping[str, float] | None = None,
        *,
        exclude: Collection[str] = (),
        u_end: Mapping[str, float] | None = None,
    ) -> Estimate:
        """The filter's update, then the window's solve (see the module docstring);
        ``states`` is not used (the one estimator step takes it)."""
        u0 = (
            self._u if u_applied is None else vector_of(self._model, Role.INPUT, u_applied, "input")
        )
        est = super().update(u_applied, y, states, exclude=exclude, u_end=u_end)
        if u_applied is None:
            self._window.clear()  # a first sample starts a new window
        y_vec, _ = measured(self._model, y, exclude)
        outputs = self._model.output_names
        use = np.array([n in est.innovation and n not in est.rejected for n in outputs], float)
        if not est.ok:
            use[:] = 0.0
        self._remember(u0, y_vec, use)
        if not est.ok or len(self._window) <= self._horizon:
            return est
        if self._solve():
            self._remember(u0, y_vec, use, replace=True)
            return self.estimate
        return est

    def _remember(
        self, u0: FloatArray, y_vec: FloatArray, use: FloatArray, *, replace: bool = False
    ) -> None:
        sample = _Sample(
            self._xi.copy(), self._P.copy(), self._z.copy(), u0.copy(), self._u.copy(),
            y_vec / self._y_scale, use,
        )  # fmt: skip
        if replace:
            self._window.pop()
        self._window.append(sample)

    def _parameters(self) -> FloatArray:
        """The NLP's parameter vector for the current window."""
        win, n, N = list(self._window), self._n, self._horizon
        first = win[0]
        P0 = first.P.copy()
        idx = np.arange(n, len(self._names))
        P0[idx, idx] += N * self._q[n:]  # the parameters' random walk over the window
        C = np.linalg.cholesky((P0 + P0.T) / 2 + 1e-12 * np.eye(len(P0)))
        L = np.linalg.solve(C, np.eye(len(P0)))  # L' L = P0^-1
        parts = {
            "prior": first.xi,
            "L": L.ravel(order="F"),
            "Y": np.concatenate([s.y for s in win[1:]]),
            "USE": np.concatenate([s.use for s in win[1:]]),
            "U0": np.concatenate([s.u0 for s in win[1:]]),
            "U": np.concatenate([s.u for s in win[1:]]),
            "ZG": np.concatenate([s.z for s in win[:-1]]),
            "p": self._p,
            "wq": 1.0 / np.sqrt(self._q[:n]),
            "wr": 1.0 / np.sqrt(self._r),
        }
        pv = np.zeros(self._where["wr"].stop)
        for key, value in parts.items():
            pv[self._where[key]] = value
        return pv

    def _solve(self) -> bool:
        """Solve the window; on success the filter is reset to the estimate at its end."""
        n, win = self._n, list(self._window)
        w0 = np.concatenate([*(s.xi[:n] for s in win), self._xi[n:]])
        lbw = np.concatenate([np.tile(self._lo[:n], len(win)), self._lo[n:]])
        ubw = np.concatenate([np.tile(self._hi[:n], len(win)), self._hi[n:]])
        w0 = np.clip(w0, lbw, ubw)
        where = f"model {self._model.name!r} MHE at t={self._time:g} {self._model.time_unit}"
        try:
            pv = self._parameters()
            # held meanwhile (a loaded solver may be shared): these stats are this call's
            sol, stats = solve_plain(self._solver, {"x0": w0, "p": pv, "lbx": lbw, "ubx": ubw})
        except (RuntimeError, np.linalg.LinAlgError) as exc:
            return self._fell_back(where, f"{type(exc).__name__}: {exc}")
        w = sol["x"]
        status = str(stats.get("return_status", "unknown"))
        converged = stats.get("success", False) or status in STALLED_AT_SOLUTION
        if not converged or not np.all(np.isfinite(w)):
            return self._fell_back(where, status)
        residual, error = (float(v) for v in self._quality(w, pv))
        if not residual <= ALGEBRAIC_TOL or not error <= PREDICTION_TOL:
            why = f"predictions at the solution: residual {residual:.3g}, error {error:.3g}"
            return self._fell_back(where, why)
        xi = np.clip(np.concatenate([w[len(win) * n - n : len(win) * n], w[len(win) * n :]]),
                     self._lo, self._hi)  # fmt: skip
        z = self._consistent(xi, self._z, self._u)
        if z is None:
            return self._fell_back(where, "no consistent algebraic state at the estimate")
        self._xi, self._z = xi, z
        self.solves += 1
        return True

    def _fell_back(self, where: str, why: str) -> bool:
        self.fallbacks += 1
        log.warning("%s: window solve failed (%s); the EKF's estimate is used", where, why)
        return False

    @property
    def window(self) -> int:
        """Samples in the window now (the estimate is the filter's until ``horizon + 1``)."""
        return len(self._window)
