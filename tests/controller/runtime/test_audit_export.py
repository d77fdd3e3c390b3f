"""``pharmatwin audit export``: --since, --action and --last select records; the table reads
at 100 columns without cutting a word; bad selections are one-line errors (exit 2)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from controller.runtime.audit import AuditTrail
from controller.runtime.audit_verify import read_records
from controller.runtime.cli import main as cli_main

LONG_REASON = (
    "operator raised the shelf temperature after the pressure rise test showed the end of "
    "primary drying was near, following SOP-LYO-014 section 6.2"
)


@pytest.fixture
def db(tmp_path: Path) -> Path:
    path = tmp_path / "audit.db"
    trail = AuditTrail(path, config_hash="abc", actor="pharmatwin-edge")
    trail.record("run.start", "cstr", reason="pharmatwin run --mode shadow", new_value="r1")
    for k in range(4):
        trail.record(
            "setpoint.write",
            "feed_rate_sp",
            reason=f"MPC decision {k}",
            old_value=0.1 * k,
            new_value=0.1 * (k + 1),
        )
    trail.record("mode.change", "supervisor", reason="PLC granted", old_value="INIT",
                 new_value="RUNNING")  # fmt: skip
    trail.record(
        "tag.write", "shelf_temp_sp", reason=LONG_REASON, old_value=-40, new_value=-25,
        actor="j.doe.qa-lead",
    )  # fmt: skip
    trail.close()
    return path


def _json(db: Path, capsys: pytest.CaptureFixture[str], *argv: str) -> list[dict[str, object]]:
    assert cli_main(["audit", "export", str(db), "--format", "json", *argv]) == 0
    return list(json.loads(capsys.readouterr().out))


def test_every_record_without_a_selection(db: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert [r["id"] for r in _json(db, capsys)] == [1, 2, 3, 4, 5, 6, 7]


def test_action_last_and_since_select(db: Path, capsys: pytest.CaptureFixture[str]) -> None:
    writes = _json(db, capsys, "--action", "setpoint.write")
    assert [r["id"] for r in writes] == [2, 3, 4, 5]
    assert [r["id"] for r in _json(db, capsys, "--action", "setpoint.write", "--last", "2")] == [
        4,
        5,
    ]
    both = _json(db, capsys, "--action", "mode.*", "--action", "run.start")
    assert [r["action"] for r in both] == ["run.start", "mode.change"]
    since = read_records(db)[4].ts_utc  # the 5th record's own time: it and later ones
    assert [r["id"] for r in _json(db, capsys, "--since", since)] == [5, 6, 7]
    assert _json(db, capsys, "--since", "2999-01-01") == []


def test_the_table_reads_at_100_columns(db: Path, tmp_path: Path) -> None:
    out = tmp_path / "audit.txt"
    assert cli_main(["audit", "export", str(db), "--out", str(out)]) == 0
    text = out.read_text()
    lines = text.splitlines()
    assert max(len(line) for line in lines) <= 100, text
    assert "…" not in text  # wrapped, never cut
    flat = " ".join(text.split())
    for word in LONG_REASON.split():
        assert word in flat
    assert "-40 -> -25" in flat and "j.doe.qa-lead" in flat and "shelf_temp_sp" in flat
    assert "audit.db: 7 records" in flat  # the title (it wraps with a long temporary path)


def test_the_table_into_a_pipe_is_laid_out_as_into_a_file(
    db: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Into a pipe or a log rich laid the table out for 80 columns: 8 for "old -> new",
    which split REQUESTING and long numbers in two. It is now the written table's layout."""
    out = tmp_path / "audit.txt"
    assert cli_main(["audit", "export", str(db), "--out", str(out)]) == 0
    capsys.readouterr()
    assert cli_main(["audit", "export", str(db)]) == 0
    assert capsys.readouterr().out == out.read_text()


def test_the_table_title_names_the_selection(db: Path, tmp_path: Path) -> None:
    out = tmp_path / "audit.txt"
    argv = ["audit", "export", str(db), "--out", str(out), "--action", "mode.*", "--last", "1"]
    assert cli_main(argv) == 0
    text = " ".join(out.read_text().split())
    assert "1 record (action mode.*, last 1)" in text
    assert "PLC granted" in text and "MPC decision" not in text


@pytest.mark.parametrize(
    ("argv", "words"),
    [
        (["--since", "yesterday"], "command line: --since: not a time; allowed: a UTC date"),
        (["--last", "0"], "command line: --last: must be 1 or more (got 0)"),
    ],
)
def test_bad_selections_are_errors(
    db: Path, capsys: pytest.CaptureFixture[str], argv: list[str], words: str
) -> None:
    assert cli_main(["audit", "export", str(db), *argv]) == 2
    out = " ".join(capsys.readouterr().out.split())
    assert words in out and "Traceback" not in out
