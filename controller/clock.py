"""The one clock: process time in seconds (float).

Every part of PharmaTwin that needs *process time* (the time the plant and the controller live
in) asks a :class:`Clock`. No other module may call ``time.time()``, ``time.monotonic()`` or
``asyncio.sleep()`` for process time; they call ``clock.now()`` and ``await
clock.sleep_until(t)``. That single rule is what lets the same control loop run in real time
against a PLC (:class:`RealClock`), faster than real time against the simulator
(:class:`ScaledClock`), or fully deterministically in tests (:class:`SteppedClock`).

Units: seconds of process time, as ``float``. Process time never goes backwards.

Failure behaviour:

* Constructors raise ``ValueError`` for a non-finite start or a rate that is not a finite number
  ``> 0``.
* ``sleep_until(t)`` raises ``ValueError`` for a non-finite ``t``; a ``t`` already reached
  returns after yielding once to the event loop (every ``sleep_until`` is a cancellation point).
  Cancelling a sleeping task is safe and leaves the clock unchanged.
* :meth:`SteppedClock.advance` / :meth:`SteppedClock.advance_to` raise ``ValueError`` for a
  negative or non-finite step or a target in the past. :class:`SteppedClock` is not thread-safe:
  advance it from the event loop's thread.
"""

from __future__ import annotations

import abc
import asyncio
import itertools
import math
import time
from collections.abc import Callable

__all__ = ["Clock", "RealClock", "ScaledClock", "SteppedClock"]


def _check_finite(what: str, value: float) -> float:
    value = float(value)
    if not math.isfinite(value):
        raise ValueError(f"{what}={value!r} is not allowed; must be a finite number of seconds")
    return value


class Clock(abc.ABC):
    """Process time in seconds. The only source of process time in PharmaTwin."""

    @abc.abstractmethod
    def now(self) -> float:
        """Current process time in seconds (never decreases)."""

    @abc.abstractmethod
    async def sleep_until(self, t: float) -> None:
        """Return once ``now() >= t`` (process seconds). Raises ``ValueError`` if ``t`` is
        not finite. Always yields to the event loop at least once."""

    async def sleep(self, dt: float) -> None:
        """Sleep ``dt`` process seconds from now (``dt <= 0`` just yields)."""
        await self.sleep_until(self.now() + _check_finite("dt", dt))


class _MonotonicClock(Clock):
    """Process time = ``start + rate * (monotonic() - monotonic_at_creation)``."""

    def __init__(
        self,
        rate: float,
        start: float = 0.0,
        *,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        rate = float(rate)
        if not math.isfinite(rate) or rate <= 0:
            raise ValueError(
                f"{type(self).__name__}: rate={rate!r} is not allowed; must be a finite number > 0"
                " (process seconds per real second)"
            )
        self._rate = rate
        self._start = _check_finite("start", start)
        self._monotonic = monotonic
        self._t0 = monotonic()

    @property
    def rate(self) -> float:
        """Process seconds per real (monotonic) second."""
        return self._rate

    def now(self) -> float:
        return self._start + self._rate * (self._monotonic() - self._t0)

    async def sleep_until(self, t: float) -> None:
        t = _check_finite("t", t)
        # The event loop may wake a timer up to its clock resolution early: loop until reached.
        remaining = t - self.now()
        await asyncio.sleep(max(remaining, 0.0) / self._rate)
        while (remaining := t - self.now()) > 0:
            await asyncio.sleep(remaining / self._rate)


class RealClock(_MonotonicClock):
    """Wall-clock paced process time: seconds since creation (``time.monotonic``) + ``start``.

    Use against a real PLC. ``sleep_until`` uses ``asyncio.sleep``.
    """

    def __init__(
        self, start: float = 0.0, *, monotonic: Callable[[], float] = time.monotonic
    ) -> None:
        super().__init__(1.0, start, monotonic=monotonic)


class ScaledClock(_MonotonicClock):
    """Process time running ``rate`` times faster than the monotonic clock.

    ``ScaledClock(3600)`` runs one process hour per real second. ``rate`` must be finite and
    ``> 0`` (``ValueError`` otherwise); ``start`` is the process time at creation.
    """

    def __init__(
        self,
        rate: float,
        start: float = 0.0,
        *,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        super().__init__(rate, start, monotonic=monotonic)


class SteppedClock(Clock):
    """Deterministic clock: time only moves when :meth:`advance` or :meth:`advance_to` is called.

    ``sleep_until(t)`` parks the task on an :class:`asyncio.Event` (no busy-waiting) until the
    clock has been advanced to ``>= t``. Not thread-safe: call ``advance`` from the loop's thread.
    """

    def __init__(self, start: float = 0.0) -> None:
        self._now = _check_finite("start", start)
        self._waiters: dict[int, tuple[float, asyncio.Event]] = {}
        self._ids = itertools.count()

    def now(self) -> float:
        return self._now

    @property
    def waiting(self) -> int:
        """Number of tasks currently parked in :meth:`sleep_until`."""
        return len(self._waiters)

    def advance(self, dt: float) -> float:
        """Move time forward by ``dt >= 0`` seconds, wake due sleepers, return the new time."""
        dt = _check_finite("dt", dt)
        if dt < 0:
            raise ValueError(
                f"SteppedClock.advance: dt={dt!r} is not allowed; time never goes backwards "
                "(dt must be >= 0)"
            )
        return self.advance_to(self._now + dt)

    def advance_to(self, t: float) -> float:
        """Move time forward to ``t >= now()``, wake due sleepers, return the new time."""
        t = _check_finite("t", t)
        if t < self._now:
            raise ValueError(
                f"SteppedClock.advance_to: t={t!r} is before now={self._now!r}; "
                "time never goes backwards"
            )
        self._now = t
        due = [key for key, (when, _) in self._waiters.items() if when <= t]
        for key in due:
            _, event = self._waiters.pop(key)
            event.set()
        return t

    async def sleep_until(self, t: float) -> None:
        t = _check_finite("t", t)
        if t <= self._now:
            await asyncio.sleep(0)
            return
        key = next(self._ids)
        event = asyncio.Event()
        self._waiters[key] = (t, event)
        try:
            await event.wait()
        finally:
            self._waiters.pop(key, None)


class Gate:
    """A monotonic time source held at zero until :meth:`open`.

    Handed to :class:`ScaledClock` as its ``monotonic``: a HIL clock that starts once the
    controller has connected and run its first cycle, so a slow start (a compile, a secure
    handshake) does not eat into the batch."""

    def __init__(self) -> None:
        self._opened_at: float | None = None

    def __call__(self) -> float:
        return 0.0 if self._opened_at is None else time.monotonic() - self._opened_at

    @property
    def is_open(self) -> bool:
        return self._opened_at is not None

    def open(self) -> None:
        if self._opened_at is None:
            self._opened_at = time.monotonic()
