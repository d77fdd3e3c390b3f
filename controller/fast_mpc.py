"""Fast NMPC: SQP with a sparse QP solver on a multiple-shooting transcription.

:class:`FastController` is the ``solver.backend: fast`` implementation of
:class:`~controller.mpc.ModelPredictiveController`. It solves the same problem as the do-mpc
reference (:class:`~controller.mpc.DoMpcController`): the same objective (stage terms at the
start of each interval, terminal terms at the end, move penalties on scaled moves), input
bounds, hard per-cycle move limits, state bounds (on the inner nodes ``1..N-1``, as do-mpc
applies them), hard and soft constraints (one slack per constraint and interval with a
linear penalty), horizon and sample time. What differs is the transcription and the solver:

* one decision block per interval, ``[x_k, u_k, z_k, eps_k]`` (scaled by the variables'
  ``scale``), then ``x_N``; the state is carried over each interval by ``integrator_steps``
  RK4 steps. For a DAE the algebraic state of every RK4 stage is a decision variable and its
  algebraic equation a constraint (the root-finding is lifted into the NLP);
* the NLP is built once as CasADi SX and solved by ``sqpmethod`` with ``qpsol`` (exact
  Hessian), warm-started from the previous primal and dual solution shifted one interval;
* with ``jit`` its functions are compiled by the system C compiler into a shared library
  cached on disk (:class:`LibraryCache`, the only I/O of this module); a failed compile
  falls back to CasADi's virtual machine with a logged warning;
* when the SQP does not converge, IPOPT solves the same NLP in the same cycle from the same
  warm start (``warm_start_init_point``); ``fallbacks`` counts those cycles. When IPOPT
  fails too, the Decision is FAILED, exactly as with the do-mpc backend.

Times are in the plant model's time unit; values at the interface are physical.
"""

from __future__ import annotations

import hashlib
import logging
import math
import os
import shutil
import subprocess
import tempfile
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import casadi as ca
import numpy as np

from controller.config import ControllerConfig
from controller.mpc import (
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

log = logging.getLogger(__name__)

#: RK4 nodes (fraction of a step) and weights.
_RK4_C = (0.0, 0.5, 0.5, 1.0)
_RK4_B = (1.0 / 6, 1.0 / 3, 1.0 / 3, 1.0 / 6)

#: Extra IPOPT options of the fallback: start from the SQP's warm start and multipliers.
WARM_IPOPT: dict[str, Any] = {
    "ipopt.warm_start_init_point": "yes",
    "ipopt.warm_start_bound_push": 1e-6,
    "ipopt.warm_start_mult_bound_push": 1e-6,
    "ipopt.mu_init": 1e-4,
}


# ---------------------------------------------------------------------- transcription
@dataclass(frozen=True)
class Transcription:
    """The multiple-shooting NLP and where each quantity sits in its vectors.

    ``nlp`` has ``x`` (the decision vector, scaled), ``p`` (``[x0, u_prev, parameters]``,
    physical), ``f`` and ``g``. ``w_block``/``g_block`` are the sizes of one interval's block
    in the decision and constraint vectors (``g`` starts with ``nx`` initial-value rows).
    """

    nlp: dict[str, Any]
    lbx: np.ndarray
    ubx: np.ndarray
    lbg: np.ndarray
    ubg: np.ndarray
    w_block: int
    g_block: int
    x_idx: np.ndarray  # (N + 1, nx)
    u_idx: np.ndarray  # (N, nu)
    z_idx: np.ndarray  # (N, n_stage * nz)
    eps_idx: np.ndarray  # (N, n_soft)
    soft_names: tuple[str, ...]
    interval: ca.Function  # (xs, u, zs, p) -> (xs_next, alg residuals)


def _named(model: PlantModel, name: str, x: Any, z: Any, u: Any, expr: Any) -> Any:
    for names, vec in (
        (model.state_names, x),
        (model.input_names, u),
        (model.algebraic_names, z),
        (model.expression_names, expr),
    ):
        if name in names:
            return vec[names.index(name)]
    raise KeyError(name)  # check_controller has rejected unknown names already


def _interval(model: PlantModel, dt: float, steps: int) -> tuple[ca.Function, int]:
    """One sample of RK4 on scaled states; for a DAE, every stage's z is an input."""
    nx, nz = len(model.state_names), len(model.algebraic_names)
    xsc, zsc = model.scales(Role.STATE), model.scales(Role.ALGEBRAIC)
    n_stage = 4 * steps if nz else 0
    xs = ca.SX.sym("xs", nx)
    u = ca.SX.sym("u", len(model.input_names))
    zs = ca.SX.sym("zs", nz * n_stage)
    p = ca.SX.sym("p", len(model.parameter_names))
    h = dt / steps
    x, res, j = xs, [], 0
    for _ in range(steps):
        k_prev: Any = None
        acc: Any = 0
        for c, b in zip(_RK4_C, _RK4_B, strict=True):
            xst = x if k_prev is None else x + c * h * k_prev
            z = zs[j * nz : (j + 1) * nz] * zsc if nz else ca.SX(0, 1)
            xdot, alg, _, _ = model.function(xst * xsc, z, u, p)
            if nz:
                res.append(alg)
                j += 1
            k_prev = xdot / xsc
            acc = acc + b * k_prev
        x = x + h * acc
    return (
        ca.Function("interval", [xs, u, zs, p], [x, ca.vertcat(*res) if res else ca.SX(0, 1)]),
        n_stage,
    )


def _stage(
    config: ControllerConfig, model: PlantModel, interval: ca.Function, n_stage: int
) -> tuple[ca.Function, ca.Function, tuple[str, ...]]:
    """One interval's constraints and cost, and the terminal cost, as SX Functions.

    ``stage(xs, us, vs, zs, eps, xs_next, vs_next, p) -> (g, f)`` on scaled variables, where
    ``vs`` is a copy of the previous input (so the Hessian is block diagonal), with
    ``g = [shooting defect, input copy, algebraic residuals, moves, constraint rows]``;
    ``terminal(xs, p) -> f``.
    """
    nx, nu, nz = len(model.state_names), len(model.input_names), len(model.algebraic_names)
    xsc, usc, zsc = (model.scales(r) for r in (Role.STATE, Role.INPUT, Role.ALGEBRAIC))
    cons = nl_constraints(config)
    soft = [c for c in cons if c.soft]
    xs, us = ca.SX.sym("xs", nx), ca.SX.sym("us", nu)
    zs, eps = ca.SX.sym("zs", nz * n_stage), ca.SX.sym("eps", len(soft))
    xs_next, before = ca.SX.sym("xs_next", nx), ca.SX.sym("vs", nu)
    vs_next = ca.SX.sym("vs_next", nu)
    p = ca.SX.sym("p", len(model.parameter_names))
    x, u = xs * xsc, us * usc
    z = zs[:nz] * zsc if nz else ca.SX(0, 1)
    expr = model.function(x, z, u, p)[3]

    def symbol(name: str) -> Any:
        return _named(model, name, x, z, u, expr)

    def depends(e: Any) -> bool:
        return bool(ca.depends_on(ca.SX(0) + e, ca.vertcat(us, zs)))

    lterm, mterm = objective_terms(config, model, "<fast>", symbol, depends)
    x_end, alg = interval(xs, u, zs, p)
    g: list[Any] = [xs_next - x_end, vs_next - us, alg]
    for j, name in enumerate(model.input_names):
        down, up = move_limits(config, name)
        if math.isfinite(down) or math.isfinite(up):
            g.append((us[j] - before[j]) * usc[j])
    f: Any = ca.SX(0) + lterm
    i_eps = 0
    for c in cons:
        row = c.sign * symbol(c.expression)
        if c.soft:
            row -= eps[i_eps]
            f += c.penalty * eps[i_eps]
            i_eps += 1
        g.append(row)
    penalty = np.array([config.inputs[n].move_penalty for n in model.input_names])
    f += ca.dot(ca.DM(penalty), (us - before) ** 2)
    stage = ca.Function(
        "stage", [xs, us, before, zs, eps, xs_next, vs_next, p], [ca.vertcat(*g), f]
    )
    # A terminal term depends on states and parameters only (objective_terms checks it).
    m_fun = ca.Function("mterm_full", [xs, us, zs, p], [ca.SX(0) + mterm])
    xs_t = ca.SX.sym("xs", nx)
    terminal = ca.Function(
        "terminal", [xs_t, p], [m_fun(xs_t, ca.DM.zeros(nu), ca.DM.zeros(nz * n_stage), p)]
    )
    return stage, terminal, tuple(c.name for c in soft)


def _stage_bounds(config: ControllerConfig, model: PlantModel) -> tuple[list[float], list[float]]:
    """Bounds of one interval's ``g`` rows after the defect and algebraic rows."""
    lo: list[float] = []
    hi: list[float] = []
    for name in model.input_names:
        down, up = move_limits(config, name)
        if math.isfinite(down) or math.isfinite(up):
            lo.append(-down)
            hi.append(up)
    for c in nl_constraints(config):
        lo.append(-math.inf)
        hi.append(c.sign * c.bound)
    return lo, hi


def transcribe(
    config: ControllerConfig, model: PlantModel, source: str, steps: int
) -> Transcription:
    """Build the multiple-shooting NLP of ``config`` for ``model`` (see the module doc).

    The intervals are one SX ``stage`` Function mapped over the horizon, so the NLP's
    derivatives (and its generated C code) hold one interval's code, not ``N`` copies.
    """
    n = config.horizon
    nx, nu, nz = len(model.state_names), len(model.input_names), len(model.algebraic_names)
    xsc, usc = model.scales(Role.STATE), model.scales(Role.INPUT)
    interval, n_stage = _interval(model, config.sample_time, steps)
    stage, terminal, soft_names = _stage(config, model, interval, n_stage)
    n_eps = len(soft_names)
    x0, u_prev = ca.MX.sym("x0", nx), ca.MX.sym("u_prev", nu)
    p = ca.MX.sym("p", len(model.parameter_names))
    xs = [ca.MX.sym(f"xs{k}", nx) for k in range(n + 1)]
    us = [ca.MX.sym(f"us{k}", nu) for k in range(n)]
    vs = [ca.MX.sym(f"vs{k}", nu) for k in range(n + 1)]
    zs = [ca.MX.sym(f"zs{k}", nz * n_stage) for k in range(n)]
    eps = [ca.MX.sym(f"eps{k}", n_eps) for k in range(n)]
    w: list[Any] = []
    for k in range(n):
        w += [xs[k], us[k], vs[k], zs[k], eps[k]]
    w += [xs[n], vs[n]]
    g_map, f_map = stage.map(n)(
        ca.horzcat(*xs[:-1]),
        ca.horzcat(*us),
        ca.horzcat(*vs[:-1]),
        ca.horzcat(*zs),
        ca.horzcat(*eps),
        ca.horzcat(*xs[1:]),
        ca.horzcat(*vs[1:]),
        ca.repmat(p, 1, n),
    )
    g = ca.vertcat(xs[0] - x0 / xsc, vs[0] - u_prev / usc, ca.vec(g_map))
    f = ca.sum2(f_map) + terminal(xs[n], p)

    w_block = nx + 2 * nu + nz * n_stage + n_eps
    n_w = w_block * n + nx + nu
    idx = np.arange(n_w)
    blocks = idx[: w_block * n].reshape(n, w_block)
    x_idx = np.vstack([blocks[:, :nx], idx[w_block * n : w_block * n + nx][None, :]])
    u_idx = blocks[:, nx : nx + nu]
    z_idx = blocks[:, nx + 2 * nu : nx + 2 * nu + nz * n_stage]
    eps_idx = blocks[:, nx + 2 * nu + nz * n_stage :]
    lbw, ubw = np.full(n_w, -np.inf), np.full(n_w, np.inf)
    lbw[u_idx] = np.array([config.inputs[nm].lower for nm in model.input_names]) / usc
    ubw[u_idx] = np.array([config.inputs[nm].upper for nm in model.input_names]) / usc
    lbw[eps_idx] = 0.0
    for name, (lo, hi) in config.state_bounds.items():
        i = model.state_names.index(name)
        inner = x_idx[1:n, i]  # do-mpc bounds the inner nodes only (no terminal bounds)
        if lo is not None:
            lbw[inner] = lo / xsc[i]
        if hi is not None:
            ubw[inner] = hi / xsc[i]
    lo_rows, hi_rows = _stage_bounds(config, model)
    n_alg = nz * n_stage
    n_eq = nx + nu + n_alg
    lbg = np.concatenate([np.zeros(nx + nu), np.tile(np.r_[np.zeros(n_eq), lo_rows], n)])
    ubg = np.concatenate([np.zeros(nx + nu), np.tile(np.r_[np.zeros(n_eq), hi_rows], n)])
    return Transcription(
        nlp={"x": ca.vertcat(*w), "p": ca.vertcat(x0, u_prev, p), "f": f, "g": g},
        lbx=lbw,
        ubx=ubw,
        lbg=lbg,
        ubg=ubg,
        w_block=w_block,
        g_block=n_eq + len(lo_rows),
        x_idx=x_idx,
        u_idx=u_idx,
        z_idx=z_idx,
        eps_idx=eps_idx,
        soft_names=soft_names,
        interval=interval,
    )


# ---------------------------------------------------------------------- compile cache
def default_cache_dir() -> Path:
    """``$PHARMATWIN_CACHE``, else ``~/.cache/pharmatwin``."""
    env = os.environ.get("PHARMATWIN_CACHE")
    return Path(env) if env else Path.home() / ".cache" / "pharmatwin"


class LibraryCache:
    """Compiled NLP libraries on disk, keyed by the CasADi version and the C code's hash.

    The only I/O of the fast path. A library is compiled to a temporary file in the cache
    folder and moved into place with ``os.replace``, so two processes compiling the same
    problem at once both end up loading a complete file.
    """

    def __init__(self, directory: Path | None = None, compiler: str = "gcc") -> None:
        self.directory = directory if directory is not None else default_cache_dir()
        self.compiler = compiler
        self.compiled = 0  # compiler runs by this instance

    def library(self, code: str) -> Path:
        """The shared library built from C ``code``; compiles it on a cache miss.

        Raises OSError or subprocess.CalledProcessError when it cannot be built.
        """
        key = hashlib.sha256(f"casadi {ca.CasadiMeta.version()}\n{code}".encode()).hexdigest()[:32]
        path = self.directory / f"nlp_{key}.so"
        if path.exists():
            return path
        if shutil.which(self.compiler) is None:
            raise OSError(f"C compiler {self.compiler!r} not found on PATH")
        self.directory.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=self.directory) as tmp:
            src, lib = Path(tmp) / "nlp.c", Path(tmp) / "nlp.so"
            src.write_text(code, encoding="utf-8")
            cmd = [self.compiler, "-O1", "-fPIC", "-shared", str(src), "-o", str(lib)]
            subprocess.run(cmd, check=True, capture_output=True, timeout=600)
            self.compiled += 1
            os.replace(lib, path)
        return path


def nlp_code(solver: ca.Function) -> str:
    """C code of every function ``solver`` evaluates (its oracle and derivatives)."""
    gen = ca.CodeGenerator("nlp.c")
    gen.add(solver.oracle())
    for name in solver.get_function():
        gen.add(solver.get_function(name))
    return str(gen.dump())


# ---------------------------------------------------------------------- controller
class FastController(ModelPredictiveController):
    """SQP on multiple shooting, compiled and cached; IPOPT fallback in the same cycle.

    ``library`` is the compiled library in use (None without jit or after a failed
    compile); ``cache`` says whether this construction compiled (``cache.compiled``).
    """

    def __init__(self, config: ControllerConfig, model: PlantModel, source: str = "<config>"):
        super().__init__(config, model, source)
        spec = config.solver
        self.ocp = transcribe(config, model, source, spec.integrator_steps)
        self.fallbacks = 0
        self.cache = LibraryCache()
        self.library: Path | None = None
        self.sqp = self._build_sqp()
        self.ipopt: ca.Function | None = None
        if spec.fallback == "ipopt":
            opts = {**ipopt_options(config), **WARM_IPOPT}
            self.ipopt = ca.nlpsol("fast_fallback", "ipopt", self.ocp.nlp, opts)
        self._z_guess = model.vector(Role.ALGEBRAIC, model.initial_algebraic)
        self._guess: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None
        self._z_root = self._stage_solver()

    # ------------------------------------------------------------------ building
    def _sqp_options(self) -> dict[str, Any]:
        spec = self.config.solver
        quiet = {"print_header": False, "print_iter": False, "print_info": False}
        qp_opts: dict[str, Any] = {"error_on_fail": False}
        qp_opts.update(quiet if spec.qpsol == "qrqp" else {"printLevel": "none"})
        return {
            "qpsol": spec.qpsol,
            "qpsol_options": qp_opts,
            "max_iter": spec.max_iter,
            "tol_pr": spec.tol,
            "tol_du": spec.tol,
            "print_header": False,
            "print_iteration": False,
            "print_status": False,
            "print_time": False,
            "error_on_fail": False,
        }

    def _build_sqp(self) -> ca.Function:
        opts = self._sqp_options()
        plain = ca.nlpsol("fast_sqp", "sqpmethod", self.ocp.nlp, opts)
        if not self.config.solver.jit:
            return plain
        try:
            self.library = self.cache.library(nlp_code(plain))
            return ca.nlpsol("fast_sqp", "sqpmethod", str(self.library), opts)
        except (OSError, RuntimeError, subprocess.SubprocessError) as exc:
            log.warning("%s: jit compile failed, solving without it: %s", self.source, exc)
            self.library = None
            return plain

    def _stage_solver(self) -> ca.Function | None:
        """For a DAE: the stage algebraic states of one interval, given (x, u, p)."""
        if not self.model.is_dae:
            return None
        f = self.ocp.interval
        zs = ca.SX.sym("zs", f.size1_in(2))
        xs, u, p = (ca.SX.sym(n, f.size1_in(i)) for i, n in ((0, "xs"), (1, "u"), (3, "p")))
        res = ca.Function("res", [zs, ca.vertcat(xs, u, p)], [f(xs, u, zs, p)[1]])
        return ca.rootfinder("stage_z", "newton", res, {"error_on_fail": True})

    # ------------------------------------------------------------------ running
    def reset(self, u_prev: Mapping[str, float]) -> None:
        """Forget the warm start; the next step starts from the working setpoints ``u_prev``."""
        self._u_prev = self.model.vector(Role.INPUT, u_prev)
        self._guess = None

    def _cold_guess(self, x0: np.ndarray, p: np.ndarray) -> np.ndarray:
        """Simulate the model with the setpoints held (the algebraic states solved)."""
        o, m = self.ocp, self.model
        xsc, usc = m.scales(Role.STATE), m.scales(Role.INPUT)
        zsc = m.scales(Role.ALGEBRAIC)
        w = np.zeros(o.lbx.shape[0])
        xs, us = x0 / xsc, self._u_prev / usc
        n_stage = o.z_idx.shape[1] // max(1, len(m.algebraic_names))
        zs = np.tile(self._z_guess / zsc, n_stage) if m.is_dae else np.zeros(0)
        w[o.u_idx + o.u_idx.shape[1]] = us  # the copies of the previous input
        w[-len(us) :] = us
        for k in range(self.config.horizon):
            w[o.x_idx[k]], w[o.u_idx[k]] = xs, np.clip(us, o.lbx[o.u_idx[k]], o.ubx[o.u_idx[k]])
            if self._z_root is not None:
                try:
                    zs = np.asarray(self._z_root(zs, np.concatenate([xs, self._u_prev, p])))
                    zs = zs.ravel()
                except RuntimeError:
                    pass
                w[o.z_idx[k]] = zs
            nxt = np.asarray(o.interval(xs, self._u_prev, zs, p)[0]).ravel()
            xs = nxt if np.all(np.isfinite(nxt)) else xs
        w[o.x_idx[-1]] = xs
        return w

    def _shifted(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """The last solution (primal, bound and constraint multipliers) one interval on."""
        if self._guess is None:
            raise RuntimeError("no previous solution to shift")
        w, lam_x, lam_g = self._guess
        o, n = self.ocp, self.config.horizon
        nx, nu = o.x_idx.shape[1], o.u_idx.shape[1]
        out = []
        for vec in (w, lam_x):
            blocks = vec[: o.w_block * n].reshape(n, o.w_block).copy()
            tail = vec[o.w_block * n :].copy()  # x_N and the copy of u_N-1
            blocks[:-1] = blocks[1:]
            blocks[-1, :nx] = tail[:nx]
            blocks[-1, nx + nu : nx + 2 * nu] = tail[nx:]
            out.append(np.concatenate([blocks.ravel(), tail]))
        head = lam_g[: nx + nu]
        gb = lam_g[nx + nu :].reshape(n, o.g_block).copy()
        gb[:-1] = gb[1:]
        return out[0], out[1], np.concatenate([head, gb.ravel()])

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
        x0 = self.model.vector(Role.STATE, x_hat)
        if not np.all(np.isfinite(x0)):
            return self._failed(t, SolveStatus.INVALID, f"non-finite state estimate {x0}")
        if params:
            self.set_parameters(params)
        if u_prev is not None:
            self._u_prev = self.model.vector(Role.INPUT, u_prev)
        p = self.model.parameter_vector(self._params)
        if self._guess is None:
            w0 = self._cold_guess(x0, p)
            lam_x0, lam_g0 = np.zeros_like(w0), np.zeros_like(self.ocp.lbg)
        else:
            w0, lam_x0, lam_g0 = self._shifted()
        args = {
            "x0": w0,
            "lam_x0": lam_x0,
            "lam_g0": lam_g0,
            "p": np.concatenate([x0, self._u_prev, p]),
            "lbx": self.ocp.lbx,
            "ubx": self.ocp.ubx,
            "lbg": self.ocp.lbg,
            "ubg": self.ocp.ubg,
        }
        started = time.perf_counter()
        try:
            sol, stats = self._solve(self.sqp, args)
            fallback = not stats.get("success", False)
            if fallback and self.ipopt is not None:
                self.fallbacks += 1
                iterations = int(stats.get("iter_count", 0))
                sol, stats = self._solve(self.ipopt, args)
                stats["iter_count"] = iterations + int(stats.get("iter_count", 0))
        except RuntimeError as exc:
            self._guess = None
            return self._failed(t, SolveStatus.ERROR, f"{type(exc).__name__}: {exc}")
        elapsed = time.perf_counter() - started
        decision = self._decision(t, sol, stats, elapsed, fallback and self.ipopt is not None)
        if decision.ok:
            self._u_prev = self.model.vector(Role.INPUT, decision.inputs)
            w, lam_x, lam_g = (np.asarray(sol[k]).ravel() for k in ("x", "lam_x", "lam_g"))
            self._guess = (w, lam_x, lam_g)
        else:
            self._guess = None
        return decision

    @staticmethod
    def _solve(solver: ca.Function, args: Mapping[str, Any]) -> tuple[dict[str, Any], dict]:
        sol = solver(**args)
        return sol, dict(solver.stats())

    def _decision(
        self, t: float, sol: Mapping[str, Any], stats: Mapping[str, Any], elapsed: float, fb: bool
    ) -> Decision:
        o, m = self.ocp, self.model
        w = np.asarray(sol["x"]).ravel()
        xs = w[o.x_idx] * m.scales(Role.STATE)
        us = w[o.u_idx] * m.scales(Role.INPUT)
        status_text = str(stats.get("return_status", "unknown"))
        inputs = m.as_dict(Role.INPUT, us[0])
        status = SolveStatus.SUCCESS
        if not stats.get("success", False) and status_text not in ACCEPTED_STATUSES:
            status = SolveStatus.FAILED
        elif not np.all(np.isfinite(us[0])) or not self._within_input_limits(inputs):
            status, status_text = (
                SolveStatus.INVALID,
                f"{status_text}; input outside limits {inputs}",
            )
        eps = w[o.eps_idx]
        slack = {name: float(eps[:, i].max()) for i, name in enumerate(o.soft_names)}
        if m.is_dae and status is SolveStatus.SUCCESS:
            nz = len(m.algebraic_names)
            self._z_guess = w[o.z_idx[0, :nz]] * m.scales(Role.ALGEBRAIC)
        return Decision(
            t=t,
            inputs=inputs,
            status=status,
            return_status=status_text,
            iterations=int(stats.get("iter_count", -1)),
            solve_time_s=elapsed,
            objective=float(np.asarray(sol["f"]).ravel()[0]),
            predicted_states={n: xs[:, i] for i, n in enumerate(m.state_names)},
            predicted_inputs={n: us[:, i] for i, n in enumerate(m.input_names)},
            soft_slack=slack,
            fallback=fb,
        )
