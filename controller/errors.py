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

from collections.abc import Iterable
from dataclasses import dataclass

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
]


@dataclass(frozen=True)
class Problem:
    """One configuration problem: where it is, what was found and what is allowed."""

    file: str
    location: str
    message: str
    value: object = None

    def __str__(self) -> str:
        where = f"{self.file}: {self.location}" if self.location else self.file
        return f"{where}: {self.message} (got {self.value!r})"


class ConfigError(PharmaTwinError):
    """One or more configuration problems, all reported at once."""

    def __init__(self, problems: Iterable[Problem]) -> None:
        self.problems: tuple[Problem, ...] = tuple(problems)
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
