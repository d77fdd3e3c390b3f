"""The demo's verdict counts what it says it counts: "setpoint writes" are cycles that wrote a
setpoint tag, not the PLC handshake's own request flag (before, the demo printed 150 setpoint
writes against 149 ``setpoint.write`` records in its audit trail: the extra one was the
mpc_request flag of the first cycle, audited as a ``tag.write.request``)."""

from __future__ import annotations

from pathlib import Path

from controller.runtime.historian_records import CycleRecord
from controller.runtime.site import load_site
from hil.demo import verdict

ROOT = Path(__file__).resolve().parents[2]


def test_setpoint_writes_leave_the_request_flag_out() -> None:
    site = load_site(ROOT / "configs" / "sites" / "bioreactor-modbus.yaml")
    dt = 3600.0
    records = [CycleRecord("r", 0, 0.0, "", "REQUESTING", setpoints={"mpc_request": 1.0},
                           wrote=True)]  # fmt: skip
    records += [
        CycleRecord("r", k, k * dt, "", "RUNNING", setpoints={"feed_rate_sp": 0.02}, wrote=True)
        for k in range(1, 4)
    ]
    records.append(CycleRecord("r", 4, 4 * dt, "", "RUNNING"))  # held: nothing written
    checks = verdict(site, records, 5 * dt, True, "", None)
    engaged = next(c for c in checks if c.what == "closed loop engaged")
    assert engaged.seen == "4 RUNNING cycles, 3 setpoint writes" and engaged.passed
    only_request = verdict(site, records[:1], 5 * dt, True, "", None)
    assert not next(c for c in only_request if c.what == "closed loop engaged").passed
