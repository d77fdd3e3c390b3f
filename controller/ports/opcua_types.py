"""What the OPC UA port knows of values and status codes by name, without asyncua.

* the status names that mean a refused write, a refused login, a timeout or a lost session
  (the port maps asyncua's status codes to our errors and write statuses with them);
* whether a value fits a node's built-in type (:func:`type_refusal`), the Python value it is
  written as (:func:`python_value`) and the value a read-back should then equal
  (:func:`as_stored`: a Float node keeps float32 precision).
"""

from __future__ import annotations

import struct

from controller.codecs import FLOAT32_MAX
from controller.tags import OPCUA_INT_RANGE

#: Write statuses meaning "the PLC refused this value" (REJECTED); other Bad ones are FAILED.
REFUSED = {"BadOutOfRange", "BadUserAccessDenied", "BadNotWritable", "BadTypeMismatch"}
REFUSED |= {"BadWriteNotSupported", "BadNodeIdUnknown", "BadNotSupported", "BadIndexRangeInvalid"}
REFUSED |= {"BadInvalidState", "BadLocked"}  # not active / interlock: the PLC's refusals
LOGIN_REFUSED = {"BadUserAccessDenied", "BadIdentityTokenRejected", "BadIdentityTokenInvalid"}
TIMEOUT = {"BadTimeout", "BadRequestTimeout"}
#: Service results meaning the session or channel is gone (reconnect).
LOST = {"BadSessionIdInvalid", "BadSessionClosed", "BadSessionNotActivated", "BadShutdown"}
LOST |= {"BadSecureChannelClosed", "BadSecureChannelIdInvalid", "BadConnectionClosed"}
LOST |= {"BadServerNotConnected", "BadNoCommunication", "BadCommunicationError"}


def type_refusal(data_type: str, name: str, value: float) -> str:
    """Why ``value`` does not fit a node of built-in type ``data_type`` (``Double``,
    ``Boolean``, ``Int16``...), or "" when it does."""
    if data_type == "Boolean" and value not in (0, 1):
        return f"{name}={value}: the node is Boolean, which takes 0 or 1"
    if data_type in OPCUA_INT_RANGE:
        lo, hi = OPCUA_INT_RANGE[data_type]
        if value != int(value) or not lo <= value <= hi:
            return f"{name}={value} does not fit the node's {data_type}: integers in [{lo}, {hi}]"
    if data_type == "Float" and abs(value) > FLOAT32_MAX:
        return f"{name}={value} overflows the node's Float (float32)"
    return ""


def python_value(data_type: str, value: float) -> bool | int | float:
    """``value`` as the Python value a node of ``data_type`` is written with."""
    if data_type == "Boolean":
        return bool(value)
    return int(value) if data_type in OPCUA_INT_RANGE else float(value)


def as_stored(data_type: str, value: float) -> float:
    """The value a node of ``data_type`` holds after ``value`` is written (float32 rounding)."""
    if data_type == "Float":
        return float(struct.unpack("<f", struct.pack("<f", value))[0])
    return value
