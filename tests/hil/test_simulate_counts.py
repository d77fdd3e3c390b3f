"""simulate counts what the loop could not vouch for: estimator failures and rejected
measurements are rows of the recording and KPIs, and those cycles hold (issue 15)."""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import Collection, Mapping
from pathlib import Path
from typing import Any

import pytest

import hil.simulate as simulate
from controller.core.estimate import Estimate
from hil.kpis import compute_kpis

ROOT = Path(__file__).resolve().parents[2]
SCENARIO = ROOT / "configs" / "scenarios" / "cstr-mpc.yaml"


class FailingOn:
    """The real estimator, except that on the cycles given it fails (an ``Estimate`` with
    ``ok=False``, as the EKF reports its own failures) or rejects a measurement."""

    def __init__(self, inner: Any, failing: set[int], rejecting: set[int]) -> None:
        self.inner = inner
        self.failing = failing
        self.rejecting = rejecting
        self.cycle = 0

    def update(
        self,
        u_applied: Mapping[str, float] | None,
        y: Mapping[str, float],
        states: Mapping[str, float] | None = None,
        *,
        exclude: Collection[str] = (),
    ) -> Estimate:
        est = self.inner.update(u_applied, y, states, exclude=exclude)
        self.cycle += 1
        if self.cycle in self.failing:
            return dataclasses.replace(est, ok=False, reason="prediction failed (test)")
        if self.cycle in self.rejecting:
            return dataclasses.replace(est, rejected=("T_R_meas",))
        return est

    @property
    def estimate(self) -> Estimate:
        return self.inner.estimate


def test_estimator_failures_and_rejections_are_counted_and_held(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    real = simulate.make_estimator

    def make(*args: Any, **kwargs: Any) -> Any:
        return FailingOn(real(*args, **kwargs), failing={3, 4}, rejecting={6})

    monkeypatch.setattr(simulate, "make_estimator", make)
    run = asyncio.run(simulate.run_scenario(SCENARIO, max_steps=8))
    rows = run.rows[:-1]
    assert [r["estimator.failed"] for r in rows] == [False, False, True, True] + [False] * 4
    assert [r["estimator.rejected"] for r in rows] == [0] * 5 + [1, 0, 0]
    for k in (2, 3, 5):  # no setpoint from what the estimator could not vouch for
        assert rows[k]["safety.held"] and rows[k]["solve.status"] != "success"
    kpis = compute_kpis(run)
    assert kpis.estimator_failures == 2 and kpis.innovation_rejections == 1
    table = kpis.as_dict()
    assert table["estimator_failures"] == 2 and table["innovation_rejections"] == 1


def test_a_clean_run_counts_nothing() -> None:
    run = asyncio.run(simulate.run_scenario(SCENARIO, max_steps=3))
    kpis = compute_kpis(run)
    assert kpis.estimator_failures == 0 and kpis.innovation_rejections == 0
    assert kpis.solver_fallbacks == 0
    assert all(r["estimator.failed"] is False for r in run.rows[:-1])
