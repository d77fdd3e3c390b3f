"""The do-mpc backend (``solver.backend: do-mpc``, the reference) of the MPC.

:class:`DoMpcController` wraps a do-mpc ``MPC`` (orthogonal collocation) and fixes
what do-mpc leaves to the caller (see shared/FIELD-NOTES.md):

* IPOPT options are passed explicitly (do-mpc's own defaults are dropped), with MUMPS;
* an initial guess is always set, so ``make_step`` never sleeps 5 s;
* the previous solution is shifted one interval as the warm start;
* per-cycle move limits (``max_move``/``max_rise``/``max_fall``) are hard constraints of the
  NLP, so the plan is one the safety layer will not have to cut;
* the configured constraints are path constraints: do-mpc holds them at the start of every
  interval, and rows added here hold them at its end and at ``constraint_points`` inner
  points (:meth:`DoMpcController._add_path_constraints`), so the plan keeps them between
  samples;
* ``solver_stats`` are read after every solve: a failed solve becomes a :class:`Decision`
  with ``status`` FAILED (never a silently returned input);
* do-mpc's in-memory history is reset every ``history_limit`` steps.

Built by :func:`controller.core.policy.build_policy`; the objective, bounds, move limits and
soft constraints are the shared ones of :mod:`controller.core.mpc`. Pure computing: no I/O.
Times are in the plant model's time unit; values are physical.
"""

from __future__ import annotations

import math
import time
import warnings
from collections.abc import Mapping
from typing import Any

import casadi as ca
import numpy as np

from controller.config import ControllerConfig, robust_scenarios, robust_values
from controller.core.mpc import (
    ACCEPTED_STATUSES,
    Decision,
    ModelPredictiveController,
    SolveStatus,
    ipopt_options,
    move_limits,
    nl_constraints,
    objective_terms,
)
from plant_models import PlantModel, Role


class DoMpcController(ModelPredictiveController):
    """A do-mpc MPC built from a :class:`ControllerConfig` for one plant model."""

    def __init__(self, config: ControllerConfig, model: PlantModel, source: str = "<config>"):
        with warnings.catch_warnings():  # do-mpc warns about optional extras on import
            warnings.simplefilter("ignore")
            import do_mpc

        super().__init__(config, model, source)
        self._dm_model = model.do_mpc_model()
        self._steps_since_reset = 0
        mpc = do_mpc.controller.MPC(self._dm_model)
        self._configure(mpc)
        self._set_objective(mpc)
        self._set_bounds(mpc)
        self._soft_names = self._set_constraints(mpc)
        self._set_parameters(mpc)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            mpc.prepare_nlp()
            self._add_move_limits(mpc)
            self._add_path_constraints(mpc)
            mpc.create_nlp()
        self._n_scenarios = self._scenario_tree(mpc)[0]
        self.mpc = mpc
        self._z_guess = model.vector(Role.ALGEBRAIC, model.initial_algebraic)
        self._needs_guess = True

    # ------------------------------------------------------------------ building
    def _configure(self, mpc: Any) -> None:
        cfg, s = self.config, self.mpc_settings(self.config)
        for key, value in s.items():
            setattr(mpc.settings, key, value)
        mpc.settings.nlpsol_opts = ipopt_options(cfg)
        self._set_scaling(mpc)

    def _set_scaling(self, mpc: Any) -> None:
        """The model's variable scales (part of the problem: move penalties act on them)."""
        for role, key in ((Role.STATE, "_x"), (Role.INPUT, "_u"), (Role.ALGEBRAIC, "_z")):
            for name in self.model.names(role):
                mpc.scaling[key, name] = self.model.variable(name).scale

    @staticmethod
    def mpc_settings(cfg: ControllerConfig) -> dict[str, Any]:
        return {
            "n_horizon": cfg.horizon,
            "t_step": cfg.sample_time,
            "n_robust": cfg.robust.n_robust if cfg.robust is not None else 0,
            "open_loop": False,
            "state_discretization": "collocation",
            "collocation_type": cfg.collocation.type,
            "collocation_deg": cfg.collocation.degree,
            "collocation_ni": cfg.collocation.finite_elements,
            "store_full_solution": False,
            "store_lagr_multiplier": False,
            "store_solver_stats": [],
        }

    def _symbol(self, name: str) -> Any:
        m = self._dm_model
        if name in self.model.state_names:
            return m.x[name]
        if name in self.model.input_names:
            return m.u[name]
        if name in self.model.algebraic_names:
            return m.z[name]
        return m.aux[name]

    def _depends_on_u_or_z(self, expr: Any) -> bool:
        m = self._dm_model
        uz = ca.vertcat(m.u.cat, m.z.cat) if self.model.is_dae else m.u.cat
        return bool(ca.depends_on(expr, uz))

    def _set_objective(self, mpc: Any) -> None:
        lterm, mterm = objective_terms(
            self.config, self.model, self.source, self._symbol, self._depends_on_u_or_z
        )
        mpc.set_objective(mterm=ca.SX(0) + mterm, lterm=ca.SX(0) + lterm)
        penalties = {n: s.move_penalty for n, s in self.config.inputs.items() if s.move_penalty}
        if penalties:
            mpc.set_rterm(**penalties)

    def _set_bounds(self, mpc: Any) -> None:
        for name, spec in self.config.inputs.items():
            mpc.bounds["lower", "_u", name] = spec.lower
            mpc.bounds["upper", "_u", name] = spec.upper
        for name, (lo, hi) in self.config.state_bounds.items():
            if lo is not None:
                mpc.bounds["lower", "_x", name] = lo
            if hi is not None:
                mpc.bounds["upper", "_x", name] = hi

    def _set_constraints(self, mpc: Any) -> list[str]:
        soft: list[str] = []
        for c in nl_constraints(self.config):
            mpc.set_nl_cons(
                c.name,
                c.sign * self._symbol(c.expression),
                ub=c.sign * c.bound,
                soft_constraint=c.soft,
                penalty_term_cons=c.penalty,
            )
            if c.soft:
                soft.append(c.name)
        return soft

    def _set_parameters(self, mpc: Any) -> None:
        """The parameters of every scenario: the current values (``set_parameters``), with
        the uncertain ones of a robust config at their scenario values.

        A robust config goes through do-mpc's own ``set_uncertainty_values`` (scenario
        combinations in its order, the first nominal); its ``p_fun`` leaves every parameter
        that is not uncertain at 0, so it is replaced by one that fills them in.
        """
        scenarios: list[dict[str, float]] = [{}]
        if self.config.robust is not None:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                mpc.set_uncertainty_values(**robust_values(self.config, self.model))
            scenarios = robust_scenarios(self.config, self.model)
        template = mpc.get_p_template(len(scenarios))

        def p_fun(t_now: float) -> Any:
            for s, fixed in enumerate(scenarios):
                for name in self.model.parameter_names:
                    template["_p", s, name] = fixed.get(name, self._params[name])
            return template

        mpc.set_p_fun(p_fun)

    def _add_move_limits(self, mpc: Any) -> None:
        """Hard per-cycle move limits on the first and every later move of the plan."""
        opt_x, opt_p = mpc.opt_x, mpc.opt_p
        # do-mpc's own input scaling (opt_x holds u / scaling), whatever it was set to.
        u_scale = np.asarray(mpc._u_scaling.cat, dtype=float).ravel()
        # Robust: every scenario's move from its parent's input (one scenario when nominal).
        n_scen, parent = self._scenario_tree(mpc)
        for j, name in enumerate(self.model.input_names):
            down, up = move_limits(self.config, name)
            if not (math.isfinite(up) or math.isfinite(down)):
                continue
            for k in range(self.config.horizon):
                for s in range(n_scen[k]):
                    now = opt_x["_u", k, s][j] * u_scale[j]
                    before = (
                        opt_p["_u_prev"][j]
                        if k == 0
                        else opt_x["_u", k - 1, int(parent[k][s])][j] * u_scale[j]
                    )
                    mpc.nlp_cons.append(now - before)
                    mpc.nlp_cons_lb.append(np.array([-down if math.isfinite(down) else -np.inf]))
                    mpc.nlp_cons_ub.append(np.array([up if math.isfinite(up) else np.inf]))

    def _add_path_constraints(self, mpc: Any) -> None:
        """The configured constraints at the end of every interval and at its
        ``constraint_points`` inner points (do-mpc's own ``set_nl_cons`` rows hold them at its
        start), with the interval's input and soft slack.

        The state and algebraic state at a point are the collocation polynomials of its finite
        element (Lagrange interpolation through the element's nodes). With radau collocation
        the end of an interval is a node, so the end rows are exact; inner points (and the
        end with legendre, which has no node there) are the polynomials' values, on which the
        algebraic equations hold to the collocation's accuracy.
        """
        if not self.config.constraints:
            return
        col = self.config.collocation
        deg, ni = col.degree, col.finite_elements
        tau_root = [0.0, *ca.collocation_points(deg, col.type)]
        points = [
            j / (self.config.constraint_points + 1)
            for j in range(1, self.config.constraint_points + 1)
        ]
        weights = [element_weights(tau, tau_root, ni) for tau in [*points, 1.0]]
        x_un, opt_p = mpc.opt_x_unscaled, mpc.opt_p
        n_branches, n_scen, child, _, offset = mpc._setup_scenario_tree()
        lb, ub = mpc._nl_cons_lb.cat, mpc._nl_cons_ub.cat
        for k in range(self.config.horizon):
            for s in range(n_scen[k]):
                for b in range(n_branches[k]):
                    c = int(child[k][s][b])
                    scenario = b + int(offset[k][s])

                    def x_node(i: int, r: int, k: int = k, s: int = s, c: int = c) -> Any:
                        if i == 0 and r == 0:
                            return x_un["_x", k, s, -1]
                        return x_un[
                            "_x", k + 1, c, (r - 1) if i == 0 else deg + (i - 1) * (deg + 1) + r
                        ]

                    for i, w in weights:
                        x = sum(w[r] * x_node(i, r) for r in range(deg + 1))
                        z = sum(w[r] * x_un["_z", k, c, i * (deg + 1) + r] for r in range(deg + 1))
                        mpc.nlp_cons.append(
                            mpc._nl_cons_fun(
                                x,
                                x_un["_u", k, s],
                                z,
                                opt_p["_tvp", k],
                                opt_p["_p", scenario],
                                x_un["_eps", k, s],
                            )
                        )
                        mpc.nlp_cons_lb.append(lb)
                        mpc.nlp_cons_ub.append(ub)

    def _scenario_tree(self, mpc: Any) -> tuple[list[int], Any]:
        """do-mpc's scenarios per stage and parent scenarios (``[1] * N`` when nominal)."""
        n = self.config.horizon
        tree = getattr(mpc, "scenario_tree", None)
        if self.config.robust is None or tree is None:
            return [1] * (n + 1), np.zeros((n + 1, 1), dtype=int)
        return list(tree["n_scenarios"]), tree["parent_scenario"]

    # ------------------------------------------------------------------ running
    def reset(self, u_prev: Mapping[str, float]) -> None:
        """Forget the warm start; the next step starts from the working setpoints ``u_prev``."""
        self._u_prev = self.model.vector(Role.INPUT, u_prev)
        self._needs_guess = True

    def _initial_guess(self, x0: np.ndarray) -> None:
        mpc = self.mpc
        mpc.x0 = x0
        mpc.u0 = self._u_prev
        if self.model.is_dae:
            mpc.z0 = self._z_guess
        mpc.set_initial_guess()
        self._needs_guess = False

    def _shift_warm_start(self) -> None:
        """Move the previous solution one interval earlier (the last interval is repeated)."""
        num = self.mpc.opt_x_num
        n = self.config.horizon
        for k in range(n):
            nxt = min(k + 1, n - 1)
            num["_u", k] = num["_u", nxt]
            if self.model.is_dae:
                num["_z", k] = num["_z", nxt]
        for k in range(n):
            num["_x", k] = num["_x", k + 1]

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
        mpc = self.mpc
        if self._needs_guess:
            self._initial_guess(x0)
        else:
            self._shift_warm_start()
        mpc.t0 = t
        mpc.u0 = self._u_prev
        started = time.perf_counter()
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                u = np.asarray(mpc.make_step(x0), dtype=float).ravel()
        except (RuntimeError, AssertionError) as exc:
            self._needs_guess = True
            return self._failed(t, SolveStatus.ERROR, f"{type(exc).__name__}: {exc}")
        elapsed = time.perf_counter() - started
        stats = mpc.solver_stats
        self._bound_history()
        decision = self._decision(t, u, stats, elapsed)
        if decision.ok:
            self._u_prev = u
            if self.model.is_dae:
                self._z_guess = np.asarray(mpc.opt_x_num_unscaled["_z", 0, 0, 0]).ravel()
        else:
            self._needs_guess = True
        return decision

    def _decision(
        self, t: float, u: np.ndarray, stats: Mapping[str, Any], elapsed: float
    ) -> Decision:
        status_text = str(stats.get("return_status", "unknown"))
        iterations = int(stats.get("iter_count", -1))
        inputs = self.model.as_dict(Role.INPUT, u)
        status = SolveStatus.SUCCESS
        if not stats.get("success", False) and status_text not in ACCEPTED_STATUSES:
            status = SolveStatus.FAILED
        elif not np.all(np.isfinite(u)) or not self._within_input_limits(inputs):
            status, status_text = (
                SolveStatus.INVALID,
                f"{status_text}; input outside limits {inputs}",
            )
        sol = self.mpc.opt_x_num_unscaled
        n = self.config.horizon
        xs = np.array([np.asarray(sol["_x", k, 0, -1]).ravel() for k in range(n + 1)])
        us = np.array([np.asarray(sol["_u", k, 0]).ravel() for k in range(n)])
        slack: dict[str, float] = {}
        if self._soft_names:
            # Robust: the largest slack over every scenario of the tree.
            n_scen = self._n_scenarios
            eps = np.array(
                [
                    np.max([np.asarray(sol["_eps", k, s]).ravel() for s in range(n_scen[k])], 0)
                    for k in range(n)
                ]
            )
            slack = {name: float(eps[:, i].max()) for i, name in enumerate(self._soft_names)}
        return Decision(
            t=t,
            inputs=inputs,
            status=status,
            return_status=status_text,
            iterations=iterations,
            solve_time_s=elapsed,
            objective=_objective(self.mpc),
            predicted_states={n_: xs[:, i] for i, n_ in enumerate(self.model.state_names)},
            predicted_inputs={n_: us[:, i] for i, n_ in enumerate(self.model.input_names)},
            soft_slack=slack,
        )

    def _bound_history(self) -> None:
        self._steps_since_reset += 1
        if self._steps_since_reset >= self.config.history_limit:
            self.mpc.reset_history()
            self._steps_since_reset = 0


def element_weights(tau: float, tau_root: list[float], elements: int) -> tuple[int, list[float]]:
    """The finite element holding the point ``tau`` of an interval (0 < tau <= 1) and the
    Lagrange weights of that element's collocation nodes ``tau_root`` at it."""
    i = min(int(tau * elements), elements - 1) if tau < 1.0 else elements - 1
    local = tau * elements - i
    weights = []
    for j, tj in enumerate(tau_root):
        w = 1.0
        for r, tr in enumerate(tau_root):
            if r != j:
                w *= (local - tr) / (tj - tr)
        weights.append(w)
    return i, weights


def _objective(mpc: Any) -> float:
    """The objective value of do-mpc's last solve (NaN when it recorded none)."""
    stats = mpc.solver_stats
    value = stats.get("iterations", {}).get("obj", [math.nan])
    return float(value[-1]) if len(value) else math.nan
