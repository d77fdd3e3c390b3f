"""Tests of the process clocks (controller.clock).

No tight timing asserts: machines are noisy. Deterministic behaviour is tested with
SteppedClock or with an injected fake monotonic source.
"""

from __future__ import annotations

import asyncio
import math
import time

import pytest

from controller.clock import Clock, RealClock, ScaledClock, SteppedClock


async def settle(n: int = 5) -> None:
    """Let every ready task run a few loop iterations."""
    for _ in range(n):
        await asyncio.sleep(0)


class FakeMonotonic:
    """A hand-driven monotonic source for deterministic Real/ScaledClock tests."""

    def __init__(self) -> None:
        self.t = 100.0

    def __call__(self) -> float:
        return self.t


# --- SteppedClock ------------------------------------------------------------------------------


async def test_stepped_sleep_until_wakes_exactly_when_advanced() -> None:
    clock = SteppedClock(start=10.0)
    woke_at: list[float] = []

    async def sleeper() -> None:
        await clock.sleep_until(20.0)
        woke_at.append(clock.now())

    task = asyncio.create_task(sleeper())
    await settle()
    assert not task.done() and clock.waiting == 1

    clock.advance(5.0)  # 15 < 20
    await settle()
    assert not task.done()

    clock.advance_to(19.999)
    await settle()
    assert not task.done()

    assert clock.advance_to(20.0) == 20.0
    await asyncio.wait_for(task, timeout=1.0)
    assert woke_at == [20.0]
    assert clock.waiting == 0


async def test_stepped_wakes_several_sleepers_in_order() -> None:
    clock = SteppedClock()
    order: list[float] = []

    async def sleeper(t: float) -> None:
        await clock.sleep_until(t)
        order.append(t)

    tasks = [asyncio.create_task(sleeper(t)) for t in (3.0, 1.0, 2.0, 5.0)]
    await settle()
    clock.advance(2.5)
    await settle()
    assert sorted(order) == [1.0, 2.0]
    assert not tasks[0].done() and not tasks[3].done()
    clock.advance(10.0)  # jumping past several deadlines wakes them all
    await asyncio.wait_for(asyncio.gather(*tasks), timeout=1.0)
    assert sorted(order) == [1.0, 2.0, 3.0, 5.0]


async def test_stepped_sleep_until_past_returns_immediately() -> None:
    clock = SteppedClock(start=5.0)
    await asyncio.wait_for(clock.sleep_until(5.0), timeout=1.0)
    await asyncio.wait_for(clock.sleep_until(-1.0), timeout=1.0)
    await asyncio.wait_for(clock.sleep(0.0), timeout=1.0)
    assert clock.now() == 5.0


async def test_stepped_sleep_relative() -> None:
    clock = SteppedClock(start=1.0)
    task = asyncio.create_task(clock.sleep(2.0))
    await settle()
    clock.advance(1.0)
    await settle()
    assert not task.done()
    clock.advance(1.0)
    await asyncio.wait_for(task, timeout=1.0)


async def test_stepped_cancelled_sleeper_is_forgotten() -> None:
    clock = SteppedClock()
    task = asyncio.create_task(clock.sleep_until(1.0))
    await settle()
    assert clock.waiting == 1
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert clock.waiting == 0
    clock.advance(2.0)  # no error waking a cancelled waiter


def test_stepped_never_goes_backwards() -> None:
    clock = SteppedClock(start=3.0)
    with pytest.raises(ValueError, match="backwards"):
        clock.advance(-0.1)
    with pytest.raises(ValueError, match="backwards"):
        clock.advance_to(2.9)
    assert clock.now() == 3.0
    clock.advance(0.0)
    clock.advance_to(3.0)
    assert clock.now() == 3.0


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
def test_stepped_rejects_non_finite(bad: float) -> None:
    clock = SteppedClock()
    with pytest.raises(ValueError, match="finite"):
        clock.advance(bad)
    with pytest.raises(ValueError, match="finite"):
        clock.advance_to(bad)
    with pytest.raises(ValueError, match="finite"):
        SteppedClock(start=bad)


async def test_sleep_until_rejects_non_finite() -> None:
    for clock in (SteppedClock(), ScaledClock(1000.0), RealClock()):
        with pytest.raises(ValueError, match="finite"):
            await clock.sleep_until(math.nan)


# --- ScaledClock / RealClock -------------------------------------------------------------------


def test_scaled_clock_is_rate_times_monotonic_fake() -> None:
    mono = FakeMonotonic()
    clock = ScaledClock(3600.0, start=50.0, monotonic=mono)
    assert clock.now() == 50.0
    mono.t += 2.0
    assert clock.now() == pytest.approx(50.0 + 7200.0)
    assert clock.rate == 3600.0


def test_real_clock_is_monotonic_plus_start_fake() -> None:
    mono = FakeMonotonic()
    clock = RealClock(start=7.0, monotonic=mono)
    assert clock.now() == 7.0
    mono.t += 1.5
    assert clock.now() == pytest.approx(8.5)


async def test_scaled_clock_rate_1000_advances_about_1000x() -> None:
    clock = ScaledClock(1000.0)
    real0, proc0 = time.monotonic(), clock.now()
    await clock.sleep_until(proc0 + 50.0)  # 50 process seconds = about 0.05 real seconds
    real_dt, proc_dt = time.monotonic() - real0, clock.now() - proc0
    assert proc_dt >= 50.0  # sleep_until never returns early
    assert real_dt > 0
    assert 500.0 < proc_dt / real_dt < 2000.0  # generous: machines are noisy
    assert real_dt < 5.0


async def test_real_clock_sleep_until() -> None:
    clock = RealClock(start=100.0)
    assert 100.0 <= clock.now() < 105.0
    target = clock.now() + 0.02
    await asyncio.wait_for(clock.sleep_until(target), timeout=5.0)
    assert clock.now() >= target


def test_monotonic_clocks_never_go_backwards() -> None:
    clock = ScaledClock(1e6)
    samples = [clock.now() for _ in range(1000)]
    assert samples == sorted(samples)


@pytest.mark.parametrize("rate", [0.0, -1.0, math.nan, math.inf, -math.inf])
def test_scaled_clock_rejects_invalid_rate(rate: float) -> None:
    with pytest.raises(ValueError, match="rate"):
        ScaledClock(rate)


def test_monotonic_clocks_reject_non_finite_start() -> None:
    with pytest.raises(ValueError, match="start"):
        ScaledClock(10.0, start=math.nan)
    with pytest.raises(ValueError, match="start"):
        RealClock(start=math.inf)


def test_clock_is_abstract() -> None:
    with pytest.raises(TypeError):
        Clock()  # type: ignore[abstract]
    assert all(issubclass(c, Clock) for c in (RealClock, ScaledClock, SteppedClock))
