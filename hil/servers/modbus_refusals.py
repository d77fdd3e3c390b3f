"""What the HIL Modbus server keeps of its traffic: requests received and writes refused.

:class:`Received` is one request as it came in; :class:`Refusal` is one refused client write
with its :class:`~controller.runtime.commissioning.RefusalCode` and where it was refused.
:func:`classify` reads that code from the words of the PLC logic's reason;
:func:`tolerance` is how far a value may pass a limit before the PLC, comparing in the
register's own number format, refuses it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from controller.codecs import DataType as TagType
from controller.runtime.commissioning import RefusalCode
from controller.tags import ModbusSpec, Table

NOT_ACTIVE = "only while the MPC is active"  # the virtual PLC's words (hil.vplc)


@dataclass(frozen=True)
class Received:
    """One request as the server received it."""

    function_code: int
    unit_id: int
    address: int
    count: int


@dataclass(frozen=True)
class Refusal:
    """Why the PLC refused a client write, and where: the refused tag's first register (or,
    for an unmapped address, the first register no tag holds), 0-based."""

    code: RefusalCode
    table: Table
    address: int
    reason: str
    tag: str | None = None
    value: float | None = None


def tolerance(spec: ModbusSpec, bound: float) -> float:
    """What the register type cannot resolve near ``bound`` (a float32 0.3 is 0.30000001):
    a PLC compares in its own number format, so a limit value sent as a register passes."""
    if not math.isfinite(bound):
        return 0.0
    if spec.type is TagType.FLOAT32:
        return 1e-6 * max(1.0, abs(bound))
    if spec.type is TagType.FLOAT64:
        return 1e-12 * max(1.0, abs(bound))
    return abs(spec.scale) / 2


def classify(reason: str, interlock_active: bool) -> RefusalCode:
    """The code of a reason the PLC logic (the write hook) gave, from its words; a refusal
    for not being active while an interlock is active is the interlock's."""
    if NOT_ACTIVE in reason:
        return RefusalCode.INTERLOCK if interlock_active else RefusalCode.NOT_ACTIVE
    if "outside the PLC range" in reason:
        return RefusalCode.OUTSIDE_LIMITS
    if "rate limit" in reason:
        return RefusalCode.RATE_LIMIT
    return RefusalCode.OTHER
