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

    ``stopper``: a task waiting on ``stop`` that the caller keeps across cycles (saves one
    task, and its cancellation, per cycle); without it one is made for this wait."""
    if stop.is_set():
        return False
    own = stopper is None
    stopping = asyncio.ensure_future(stop.wait()) if stopper is None else stopper
    sleeper = asyncio.ensure_future(clock.sleep_until(t))
    await asyncio.wait({sleeper, stopping}, return_when=asyncio.FIRST_COMPLETED)
    for task in (sleeper, stopping) if own else (sleeper,):
        if not task.done():
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
    return sleeper.done() and not sleeper.cancelled() and not stop.is_set()


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
