"""A criterion passes only on something it looked at (the first rule: never say "fine" when the
truth is not). Each of these passed before, on nothing or on the wrong thing: a solver that
raised every cycle, a batch the MPC never controlled, a twin with no monitor, a case that sent
no setpoint, an infinite temperature, a NaN true state, a PLC with no heartbeat timeout; and a
campaign could hold a requirement no case judges, a case no requirement judges, or a fault that
starts after its run has ended."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pytest
import yaml

from controller.errors import ConfigError
from controller.timebase import TimeBase
from hil.campaign.checks import Criterion
from hil.campaign.criteria import Recording, judge
from hil.campaign.spec import load_campaign

ROOT = Path(__file__).resolve().parents[2]
SMOKE = ROOT / "configs" / "campaigns" / "lyophilizer-smoke.yaml"
HOUR = TimeBase("h", 3600.0)


def _criterion(check: dict[str, Any]) -> Criterion:
    return Criterion.model_validate({"id": "REQ-T-01", "description": "t", "check": check})


def _rows(mode: str = "active", tbot: float = -30.0) -> list[dict[str, Any]]:
    return [{"t": 0.1 * k, "x.Tbot": tbot, "y.Tbot": tbot, "u.Tsh": -30.0, "plc.mode": mode}
            for k in range(4)]  # fmt: skip


def test_a_solver_that_raised_or_was_late_is_a_failed_solve() -> None:
    crashed = [{"t": 0.1 * k, "solve.status": "error", "solve.failed": True} for k in range(10)]
    held = [{"t": 0.1 * k, "solve.status": "error", "solve.failed": False} for k in range(10)]
    check = _criterion({"kind": "consecutive_failed_solves", "at_most": 3})
    verdict = judge(check, Recording(_rows(), crashed))
    assert not verdict.passed and verdict.value == 10.0
    assert judge(check, Recording(_rows(), held)).passed  # bad data: no solve failed
    nothing = judge(check, Recording(_rows(), []))
    assert not nothing.passed and "no controller cycle" in nothing.detail


def test_control_is_not_kept_by_an_mpc_that_never_had_it() -> None:
    check = _criterion({"kind": "control_losses", "at_most": 0})
    assert judge(check, Recording(_rows("active"), [])).passed
    never = judge(check, Recording(_rows("local"), []))
    assert not never.passed and "never had control" in never.detail
    assert not judge(check, Recording([], [])).passed


def test_no_drift_alarm_needs_a_monitor_that_watched() -> None:
    check = _criterion({"kind": "no_drift_alarm"})
    watched = [{"t": 0.0, "solve.status": "success", "mon.chart.cusum:KC:low": 0.4}]
    assert judge(check, Recording(_rows(), watched)).passed
    blind = judge(check, Recording(_rows(), [{"t": 0.0, "solve.status": "success"}]))
    assert not blind.passed and "no drift chart statistic" in blind.detail
    # the twin's other figures (an unwatched alarm.active = 0) are no watcher: charts in warm-up
    warming = [{"t": 0.0, "mon.chart.cusum:KC:low": math.nan, "mon.alarm.active": 0.0}]
    unwatched = judge(check, Recording(_rows(), warming))
    assert not unwatched.passed and "0 of 1 drift charts" in unwatched.detail


def test_setpoint_limits_are_judged_on_setpoints_sent() -> None:
    check = _criterion({"kind": "setpoints_within_limits",
                        "limits": {"Tsh": [-45.0, 120.0], "Pch": [0.05, 0.3]}})  # fmt: skip
    both = [(0.0, {"Tsh": -30.0, "Pch": 0.1})]
    assert judge(check, Recording(_rows(), [], both)).passed
    none = judge(check, Recording(_rows(), [], []))
    assert not none.passed and "not exercised" in none.detail
    one = judge(check, Recording(_rows(), [], [(0.0, {"Tsh": -30.0})]))
    assert not one.passed and "Pch never sent" in one.detail


def test_an_infinite_or_missing_true_value_fails_a_limit() -> None:
    check = _criterion({"kind": "max", "of": "Tbot", "at_most": -6.0})
    rows = _rows()
    rows[2]["x.Tbot"] = math.inf
    hot = judge(check, Recording(rows, []))
    assert not hot.passed and hot.value == math.inf
    rows[2]["x.Tbot"] = math.nan
    lost = judge(check, Recording(rows, []))
    assert not lost.passed and "not a number" in lost.detail
    # a measurement of bad quality is NaN: left out of a check on the measurement, and said so
    measured = [{k: v for k, v in r.items() if k != "x.Tbot"} for r in _rows()]
    measured[1]["y.Tbot"] = math.nan
    seen = judge(check, Recording(measured, []))
    assert seen.passed and "1 samples without a good measurement left out" in seen.detail


def test_a_fallback_needs_a_heartbeat_timeout_to_be_judged() -> None:
    rows = [{"t": 0.0, "plc.mode": "active"}, {"t": 1.0, "plc.mode": "active"}]
    check = _criterion({"kind": "fallback_within", "heartbeat_timeouts": 2})
    unknown = judge(check, Recording(rows, [], loss_at=0.5, timebase=HOUR))
    assert not unknown.passed and "no heartbeat timeout" in unknown.detail


def _campaign(tmp_path: Path, change: Any) -> Path:
    raw = yaml.safe_load(SMOKE.read_text())
    raw["site"] = str(ROOT / "configs" / "sites" / "lyophilizer-modbus.yaml")
    change(raw)
    path = tmp_path / "camp.yaml"
    path.write_text(yaml.safe_dump(raw), encoding="utf-8")
    return path


def _refused(tmp_path: Path, change: Any) -> list[str]:
    with pytest.raises(ConfigError) as info:
        load_campaign(_campaign(tmp_path, change))
    return [f"{p.location}: {p.message}" for p in info.value.problems]


def test_a_campaign_refuses_what_would_pass_unlooked_at(tmp_path: Path) -> None:
    assert load_campaign(_campaign(tmp_path, lambda raw: None)).cases  # the smoke file loads

    def no_loss(raw: dict[str, Any]) -> None:
        raw["matrix"][0]["factors"]["faults"].pop("controller-loss")

    (why,) = _refused(tmp_path, no_loss)
    assert why.startswith("criteria.2: requirement REQ-SAFE-02 judges no case")

    def late_fault(raw: dict[str, Any]) -> None:
        raw["matrix"][0]["factors"]["faults"]["sensor-bias"]["faults"][0]["start"] = 9.0

    (why,) = _refused(tmp_path, late_fault)
    assert why.startswith("faults.0.start: starts at t=9, at or after the run's end (t=2.5)")

    def late_loss(raw: dict[str, Any]) -> None:
        raw["matrix"][0]["factors"]["faults"]["controller-loss"]["controller_loss_at"] = 2.5

    assert any("it is never lost" in w for w in _refused(tmp_path, late_loss))

    def unjudged(raw: dict[str, Any]) -> None:
        for c in raw["criteria"]:
            c["applies_to"] = {"faults": ["none", "controller-loss"]}

    assert any("no requirement judges this case" in w for w in _refused(tmp_path, unjudged))

    def empty(raw: dict[str, Any]) -> None:
        raw["criteria"] = []

    assert any(w.startswith("criteria:") for w in _refused(tmp_path, empty))
