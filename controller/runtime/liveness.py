"""Is the control loop alive? One rule for the operator view and the metrics.

The loop is stalled when no cycle has come for more than :data:`STALE_CYCLES` cycle periods
(and at least :data:`STALE_MIN_S`): a stalled loop shows as stalled, never as its last state
alone. A cycle period is the sample time over the clock's rate (a scaled HIL), in wall seconds.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from controller.runtime.supervisor import Supervisor

__all__ = ["STALE_CYCLES", "STALE_MIN_S", "cycle_period_s", "liveness"]

STALE_CYCLES = 3.0  # the loop is stalled after this many cycle periods without a cycle
STALE_MIN_S = 2.0  # ... and never sooner (a fast scaled clock)


def cycle_period_s(sup: Supervisor) -> float:
    """Wall seconds between cycles: the sample time over the clock's rate."""
    return sup.dt_s / float(getattr(sup.clock, "rate", 1.0))


def liveness(last_at: float | None, now: float, period_s: float) -> dict[str, Any]:
    """``age_s``: seconds from the newest cycle (``last_at``, on the clock of ``now``; None
    before the first) to ``now``; ``stale_after_s``; ``stalled``: the age is beyond it."""
    after = max(STALE_CYCLES * period_s, STALE_MIN_S)
    age = None if last_at is None else max(now - last_at, 0.0)
    return {"age_s": age, "stale_after_s": after, "stalled": age is not None and age > after}
