"""A directory given where ``pharmatwin forecast`` or ``pharmatwin history export`` reads or
writes a file is named as a directory, with what is expected (a file), in one line and exit 2;
never reported as "not found". Before: ``--historian DIR`` said "historian file not found",
``history export DIR`` "no historian database at DIR (no such file)", a directory named like
the default historian "no historian here", and ``--plan DIR`` "cannot read file"."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import yaml

from controller.runtime.cli import main
from controller.runtime.historian import SqliteHistorian
from controller.runtime.historian_records import CycleRecord, Measurement
from controller.runtime.historian_run import run_info
from controller.runtime.site import load_site

ROOT = Path(__file__).resolve().parents[3]
LYO = ROOT / "configs" / "sites" / "lyophilizer-modbus.yaml"
pytestmark = pytest.mark.timeout(120)


def _historian(path: Path) -> Path:
    """A lyophilizer historian of one run with one estimated cycle (a forecast can start)."""
    site = load_site(LYO)
    meas = {
        "shelf_temp_pv": Measurement(-20.0, "good", 3600.0),
        "chamber_pressure_pv": Measurement(0.15, "good", 3600.0),
        "product_temp_bottom": Measurement(-30.0, "good", 3600.0),
    }
    with SqliteHistorian(path) as hist:
        hist.start_run(run_info(site.name, "shadow", [site.path], site.model, run_id="run-1"))
        hist.record(
            CycleRecord(
                "run-1",
                0,
                3600.0,
                "2026-01-01T00:00:00+00:00",
                "SHADOW",
                estimates={"Lck": 0.05, "KC": 2.6e-4, "R0": 1.45},
                measurements=meas,
            )
        )
    return path


def _site_whose_local_recipe_is_a_directory(tmp_path: Path) -> Path:
    """A copy of the lyophilizer site whose ``forecast.local_recipe`` names a directory."""
    configs = tmp_path / "configs"
    shutil.copytree(LYO.parent.parent, configs, ignore=shutil.ignore_patterns("*.db"))
    site_file = configs / "sites" / LYO.name
    recipe = site_file.parent / yaml.safe_load(site_file.read_text())["forecast"]["local_recipe"]
    recipe.unlink()
    recipe.mkdir()
    return site_file


def _run(argv: list[str], capsys: pytest.CaptureFixture[str]) -> str:
    assert main(argv) == 2, argv
    out, err = capsys.readouterr()
    text = " ".join((out + err).split())  # rich may wrap a long line at the console width
    assert "Traceback" not in out + err
    assert "not found" not in text and "no such file" not in text, text
    return text


def test_forecast_historian_that_is_a_directory(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    folder = tmp_path / "history"
    folder.mkdir()
    argv = ["forecast", str(LYO), "--historian", str(folder), "--out", str(tmp_path / "fc")]
    text = _run(argv, capsys)
    assert f"{folder}: is a directory, not a file" in text
    assert "allowed: the historian database file of a run" in text
    assert not (tmp_path / "fc" / "forecast.json").exists()


def test_forecast_default_historian_that_is_a_directory(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "pharmatwin-history.db").mkdir()
    text = _run(["forecast", str(LYO), "--out", str(tmp_path / "fc")], capsys)
    assert "pharmatwin-history.db: --historian: is a directory, not a file" in text
    assert "allowed: give --historian DB" in text


def test_forecast_plan_that_is_a_directory(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    db = _historian(tmp_path / "history.db")
    plan = tmp_path / "plan"
    plan.mkdir()
    argv = ["forecast", str(LYO), "--historian", str(db), "--plan", str(plan)]
    text = _run([*argv, "--out", str(tmp_path / "fc")], capsys)
    assert f"{plan}: --plan: is a directory, not a file" in text
    assert "allowed: a YAML plan file" in text


def test_forecast_local_recipe_that_is_a_directory(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    site_file = _site_whose_local_recipe_is_a_directory(tmp_path)
    db = _historian(tmp_path / "history.db")
    argv = ["forecast", str(site_file), "--historian", str(db), "--out", str(tmp_path / "fc")]
    text = _run(argv, capsys)
    assert "forecast.local_recipe" in text and "is a directory, not a file" in text
    assert "allowed: a recipe file" in text


def test_history_export_of_a_directory(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    folder = tmp_path / "history"
    folder.mkdir()
    argv = ["history", "export", str(folder), "--parquet", str(tmp_path / "h.parquet")]
    text = _run(argv, capsys)
    assert f"{folder} is a directory, not a file" in text
    assert "allowed: the historian database file of a run" in text
    assert list(folder.iterdir()) == [] and not (tmp_path / "h.parquet").exists()


def test_history_export_to_a_directory(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    db = _historian(tmp_path / "history.db")
    out = tmp_path / "out.parquet"
    out.mkdir()
    text = _run(["history", "export", str(db), "--parquet", str(out)], capsys)
    assert f"--parquet: must be a file or not exist yet (got {out}: it is a directory)" in text
    assert list(out.iterdir()) == []


def test_history_export_of_a_file_still_works(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    db = _historian(tmp_path / "history.db")
    out = tmp_path / "h.parquet"
    assert main(["history", "export", str(db), "--parquet", str(out)]) == 0
    assert "wrote 1 cycles of 1 run(s) (run-1)" in capsys.readouterr().out and out.is_file()


def test_check_config_names_a_local_recipe_that_is_a_directory(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    site_file = _site_whose_local_recipe_is_a_directory(tmp_path)
    assert main(["check-config", str(site_file)]) == 1
    text = " ".join(capsys.readouterr().out.split())
    assert "forecast.local_recipe" in text and "is a directory, not a file" in text, text
    assert "file not found" not in text


@pytest.mark.parametrize(
    "argv",
    [
        ["run", "{d}", "--mode", "shadow"],
        ["check-config", "{d}"],
        ["describe", "{d}"],
    ],
)
def test_a_config_file_that_is_a_directory_is_named_as_one(
    argv: list[str], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Every config file is read by one reader: a directory said only "cannot read file: Is
    a directory", not what is expected instead."""
    folder = tmp_path / "site.yaml"
    folder.mkdir()
    code = main([a.format(d=folder) for a in argv])
    out = " ".join(capsys.readouterr().out.split())
    assert code in (1, 2) and "Traceback" not in out
    assert f"{folder}: is a directory, not a file; allowed: a YAML file (UTF-8 text)" in out
