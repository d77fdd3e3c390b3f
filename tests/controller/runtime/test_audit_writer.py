"""The audit trail's writer thread: a record is durable before anything is sent, groups
queued during a commit share the next one, the chain stays intact and verifies.

The kill tests run the writer in a child process that dies (``os._exit``, no clean-up)
right where the PLC write would go, with a slow disk simulated (every commit waits first).
A naive asynchronous writer (queue the record, return at once) loses the record there; that
failure is shown first, with the same slow disk, so the test can tell the two apart.
"""

from __future__ import annotations

import asyncio
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from controller.runtime.audit import AuditTrail
from controller.runtime.audit_chain import AuditEntry, AuditError

SLOW_COMMIT_S = 0.3

CHILD = """
import asyncio, os, queue, sys, threading, time
from pathlib import Path
from controller.runtime.audit import AuditTrail
from controller.runtime.audit_chain import AuditEntry

path, how, slow = Path(sys.argv[1]), sys.argv[2], float(sys.argv[3])
original = AuditTrail._commit
def slow_commit(self, groups):  # a slow disk: every commit waits first
    time.sleep(slow)
    return original(self, groups)
AuditTrail._commit = slow_commit

class NaiveAsyncAudit:
    '''The failure to show: queue the record, return at once, commit later.'''
    def __init__(self, path):
        self.q = queue.Queue()
        def run():
            trail = AuditTrail(path)
            while True:
                trail.record_all(self.q.get())
        threading.Thread(target=run, daemon=True).start()
    def record_all(self, entries):
        self.q.put(entries)

entry = AuditEntry("setpoint.write", "feed_sp", "MPC decision r:1", 5.0, 6.0)
if how == "naive":
    NaiveAsyncAudit(path).record_all([entry])
elif how == "sync":
    AuditTrail(path).record_all([entry])
else:
    asyncio.run(AuditTrail(path).submit_all([entry]).durable())
print("sending", flush=True)  # the PLC write would go here: the process dies instead
os._exit(3)
"""


def _die_before_send(tmp_path: Path, how: str) -> list[tuple[str, str]]:
    """Run the child; the setpoint records found in the trail after it died."""
    path = tmp_path / f"{how}.db"
    done = subprocess.run(
        [sys.executable, "-c", CHILD, str(path), how, str(SLOW_COMMIT_S)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 3 and "sending" in done.stdout, done.stderr
    if not path.exists():
        return []
    db = sqlite3.connect(path)
    try:
        return db.execute("SELECT action, target FROM audit").fetchall()
    except sqlite3.OperationalError:  # no table yet: nothing was written
        return []
    finally:
        db.close()


def test_a_naive_async_writer_loses_the_record_when_killed_before_the_send(
    tmp_path: Path,
) -> None:
    assert _die_before_send(tmp_path, "naive") == []


@pytest.mark.parametrize("how", ["sync", "async"])
def test_the_record_survives_a_kill_between_audit_and_send(tmp_path: Path, how: str) -> None:
    assert _die_before_send(tmp_path, how) == [("setpoint.write", "feed_sp")]
    assert AuditTrail(tmp_path / f"{how}.db").verify() == 1


def _slow(trail: AuditTrail, started: threading.Event, release: threading.Event) -> None:
    original = trail._commit

    def commit(groups: list[list[AuditEntry]]) -> object:
        started.set()
        release.wait(30)
        return original(groups)

    trail._commit = commit  # type: ignore[method-assign]


def test_groups_queued_during_a_commit_share_the_next_one(tmp_path: Path) -> None:
    trail = AuditTrail(tmp_path / "a.db")
    started, release = threading.Event(), threading.Event()
    _slow(trail, started, release)
    first = trail.submit_all([AuditEntry("run.start", "site", "start")])
    assert started.wait(30)
    queued = [
        trail.submit_all([AuditEntry("setpoint.write", f"sp{i}", f"MPC decision r:{i}")] * 2)
        for i in range(5)
    ]
    assert not any(p.done() for p in [first, *queued])  # nothing resolves before its commit
    release.set()
    records = [first.result(), *(p.result() for p in queued)]
    assert [len(r) for r in records] == [1, 2, 2, 2, 2, 2]
    assert [r.target for group in records for r in group] == [
        "site",
        *(f"sp{i}" for i in range(5) for _ in range(2)),
    ]
    assert trail._commits == 2  # the first commit, then one for the five queued meanwhile
    assert trail.verify() == 11
    trail.close()


def test_durable_is_awaited_without_blocking_the_loop(tmp_path: Path) -> None:
    trail = AuditTrail(tmp_path / "a.db")
    started, release = threading.Event(), threading.Event()
    _slow(trail, started, release)

    async def main() -> list[str]:
        ticks: list[str] = []

        async def ticker() -> None:
            while not release.is_set():
                ticks.append("tick")
                if len(ticks) == 3:
                    release.set()  # the loop ran while the commit waited
                await asyncio.sleep(0.001)

        pending = trail.submit_all([AuditEntry("setpoint.write", "sp", "MPC decision r:1")])
        tick = asyncio.create_task(ticker())
        records = await pending.durable()
        await tick
        db = sqlite3.connect(tmp_path / "a.db")  # durable: another connection sees it
        assert db.execute("SELECT count(*) FROM audit").fetchone()[0] == 1
        db.close()
        return [r.target for r in records] + ticks

    assert asyncio.run(main()) == ["sp", "tick", "tick", "tick"]
    trail.close()


def test_a_failed_commit_fails_every_group_in_it_and_the_writer_goes_on(tmp_path: Path) -> None:
    trail = AuditTrail(tmp_path / "a.db")
    trail.record("run.start", "site", reason="start")
    original = trail._commit
    calls = {"n": 0}

    def failing(groups: list[list[AuditEntry]]) -> list[object]:
        calls["n"] += 1
        if calls["n"] == 1:
            raise AuditError("disk full")
        return original(groups)  # type: ignore[return-value]

    trail._commit = failing  # type: ignore[method-assign]
    with pytest.raises(AuditError, match="disk full"):
        trail.record("setpoint.write", "sp", reason="MPC decision r:1")
    assert [r.target for r in trail.records()] == ["site"]  # nothing of the group written
    trail.record("setpoint.write", "sp", reason="MPC decision r:2")
    assert trail.verify() == 2
    trail.close()
    trail.close()  # a second close does nothing


def test_checkpoints_run_off_the_writer_and_the_chain_verifies(tmp_path: Path) -> None:
    from controller.runtime.audit import CHECKPOINT_EVERY

    trail = AuditTrail(tmp_path / "a.db")
    assert trail._db.execute("PRAGMA synchronous").fetchone() == (2,)
    assert trail._db.execute("PRAGMA wal_autocheckpoint").fetchone() == (0,)
    for i in range(2 * CHECKPOINT_EVERY + 1):
        trail.record("setpoint.write", "sp", reason=f"MPC decision r:{i}")
    deadline = time.monotonic() + 30
    while trail._ckpt_db is None and time.monotonic() < deadline:
        time.sleep(0.01)
    assert trail._ckpt_db is not None  # the checkpoint thread took them
    assert trail.verify() == 2 * CHECKPOINT_EVERY + 1
    trail.close()
    assert AuditTrail(tmp_path / "a.db").verify() == 2 * CHECKPOINT_EVERY + 1
