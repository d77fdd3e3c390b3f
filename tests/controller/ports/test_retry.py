"""The ports' reconnect backoff runs on the injected clock (no wall-clock time)."""

from __future__ import annotations

import pytest

from controller.clock import SteppedClock
from controller.ports.retry import RetrySchedule
from controller.ports.settings import Backoff


def test_the_backoff_doubles_up_to_its_cap_and_waits_on_the_clock() -> None:
    clock = SteppedClock(100.0)
    retry = RetrySchedule(Backoff(initial_s=0.2, factor=2.0, max_s=1.0), clock)
    assert retry.wait() < 0  # never failed: try now
    assert [retry.failed() for _ in range(5)] == pytest.approx([0.2, 0.4, 0.8, 1.0, 1.0])
    assert retry.wait() == pytest.approx(1.0)  # the clock has not moved
    clock.advance(0.75)
    assert retry.wait() == pytest.approx(0.25)
    clock.advance(0.25)
    assert retry.wait() <= 0
    retry.succeeded()
    assert retry.failed() == pytest.approx(0.2)  # a new loss starts from the first delay
