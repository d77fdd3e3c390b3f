"""The fast MPC's solver pieces: SQP options, row scaling, buffered calls, warm starts.

What :class:`controller.core.fast_mpc.FastController` computes once at construction (the
``sqpmethod`` options, the constraint rows' scaling, the gather indices of the shifted warm
start, the activity tolerances) and calls on its hot path (:class:`BufferedSolver`). Pure
computing on a :class:`controller.core.ocp.Transcription`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import replace
from typing import Any, cast

import casadi as ca
import numpy as np

from controller.config import ControllerConfig, SolverSpec
from controller.core.jit import exclusive
from controller.core.ocp import Transcription
from controller.core.solver_stats import pin_keys, read_stats
from plant_models import PlantModel

#: The solver arguments that never change.
BOUNDS = ("lbx", "ubx", "lbg", "ubg")

#: Constraint rows with larger Jacobian entries than this are scaled to 1 (:func:`row_scaled`).
ROW_MAX = 10.0

#: Iteration cap of one qrqp solve (a warm-started QP takes a few; a cycling one is cut off).
QRQP_MAX_ITER = 100

#: Multipliers at or below this magnitude are no active constraint, in a warm start
#: (:func:`clean_multipliers`) and in qrqp's initial active set (its ``min_lam``, 0 by
#: default). qrqp marks a weakly active constraint (on its bound with a zero multiplier) with
#: a multiplier of DBL_MIN (2.2e-308); sqpmethod hands it to the next iteration's QP, which
#: took it as active. When the bound should be left there (the lyophilizer's chamber pressure
#: meeting its upper bound in the plan's ramp-up), qrqp cycled between adding and dropping
#: another row until its iteration cap, and the SQP ended with Maximum_Iterations_Exceeded or
#: Search_Direction_Becomes_Too_Small: an IPOPT fallback in most OQ campaign cases.
MIN_MULTIPLIER = 1e-12

#: A multiplier is kept in the warm start only where its bound or constraint is active: within
#: this (scaled) tolerance of it, or nearer to it than the multiplier's magnitude (an interior
#: point's complementarity, see :func:`clean_multipliers`). IPOPT leaves small nonzero
#: multipliers on inactive ones, which an active-set QP would take as active.
ACTIVE_TOL = 1e-6

#: sqpmethod options of the retry after a failed exact-Hessian SQP: every Hessian block's
#: negative eigenvalues clipped (``FastController._retry_convex``).
CONVEXIFY: dict[str, Any] = {"convexify_strategy": "eigen-clip"}

#: Extra IPOPT options of the fallback: start from the SQP's warm start and multipliers.
WARM_IPOPT: dict[str, Any] = {
    "ipopt.warm_start_init_point": "yes",
    "ipopt.warm_start_bound_push": 1e-6,
    "ipopt.warm_start_mult_bound_push": 1e-6,
    "ipopt.mu_init": 1e-4,
}


#: The key of the SQP's gradient and Jacobian code (:func:`structured_jac_fg`, made only when
#: the code is generated, ``FastController._sqp_code``): assembled from one interval's SX
#: derivatives, mapped (:mod:`controller.core.ocp_jacobian`). The bioreactor's SQP, compiled:
#: ``nlp_jac_fg`` 48 -> 17 us and ``nlp_hess_l`` 54 -> 25 us per evaluation (stats), its
#: library's C code 685k -> 261k characters (gcc -O2 3.7 -> 1.3 s); B1 step median 1.31-1.37
#: -> 1.12-1.20 ms (A/B interleaved, load 2.2-2.5). The whole NLP expanded to SX (``expand``)
#: instead saved ~13 % but made that C code 4x longer (gcc 5.8 -> 31 s; B8's cold start is
#: <= 10 s).
JAC_FG = "nlp_jac_fg structured 2"
#: The key of the exact Hessian's code (:func:`structured_hess_l`), assembled likewise.
HESS_L = "nlp_hess_l structured 1"


class BufferedSolver:
    """An nlpsol called through a CasADi ``FunctionBuffer`` on preallocated numpy vectors.

    A plain call converts every numpy input to a DM and every output back (with a dict by
    name each way): about 0.15 ms of a 1 ms SQP step. Here the bounds are written once, the
    warm start and parameters are copied into place, and the solver writes its outputs into
    numpy vectors directly; the solve itself is the same (same inputs, same code).
    """

    def __init__(self, solver: ca.Function, ocp: Transcription) -> None:
        self.solver = solver
        self.args = {n: np.zeros(solver.nnz_in(n)) for n in solver.name_in()}
        self.res = {n: np.zeros(solver.nnz_out(n)) for n in solver.name_out()}
        # x and g, lam_x and lam_g written side by side: each pair copied (and its
        # multipliers cleaned, drop_inactive) in one numpy call, not two.
        n_x, n_xg = solver.nnz_out("x"), solver.nnz_out("x") + solver.nnz_out("g")
        self.n_x, self._primal, self._dual = n_x, np.zeros(n_xg), np.zeros(n_xg)
        self.res["x"], self.res["g"] = self._primal[:n_x], self._primal[n_x:]
        self.res["lam_x"], self.res["lam_g"] = self._dual[:n_x], self._dual[n_x:]
        for name, value in zip(BOUNDS, (ocp.lbx, ocp.ubx, ocp.lbg, ocp.ubg), strict=True):
            self.args[name][:] = value
        buf, self._eval = solver.buffer()
        self._exclusive = exclusive(solver)  # a shared solver runs one call at a time
        # CasADi's stubs miss set_arg's and set_res's buffer-protocol overload.
        self._buf = cast(Any, buf)
        # The buffer keeps raw pointers: these arrays are only ever written in place.
        for i, name in enumerate(solver.name_in()):
            self._buf.set_arg(i, self.args[name].data)
        for i, name in enumerate(solver.name_out()):
            self._buf.set_res(i, self.res[name].data)
        self._pinned: frozenset[str] = frozenset()  # the stats keys pinned (see _stats)

    def __call__(
        self, x0: np.ndarray, lam_x0: np.ndarray, lam_g0: np.ndarray, p: np.ndarray
    ) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
        """The solution (fresh 1-D arrays ``x``, ``f``, ``g``, ``lam_x``, ``lam_g``; ``x`` and
        ``g`` views of a fresh ``primal`` ``[x, g]``, the multipliers of ``dual``), stats."""
        a = self.args
        a["x0"][:], a["lam_x0"][:], a["lam_g0"][:], a["p"][:] = x0, lam_x0, lam_g0, p
        with self._exclusive:
            self._eval()
            stats = self._stats()
        n_x, primal, dual = self.n_x, self._primal.copy(), self._dual.copy()
        sol = {"x": primal[:n_x], "f": self.res["f"].copy(), "g": primal[n_x:]}
        sol |= {"lam_x": dual[:n_x], "lam_g": dual[n_x:], "primal": primal, "dual": dual}
        return sol, stats

    def _stats(self) -> dict[str, Any]:
        """The solver's stats, as :func:`read_stats` reads them, with its keys pinned only
        when they are not the last call's (a solver's stats names are the same every call:
        one set comparison instead of pinning 25 keys at every solve)."""
        try:
            stats = self._buf.stats()  # a fresh dict of CasADi's conversion
        except RuntimeError:
            return read_stats(self._buf)  # no stats: the failure status naming why
        if stats.keys() != self._pinned:
            pin_keys(stats)
            nested = any(isinstance(v, dict) for v in stats.values())  # pinned at every call
            self._pinned = frozenset() if nested else frozenset(stats)
        return cast(dict[str, Any], stats)


def active_tol(lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
    """The activity tolerance of every bound or constraint row (see :data:`ACTIVE_TOL`)."""
    with np.errstate(invalid="ignore"):
        return ACTIVE_TOL * np.maximum(1.0, np.abs(np.where(np.isfinite(lo), lo, hi)))


def shift_index(ocp: Transcription, n: int) -> tuple[np.ndarray, np.ndarray]:
    """Gather indices that shift a primal (or bound multiplier) and a constraint multiplier
    vector one interval on: block ``k`` takes block ``k + 1``; the last block takes ``x_N``
    and the copy of ``u_N-1`` and keeps the rest; ``x_N``, its copy and the initial-value
    rows stay. A robust problem is shifted scenario by scenario; its non-anticipativity
    rows keep their multipliers."""
    nx, nu = ocp.x_idx.shape[1], ocp.u_idx.shape[1]
    n_w = ocp.segment or ocp.lbx.shape[0]
    n_g = ocp.g_segment or ocp.lbg.shape[0]
    idx = np.arange(n_w)
    blocks = idx[: ocp.w_block * n].reshape(n, ocp.w_block).copy()
    tail = idx[ocp.w_block * n :]  # x_N, the copy of u_N-1 (and the time to the end)
    blocks[:-1] = blocks[1:]
    blocks[-1, :nx] = tail[:nx]
    blocks[-1, nx + nu : nx + 2 * nu] = tail[nx : nx + nu]
    gdx = np.arange(n_g)
    gb = gdx[nx + nu : nx + nu + n * ocp.g_block].reshape(n, ocp.g_block).copy()
    gb[:-1] = gb[1:]
    w_shift = np.concatenate([blocks.ravel(), tail])
    g_shift = np.concatenate([gdx[: nx + nu], gb.ravel(), gdx[nx + nu + n * ocp.g_block :]])
    if ocp.n_scenarios == 1:
        return w_shift, g_shift
    n_s = ocp.n_scenarios
    w_all = (np.arange(n_s)[:, None] * n_w + w_shift[None]).ravel()
    g_all = (np.arange(n_s)[:, None] * n_g + g_shift[None]).ravel()
    na = n_s * n_g + np.arange(ocp.n_nonanticipative)
    return w_all, np.concatenate([g_all, na])


def input_limits(
    config: ControllerConfig, model: PlantModel, tol: float = 1e-6
) -> tuple[np.ndarray, np.ndarray]:
    """The limits of ``ModelPredictiveController._within_input_limits`` as vectors."""
    lo, hi = [], []
    for name in model.input_names:
        spec = config.inputs[name]
        span = max(1.0, abs(spec.upper - spec.lower))
        lo.append(spec.lower - tol * span)
        hi.append(spec.upper + tol * span)
    return np.array(lo, dtype=float), np.array(hi, dtype=float)


def numpy_solution(sol: Mapping[str, Any]) -> dict[str, np.ndarray]:
    """A solver's DM outputs as fresh 1-D numpy vectors."""
    return {k: np.asarray(v, dtype=float).ravel() for k, v in sol.items()}


def solve_plain(
    solver: ca.Function, args: Mapping[str, Any]
) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """One plain call of an nlpsol (``args`` by name): its solution as numpy vectors, and its
    stats (a failure status when the solver left none). The solver is held meanwhile
    (:func:`controller.core.jit.exclusive`): a shared one's stats are this call's."""
    with exclusive(solver):
        sol = solver(**args)
        stats = read_stats(solver)
    return numpy_solution(sol), stats


def drop_inactive(
    val: np.ndarray, lam: np.ndarray, lo: np.ndarray, hi: np.ndarray, tol: np.ndarray
) -> None:
    """Set to 0, in place, every multiplier ``lam`` of a bound or constraint ``lo <= val <=
    hi`` that is not active (the test of :func:`clean_multipliers`). The vectors may hold
    the decisions and the constraint rows joined (:class:`BufferedSolver`): one pass."""
    with np.errstate(invalid="ignore"):
        size = np.abs(lam)
        to_named = np.where(lam > 0, hi - val, val - lo)  # to the bound lam's sign names
        keep = to_named <= np.maximum(tol, size)
        keep &= size > MIN_MULTIPLIER
        lam[~keep] = 0.0


def clean_multipliers(
    sol: Mapping[str, np.ndarray], ocp: Transcription, tol_x: np.ndarray, tol_g: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The solution ``(x, lam_x, lam_g)`` with the multipliers of inactive bounds and
    constraints set to 0.

    A multiplier is kept when the bound its sign names (positive: the upper one) lies within
    ``tol_x``/``tol_g`` of the value (:func:`active_tol`) or nearer to it than the multiplier's
    magnitude; one of the wrong side for the bound at hand is dropped (an active-set QP would
    take it for the other bound). The second test is IPOPT's: an interior point ends with
    slack times multiplier near its barrier parameter ``mu`` on every bound, so an active bound
    keeps a slack of about ``mu / lam`` (the lyophilizer's pressure at its upper bound: 1.6e-6
    to 7e-6 scaled, multipliers 0.04 to 0.16) and an inactive one a multiplier of
    ``mu / slack`` (1e-6 at a slack of 0.04). With the tolerance alone those active bounds
    lost their multipliers: the first SQP warm-started from an IPOPT solution (after every cold
    start and fallback) began with the wrong active set, and qrqp cycled on it until the SQP
    gave up.
    An active-set (SQP) solution has exact zeros off its active set: unchanged by the test.

    ``sol`` holds fresh 1-D vectors owned by the caller: the multipliers are cleaned in place.
    """
    o = ocp
    w, g, lam_x, lam_g = sol["x"], sol["g"], sol["lam_x"], sol["lam_g"]
    drop_inactive(w, lam_x, o.lbx, o.ubx, tol_x)
    drop_inactive(g, lam_g, o.lbg, o.ubg, tol_g)
    return w, lam_x, lam_g


class Cleaner:
    """A solution's multipliers of inactive bounds and rows set to 0 (:func:`clean_multipliers`),
    for the warm start of the next solve. ``lo``, ``hi`` and ``tol`` are the transcription's
    bounds and :func:`active_tol` joined ``[decisions, rows]``, as :class:`BufferedSolver`
    joins its results: those are cleaned in one pass (the bounds of a decision that change
    between solves, such as the time to the batch end, are updated here too)."""

    def __init__(self, ocp: Transcription) -> None:
        self.ocp = ocp
        self.tol_x, self.tol_g = active_tol(ocp.lbx, ocp.ubx), active_tol(ocp.lbg, ocp.ubg)
        self.lo = np.concatenate([ocp.lbx, ocp.lbg])
        self.hi = np.concatenate([ocp.ubx, ocp.ubg])
        self.tol = np.concatenate([self.tol_x, self.tol_g])

    def __call__(self, sol: Mapping[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """``(x, lam_x, lam_g)`` of ``sol`` (fresh vectors: cleaned in place)."""
        if "dual" not in sol:  # not a BufferedSolver's (IPOPT's): the vectors apart
            return clean_multipliers(sol, self.ocp, self.tol_x, self.tol_g)
        drop_inactive(sol["primal"], sol["dual"], self.lo, self.hi, self.tol)
        return sol["x"], sol["lam_x"], sol["lam_g"]


def structured_jac_fg(ocp: Transcription) -> ca.Function:
    """The SQP's ``nlp_jac_fg`` (``f``, its gradient, ``g`` and its Jacobian) with the
    gradient and Jacobian assembled from one interval's (``ocp.jac_fg``; the Jacobian's rows
    scaled as ``g``): the same derivatives as CasADi's own, in less time (:data:`JAC_FG`)."""
    if ocp.jac_fg is None:
        raise ValueError("this transcription has no assembled derivatives (jac_fg is None)")
    nlp = ocp.nlp
    x, p, f, g = nlp["x"], nlp["p"], nlp["f"], nlp["g"]
    grad, jac = ocp.jac_fg(x, p)
    if ocp.row_scale is not None:
        jac = ca.mtimes(ca.diag(ca.DM(ocp.row_scale)), jac)
    names = ["f", "grad_f_x", "g", "jac_g_x"]
    return ca.Function("nlp_jac_fg", [x, p], [f, grad, g, jac], ["x", "p"], names)


def structured_hess_l(ocp: Transcription) -> ca.Function:
    """The SQP's exact ``nlp_hess_l`` assembled from one interval's (``ocp.hess_l``, with
    the multipliers of scaled rows scaled back): the same Hessian as CasADi's own."""
    if ocp.hess_l is None:
        raise ValueError("this transcription has no assembled Hessian (hess_l is None)")
    x, p = ocp.nlp["x"], ocp.nlp["p"]
    lam_f, lam_g = ca.MX.sym("lam_f"), ca.MX.sym("lam_g", ocp.lbg.shape[0])
    lam = lam_g if ocp.row_scale is None else lam_g * ca.DM(ocp.row_scale)
    hess = ocp.hess_l(x, p, lam_f, lam)
    names = (["x", "p", "lam_f", "lam_g"], ["hess_gamma_x_x"])
    return ca.Function("nlp_hess_l", [x, p, lam_f, lam_g], [hess], *names)


def sqp_options(spec: SolverSpec) -> dict[str, Any]:
    """The ``sqpmethod`` options of the fast path's ``solver`` section (quiet, full steps)."""
    quiet = {"print_header": False, "print_iter": False, "print_info": False}
    qp_opts: dict[str, Any] = {"error_on_fail": False}
    qp_opts.update(quiet if spec.qpsol == "qrqp" else {"printLevel": "none"})
    if spec.qpsol == "qrqp":
        qp_opts["max_iter"] = QRQP_MAX_ITER
        qp_opts["min_lam"] = MIN_MULTIPLIER
    return {
        "qpsol": spec.qpsol,
        "qpsol_options": qp_opts,
        "max_iter": spec.max_iter,
        "tol_pr": spec.tol,
        # A Gauss-Newton SQP's last iterations often only catch the multipliers of bounds up
        # (one iteration behind the exact ones); ``tol_du`` may stop them earlier.
        "tol_du": spec.tol if spec.tol_du is None else spec.tol_du,
        # Full steps: the multipliers stay exactly the QP's, so the QP's active set is
        # warm-started from clean signs (a partial step leaves tiny nonzero multipliers
        # that qrqp takes as active constraints). Warm-started MPC steps need no
        # globalization; a cold start is solved by IPOPT (``cold_start``).
        "max_iter_ls": 0 if not spec.line_search else 3,
        "min_step_size": 1e-9,
        "print_header": False,
        "print_iteration": False,
        "print_status": False,
        "print_time": False,
        "error_on_fail": False,
        "calc_lam_p": False,  # the parameters' multipliers are never used
    }


def row_scaled(ocp: Transcription, w: np.ndarray, p: np.ndarray) -> Transcription:
    """``ocp`` with every constraint row whose Jacobian entries exceed :data:`ROW_MAX` (at the
    decision vector ``w`` and NLP parameters ``p``) divided by its largest entry.

    The solution is the same; the QP's KKT matrix is better conditioned (the lyophilizer's
    algebraic rows reach several hundred per unit of ``Lck``).
    """
    jac = ca.Function(
        "jac_g", [ocp.nlp["x"], ocp.nlp["p"]], [ca.jacobian(ocp.nlp["g"], ocp.nlp["x"])]
    )
    j = jac(w, p)
    rows = np.asarray(j.sparsity().get_triplet()[0], dtype=int)
    row_max = np.zeros(ocp.lbg.shape[0])
    np.maximum.at(row_max, rows, np.abs(np.asarray(j.nonzeros(), dtype=float)))
    d = np.ones_like(row_max)
    big = np.isfinite(row_max) & (row_max > ROW_MAX)
    d[big] = 1.0 / row_max[big]
    if not big.any():
        return ocp
    nlp = dict(ocp.nlp)
    nlp["g"] = ocp.nlp["g"] * ca.DM(d)
    return replace(ocp, nlp=nlp, lbg=ocp.lbg * d, ubg=ocp.ubg * d, row_scale=d)
