"""The audit trail: durable, append-only, hash-chained, and verification catches tampering."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from controller.runtime.audit import AuditTrail
from controller.runtime.audit_chain import AuditError, file_hash
from controller.runtime.cli import main as cli_main


def _trail(tmp_path: Path) -> AuditTrail:
    trail = AuditTrail(tmp_path / "audit.db", config_hash="abc", actor="alice")
    trail.record(
        "tag.write.request", "feed_rate_sp", reason="step test", old_value=0.0, new_value=0.05
    )
    trail.record(
        "mode.change",
        "supervisor",
        reason="operator request",
        old_value="SHADOW",
        new_value="RUNNING",
    )
    return trail


def test_records_carry_who_what_when_why_and_version(tmp_path: Path) -> None:
    trail = _trail(tmp_path)
    first, second = list(trail.records())
    assert (first.actor, first.action, first.target) == (
        "alice",
        "tag.write.request",
        "feed_rate_sp",
    )
    assert (first.old_value, first.new_value, first.reason) == ("0.0", "0.05", "step test")
    assert first.ts_utc.endswith("+00:00") and first.software_version.startswith("pharmatwin")
    assert first.config_hash == "abc" and second.prev_hash == first.hash
    assert trail.verify() == 2


def test_update_and_delete_are_refused(tmp_path: Path) -> None:
    _trail(tmp_path).close()
    db = sqlite3.connect(tmp_path / "audit.db")
    with pytest.raises(sqlite3.DatabaseError, match="append-only"):
        db.execute("UPDATE audit SET new_value = '0.2' WHERE id = 1")
    with pytest.raises(sqlite3.DatabaseError, match="append-only"):
        db.execute("DELETE FROM audit WHERE id = 1")


def test_verification_catches_an_edit_made_without_the_triggers(tmp_path: Path) -> None:
    _trail(tmp_path).close()
    db = sqlite3.connect(tmp_path / "audit.db")
    db.execute("DROP TRIGGER audit_no_update")
    db.execute("UPDATE audit SET new_value = '0.2' WHERE id = 1")
    db.commit()
    db.close()
    trail = AuditTrail(tmp_path / "audit.db")  # re-creates the triggers, but the edit stays
    with pytest.raises(AuditError, match="record 1"):
        trail.verify()
    assert cli_main(["audit", "verify", str(tmp_path / "audit.db")]) == 1


def test_a_reason_is_required(tmp_path: Path) -> None:
    trail = AuditTrail(tmp_path / "a.db")
    with pytest.raises(AuditError, match="reason"):
        trail.record("tag.write.request", "x", reason="  ")
    assert list(trail.records()) == []


def test_cli_verify_and_export(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    _trail(tmp_path).close()
    assert cli_main(["audit", "verify", str(tmp_path / "audit.db")]) == 0
    assert cli_main(["audit", "export", str(tmp_path / "audit.db")]) == 0
    out = capsys.readouterr().out
    assert "2 records, hash chain intact" in out and "feed_rate_sp" in out and "alice" in out


def test_file_hash_changes_with_content(tmp_path: Path) -> None:
    f = tmp_path / "site.yaml"
    f.write_text("a: 1\n")
    h1 = file_hash(f)
    f.write_text("a: 2\n")
    assert h1 != file_hash(f) and len(h1) == 64


def test_record_all_is_one_transaction_in_the_chain(tmp_path: Path) -> None:
    from controller.runtime.audit_chain import AuditEntry

    trail = AuditTrail(tmp_path / "a.db", config_hash="c")
    trail.record("run.start", "site", reason="start")
    out = trail.record_all(
        [
            AuditEntry("setpoint.write", "shelf_temp_sp", "MPC decision r:1", -20.0, -14.0),
            AuditEntry("setpoint.write", "chamber_pressure_sp", "MPC decision r:1", 0.1, 0.15),
        ]
    )
    assert [r.target for r in out] == ["shelf_temp_sp", "chamber_pressure_sp"]
    assert out[1].prev_hash == out[0].hash
    assert trail.verify() == 3
    with pytest.raises(AuditError, match="reason is required"):  # nothing of the batch written
        trail.record_all([AuditEntry("a", "t", "ok"), AuditEntry("b", "t", " ")])
    assert trail.verify() == 3
    trail.close()
