"""The multiple-shooting NLP's derivatives assembled from one interval's, mapped.

CasADi's own derivatives of the NLP (:func:`controller.core.ocp.transcribe`) are built by MX
directional derivatives through the mapped interval: the bioreactor's Jacobian ~48 us per
evaluation (4 per SQP step), its Lagrangian Hessian ~54 us (3 per step). Here one
interval's Jacobian, cost gradient and Lagrangian Hessian are SX Functions (flat code for
one interval), mapped over the horizon like the interval itself, and their nonzeros are
placed in the NLP's by a fixed gather (the Jacobian) or summed into place by a constant
matrix (the gradient and Hessian, where neighbouring intervals share ``x_k+1``, ``v_k+1``):
the same values and sparsity, in a third of the time and less code. (The whole NLP
expanded to SX ran about as fast but made the SQP's C code 4x longer to compile.)
Pure computing.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import casadi as ca
import numpy as np

__all__ = ["stage_gradient", "stage_hessian", "stage_jacobian"]

#: The stage Function's inputs that are decisions: x_k, u_k, v_k, z_k, eps_k, x_k+1, v_k+1.
N_DECISION_INPUTS = 7


def _interval_columns(
    k: int, n: int, nx: int, nu: int, w_block: int, cols: np.ndarray
) -> np.ndarray:
    """The decision-vector indices of interval ``k``'s stage decisions: its own block, then
    ``x_k+1`` and ``v_k+1`` (the next block's, or ``x_N`` and ``v_N`` after the last);
    ``cols`` are local columns of that list."""
    nxt = (k + 1) * w_block
    v_next = nxt + (nx if k + 1 == n else nx + nu) + np.arange(nu)
    own = k * w_block + np.arange(w_block)
    return np.concatenate([own, nxt + np.arange(nx), v_next])[cols]


def stage_jacobian(
    stage: ca.Function,
    args: Sequence[Any],
    n: int,
    nx: int,
    nu: int,
    w_block: int,
    n_w: int,
) -> Any:
    """The Jacobian (MX, sparse) of ``g = [x_0 - x0, v_0 - u_prev, vec(stage.map(n)(*args)
    [0])]`` (scaled, as :func:`controller.core.ocp.transcribe` builds it, without end rows)
    with respect to the decision vector of ``n_w`` entries laid out in blocks of
    ``w_block`` ``[x_k, u_k, v_k, z_k, eps_k]`` followed by ``x_N, v_N``."""
    sym = [ca.SX.sym(f"a{i}", stage.sparsity_in(i)) for i in range(stage.n_in())]
    g_k = stage(*sym)[0]
    dec = ca.vertcat(*sym[:N_DECISION_INPUTS])
    jac = ca.Function("stage_jac", sym, [ca.jacobian(g_k, dec)])
    g_block, n_col = g_k.shape[0], dec.shape[0]
    rows, cols = jac.sparsity_out(0).get_triplet()  # CCS order: its nonzeros' order
    rows_k, cols_k = np.asarray(rows, dtype=int), np.asarray(cols, dtype=int)
    nnz = rows_k.shape[0]
    j_map = jac.map(n)(*args)  # g_block x (n * n_col), interval k's columns at k * n_col
    if j_map.shape != (g_block, n * n_col) or j_map.sparsity().nnz() != n * nnz:
        raise RuntimeError(f"mapped stage Jacobian is {j_map.shape}, not {(g_block, n * n_col)}")
    n0 = nx + nu  # the initial-value rows: identities on x_0 and v_0
    g_rows = [np.arange(n0)]
    g_cols = [np.r_[np.arange(nx), nx + nu + np.arange(nu)]]
    for k in range(n):
        g_rows.append(n0 + k * g_block + rows_k)
        g_cols.append(_interval_columns(k, n, nx, nu, w_block, cols_k))
    r_all, c_all = np.concatenate(g_rows), np.concatenate(g_cols)
    order = np.lexsort((r_all, c_all))  # CCS: by column, then row
    sp = ca.Sparsity.triplet(n0 + n * g_block, n_w, r_all[order].tolist(), c_all[order].tolist())
    if sp.nnz() != r_all.shape[0]:
        raise RuntimeError("two stage entries fall on one Jacobian entry")
    values = ca.vertcat(ca.DM.ones(n0), j_map.nz[:])
    return ca.MX(sp, values[order.tolist()])


def stage_gradient(
    stage: ca.Function,
    args: Sequence[Any],
    n: int,
    nx: int,
    nu: int,
    w_block: int,
    n_w: int,
) -> Any:
    """The gradient (MX, dense ``n_w``) of ``sum_k stage.map(n)(*args)[1]`` (the stage costs)
    with respect to the decision vector (the layout of :func:`stage_jacobian`): one interval's
    SX gradient of its cost alone, mapped, and summed into place by a constant matrix (the
    reverse sweep through the whole interval, shooting included, is not run)."""
    sym = [ca.SX.sym(f"a{i}", stage.sparsity_in(i)) for i in range(stage.n_in())]
    f_k = stage(*sym)[1]
    dec = ca.vertcat(*sym[:N_DECISION_INPUTS])
    n_col = dec.shape[0]
    grad = ca.Function("stage_grad", sym, [ca.densify(ca.gradient(f_k, dec))])
    g_map = grad.map(n)(*args)  # n_col x n
    every = np.arange(n_col)
    rows = np.concatenate([_interval_columns(k, n, nx, nu, w_block, every) for k in range(n)])
    place = ca.DM(ca.Sparsity.triplet(n_w, n * n_col, rows.tolist(), list(range(n * n_col))), 1.0)
    return ca.mtimes(place, ca.vec(g_map))


def _summed(nrow: int, ncol: int, rows: np.ndarray, cols: np.ndarray, values: Any) -> Any:
    """The sparse MX matrix of entries ``values`` at ``(rows, cols)``, duplicates summed."""
    pairs = np.unique(np.stack([cols, rows], axis=1), axis=0)  # CCS: by column, then row
    where = {(int(c), int(r)): i for i, (c, r) in enumerate(pairs)}
    target = [where[(int(c), int(r))] for r, c in zip(rows, cols, strict=True)]
    sp = ca.Sparsity.triplet(nrow, ncol, pairs[:, 1].tolist(), pairs[:, 0].tolist())
    add = ca.DM(ca.Sparsity.triplet(len(pairs), len(target), target, list(range(len(target)))), 1.0)
    return ca.MX(sp, ca.mtimes(add, values))


def stage_hessian(
    stage: ca.Function,
    terminal: ca.Function,
    args: Sequence[Any],
    x_end: Any,
    p: Any,
    lam: tuple[Any, Any],
    layout: tuple[int, int, int, int, int],
) -> Any:
    """The Hessian (MX, sparse, both triangles) of the Lagrangian ``lam_f * f + lam_g' g``
    of the NLP of :func:`stage_jacobian` (``f`` the stage costs plus ``terminal(x_end,
    p)``; ``lam = (lam_f, lam_g)``, ``layout = (n, nx, nu, w_block, n_w)``) with respect to
    the decision vector: one interval's SX Hessian of its own Lagrangian, mapped, and the
    overlapping entries (``x_k+1``, ``v_k+1``) summed into place. The initial-value rows
    are linear: no curvature."""
    n, nx, nu, w_block, n_w = layout
    lam_f, lam_g = lam
    sym = [ca.SX.sym(f"a{i}", stage.sparsity_in(i)) for i in range(stage.n_in())]
    g_k, f_k = stage(*sym)
    l_f, l_g = ca.SX.sym("lam_f"), ca.SX.sym("lam_g", g_k.shape[0])
    dec = ca.vertcat(*sym[:N_DECISION_INPUTS])
    hess_k = ca.hessian(l_f * f_k + ca.dot(l_g, g_k), dec)[0]
    fn = ca.Function("stage_hess_l", [*sym, l_f, l_g], [hess_k])
    g_block, n0 = g_k.shape[0], nx + nu
    lam_k = ca.reshape(lam_g[n0 : n0 + n * g_block], g_block, n)
    h_map = fn.map(n)(*args, ca.repmat(lam_f, 1, n), lam_k)
    r_k, c_k = (np.asarray(v, dtype=int) for v in fn.sparsity_out(0).get_triplet())
    xs, ps = ca.SX.sym("xs", x_end.shape[0]), ca.SX.sym("p", p.shape[0])
    h_term = ca.Function("terminal_hess_l", [xs, ps], [ca.hessian(terminal(xs, ps), xs)[0]])
    r_t, c_t = (np.asarray(v, dtype=int) for v in h_term.sparsity_out(0).get_triplet())
    rows = [_interval_columns(k, n, nx, nu, w_block, r_k) for k in range(n)]
    cols = [_interval_columns(k, n, nx, nu, w_block, c_k) for k in range(n)]
    values = [h_map.nz[:]]
    if r_t.shape[0]:  # a terminal cost with curvature
        rows.append(n * w_block + r_t)
        cols.append(n * w_block + c_t)
        values.append(lam_f * h_term(x_end, p).nz[:])
    return _summed(n_w, n_w, np.concatenate(rows), np.concatenate(cols), ca.vertcat(*values))
