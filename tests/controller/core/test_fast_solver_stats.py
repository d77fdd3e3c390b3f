"""Reading solver stats every solve keeps their keys interned (controller.core.solver_stats).

A stats dict read and dropped after every solve made Python insert and delete its keys in the
interning table each cycle; the table's periodic 1.9 MB rebuilds fragmented the heap (B5).
"""

from __future__ import annotations

import gc
import sys

import casadi as ca
import pytest

from controller.core import solver_stats
from controller.core.solver_stats import read_stats


def _sqp() -> ca.Function:
    x = ca.SX.sym("x", 2)
    nlp = {"x": x, "f": (x[0] - 1) ** 2 + (x[1] - 2) ** 2, "g": x[0] + x[1]}
    quiet = {
        "print_header": False,
        "print_iteration": False,
        "print_status": False,
        "print_time": False,
    }
    qp = {"print_header": False, "print_iter": False, "print_info": False}
    return ca.nlpsol("s", "sqpmethod", nlp, {**quiet, "qpsol": "qrqp", "qpsol_options": qp})


def _still_interned(key: str) -> bool:
    fresh = "".join(list(key))  # an equal string built at run time, not interned
    return sys.intern(fresh) is not fresh


def _qp_keys(stats: dict[str, object]) -> list[str]:
    """Copies of sqpmethod's stats keys of its QP (no literal of them exists anywhere)."""
    return ["".join(list(k)) for k in stats if k.endswith("_QP")]  # copies: not holding keys


def test_plain_stats_keys_leave_the_interning_table() -> None:
    """The failure protected against: the keys of a dropped stats dict are no longer interned,
    so the next read inserts them again."""
    solver_stats._KEYS.clear()  # forget keys pinned by earlier tests (the next read pins again)
    gc.collect()
    solver = _sqp()
    solver(x0=[0, 0], lbg=-10, ubg=10)
    keys = _qp_keys(solver.stats())
    gc.collect()
    assert keys and not any(_still_interned(k) for k in keys)


def test_read_stats_keeps_the_keys_interned() -> None:
    solver = _sqp()
    solver(x0=[0, 0], lbg=-10, ubg=10)
    stats = read_stats(solver)
    assert stats["success"] is True and stats["return_status"] == "Solve_Succeeded"
    keys = _qp_keys(stats)
    del stats
    gc.collect()
    assert keys and all(_still_interned(k) for k in keys)


def test_read_stats_without_stats_is_a_failure_naming_why() -> None:
    solver = _sqp()  # never evaluated: CasADi has no stats to give
    stats = read_stats(solver)
    assert stats["success"] is False
    assert str(stats["return_status"]).startswith("no status (")
    assert "\n" not in stats["return_status"]


if __name__ == "__main__":
    pytest.main([__file__, "-q"])
