"""``pharmatwin audit verify`` leaves the folder of the trail as it found it.

SQLite's read-only reader of a WAL database makes a ``-wal`` and a ``-shm`` file beside it
when there are none, and leaves them: before, every verification (and every ``audit export``)
of a closed trail added two files to the evidence folder. The trail is still really read: an
edit made behind the triggers fails, in a folder left as it was; a live writer's records (in
its ``-wal``) are still counted; and a writer that opens the trail while it is being read is
read through, not missed.
"""

from __future__ import annotations

import hashlib
import sqlite3
from pathlib import Path

import pytest

from controller.runtime.audit import AuditTrail
from controller.runtime.audit_chain import AuditError, AuditMismatch
from controller.runtime.audit_keys import KEY_ENV
from controller.runtime.audit_verify import read_records, read_tail, verify_file
from controller.runtime.cli import main as cli_main

pytestmark = pytest.mark.timeout(60)


@pytest.fixture(autouse=True)
def no_key_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(KEY_ENV, raising=False)


def _trail(folder: Path, records: int = 10) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    trail = AuditTrail(folder / "audit.db", anchor_every=4)
    for i in range(records):
        trail.record("setpoint.write", "feed_rate_sp", reason=f"decision {i}", new_value=i)
    trail.close()
    return folder / "audit.db"


def _folder(folder: Path) -> dict[str, str]:
    """Every file of ``folder`` and the SHA-256 of its bytes."""
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir())}


def _verify(db: Path, capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    rc = cli_main(["audit", "verify", str(db)])
    out, err = capsys.readouterr()
    assert "Traceback" not in out + err
    return rc, " ".join(out.split())


def test_verify_adds_no_file_beside_a_closed_trail(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    db = _trail(tmp_path / "evidence")
    before = _folder(db.parent)
    assert set(before) == {"audit.db", "audit.db.anchor"}
    rc, out = _verify(db, capsys)
    assert rc == 0 and "10 records, hash chain intact; 4 anchors match" in out, out
    assert _folder(db.parent) == before  # no -wal, no -shm, the same bytes


def test_an_edit_behind_the_triggers_still_fails_and_the_folder_stays(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    db = _trail(tmp_path / "evidence")
    conn = sqlite3.connect(db)
    conn.execute("DROP TRIGGER audit_no_update")
    conn.execute("UPDATE audit SET reason = 'nothing to see' WHERE id = 3")
    conn.commit()
    conn.close()
    before = _folder(db.parent)
    assert "audit.db-wal" not in before  # the edit is in the database file itself
    rc, out = _verify(db, capsys)
    assert rc == 1 and "FAILED" in out and "record 3" in out, out
    assert _folder(db.parent) == before
    with pytest.raises(AuditMismatch):
        verify_file(db)
    assert _folder(db.parent) == before


def test_export_and_tail_read_a_closed_trail_without_adding_files(tmp_path: Path) -> None:
    db = _trail(tmp_path / "evidence")
    before = _folder(db.parent)
    assert [r.new_value for r in read_records(db)] == [str(i) for i in range(10)]
    _, rows = read_tail(db, 3)
    assert [r["new_value"] for r in rows] == ["9", "8", "7"]
    assert _folder(db.parent) == before


def test_a_live_writers_records_in_its_wal_are_still_counted(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    db = tmp_path / "audit.db"
    trail = AuditTrail(db, anchor_every=100)
    try:
        for i in range(3):
            trail.record("setpoint.write", "x", reason="r", new_value=i)
        assert db.with_name("audit.db-wal").exists()
        rc, out = _verify(db, capsys)
        assert rc == 0 and "3 records" in out, out
    finally:
        trail.close()


def test_a_writer_that_opens_the_trail_during_a_read_is_read_through(tmp_path: Path) -> None:
    """The trail had no -wal when the read began (read as the file is); a writer opened it and
    appended before the read ended: the read is made again, through the writer's -wal."""
    from controller.runtime.audit_verify import read_as_is  # new with the fix

    db = _trail(tmp_path / "evidence", records=4)
    writers: list[AuditTrail] = []

    def start_a_writer(conn: sqlite3.Connection) -> int:
        count = int(conn.execute("SELECT count(*) FROM audit").fetchone()[0])
        if not writers:
            writers.append(AuditTrail(db, anchor_every=100))
            writers[0].record("setpoint.write", "x", reason="while verified", new_value=9)
        return count

    try:
        assert read_as_is(db, start_a_writer) == 5  # not the 4 the first read saw
    finally:
        writers[0].close()


def test_a_writer_that_writes_and_closes_during_a_read_is_not_missed(tmp_path: Path) -> None:
    """A short writer (``pharmatwin tags write`` opens the trail, records and closes in ~0.1 s)
    that opens the closed trail during the read, appends and closes again leaves no -wal: it
    checkpointed into the file. The immutable read saw a file changing under it (a review
    saw ``audit verify`` call 200 000 intact records "deleted from the end", and ``audit
    export`` drop 1 667 records without a word); the change is seen and the read made again."""
    from controller.runtime.audit_verify import read_as_is

    db = _trail(tmp_path / "evidence", records=4)
    done: list[bool] = []

    def count_around_a_short_writer(conn: sqlite3.Connection) -> int:
        first = int(conn.execute("SELECT count(*) FROM audit").fetchone()[0])
        if not done:
            done.append(True)
            writer = AuditTrail(db, anchor_every=100)
            writer.record("setpoint.write", "x", reason="a short writer", new_value=9)
            writer.close()
            assert not db.with_name("audit.db-wal").exists()  # gone again, checkpointed
        return first

    assert read_as_is(db, count_around_a_short_writer) == 5  # read again: not the stale 4


def test_verify_made_while_a_short_writer_appends_is_not_a_false_tamper_verdict(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The whole ``audit verify`` with a short writer appending in the middle of the chain
    check: the verdict is the trail's (intact, with the new record), not "records were
    deleted"."""
    import controller.runtime.audit_verify as verify

    db = _trail(tmp_path / "evidence", records=8)
    real = verify.verify_chain
    done: list[bool] = []

    def chain_with_a_writer_meanwhile(conn: sqlite3.Connection, *args: object) -> object:
        conn.execute("SELECT count(*) FROM audit").fetchone()  # the read has begun
        if not done:
            done.append(True)
            writer = AuditTrail(db, anchor_every=1)  # anchors its record too
            writer.record("setpoint.write", "x", reason="a short writer", new_value=9)
            writer.close()
        return real(conn, *args)  # type: ignore[arg-type]

    monkeypatch.setattr(verify, "verify_chain", chain_with_a_writer_meanwhile)
    rc, out = _verify(db, capsys)
    assert rc == 0 and "9 records" in out, out


def test_a_folder_and_a_missing_file_are_still_errors(tmp_path: Path) -> None:
    with pytest.raises(AuditError, match="is a folder"):
        verify_file(tmp_path)
    with pytest.raises(AuditError, match="no audit database"):
        verify_file(tmp_path / "none.db")
    assert list(tmp_path.iterdir()) == []
