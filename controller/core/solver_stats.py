"""Reading a CasADi solver's stats after every solve without churning Python's interned strings.

CasADi converts a ``Function.stats()`` dict to Python with ``PyDict_SetItemString``, which
makes a new ``str`` of every key and interns it. Python 3.11 drops an interned string from
its interning table when the last reference goes, so a stats dict read and let go after every
solve inserts and deletes its ~25 keys (``t_wall_QP``, ``n_call_nlp_jac_fg``, ...) in that
table every cycle. The deleted slots pile up until the table (tens of thousands of entries,
about 1.9 MB) is rebuilt: a 1.9 MB allocation every few thousand solves, between the
solver's own small ones. The heap fragments and grows in MB steps though nothing leaks
(B5: +11 MB over 10^5 MPC cycles, flat without the stats read).

:func:`read_stats` keeps one reference to every key it has seen (a finite set: the solvers'
stats names), so each key stays interned and the conversion finds it instead of inserting it.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Protocol

#: Every stats key read so far: held so that it stays interned (bounded by the stats names).
_KEYS: set[str] = set()


class HasStats(Protocol):
    """A CasADi Function or FunctionBuffer (anything with ``stats()``)."""

    def stats(self, *args: Any) -> Any: ...


def pin_keys(stats: Mapping[str, Any]) -> None:
    """Hold a reference to every key of ``stats`` and of the dicts nested in it."""
    _KEYS.update(stats)
    for value in stats.values():
        if isinstance(value, dict):  # CasADi's nested stats (IPOPT's ``iterations``)
            pin_keys(value)


def read_stats(source: HasStats) -> dict[str, Any]:
    """``source.stats()`` as a dict with its keys pinned (:func:`pin_keys`); when the solver
    left no stats (e.g. sqpmethod when its QP setup failed), a failure status naming why."""
    try:
        stats = dict(source.stats())
    except RuntimeError as exc:
        return {"success": False, "return_status": f"no status ({exc})".splitlines()[0]}
    pin_keys(stats)
    return stats
