"""The historian: one interface, two backends (memory, SQLite), the same tests against both.

Like asyncua's ``history`` parametrization: every behaviour is checked on each backend.
Then the Parquet export, the run record, and the ``history export`` / ``audit export`` CLI.
"""

from __future__ import annotations

import contextlib
import csv
import dataclasses
import io
import json
import re
import sqlite3
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from controller.core.estimate import Estimate
from controller.core.mpc import Decision, SolveStatus
from controller.core.safety import Intervention, Reason, SafetyOutcome
from controller.plantfile import build_model
from controller.ports.base import Quality, Snapshot, TagValue
from controller.runtime.audit import AuditTrail
from controller.runtime.cli import main as cli_main
from controller.runtime.historian import (
    Historian,
    MemoryHistorian,
    SqliteHistorian,
    open_historian,
)
from controller.runtime.historian_export import export_parquet, read_run_metadata
from controller.runtime.historian_records import (
    CycleRecord,
    HistorianError,
    HistorianEvent,
    Measurement,
    RunInfo,
    cycle_record,
)
from controller.runtime.historian_run import LIBRARIES, model_version, run_info

ROOT = Path(__file__).resolve().parents[3]
Factory = Callable[..., Historian]


@pytest.fixture(params=["memory", "sqlite", "sqlite-batched"])
def make_historian(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Factory]:
    """Builds historians of one backend (SQLite also committing in batches of 3, as a
    fast-mode campaign case does in batches of 64); closes them all afterwards."""
    opened: list[Historian] = []

    def make(max_cycles: int = 100_000) -> Historian:
        path = None if request.param == "memory" else tmp_path / "history.db"
        every = 3 if request.param == "sqlite-batched" else 1
        h = open_historian(path, max_cycles=max_cycles, commit_every=every)
        opened.append(h)
        return h

    yield make
    for h in opened:
        h.close()


def _info(run_id: str) -> RunInfo:
    return RunInfo(
        run_id=run_id,
        started_utc="2025-01-01T00:00:00.000000+00:00",
        site="cstr-modbus",
        mode="shadow",
        software_version="pharmatwin 0.1.0",
        git_commit=None,
        config_hashes={"cstr-modbus.yaml": "ab" * 32},
        model="cstr",
        model_version="cd" * 32,
        python_version="CPython 3.11.9",
        library_versions={"casadi": "3.8.2", "numpy": "2.1.0"},
    )


def _cycle(run_id: str, i: int) -> CycleRecord:
    return CycleRecord(
        run_id=run_id,
        cycle=i,
        t=10.0 * i,
        utc=f"2025-01-01T00:00:{i:02d}.000000+00:00",
        state="RUNNING",
        measurements={
            "T_R_meas": Measurement(120.5 + i, "good", 10.0 * i - 0.1),
            "C_b_meas": Measurement(0.5, "uncertain", 10.0 * i - 0.2),
        },
        estimates={"T_R": 120.4 + i, "C_b": 0.51, "k0_ab": 1.2e12},
        estimate_std={"T_R": 0.1, "k0_ab": 3e10},
        predicted={"T_R": [120.4, 120.6, 120.9], "F": [18.0, 18.5]},
        decision={
            "inputs": {"F": 18.0, "Q_dot": -4500.0},
            "status": "success",
            "return_status": "Solve_Succeeded",
            "iterations": 12,
            "solve_time_s": 0.0127,
            "objective": 3.5,
        },
        setpoints={"F": 18.0, "Q_dot": -4000.0} if i % 2 else {},
        safety=[
            {
                "name": "Q_dot",
                "proposed": -4500.0,
                "applied": -4000.0,
                "reason": "clipped_to_move_limit",
                "detail": "moved at most 500 kW",
            }
        ],
        wrote=bool(i % 2),
        monitor={"cusum:Kw:low": 0.25 * i, "maintenance.Kw.time_to_threshold": 31.0 - i},
    )


# ---------------------------------------------------------------------- both backends
def test_start_run_and_runs_round_trip(make_historian: Factory) -> None:
    h = make_historian()
    h.start_run(_info("run-b"))
    h.start_run(_info("run-a"))
    assert h.runs() == [_info("run-b"), _info("run-a")]  # in start order
    with pytest.raises(HistorianError, match="already"):
        h.start_run(_info("run-a"))


def test_record_and_cycles_round_trip_exactly(make_historian: Factory) -> None:
    h = make_historian()
    h.start_run(_info("r1"))
    records = [_cycle("r1", i) for i in range(4)]
    for rec in records:
        h.record(rec)
    assert h.cycles() == records
    assert h.cycles(limit=2) == records[-2:]
    assert h.cycles(limit=0) == []
    assert isinstance(h.cycles()[0].measurements["T_R_meas"], Measurement)


def test_a_cycle_of_an_unknown_run_is_refused(make_historian: Factory) -> None:
    h = make_historian()
    with pytest.raises(HistorianError, match="not started"):
        h.record(_cycle("nobody", 0))


def test_retention_keeps_the_newest(make_historian: Factory) -> None:
    h = make_historian(max_cycles=5)
    h.start_run(_info("r1"))
    records = [_cycle("r1", i) for i in range(12)]
    for rec in records:
        h.record(rec)
    assert h.cycles() == records[-5:]
    assert h.runs() == [_info("r1")]


def test_filter_by_run(make_historian: Factory) -> None:
    h = make_historian()
    h.start_run(_info("a"))
    h.start_run(_info("b"))
    for i in range(6):
        h.record(_cycle("a" if i % 3 else "b", i))
    assert [c.cycle for c in h.cycles("a")] == [1, 2, 4, 5]
    assert [c.cycle for c in h.cycles("b")] == [0, 3]
    assert [c.cycle for c in h.cycles("a", limit=1)] == [5]
    assert h.cycles("unknown") == []


def test_records_from_another_thread(make_historian: Factory) -> None:
    h = make_historian()
    h.start_run(_info("r1"))
    worker = threading.Thread(target=h.record, args=(_cycle("r1", 0),))
    worker.start()
    worker.join()
    assert h.cycles() == [_cycle("r1", 0)]


def test_parquet_export_columns_and_metadata(make_historian: Factory, tmp_path: Path) -> None:
    h = make_historian()
    h.start_run(_info("a"))
    h.start_run(_info("b"))
    for i in range(4):
        h.record(_cycle("a" if i < 3 else "b", i))
    out = export_parquet(h, tmp_path / "out" / "a.parquet", run_id="a")
    table = pq.read_table(out)
    assert table.num_rows == 3
    for col in (
        "run_id",
        "cycle",
        "t",
        "utc",
        "state",
        "wrote",
        "meas.T_R_meas",
        "quality.C_b_meas",
        "source_time.T_R_meas",
        "est.k0_ab",
        "std.T_R",
        "pred.T_R",
        "mpc.Q_dot",
        "u.F",
        "safety.Q_dot",
        "solve.status",
        "solve.time_s",
        "solve.iterations",
        "solve.objective",
        "interventions",
    ):
        assert col in table.column_names, col
    rows = table.to_pylist()
    assert rows[1]["meas.T_R_meas"] == 121.5 and rows[1]["quality.C_b_meas"] == "uncertain"
    assert rows[1]["u.F"] == 18.0 and rows[0]["u.F"] is None  # nothing written in cycle 0
    assert rows[2]["pred.T_R"] == [120.4, 120.6, 120.9] and rows[2]["solve.iterations"] == 12
    assert json.loads(rows[0]["interventions"])[0]["reason"] == "clipped_to_move_limit"
    meta = table.schema.metadata
    assert json.loads(meta[b"pharmatwin.run"]) == dataclasses.asdict(_info("a"))
    assert read_run_metadata(out) == [_info("a")]

    everything = pq.read_table(export_parquet(h, tmp_path / "all.parquet"))
    assert everything.column("run_id").to_pylist() == ["a", "a", "a", "b"]
    assert read_run_metadata(tmp_path / "all.parquet") == [_info("a"), _info("b")]
    with pytest.raises(HistorianError, match="unknown run 'zzz' in the historian; allowed: "):
        export_parquet(h, tmp_path / "z.parquet", run_id="zzz")


def test_cycle_record_from_the_pipeline_objects(make_historian: Factory) -> None:
    snap = Snapshot(
        {"T_R_meas": TagValue(121.0, Quality.GOOD, 9.5, 10.0)},
        read_time=10.0,
    )
    estimate = Estimate(
        states={"T_R": 120.9},
        parameters={"k0_ab": 1.1e12, "rho": 0.93},
        state_std={"T_R": 0.2},
        parameter_std={"k0_ab": 2e10},
        innovation={},
        algebraic={},
    )
    decision = Decision(
        10.0,
        {"F": 18.0},
        SolveStatus.SUCCESS,
        "Solve_Succeeded",
        9,
        0.02,
        objective=1.5,
        predicted_states={"T_R": np.linspace(120.9, 122.0, 21)},
        predicted_inputs={"F": np.full(20, 18.0)},
    )
    outcome = SafetyOutcome(
        {"F": 17.5},
        held=False,
        interventions=(Intervention("F", 18.0, 17.5, Reason.CLIPPED_TO_MOVE_LIMIT, "Δu"),),
    )
    rec = cycle_record(
        "r1",
        7,
        t=10.0,
        state="RUNNING",
        snapshot=snap,
        estimate=estimate,
        decision=decision,
        outcome=outcome,
        setpoints=outcome.setpoints,
        wrote=True,
        predict_steps=3,
    )
    assert rec.measurements == {"T_R_meas": (121.0, "good", 9.5)}
    assert rec.estimates == {"T_R": 120.9, "k0_ab": 1.1e12}  # estimated parameters only
    assert len(rec.predicted["T_R"]) == 4 and rec.predicted["F"] == [18.0] * 3
    assert rec.decision["status"] == "success" and rec.safety[0]["applied"] == 17.5
    h = make_historian()
    h.start_run(_info("r1"))
    h.record(rec)
    assert h.cycles() == [rec]


# ---------------------------------------------------------------------- run record
def test_run_info_fills_versions_and_hashes() -> None:
    model = build_model(ROOT / "configs/plants/cstr.yaml")
    paths = [ROOT / "configs/sites/cstr-modbus.yaml", ROOT / "configs/plants/cstr.yaml"]
    info = run_info("cstr-modbus", "shadow", paths, model)
    assert set(info.config_hashes) == {"cstr-modbus.yaml", "cstr.yaml"}
    assert all(re.fullmatch(r"[0-9a-f]{64}", h) for h in info.config_hashes.values())
    assert set(info.library_versions) == set(LIBRARIES)
    assert info.library_versions["numpy"] == np.__version__
    assert info.git_commit is None or re.fullmatch(r"[0-9a-f]{40}", info.git_commit)
    assert info.software_version.startswith("pharmatwin") and info.python_version
    assert (info.model, info.model_version) == ("cstr", model_version(model))
    assert info.started_utc.endswith("+00:00") and info.run_id
    changed = type(model)(model.parameter_set.with_values({"rho": 0.95}))
    assert model_version(changed) != info.model_version
    assert model_version(type(model)(model.parameter_set)) == info.model_version


def test_run_info_names_an_unreadable_config(tmp_path: Path) -> None:
    model = build_model(ROOT / "configs/plants/cstr.yaml")
    with pytest.raises(HistorianError, match=r"missing\.yaml"):
        run_info("s", "shadow", [tmp_path / "missing.yaml"], model)


# ---------------------------------------------------------------------- SQLite specifics
def test_sqlite_survives_reopen(tmp_path: Path) -> None:
    path = tmp_path / "h.db"
    with SqliteHistorian(path) as h:
        h.start_run(_info("r1"))
        for i in range(6):
            h.record(_cycle("r1", i))
    db = sqlite3.connect(path)
    assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert "cycles_run_cycle" in {r[1] for r in db.execute("PRAGMA index_list(cycles)")}
    db.close()
    with SqliteHistorian(path, max_cycles=4) as h:  # reading deletes nothing; writing prunes
        assert h.runs() == [_info("r1")]
        assert h.cycles() == [_cycle("r1", i) for i in range(6)]
        h.record(_cycle("r1", 6))
        assert [c.cycle for c in h.cycles()] == [3, 4, 5, 6]


def test_sqlite_retention_holds_with_two_writers_of_one_file(tmp_path: Path) -> None:
    """Inserts commit alone while no id above max_cycles is due; another writer taking ids
    meanwhile must not leave more than max_cycles cycles behind."""
    path = tmp_path / "h.db"
    with SqliteHistorian(path, max_cycles=4) as a, SqliteHistorian(path, max_cycles=4) as b:
        a.start_run(_info("r1"))
        for i in range(3):
            a.record(_cycle("r1", i))  # b still expects id 1 next
        for i in range(3, 6):
            b.record(_cycle("r1", i))
            assert len(b.cycles()) <= 4
        assert [c.cycle for c in a.cycles()] == [2, 3, 4, 5]
        a.record(_cycle("r1", 6))
        assert [c.cycle for c in b.cycles()] == [3, 4, 5, 6]


def test_open_historian_picks_the_backend(tmp_path: Path) -> None:
    assert isinstance(open_historian(None), MemoryHistorian)
    h = open_historian(tmp_path / "x.db", max_cycles=3)
    assert isinstance(h, SqliteHistorian) and h.max_cycles == 3
    h.close()
    with pytest.raises(HistorianError, match="max_cycles"):
        open_historian(None, max_cycles=0)


# ---------------------------------------------------------------------- CLI
def test_cli_history_export(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    db = tmp_path / "h.db"
    with SqliteHistorian(db) as h:
        h.start_run(_info("a"))
        h.start_run(_info("b"))
        for i in range(5):
            h.record(_cycle("a" if i < 3 else "b", i))
    out = tmp_path / "b.parquet"
    assert cli_main(["history", "export", str(db), "--parquet", str(out), "--run", "b"]) == 0
    assert "wrote 2 cycles of 1 run(s) (b)" in capsys.readouterr().out
    assert pq.read_table(out).column("cycle").to_pylist() == [3, 4]
    assert cli_main(["history", "export", str(db), "--parquet", str(tmp_path / "all.pq")]) == 0
    assert pq.read_metadata(tmp_path / "all.pq").num_rows == 5
    with SqliteHistorian(db, max_cycles=2) as h:  # exporting never pruned the file
        assert len(h.cycles()) == 5
    assert cli_main(["history", "export", str(db), "--parquet", str(out), "--run", "zz"]) == 2
    assert cli_main(["history", "export", str(tmp_path / "none.db"), "--parquet", "x"]) == 2
    assert not (tmp_path / "none.db").exists()


def test_cli_history_export_never_changes_the_file_it_reads(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # it opened any file as a historian: created its tables in an audit trail (or an empty
    # YAML file), switched it to WAL, and reported "wrote 0 cycles" with exit 0
    audit = _audit_db(tmp_path)
    empty = tmp_path / "empty.yaml"
    empty.write_bytes(b"")
    garbage = tmp_path / "garbage.db"
    garbage.write_bytes(b"\xff\xfe not sqlite at all")
    for db, why in (
        (audit, "no cycles, events, runs table; tables found: audit"),
        (empty, "tables found: none"),
        (garbage, "file is not a database"),
    ):
        before = db.read_bytes()
        out = tmp_path / f"{db.stem}.parquet"
        assert cli_main(["history", "export", str(db), "--parquet", str(out)]) == 2
        assert why in " ".join(capsys.readouterr().out.split())
        assert db.read_bytes() == before and not out.exists()
    with sqlite3.connect(audit) as conn:
        tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master")}
    assert "cycles" not in tables
    db = tmp_path / "h.db"  # a historian with no run: nothing to export is an error
    SqliteHistorian(db).close()
    assert cli_main(["history", "export", str(db), "--parquet", str(tmp_path / "x.pq")]) == 2
    assert "holds no run: nothing to export" in capsys.readouterr().out


def test_a_historian_written_before_monitor_figures_reads_as_it_is(tmp_path: Path) -> None:
    # a file whose cycles table predates the monitor column: read-only, its cycles read with
    # no monitor figures and the file stays as it was (the writer adds the column)
    db = tmp_path / "old.db"
    with SqliteHistorian(db) as h:
        h.start_run(_info("a"))
        for i in range(3):
            h.record(_cycle("a", i))
    with sqlite3.connect(db) as conn:
        conn.execute("ALTER TABLE cycles DROP COLUMN monitor")
    before = db.read_bytes()
    with SqliteHistorian(db, read_only=True) as h:
        cycles = h.cycles("a")
    assert [c.cycle for c in cycles] == [0, 1, 2] and all(c.monitor == {} for c in cycles)
    assert db.read_bytes() == before
    with SqliteHistorian(db) as h:  # the writer upgrades it
        assert [c.monitor for c in h.cycles("a")] == [{}, {}, {}]
    with sqlite3.connect(db) as conn:
        assert "monitor" in {r[1] for r in conn.execute("PRAGMA table_info(cycles)")}


def _audit_db(tmp_path: Path) -> Path:
    trail = AuditTrail(tmp_path / "audit.db", config_hash="abc", actor="alice")
    trail.record(
        "tag.write.request",
        "feed_rate_sp",
        reason="step test, operator",
        old_value=0.0,
        new_value=0.05,
        detail={"site": "bio"},
    )
    trail.record("mode.change", "supervisor", reason="start", new_value="SHADOW")
    trail.close()
    return tmp_path / "audit.db"


def _records(db: Path) -> list[dict[str, object]]:
    trail = AuditTrail(db)
    try:
        return [dataclasses.asdict(r) for r in trail.records()]
    finally:
        trail.close()


def test_cli_audit_export_json(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    db = _audit_db(tmp_path)
    assert cli_main(["audit", "export", str(db), "--format", "json"]) == 0
    exported = json.loads(capsys.readouterr().out)
    assert exported == _records(db)
    assert exported[0]["actor"] == "alice" and exported[1]["old_value"] is None
    out = tmp_path / "exports" / "audit.json"
    assert cli_main(["audit", "export", str(db), "--format", "json", "--out", str(out)]) == 0
    assert "wrote 2 audit records" in capsys.readouterr().out
    assert json.loads(out.read_text()) == exported


def test_cli_audit_export_csv(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    db = _audit_db(tmp_path)
    assert cli_main(["audit", "export", str(db), "--format", "csv"]) == 0
    rows = list(csv.DictReader(io.StringIO(capsys.readouterr().out)))
    expected = [{k: "" if v is None else str(v) for k, v in r.items()} for r in _records(db)]
    assert rows == expected
    assert rows[0]["reason"] == "step test, operator" and len(rows[0]["hash"]) == 64
    out = tmp_path / "audit.csv"
    assert cli_main(["audit", "export", str(db), "--format", "csv", "--out", str(out)]) == 0
    with out.open(newline="") as fh:
        assert list(csv.DictReader(fh)) == expected


def test_cli_audit_export_table_stays_the_default(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    db = _audit_db(tmp_path)
    assert cli_main(["audit", "export", str(db)]) == 0
    out = capsys.readouterr().out
    assert "audit trail" in out and "feed_rate_sp" in out and "alice" in out
    assert cli_main(["audit", "export", str(tmp_path / "none.db"), "--format", "csv"]) == 2
    assert not (tmp_path / "none.db").exists()


def test_cli_audit_export_table_prints_brackets_as_written(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # reasons are free text: "[admin]" and "[b]...[/b]" were eaten as rich markup (the
    # printed record differed from the stored one) and "[/valve]" ended in a traceback
    trail = AuditTrail(tmp_path / "audit.db", actor="op [night]")
    trail.record("setpoint.write", "t1", reason="operator [admin] set [b]bold[/b] ok")
    trail.record("setpoint.write", "t2", reason="closing [/valve] early", new_value="[x]")
    trail.close()
    assert cli_main(["audit", "export", str(tmp_path / "audit.db")]) == 0
    out = " ".join(capsys.readouterr().out.split())
    for text in ("[admin]", "[b]bold[/b]", "[/valve]", "op [night]", "- -> [x]"):
        assert text in out


def test_events_round_trip_by_run_and_kind(make_historian: Factory) -> None:
    h = make_historian(max_cycles=2)
    h.start_run(_info("r1"))
    h.start_run(_info("r2"))
    raised = HistorianEvent(
        "r1", 3600.0, "drift.alarm", "cusum:Kw:low", "drift alarm: Kw LOW", {"statistic": 9.1}
    )
    h.record_event(raised)
    h.record_event(HistorianEvent("r2", 7.0, "drift.clear", "ewma:T_R_meas:high", "cleared"))
    for i in range(5):  # cycles are pruned; events are not
        h.record(_cycle("r1", i))
    events = h.events("r1")
    assert [(e.kind, e.key, e.t, e.detail) for e in events] == [
        ("drift.alarm", "cusum:Kw:low", 3600.0, {"statistic": 9.1})
    ]
    assert events[0].utc  # stamped when stored
    assert [e.run_id for e in h.events(kind="drift.clear")] == ["r2"]
    assert len(h.events()) == 2
    with pytest.raises(HistorianError, match="not started"):
        h.record_event(HistorianEvent("nope", 0.0, "drift.alarm", "k", "m"))


def test_monitor_figures_round_trip(make_historian: Factory) -> None:
    h = make_historian()
    h.start_run(_info("r1"))
    h.record(_cycle("r1", 4))
    assert h.cycles("r1")[0].monitor == {
        "cusum:Kw:low": 1.0,
        "maintenance.Kw.time_to_threshold": 27.0,
    }


def test_sqlite_file_without_monitor_column_is_upgraded(tmp_path: Path) -> None:
    path = tmp_path / "old.db"
    db = sqlite3.connect(path)
    db.executescript(
        """CREATE TABLE runs (seq INTEGER PRIMARY KEY AUTOINCREMENT, run_id TEXT NOT NULL UNIQUE,
        info TEXT NOT NULL);
        CREATE TABLE cycles (id INTEGER PRIMARY KEY AUTOINCREMENT, run_id TEXT NOT NULL,
        cycle INTEGER NOT NULL, t REAL, utc TEXT NOT NULL, state TEXT NOT NULL,
        wrote INTEGER NOT NULL, measurements TEXT NOT NULL, estimates TEXT NOT NULL,
        estimate_std TEXT NOT NULL, predicted TEXT NOT NULL, decision TEXT NOT NULL,
        setpoints TEXT NOT NULL, safety TEXT NOT NULL);"""
    )
    db.close()
    with SqliteHistorian(path) as h:
        h.start_run(_info("r1"))
        h.record(_cycle("r1", 1))
        assert h.cycles("r1")[0].monitor["cusum:Kw:low"] == 0.25


def test_a_run_started_by_another_writer_of_the_file_is_found(tmp_path: Path) -> None:
    """The historian remembers the runs it has stored or seen, and asks the file about any
    other: a run another writer started is found, a run nobody started is still refused."""
    first, second = SqliteHistorian(tmp_path / "h.db"), SqliteHistorian(tmp_path / "h.db")
    try:
        with pytest.raises(HistorianError, match="not started"):
            second.record(_cycle("r1", 0))
        first.start_run(_info("r1"))
        second.record(_cycle("r1", 0))
        second.record(_cycle("r1", 1))
        with pytest.raises(HistorianError, match="not started"):
            second.record(_cycle("r2", 0))
        assert [c.cycle for c in first.cycles("r1")] == [0, 1]
    finally:
        first.close()
        second.close()


@pytest.mark.parametrize(("synchronous", "level"), [("NORMAL", 1), ("OFF", 0)])
def test_sqlite_historian_synchronous(tmp_path: Path, synchronous: str, level: int) -> None:
    path = tmp_path / "h.db"
    with SqliteHistorian(path, synchronous=synchronous) as hist:
        assert hist._db.execute("PRAGMA synchronous").fetchone()[0] == level
        assert hist._db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        hist.start_run(_info("r1"))
        hist.record(_cycle("r1", 1))
    with SqliteHistorian(path) as again:  # closed: another connection reads it all
        assert [c.cycle for c in again.cycles("r1")] == [1]


def test_sqlite_historian_refuses_an_unknown_synchronous(tmp_path: Path) -> None:
    with pytest.raises(
        HistorianError, match=r"synchronous 'FAST' is not allowed; allowed: NORMAL, OFF"
    ):
        SqliteHistorian(tmp_path / "h.db", synchronous="FAST")
    assert not (tmp_path / "h.db").exists()


def test_a_schema_that_fails_halfway_is_rolled_back_and_holds_no_lock(tmp_path: Path) -> None:
    """The schema is one transaction: a file it cannot be made in (here a ``cycles`` table of
    another program) is refused with its reason, nothing half-made stays, and the refused
    file is not left locked for its other users."""
    path = tmp_path / "other.db"
    with sqlite3.connect(path) as db:
        db.execute("CREATE TABLE cycles (x)")
    with pytest.raises(HistorianError, match=r"cannot open the historian .*other\.db.*run_id"):
        SqliteHistorian(path)
    other = sqlite3.connect(path, timeout=0, isolation_level=None)
    other.execute("BEGIN IMMEDIATE")  # would be "database is locked" with the schema's open
    tables = {r[0] for r in other.execute("SELECT name FROM sqlite_master WHERE type='table'")}
    other.execute("ROLLBACK")
    other.close()
    assert tables == {"cycles"}  # the runs table made before the failure was rolled back


# ---------------------------------------------------------------------- batched commits
def _committed(path: Path) -> int:
    """The cycles another connection sees (committed ones)."""
    with contextlib.closing(sqlite3.connect(f"file:{path}?mode=ro", uri=True)) as db:
        return int(db.execute("SELECT count(*) FROM cycles").fetchone()[0])


def _lost(cycles: int, records: int) -> str:
    return (
        f"nothing of the open batch is stored: {cycles} cycle(s) and {records} event(s)/run(s) "
        "written since its last commit are lost"
    )


def test_a_batched_historian_commits_every_n_cycles_and_at_close(tmp_path: Path) -> None:
    path = tmp_path / "h.db"
    h = SqliteHistorian(path, synchronous="OFF", commit_every=3)
    h.start_run(_info("r1"))
    seen = []
    for i in range(7):
        h.record(_cycle("r1", i))
        seen.append(_committed(path))
    assert seen == [0, 0, 3, 3, 3, 6, 6]
    assert len(h.cycles()) == 7  # its own queries see the open batch
    other = sqlite3.connect(path, timeout=0, isolation_level=None)
    with pytest.raises(sqlite3.OperationalError, match="locked"):
        other.execute("BEGIN IMMEDIATE")  # the open batch holds the write lock (documented)
    h.flush()
    assert _committed(path) == 7
    other.execute("BEGIN IMMEDIATE")  # committed: the lock is free
    other.execute("ROLLBACK")
    h.record(_cycle("r1", 7))
    h.close()
    assert _committed(path) == 8  # the last batch is committed at close
    other.close()


def test_a_batch_that_sqlite_rolls_back_says_how_many_cycles_it_lost(tmp_path: Path) -> None:
    """A full disk makes SQLite give up the whole transaction: the uncommitted cycles before
    the failing one are gone, and the error must say so (not only "cannot store a cycle")."""
    path = tmp_path / "h.db"
    h = SqliteHistorian(path, synchronous="OFF", commit_every=1000)
    h.start_run(_info("r1"))
    pages = h._db.execute("PRAGMA page_count").fetchone()[0]
    h._db.execute(f"PRAGMA max_page_count={pages + 3}")  # a disk that fills after a few
    stored = 0
    with pytest.raises(HistorianError) as err:
        for i in range(200):
            h.record(_cycle("r1", i))
            stored += 1
    assert stored > 0
    assert "cannot store a cycle: database or disk is full" in str(err.value)
    assert _lost(stored, 1) in str(err.value)  # the run's row was in the batch too
    assert h.cycles() == [] and h.runs() == []  # what the message says: nothing is stored
    with pytest.raises(HistorianError, match="which was not started"):
        h.record(_cycle("r1", 0))  # the lost run is not taken as stored
    h.close()  # nothing left to commit: no second error


def _full_after_cycles(path: Path, n: int) -> SqliteHistorian:
    """A batched historian holding ``n`` uncommitted cycles of run r1 (the run committed),
    on a file that cannot grow any more."""
    h = SqliteHistorian(path, synchronous="OFF", commit_every=1000)
    h.start_run(_info("r1"))
    h.flush()
    for i in range(n):
        h.record(_cycle("r1", i))
    pages = h._db.execute("PRAGMA page_count").fetchone()[0]
    h._db.execute(f"PRAGMA max_page_count={pages}")
    return h


def test_an_event_that_loses_the_batch_counts_its_cycles(tmp_path: Path) -> None:
    """Events go in the open batch: one that makes SQLite give up the transaction takes the
    batch's cycles with it, and its error must count them."""
    h = _full_after_cycles(tmp_path / "h.db", 4)
    big = HistorianEvent("r1", 1.0, "drift.alarm", "k", "x" * 200_000, {})
    with pytest.raises(HistorianError) as err:
        h.record_event(big)
    assert "cannot store an event" in str(err.value) and _lost(4, 0) in str(err.value)
    assert h.cycles() == [] and h.runs() == [_info("r1")]
    h.close()
    assert _committed(tmp_path / "h.db") == 0


def test_a_failed_prune_loses_the_batch_not_the_limit(tmp_path: Path) -> None:
    """Insert and prune are one cycle's statements: when the prune fails the cycle must not
    stay (it would exceed max_cycles while the error says it was not stored)."""
    path = tmp_path / "h.db"
    h = SqliteHistorian(path, max_cycles=2, commit_every=10)
    h._db.execute(
        "CREATE TRIGGER no_prune BEFORE DELETE ON cycles BEGIN SELECT RAISE(ABORT, 'prune "
        "refused'); END"
    )
    h.start_run(_info("r1"))
    h.record(_cycle("r1", 0))
    h.record(_cycle("r1", 1))
    with pytest.raises(HistorianError, match="cannot store a cycle: prune refused") as err:
        h.record(_cycle("r1", 2))
    assert _lost(2, 1) in str(err.value)
    h.close()
    assert _committed(path) == 0  # not 3 cycles with max_cycles 2


def test_a_batch_sqlite_rolled_back_on_its_own_is_reported(tmp_path: Path) -> None:
    h = SqliteHistorian(tmp_path / "h.db", commit_every=10)
    h.start_run(_info("r1"))
    h.record(_cycle("r1", 0))
    h.record(_cycle("r1", 1))
    h._db.execute("ROLLBACK")  # as SQLite does on some errors, outside the batch's own calls
    with pytest.raises(HistorianError, match="rolled back by SQLite") as err:
        h.record(_cycle("r1", 2))
    assert _lost(2, 1) in str(err.value)
    h.close()


def test_a_last_batch_that_cannot_commit_fails_the_close_and_closes(tmp_path: Path) -> None:
    """A deferred constraint fails only at COMMIT: close must say the batch is lost (and
    still close the file)."""
    path = tmp_path / "h.db"
    h = SqliteHistorian(path, commit_every=10)
    h._db.execute("PRAGMA foreign_keys=ON")
    h._db.execute("CREATE TABLE parent (id INTEGER PRIMARY KEY)")
    h._db.execute(
        "CREATE TABLE child (p INTEGER REFERENCES parent(id) DEFERRABLE INITIALLY DEFERRED)"
    )
    h.start_run(_info("r1"))
    h.record(_cycle("r1", 0))
    h.record(_cycle("r1", 1))
    h._db.execute("INSERT INTO child VALUES (7)")  # no parent 7: refused at COMMIT
    with pytest.raises(HistorianError, match="cannot commit the open batch") as err:
        h.close()
    assert _lost(2, 1) in str(err.value)
    h.close()  # closed all the same: a second close does nothing
    with pytest.raises(HistorianError, match=r"h\.db is closed"):
        h.record(_cycle("r1", 2))
    assert _committed(path) == 0


@pytest.mark.parametrize("every", [1, 3])
def test_closing_twice_does_nothing_and_a_closed_historian_refuses_writes(
    tmp_path: Path, every: int
) -> None:
    h = SqliteHistorian(tmp_path / "h.db", commit_every=every)
    h.start_run(_info("r1"))
    h.record(_cycle("r1", 0))
    h.close()
    h.close()
    writes: list[Callable[[], object]] = [
        lambda: h.record(_cycle("r1", 1)),
        lambda: h.record_event(HistorianEvent("r1", 1.0, "k", "k", "m", {})),
        h.flush,
    ]
    for write in writes:
        with pytest.raises(HistorianError, match="is closed"):
            write()
    assert _committed(tmp_path / "h.db") == 1


@pytest.mark.parametrize("bad", [0, -2, 1.5, True, "8"])
def test_a_batched_historian_refuses_a_bad_commit_every(tmp_path: Path, bad: object) -> None:
    with pytest.raises(HistorianError, match=r"commit_every .* is not allowed; allowed: a whole"):
        SqliteHistorian(tmp_path / "h.db", commit_every=bad)  # type: ignore[arg-type]
    with pytest.raises(HistorianError, match=r"in-memory historian: commit_every"):
        open_historian(None, commit_every=bad)  # type: ignore[arg-type]
