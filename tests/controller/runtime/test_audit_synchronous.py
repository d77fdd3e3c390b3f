"""The audit trail's ``synchronous`` option: FULL by default (every commit fsynced), NORMAL
for a fast-mode campaign case (committed, unsynced, until ``make_durable`` or ``close``)."""

from __future__ import annotations

import os
import shutil
import sqlite3
from pathlib import Path

import pytest

from controller.runtime.audit import CHECKPOINT_EVERY, AuditTrail
from controller.runtime.audit_chain import AuditEntry, AuditError
from controller.runtime.audit_verify import verify_file


def _write(trail: AuditTrail, n: int) -> None:
    for i in range(n):
        trail.record_all([AuditEntry("setpoint.write", f"tag{i}", "MPC decision", 1.0, 2.0)])


def _ckpt_sync(trail: AuditTrail) -> int:
    assert trail._ckpt_db is not None
    return int(trail._ckpt_db.execute("PRAGMA synchronous").fetchone()[0])


def _count_alone(db: Path, where: Path) -> int:
    """The records the database file holds by itself (its WAL left behind), as after a crash
    of the machine that lost every unsynced page of the WAL."""
    where.mkdir()
    shutil.copy(db, where / db.name)
    with sqlite3.connect(where / db.name) as con:
        tables = {r[0] for r in con.execute("SELECT name FROM sqlite_master")}
        if "audit" not in tables:  # even the table is in the WAL only
            return 0
        return int(con.execute("SELECT count(*) FROM audit").fetchone()[0])


def test_a_bad_synchronous_names_the_value_and_what_is_allowed(tmp_path: Path) -> None:
    with pytest.raises(
        AuditError, match=r"synchronous: 'OFF' is not allowed; allowed: FULL, NORMAL"
    ):
        AuditTrail(tmp_path / "audit.db", synchronous="OFF")


def test_full_is_the_default_and_normal_is_asked_for(tmp_path: Path) -> None:
    full = AuditTrail(tmp_path / "full.db")
    normal = AuditTrail(tmp_path / "normal.db", synchronous="NORMAL")
    try:
        assert full._db.execute("PRAGMA synchronous").fetchone()[0] == 2  # FULL
        assert normal._db.execute("PRAGMA synchronous").fetchone()[0] == 1  # NORMAL
        # the background checkpoints: synced (FULL), or not (NORMAL: make_durable syncs all)
        for trail, expected in ((full, 2), (normal, 0)):
            _write(trail, CHECKPOINT_EVERY)
            assert trail._checkpointer.call(lambda t=trail: _ckpt_sync(t)) == expected
    finally:
        full.close()
        normal.close()


def test_normal_commits_live_in_the_wal_until_make_durable(tmp_path: Path) -> None:
    db, n = tmp_path / "audit.db", CHECKPOINT_EVERY - 1  # before any background checkpoint
    trail = AuditTrail(db, synchronous="NORMAL")
    try:
        _write(trail, n)
        # committed (another connection sees them: they survive a crash of the process) ...
        with sqlite3.connect(db) as con:
            assert con.execute("SELECT count(*) FROM audit").fetchone()[0] == n
        # ... but only in the unsynced WAL: the failure make_durable protects against
        assert _count_alone(db, tmp_path / "before") == 0
        trail.make_durable()
        assert Path(f"{db}-wal").stat().st_size == 0  # checkpointed and truncated
        assert _count_alone(db, tmp_path / "after") == n
        _write(trail, 3 * CHECKPOINT_EVERY)  # background checkpoints meanwhile
        trail.make_durable()
        assert _count_alone(db, tmp_path / "again") == n + 3 * CHECKPOINT_EVERY
        assert trail.verify() == n + 3 * CHECKPOINT_EVERY
    finally:
        trail.close()
    assert verify_file(db).records == n + 3 * CHECKPOINT_EVERY


def test_normal_syncs_anchors_and_files_only_when_made_durable(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Per record: no fsync of the anchor file; at close: the database, the anchor file and
    their folder, after the last anchor was written."""
    synced: list[str] = []
    real_fsync = os.fsync

    def fsync(fd: int) -> None:  # what Python fsyncs (SQLite's own syncs are not seen here)
        synced.append(Path(os.readlink(f"/proc/self/fd/{fd}")).name)
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", fsync)
    trail = AuditTrail(tmp_path / "audit.db", synchronous="NORMAL", anchor_every=4)
    _write(trail, 18)  # 1 + 4 anchors written, none fsynced
    assert synced == []
    trail.close()  # the last anchor, then the durable step
    assert synced == ["audit.db", "audit.db.anchor", tmp_path.name]
    assert verify_file(tmp_path / "audit.db").records == 18


def test_full_anchors_are_fsynced_as_written(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls: list[int] = []
    real_fsync = os.fsync
    monkeypatch.setattr(os, "fsync", lambda fd: (calls.append(fd), real_fsync(fd))[1])
    trail = AuditTrail(tmp_path / "audit.db", anchor_every=4)
    try:
        _write(trail, 5)  # the first anchor (file and new folder entry), one after 4 more
        assert len(calls) == 3
    finally:
        trail.close()


def test_make_durable_on_a_full_or_closed_trail(tmp_path: Path) -> None:
    db = tmp_path / "audit.db"
    trail = AuditTrail(db)
    _write(trail, 3)
    trail.make_durable()
    assert _count_alone(db, tmp_path / "copy") == 3
    trail.close()
    trail.make_durable()  # closed: nothing to do, no error
    assert verify_file(db).records == 3
