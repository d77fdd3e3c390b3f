"""The evidence a judged campaign case leaves beside its ``result.json`` (what
:func:`hil.campaign.runner.run_case` writes): an audit trail that verifies, and the trajectory
and cycle recordings, for tests that write a case folder by hand. Without them the reports
call the case an error (:func:`hil.campaign.results.load_results`): verdicts with no evidence
are no pass."""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from controller.runtime.audit import AuditTrail


def write_evidence(directory: Path) -> None:
    """A real audit trail (one setpoint write) and, unless there, one-row recordings."""
    trail = AuditTrail(directory / "audit.db", synchronous="NORMAL")
    try:
        trail.record("setpoint.write", "shelf_temp_sp", reason="MPC decision", new_value=-20.0)
    finally:
        trail.close()
    for name in ("trajectory.parquet", "cycles.parquet"):
        if not (directory / name).exists():
            pq.write_table(pa.table({"t": [0.0]}), directory / name)
