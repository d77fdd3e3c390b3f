"""A campaign case passes only when its faults acted, and its evidence says what they did.

The lyophilizer under MPC reaches the end of primary drying at about 3.7 h; the campaign runs
up to 12 h, so a fault scheduled at 9 h is accepted (it starts before the run's end) but the
batch ends before it: it never acts. Such a case is an error, in ``result.json``,
``summary.json``, ``report.html`` and ``junit.xml``, never a pass like the case without a fault.
Every case's ``result.json`` lists the rig's fault events (start, end, ... with their times).

A ``parameter_drift`` past -100 % is applied as prescribed: the parameter leaves its physical
domain, which is a plant fault (the case errors), never a value floored at 0.
"""

from __future__ import annotations

import json
import xml.etree.ElementTree as ET
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

VARIANTS: dict[str, Any] = {
    "none": {},
    "late-bias": {"faults": [{"kind": "sensor_bias", "target": "Tbot", "start": 9.0,
                              "magnitude": 30.0}]},
    "early-bias": {"faults": [{"kind": "sensor_bias", "target": "Tbot", "start": 1.0,
                               "duration": 0.5, "magnitude": 0.5}]},
    # KP * (1 - 2 (t - 0.5)): 0 at 1 h, negative after (KP >= 0 is its physical domain)
    "kp-past-zero": {"faults": [{"kind": "parameter_drift", "target": "KP", "start": 0.5,
                                 "rate": -2.0}]},
}  # fmt: skip


@pytest.fixture(scope="module")
def campaign_out(tmp_path_factory: pytest.TempPathFactory) -> Path:
    tmp = tmp_path_factory.mktemp("honesty")
    raw = {
        "name": "fault-honesty",
        "site": str(LYO),
        "duration": 12.0,
        "mode": "fast",
        "retries": 0,
        "matrix": [{"factors": {"faults": VARIANTS}, "seeds": [1]}],
        "criteria": [
            {"id": "REQ-ROB-02", "description": "MPC keeps control",
             "check": {"kind": "control_losses", "at_most": 0}},
        ],
    }  # fmt: skip
    path = tmp / "camp.yaml"
    path.write_text(yaml.safe_dump(raw), encoding="utf-8")
    out = tmp / "out"
    run_campaign(load_campaign(path), RunSettings(out=out, workers=1, progress=False))
    write_reports(out)
    return out


def _result(out: Path, variant: str) -> dict[str, Any]:
    (path,) = (out / "cases").glob(f"c*-{variant}-s1/result.json")
    result: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
    return result


def test_a_fault_that_never_became_active_makes_its_case_an_error(campaign_out: Path) -> None:
    none, late = _result(campaign_out, "none"), _result(campaign_out, "late-bias")
    assert late["status"] == "error"  # not "passed" like the case without a fault
    assert none["status"] == "passed" and none["faults"] == []
    error = late["error"]
    assert error.startswith(
        "fault sensor_bias on Tbot scheduled at t=9 h never became active: the batch ended at t="
    )
    end = float(error.rsplit("t=", 1)[1].removesuffix(" h"))
    assert 2.0 < end < 9.0 and end == pytest.approx(late["kpis"]["finished_at"], rel=1e-5)
    assert late["faults"] == []  # no event: it never started
    assert late["verdicts"]  # what was judged is kept as evidence


def test_a_fault_that_acted_is_in_the_evidence_and_its_case_is_judged(campaign_out: Path) -> None:
    early = _result(campaign_out, "early-bias")
    assert early["status"] in ("passed", "failed") and early["error"] is None
    actions = [(e["action"], e["kind"], e["target"], e["t"]) for e in early["faults"]]
    assert actions == [
        ("start", "sensor_bias", "Tbot", 1.0),
        ("end", "sensor_bias", "Tbot", 1.5),
    ]
    assert all(e["source"] == "schedule" for e in early["faults"])


def test_the_reports_show_the_never_active_fault_as_an_error(campaign_out: Path) -> None:
    summary = json.loads((campaign_out / "summary.json").read_text(encoding="utf-8"))
    cases = {c["id"].split("-", 1)[1]: c for c in summary["cases"]}
    assert cases["late-bias-s1"]["status"] == "error"
    assert "never became active" in cases["late-bias-s1"]["error"]
    assert summary["verdict"] != "passed"
    suite = ET.parse(campaign_out / "junit.xml").getroot()
    errors = [
        el.get("message", "")
        for tc in suite.iter("testcase")
        if "late-bias" in (tc.get("classname") or "")
        for el in tc.iter("error")
    ]
    assert errors and all("never became active" in m for m in errors)
    assert "never became active" in (campaign_out / "report.html").read_text(encoding="utf-8")


def test_a_parameter_drift_past_minus_100_percent_is_a_plant_fault(campaign_out: Path) -> None:
    drift = _result(campaign_out, "kp-past-zero")
    assert drift["status"] == "error"
    assert drift["error"].startswith("PlantFaultError")
    assert "KP" in drift["error"]
    (event,) = [e for e in drift["events"] if e["kind"] == "plant.validity"]
    assert event["t"] == pytest.approx(1.0, abs=0.05)
    assert [e["action"] for e in drift["faults"]] == ["start"]
