"""A run killed by a failure (here: a locked audit trail) is recorded and reported as aborted.

Reproduced before: during ``pharmatwin run --mode closed-loop --cycles 100`` another process held
``BEGIN IMMEDIATE`` on the audit database for 8 s (longer than the trail's busy timeout, SQLite's
default of 5 s: ``sqlite3.connect``'s, which ``AuditTrail`` does not set); the run stopped at
cycle 11 and the trail's last records said ``mode.change ... run complete`` and ``run.stop ...
run complete``; the command printed ``error: cannot append to the audit trail ...: database is
locked`` with no summary nor verdict and exited 2, the code for bad input.

Here the lock is a real second sqlite3 connection holding ``BEGIN IMMEDIATE``; the trail is
built as the runtime builds it, with a 50 ms busy timeout instead of 5 s (``AuditTrail`` takes
no option for it: a subclass sets the PRAGMA on the connection it opened). The run is the CLI's,
on the lyophilizer site, with a memory PLC and a stepped clock (no wall-clock waiting).
"""

from __future__ import annotations

import asyncio
import json
import logging
import sqlite3
from pathlib import Path
from typing import Any

import pytest
from test_rogue_plc import ParkingClock
from test_wiring_close import HoldPolicy

from controller.clock import SteppedClock
from controller.ports.memory import MemoryPort, TagTable, table_from_tag_map
from controller.runtime import wiring
from controller.runtime.audit import AuditTrail
from controller.runtime.audit_chain import AuditError, AuditRecord
from controller.runtime.cli import main as cli_main
from controller.runtime.historian_records import HistorianError
from controller.runtime.site import Site, load_site
from controller.runtime.supervisor import CycleView, Mode, State, Supervisor

ROOT = Path(__file__).resolve().parents[3]
LYO = ROOT / "configs" / "sites" / "lyophilizer-modbus.yaml"
LOCK_AT = 11  # the cycle whose audit record meets the lock
pytestmark = pytest.mark.timeout(120)


class Locker:
    """Another process's connection to the audit database, holding its write lock."""

    def __init__(self, path: Path, *, release_after_failure: bool) -> None:
        self.path = path
        self.release_after_failure = release_after_failure
        self.db: sqlite3.Connection | None = None

    def hold(self) -> None:
        self.db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        self.db.execute("BEGIN IMMEDIATE")

    def failed(self) -> None:
        """The trail gave up waiting: an 8 s lock ends after the first 5 s wait gave up."""
        if self.release_after_failure:
            self.release()

    def release(self) -> None:
        if self.db is not None:
            self.db.execute("COMMIT")
            self.db.close()
            self.db = None


def _quick_trail(locker: Locker) -> type[AuditTrail]:
    class QuickTrail(AuditTrail):
        """The runtime's trail, waiting 50 ms on a lock instead of 5 s."""

        def _open(self) -> sqlite3.Connection:
            db = super()._open()
            db.execute("PRAGMA busy_timeout = 50")
            return db

        def record_all(self, entries: Any) -> list[AuditRecord]:
            try:
                return super().record_all(entries)
            except AuditError:
                locker.failed()
                raise

    return QuickTrail


def _table(site: Site) -> TagTable:
    initial = {
        "shelf_temp_pv": -35.0,
        "chamber_pressure_pv": 0.15,
        "product_temp_bottom": -35.0,
        "measurement_validity": 1.0,
        "mpc_permissive": 1.0,
    }
    return table_from_tag_map(site.tags, initial)


@pytest.fixture
def drive(monkeypatch: pytest.MonkeyPatch) -> Any:
    """``pharmatwin run`` on a memory PLC and a stepped clock; the lock taken before cycle
    ``LOCK_AT`` (the clock parks once between two cycles)."""

    def use(locker: Locker) -> None:
        real = wiring.run_site

        async def driven(site: Site, opts: wiring.RunOptions, **kw: Any) -> Supervisor:
            clock = ParkingClock()
            port = MemoryPort(_table(site), clock)
            run = real(site, opts, port=port, clock=clock, policy=HoldPolicy(), **kw)
            task = asyncio.ensure_future(run)
            dt = site.controller.sample_time * site.model.seconds_per_unit
            parks = 0
            while not task.done():
                clock.parked.clear()
                parked = asyncio.ensure_future(clock.parked.wait())
                await asyncio.wait({parked, task}, return_when=asyncio.FIRST_COMPLETED)
                parked.cancel()
                if task.done():
                    break
                parks += 1
                if parks == LOCK_AT:
                    locker.hold()
                clock.advance(dt)
            return await task

        monkeypatch.setattr(wiring, "run_site", driven)
        monkeypatch.setattr(wiring, "AuditTrail", _quick_trail(locker))

    return use


def _argv(tmp_path: Path) -> list[str]:
    return [
        "run",
        str(LYO),
        "--mode",
        "closed-loop",
        "--cycles",
        "100",
        "--quiet",
        "--audit",
        str(tmp_path / "audit.db"),
        "--historian",
        str(tmp_path / "history.db"),
    ]


def _records(path: Path) -> list[AuditRecord]:
    trail = AuditTrail(path)
    try:
        return list(trail.records())
    finally:
        trail.close()


def _stop_records(records: list[AuditRecord]) -> list[AuditRecord]:
    return [r for r in records if r.action == "run.stop" or r.new_value == State.STOPPED.value]


def _locked(path: Path) -> str:
    return f"cannot append to the audit trail {path}: database is locked"


def test_a_run_killed_by_a_locked_audit_trail_records_why_and_exits_1(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], drive: Any
) -> None:
    """The lock is let go after the cycle's record gave up (as the 8 s lock did): the stop is
    recorded, with the failure as its cause."""
    audit = tmp_path / "audit.db"
    locker = Locker(audit, release_after_failure=True)
    drive(locker)
    code = cli_main(_argv(tmp_path))
    out = " ".join(capsys.readouterr().out.split())
    assert code == 1, out
    assert "Traceback" not in out and "error:" not in out
    assert "closed loop: the MPC had control in 0 of 11 cycles" in out
    assert out.endswith(f"FAILED the run was aborted after 11 cycles: {_locked(audit)}"), out
    records = _records(audit)
    cycles = {json.loads(r.detail or "{}").get("cycle") for r in records}
    assert max(c for c in cycles if c is not None) == LOCK_AT - 1  # it ran up to the lock
    stop = [(r.action, r.new_value, r.reason) for r in records[-2:]]
    cause = f"aborted: {_locked(audit)}"
    assert stop == [("mode.change", "STOPPED", cause), ("run.stop", None, cause)]


def test_a_trail_locked_to_the_end_keeps_the_run_s_own_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], caplog: pytest.LogCaptureFixture, drive: Any
) -> None:
    """The lock outlives the run: the stop cannot be recorded; that is logged, and the error
    the run ends with is still the failure that aborted it (not a second one), exit 1."""
    audit = tmp_path / "audit.db"
    locker = Locker(audit, release_after_failure=False)
    drive(locker)
    try:
        code = cli_main(_argv(tmp_path))
    finally:
        locker.release()
    out = " ".join(capsys.readouterr().out.split())
    assert code == 1, out
    assert out.endswith(f"FAILED the run was aborted after 11 cycles: {_locked(audit)}"), out
    assert not _stop_records(_records(audit))  # nothing of the stop got in
    errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    cause = f"aborted: {_locked(audit)}"
    for what in ("the mode.change to STOPPED", "run.stop"):
        assert any(m.startswith(f"{what} ({cause}) was not recorded") for m in errors), errors


async def test_an_abort_is_not_masked_by_the_audit_failing_at_the_stop(tmp_path: Path) -> None:
    """The historian fails in cycle 3 while another connection holds the audit's lock: the
    run raises the historian's error, not the audit's that its stop met."""
    site = load_site(LYO)
    clock = SteppedClock()
    port = MemoryPort(_table(site), clock)
    locker = Locker(tmp_path / "audit.db", release_after_failure=False)
    audit = _quick_trail(locker)(tmp_path / "audit.db")

    def historian(sup: Supervisor, view: CycleView) -> None:
        if view.cycle == 3:
            locker.hold()
            raise HistorianError("cannot write the cycle: disk gone")
        clock.advance(sup.dt_s)

    pipeline = wiring.build_pipeline(site, HoldPolicy())
    sup = Supervisor(site, port, clock, pipeline, mode=Mode.SHADOW, audit=audit)
    sup.historian = historian
    await port.connect()
    try:
        with pytest.raises(HistorianError, match="disk gone"):
            await sup.run(asyncio.Event(), cycles=10)
    finally:
        locker.release()
    assert sup.state is State.STOPPED
    audit.close()
    assert not _stop_records(_records(tmp_path / "audit.db"))  # the stop could not get in
