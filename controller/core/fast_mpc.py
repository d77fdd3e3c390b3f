"""Fast NMPC: SQP with a sparse QP solver on a multiple-shooting transcription.

The transcription is :mod:`controller.core.ocp` (and ``ocp_stage``), the solver pieces
:mod:`controller.core.fast_solver`, the minimum-time schedule ``end_schedule``.

:class:`FastController` is the ``solver.backend: fast`` implementation of
:class:`~controller.core.mpc.ModelPredictiveController`. It solves the same problem as the do-mpc
reference (:class:`~controller.core.dompc.DoMpcController`): the same objective (stage terms at the
start of each interval, terminal terms at the end, move penalties on scaled moves), input
bounds, hard per-cycle move limits, state bounds (on the inner nodes ``1..N-1``, as do-mpc
applies them), hard and soft constraints as path constraints (held at the start and the end
of every interval and at ``constraint_points`` inner points, with the interval's input; one
slack per constraint and interval with a linear penalty), horizon and sample time. What
differs is the transcription and the solver:

* one decision block per interval, ``[x_k, u_k, v_k (copy of u_k-1), z_k, eps_k]`` (scaled by
  the variables' ``scale``), then ``x_N``; the state is carried over each interval by
  ``integrator_steps`` RK4 steps (rounded up to a multiple of ``constraint_points + 1``, so
  that every constraint point is a step boundary). For a DAE the algebraic state of every RK4
  stage and of every constraint point is a decision variable and its algebraic equation a
  constraint (the root-finding is lifted);
* minimum time (``objective.min_time``): the time to the batch end ``T`` is one more decision
  (after ``x_N``), interval ``k`` lasts ``a_k + b_k T`` (``EndSchedule``: a free end time, or
  a shrinking horizon on the sample grid; ``a`` and ``b`` are parameters of each solve), the
  cost is ``weight * T`` and the batch-end condition a last constraint row;
* every constraint row is scaled for the QP: move rows act on scaled moves, a soft
  constraint's row and slack are divided by a typical magnitude (``constraint_scales``), and
  rows with Jacobian entries above ``ROW_MAX`` are normalised (unscaled, move coefficients
  of 1000 left qrqp's KKT matrix near-singular: it cycled for its 1000 iterations);
* the NLP is built once and solved by ``sqpmethod`` with ``qpsol`` (qrqp) in full steps,
  with the exact Lagrangian Hessian or a Gauss-Newton one (``solver.hessian``: tracking
  residuals J'J, move penalties and a small diagonal ``regularization``; always convex),
  warm-started from the previous primal solution and its multipliers shifted one interval
  (multipliers of inactive bounds and constraints zeroed: qrqp takes any nonzero one as an
  active constraint);
* the SQP's gradient, constraint Jacobian and exact Hessian are assembled from one
  interval's SX derivatives, mapped (:mod:`controller.core.ocp_jacobian`; not for robust or
  minimum-time problems): the same values and sparsity as CasADi's own, at a third of the
  cost (:data:`JAC_FG`);
* a step without a warm start (the first, or after a failure) is solved from a simulation
  of the model by IPOPT (``solver.cold_start: ipopt``), or by the SQP first and IPOPT when it
  fails (``sqp-ipopt``, :mod:`controller.core.fast_guess`); ``cold_starts`` counts them;
* with ``jit`` and a :class:`~controller.core.jit.LibraryBuilder` handed in (``compile``,
  e.g. the runtime's :class:`~controller.runtime.solver_cache.LibraryCache`), the SQP's and
  IPOPT's functions are generated as C code, built into shared libraries by it and loaded at
  construction; a failed build falls back to CasADi's virtual machine with a logged warning.
  Without a builder they run uncompiled (same results, slower): this module does no I/O;
* when the SQP does not converge, IPOPT solves the same NLP in the same cycle from the same
  warm start (``warm_start_init_point``; from the simulated guess when the warm start is a
  plan :data:`STALE_SAMPLES` old: cycles were skipped); ``fallbacks`` counts those cycles,
  each is logged as a warning naming the cycle, and the Decision says so (``fallback``, and a
  ``return_status`` naming IPOPT's result and the SQP's failure). When IPOPT fails too, the
  Decision is FAILED, exactly as with the do-mpc backend.

Times are in the plant model's time unit; values at the interface are physical.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import casadi as ca
import numpy as np

from controller.config import ControllerConfig
from controller.core.end_schedule import EndSchedule
from controller.core.fast_decision import DecisionReader
from controller.core.fast_guess import COLD_MAX_ITER, cold_solve, simulated_guess
from controller.core.fast_solver import (  # JAC_FG, HESS_L: the derivatives' code keys
    BOUNDS,
    CONVEXIFY,
    HESS_L,
    JAC_FG,
    WARM_IPOPT,
    BufferedSolver,
    Cleaner,
    row_scaled,
    shift_index,
    solve_plain,
    sqp_options,
    structured_hess_l,
    structured_jac_fg,
)
from controller.core.jit import Deferred, LibraryBuilder, keyed_nlpsol, loaded_nlpsol, resolved
from controller.core.mpc import (
    Decision,
    ModelPredictiveController,
    SolveStatus,
    ipopt_options,
)
from controller.core.ocp import Transcription
from controller.core.ocp_memo import reference_first, transcribed
from plant_models import PlantModel, Role

log = logging.getLogger(__name__)

#: A step after a reset keeps the warm start when it comes one sample (within this fraction
#: of it) after the last successful solve (:meth:`FastController.reset`).
RESUME_TOL = 1e-6

#: A warm start this many samples old or more is stale: IPOPT does not start from it.
STALE_SAMPLES = 1.5


class FastController(ModelPredictiveController):
    """SQP on multiple shooting, compiled when asked; IPOPT fallback in the same cycle.

    ``compile`` builds the solvers' shared libraries when ``solver.jit`` is set (None: they
    run uncompiled). ``library`` is the SQP's library in use and ``libraries`` every one
    loaded (None and empty without jit, without a builder or after a failed build).
    """

    def __init__(
        self,
        config: ControllerConfig,
        model: PlantModel,
        source: str = "<config>",
        *,
        compile: LibraryBuilder | None = None,
    ) -> None:
        super().__init__(config, model, source)
        spec = config.solver
        #: minimum time: the interval lengths of the plans (None: every one a sample)
        self.schedule = self._schedule(config)
        self._t_end: float | None = None  # the last plan's time to the batch end
        self._z_guess = model.vector(Role.ALGEBRAIC, model.initial_algebraic)
        # transcribed, root-finder built and rows scaled once per configuration in a process
        # (controller.core.ocp_memo); this controller gets its own copy of the arrays
        self.ocp, self._z_root = transcribed(self, spec.integrator_steps)
        o = self.ocp  # its bounds converted once: a numpy vector costs ~30 us at every call
        bounds = zip(BOUNDS, (o.lbx, o.ubx, o.lbg, o.ubg), strict=True)
        self._bounds = {k: ca.DM(v) for k, v in bounds}
        self.fallbacks = 0
        self.cycles = 0  # step calls (the log names a fallback's cycle by it)
        self.cold_starts = 0  # steps without a warm start (solved as cold_start says)
        self.builder = compile
        self.library: Path | None = None  # the SQP's library
        self.libraries: list[Path] = []  # every library loaded (the SQP's, IPOPT's)
        self.sqp = self._build_sqp()
        self.sqp_retries = 0  # failed SQP solves retried with the convexified Hessian
        exact, cold = spec.hessian == "exact", {"max_iter": max(spec.max_iter, COLD_MAX_ITER)}
        self.sqp_convex = self._sqp_variant("fast_sqp_convex", CONVEXIFY) if exact else None
        sqp_first = spec.cold_start == "sqp-ipopt"  # the SQP tried first on cold starts
        self.sqp_cold = self._sqp_variant("fast_sqp_cold", cold) if sqp_first else None
        self.ipopt: ca.Function | None = None
        self.ipopt_cold: ca.Function | None = None
        if spec.fallback == "ipopt":
            opts = {**ipopt_options(config), "calc_lam_p": False}
            self.ipopt = self._build("fast_fallback", "ipopt", {**opts, **WARM_IPOPT})
            shared = self._library  # the same NLP and functions: the fallback's library
            self.ipopt_cold = (
                loaded_nlpsol("fast_cold", "ipopt", shared, opts)
                if shared is not None
                else self._build("fast_cold", "ipopt", opts)
            )
        self._guess: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None
        self._solved_at: float | None = None  # the time of the last successful solve
        self._resumable: bool | None = None  # set by reset (None: no reset pending)
        self._stale = False  # this step's warm start is an old plan (cycles were skipped)
        # Constants of the hot path (step), computed once.
        self._usc = model.scales(Role.INPUT)
        self._clean = Cleaner(o)  # the multipliers of inactive bounds and rows dropped
        self._shift_w, self._shift_g = shift_index(o, config.horizon)
        self._read = DecisionReader(config, model, o)
        self._sqp_call = BufferedSolver(self.sqp, o)
        self._convex_call: BufferedSolver | None = None  # built at the first retry

    # ------------------------------------------------------------------ building
    def _schedule(self, config: ControllerConfig) -> EndSchedule | None:
        """The minimum-time schedule of the plans (a subclass may plan otherwise)."""
        return EndSchedule.of(config)

    def _row_scaled(self, ocp: Transcription) -> Transcription:
        """``ocp`` with its large constraint rows normalised (:func:`row_scaled`) at the
        cold guess from the model's initial state."""
        x0 = self.model.vector(Role.STATE, self.model.initial_state)
        p = self.model.parameter_vector(self._params)
        return row_scaled(ocp, self._cold_guess(x0, p, ocp), self._parameters(x0, p))

    def _build_sqp(self) -> ca.Function:
        extra = self._sqp_code(with_hessian=True)
        sqp = self._build("fast_sqp", "sqpmethod", sqp_options(self.config.solver), extra)
        self.library = self._library
        return sqp

    def _sqp_variant(self, name: str, overrides: Mapping[str, Any]) -> ca.Function:
        """The SQP with options overridden (:data:`CONVEXIFY`, :data:`COLD_MAX_ITER`): loaded
        from its library when there is one (the same functions), else built alike."""
        opts = {**sqp_options(self.config.solver), **overrides}
        if self.library is not None:
            return loaded_nlpsol(name, "sqpmethod", self.library, opts)
        code = resolved(self._sqp_code(with_hessian=True))
        return ca.nlpsol(name, "sqpmethod", self.ocp.nlp, {**opts, **code})

    def _sqp_code(self, with_hessian: bool = False) -> dict[str, Any]:
        """The SQP's code-shaping options: its derivatives assembled from one interval's
        (:data:`JAC_FG`, and :data:`HESS_L` for the exact Hessian), when the transcription
        has them; ``with_hessian``: and its Gauss-Newton Hessian when it uses one."""
        ocp, hessian = self.ocp, self.config.solver.hessian
        code: dict[str, Any] = {}
        if ocp.jac_fg is not None:
            code["jac_fg"] = Deferred(JAC_FG, lambda: structured_jac_fg(ocp))
        if ocp.hess_l is not None and hessian == "exact":
            code["hess_lag"] = Deferred(HESS_L, lambda: structured_hess_l(ocp))
        if with_hessian and hessian == "gauss-newton":
            code["hess_lag"] = ocp.gauss_newton
        return code

    def _build(
        self, name: str, plugin: str, opts: dict[str, Any], extra: dict[str, Any] | None = None
    ) -> ca.Function:
        """An nlpsol of the NLP; with ``jit`` and a builder loaded from its compiled library.

        ``extra`` options (such as a custom ``hess_lag``) only shape the generated code: the
        library holds every function the solver evaluates under its standard name.
        """
        self._library: Path | None = None
        if not self.config.solver.jit or self.builder is None:
            return ca.nlpsol(name, plugin, self.ocp.nlp, {**opts, **resolved(extra or {})})
        rare = plugin == "ipopt"  # the fallback and the cold start: rarely run
        solver, self._library, exc = keyed_nlpsol(
            self.builder, name, plugin, self.ocp.nlp, opts, extra, rarely_run=rare
        )
        if exc is not None or self._library is None:
            log.warning("%s: jit compile failed, solving without it: %s", self.source, exc)
            return solver
        if self._library not in self.libraries:
            self.libraries.append(self._library)
        return solver

    # ------------------------------------------------------------------ running
    def reset(self, u_prev: Mapping[str, float]) -> None:
        """Forget the warm start; the next step starts from the working setpoints ``u_prev``.

        Unless that step is the very next sample after the last successful solve: then the
        last solution, shifted as in every cycle, still warm-starts the SQP (the setpoints in
        force are the NLP's parameters, not its guess). The supervisor starts the pipeline
        twice in a row (INIT, then the PLC's handover one sample later): that second start
        cost every campaign case a second cold IPOPT solve (30 to 60 ms of a 0.45 s case).
        A step at any other time starts cold, as before.
        """
        self._u_prev = self.model.vector(Role.INPUT, u_prev)
        self._resumable = self._guess is not None and self._solved_at is not None

    def _resume_or_forget(self, t: float) -> None:
        """After :meth:`reset`: keep the warm start only when ``t`` is one sample on from the
        last successful solve. Without a reset, a plan :data:`STALE_SAMPLES` old or more
        (the pipeline skipped solves on bad data) is ``_stale``: the SQP still starts from it,
        but IPOPT, when the SQP fails, from the simulated guess (test_fast_gap.py)."""
        dt, solved = self.config.sample_time, self._solved_at
        old = solved is not None and t - solved >= STALE_SAMPLES * dt
        self._stale = self._resumable is None and old
        if self._resumable is None:
            return
        if not self._resumable:
            self._guess = None
            return
        if self._solved_at is None or abs(t - self._solved_at - dt) > RESUME_TOL * dt:
            self._guess = None

    def _cold_guess(
        self, x0: np.ndarray, p: np.ndarray, ocp: Transcription | None = None
    ) -> np.ndarray:
        """Simulate the model with the setpoints held (:func:`simulated_guess`); with minimum
        time, over the intervals of the schedule's guessed end time."""
        o = ocp if ocp is not None else self.ocp
        durations = np.full(self.config.horizon, self.config.sample_time)
        t_end = None
        if self.schedule is not None and o.t_end_idx is not None:
            t_end = self.schedule.guess(None)
            durations = self.schedule.durations(t_end)
        w = simulated_guess(
            o, self.model, x0, p, self._u_prev, self._z_guess, self._z_root, durations
        )
        if t_end is not None and o.t_end_idx is not None:
            w[o.t_end_idx] = t_end / self.config.sample_time
        return w

    def _shifted(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """The last solution (primal, bound and constraint multipliers) one interval on."""
        if self._guess is None:
            raise RuntimeError("no previous solution to shift")
        w, lam_x, lam_g = self._guess
        return w[self._shift_w], lam_x[self._shift_w], lam_g[self._shift_g]

    def scenario_inputs(self) -> np.ndarray:
        """Every scenario's planned inputs of the last successful solve, physical, shaped
        ``(n_scenarios, horizon, n_inputs)`` (one scenario when nominal). Scenarios with the
        same past share their input (non-anticipativity): with ``n_robust = 1`` every
        ``[:, 0, :]`` is the applied first move."""
        if self._guess is None:
            raise RuntimeError("no successful solve to read")
        return self._guess[0][self.ocp.scenario_index(self.ocp.u_idx)] * self._usc

    def step(
        self,
        t: float,
        x_hat: Mapping[str, float],
        params: Mapping[str, float] | None = None,
        u_prev: Mapping[str, float] | None = None,
    ) -> Decision:
        """Solve the MPC from state ``x_hat`` at time ``t``.

        ``u_prev`` is the setpoint in force (defaults to the last planned input); the move
        limits and move penalties are relative to it. Never raises on a failed solve.
        """
        x0 = self._begin(t, x_hat, params, u_prev)
        if isinstance(x0, Decision):
            return x0
        p = self.model.parameter_vector(self._params)
        self.cycles += 1
        self._resume_or_forget(t)
        self._resumable = None
        decision = self._attempt(t, x0, p)
        if self.schedule is None:
            return decision
        if not decision.ok and self.schedule.widen():  # the end is farther than planned
            log.info(
                "%s: cycle %d: planning to the batch end over the whole horizon again",
                self.source,
                self.cycles,
            )
            decision = self._attempt(t, x0, p)
        while decision.ok and self.schedule.could_end_sooner(decision.end_time - t):
            decision = self._sooner(self.schedule, t, x0, p, decision)
        if decision.ok:
            self.schedule.advance(decision.end_time - t)
        return decision

    def _sooner(
        self, schedule: EndSchedule, t: float, x0: np.ndarray, p: np.ndarray, decision: Decision
    ) -> Decision:
        """Shrinking horizon: the plan ends at the start of its last interval, so try one
        interval fewer from the same solution; keep ``decision`` if that fails."""
        kept = (self._guess, self._t_end, self._u_prev.copy())
        schedule.active -= 1
        trial = self._attempt(t, x0, p, shift=False)
        if trial.ok:
            return trial
        schedule.active += 1
        self._guess, self._t_end, self._u_prev = kept
        schedule.settled = True
        return decision

    def _parameters(self, x0: np.ndarray, p: np.ndarray) -> np.ndarray:
        """The NLP's parameter vector: state, setpoint in force, model parameters and (with
        minimum time) the schedule's interval lengths ``a``, ``b``."""
        if self.schedule is None:
            return np.concatenate([x0, self._u_prev, p])
        a, b, _, _ = self.schedule.timing()
        return np.concatenate([x0, self._u_prev, p, a, b])

    def _set_end_bounds(self, shift: bool = True) -> float | None:
        """Minimum time: the bounds of this solve's time to the batch end, in the transcription
        and both solvers' arguments; returns its scaled guess (None without minimum time)."""
        o, schedule = self.ocp, self.schedule
        if schedule is None or o.t_end_idx is None:
            return None
        _, _, lo, hi = schedule.timing()
        dt = self.config.sample_time
        o.lbx[o.t_end_idx], o.ubx[o.t_end_idx] = lo / dt, hi / dt
        self._clean.lo[o.t_end_idx], self._clean.hi[o.t_end_idx] = lo / dt, hi / dt
        self._sqp_call.args["lbx"][o.t_end_idx] = lo / dt
        self._sqp_call.args["ubx"][o.t_end_idx] = hi / dt
        self._bounds["lbx"], self._bounds["ubx"] = ca.DM(o.lbx), ca.DM(o.ubx)
        if not shift and self._t_end is not None:
            return min(max(self._t_end, lo), hi) / dt
        return schedule.guess(self._t_end) / dt

    def _attempt(self, t: float, x0: np.ndarray, p: np.ndarray, shift: bool = True) -> Decision:
        """One solve from ``x0``, warm-started when the last one succeeded: from its solution
        one interval on (``shift``), or as it is (a retry in the same cycle)."""
        if self._sqp_call.solver is not self.sqp:  # the SQP was replaced after construction
            self._sqp_call = BufferedSolver(self.sqp, self.ocp)
        t_end = self._set_end_bounds(shift)
        if self._guess is None:
            w0 = self._cold_guess(x0, p)
            lam_x0, lam_g0 = np.zeros_like(w0), np.zeros_like(self.ocp.lbg)
        elif shift:
            w0, lam_x0, lam_g0 = self._shifted()
        else:
            w0, lam_x0, lam_g0 = (v.copy() for v in self._guess)
            if t_end is not None and self.ocp.t_end_idx is not None:
                w0[self.ocp.t_end_idx] = t_end
        p_all = self._parameters(x0, p)
        cold_solver = self.ipopt_cold if self.config.solver.cold_start != "sqp" else None
        cold_solver = cold_solver if self._guess is None else None
        started = time.perf_counter()
        fallback: str | None = None  # the SQP's status when IPOPT took over
        note = ""  # the convexified SQP's retry, when it produced the solution
        try:
            if cold_solver is not None:  # no warm start: the reference's, or the simulated guess
                self.cold_starts += 1
                args, first = self._args(w0, lam_x0, lam_g0, p_all), reference_first(self, p_all)
                sol, stats = cold_solve(self.sqp_cold, cold_solver, args, first)
            else:
                sol, stats = self._sqp_call(w0, lam_x0, lam_g0, p_all)
                if not stats.get("success", False) and self.sqp_convex is not None:
                    sol, stats, note = self._retry_convex(t, stats, (w0, lam_x0, lam_g0, p_all))
                if not stats.get("success", False) and self.ipopt is not None:
                    fallback = str(stats.get("return_status", "unknown"))
                    ipopt, warm = self.ipopt, (w0, lam_x0, lam_g0, p_all)
                    if self._stale and self.ipopt_cold is not None:  # not from an old plan
                        w_c = self._cold_guess(x0, p)
                        zeros = np.zeros_like(w_c), np.zeros_like(lam_g0)
                        ipopt, warm = self.ipopt_cold, (w_c, *zeros, p_all)
                    sol, stats = self._fall_back(ipopt, t, stats, started, warm)
        except RuntimeError as exc:
            self._guess = None
            return self._failed(t, SolveStatus.ERROR, f"{type(exc).__name__}: {exc}")
        elapsed = time.perf_counter() - started
        decision, u0, z_first = self._read(t, sol, stats, elapsed, fallback, note)
        if z_first is not None:
            self._z_guess = z_first
        if decision.ok:
            self._solved_at = t
            self._u_prev = u0.copy()  # decision.inputs' values, in input order
            self._guess = self._clean(sol)
            self._t_end = decision.end_time - t if self.schedule is not None else None
        else:
            self._guess = None
            self._t_end = None
            self._solved_at = None
        return decision

    def _retry_convex(
        self,
        t: float,
        sqp_stats: dict[str, Any],
        warm: tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray],
    ) -> tuple[dict[str, np.ndarray], dict[str, Any], str]:
        """The convexified SQP from the same warm start, after the exact-Hessian SQP failed
        (counted in ``sqp_retries``), and a note for the Decision's return status; the
        failed SQP's stats (and no note) when the retry fails too.

        The full-step SQP with the exact Lagrangian Hessian diverged on the bioreactor while
        the biomass rode its soft cap and the substrate its bound (cycles 86-149: 7 IPOPT
        fallbacks, 40 to 140 ms each): the QPs' indefinite Hessians sent it away. With the
        Hessian's blocks convexified it converges from the same warm start.
        """
        convex = self.sqp_convex
        if convex is None:  # callers check first: only an exact-Hessian SQP has one
            raise RuntimeError("no convexified SQP to retry with (hessian is not exact)")
        if self._convex_call is None or self._convex_call.solver is not convex:
            self._convex_call = BufferedSolver(convex, self.ocp)
        self.sqp_retries += 1
        sol, stats = self._convex_call(*warm)
        log.info(
            "%s: cycle %d (t=%g %s): the SQP did not converge (%s); convexified SQP: %s",
            self.source,
            self.cycles,
            t,
            self.model.time_unit,
            sqp_stats.get("return_status", "unknown"),
            stats.get("return_status", "unknown"),
        )
        if not stats.get("success", False):
            return sol, sqp_stats, ""
        stats["iter_count"] = int(sqp_stats.get("iter_count", 0)) + int(stats.get("iter_count", 0))
        failed = sqp_stats.get("return_status", "unknown")
        return sol, stats, f" (convexified SQP retry; SQP: {failed})"

    def _fall_back(
        self,
        ipopt: ca.Function,
        t: float,
        sqp_stats: Mapping[str, Any],
        started: float,
        warm: tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray],
    ) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
        """IPOPT from the SQP's warm start, counted in ``fallbacks`` and logged as a warning
        naming the cycle: a fallback costs one to three orders of magnitude of solve time."""
        self.fallbacks += 1
        sqp_ms = 1e3 * (time.perf_counter() - started)
        sol, stats = solve_plain(ipopt, self._args(*warm))
        stats["iter_count"] = int(sqp_stats.get("iter_count", 0)) + int(stats.get("iter_count", 0))
        log.warning(
            "%s: cycle %d (t=%g %s): the SQP did not converge (%s, %.3g ms); IPOPT fallback "
            "%s (%.3g ms in all); fallbacks so far: %d",
            self.source,
            self.cycles,
            t,
            self.model.time_unit,
            sqp_stats.get("return_status", "unknown"),
            sqp_ms,
            stats.get("return_status", "unknown"),
            1e3 * (time.perf_counter() - started),
            self.fallbacks,
        )
        return sol, stats

    def _args(
        self, x0: np.ndarray, lam_x0: np.ndarray, lam_g0: np.ndarray, p: np.ndarray
    ) -> dict[str, Any]:
        """The arguments of a plain (IPOPT) solver call."""
        return {"x0": x0, "lam_x0": lam_x0, "lam_g0": lam_g0, "p": p, **self._bounds}
