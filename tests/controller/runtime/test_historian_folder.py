"""``pharmatwin history export`` and ``pharmatwin forecast`` leave a historian's folder as found.

SQLite's read-only reader (``mode=ro``) of a WAL database makes a ``-wal`` and a ``-shm`` file
beside it when there are none, and leaves them: before, every export and every forecast from a
closed historian added two files beside it. The historian is still really read: a live
writer's cycles (in its ``-wal``, not yet in the database file) are exported and forecast from;
a writer that opens the file while it is being read is read through, not missed; a file that
is not a historian is still an error, in a folder left as it was.

Real SQLite historians in ``tmp_path``, the real CLI (:func:`controller.runtime.cli.main`).
"""

from __future__ import annotations

import hashlib
import json
import shutil
import sqlite3
from collections.abc import Callable
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from controller.runtime.cli import main as cli_main
from controller.runtime.historian import HistorianError, SqliteHistorian
from controller.runtime.historian_records import CycleRecord, Measurement
from controller.runtime.historian_run import run_info
from controller.runtime.site import load_site

ROOT = Path(__file__).resolve().parents[3]
LYO = ROOT / "configs" / "sites" / "lyophilizer-modbus.yaml"
EST = {"Lck": 0.31, "KC": 2.6e-4, "R0": 1.45}
pytestmark = pytest.mark.timeout(120)


def _cycle(i: int) -> CycleRecord:
    t = 10.0 * i
    meas = {
        "shelf_temp_pv": Measurement(20.0, "good", t),
        "chamber_pressure_pv": Measurement(0.15, "good", t),
    }
    return CycleRecord(
        "run-1", i, t, "2026-01-01T00:00:00+00:00", "SHADOW", measurements=meas, estimates=EST
    )


def _writer(db: Path, cycles: int) -> SqliteHistorian:
    """An open historian at ``db`` that has recorded ``cycles`` cycles of run-1."""
    site = load_site(LYO)
    db.parent.mkdir(parents=True, exist_ok=True)
    hist = SqliteHistorian(db)
    hist.start_run(run_info(site.name, "shadow", [site.path], site.model, run_id="run-1"))
    for i in range(cycles):
        hist.record(_cycle(i))
    return hist


def _closed(db: Path, cycles: int = 3) -> Path:
    _writer(db, cycles).close()
    return db


def _folder(folder: Path) -> dict[str, str]:
    """Every file of ``folder`` and the SHA-256 of its bytes."""
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir())}


def _cli(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    rc = cli_main(argv)
    out, err = capsys.readouterr()
    assert "Traceback" not in out + err
    return rc, " ".join(out.split())


def _export(db: Path, out: Path, capsys: pytest.CaptureFixture[str]) -> float:
    """``history export`` of ``db``: the number of exported cycles."""
    parquet = out / "history.parquet"
    rc, text = _cli(["history", "export", str(db), "--parquet", str(parquet)], capsys)
    assert rc == 0, text
    return float(pq.read_metadata(parquet).num_rows)


def _forecast(db: Path, out: Path, capsys: pytest.CaptureFixture[str]) -> float:
    """``forecast`` from ``db``: the start time (s) it took, i.e. the newest cycle it read."""
    argv = ["forecast", str(LYO), "--historian", str(db), "--out", str(out)]
    rc, text = _cli(argv, capsys)
    assert rc == 0, text
    start = json.loads((out / "forecast.json").read_text(encoding="utf-8"))["start"]
    return round(float(start["t"]) * 3600.0, 6)  # the lyophilizer's model time is in hours


def _cycles_in(db: Path) -> int:
    """The cycles in the file ``db`` itself (none while its tables are only in a -wal)."""
    conn = sqlite3.connect(db.resolve().as_uri() + "?mode=ro&immutable=1", uri=True)
    try:
        tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master")}
        return (
            int(conn.execute("SELECT count(*) FROM cycles").fetchone()[0])
            if "cycles" in tables
            else 0
        )
    finally:
        conn.close()


Command = Callable[[Path, Path, pytest.CaptureFixture[str]], float]
COMMANDS: dict[str, tuple[Command, float, float]] = {
    "history-export": (_export, 3.0, 5.0),
    "forecast": (_forecast, 20.0, 40.0),
}


@pytest.mark.parametrize("command", list(COMMANDS))
def test_a_read_adds_no_file_beside_a_closed_historian(
    command: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run, closed_result, _ = COMMANDS[command]
    db = _closed(tmp_path / "evidence" / "h.db")
    before = _folder(db.parent)
    assert set(before) == {"h.db"}
    assert run(db, tmp_path / "out", capsys) == closed_result  # all 3 cycles read
    assert _folder(db.parent) == before  # no -wal, no -shm, the same bytes


@pytest.mark.parametrize("command", list(COMMANDS))
def test_a_live_writers_cycles_in_its_wal_are_still_read(
    command: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run, _, live_result = COMMANDS[command]
    db = tmp_path / "live" / "h.db"
    writer = _writer(db, 5)
    try:
        assert db.with_name("h.db-wal").exists()
        alone = tmp_path / "alone" / "h.db"  # the database file without the writer's -wal
        alone.parent.mkdir()
        shutil.copyfile(db, alone)
        assert _cycles_in(alone) < 5  # so the cycles read below came from the -wal
        assert run(db, tmp_path / "out", capsys) == live_result  # all 5 cycles read
    finally:
        writer.close()


def test_a_writer_that_opens_the_historian_during_a_read_is_read_through(
    tmp_path: Path,
) -> None:
    """The historian had no -wal when the reader opened it (read as the file is); a writer
    opened it and recorded a cycle: the next read sees it, through the writer's -wal."""
    db = _closed(tmp_path / "h.db", cycles=3)
    with SqliteHistorian(db, read_only=True) as reader:
        assert [c.cycle for c in reader.cycles()] == [0, 1, 2]
        writer = SqliteHistorian(db)
        try:
            writer.record(_cycle(3))
            assert db.with_name("h.db-wal").exists()
            assert [c.cycle for c in reader.cycles()] == [0, 1, 2, 3]
            assert [r.run_id for r in reader.runs()] == ["run-1"]
        finally:
            writer.close()


def test_a_writer_that_records_and_closes_between_two_reads_is_not_missed(
    tmp_path: Path,
) -> None:
    """A writer that opens the closed historian, records a cycle and closes again leaves no
    -wal (it checkpointed into the file): the reader opened as the file is sees that the file
    changed and reads again through SQLite's usual read-only way, not its stale pages."""
    db = _closed(tmp_path / "h.db", cycles=3)
    with SqliteHistorian(db, read_only=True) as reader:
        assert [c.cycle for c in reader.cycles()] == [0, 1, 2]
        writer = SqliteHistorian(db)
        writer.record(_cycle(3))
        writer.close()
        assert not db.with_name("h.db-wal").exists()  # gone again, checkpointed
        assert [c.cycle for c in reader.cycles()] == [0, 1, 2, 3]


def test_a_read_only_historian_refuses_to_store_and_says_it_is_read_only(tmp_path: Path) -> None:
    """Storing through a historian opened read-only is refused as that, before and after its
    reads were made again through a writer's changes (it said "closed database" then: its
    write path still held the first connection, closed when the reads were made again)."""
    db = _closed(tmp_path / "h.db", cycles=3)
    with SqliteHistorian(db, read_only=True) as reader:
        for k in range(2):
            with pytest.raises(HistorianError, match="opened read-only") as err:
                reader.record(_cycle(9))
            assert "closed" not in str(err.value)
            with pytest.raises(HistorianError, match="opened read-only"):
                reader.start_run(
                    run_info("lyo", "shadow", [LYO], load_site(LYO).model, run_id="r2")
                )
            writer = SqliteHistorian(db)  # a writer changes the file: the reads are made again
            writer.record(_cycle(3 + k))
            writer.close()
            assert [c.cycle for c in reader.cycles()][-1] == 3 + k
    with SqliteHistorian(db, read_only=True) as again:  # nothing of the refused ones stored
        assert [c.cycle for c in again.cycles()] == [0, 1, 2, 3, 4] and len(again.runs()) == 1


def test_a_file_that_is_not_a_historian_is_an_error_in_a_folder_left_as_it_was(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    folder = tmp_path / "evidence"
    folder.mkdir()
    other = folder / "other.db"
    with sqlite3.connect(other) as conn:
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("CREATE TABLE readings (x REAL)")
    conn.close()
    (folder / "notes.db").write_text("not a database\n" * 300, encoding="utf-8")
    before = _folder(folder)
    assert set(before) == {"other.db", "notes.db"}
    for name, why in (("other.db", "not a PharmaTwin historian"), ("notes.db", "cannot read")):
        argv = ["history", "export", str(folder / name), "--parquet", str(tmp_path / "x.pq")]
        rc, text = _cli(argv, capsys)
        assert rc == 2 and why in text, text
    assert _folder(folder) == before
