"""PharmaTwin's own error tree.

Every library error (CasADi, do-mpc, pymodbus, asyncua, YAML, pydantic) is translated at
the edge into one of these, with ``raise ... from exc`` so the cause is kept::

    PharmaTwinError
    ├── ConfigError            bad YAML/config: lists every problem (file, key path, value, allowed)
    ├── ModelError             a plant model is inconsistent (check_model) or cannot be built
    ├── SolverError            a solve could not even be attempted (a failed solve is a Decision)
    ├── EstimatorError         the estimator was fed inconsistent data
    ├── SafetyOrderError       a safety filter was called out of order (e.g. step before reset)
    ├── ScenarioError          a scenario cannot run (missing controller, bad recipe, ...)
    └── PortError              anything between a tag name and a byte on the wire
        ├── PortConnectError   cannot connect / connection lost
        ├── PortTimeoutError   a request did not answer in time
        ├── WriteRejectedError the PLC refused a write (out of range, read-only, not active)
        └── ProtocolError      a malformed or unexpected answer
"""

from __future__ import annotations

import dataclasses
import difflib
from collections.abc import Iterable
from dataclasses import dataclass

from controller import yamlmarks
from plant_models.errors import ModelError, PharmaTwinError

__all__ = [
    "ConfigError",
    "EstimatorError",
    "ModelError",
    "PharmaTwinError",
    "PortConnectError",
    "PortError",
    "PortTimeoutError",
    "Problem",
    "ProtocolError",
    "SafetyOrderError",
    "ScenarioError",
    "SolverError",
    "WriteRejectedError",
    "brief",
    "suggest",
    "unknown_name",
]

#: The longest quoted value in a message; longer ones are cut (never a whole document).
BRIEF_CHARS = 60
#: Up to this many allowed names are listed after a suggestion; more are counted instead.
LIST_AFTER_SUGGESTION = 12


def brief(value: object, limit: int = BRIEF_CHARS) -> str:
    """A short quotation of a bad value: scalars as written, long strings cut, and mappings
    or lists longer than ``limit`` characters summarised (their size, the first keys)."""
    text = repr(value)
    if len(text) <= limit:
        return text
    if isinstance(value, str):
        return f"{value[: limit - 8]!r}... ({len(value)} characters)"
    if isinstance(value, dict):
        keys = ", ".join(str(k) for k in list(value)[:4])
        more = ", ..." if len(value) > 4 else ""
        return f"a mapping of {len(value)} keys ({keys}{more})"
    if isinstance(value, list | tuple):
        return f"a list of {len(value)} items"
    return f"{text[: limit - 3]}..."


def suggest(name: str, allowed: Iterable[str]) -> str | None:
    """The allowed name closest to ``name`` (difflib), or None when none is close."""
    names = [str(a) for a in allowed]
    by_case = {n.lower(): n for n in names}
    if name.lower() in by_case:
        return by_case[name.lower()]
    close = difflib.get_close_matches(name, names, n=1, cutoff=0.6)
    return close[0] if close else None


def unknown_name(what: str, name: object, allowed: Iterable[str], *, context: str = "") -> str:
    """The one wording for a name that is not allowed, with a "did you mean" when one is close::

        unknown key 'durration'; did you mean 'duration'? allowed: ['name', 'duration', ...]
        unknown tag 'shelf_tmp_sp'; did you mean 'shelf_temp_sp'? (one of 26 allowed)
        unknown measured output 'Tbto' for a sensor_bias fault; did you mean 'Tbot'? ...

    ``context`` follows the name. Long lists are counted rather than listed when a
    suggestion is given; without one, every allowed name is listed.
    """
    names = list(dict.fromkeys(str(a) for a in allowed))
    text = f"unknown {what} {brief(name)}{context}"
    best = suggest(str(name), names) if isinstance(name, str) else None
    if best is None:
        return f"{text}; allowed: {names}"
    if len(names) > LIST_AFTER_SUGGESTION:
        return f"{text}; did you mean {best!r}? (one of {len(names)} allowed)"
    return f"{text}; did you mean {best!r}? allowed: {names}"


@dataclass(frozen=True)
class Problem:
    """One configuration problem: where it is, what was found and what is allowed.

    ``location`` is the dotted key path (``inputs.F.max_move``); ``line`` and ``column``
    (1-based) are where that key is written in ``file``. A :class:`ConfigError` fills them
    in from the YAML file's marks when the problem does not carry them.
    """

    file: str
    location: str
    message: str
    value: object = None
    line: int | None = None
    column: int | None = None

    def __str__(self) -> str:
        where = self.file if self.line is None else f"{self.file}:{self.line}:{self.column or 1}"
        if self.location:
            where = f"{where}: {self.location}"
        text = f"{where}: {self.message}"
        if self.value is None:
            return text
        got = brief(self.value)
        return text if got in self.message else f"{text} (got {got})"

    def located(self) -> Problem:
        """This problem with the line and column of its key, when its file is YAML that has it."""
        if self.line is not None:
            return self
        marks = yamlmarks.marks_for(self.file)
        mark = marks.find(self.location) if marks is not None else None
        if mark is None:
            return self
        return dataclasses.replace(self, line=mark[0], column=mark[1])


class ConfigError(PharmaTwinError):
    """One or more configuration problems, all reported at once (each with its line)."""

    def __init__(self, problems: Iterable[Problem]) -> None:
        self.problems: tuple[Problem, ...] = tuple(p.located() for p in problems)
        count = len(self.problems)
        lines = "\n".join(f"  - {p}" for p in self.problems)
        super().__init__(f"{count} configuration problem{'s' if count != 1 else ''}:\n{lines}")


class SolverError(PharmaTwinError):
    """A solve could not be attempted at all (bad input shapes, missing initial state)."""


class EstimatorError(PharmaTwinError):
    """The estimator was given inconsistent data (unknown output, wrong shape)."""


class SafetyOrderError(PharmaTwinError):
    """The safety filter was called out of order."""


class ScenarioError(PharmaTwinError):
    """A scenario cannot run as written."""


class PortError(PharmaTwinError):
    """Anything that goes wrong between a tag name and a byte on the wire."""


class PortConnectError(PortError):
    """The port cannot connect, or lost its connection."""


class PortTimeoutError(PortError):
    """A request did not answer within its timeout."""


class WriteRejectedError(PortError):
    """The PLC (or the port itself, before sending) refused a write."""


class ProtocolError(PortError):
    """The peer answered with something malformed or unexpected."""
