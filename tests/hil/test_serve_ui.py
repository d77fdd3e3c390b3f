"""``pharmatwin-hil serve``'s logging flags (``--log-level``, ``--log-file``,
``--log-format``), driven through the CLI with an argv list against a real serve on a free
loopback port."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from hil.cli import main
from hil.net import free_port

ROOT = Path(__file__).resolve().parents[2]
LYO_MODBUS = ROOT / "configs" / "sites" / "lyophilizer-modbus.yaml"
pytestmark = pytest.mark.timeout(120)


def _serve(tmp: Path, *flags: str) -> list[str]:
    port = str(free_port())
    base = ["serve", str(LYO_MODBUS), "--rate", "3600", "--duration", "1800"]
    return [*base, "--modbus-port", port, "--state-dir", str(tmp / "state"), *flags]


def test_serve_logs_json_to_the_log_file(tmp_path: Path) -> None:
    log = tmp_path / "hil.log"
    argv = _serve(tmp_path, "--log-level", "info", "--log-format", "json", "--log-file", str(log))
    assert main(argv) == 0
    records = [json.loads(line) for line in log.read_text().splitlines()]
    serving = [r for r in records if r["message"].startswith("serving lyophilizer-modbus")]
    assert serving and serving[0]["level"] == "INFO" and serving[0]["logger"].startswith("pharma")
    assert all({"time", "level", "logger", "message"} <= set(r) for r in records)


def test_serve_log_level_warning_keeps_info_out_of_the_log_file(tmp_path: Path) -> None:
    log = tmp_path / "hil.log"
    assert main(_serve(tmp_path, "--log-level", "warning", "--log-file", str(log))) == 0
    assert " INFO " not in log.read_text()
    # the state folder's own log still has the rig's INFO records
    assert (
        "serving lyophilizer-modbus" in (tmp_path / "state" / "lyophilizer-modbus.log").read_text()
    )


def test_serve_log_file_that_cannot_be_opened_is_exit_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bad = tmp_path / "a-folder"  # a folder cannot be opened for appending
    bad.mkdir()
    assert main(_serve(tmp_path, "--log-file", str(bad))) == 2
    out = capsys.readouterr().out
    assert "--log-file" in out and "Traceback" not in out


def test_serve_log_format_outside_the_choices_is_exit_2(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["serve", str(LYO_MODBUS), "--log-format", "xml"])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert "--log-format" in err and "'xml'" in err and "json" in err
