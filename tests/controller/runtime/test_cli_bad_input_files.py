"""The audit trail and the historian refuse each other's file (and any other database),
leaving it untouched; a run refuses one path for both."""

from __future__ import annotations

import sqlite3
from pathlib import Path
from types import SimpleNamespace
from typing import Any, cast

import pytest

from controller.runtime.audit import AuditTrail
from controller.runtime.audit_chain import AuditError
from controller.runtime.historian import SqliteHistorian
from controller.runtime.historian_records import HistorianError
from controller.runtime.supervisor import Mode
from controller.runtime.wiring import RunOptions, check_options


def _tables(path: Path) -> set[str]:
    db = sqlite3.connect(path)
    try:
        return {r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type='table'")}
    finally:
        db.close()


def test_audit_trail_refuses_a_historian_file(tmp_path: Path) -> None:
    path = tmp_path / "history.db"
    SqliteHistorian(path).close()
    before = _tables(path)
    with pytest.raises(AuditError) as info:
        AuditTrail(path)
    text = str(info.value)
    assert str(path) in text and "not an audit trail" in text and "cycles" in text, text
    assert _tables(path) == before  # no audit table added
    assert not path.with_name(path.name + ".anchor").exists()
    assert not list(tmp_path.glob("*.anchor"))


def test_historian_refuses_an_audit_trail_file(tmp_path: Path) -> None:
    path = tmp_path / "audit.db"
    trail = AuditTrail(path)
    trail.record("config.load", "site", reason="test")
    trail.close()
    with pytest.raises(HistorianError) as info:
        SqliteHistorian(path)
    text = str(info.value)
    assert str(path) in text and "not a historian" in text and "audit" in text, text
    assert _tables(path) == {"audit"}


def test_both_open_their_own_files_again(tmp_path: Path) -> None:
    SqliteHistorian(tmp_path / "h.db").close()
    SqliteHistorian(tmp_path / "h.db").close()
    AuditTrail(tmp_path / "a.db").close()
    AuditTrail(tmp_path / "a.db").close()


def test_run_refuses_one_file_for_audit_and_historian(tmp_path: Path) -> None:
    site = cast(Any, SimpleNamespace(path=tmp_path / "site.yaml", runtime=SimpleNamespace()))
    same = tmp_path / "one.db"
    opts = RunOptions(Mode.SHADOW, audit_path=same, historian_path=tmp_path / "." / "one.db")
    problems = check_options(site, opts)
    assert [p.location for p in problems] == ["--audit/--historian"], problems
    assert str(same) in str(problems[0])
    ok = RunOptions(Mode.SHADOW, audit_path=same, historian_path=tmp_path / "other.db")
    assert check_options(site, ok) == []
