"""The bioreactor OQ campaign's stuck-sensor case: the runtime holds instead of writing.

The case runs as the campaign runs it (fast mode: the HIL rig with its fault schedule, the
edge runtime with the EKF and the fast MPC, the audit trail). The biomass probe sticks at
50 h for 10 h. Before, the tag map had no ``frozen_after`` on the biomass: setpoints were
written every hour on the frozen value. Now the third identical read is a frozen probe: from
then on no setpoint is written (audit trail), every such cycle says why, the runtime hands
control back to the PLC after ``max_bad_cycles``, and takes it again once the probe lives.
"""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from controller.runtime.audit import AuditTrail
from controller.runtime.site import load_site
from hil.campaign.runner import run_case
from hil.campaign.spec import load_campaign

ROOT = Path(__file__).resolve().parents[2]
pytestmark = [pytest.mark.timeout(300), pytest.mark.slow, pytest.mark.serial]


def written_cycles(folder: Path) -> set[int]:
    """The cycles whose setpoints a case's audit trail (``folder/audit.db``) wrote."""
    trail = AuditTrail(folder / "audit.db")
    try:
        return {
            int(json.loads(r.detail)["decision_id"].rsplit(":", 1)[1])
            for r in trail.records()
            if r.action == "setpoint.write"
        }
    finally:
        trail.close()


def test_the_stuck_biomass_probe_holds_instead_of_writing(tmp_path: Path) -> None:
    campaign = load_campaign(ROOT / "configs" / "campaigns" / "bioreactor-oq.yaml")
    case = next(c for c in campaign.cases if c.factors["faults"] == "sensor-stuck")
    (fault,) = case.scenario["faults"]
    assert (fault["kind"], fault["target"]) == ("sensor_stuck", "X_meas")
    site = load_site(campaign.site_path)
    frozen_after = site.tags.tags["biomass"].frozen_after
    assert frozen_after == 4
    start, end = fault["start"], fault["start"] + fault["duration"]  # h; one read an hour
    # the third stuck read: with the live read before it, four reads taking two values
    # (frozen_values 2), as soon as three identical reads were before it
    assert site.tags.tags["biomass"].frozen_values == 2
    detected = start + 2

    job = {
        "case": case.to_json(),
        "criteria": [c.model_dump(mode="json") for c in campaign.spec.criteria],
        "out": str(tmp_path),
        "site": str(campaign.site_path),
        "controller": None,
        "mode": "fast",
        "rate": campaign.spec.hil.rate,
    }
    result = run_case(job)
    assert result["status"] in ("passed", "failed"), result.get("error")
    folder = tmp_path / "cases" / case.id
    cycles = pq.read_table(folder / "cycles.parquet").to_pylist()
    stuck = [r for r in cycles if detected <= r["t"] < end]
    assert len(stuck) == end - detected
    assert all(r["state"] in ("HOLD", "FALLBACK") for r in stuck)
    assert all(r["problems"] == "stale inputs ['biomass']" for r in stuck)
    log = (folder / "run.log").read_text()  # each cycle logs why
    assert "frozen: 4 reads in a row, every 4 of them taking at most 2 values" in log
    assert "frozen: the same value for 4 reads (frozen_after 4)" in log  # the next read
    written = written_cycles(folder)
    assert written  # the MPC wrote before and after the fault
    assert not written & {r["cycle"] for r in stuck}  # zero setpoints on the frozen probe
    assert result["counters"]["stale_data"] >= len(stuck)
    assert any(r["state"] == "RUNNING" for r in cycles if r["t"] >= end)  # control resumes
