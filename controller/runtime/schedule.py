"""The supervisor's schedule: sleeping until a cycle is due, and skipping cycles after a stall.

Cycles are due every sample on the injected clock. After a stall (the process stopped or
starved, and woke more than half a sample late) the missed cycles are skipped, not run back to
back: the schedule restarts from the moment the loop wakes up.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Any

from controller.clock import Clock
from controller.runtime.cycle import Counters

__all__ = ["stall_shift", "wait_until"]

log = logging.getLogger("pharmatwin.supervisor")


async def wait_until(
    clock: Clock, t: float, stop: asyncio.Event, stopper: asyncio.Future[Any] | None = None
) -> bool:
    """Sleep until process time ``t``; False when ``stop`` was set meanwhile.

    ``stopper``: a task waiting on ``stop`` that the caller keeps across cycles. With it the
    calling task sleeps on the clock itself (no helper task, no ``asyncio.wait``: three event
    loop turns a cycle fewer) and ``stop`` interrupts the sleep by cancelling it
    (:func:`_interruptible`); without it a sleeper task is raced against a stop waiter made
    for this wait."""
    if stop.is_set():
        return False
    if stopper is not None:
        return await _interruptible(clock, t, stop, stopper)
    stopping = asyncio.ensure_future(stop.wait())
    sleeper = asyncio.ensure_future(clock.sleep_until(t))
    await asyncio.wait({sleeper, stopping}, return_when=asyncio.FIRST_COMPLETED)
    for task in (sleeper, stopping):
        if not task.done():
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
    return sleeper.done() and not sleeper.cancelled() and not stop.is_set()


async def _interruptible(
    clock: Clock, t: float, stop: asyncio.Event, stopper: asyncio.Future[Any]
) -> bool:
    """The current task sleeps on the clock; ``stopper`` finishing cancels that sleep (only
    while it lasts: a task already past it is never cancelled; a cancel that finds the sleep
    over but the task not yet resumed is delivered at the sleep's await, so it lands here
    too). A cancellation from anyone else propagates as it would have."""
    if stopper.done():  # stop was set and cleared again: do not sleep through a stop
        return False
    task = asyncio.current_task()
    if task is None:
        raise RuntimeError("wait_until must run in a task")
    sleeping, interrupted = True, False

    def interrupt(_: object) -> None:
        nonlocal interrupted
        if sleeping and not interrupted:
            interrupted = True
            task.cancel()

    stopper.add_done_callback(interrupt)
    try:
        await clock.sleep_until(t)
    except asyncio.CancelledError:
        if not interrupted or task.uncancel() > 0:
            raise  # cancelled from outside (too)
        return False
    finally:
        sleeping = False
        stopper.remove_done_callback(interrupt)
    return not stop.is_set()


def stall_shift(clock: Clock, counters: Counters, k: int, due: float, sample_s: float) -> float:
    """How far (process seconds) to move the schedule after cycle ``k`` woke for ``due``: 0 on
    time; after a stall (woken more than half a sample late) the lateness, the missed cycles
    counted as skipped and the stall logged."""
    late = clock.now() - due
    if late <= sample_s / 2:
        return 0.0
    missed = int(late // sample_s)
    counters.stalls += 1
    counters.skipped_cycles += missed
    log.warning(
        "cycle %d: woke %.3g s late (sample %.3g s): stalled; %d missed cycle(s) skipped, "
        "the schedule restarts now",
        k,
        late,
        sample_s,
        missed,
    )
    return late
