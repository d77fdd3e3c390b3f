"""Tests of the pure safety layer (controller.core.safety).

Property-based tests prove the invariant: every written setpoint is finite, within its limits
and within one move of the last applied value, whatever the controller proposes.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from controller.core.safety import (
    InputLimit,
    Intervention,
    Reason,
    SafetyFilter,
    SafetyOutcome,
    apply_safety,
)
from controller.errors import PharmaTwinError, SafetyOrderError

NAMES = ("feed", "temp", "speed", "flow")
BIG = 1e6

HELD_REASONS = {
    Reason.HELD_SOLVER_FAILED,
    Reason.HELD_BAD_DATA,
    Reason.HELD_STALE_DATA,
    Reason.HELD_MISSING,
    Reason.HELD_NON_FINITE,
}

# ---------------------------------------------------------------------------------------------
# Strategies
# ---------------------------------------------------------------------------------------------

finite = st.floats(min_value=-BIG, max_value=BIG, allow_nan=False, allow_infinity=False)
positive = st.floats(min_value=1e-9, max_value=BIG, allow_nan=False, allow_infinity=False)
non_negative = st.floats(min_value=0.0, max_value=BIG, allow_nan=False, allow_infinity=False)


@st.composite
def input_limits(draw: st.DrawFn, name: str) -> InputLimit:
    lower = draw(finite)
    width = draw(st.one_of(st.just(0.0), non_negative))
    upper = lower + width
    max_move = draw(st.one_of(positive, st.just(math.inf)))
    max_rise = draw(st.one_of(st.none(), st.just(0.0), non_negative, st.just(math.inf)))
    max_fall = draw(st.one_of(st.none(), st.just(0.0), non_negative, st.just(math.inf)))
    return InputLimit(name, lower, upper, max_move, max_rise=max_rise, max_fall=max_fall)


@st.composite
def limit_sets(draw: st.DrawFn) -> dict[str, InputLimit]:
    names = draw(st.lists(st.sampled_from(NAMES), min_size=1, max_size=len(NAMES), unique=True))
    return {name: draw(input_limits(name)) for name in names}


def near(lim: InputLimit) -> st.SearchStrategy[float]:
    """Values around and outside one input's limits (last values may be outside)."""
    span = max(lim.upper - lim.lower, 1.0)
    return st.one_of(
        st.sampled_from([lim.lower, lim.upper, (lim.lower + lim.upper) / 2]),
        st.floats(
            min_value=lim.lower - 2 * span,
            max_value=lim.upper + 2 * span,
            allow_nan=False,
            allow_infinity=False,
        ),
        st.floats(min_value=-2 * BIG, max_value=2 * BIG, allow_nan=False, allow_infinity=False),
    )


def any_proposal(lim: InputLimit) -> st.SearchStrategy[float]:
    """Anything a broken controller might propose: near, huge, nan, inf."""
    return st.one_of(
        near(lim),
        st.sampled_from([math.nan, math.inf, -math.inf, 1e308, -1e308]),
        st.floats(),
    )


@st.composite
def proposals(draw: st.DrawFn, limits: Mapping[str, InputLimit]) -> dict[str, Any] | None:
    if draw(st.integers(0, 9)) == 0:
        return None
    proposed: dict[str, Any] = {}
    for name, lim in limits.items():
        kind = draw(st.integers(0, 9))
        if kind == 0:
            continue  # missing key
        if kind == 1:
            proposed[name] = None
        else:
            proposed[name] = draw(any_proposal(lim))
    if draw(st.booleans()):
        proposed["not_an_input"] = draw(st.floats())
    return proposed


flags = st.fixed_dictionaries(
    {"solve_ok": st.booleans(), "data_ok": st.booleans(), "data_fresh": st.booleans()}
)


@st.composite
def scenarios(
    draw: st.DrawFn,
) -> tuple[dict[str, InputLimit], dict[str, float], dict[str, Any] | None, dict[str, bool]]:
    limits = draw(limit_sets())
    last = {name: draw(near(lim)) for name, lim in limits.items()}
    return limits, last, draw(proposals(limits)), draw(flags)


# ---------------------------------------------------------------------------------------------
# Invariant checks
# ---------------------------------------------------------------------------------------------


def assert_invariant(
    limits: Mapping[str, InputLimit], last: Mapping[str, float], outcome: SafetyOutcome
) -> None:
    """Every written value is finite, within limits and within one move of last."""
    for name, value in outcome.setpoints.items():
        assert name in limits, f"{name} is written but has no limit"
        lim = limits[name]
        assert isinstance(value, float)
        assert math.isfinite(value), (name, value)
        assert lim.lower <= value <= lim.upper, (name, value, lim)
        prev = last[name]
        assert prev - lim.max_down <= value <= prev + lim.max_up, (name, prev, value, lim)
    # Every limited input is either written or explained as NO_SAFE_VALUE.
    by_name = {iv.name: iv for iv in outcome.interventions}
    assert len(by_name) == len(outcome.interventions), "one intervention per input at most"
    for name in limits:
        if name not in outcome.setpoints:
            assert by_name[name].reason is Reason.NO_SAFE_VALUE
            assert by_name[name].applied is None
        elif name in by_name:
            assert by_name[name].applied == outcome.setpoints[name]
    assert outcome.changed == bool(outcome.interventions)
    for iv in outcome.interventions:
        assert iv.detail and iv.name in iv.detail


@settings(max_examples=300, deadline=None)
@given(scenarios())
def test_invariant_always_holds(
    scenario: tuple[
        dict[str, InputLimit], dict[str, float], dict[str, Any] | None, dict[str, bool]
    ],
) -> None:
    limits, last, proposed, fl = scenario
    outcome = apply_safety(limits, last, proposed, **fl)
    assert_invariant(limits, last, outcome)
    # Without an intervention the proposal passes through unchanged.
    noted = {iv.name for iv in outcome.interventions}
    for name, value in outcome.setpoints.items():
        if name not in noted:
            assert proposed is not None and proposed[name] == value


@settings(max_examples=300, deadline=None)
@given(scenarios())
def test_bad_flag_holds_everything(
    scenario: tuple[
        dict[str, InputLimit], dict[str, float], dict[str, Any] | None, dict[str, bool]
    ],
) -> None:
    limits, last, proposed, fl = scenario
    if all(fl.values()) and proposed is not None:
        fl = {**fl, "solve_ok": False}
    outcome = apply_safety(limits, last, proposed, **fl)
    assert outcome.held
    assert_invariant(limits, last, outcome)
    for name, value in outcome.setpoints.items():
        assert value == last[name]
    for name, lim in limits.items():
        written = name in outcome.setpoints
        assert written == lim.contains(last[name])
    reasons = {iv.reason for iv in outcome.interventions}
    assert reasons <= HELD_REASONS | {Reason.NO_SAFE_VALUE}
    assert len(outcome.interventions) == len(limits)


@settings(max_examples=300, deadline=None)
@given(st.data())
def test_filter_sequence_never_leaves_limits(data: st.DataObject) -> None:
    limits = data.draw(limit_sets())
    initial = {name: data.draw(near(lim)) for name, lim in limits.items()}
    safety = SafetyFilter(limits)
    safety.reset(initial)
    assert dict(safety.last) == initial
    n_steps = data.draw(st.integers(1, 12))
    for _ in range(n_steps):
        proposed = data.draw(proposals(limits))
        fl = data.draw(flags)
        before = dict(safety.last)
        outcome = safety.step(proposed, **fl)
        assert_invariant(limits, before, outcome)
        # The filter remembers what was written; unwritten inputs keep what the PLC holds.
        assert dict(safety.last) == {**before, **outcome.setpoints}
        if outcome.held:
            assert dict(safety.last) == before
    # Once a value is within limits it never leaves them again.
    for name, lim in limits.items():
        if lim.contains(initial[name]):
            assert lim.contains(safety.last[name])


@settings(max_examples=300, deadline=None)
@given(st.data())
def test_missing_or_non_finite_last_is_never_written_past_move_limit(data: st.DataObject) -> None:
    limits = data.draw(limit_sets())
    last: dict[str, float] = {}
    for name, lim in limits.items():
        choice = data.draw(st.integers(0, 2))
        if choice == 1:
            last[name] = data.draw(st.sampled_from([math.nan, math.inf, -math.inf]))
        elif choice == 2:
            last[name] = data.draw(near(lim))
    proposed = data.draw(proposals(limits))
    outcome = apply_safety(limits, last, proposed, **data.draw(flags))
    for name, value in outcome.setpoints.items():
        lim = limits[name]
        assert math.isfinite(value) and lim.lower <= value <= lim.upper
        prev = last.get(name, math.nan)
        if math.isfinite(prev):
            assert prev - lim.max_down <= value <= prev + lim.max_up
        else:  # unknown last: only allowed when moves are unlimited, never on hold
            assert lim.max_up == math.inf and lim.max_down == math.inf
            assert not outcome.held


# ---------------------------------------------------------------------------------------------
# Examples
# ---------------------------------------------------------------------------------------------

FEED = InputLimit("feed", lower=0.0, upper=0.2, max_move=0.1)
TEMP = InputLimit("temp", lower=280.0, upper=320.0, max_move=5.0, max_rise=0.0)
LIMITS = {"feed": FEED, "temp": TEMP}


def only(outcome: SafetyOutcome, name: str) -> Intervention:
    found = [iv for iv in outcome.interventions if iv.name == name]
    assert len(found) == 1
    return found[0]


def test_no_intervention_passes_through() -> None:
    out = apply_safety(
        LIMITS, {"feed": 0.1, "temp": 300.0}, {"feed": 0.15, "temp": 298.0}, solve_ok=True
    )
    assert dict(out.setpoints) == {"feed": 0.15, "temp": 298.0}
    assert not out.held and not out.changed and out.interventions == ()


def test_clipped_to_limit_reason_and_detail() -> None:
    out = apply_safety(
        LIMITS, {"feed": 0.15, "temp": 300.0}, {"feed": 0.25, "temp": 300.0}, solve_ok=True
    )
    assert out.setpoints["feed"] == 0.2
    iv = only(out, "feed")
    assert iv.reason is Reason.CLIPPED_TO_LIMIT
    assert (iv.proposed, iv.applied) == (0.25, 0.2)
    assert iv.detail == "feed u=0.25 above upper limit 0.2; clipped to 0.2"
    assert out.changed and not out.held

    out = apply_safety(
        LIMITS, {"feed": 0.05, "temp": 300.0}, {"feed": -1.0, "temp": 300.0}, solve_ok=True
    )
    assert out.setpoints["feed"] == 0.0
    assert only(out, "feed").reason is Reason.CLIPPED_TO_LIMIT
    assert "below lower limit 0" in only(out, "feed").detail


def test_clipped_to_move_limit() -> None:
    out = apply_safety(
        LIMITS, {"feed": 0.0, "temp": 300.0}, {"feed": 0.18, "temp": 290.0}, solve_ok=True
    )
    assert out.setpoints == {"feed": 0.1, "temp": 295.0}
    feed, temp = only(out, "feed"), only(out, "temp")
    assert feed.reason is temp.reason is Reason.CLIPPED_TO_MOVE_LIMIT
    assert "rise" in feed.detail and "move limit 0.1" in feed.detail
    assert "fall" in temp.detail and "move limit 5" in temp.detail


def test_max_rise_zero_never_rises() -> None:
    out = apply_safety(
        LIMITS, {"feed": 0.1, "temp": 300.0}, {"feed": 0.1, "temp": 301.0}, solve_ok=True
    )
    assert out.setpoints["temp"] == 300.0
    assert only(out, "temp").reason is Reason.CLIPPED_TO_MOVE_LIMIT


def test_limit_then_move_limit_reports_move_limit() -> None:
    out = apply_safety({"feed": FEED}, {"feed": 0.05}, {"feed": 5.0}, solve_ok=True)
    assert out.setpoints["feed"] == pytest.approx(0.15)
    iv = only(out, "feed")
    assert iv.reason is Reason.CLIPPED_TO_MOVE_LIMIT
    assert "after clipping to limit 0.2" in iv.detail


@pytest.mark.parametrize(
    ("kwargs", "reason"),
    [
        ({"solve_ok": False}, Reason.HELD_SOLVER_FAILED),
        ({"solve_ok": True, "data_ok": False}, Reason.HELD_BAD_DATA),
        ({"solve_ok": True, "data_fresh": False}, Reason.HELD_STALE_DATA),
        ({"solve_ok": False, "data_ok": False, "data_fresh": False}, Reason.HELD_SOLVER_FAILED),
    ],
)
def test_hold_on_failure(kwargs: dict[str, bool], reason: Reason) -> None:
    last = {"feed": 0.1, "temp": 300.0}
    out = apply_safety(LIMITS, last, {"feed": 0.2, "temp": 290.0}, **kwargs)
    assert out.held and out.changed
    assert dict(out.setpoints) == last
    assert {iv.reason for iv in out.interventions} == {reason}
    assert only(out, "feed").proposed == 0.2
    assert "held at last value 0.1" in only(out, "feed").detail


def test_hold_when_no_decision() -> None:
    out = apply_safety(LIMITS, {"feed": 0.1, "temp": 300.0}, None, solve_ok=True)
    assert out.held
    assert dict(out.setpoints) == {"feed": 0.1, "temp": 300.0}
    assert {iv.reason for iv in out.interventions} == {Reason.HELD_MISSING}


def test_per_input_hold_for_non_finite_and_missing() -> None:
    last = {"feed": 0.1, "temp": 300.0}
    out = apply_safety(LIMITS, last, {"feed": math.nan}, solve_ok=True)
    assert not out.held
    assert dict(out.setpoints) == last
    assert only(out, "feed").reason is Reason.HELD_NON_FINITE
    assert only(out, "temp").reason is Reason.HELD_MISSING

    out = apply_safety(LIMITS, last, {"feed": math.inf, "temp": 299.0}, solve_ok=True)
    assert dict(out.setpoints) == {"feed": 0.1, "temp": 299.0}
    assert [iv.reason for iv in out.interventions] == [Reason.HELD_NON_FINITE]


def test_no_safe_value_when_limits_unreachable() -> None:
    # temp last 330 K is above 320 K and may fall at most 5 K per cycle: nothing is written.
    out = apply_safety(
        LIMITS, {"feed": 0.1, "temp": 330.0}, {"feed": 0.1, "temp": 300.0}, solve_ok=True
    )
    assert "temp" not in out.setpoints
    assert out.setpoints["feed"] == 0.1
    iv = only(out, "temp")
    assert iv.reason is Reason.NO_SAFE_VALUE
    assert iv.applied is None and iv.proposed == 300.0
    assert "not reachable within one move" in iv.detail


def test_out_of_limits_last_moves_back_when_reachable() -> None:
    out = apply_safety({"temp": TEMP}, {"temp": 323.0}, {"temp": 300.0}, solve_ok=True)
    assert out.setpoints["temp"] == 318.0
    assert only(out, "temp").reason is Reason.CLIPPED_TO_MOVE_LIMIT


def test_hold_with_last_outside_limits_writes_nothing() -> None:
    out = apply_safety(LIMITS, {"feed": 0.1, "temp": 330.0}, None, solve_ok=False)
    assert dict(out.setpoints) == {"feed": 0.1}
    iv = only(out, "temp")
    assert iv.reason is Reason.NO_SAFE_VALUE
    assert "solver failed" in iv.detail and "outside limits" in iv.detail


def test_setpoints_are_read_only() -> None:
    out = apply_safety(LIMITS, {"feed": 0.1, "temp": 300.0}, None, solve_ok=True)
    with pytest.raises(TypeError):
        out.setpoints["feed"] = 1.0  # type: ignore[index]


def test_limits_key_must_match_name() -> None:
    with pytest.raises(ValueError, match="differs from its InputLimit name"):
        apply_safety({"x": FEED}, {"x": 0.1}, {"x": 0.1}, solve_ok=True)
    with pytest.raises(ValueError, match="differs from its InputLimit name"):
        SafetyFilter({"x": FEED})


# --- SafetyFilter ------------------------------------------------------------------------------


def test_step_before_reset_raises_safety_order_error() -> None:
    safety = SafetyFilter(LIMITS)
    with pytest.raises(SafetyOrderError, match=r"not reset.*reset\(initial\)") as info:
        safety.step({"feed": 0.1, "temp": 300.0}, solve_ok=True)
    assert isinstance(info.value, PharmaTwinError)
    assert dict(safety.last) == {}


def test_reset_requires_every_input() -> None:
    safety = SafetyFilter(LIMITS)
    with pytest.raises(ValueError, match="temp"):
        safety.reset({"feed": 0.1})
    with pytest.raises(ValueError, match="finite"):
        safety.reset({"feed": math.nan, "temp": 300.0})


def test_filter_remembers_applied_values() -> None:
    safety = SafetyFilter(LIMITS)
    safety.reset({"feed": 0.0, "temp": 300.0, "other": 1.0})
    assert dict(safety.last) == {"feed": 0.0, "temp": 300.0}
    out = safety.step({"feed": 0.2, "temp": 290.0}, solve_ok=True)
    assert dict(out.setpoints) == {"feed": 0.1, "temp": 295.0}
    assert dict(safety.last) == {"feed": 0.1, "temp": 295.0}
    out = safety.step({"feed": 0.2, "temp": 290.0}, solve_ok=True)
    assert dict(out.setpoints) == {"feed": 0.2, "temp": 290.0}
    out = safety.step(None, solve_ok=False)
    assert out.held and dict(safety.last) == {"feed": 0.2, "temp": 290.0}
    # last is a read-only copy
    view = safety.last
    with pytest.raises(TypeError):
        view["feed"] = 0.0  # type: ignore[index]


# --- InputLimit validation -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"lower": 1.0, "upper": 0.0}, r"'feed'.*lower=1\.0 is above upper=0\.0"),
        ({"lower": math.nan}, r"'feed'.*lower=nan.*finite"),
        ({"upper": math.inf}, r"'feed'.*upper=inf.*finite"),
        ({"max_move": 0.0}, r"'feed'.*max_move=0\.0.*> 0"),
        ({"max_move": -1.0}, r"max_move=-1\.0"),
        ({"max_move": math.nan}, r"max_move=nan"),
        ({"max_rise": -0.1}, r"'feed'.*max_rise=-0\.1.*>= 0"),
        ({"max_fall": math.nan}, r"max_fall=nan"),
        ({"lower": "0"}, r"lower='0'"),
        ({"name": ""}, r"non-empty"),
    ],
)
def test_input_limit_validation(kwargs: dict[str, Any], match: str) -> None:
    args: dict[str, Any] = {"name": "feed", "lower": 0.0, "upper": 1.0, "max_move": 0.1}
    args.update(kwargs)
    with pytest.raises(ValueError, match=match):
        InputLimit(**args)


def test_input_limit_effective_moves() -> None:
    assert (FEED.max_up, FEED.max_down) == (0.1, 0.1)
    assert (TEMP.max_up, TEMP.max_down) == (0.0, 5.0)
    lim = InputLimit("x", 0, 10, math.inf, max_fall=2)
    assert (lim.max_up, lim.max_down) == (math.inf, 2.0)
    assert isinstance(lim.lower, float) and isinstance(lim.max_fall, float)
