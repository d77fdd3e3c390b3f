"""The supervisor's solve (:class:`controller.runtime.solve.SolveRunner`): where it runs, and
what a late, raising or failing solve gives.

On a stepped clock (no deadline) the policy runs on the loop's own thread; on a scaled clock
in a worker thread, with a deadline. Either way a solver that raises is a failed decision,
counted, never a crash.
"""

from __future__ import annotations

import threading
import time
from typing import Any, cast

from controller.clock import Clock, ScaledClock, SteppedClock
from controller.core.estimate import Estimate
from controller.core.mpc import Decision, SolveStatus
from controller.core.pipeline import ControlPipeline
from controller.runtime.cycle import Counters, CycleView, State
from controller.runtime.solve import SolveRunner

ESTIMATE = Estimate({"x": 1.0}, {}, {}, {}, {}, {})


class Policy:
    """A pipeline's ``decide``: notes the thread it ran on, sleeps, raises or answers."""

    def __init__(self, *, sleep_s: float = 0.0, raises: Exception | None = None) -> None:
        self.sleep_s, self.raises = sleep_s, raises
        self.threads: list[int] = []

    def decide(self, t: float, estimate: Estimate) -> Decision:
        self.threads.append(threading.get_ident())
        if self.sleep_s:
            time.sleep(self.sleep_s)
        if self.raises is not None:
            raise self.raises
        return Decision(t, {"u": 2.0}, SolveStatus.SUCCESS, "Solve_Succeeded", 3, 0.001)


def runner(policy: Policy, clock: Clock, counters: Counters, problems: list[str]) -> SolveRunner:
    return SolveRunner(
        cast(ControlPipeline, policy),
        clock,
        counters,
        sample_s=1.0,
        deadline_fraction=0.5,
        problem=lambda view, text: problems.append(text),
    )


def view() -> CycleView:
    return CycleView(0, 0.0, State.RUNNING, None)


async def test_on_a_stepped_clock_the_solve_runs_on_the_loops_thread() -> None:
    policy, counters, problems = Policy(), Counters(), list[str]()
    solver = runner(policy, SteppedClock(), counters, problems)
    assert solver.deadline_s() is None
    seen = view()
    decision = await solver.solve(0.5, ESTIMATE, "", seen)
    assert decision.ok and decision.inputs == {"u": 2.0} and decision.t == 0.5
    assert not seen.solve_failed
    held = view()  # bad data: no solve was tried, so none failed
    assert not (await solver.solve(0.5, ESTIMATE, "stale data", held)).ok
    assert not held.solve_failed
    assert policy.threads == [threading.get_ident()]
    assert problems == [] and counters.failed_solves == 0


async def test_on_a_scaled_clock_the_solve_runs_in_a_worker_with_a_deadline() -> None:
    policy, counters, problems = Policy(), Counters(), list[str]()
    solver = runner(policy, ScaledClock(1.0), counters, problems)
    decision = await solver.solve(0.5, ESTIMATE, "", view())
    assert decision.ok
    assert len(policy.threads) == 1 and policy.threads[0] != threading.get_ident()
    slow = Policy(sleep_s=0.3)  # the deadline: 0.5 of a 1 s sample at rate 50 = 10 ms
    late = runner(slow, ScaledClock(50.0), counters, problems)
    missed = view()
    decision = await late.solve(0.5, ESTIMATE, "", missed)
    assert decision.status is SolveStatus.ERROR and decision.return_status == "late solve"
    assert missed.solve_failed  # the campaign's failed-solve count takes it
    assert counters.late_solves == 1 and "missed its deadline" in problems[-1]
    await late.settle(5.0)


async def test_a_raising_solver_is_a_failed_decision_on_either_clock() -> None:
    for clock in (SteppedClock(), ScaledClock(1.0)):
        for error in (ValueError("singular KKT"), TimeoutError("the solver's own timer")):
            counters, problems = Counters(), list[str]()
            solver = runner(Policy(raises=error), clock, counters, problems)
            raised = view()
            decision: Any = await solver.solve(0.5, ESTIMATE, "", raised)
            assert decision.status is SolveStatus.ERROR, (clock, error)
            assert raised.solve_failed, (clock, error)
            assert str(error) in decision.return_status
            assert counters.failed_solves == 1 and counters.late_solves == 0, (clock, error)
            assert problems and "solver raised" in problems[0]
