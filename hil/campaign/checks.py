"""The acceptance checks a campaign criterion can name, and how each reads to a person.

A check is one of a fixed set of named kinds (:data:`Check`, discriminated on ``kind``);
nothing in a campaign file is evaluated as code. :class:`Criterion` ties a requirement ID to
its check; :func:`describe_check` words the check for the reports. Judging a recording against
a check is :mod:`hil.campaign.criteria`.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field, model_validator

from controller.configfile import Finite, PositiveFinite, Strict

REQUIREMENT_ID = r"^REQ-[A-Z0-9]+(-[A-Z0-9]+)*$"


class SetpointsWithinLimits(Strict):
    """Every setpoint the controller sent lies within ``limits``, and each change between two
    consecutive sends within ``max_move`` (per controller sample)."""

    kind: Literal["setpoints_within_limits"]
    limits: dict[str, tuple[Finite, Finite]]
    max_move: dict[str, PositiveFinite] = Field(default_factory=dict)


class Extremum(Strict):
    """The maximum, minimum or final value of a true-plant quantity (state, expression, output
    or input: an input is judged on ``u.<input>``, the setpoint the PLC applied, before any
    actuator fault; ``i.<input>`` records what the plant received), within ``[after, before]``
    if given (and only while the MPC had control if ``while_mpc_active``), against
    ``at_most``/``at_least``."""

    kind: Literal["max", "min", "final"]
    of: str
    at_most: Finite | None = None
    at_least: Finite | None = None
    unit: str = ""
    after: Finite | None = None
    before: Finite | None = None
    #: judge only the scans during which the MPC had control (the PLC reports it active)
    while_mpc_active: bool = False

    @model_validator(mode="after")
    def _one_bound(self) -> Extremum:
        if (self.at_most is None) == (self.at_least is None):
            raise ValueError("give exactly one of 'at_most' or 'at_least'")
        return self


class FallbackWithin(Strict):
    """After the controller is lost, the PLC falls back within N heartbeat timeouts."""

    kind: Literal["fallback_within"]
    heartbeat_timeouts: PositiveFinite = 2.0


class ConsecutiveFailedSolves(Strict):
    """No run of failed solves longer than ``at_most`` cycles."""

    kind: Literal["consecutive_failed_solves"]
    at_most: Annotated[int, Field(ge=0)]


class ControlLosses(Strict):
    """The MPC loses control (the PLC drops it, or it releases after bad cycles) at most
    ``at_most`` times during the run."""

    kind: Literal["control_losses"]
    at_most: Annotated[int, Field(ge=0)]


class DriftAlarm(Strict):
    """The twin raises a drift alarm on ``signal`` (an estimated parameter or a measured
    output; ``side`` high/low if given) within ``within`` time units of ``after`` (the onset
    of the drift), and none on any signal before ``after``. Judged on the detection delay."""

    kind: Literal["drift_alarm"]
    signal: str
    side: Literal["high", "low"] | None = None
    after: Annotated[float, Field(ge=0, allow_inf_nan=False)]
    within: PositiveFinite


class NoDriftAlarm(Strict):
    """The twin raises at most ``at_most`` drift alarms over the run (false-alarm check)."""

    kind: Literal["no_drift_alarm"]
    at_most: Annotated[int, Field(ge=0)] = 0


class MaintenanceForecast(Strict):
    """The time-to-threshold forecast of ``parameter`` brackets the true crossing: of the
    forecasts issued from ``after`` on (status approaching), at least the fraction
    ``at_least`` have an interval that contains the time the true parameter crosses."""

    kind: Literal["maintenance_forecast"]
    parameter: str
    after: Annotated[float, Field(ge=0, allow_inf_nan=False)]
    at_least: Annotated[float, Field(gt=0, le=1)] = 0.9


Check = Annotated[
    SetpointsWithinLimits
    | Extremum
    | FallbackWithin
    | ConsecutiveFailedSolves
    | ControlLosses
    | DriftAlarm
    | NoDriftAlarm
    | MaintenanceForecast,
    Field(discriminator="kind"),
]


class Criterion(Strict):
    """An acceptance criterion: a requirement ID, what it means, and its check."""

    id: Annotated[str, Field(pattern=REQUIREMENT_ID)]
    description: str
    check: Check
    #: factor -> variants this criterion applies to (empty: every case)
    applies_to: dict[str, tuple[str, ...]] = Field(default_factory=dict)


def describe_check(check: Check) -> str:
    """A person's reading of a check, for reports."""
    match check:
        case SetpointsWithinLimits():
            parts = [f"{n} in [{lo:g}, {hi:g}]" for n, (lo, hi) in check.limits.items()]
            parts += [f"|d{n}| <= {v:g}/sample" for n, v in check.max_move.items()]
            return "every setpoint sent: " + ", ".join(parts)
        case Extremum():
            op, bound = (
                ("<=", check.at_most) if check.at_most is not None else (">=", check.at_least)
            )
            window = ""
            if check.after is not None or check.before is not None:
                window = f" over [{check.after or 0:g}, {check.before or 'end'}]"
            if check.while_mpc_active:
                window += " while the MPC has control"
            return f"{check.kind}({check.of}){window} {op} {bound:g} {check.unit}".rstrip()
        case FallbackWithin():
            return f"PLC fallback within {check.heartbeat_timeouts:g} heartbeat timeouts of loss"
        case ConsecutiveFailedSolves():
            return f"longest run of failed solves <= {check.at_most} cycles"
        case ControlLosses():
            return f"times the MPC lost control <= {check.at_most}"
        case DriftAlarm():
            side = f" ({check.side})" if check.side else ""
            return (
                f"drift alarm on {check.signal}{side} within {check.within:g} of t={check.after:g},"
                " none before"
            )
        case NoDriftAlarm():
            return f"drift alarms <= {check.at_most}"
        case MaintenanceForecast():
            return (
                f"time-to-threshold interval of {check.parameter} contains the true crossing in "
                f">= {100 * check.at_least:g} % of the forecasts from t={check.after:g}"
            )
    raise AssertionError(f"unhandled check {check!r}")  # pragma: no cover
