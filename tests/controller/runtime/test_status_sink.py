"""The live status table of ``pharmatwin run`` is a sink of a real run (in-memory HIL): it
shows the state, the cycle, the latest values and the setpoints written (closed loop) or
recommended (shadow); it is off without a console (``--quiet``, or no terminal)."""

from __future__ import annotations

import io
from pathlib import Path

import pytest
from rich.console import Console
from test_ui_api import running_twin

from controller.runtime.status import StatusSink
from controller.runtime.supervisor import Mode
from controller.runtime.wiring import RunOptions, operator_sinks


def _text(sink: StatusSink) -> str:
    out = Console(file=io.StringIO(), width=160, color_system=None)
    out.print(sink.render())
    return out.file.getvalue()  # type: ignore[attr-defined]


@pytest.mark.parametrize(
    ("mode", "verb"), [(Mode.CLOSED_LOOP, "wrote"), (Mode.SHADOW, "recommends")]
)
async def test_the_table_follows_a_real_run(tmp_path: Path, mode: Mode, verb: str) -> None:
    screen = Console(file=io.StringIO(), force_terminal=True, width=160)
    sink = StatusSink(screen, refresh_per_second=20)
    assert _text(sink).strip() == "starting"
    async with running_twin(tmp_path, mode=mode, extra=(sink,), cycles=8) as twin:
        assert twin.sup is not None and sink.view is not None
        text = _text(sink)
        state = twin.sup.state.value
        assert f"cstr-modbus {mode.value} {state}" in text
        assert f"cycle {sink.view.cycle} " in text
        assert "C_b" in text and "GOOD" in text  # a measurement with its quality
        assert verb in text, text
    assert sink._live is None  # closed with the run
    assert screen.file.getvalue()  # type: ignore[attr-defined]  # it drew on the terminal


def test_problems_show_under_the_table(tmp_path: Path) -> None:
    from types import SimpleNamespace

    from controller.runtime.supervisor import Counters, CycleView, State

    sup = SimpleNamespace(
        site=SimpleNamespace(name="cstr-modbus"),
        mode=Mode.CLOSED_LOOP,
        state=State.HOLD,
        dt_s=18.0,
        counters=Counters(),
    )
    sink = StatusSink(Console(file=io.StringIO()))
    sink.sup = sup  # type: ignore[assignment]
    sink.view = CycleView(5, 90.0, State.HOLD, None, problems=["stale inputs: C_b_meas"])
    text = _text(sink)
    assert "HOLD" in text and "problem: stale inputs: C_b_meas" in text


def test_no_table_without_a_console(tmp_path: Path) -> None:
    base = RunOptions(mode=Mode.SHADOW, sd_notify=False)
    assert not any(isinstance(s, StatusSink) for s in operator_sinks(base))
    with_console = RunOptions(mode=Mode.SHADOW, sd_notify=False, status=Console())
    assert [type(s) for s in operator_sinks(with_console)] == [StatusSink]


@pytest.mark.parametrize("held", [False, True])
def test_a_held_cycle_recommends_nothing(held: bool) -> None:
    """A review: on a held shadow cycle the table said "recommends <value>" (the held value,
    the PLC's own working setpoint) as if the twin advised it."""
    from types import SimpleNamespace

    from controller.core.safety import Intervention, Reason, SafetyOutcome
    from controller.runtime.supervisor import Counters, CycleView, State

    sup = SimpleNamespace(
        site=SimpleNamespace(name="cstr-modbus"),
        mode=Mode.SHADOW,
        state=State.SHADOW,
        dt_s=18.0,
        counters=Counters(),
        sp_tags={"F": "feed_dilution_sp"},
    )
    failed = Intervention("F", 12.5, 18.25, Reason.HELD_SOLVER_FAILED, "the solver failed")
    why = (failed,) if held else ()
    sink = StatusSink(Console(file=io.StringIO()))
    sink.sup = sup  # type: ignore[assignment]
    view = CycleView(5, 90.0, State.SHADOW, None)
    view.outcome = SafetyOutcome({"F": 18.25}, held, why)
    sink.view = view
    text = _text(sink)
    assert ("recommends 18.25" in text) is not held, text
