"""Every command that writes files checks its output paths before any work: a folder given
as an existing file (or a file given as a folder) is refused with exit code 2 and one line
naming the flag, the path and what is allowed, never a traceback after the run.

A report whose every case errored has no trajectory to plot: it says so instead of failing
on a zero-sized figure (numpy's "Singular matrix").
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from pathlib import Path

import pytest

from controller.runtime.cli import main as pharmatwin_main
from hil.cli import main as hil_main
from hil.tuning.report import trajectory_plot

ROOT = Path(__file__).resolve().parents[2]
CONFIGS = ROOT / "configs"
SMOKE = str(CONFIGS / "campaigns" / "lyophilizer-smoke.yaml")
SITE = str(CONFIGS / "sites" / "lyophilizer-modbus.yaml")
CONTROLLER = str(CONFIGS / "controllers" / "lyophilizer.yaml")
MIN_TIME = str(CONFIGS / "controllers" / "lyophilizer-min-time.yaml")

Main = Callable[[Sequence[str] | None], int]


def _results_with_report_folder(tmp: Path) -> str:
    """A campaign results folder whose report.html is a folder."""
    results = tmp / "results"
    (results / "report.html").mkdir(parents=True)
    manifest = {"campaign": "c", "cases": [], "requirements": []}
    (results / "campaign.json").write_text(json.dumps(manifest), encoding="utf-8")
    return str(results)


def _folder_holding(tmp: Path, name: str) -> str:
    """An output folder in which ``name``, a file the command writes, is a folder."""
    out = tmp / "out"
    (out / name).mkdir(parents=True)
    return str(out)


#: (id, main, argv from (a file, a folder, tmp_path), the flag, what is allowed)
CASES: list[tuple[str, Main, Callable[[str, str, Path], list[str]], str, str]] = [
    (
        "campaign-run",
        hil_main,
        lambda f, d, t: ["campaign", "run", SMOKE, "--out", f, "--quiet"],
        "--out",
        "must be a directory or not exist yet",
    ),
    (
        "tune",
        hil_main,
        lambda f, d, t: ["tune", str(CONFIGS / "tuning" / "lyophilizer.yaml"), "--out", f],
        "--out",
        "must be a directory or not exist yet",
    ),
    (
        "compare",
        hil_main,
        lambda f, d, t: ["compare", CONTROLLER, CONTROLLER, "--scenarios", SMOKE, "--out", f],
        "--out",
        "must be a directory or not exist yet",
    ),
    (
        "design-space",
        hil_main,
        lambda f, d, t: [
            "design-space",
            str(CONFIGS / "design-space" / "lyophilizer.yaml"),
            "--out",
            f + "/under",
            "--quiet",
        ],
        "--out",
        "must be a directory or not exist yet",
    ),
    (
        # its table or plot a folder: refused before the simulations (it was an
        # IsADirectoryError traceback after all of them, the CSV written, the JSON not)
        "design-space-monte-carlo-plot-folder",
        hil_main,
        lambda f, d, t: [
            "design-space",
            str(CONFIGS / "design-space" / "lyophilizer.yaml"),
            "--monte-carlo",
            "2",
            "--out",
            _folder_holding(t, "design_space_probability.png"),
            "--quiet",
        ],
        "design_space_probability.png",
        "must be a file or not exist yet",
    ),
    (
        "design-space-csv-folder",
        hil_main,
        lambda f, d, t: [
            "design-space",
            str(CONFIGS / "design-space" / "lyophilizer.yaml"),
            "--out",
            _folder_holding(t, "design_space.csv"),
            "--quiet",
        ],
        "design_space.csv",
        "must be a file or not exist yet",
    ),
    (
        "pki-issue-client",
        hil_main,
        lambda f, d, t: [
            "pki",
            "issue-client",
            "bench",
            "--uri",
            "urn:bench",
            "--out",
            f,
            "--ca-dir",
            str(CONFIGS / "pki"),
        ],
        "--out",
        "must be a directory or not exist yet",
    ),
    (
        "serve",
        hil_main,
        lambda f, d, t: ["serve", SITE, "--state-dir", f, "--duration", "1"],
        "--state-dir",
        "must be a directory or not exist yet",
    ),
    (
        "min-time-json-folder",
        hil_main,
        lambda f, d, t: ["min-time", MIN_TIME, "--json", d],
        "--json",
        "must be a file or not exist yet",
    ),
    (
        "min-time-json-under-file",
        hil_main,
        lambda f, d, t: ["min-time", MIN_TIME, "--json", f + "/x.json"],
        "--json",
        "must be a file or not exist yet",
    ),
    (
        "campaign-report",
        hil_main,
        lambda f, d, t: ["campaign", "report", _results_with_report_folder(t)],
        "report.html",
        "must be a file or not exist yet",
    ),
    (
        "forecast",
        pharmatwin_main,
        lambda f, d, t: ["forecast", SITE, "--out", f],
        "--out",
        "must be a directory or not exist yet",
    ),
]


@pytest.mark.parametrize(
    ("main", "argv", "flag", "allowed"), [c[1:] for c in CASES], ids=[c[0] for c in CASES]
)
def test_a_bad_output_path_is_refused_up_front(
    main: Main,
    argv: Callable[[str, str, Path], list[str]],
    flag: str,
    allowed: str,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.chdir(tmp_path)
    text_file = tmp_path / "text.db"
    text_file.write_text("hello\n", encoding="utf-8")
    folder = tmp_path / "a-folder"
    folder.mkdir()
    args = argv(str(text_file), str(folder), tmp_path)
    before = sorted(p.name for p in tmp_path.rglob("*"))
    assert main(args) == 2
    out = capsys.readouterr()
    text = " ".join((out.out + out.err).split())  # rich may wrap a long line
    assert flag in text and allowed in text
    assert "Traceback" not in text
    assert sorted(p.name for p in tmp_path.rglob("*")) == before  # nothing written


def test_a_plot_of_cases_that_all_errored_says_so(tmp_path: Path) -> None:
    runs = {"A: a.yaml": tmp_path / "A", "B: b.yaml": tmp_path / "B"}  # no trajectories
    path = trajectory_plot(runs, ["case-1", "case-2"], tmp_path / "cmp.png", "A vs B")
    assert path.is_file() and path.stat().st_size > 0
