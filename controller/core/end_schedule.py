"""The minimum-time schedule of the fast MPC: interval lengths ``a + b * T``, solve by solve.

``objective.min_time`` makes the time to the batch end ``T`` a decision of every solve;
:class:`EndSchedule` says how the horizon's intervals share it (a free end time, a shrinking
horizon on the sample grid, or uniform intervals for the offline optimum of
:mod:`hil.min_time`) and moves on after each applied sample. Pure computing; times are in the
plant model's time unit.
"""

from __future__ import annotations

import math
from typing import Literal

import numpy as np

from controller.config import ControllerConfig

#: A plan's end within this fraction of a sample of an interval's start is at that start.
END_TOL = 1e-3


class EndSchedule:
    """The interval lengths of a minimum-time plan (``objective.min_time``), solve by solve.

    Interval ``k`` lasts ``a[k] + b[k] * T`` with ``T`` the time to the batch end, a decision
    of the solve within ``[lower, upper]`` (:meth:`timing`). ``free_end``: the first interval
    lasts one sample, the others share ``T`` minus that sample equally. ``shrinking``: the
    first ``active - 1`` intervals last one sample, the next one ends at the batch end and the
    rest last nothing; ``T`` lies in that last interval. After each solve :meth:`advance`
    moves on one sample (``active`` counts down with the plan's end); a plan that cannot reach
    the end in ``active`` intervals is retried over the whole horizon (:meth:`widen`).
    ``uniform`` (the offline optimum, :mod:`hil.min_time`): every interval lasts ``T / N``.
    """

    def __init__(
        self,
        mode: Literal["free_end", "shrinking", "uniform"],
        horizon: int,
        sample_time: float,
        max_time: float | None = None,
    ) -> None:
        self.mode = mode
        self.horizon = horizon
        self.dt = sample_time
        self.max_time = max_time if max_time is not None else math.inf
        self.active = horizon
        self.settled = False  # shrinking: one interval fewer was just found infeasible

    @classmethod
    def of(cls, config: ControllerConfig) -> EndSchedule | None:
        """The schedule ``objective.min_time`` asks for (None without minimum time)."""
        mt = config.objective.min_time
        if mt is None:
            return None
        return cls(mt.mode, config.horizon, config.sample_time, mt.max_time)

    def timing(self) -> tuple[np.ndarray, np.ndarray, float, float]:
        """``(a, b, lower, upper)``: interval lengths ``a + b * T`` and the bounds of ``T``."""
        n, dt = self.horizon, self.dt
        a, b = np.zeros(n), np.zeros(n)
        if self.mode == "uniform":
            b[:] = 1.0 / n
            return a, b, 0.0, self.max_time
        if self.mode == "free_end":
            a[0], a[1:], b[1:] = dt, -dt / (n - 1), 1.0 / (n - 1)
            return a, b, dt, max(dt, self.max_time)
        m = self.active
        a[: m - 1] = dt
        a[m - 1], b[m - 1] = -(m - 1) * dt, 1.0
        return a, b, (m - 1) * dt, min(m * dt, max(self.max_time, (m - 1) * dt))

    def guess(self, previous: float | None) -> float:
        """A first guess of ``T``: the last plan's one sample on, else the whole horizon at
        one sample per interval, within the bounds."""
        _, _, lo, hi = self.timing()
        if previous is None:
            return min(max(self.horizon * self.dt, lo), hi)
        return min(max(previous - self.dt, lo), hi)

    def durations(self, t_end: float) -> np.ndarray:
        a, b, _, _ = self.timing()
        return a + b * t_end

    def advance(self, t_end: float) -> None:
        """The plan ending ``t_end`` from now was applied for one sample."""
        self.active = max(1, min(self.horizon, math.ceil(t_end / self.dt - END_TOL) - 1))
        self.settled = False

    def widen(self) -> bool:
        """Plan over the whole horizon again; False when it already did."""
        if self.mode != "shrinking" or self.active == self.horizon:
            return False
        self.active = self.horizon
        self.settled = False
        return True

    def could_end_sooner(self, t_end: float) -> bool:
        """Shrinking: the plan's end sits at the start of its last interval, so one interval
        fewer may do (unless that was just found not to)."""
        if self.mode != "shrinking" or self.active <= 1 or self.settled:
            return False
        return t_end <= (self.active - 1 + END_TOL) * self.dt
