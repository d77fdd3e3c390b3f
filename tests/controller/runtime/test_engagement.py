"""A run's verdict (``Engagement``) fails a run that did not do what its mode promises.

Before, a run failed only when no read at all succeeded or, in closed loop, when the MPC
never had control: a shadow run that read the PLC once in 20 cycles, a closed-loop run that
fell back after 3 cycles and ended in FALLBACK, and a shadow run whose every cycle was held
all said "did what was asked" and exited 0 (each reproduced with ``pharmatwin run`` against
the HIL bench). The views here are the supervisor's own ``CycleView``; ``pharmatwin run``
feeds them one by one (``tests/controller/runtime/test_run_exit.py`` runs the CLI).
"""

from __future__ import annotations

from collections.abc import Iterable

from controller.core.mpc import Decision, SolveStatus
from controller.core.safety import SafetyOutcome
from controller.ports.base import Quality, Snapshot, TagValue
from controller.runtime.cycle import CycleView, Mode, State
from controller.runtime.engagement import Engagement

WHERE = "modbus+tcp://127.0.0.1:15020"


def _snap(permissive: bool = True) -> Snapshot:
    good = TagValue(float(permissive), Quality.GOOD, 0.0, 0.0)
    return Snapshot({"mpc_permissive": good}, 0.0)


def _view(
    k: int, state: State, *, read: bool = True, advice: bool = False, problem: str = ""
) -> CycleView:
    view = CycleView(k, float(k), state, _snap() if read else None)
    if advice or state in (State.RUNNING, State.HOLD):
        sp = {"F": 10.0}
        view.decision = Decision(float(k), sp, SolveStatus.SUCCESS, "Solve_Succeeded", 3, 1e-3)
        view.outcome = SafetyOutcome(sp, held=bool(problem), interventions=())
    if problem:
        view.problems.append(problem)
    return view


def _judge(mode: Mode, views: Iterable[CycleView]) -> Engagement:
    e = Engagement(mode, WHERE)
    for v in views:
        e.observe(v)
    return e


def test_a_shadow_run_that_read_and_advised_every_cycle_did_its_job() -> None:
    e = _judge(Mode.SHADOW, [_view(k, State.SHADOW, advice=True) for k in range(20)])
    assert e.verdict() is None
    assert e.summary() == "shadow: 20 of 20 cycles read the PLC, 20 gave a recommendation"


def test_a_shadow_run_that_read_the_plc_once_in_20_cycles_fails() -> None:
    views = [_view(0, State.SHADOW, advice=True)]
    views += [
        _view(k, State.SHADOW, read=False, problem="read failed: timeout") for k in range(1, 20)
    ]
    verdict = _judge(Mode.SHADOW, views).verdict()
    assert verdict == (
        f"the PLC at {WHERE} could not be read in the last 19 cycles of the run: it ended out "
        "of touch with the PLC (last problem: read failed: timeout)"
    )


def test_a_run_that_read_the_plc_in_fewer_than_half_its_cycles_fails() -> None:
    views = [
        _view(k, State.SHADOW, read=k % 3 == 0, advice=k % 3 == 0, problem="" if k % 3 == 0
              else "read failed: timeout")
        for k in range(10)
    ]  # fmt: skip
    verdict = _judge(Mode.SHADOW, views).verdict()
    assert verdict is not None
    assert verdict.startswith(f"the PLC at {WHERE} was read in only 4 of 10 cycles; a run")
    half = [_view(k, State.SHADOW, read=k % 2 == 1, advice=k % 2 == 1) for k in range(10)]
    assert _judge(Mode.SHADOW, half).verdict() is None  # read in half of them: enough


def test_a_shadow_run_with_no_recommendation_fails() -> None:
    views = [_view(k, State.SHADOW, advice=True, problem="stale data: held") for k in range(5)]
    assert _judge(Mode.SHADOW, views).verdict() == (
        "no recommendation in 5 cycles: every cycle was held or failed (last problem: stale "
        "data: held)"
    )


def test_a_closed_loop_run_that_ended_in_fallback_fails() -> None:
    views = [_view(0, State.REQUESTING)] + [_view(k, State.RUNNING) for k in (1, 2, 3)]
    views += [_view(4, State.HOLD, problem="solve failed: Invalid_Number_Detected")]
    views += [_view(k, State.FALLBACK, problem="solve failed") for k in range(5, 20)]
    e = _judge(Mode.CLOSED_LOOP, views)
    assert e.summary() == "closed loop: the MPC had control in 4 of 20 cycles"
    assert e.verdict() == (
        "the MPC lost control (FALLBACK) at cycle 5 and had not got it back when the run "
        "ended (last problem: solve failed)"
    )


def test_a_closed_loop_run_that_recovered_from_a_fallback_did_its_job() -> None:
    states = [State.REQUESTING, State.RUNNING, State.FALLBACK, State.REQUESTING]
    states += [State.RUNNING] * 6
    e = _judge(Mode.CLOSED_LOOP, [_view(k, s) for k, s in enumerate(states)])
    assert e.verdict() is None


def test_an_operator_release_is_not_a_failure() -> None:
    states = [State.REQUESTING, State.RUNNING, State.RUNNING, State.RELEASED, State.RELEASED]
    e = _judge(Mode.CLOSED_LOOP, [_view(k, s) for k, s in enumerate(states)])
    assert e.verdict() is None


def test_a_closed_loop_run_that_never_engaged_still_says_why() -> None:
    views = [_view(k, State.REQUESTING) for k in range(4)]
    assert _judge(Mode.CLOSED_LOOP, views).verdict() == (
        "the MPC never got control in 4 cycles: the PLC granted mpc_permissive but never "
        "reported mpc_active"
    )


def test_a_latched_fallback_alarm_after_one_permissive_read_is_named() -> None:
    """Permitted at the first cycle, then the PLC latched mpc_fallback_alarm (the MPC's
    heartbeat too slow for it: a runtime --rate below the HIL's) and withdrew the permissive:
    the verdict said only "granted mpc_permissive but never reported mpc_active"."""
    views = []
    for k in range(15):
        view = CycleView(k, float(k), State.REQUESTING, _snap(permissive=k == 0))
        if k:
            alarm = TagValue(1.0, Quality.GOOD, 0.0, 0.0)
            view.snapshot = Snapshot({**view.snapshot.values, "mpc_fallback_alarm": alarm}, 0.0)
        views.append(view)
    verdict = _judge(Mode.CLOSED_LOOP, views).verdict()
    assert verdict is not None
    assert verdict.startswith(
        "the MPC never got control in 15 cycles: the PLC granted mpc_permissive in only 1 of 15 "
        "cycles but never reported mpc_active; mpc_fallback_alarm was latched in 14 cycles"
    )
    assert "heartbeat" in verdict and "operator reset" in verdict
