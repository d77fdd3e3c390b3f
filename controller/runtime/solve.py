"""The supervisor's solve: the policy in a worker thread, with a deadline, never two at once.

:class:`SolveRunner` runs :meth:`controller.core.pipeline.ControlPipeline.decide` off the event
loop. A solve that misses its deadline (``solve_deadline_fraction`` of a sample, in wall
seconds on a scaled clock) is a late solve: the cycle holds and the solve runs on; a cycle that
finds it still running is an overrun and holds too. A solver that raises or fails gives a
failed decision, never a crash. Each is counted and is a problem of the cycle.

On a stepped clock there is no deadline: process time stands still while the loop waits for
the solve, so the solve runs on the loop's own thread, without the hop to a worker thread and
back (campaigns in fast mode; a solve cannot be late or overrun there).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable

from controller.clock import Clock
from controller.core.estimate import Estimate
from controller.core.mpc import Decision, SolveStatus
from controller.core.pipeline import ControlPipeline
from controller.runtime.cycle import Counters, CycleView

__all__ = ["SolveRunner"]


class SolveRunner:
    """One solve at a time, with a deadline of ``deadline_fraction * sample_s`` process
    seconds (converted to wall seconds with the clock's ``rate``)."""

    def __init__(
        self,
        pipeline: ControlPipeline,
        clock: Clock,
        counters: Counters,
        *,
        sample_s: float,
        deadline_fraction: float,
        problem: Callable[[CycleView, str], None],
    ) -> None:
        self.pipeline, self.clock, self.counters = pipeline, clock, counters
        self.sample_s, self.deadline_fraction = sample_s, deadline_fraction
        self._problem = problem
        self._solving: asyncio.Task[Decision] | None = None

    def deadline_s(self) -> float | None:
        """The solve deadline in wall seconds (None on a stepped clock)."""
        rate = getattr(self.clock, "rate", None)
        if rate is None:
            return None
        return self.deadline_fraction * self.sample_s / float(rate)

    async def solve(
        self, t_model: float, estimate: Estimate | None, problem: str, view: CycleView
    ) -> Decision:
        """The policy's decision at model time ``t_model``; a failed decision (status ERROR)
        when the cycle has a ``problem``, when there is no estimate, or on an overrun, a late
        solve or a solver that raised."""
        if problem or estimate is None:
            return Decision(t_model, {}, SolveStatus.ERROR, problem or "no estimate", 0, 0.0)
        if self._solving is not None and not self._solving.done():
            self.counters.overruns += 1
            view.solve_failed = True
            self._problem(view, "overrun: the previous solve is still running; cycle skipped")
            return Decision(t_model, {}, SolveStatus.ERROR, "overrun", 0, 0.0)
        deadline = self.deadline_s()
        try:
            decision = await self._decide(t_model, estimate, deadline)
        except TimeoutError:
            self.counters.late_solves += 1
            view.solve_failed = True
            self._problem(view, f"solve missed its deadline of {deadline:.3g} s")
            return Decision(t_model, {}, SolveStatus.ERROR, "late solve", 0, 0.0)
        except Exception as exc:  # a solver that raised is a failed decision, never a crash
            self.counters.failed_solves += 1
            view.solve_failed = True
            self._problem(view, f"solver raised {type(exc).__name__}: {exc}")
            return Decision(t_model, {}, SolveStatus.ERROR, f"solver raised: {exc}", 0, 0.0)
        if not decision.ok:
            self.counters.failed_solves += 1
            view.solve_failed = True
            self._problem(view, f"solve failed: {decision.status} {decision.return_status}")
        return decision

    async def _decide(self, t_model: float, estimate: Estimate, deadline: float | None) -> Decision:
        """The policy's decision: in a worker thread, awaited at most ``deadline`` wall
        seconds (TimeoutError past it); with no deadline (a stepped clock: process time
        stands still while the loop waits for the solve) on the loop's own thread, without
        the hop to a worker and back. Either way one solve at a time, and what the policy
        raises propagates."""
        if deadline is None:
            return self._policy(t_model, estimate)
        self._solving = asyncio.ensure_future(asyncio.to_thread(self._policy, t_model, estimate))
        return await asyncio.wait_for(asyncio.shield(self._solving), deadline)

    def _policy(self, t_model: float, estimate: Estimate) -> Decision:
        """The pipeline's decision; a TimeoutError the policy raises itself is not a missed
        deadline: it comes out as a RuntimeError (a solver that raised)."""
        try:
            return self.pipeline.decide(t_model, estimate)
        except TimeoutError as exc:
            raise RuntimeError(f"TimeoutError: {exc}") from exc

    async def settle(self, timeout_s: float) -> None:
        """Wait (at most ``timeout_s`` wall seconds) for a solve still running; its result and
        any error are dropped."""
        if self._solving is not None and not self._solving.done():
            with contextlib.suppress(Exception):
                await asyncio.wait_for(asyncio.shield(self._solving), timeout_s)
