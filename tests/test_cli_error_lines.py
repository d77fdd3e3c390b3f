"""A command's error keeps each of its lines whole when its output is not a terminal.

Rich wraps what it prints at the console's width, 80 columns when the output goes to a pipe,
a file or a log: an error naming a long path was cut inside the path (``...-eighty-c`` /
``olumns/history.db``), which a person then copies from the log as two broken halves. Both
command lines print their errors as they are (``soft_wrap``); a terminal still folds them
for the eye, the text is one line.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from controller.runtime.cli import main as pharmatwin
from hil.cli import main as pharmatwin_hil

LONG = "a-folder-name-long-enough-that-the-error-naming-it-is-wider-than-eighty-columns"


@pytest.fixture(autouse=True)
def a_pipes_width(monkeypatch: pytest.MonkeyPatch) -> None:
    """The width rich gives a pipe (80 columns), whatever terminal runs the tests."""
    monkeypatch.setenv("COLUMNS", "80")


def _printed(capsys: pytest.CaptureFixture[str]) -> list[str]:
    out, err = capsys.readouterr()
    assert "Traceback" not in out + err
    return [line for line in (out + err).splitlines() if line.strip()]


def test_pharmatwin_prints_an_error_naming_a_long_path_on_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    db = tmp_path / LONG / "history.db"
    assert pharmatwin(["history", "export", str(db), "--parquet", str(tmp_path / "x.parquet")]) == 2
    lines = _printed(capsys)
    assert len(lines) == 1 and str(db) in lines[0], lines


def test_pharmatwin_hil_prints_an_error_naming_a_long_path_whole(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    campaign = tmp_path / LONG / "campaign.yaml"
    assert pharmatwin_hil(["campaign", "run", str(campaign)]) == 2
    lines = _printed(capsys)
    assert any(str(campaign) in line for line in lines), lines
    assert all(len(line) <= 80 or str(campaign) in line for line in lines), lines
