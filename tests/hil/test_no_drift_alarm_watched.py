"""``no_drift_alarm`` passes only when the drift charts watched the run.

The lyophilizer's charts warm up for 1.6 h and learn their baseline over the next 0.4 h
(configs/controllers/lyophilizer.yaml): in a 1.5 h run none of them evaluates a sample, every
``mon.chart.*`` statistic is NaN, and the twin withholds ``alarm.active`` ("drift monitor not
running yet"). Before, the criterion passed such a run as "no drift alarm" because other
``mon.*`` figures (the unwatched ``mon.alarm.active`` = 0, the publications) were recorded.
A 2.5 h run, whose charts run from 2.0 h on, still passes: the check can pass, and fail.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import yaml

from hil.campaign.execute import RunSettings, run_campaign
from hil.campaign.report import write_reports
from hil.campaign.spec import load_campaign

ROOT = Path(__file__).resolve().parents[2]
LYO = ROOT / "configs" / "sites" / "lyophilizer-modbus.yaml"
pytestmark = pytest.mark.timeout(300)


def _run(tmp: Path, duration: float) -> tuple[dict[str, Any], dict[str, Any]]:
    """One fast case without faults judged on ``no_drift_alarm``: its result and summary."""
    raw = {
        "name": "nodrift",
        "site": str(LYO),
        "duration": duration,
        "mode": "fast",
        "retries": 0,
        "matrix": [{"factors": {"drift": {"none": {}}}, "seeds": [7]}],
        "criteria": [
            {"id": "REQ-DRIFT-02", "description": "Without drift, no drift alarm",
             "check": {"kind": "no_drift_alarm"}},
        ],
    }  # fmt: skip
    path = tmp / "camp.yaml"
    path.write_text(yaml.safe_dump(raw), encoding="utf-8")
    out = tmp / "out"
    run_campaign(load_campaign(path), RunSettings(out=out, workers=1, progress=False))
    (result_file,) = (out / "cases").glob("*/result.json")
    result = json.loads(result_file.read_text(encoding="utf-8"))
    summary = json.loads(write_reports(out).summary.read_text(encoding="utf-8"))
    return result, summary


def test_no_drift_alarm_fails_when_no_chart_ever_evaluated(tmp_path: Path) -> None:
    result, summary = _run(tmp_path, 1.5)
    (verdict,) = result["verdicts"]
    assert verdict["passed"] is False, verdict
    assert result["status"] == "failed"
    assert "nothing was judged" in verdict["detail"]
    assert "0 of 4 drift charts" in verdict["detail"]
    assert summary["passed"] is False


def test_no_drift_alarm_passes_when_every_chart_watched(tmp_path: Path) -> None:
    result, summary = _run(tmp_path, 2.5)
    (verdict,) = result["verdicts"]
    assert verdict["passed"] is True, verdict
    assert verdict["value"] == 0.0
    assert "every drift chart (4) evaluated" in verdict["detail"]
    assert summary["passed"] is True
