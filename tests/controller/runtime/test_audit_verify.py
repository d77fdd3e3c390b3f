"""``pharmatwin audit verify`` against a real trail: a deleted tail, a recomputed chain, forged
anchors, empty files and files that are not audit trails all fail with one clear message and
no traceback; verifying never changes the file; an intact trail reports what it checked.

The attacker in these tests knows the hash algorithm and can write the database and the
anchor file, but not read the key file (held outside, mode 600).
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import sqlite3
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import pytest

from controller.runtime.audit import AuditTrail
from controller.runtime.audit_anchors import Anchor, read_anchors
from controller.runtime.audit_chain import FIELDS as _FIELDS
from controller.runtime.audit_chain import GENESIS, AuditError, AuditMismatch
from controller.runtime.audit_chain import digest as _digest
from controller.runtime.audit_keys import KEY_ENV, AnchorKey, create_key, load_key
from controller.runtime.audit_verify import read_records, verify_file
from controller.runtime.cli import main as cli_main

RECORDS = 10
EVERY = 4  # anchors after records 1, 5, 9 and at close (10)


@pytest.fixture(autouse=True)
def no_key_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(KEY_ENV, raising=False)


@pytest.fixture
def key(tmp_path: Path) -> AnchorKey:
    (tmp_path / "keys").mkdir()
    return create_key(tmp_path / "keys" / "audit.key")


def build(folder: Path, key: AnchorKey | None, records: int = RECORDS) -> Path:
    """A closed trail of ``records`` setpoint writes, anchored every EVERY records."""
    folder.mkdir(parents=True, exist_ok=True)
    trail = AuditTrail(
        folder / "audit.db",
        config_hash="cfg",
        actor="alice",
        anchor_key=key.path if key else None,
        anchor_every=EVERY,
    )
    for i in range(records):
        trail.record("setpoint.write", "feed_rate_sp", reason=f"MPC decision {i}", new_value=i)
    trail.close()
    return folder / "audit.db"


def verify(capsys: pytest.CaptureFixture[str], db: Path, *extra: str | Path) -> tuple[int, str]:
    rc = cli_main(["audit", "verify", str(db), *map(str, extra)])
    out, err = capsys.readouterr()
    assert "Traceback" not in out + err
    return rc, out


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def sql(db: Path, *statements: str) -> None:
    conn = sqlite3.connect(db)
    for s in statements:
        conn.execute(s)
    conn.commit()
    conn.close()


def recompute_chain(db: Path) -> None:
    """What an attacker does after an edit: recompute every hash from the first record."""
    conn = sqlite3.connect(db)
    conn.execute("DROP TRIGGER IF EXISTS audit_no_update")
    prev = GENESIS
    rows = conn.execute(f"SELECT id, {', '.join(_FIELDS)} FROM audit ORDER BY id").fetchall()
    for row in rows:
        digest = _digest(prev, dict(zip(_FIELDS, row[1:], strict=True)))
        conn.execute(
            "UPDATE audit SET prev_hash = ?, hash = ? WHERE id = ?", (prev, digest, row[0])
        )
        prev = digest
    conn.commit()
    conn.close()


def anchors_up_to(db: Path, count: int) -> Path:
    """A copy of the anchor file with only the anchors of the first ``count`` records: what a
    chain check sees without the anchors that would catch the tampering."""
    src = db.with_name(db.name + ".anchor")
    lines = [
        x for x in src.read_text().splitlines(keepends=True) if json.loads(x)["count"] <= count
    ]
    early = db.with_name("early.anchor")
    early.write_text("".join(lines))
    return early


def test_an_intact_trail_verifies_and_says_what_was_checked(
    tmp_path: Path, key: AnchorKey, capsys: pytest.CaptureFixture[str]
) -> None:
    db = build(tmp_path / "trail", key)
    anchors, _ = read_anchors(db.with_name("audit.db.anchor"))
    assert [a.count for a in anchors] == [1, 5, 9, 10]
    assert all(a.key_id == key.key_id and a.mac for a in anchors)
    rc, out = verify(capsys, db, "--key", key.path)
    assert rc == 0
    assert (
        f"{RECORDS} records, hash chain intact; 4 anchors match, signed with key {key.key_id}"
        in out
    )
    assert "the newest covers 10 records" in out and "not anchored" not in out
    # the signatures are checked: no key is an error, another key a failure
    rc, out = verify(capsys, db)
    assert rc == 2 and f"are signed (key {key.key_id})" in out and KEY_ENV in out
    other = create_key(tmp_path / "keys" / "other.key")
    rc, out = verify(capsys, db, "--key", other.path)
    assert rc == 1 and f"signed with key {key.key_id}, not with {other.key_id}" in out


def test_the_key_can_come_from_the_environment(
    tmp_path: Path,
    key: AnchorKey,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setenv(KEY_ENV, str(key.path))
    db = build(tmp_path / "trail", key=None)  # the writer finds the key in the environment
    rc, out = verify(capsys, db)
    assert rc == 0 and f"signed with key {key.key_id}" in out


def test_a_replaced_append_only_trigger_is_named(
    tmp_path: Path, key: AnchorKey, capsys: pytest.CaptureFixture[str]
) -> None:
    # triggers of the same names that refuse nothing passed as intact: only their names
    # were checked (the writer's CREATE TRIGGER IF NOT EXISTS does not restore them either)
    db = build(tmp_path / "trail", key)
    sql(
        db,
        "DROP TRIGGER audit_no_delete",
        "CREATE TRIGGER audit_no_delete BEFORE DELETE ON audit BEGIN SELECT 1; END",
    )
    rc, out = verify(capsys, db, "--key", key.path)
    assert rc == 0 and "hash chain intact" in out
    assert "the append-only trigger audit_no_delete is not the writer's own (replaced)" in out
    assert "it may let a DELETE through" in out and "audit_no_update" not in out
    rc, out = verify(capsys, build(tmp_path / "clean", key), "--key", key.path)
    assert rc == 0 and "trigger" not in out


def test_a_deleted_tail_fails(
    tmp_path: Path, key: AnchorKey, capsys: pytest.CaptureFixture[str]
) -> None:
    db = build(tmp_path / "trail", key)
    sql(db, "DROP TRIGGER audit_no_delete", "DELETE FROM audit WHERE id > 7")
    # the hash chain of what is left is intact: a chain check alone says ok
    rc, out = verify(capsys, db, "--key", key.path, "--anchor", anchors_up_to(db, 7))
    assert rc == 0 and "7 records, hash chain intact" in out
    assert "triggers audit_no_delete are missing" in out
    rc, out = verify(capsys, db, "--key", key.path)
    assert rc == 1 and "FAILED" in out
    assert "holds 7 records (the last is id 7)" in out
    assert "anchored 10 records up to id 10: records were deleted from the end" in out
    # and the writer refuses to extend the cut trail
    trail = AuditTrail(db, anchor_key=key.path)
    with pytest.raises(AuditMismatch, match="it was cut or rewritten; nothing was written"):
        trail.record("setpoint.write", "feed_rate_sp", reason="after the cut", new_value=1)
    assert len(list(trail.records())) == 7
    trail.close()


@pytest.mark.parametrize(
    ("edited", "found"), [(3, "record number 5 is id 5"), (1, "another trail")]
)
def test_a_recomputed_chain_fails(
    tmp_path: Path,
    key: AnchorKey,
    capsys: pytest.CaptureFixture[str],
    edited: int,
    found: str,
) -> None:
    db = build(tmp_path / "trail", key)
    sql(
        db, "DROP TRIGGER audit_no_update", f"UPDATE audit SET new_value = '99' WHERE id = {edited}"
    )
    rc, out = verify(capsys, db, "--key", key.path)
    assert rc == 1 and f"record {edited} " in out and "does not match its hash chain" in out
    recompute_chain(db)
    # the recomputed chain is consistent in itself: only the anchors can catch it
    rc, out = verify(capsys, db, "--key", key.path, "--anchor", anchors_up_to(db, 0))
    assert rc == 1 and "the hash chain of 10 records is intact, but" in out
    rc, out = verify(capsys, db, "--key", key.path)
    assert rc == 1 and "FAILED" in out and found in out


def test_forged_anchors_fail(
    tmp_path: Path, key: AnchorKey, capsys: pytest.CaptureFixture[str]
) -> None:
    """Recompute the chain, then rewrite the anchor file to match it: without the key the
    attacker can only leave anchors unsigned, sign with a key of their own, or keep the old
    signature on new contents."""
    db = build(tmp_path / "trail", key)
    sql(db, "DROP TRIGGER audit_no_update", "UPDATE audit SET new_value = '99' WHERE id = 3")
    recompute_chain(db)
    anchor = db.with_name("audit.db.anchor")
    honest = read_anchors(anchor)[0]
    heads = {r.id: r.hash for r in AuditTrail(db).records()}

    def matching(a: Anchor) -> Anchor:  # an anchor of the recomputed chain, unsigned
        return Anchor(heads[1], a.count, a.last_id, heads[a.last_id], a.ts_utc)

    own = AnchorKey(tmp_path / "attacker.key", os.urandom(32))
    forgeries = {
        "no anchor of": [matching(a) for a in honest],
        "is not signed, while other anchors of it are": [
            matching(a) if k == 0 else matching(a).signed(key) for k, a in enumerate(honest)
        ],
        f"signed with key {own.key_id}, not with {key.key_id}": [
            matching(a).signed(own) for a in honest
        ],
        "the signature does not match: the anchor was altered": [
            replace(matching(a), key_id=a.key_id, mac=a.mac) for a in honest
        ],
    }
    for expected, forged in forgeries.items():
        anchor.write_bytes(b"".join(a.to_line() for a in forged))
        rc, out = verify(capsys, db, "--key", key.path)
        assert rc == 1 and expected in out
    # without the key, unsigned forgeries pass: that is what the key is for
    anchor.write_bytes(b"".join(matching(a).to_line() for a in honest))
    rc, out = verify(capsys, db)
    assert rc == 0 and "UNSIGNED" in out


def test_an_unsigned_trail_checked_with_a_key_says_both_what_it_may_be(
    tmp_path: Path, key: AnchorKey, capsys: pytest.CaptureFixture[str]
) -> None:
    """A trail written before the key was set up (the README's order: the demo, then
    ``audit keygen``), verified with the key: it said the key "signs this trail", which it
    never did, as if the trail were forged."""
    db = build(tmp_path / "trail", key=None)
    rc, out = verify(capsys, db, "--key", key.path)
    assert rc == 1 and "signs this trail" not in out
    assert "no anchor of" in out and "verified without it" in out and KEY_ENV in out
    assert verify(capsys, db)[0] == 0


def test_unsigned_anchors_still_catch_a_cut_and_say_they_are_unsigned(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    db = build(tmp_path / "trail", key=None)
    rc, out = verify(capsys, db)
    assert rc == 0 and "4 anchors match, UNSIGNED" in out
    sql(db, "DROP TRIGGER audit_no_delete", "DELETE FROM audit WHERE id > 9")
    rc, out = verify(capsys, db)
    assert rc == 1 and "records were deleted from the end" in out


def test_an_empty_file_is_an_error(
    tmp_path: Path, key: AnchorKey, capsys: pytest.CaptureFixture[str]
) -> None:
    empty = tmp_path / "empty.db"
    empty.write_bytes(b"")
    rc, out = verify(capsys, empty)
    assert rc == 2 and f"{empty} is empty (0 bytes): not an audit trail" in out
    assert empty.read_bytes() == b""
    # an emptied trail whose anchor is still there: the trail was deleted
    db = build(tmp_path / "trail", key)
    db.write_bytes(b"")
    rc, out = verify(capsys, db, "--key", key.path)
    assert rc == 1 and "is empty (0 bytes), but its anchor file" in out and "was deleted" in out
    rc, out = verify(capsys, tmp_path / "missing.db")
    assert rc == 2 and "no audit database at" in out


def _other_sqlite(path: Path) -> None:
    sql(
        path,
        "CREATE TABLE batches (id INTEGER PRIMARY KEY, name TEXT)",
        "INSERT INTO batches (name) VALUES ('B1')",
    )


def _text(path: Path) -> None:
    path.write_text("ts,actor,action\n2026-01-01,alice,setpoint.write\n")


def _binary(path: Path) -> None:
    path.write_bytes(random.Random(7).randbytes(5000))


def _sqlite_header_then_garbage(path: Path) -> None:
    path.write_bytes(b"SQLite format 3\x00" + random.Random(8).randbytes(5000))


def _no_records(path: Path) -> None:
    AuditTrail(path).close()


def _folder(path: Path) -> None:
    path.mkdir()


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (
            _other_sqlite,
            "but not an audit trail: it has no table 'audit' (tables: batches)",
        ),
        (_text, "is not an audit trail: not an SQLite database (a text file)"),
        (_binary, "is not an audit trail: not an SQLite database (binary data)"),
        (_sqlite_header_then_garbage, "cannot read it as an audit database"),
        (_no_records, "holds no records: nothing to verify"),
        (_folder, "is a folder, not an audit database"),
    ],
)
def test_files_that_are_not_audit_trails_are_errors_and_stay_unchanged(
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    make: Callable[[Path], None],
    message: str,
) -> None:
    path = tmp_path / "suspect.db"
    make(path)
    before = None if path.is_dir() else sha256(path)
    rc, out = verify(capsys, path)
    assert rc == 2 and "error:" in out and message in out and str(path) in out
    assert out.count("\n") == 1  # one line
    if before is not None:
        assert sha256(path) == before


def test_verify_creates_no_table_and_leaves_the_database_bytes_alone(
    tmp_path: Path, key: AnchorKey, capsys: pytest.CaptureFixture[str]
) -> None:
    other = tmp_path / "batches.db"
    _other_sqlite(other)
    before = sha256(other)
    assert verify(capsys, other)[0] == 2
    assert sha256(other) == before
    tables = sqlite3.connect(other).execute("SELECT name FROM sqlite_master").fetchall()
    assert tables == [("batches",)]
    with pytest.raises(AuditError, match=r"is not an audit trail"):
        AuditTrail(other)  # nor does the writer: another program's database is refused
    assert sha256(other) == before
    db = build(tmp_path / "trail", key)
    before, anchors = sha256(db), sha256(db.with_name("audit.db.anchor"))
    assert verify(capsys, db, "--key", key.path)[0] == 0
    assert (sha256(db), sha256(db.with_name("audit.db.anchor"))) == (before, anchors)


def test_a_damaged_database_gives_a_message_not_a_traceback(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    db = tmp_path / "trail" / "audit.db"
    db.parent.mkdir()
    trail = AuditTrail(db, anchor_every=16)
    for i in range(300):
        trail.record("setpoint.write", "x", reason="r", new_value=i, detail={"pad": "p" * 200})
    trail.close()
    raw = bytearray(db.read_bytes())
    raw[len(raw) // 2 : len(raw) // 2 + 4096] = random.Random(3).randbytes(4096)
    db.write_bytes(bytes(raw))
    rc, out = verify(capsys, db)
    assert rc == 1 and "cannot read its records (the last readable is id" in out
    assert "database disk image is malformed" in out


@pytest.mark.parametrize(
    ("actor", "message"),
    [("x'00ff'", "actor holds bytes"), ("CAST(x'41ff42' AS TEXT)", "Could not decode to UTF-8")],
)
def test_a_record_that_is_not_text_fails(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], actor: str, message: str
) -> None:
    db = build(tmp_path / "trail", key=None)
    cols = "ts_utc, actor, action, target, reason, software_version, config_hash, detail"
    sql(
        db,
        f"INSERT INTO audit ({cols}, prev_hash, hash) "
        f"VALUES ('t', {actor}, 'a', 'b', 'r', 's', 'c', '{{}}', 'p', 'h')",
    )
    rc, out = verify(capsys, db)
    assert rc == 1 and message in out


def test_a_missing_anchor_file_fails_and_anchoring_restarts_in_the_open(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    db = build(tmp_path / "trail", key=None)
    db.with_name("audit.db.anchor").unlink()
    rc, out = verify(capsys, db)
    assert (
        rc == 1 and "does not exist: the hash chain of 10 records is intact, but a deleted" in out
    )
    assert "cannot be ruled out" in out
    trail = AuditTrail(db)  # a writer adopts the trail, and says so in it
    trail.record("setpoint.write", "feed_rate_sp", reason="after the loss", new_value=1)
    trail.close()
    actions = [r.action for r in AuditTrail(db).records()]
    assert actions[-2:] == ["audit.anchor.start", "setpoint.write"]
    rc, out = verify(capsys, db)
    assert rc == 0 and "12 records" in out
    assert "record 11" in out and "anchoring began here; the 10 records before it" in out


def test_a_new_trail_moves_a_stale_anchor_file_aside_and_records_it(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    db = build(tmp_path / "trail", key=None)
    for suffix in ("", "-wal", "-shm"):
        db.with_name(db.name + suffix).unlink(missing_ok=True)
    rc, out = verify(capsys, db)
    assert rc == 1 and "no audit database at" in out and "it anchors was deleted" in out
    trail = AuditTrail(db)
    trail.record("run.start", "site", reason="a new run")
    trail.close()
    moved = list(db.parent.glob("audit.db.anchor.superseded-*"))
    assert len(moved) == 1 and [a.count for a in read_anchors(moved[0])[0]] == [1, 5, 9, 10]
    first = next(iter(AuditTrail(db).records()))
    assert first.action == "audit.anchor.superseded" and moved[0].name in first.reason
    rc, out = verify(capsys, db)
    assert rc == 0 and "2 records" in out and "10 records, last anchored" in out


def test_a_live_writer_and_a_cut_anchor_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    db = tmp_path / "audit.db"
    trail = AuditTrail(db, anchor_every=100)
    for i in range(3):
        trail.record("setpoint.write", "x", reason="r", new_value=i)
    rc, out = verify(capsys, db)  # while the writer runs: anchored at its first record
    assert rc == 0 and "3 records" in out and "2 newer records are not anchored yet" in out
    anchor = db.with_name("audit.db.anchor")
    with anchor.open("ab") as f:
        f.write(b'{"count":3,"he')  # a crash in the middle of an anchor write
    rc, out = verify(capsys, db)
    assert rc == 0 and "the last line of" in out and "is incomplete" in out
    trail.close()
    trail = AuditTrail(db)  # the next writer drops the cut line before it anchors
    trail.record("setpoint.write", "x", reason="r", new_value=9)
    trail.close()
    rc, out = verify(capsys, db)
    assert rc == 0 and "incomplete" not in out and "4 records" in out and "3 anchors" in out
    anchor.write_bytes(b"not an anchor\n" + anchor.read_bytes())
    rc, out = verify(capsys, db)
    assert rc == 1 and "line 1 is not an anchor" in out


def test_two_writers_on_one_trail_keep_it_verifiable(tmp_path: Path) -> None:
    db = tmp_path / "audit.db"
    runtime, commissioning = AuditTrail(db, anchor_every=2), AuditTrail(db, anchor_every=3)
    for i in range(12):
        (runtime if i % 3 else commissioning).record("w", "x", reason="r", new_value=i)
    runtime.close()
    commissioning.close()
    report = verify_file(db)
    assert report.records == 12 and report.unanchored == 0 and report.anchors >= 6


def test_key_files_must_be_private_and_well_formed(
    tmp_path: Path, key: AnchorKey, capsys: pytest.CaptureFixture[str]
) -> None:
    assert key.path.stat().st_mode & 0o777 == 0o600 and len(load_key(key.path).secret) == 32
    assert cli_main(["audit", "keygen", str(key.path)]) == 2
    assert "exists: refusing to overwrite" in capsys.readouterr().out
    assert load_key(key.path) == key
    db = build(tmp_path / "trail", key)
    key.path.chmod(0o644)
    rc, out = verify(capsys, db, "--key", key.path)
    assert rc == 2 and "has mode 644: group or others may read it" in out and "chmod 600" in out
    with pytest.raises(AuditError, match="mode 644"):
        AuditTrail(tmp_path / "other.db", anchor_key=key.path)
    short = tmp_path / "keys" / "short.key"
    short.write_text("abcd\n")
    short.chmod(0o600)
    rc, out = verify(capsys, db, "--key", short)
    assert rc == 2 and "must hold 64 or more hex digits" in out
    made = tmp_path / "keys" / "new.key"
    assert cli_main(["audit", "keygen", str(made)]) == 0
    assert f"key {load_key(made).key_id}, mode 600" in capsys.readouterr().out
    # into a folder not made yet (the README's /etc/pharmatwin/audit.key on a fresh machine:
    # it was "No such file or directory"): made, private
    fresh = tmp_path / "etc" / "pharmatwin" / "audit.key"
    assert cli_main(["audit", "keygen", str(fresh)]) == 0
    assert fresh.stat().st_mode & 0o777 == 0o600 and len(load_key(fresh).secret) == 32
    for made in (fresh.parent, fresh.parent.parent):  # every folder it made is private
        assert made.stat().st_mode & 0o777 == 0o700
    capsys.readouterr()
    # a file where a folder should be is named as that, not as a key that exists
    (tmp_path / "run.out").write_text("x\n")
    assert cli_main(["audit", "keygen", str(tmp_path / "run.out" / "x.key")]) == 2
    out = " ".join(capsys.readouterr().out.split())
    assert "x.key: Not a directory" in out and "exists: refusing" not in out
    # "a/../k.key" is k.key beside a: no folder a made ("File exists" on a/.. before)
    dotted = tmp_path / "a" / ".." / "k.key"
    assert cli_main(["audit", "keygen", str(dotted)]) == 0
    assert (tmp_path / "k.key").is_file() and not (tmp_path / "a").exists()


def test_keygen_under_a_folder_it_may_not_look_into_is_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Path.exists() raises PermissionError on Python 3.11 (a folder this user may not
    search): it was a traceback, exit 1."""
    locked = tmp_path / "locked"
    real_stat = Path.stat

    def stat(self: Path, **kwargs: object) -> os.stat_result:
        if self == locked / "sub":
            raise PermissionError(13, "Permission denied", str(self))
        return real_stat(self, **kwargs)  # type: ignore[arg-type]

    locked.mkdir()
    monkeypatch.setattr(Path, "stat", stat)
    assert cli_main(["audit", "keygen", str(locked / "sub" / "k.key")]) == 2
    out = " ".join(capsys.readouterr().out.split())
    assert f"cannot make the folder {locked / 'sub'}" in out and "Permission denied" in out


def test_a_writer_keeps_the_trails_key(tmp_path: Path, key: AnchorKey) -> None:
    db = build(tmp_path / "trail", key=None)
    trail = AuditTrail(db, anchor_key=key.path)
    with pytest.raises(AuditError, match="are unsigned, this writer has key"):
        trail.record("w", "x", reason="r")
    trail.close()
    assert verify_file(db).records == RECORDS


def test_an_anchor_that_cannot_be_written_is_an_error_after_the_durable_record(
    tmp_path: Path,
) -> None:
    db = tmp_path / "audit.db"
    trail = AuditTrail(db, anchor_every=1)
    trail.record("setpoint.write", "x", reason="r", new_value=1)
    anchor = db.with_name("audit.db.anchor")
    anchor.unlink()
    anchor.mkdir()  # the anchor file can no longer be written
    with pytest.raises(AuditError, match="cannot append to the anchor file"):
        trail.record("setpoint.write", "x", reason="r", new_value=2)
    assert [r.new_value for r in trail.records()] == ["1", "2"]  # audited: the caller stops
    trail.close()


def test_read_records_is_read_only(tmp_path: Path) -> None:
    db = build(tmp_path / "trail", key=None)
    before = sha256(db)
    assert [r.new_value for r in read_records(db)] == [str(i) for i in range(RECORDS)]
    assert sha256(db) == before
    other = tmp_path / "batches.db"
    _other_sqlite(other)
    before = sha256(other)
    with pytest.raises(AuditError, match="no table 'audit'"):
        read_records(other)
    assert sha256(other) == before
