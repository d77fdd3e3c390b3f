"""``pharmatwin-hil simulate``: bad arguments are refused before simulating (exit 2, one line).

And an output folder that cannot be written ends in one clear line, never a traceback.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from hil.cli import main as hil_main
from hil.reports import OutputError, write_parquet
from hil.simulate import run_scenario

ROOT = Path(__file__).resolve().parents[2]
#: The smallest scenario the CLI tests of test_simulate.py use (3 samples, well under a second).
SCENARIO = ROOT / "configs" / "scenarios" / "lyophilizer-nominal-recipe.yaml"


def simulate(*extra: str) -> int:
    return hil_main(["simulate", str(SCENARIO), "--quiet", "--no-plot", *extra])


def error_lines(out: str) -> list[str]:
    return [line for line in out.splitlines() if line.startswith("error:")]


@pytest.mark.parametrize("steps", ["0", "-2"])
def test_max_steps_below_one_is_refused(
    steps: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out_dir = tmp_path / "out"
    assert simulate("--max-steps", steps, "--out", str(out_dir)) == 2
    out = capsys.readouterr().out
    assert error_lines(out) == [
        f"error: command line: --max-steps: must be 1 or more (got {steps})"
    ]
    assert "KPIs" not in out and "Traceback" not in out
    assert not out_dir.exists()  # nothing simulated, nothing written


def test_max_steps_one_still_runs(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert simulate("--max-steps", "1", "--out", str(tmp_path)) == 0
    assert "KPIs: lyophilizer-nominal-recipe" in capsys.readouterr().out
    assert (tmp_path / "kpis.json").is_file()


def test_out_that_is_a_file_is_refused_before_simulating(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    afile = tmp_path / "afile"
    afile.write_text("keep me\n")
    assert simulate("--max-steps", "3", "--out", str(afile)) == 2
    out = capsys.readouterr().out
    lines = error_lines(out)
    assert len(lines) == 1, out
    assert lines[0].startswith("error: command line: --out: must be a directory or not exist yet")
    assert str(afile) in lines[0] and "a file" in lines[0]
    assert "KPIs" not in out and "Traceback" not in out
    assert afile.read_text() == "keep me\n"


def test_out_under_a_file_is_refused_before_simulating(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    afile = tmp_path / "afile"
    afile.write_text("keep me\n")
    target = afile / "sub" / "run"
    assert simulate("--max-steps", "3", "--out", str(target)) == 2
    out = capsys.readouterr().out
    lines = error_lines(out)
    assert len(lines) == 1, out
    assert lines[0].startswith("error: command line: --out: must be a directory or not exist yet")
    assert str(target) in lines[0] and f"{afile} is a file" in lines[0]
    assert "KPIs" not in out and "Traceback" not in out


def test_an_output_file_that_cannot_be_written_is_one_clear_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The folder is fine but kpis.json is in the way as a directory: found only on writing."""
    (tmp_path / "kpis.json").mkdir()
    assert simulate("--max-steps", "3", "--out", str(tmp_path)) == 2
    out = capsys.readouterr().out
    lines = error_lines(out)
    assert len(lines) == 1, out
    assert lines[0].startswith(f"error: cannot write {tmp_path / 'kpis.json'}: ")
    assert "Traceback" not in out


def test_default_out_that_is_a_file_is_one_clear_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """Without --out the folder is runs/<scenario>; a file there is named, no traceback."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "runs").mkdir()
    (tmp_path / "runs" / "lyophilizer-nominal-recipe").write_text("keep me\n")
    assert simulate("--max-steps", "3") == 2
    out = capsys.readouterr().out
    lines = error_lines(out)
    assert len(lines) == 1, out
    assert "--out" in lines[0] and "runs/lyophilizer-nominal-recipe" in lines[0]
    assert "must be a directory or not exist yet" in lines[0]
    assert "Traceback" not in out


def test_a_folder_that_cannot_be_made_is_an_output_error(tmp_path: Path) -> None:
    """The writers themselves (used without the CLI's check): a parent that is a file."""
    run = asyncio.run(run_scenario(SCENARIO, max_steps=1))
    afile = tmp_path / "afile"
    afile.write_text("keep me\n")
    target = afile / "sub" / "trajectory.parquet"
    with pytest.raises(OutputError, match=r"cannot write .*: its folder .* cannot be made"):
        write_parquet(run, target)
    assert afile.read_text() == "keep me\n"
