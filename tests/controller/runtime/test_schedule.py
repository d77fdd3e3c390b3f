"""The supervisor's schedule (:func:`controller.runtime.schedule.wait_until`): it wakes at
the due time, returns False once stop is set, and leaves the caller's stop waiter alone."""

from __future__ import annotations

import asyncio

from controller.clock import SteppedClock
from controller.runtime.schedule import wait_until


async def turns(n: int = 3) -> None:
    """Let the loop run the waits' tasks up to where they park."""
    for _ in range(n):
        await asyncio.sleep(0)


async def test_wakes_at_the_due_time_with_and_without_a_kept_stop_waiter() -> None:
    clock, stop = SteppedClock(), asyncio.Event()
    stopper = asyncio.ensure_future(stop.wait())
    for kept in (None, stopper):
        due = clock.now() + 1.0
        waiting = asyncio.ensure_future(wait_until(clock, due, stop, kept))
        await turns()
        assert clock.waiting == 1 and not waiting.done()
        clock.advance_to(due)
        assert await waiting is True
        assert clock.waiting == 0
    assert not stopper.done()  # the caller's waiter is kept for the next cycle
    stopper.cancel()


async def test_stop_ends_the_wait_and_a_set_stop_does_not_sleep() -> None:
    clock, stop = SteppedClock(), asyncio.Event()
    stopper = asyncio.ensure_future(stop.wait())
    waiting = asyncio.ensure_future(wait_until(clock, 5.0, stop, stopper))
    await turns()
    assert clock.waiting == 1
    stop.set()
    assert await waiting is False
    assert clock.waiting == 0  # the sleeper was cancelled, not left parked
    assert await wait_until(clock, 10.0, stop) is False
    assert await wait_until(clock, 10.0, stop, stopper) is False
    assert clock.waiting == 0
