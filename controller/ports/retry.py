"""When a port may try to reconnect: capped exponential backoff on the injected clock.

A port that failed to connect (or lost its connection) waits :meth:`Backoff.delay` seconds of
its :class:`~controller.clock.Clock` before the next attempt; before that it raises at once,
without network I/O. The wait is process time, like everything else a port times, so a test
drives it with a :class:`~controller.clock.SteppedClock` and needs no wall-clock sleep, and a
scaled clock scales it with the rest of the loop.
"""

from __future__ import annotations

import math

from controller.clock import Clock
from controller.ports.settings import Backoff


class RetrySchedule:
    """Failed attempts in a row, and the clock time of the next allowed attempt."""

    def __init__(self, backoff: Backoff, clock: Clock) -> None:
        self.backoff = backoff
        self.clock = clock
        self.failures = 0
        self._next_at = -math.inf

    def wait(self) -> float:
        """Seconds of the clock until the next attempt is allowed (<= 0: now)."""
        return self._next_at - self.clock.now()

    def failed(self) -> float:
        """Count one failed attempt (or a loss); return the delay before the next one [s]."""
        delay = self.backoff.delay(self.failures)
        self.failures += 1
        self._next_at = self.clock.now() + delay
        return delay

    def succeeded(self) -> None:
        """Connected: the next loss starts the backoff from its first delay again."""
        self.failures = 0
        self._next_at = -math.inf
