"""The audit table's schema: a new trail's ``id`` is the rowid (no AUTOINCREMENT, one page less
per commit), a trail in the old schema keeps opening, appending and verifying, and ids only
ever increase (the writer refuses a record whose id is not above the newest)."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from controller.runtime.audit import CHECKPOINT_EVERY, AuditTrail
from controller.runtime.audit_chain import FIELDS, GENESIS, AuditEntry, AuditError, digest
from controller.runtime.audit_keys import KEY_ENV
from controller.runtime.audit_verify import verify_file

#: the audit table as every trail before issue 19 was created (id AUTOINCREMENT)
OLD_SCHEMA = """
CREATE TABLE audit (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    ts_utc TEXT NOT NULL,
    actor TEXT NOT NULL,
    action TEXT NOT NULL,
    target TEXT NOT NULL,
    old_value TEXT,
    new_value TEXT,
    reason TEXT NOT NULL,
    software_version TEXT NOT NULL,
    config_hash TEXT NOT NULL,
    detail TEXT NOT NULL,
    prev_hash TEXT NOT NULL,
    hash TEXT NOT NULL
);
CREATE TRIGGER audit_no_update BEFORE UPDATE ON audit
BEGIN SELECT RAISE(ABORT, 'the audit trail is append-only: UPDATE refused'); END;
CREATE TRIGGER audit_no_delete BEFORE DELETE ON audit
BEGIN SELECT RAISE(ABORT, 'the audit trail is append-only: DELETE refused'); END;
"""
INSERT = (
    f"INSERT INTO audit (id, {', '.join(FIELDS)}, prev_hash, hash) "
    f"VALUES ({', '.join('?' * (len(FIELDS) + 3))})"
)


@pytest.fixture(autouse=True)
def no_key_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(KEY_ENV, raising=False)


def _write(path: Path, n: int, start: int = 0) -> list[int]:
    trail = AuditTrail(path, config_hash="cfg", actor="alice", anchor_every=2)
    ids = [
        trail.record_all(
            [AuditEntry("setpoint.write", "feed_rate_sp", f"MPC decision {i}", i - 1.0, float(i))]
        )[0].id
        for i in range(start, start + n)
    ]
    trail.close()
    return ids


def _table_sql(path: Path) -> str:
    db = sqlite3.connect(path)
    try:
        return str(db.execute("SELECT sql FROM sqlite_master WHERE name = 'audit'").fetchone()[0])
    finally:
        db.close()


def _tables(path: Path) -> set[str]:
    db = sqlite3.connect(path)
    try:
        return {r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    finally:
        db.close()


def test_a_new_trail_has_no_autoincrement_and_its_ids_only_increase(tmp_path: Path) -> None:
    path = tmp_path / "audit.db"
    ids = _write(path, 5)
    ids += _write(path, 5, start=5)  # a second writer (a restart) appends after the first
    assert "AUTOINCREMENT" not in _table_sql(path) and "sqlite_sequence" not in _tables(path)
    assert ids == sorted(ids) and len(set(ids)) == len(ids) == 10
    assert verify_file(path).records == 10


def test_a_trail_in_the_old_schema_opens_appends_and_verifies(tmp_path: Path) -> None:
    path = tmp_path / "old.db"
    db = sqlite3.connect(path)
    db.executescript(OLD_SCHEMA)
    db.close()
    ids = _write(path, 3)
    ids += _write(path, 3, start=3)
    sql = _table_sql(path)
    assert "AUTOINCREMENT" in sql  # the file keeps its own table
    assert ids == [1, 2, 3, 4, 5, 6]
    assert verify_file(path).records == 6
    trail = AuditTrail(path)
    assert [r.reason for r in trail.records()] == [f"MPC decision {i}" for i in range(6)]
    assert trail.verify() == 6
    trail.close()


def test_the_writer_refuses_an_id_that_does_not_increase(tmp_path: Path) -> None:
    """The failure first: on a table whose newest id is the largest rowid, SQLite hands the
    next row a random, smaller id (the chain is read in id order, so it would be misread).
    The writer refuses it and writes nothing."""
    path = tmp_path / "audit.db"
    _write(path, 2)
    top = 2**63 - 1
    db = sqlite3.connect(path)
    prev = db.execute("SELECT hash FROM audit ORDER BY id DESC LIMIT 1").fetchone()[0]
    values = dict.fromkeys(FIELDS, "x") | {"old_value": None, "new_value": None}
    db.execute(INSERT, [top, *(values[f] for f in FIELDS), prev, digest(prev, values)])
    db.commit()
    probe = sqlite3.connect(":memory:")  # what SQLite does with such a table
    probe.execute("CREATE TABLE t (id INTEGER PRIMARY KEY, x TEXT)")
    probe.execute("INSERT INTO t VALUES (?, 'top')", (top,))
    assert (probe.execute("INSERT INTO t (x) VALUES ('next')").lastrowid or top) < top
    probe.close()
    db.close()
    trail = AuditTrail(path, anchor_every=2)
    with pytest.raises(AuditError, match="ids must increase"):
        trail.record("setpoint.write", "feed_rate_sp", reason="one more", new_value=1.0)
    assert [r.id for r in trail.records()] == [1, 2, top]  # nothing was written
    trail.close()


def test_the_first_record_chains_from_genesis_in_both_schemas(tmp_path: Path) -> None:
    old = tmp_path / "old.db"
    db = sqlite3.connect(old)
    db.executescript(OLD_SCHEMA)
    db.close()
    for path in (old, tmp_path / "new.db"):
        _write(path, 1)
        trail = AuditTrail(path)
        (first,) = trail.records()
        assert first.id == 1 and first.prev_hash == GENESIS
        trail.close()


def _wal_frames(path: Path) -> int:
    wal = path.with_name(path.name + "-wal")
    return (wal.stat().st_size - 32) // (4096 + 24) if wal.exists() else 0


def test_a_commit_writes_one_page_where_the_old_schema_wrote_two(tmp_path: Path) -> None:
    """Pages written per commit (WAL frames), before the first checkpoint: the old schema's
    commit also rewrote its ``sqlite_sequence`` page."""
    per_commit = {}
    for schema in ("old", "new"):
        path = tmp_path / f"{schema}.db"
        if schema == "old":
            db = sqlite3.connect(path)
            db.executescript(OLD_SCHEMA)
            db.close()
        trail = AuditTrail(path)
        trail.record("run.start", "site", reason="start")
        grown = []
        for i in range(CHECKPOINT_EVERY - 2):  # no checkpoint yet: every frame is appended
            before = _wal_frames(path)
            trail.record("setpoint.write", "sp", reason=f"MPC decision {i}", new_value=i)
            grown.append(_wal_frames(path) - before)
        per_commit[schema] = sorted(grown)[len(grown) // 2]
        trail.close()
    assert per_commit == {"old": 2, "new": 1}


def test_after_a_checkpoint_the_wal_is_rewritten_in_place(tmp_path: Path) -> None:
    """Once the checkpoint thread copied the WAL, the next commit starts the WAL over: it stops
    growing (an append's fsync also carries the file's new size)."""
    path = tmp_path / "audit.db"
    trail = AuditTrail(path)
    sizes = []
    for i in range(6 * CHECKPOINT_EVERY):
        trail.record("setpoint.write", "sp", reason=f"MPC decision {i}", new_value=i)
        trail._checkpointer.call(lambda: None)  # the checkpoint (if one was due) is done
        sizes.append(_wal_frames(path))
    # Never restarted, the WAL would hold a frame or more per record (6 * CHECKPOINT_EVERY).
    # Restarted, it stays within about two checkpoints' commits: the schema's pages and a page
    # split or two (a split adds a frame to every later commit: where it falls depends on the
    # file's layout, so the plateau's level may be reached after the first checkpoints).
    later = sizes[len(sizes) // 2 :]
    assert max(later) - min(later) <= 1  # flat over the last 24 records, a split at most
    assert max(sizes) <= 2 * CHECKPOINT_EVERY < len(sizes)
    assert trail.verify() == 6 * CHECKPOINT_EVERY
    trail.close()


def test_the_records_are_the_same_bytes_in_both_schemas(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Only the table's declaration changed: the same entries at the same instant make the same
    rows (ids, every field, the hashes) in a new trail and in one of the old schema."""
    monkeypatch.setattr("controller.runtime.audit.utc_now", lambda: "2026-01-01T00:00:00+00:00")
    old = tmp_path / "old.db"
    db = sqlite3.connect(old)
    db.executescript(OLD_SCHEMA)
    db.close()
    rows = {}
    for path in (old, tmp_path / "new.db"):
        _write(path, 4)
        db = sqlite3.connect(path)
        rows[path.name] = db.execute("SELECT * FROM audit ORDER BY id").fetchall()
        db.close()
    assert len(rows["new.db"]) == 4 and rows["old.db"] == rows["new.db"]
