"""One logging set-up for the command lines (``--log-level``, ``--log-file``, ``--log-format``).

``setup_logging`` installs two handlers on the root logger:

- the terminal (stderr, or a rich console so log lines print above a live status table):
  our own loggers (``pharmatwin.*``) at the chosen level; the libraries' loggers (asyncua,
  pymodbus, ...) only at ERROR and above, so their warnings never reach the operator's screen;
- the log file, when given: everything at the chosen level, the libraries' WARNING and above
  included.

``--log-format json`` writes one JSON object per line (``time`` in UTC ISO 8601, ``level``,
``logger``, ``message``, the record's ``extra`` fields, and ``exception`` when there is one),
on the terminal and in the file; ``text`` writes ``time level logger: message``.

A file that cannot be opened is a :class:`~controller.errors.ConfigError` naming the flag.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, TextIO

from rich.console import Console
from rich.logging import RichHandler

from controller.errors import ConfigError, Problem, unknown_name

LogFormat = Literal["text", "json"]
LOG_FORMATS: tuple[LogFormat, ...] = ("text", "json")
LOG_LEVELS = ("debug", "info", "warning", "error")

#: Libraries whose loggers are raised to WARNING, and kept off the terminal below ERROR.
LIBRARY_LOGGERS = (
    "asyncua",
    "pymodbus",
    "opcua",
    "optuna",
    "distributed",
    "urllib3",
    "casadi",
    "py.warnings",  # Python warnings (captured into logging): the file only, below ERROR
)

#: LogRecord attributes every record has; anything else came in through ``extra=``.
_STANDARD = frozenset(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {
    "message",
    "asctime",
    "taskName",
}
_TEXT = "%(asctime)s %(levelname)-7s %(name)s: %(message)s"


class JsonFormatter(logging.Formatter):
    """One JSON object per record: time, level, logger, message, extra fields, exception."""

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "time": dt.datetime.fromtimestamp(record.created, dt.UTC).isoformat(
                timespec="milliseconds"
            ),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        for key, value in vars(record).items():
            if key not in _STANDARD and not key.startswith("_"):
                out[key] = value
        if record.exc_info:
            out["exception"] = self.formatException(record.exc_info)
        return json.dumps(out, default=str, ensure_ascii=False)


def _is_library(name: str, libraries: Sequence[str]) -> bool:
    return any(name == lib or name.startswith(lib + ".") for lib in libraries)


def quiet_libraries(libraries: Sequence[str] = LIBRARY_LOGGERS) -> None:
    """Without :func:`setup_logging` (the CLI's commands other than ``run``): only the
    libraries' ERRORs are passed on, so none of their warnings reach the terminal (asyncua
    warned of a closed secure channel and of certificate host names at every ``tags read``)."""
    for name in libraries:
        logger = logging.getLogger(name)
        logger.setLevel(max(logger.getEffectiveLevel(), logging.ERROR))


class QuietLibraries(logging.Filter):
    """Keeps the libraries' records below ERROR off a handler (the terminal's)."""

    def __init__(self, libraries: Sequence[str] = LIBRARY_LOGGERS) -> None:
        super().__init__()
        self.libraries = tuple(libraries)

    def filter(self, record: logging.LogRecord) -> bool:
        return record.levelno >= logging.ERROR or not _is_library(record.name, self.libraries)


@dataclass
class LogSetup:
    """The handlers ``setup_logging`` installed; ``close()`` removes them (tests, re-runs)."""

    handlers: list[logging.Handler] = field(default_factory=list)
    level: int = logging.INFO

    def close(self) -> None:
        root = logging.getLogger()
        for h in self.handlers:
            root.removeHandler(h)
            h.close()
        self.handlers.clear()


_installed: list[LogSetup] = []


def _formatter(fmt: LogFormat) -> logging.Formatter:
    return JsonFormatter() if fmt == "json" else logging.Formatter(_TEXT)


def _terminal(fmt: LogFormat, console: Console | None, stream: TextIO | None) -> logging.Handler:
    if fmt == "text" and console is not None:
        return RichHandler(console=console, show_path=False, rich_tracebacks=False, markup=False)
    handler = logging.StreamHandler(stream)  # None: sys.stderr
    handler.setFormatter(_formatter(fmt))
    return handler


def _file(path: Path, fmt: LogFormat) -> logging.Handler:
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        handler = logging.FileHandler(path, encoding="utf-8")
    except OSError as exc:
        why = f"cannot open the log file for appending ({exc.strerror or exc})"
        raise ConfigError([Problem("command line", "--log-file", why, str(path))]) from exc
    handler.setFormatter(_formatter(fmt))
    return handler


def setup_logging(
    level: str = "info",
    log_file: Path | None = None,
    fmt: LogFormat = "text",
    *,
    console: Console | None = None,
    stream: TextIO | None = None,
    libraries: Sequence[str] = LIBRARY_LOGGERS,
) -> LogSetup:
    """Install the terminal handler (and the file handler) on the root logger.

    Replaces what an earlier call installed. ``console``: a rich console for text logs (so
    they print above a live display); ``stream``: where plain/JSON terminal logs go (stderr).
    Raises ConfigError for an unknown level or format, or a log file that cannot be opened.
    """
    problems = []
    if level.lower() not in LOG_LEVELS:
        message = unknown_name("log level", level, LOG_LEVELS)
        problems.append(Problem("command line", "--log-level", message, level))
    if fmt not in LOG_FORMATS:
        message = unknown_name("log format", fmt, LOG_FORMATS)
        problems.append(Problem("command line", "--log-format", message, fmt))
    if problems:
        raise ConfigError(problems)
    while _installed:
        _installed.pop().close()
    setup = LogSetup(level=logging.getLevelNamesMapping()[level.upper()])
    terminal = _terminal(fmt, console, stream)
    terminal.addFilter(QuietLibraries(libraries))
    setup.handlers.append(terminal)
    if log_file is not None:
        setup.handlers.append(_file(log_file, fmt))
    root = logging.getLogger()
    root.setLevel(setup.level)
    for h in setup.handlers:
        h.setLevel(setup.level)
        root.addHandler(h)
    for name in libraries:
        logging.getLogger(name).setLevel(max(logging.WARNING, setup.level))
    logging.captureWarnings(True)
    _installed.append(setup)
    return setup
