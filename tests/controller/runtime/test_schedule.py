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


async def test_a_cancel_from_outside_is_not_taken_for_a_stop() -> None:
    """With a kept stop waiter the caller's task sleeps on the clock itself, and a stop
    cancels that sleep: a cancellation that is not the stop's must still reach the caller."""
    clock, stop = SteppedClock(), asyncio.Event()
    stopper = asyncio.ensure_future(stop.wait())
    waiting = asyncio.ensure_future(wait_until(clock, 5.0, stop, stopper))
    await turns()
    waiting.cancel()
    await asyncio.gather(waiting, return_exceptions=True)
    assert waiting.cancelled() and clock.waiting == 0
    # the stop's cancel and an outside one before the task runs: the outside one propagates
    waiting = asyncio.ensure_future(wait_until(clock, 5.0, stop, stopper))
    await turns()
    stopper.add_done_callback(lambda _: waiting.cancel())  # runs right after the stop's
    stop.set()
    await asyncio.gather(waiting, return_exceptions=True)
    assert waiting.cancelled() and clock.waiting == 0


async def test_a_stop_after_the_wake_never_cancels_the_work_that_follows() -> None:
    """The clock woke the sleeper and the stop came before it ran: the wait reports the stop
    (False), and the caller's next await is not cancelled."""
    clock, stop = SteppedClock(), asyncio.Event()
    stopper = asyncio.ensure_future(stop.wait())
    after: list[str] = []

    async def cycle() -> bool:
        woke = await wait_until(clock, clock.now() + 1.0, stop, stopper)
        await asyncio.sleep(0)  # the work after the wait: must not be cancelled
        after.append("done")
        return woke

    for first in ("clock", "stop"):  # the stop's callback runs after the task resumed
        stop.clear()
        stopper = asyncio.ensure_future(stop.wait())
        task = asyncio.ensure_future(cycle())
        await turns()
        due = clock.now() + 1.0
        if first == "clock":
            clock.advance_to(due)
            stop.set()
        else:
            stop.set()
            clock.advance_to(due)
        assert await task is False
        assert not task.cancelled() and after.pop() == "done"
    # and a stop long after the wait returned leaves the task alone
    stop.clear()
    stopper = asyncio.ensure_future(stop.wait())
    task = asyncio.ensure_future(cycle())
    await turns()
    clock.advance_to(clock.now() + 1.0)
    await turns(1)
    stop.set()
    assert await task is True and after == ["done"]
    stopper.cancel()
