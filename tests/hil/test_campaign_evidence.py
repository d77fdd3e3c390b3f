"""A fast-mode case's evidence: every write audited (committed) before it is sent, the trail
durable (checkpointed, fsynced) before ``result.json`` says the case is done, and a worker
killed mid-case leaves no ``result.json``: the case runs again from scratch.

In fast mode the trail commits with ``synchronous=NORMAL`` (the PLC is virtual and in the
same process: a crash loses both); hil mode keeps FULL, as on site.
"""

from __future__ import annotations

import importlib
import json
import os
import shutil
import sqlite3
import subprocess
import sys
import textwrap
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest

import controller.runtime.audit as audit_module
import hil.campaign.runner as runner_module
from controller.ports.base import WriteReport
from controller.runtime.audit import AuditTrail
from controller.runtime.audit_verify import verify_file
from controller.runtime.historian import SqliteHistorian
from hil.campaign.drive import AUDIT_SYNCHRONOUS, HISTORIAN_COMMIT_EVERY, HISTORIAN_SYNCHRONOUS
from hil.campaign.resume import previous_result
from hil.campaign.runner import run_case
from hil.campaign.spec import Campaign, load_campaign
from hil.servers.memory import _ServerPort

ROOT = Path(__file__).resolve().parents[2]
SMOKE = ROOT / "configs" / "campaigns" / "lyophilizer-smoke.yaml"
SETPOINT_TAGS = ("shelf_temp_sp", "chamber_pressure_sp")


@pytest.fixture(scope="module")
def smoke() -> Campaign:
    return load_campaign(SMOKE)


def _job(campaign: Campaign, out: Path, index: int = 0) -> dict[str, Any]:
    return {
        "case": campaign.cases[index].to_json(),
        "criteria": [c.model_dump(mode="json") for c in campaign.spec.criteria],
        "out": str(out),
        "site": str(campaign.site_path),
        "controller": str(campaign.controller_path) if campaign.controller_path else None,
        "mode": "fast",
        "rate": campaign.spec.hil.rate,
    }


def _newest(db: Path, tag: str) -> float | None:
    """The newest setpoint.write record of ``tag`` another connection sees (committed)."""
    with sqlite3.connect(f"file:{db}?mode=ro", uri=True) as con:
        row = con.execute(
            "SELECT new_value FROM audit WHERE action = 'setpoint.write' AND target = ? "
            "ORDER BY id DESC LIMIT 1",
            (tag,),
        ).fetchone()
    return None if row is None else float(row[0])


def test_only_hil_mode_fsyncs_every_commit() -> None:
    assert AUDIT_SYNCHRONOUS == {"fast": "NORMAL", "hil": "FULL"}
    assert HISTORIAN_SYNCHRONOUS == {"fast": "OFF", "hil": "NORMAL"}
    assert HISTORIAN_COMMIT_EVERY == {"fast": 64, "hil": 1}  # hil: each cycle, as on site


@pytest.mark.slow
def test_a_fast_case_keeps_its_historian_unsynced_and_whole(
    smoke: Campaign, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    modes: list[str] = []
    real_init = SqliteHistorian.__init__

    def init(self: SqliteHistorian, *args: Any, **kwargs: Any) -> None:
        real_init(self, *args, **kwargs)
        modes.append(f"{self.synchronous} every {self.commit_every}")

    monkeypatch.setattr(SqliteHistorian, "__init__", init)
    result = run_case(_job(smoke, tmp_path))
    assert result["status"] == "passed", result.get("error")
    assert modes == ["OFF every 64"]
    history = tmp_path / "cases" / smoke.cases[0].id / "history.db"
    with sqlite3.connect(f"file:{history}?mode=ro", uri=True) as con:
        cycles = con.execute("SELECT count(*) FROM cycles").fetchone()[0]
    assert cycles == result["kpis"]["cycles"] > 0  # closed: every batch committed


@pytest.mark.slow
def test_a_rerun_case_starts_a_fresh_historian(
    smoke: Campaign, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An attempt that died can leave a torn historian (in fast mode it is never fsynced): the
    case's next attempt removes it, as it removes the dead attempt's audit trail."""
    job = _job(smoke, tmp_path)
    folder = tmp_path / "cases" / smoke.cases[0].id
    folder.mkdir(parents=True)
    torn = b"SQLite format 3\x00" + b"\xff" * 4000  # a header, then no valid page
    (folder / "history.db").write_bytes(torn)
    # without the clean-up the torn file is opened, and the case cannot run
    audit_only = tuple(f for f in runner_module.STALE_FILES if not f.startswith("history"))
    monkeypatch.setattr(runner_module, "STALE_FILES", audit_only)
    first = run_case(job)
    assert first["status"] == "error" and "historian" in first["error"], first
    monkeypatch.undo()
    (folder / "history.db").write_bytes(torn)
    again = run_case(job)
    assert again["status"] == "passed", again.get("error")
    assert again["attempts"] == 2
    with sqlite3.connect(f"file:{folder / 'history.db'}?mode=ro", uri=True) as con:
        runs = con.execute("SELECT count(*) FROM runs").fetchone()[0]
    assert runs == 1  # one run: this attempt's


@pytest.mark.slow
def test_fast_mode_audits_each_write_before_it_is_sent(
    smoke: Campaign, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    case_id = smoke.cases[0].id
    db = tmp_path / "cases" / case_id / "audit.db"
    modes: list[str] = []
    sent: list[dict[str, float]] = []
    real_init, real_write = AuditTrail.__init__, _ServerPort.write

    def init(self: AuditTrail, *args: Any, **kwargs: Any) -> None:
        real_init(self, *args, **kwargs)
        modes.append(self.synchronous)

    async def write(self: _ServerPort, values: Mapping[str, float]) -> WriteReport:
        for tag in set(values) & set(SETPOINT_TAGS):  # committed before it reaches the PLC
            assert _newest(db, tag) == pytest.approx(values[tag], rel=1e-12)
            sent.append(dict(values))
        return await real_write(self, values)

    monkeypatch.setattr(AuditTrail, "__init__", init)
    monkeypatch.setattr(_ServerPort, "write", write)
    result = run_case(_job(smoke, tmp_path))
    assert result["status"] == "passed", result.get("error")
    assert modes == ["NORMAL"]
    assert len(sent) >= result["kpis"]["setpoint_writes"] > 0


@pytest.mark.slow
def test_a_finished_case_has_a_durable_trail_before_its_result(
    smoke: Campaign, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    events: list[str] = []
    real_fsync, real_write_json = audit_module._fsync, runner_module.write_json

    def fsync(path: Path) -> None:
        events.append(f"fsync {path.name}")
        real_fsync(path)

    def write_json(path: Path, data: Any) -> Path:
        events.append(f"write {Path(path).name}")
        return real_write_json(path, data)

    monkeypatch.setattr(audit_module, "_fsync", fsync)
    monkeypatch.setattr(runner_module, "write_json", write_json)
    result = run_case(_job(smoke, tmp_path))
    assert result["status"] == "passed", result.get("error")
    done = events.index("write result.json")
    assert {"fsync audit.db", "fsync audit.db.anchor"} <= set(events[:done])
    folder = tmp_path / "cases" / smoke.cases[0].id
    wal = folder / "audit.db-wal"
    assert not wal.exists() or wal.stat().st_size == 0  # everything in the database file
    records = verify_file(folder / "audit.db").records
    # the database and anchor files alone (no WAL, no shared memory) hold the whole trail
    alone = tmp_path / "alone"
    alone.mkdir()
    for name in ("audit.db", "audit.db.anchor"):
        shutil.copy(folder / name, alone / name)
    assert verify_file(alone / "audit.db").records == records > 0
    assert _b4().audit_durable(folder / "audit.db")  # B4 counts this case's evidence


def test_b4_does_not_count_a_trail_left_in_its_wal(tmp_path: Path) -> None:
    """The failure B4's evidence count catches: records committed but never checkpointed
    (a NORMAL trail not made durable, e.g. its case's process died)."""
    db = tmp_path / "audit.db"
    trail = AuditTrail(db, synchronous="NORMAL")
    trail.record("setpoint.write", "shelf_temp_sp", reason="MPC decision", new_value=-20.0)
    try:
        assert not _b4().audit_durable(db)
        trail.make_durable()
        assert _b4().audit_durable(db)
    finally:
        trail.close()


def _b4() -> Any:
    if str(ROOT / "bench") not in sys.path:
        sys.path.insert(0, str(ROOT / "bench"))
    return importlib.import_module("b4_campaign")


KILL_MID_CASE = """
import os, sys, json
from controller.runtime.audit import AuditTrail
from hil.campaign.runner import run_case
real, calls = AuditTrail.record_all, [0]
def record_all(self, entries):
    out = real(self, entries)
    calls[0] += 1
    if calls[0] == {kill_after}:
        os._exit(9)  # the worker dies mid-case: no cleanup, no close, no result
    return out
AuditTrail.record_all = record_all
run_case(json.loads(sys.argv[1]))
"""


@pytest.mark.slow
def test_a_worker_killed_mid_case_leaves_no_result_and_the_case_reruns(
    smoke: Campaign, tmp_path: Path
) -> None:
    job = _job(smoke, tmp_path)
    script = textwrap.dedent(KILL_MID_CASE).replace("{kill_after}", "12")
    env = os.environ | {"PYTHONPATH": str(ROOT)}
    child = subprocess.run(
        [sys.executable, "-c", script, json.dumps(job)], cwd=ROOT, env=env, timeout=600
    )
    assert child.returncode == 9
    folder = tmp_path / "cases" / smoke.cases[0].id
    assert not (folder / "result.json").exists()
    with sqlite3.connect(f"file:{folder / 'audit.db'}?mode=ro", uri=True) as con:
        committed = con.execute("SELECT count(*) FROM audit").fetchone()[0]
    assert committed >= 12  # what was committed survived the process's crash
    assert previous_result(tmp_path, smoke.cases[0], "fast", "") is None  # runs again
    again = run_case(job)
    assert again["status"] == "passed" and again["attempts"] == 2
    assert verify_file(folder / "audit.db").records > 0  # a fresh trail, durable, verifying
