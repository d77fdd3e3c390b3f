"""A controller loss planned after the batch's natural end never happens: the case is an error.

The lyophilizer under MPC ends primary drying at about 3.7 h; a campaign without a
``duration`` runs up to the scenario's 20 h, so a loss at 19 h is accepted at load (it is
before the run's end) but the batch is over long before it. Like a scheduled fault that never
became active, such a case must be an error with a reason, never a pass that the report shows
as "controller lost at 19.0". A loss that did happen is no error.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import yaml

from hil.campaign.execute import RunSettings, run_campaign
from hil.campaign.spec import load_campaign

ROOT = Path(__file__).resolve().parents[2]
LYO = ROOT / "configs" / "sites" / "lyophilizer-modbus.yaml"
pytestmark = pytest.mark.timeout(300)


@pytest.fixture(scope="module")
def campaign_out(tmp_path_factory: pytest.TempPathFactory) -> Path:
    tmp = tmp_path_factory.mktemp("late-loss")
    raw = {
        "name": "late-loss",
        "site": str(LYO),
        "mode": "fast",  # no duration: the scenario's 20 h
        "retries": 0,
        "matrix": [
            {
                "factors": {
                    "faults": {
                        "none": {},
                        "late-loss": {"controller_loss_at": 19.0},
                        "early-loss": {"controller_loss_at": 1.0},
                    }
                },
                "seeds": [7],
            }
        ],
        "criteria": [
            {
                "id": "REQ-ROB-01",
                "description": "No more than 3 failed solves in a row",
                "check": {"kind": "consecutive_failed_solves", "at_most": 3},
            }
        ],
    }
    path = tmp / "camp.yaml"
    path.write_text(yaml.safe_dump(raw), encoding="utf-8")
    out = tmp / "out"
    run_campaign(load_campaign(path), RunSettings(out=out, workers=1, progress=False))
    return out


def _result(out: Path, variant: str) -> dict[str, Any]:
    (path,) = (out / "cases").glob(f"c*-{variant}-s7/result.json")
    result: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
    return result


def test_a_controller_loss_after_the_batch_ended_makes_its_case_an_error(
    campaign_out: Path,
) -> None:
    none, late = _result(campaign_out, "none"), _result(campaign_out, "late-loss")
    assert none["status"] == "passed"
    assert late["status"] == "error"  # not "passed" like the case without a loss
    error = late["error"]
    assert error.startswith(
        "controller loss planned at t=19 h never happened: the batch ended at t="
    ), error
    end = float(error.rsplit("t=", 1)[1].split(" h")[0])
    assert 3.0 < end < 5.0  # the batch's natural end, long before 19 h
    assert late["kpis"]["plc.fallbacks"] == 0  # evidence kept: the PLC never fell back


def test_a_controller_loss_that_happened_is_no_error(campaign_out: Path) -> None:
    early = _result(campaign_out, "early-loss")
    assert early["status"] in ("passed", "failed")
    assert early["error"] is None
    assert early["kpis"]["plc.fallbacks"] >= 1  # the loss happened: the PLC fell back


def test_the_summary_counts_the_late_loss_as_an_error(campaign_out: Path) -> None:
    from hil.campaign.report import write_reports

    write_reports(campaign_out)
    summary = json.loads((campaign_out / "summary.json").read_text(encoding="utf-8"))
    assert summary["passed"] is False
    assert summary["counts"]["error"] == 1
    html = (campaign_out / "report.html").read_text(encoding="utf-8")
    assert "controller lost at" not in html  # the plan is no record that it happened
    assert "controller loss planned at" in html
