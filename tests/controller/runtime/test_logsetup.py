"""One logging set-up for the CLIs: JSON lines with their fields, the libraries' warnings in
the log file and never on the terminal, bad flags as one-line errors (exit 2)."""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Iterator
from pathlib import Path

import pytest

from controller.errors import ConfigError
from controller.runtime.cli import main as cli_main
from controller.runtime.logsetup import setup_logging


@pytest.fixture(autouse=True)
def _restore_root() -> Iterator[None]:
    root = logging.getLogger()
    level, handlers = root.level, list(root.handlers)
    levels = {n: logging.getLogger(n).level for n in ("asyncua", "pymodbus")}
    yield
    for h in list(root.handlers):
        if h not in handlers:
            root.removeHandler(h)
            h.close()
    root.setLevel(level)
    for name, lvl in levels.items():
        logging.getLogger(name).setLevel(lvl)


def test_json_lines_carry_time_level_logger_message_and_extras(tmp_path: Path) -> None:
    terminal = io.StringIO()
    log_file = tmp_path / "logs" / "run.jsonl"
    setup = setup_logging("info", log_file, "json", stream=terminal)
    log = logging.getLogger("pharmatwin.runtime")
    log.info("state %s -> %s", "INIT", "SHADOW", extra={"cycle": 3, "site": "cstr"})
    log.debug("not at info")
    try:
        raise ValueError("bad read")
    except ValueError:
        log.exception("cycle failed")
    setup.close()
    lines = log_file.read_text().splitlines()
    assert terminal.getvalue().splitlines() == lines  # the same lines on both
    first = json.loads(lines[0])
    assert first["level"] == "INFO" and first["logger"] == "pharmatwin.runtime"
    assert first["message"] == "state INIT -> SHADOW"
    assert first["cycle"] == 3 and first["site"] == "cstr"
    assert first["time"].endswith("+00:00") and "T" in first["time"]
    second = json.loads(lines[1])
    assert second["level"] == "ERROR" and "ValueError: bad read" in second["exception"]
    assert len(lines) == 2


def test_library_warnings_reach_the_file_not_the_terminal(tmp_path: Path) -> None:
    terminal = io.StringIO()
    log_file = tmp_path / "run.log"
    setup = setup_logging("debug", log_file, "text", stream=terminal)
    logging.getLogger("asyncua.client.ua_client").warning("ServiceFault from server")
    logging.getLogger("pymodbus.logging").info("Connection to 127.0.0.1 lost")
    logging.getLogger("pymodbus.logging").error("socket closed hard")
    logging.getLogger("pharmatwin.supervisor").warning("cycle 4 (HOLD): stale inputs")
    setup.close()
    shown, kept = terminal.getvalue(), log_file.read_text()
    assert "ServiceFault" not in shown and "ServiceFault" in kept
    assert "Connection to 127.0.0.1 lost" not in kept  # library info stays out even at debug
    assert "socket closed hard" in shown and "socket closed hard" in kept
    assert "stale inputs" in shown and "stale inputs" in kept


def test_a_second_setup_replaces_the_first(tmp_path: Path) -> None:
    first, second = io.StringIO(), io.StringIO()
    setup_logging("info", None, "text", stream=first)
    setup_logging("info", None, "text", stream=second).close()
    logging.getLogger("pharmatwin.x").warning("once")
    assert "once" not in first.getvalue()


def test_a_log_file_that_cannot_be_opened_is_named(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("")
    with pytest.raises(ConfigError, match="--log-file: cannot open the log file"):
        setup_logging("info", blocker / "run.log", "text")


def test_run_with_a_bad_log_file_exits_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("")
    argv = ["run", "no-site.yaml", "--mode", "shadow", "--log-file", str(blocker / "x.log")]
    assert cli_main(argv) == 2
    out = capsys.readouterr().out
    assert "--log-file: cannot open the log file" in out and "Traceback" not in out
