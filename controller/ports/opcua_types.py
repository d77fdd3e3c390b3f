"""What the OPC UA port knows of values and status codes by name, without asyncua.

* the status names that mean a refused write, a refused login, a timeout or a lost session
  (the port maps asyncua's status codes to our errors and write statuses with them);
* whether a value fits a node's built-in type (:func:`type_refusal`), the Python value it is
  written as (:func:`python_value`) and the value a read-back should then equal
  (:func:`as_stored`: a Float node keeps float32 precision); a Float node with engineering
  ``limits`` is written the float32 nearest the value INSIDE them (:func:`stored`: the limit
  0.3 is sent as 0.29999998, not 0.30000001, which a PLC checking its range refuses);
* what a value read from a node stands for (:func:`read_number`): a number only if the node
  sent one value of its own built-in type (the DataType checked at connect) within that type's
  range; a Boolean from a Double node, a Double or an Int32 from a Boolean node, a float or -5
  from a UInt16 node, an array, a String or Null is refused with a reason naming what the node
  sent and what the node's type allows;
* a read value with its status and stamps as a :class:`TagValue` (:func:`tag_value`), and a
  write's read-back as its :class:`WriteResult` (:func:`readback_result`).
"""

from __future__ import annotations

import math
import struct
from collections.abc import Callable, Mapping, Sequence
from datetime import UTC, datetime
from typing import Any, Protocol, TypeGuard

import numpy as np

from controller.codecs import FLOAT32_MAX
from controller.ports.base import Quality, TagValue, WriteResult, WriteStatus
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


def type_refusal(
    data_type: str, name: str, value: float, limits: tuple[float, float] | None = None
) -> str:
    """Why ``value`` does not fit a node of built-in type ``data_type`` (``Double``,
    ``Boolean``, ``Int16``...), or "" when it does. A Float node with ``limits`` takes it
    only when a float32 near it lies within them (see :func:`stored`)."""
    if data_type == "Boolean" and value not in (0, 1):
        return f"{name}={value}: the node is Boolean, which takes 0 or 1"
    if data_type in OPCUA_INT_RANGE:
        lo, hi = OPCUA_INT_RANGE[data_type]
        if value != int(value) or not lo <= value <= hi:
            return f"{name}={value} does not fit the node's {data_type}: integers in [{lo}, {hi}]"
    if data_type == "Float" and abs(value) > FLOAT32_MAX:
        return f"{name}={value} overflows the node's Float (float32)"
    if data_type == "Float" and limits is not None and float32_within(value, *limits) is None:
        lo, hi = limits
        return f"{name}={value}: no Float (float32) value near it lies within [{lo:g}, {hi:g}]"
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


def float32_within(value: float, lo: float, hi: float) -> float | None:
    """The float32 nearest to ``value`` within ``[lo, hi]`` (None: there is none near it)."""
    if not -FLOAT32_MAX <= value <= FLOAT32_MAX:  # past it a float32 holds infinity
        return None
    f = as_stored("Float", value)  # what a float32 holds of it
    if lo <= f <= hi:
        return f
    toward = np.float32(-np.inf if f > hi else np.inf)  # one float32 step inward
    g = float(np.nextafter(np.float32(f), toward))
    return g if lo <= g <= hi else None


def stored(data_type: str, value: float, limits: tuple[float, float] | None = None) -> float:
    """The value a node of ``data_type`` holds once the port wrote ``value``: a Float node's
    float32, the nearest one inside ``limits`` when the nearest of all lies outside them."""
    if data_type != "Float" or limits is None:
        return as_stored(data_type, value)
    inside = float32_within(value, *limits)
    return as_stored(data_type, value) if inside is None else inside


_SHOWN = 40  # characters of a refused read value shown in its reason


class ReadVariant(Protocol):
    """What :func:`read_number` looks at in a read value (asyncua's ``ua.Variant``)."""

    Value: Any
    VariantType: Any  # a ua.VariantType (or VariantTypeCustom): ``.name`` is the type's name
    is_array: bool | None


def read_number(data_type: str, variant: ReadVariant | None) -> tuple[float, str]:
    """The number a read ``variant`` (None: no value) stands for in a node of built-in type
    ``data_type``, and ""; or NaN and why it stands for none. Allowed is one value (not an
    array) of the node's own variant type: a bool for Boolean only, an int within the type's
    range for the integer types, a float for Float and Double (``True`` is not 1.0 there)."""
    sent_type = "Null" if variant is None else str(variant.VariantType.name)
    value = None if variant is None else variant.Value
    array = variant is not None and bool(variant.is_array)
    if not array and sent_type == data_type and _fits(value, data_type):
        return float(value), ""
    shown = repr(value) if len(repr(value)) <= _SHOWN else repr(value)[: _SHOWN - 3] + "..."
    sent = f"an array of {sent_type} {shown}" if array else f"{sent_type} {shown}"
    if value is None:
        sent = f"{sent_type} (no value)"
    return math.nan, f"the node sent {sent}; the tag's node is {data_type}: {_allowed(data_type)}"


def _fits(value: object, data_type: str) -> TypeGuard[float]:
    """Whether one ``value`` of the node's own variant type is one the type can hold."""
    if data_type == "Boolean":
        return isinstance(value, bool)
    if isinstance(value, bool):
        return False
    if data_type in OPCUA_INT_RANGE:
        lo, hi = OPCUA_INT_RANGE[data_type]
        return isinstance(value, int) and lo <= value <= hi
    return isinstance(value, int | float)


def _allowed(data_type: str) -> str:
    """What a node of ``data_type`` may send, in words."""
    if data_type == "Boolean":
        return "one Boolean (true or false)"
    if data_type in OPCUA_INT_RANGE:
        lo, hi = OPCUA_INT_RANGE[data_type]
        return f"one {data_type} integer in [{lo}, {hi}]"
    return f"one {data_type} number"


class ReadStatus(Protocol):
    """What is looked at in a read's status (asyncua's ``ua.StatusCode``)."""

    @property
    def name(self) -> str: ...

    def is_good(self) -> bool: ...

    def is_bad(self) -> bool: ...


class ReadValue(Protocol):
    """What is looked at in a read value with its stamps (asyncua's ``ua.DataValue``)."""

    @property
    def Value(self) -> ReadVariant | None: ...  # asyncua's names

    @property
    def StatusCode(self) -> ReadStatus | None: ...  # None: Good

    @property
    def SourceTimestamp(self) -> datetime | None: ...

    @property
    def ServerTimestamp(self) -> datetime | None: ...


class _Good:
    """The status of a value read without one (OPC UA: Good)."""

    name = "Good"

    def is_good(self) -> bool:
        return True

    def is_bad(self) -> bool:
        return False


def tag_value(
    dv: ReadValue, kind: str, now: float, utc: datetime, got: datetime | None, rate: float
) -> TagValue:
    """A DataValue of a ``kind`` node as a TagValue: quality and detail from the status (and
    NaN, BAD, what was sent if not one value of the node's type), source time from stamps."""
    status = dv.StatusCode or _Good()
    stamp = dv.SourceTimestamp or dv.ServerTimestamp or got
    if stamp is not None and stamp.tzinfo is None:
        stamp = stamp.replace(tzinfo=UTC)
    source_time = now if stamp is None else now - (utc - stamp).total_seconds() * rate
    value, misfit = read_number(kind, dv.Value)
    if status.is_good() and not misfit:
        return TagValue(value, Quality.GOOD, source_time, now)
    if not misfit or (status.is_bad() and getattr(dv.Value, "Value", None) is None):
        quality = Quality.BAD if status.is_bad() else Quality.UNCERTAIN
        return TagValue(value, quality, source_time, now, status.name)
    detail = misfit if status.is_good() else f"{status.name}; {misfit}"
    return TagValue(value, Quality.BAD, source_time, now, detail)


def readback_result(
    name: str,
    requested: float,
    kind: str,
    limits: tuple[float, float] | None,
    where: str,
    dv: ReadValue,
) -> WriteResult:
    """The write of ``requested`` to the ``kind`` node ``where`` (its node id or browse path)
    as its read-back ``dv`` shows it: OK (the value stored), MISMATCH, or FAILED (written,
    outcome not confirmed) if the read-back is not a Good, finite value of the node's type."""
    status = dv.StatusCode or _Good()
    readback, misfit = read_number(kind, dv.Value)
    if not status.is_good() or misfit or not math.isfinite(readback):
        why = status.name if not status.is_good() else misfit or f"not finite ({readback!r})"
        why = f"written, but the read-back of {where} is not confirmed: {why}"
        return WriteResult(name, requested, WriteStatus.FAILED, None, why)
    if readback == stored(kind, requested, limits):
        return WriteResult(name, requested, WriteStatus.OK, readback)
    detail = f"node {where} reads back {readback}, requested {requested}"
    return WriteResult(name, requested, WriteStatus.MISMATCH, readback, detail)


#: OPC UA's built-in types by DataType id, 1 to 25 (Part 6, 5.1.2): asyncua's ``VariantType``.
BUILTIN_TYPES = (
    "Boolean", "SByte", "Byte", "Int16", "UInt16", "Int32", "UInt32", "Int64", "UInt64",
    "Float", "Double", "String", "DateTime", "Guid", "ByteString", "XmlElement", "NodeId",
    "ExpandedNodeId", "StatusCode", "QualifiedName", "LocalizedText", "ExtensionObject",
    "DataValue", "Variant", "DiagnosticInfo",
)  # fmt: skip


def type_name(dtype: object) -> str:
    """The built-in type name of a DataType node id (``Double``), else the node id itself
    (``to_string()``; the ``repr`` of what is not a node id)."""
    ns, to_string = getattr(dtype, "NamespaceIndex", None), getattr(dtype, "to_string", None)
    if ns is None or to_string is None:
        return repr(dtype)
    ident = getattr(dtype, "Identifier", None)
    if ns == 0 and isinstance(ident, int) and 1 <= ident <= len(BUILTIN_TYPES):
        return BUILTIN_TYPES[ident - 1]
    return str(to_string())


class _Status(Protocol):
    """What :func:`write_statuses` needs of asyncua's StatusCode."""

    @property
    def name(self) -> str: ...

    def is_bad(self) -> bool: ...


def write_statuses(
    names: Sequence[str],
    requested: Mapping[str, float],
    statuses: Sequence[_Status],
    where: Callable[[str], str],
) -> dict[str, WriteResult]:
    """The results of the Bad statuses a Write answered for the first ``len(statuses)`` of
    ``names`` (REJECTED for a refusal, FAILED otherwise); ``where``: a tag's node, for the
    message. A Good one is judged by its read-back."""
    out: dict[str, WriteResult] = {}
    for name, st in zip(names, statuses, strict=False):
        if st.is_bad():
            kind = WriteStatus.REJECTED if st.name in REFUSED else WriteStatus.FAILED
            msg = f"{name}={requested[name]} to node {where(name)}: {st.name}"
            out[name] = WriteResult(name, requested[name], kind, None, msg)
    return out


def cut_short(
    left: Sequence[str], requested: Mapping[str, float], failure: object, size: int | None
) -> dict[str, WriteResult]:
    """A write sent in parts of ``size`` nodes (the server's MaxNodesPerWrite) whose part for
    the first ``size`` of ``left`` failed with ``failure`` after the parts before it were
    written: those are FAILED (sent, outcome unknown), the rest NOT_SENT."""
    out: dict[str, WriteResult] = {}
    for i, name in enumerate(left):
        value = requested[name]
        if size is None or i < size:
            why = f"outcome unknown: its part of the write failed ({failure})"
            out[name] = WriteResult(name, value, WriteStatus.FAILED, None, why)
        else:
            why = f"not sent: an earlier part of the write failed ({failure})"
            out[name] = WriteResult(name, value, WriteStatus.NOT_SENT, None, why)
    return out


def unconfirmed(
    names: Sequence[str], requested: Mapping[str, float], failure: object
) -> dict[str, WriteResult]:
    """Tags the server answered Good for whose read-back failed with ``failure``: FAILED
    (written, not confirmed)."""
    why = f"written (Good), but the read-back failed: {failure}"
    return {n: WriteResult(n, requested[n], WriteStatus.FAILED, None, why) for n in names}


class SubscriptionCache:
    """The OPC UA port's subscription handler: the latest DataValue (and its arrival time)
    per node; ``lost``: the status that ended the subscription, if one did."""

    def __init__(self) -> None:
        self.values: dict[Any, tuple[Any, datetime]] = {}
        self.lost: str | None = None

    def datachange_notification(self, node: Any, val: Any, data: Any) -> None:
        self.values[node.nodeid] = (data.monitored_item.Value, datetime.now(UTC))

    def status_change_notification(self, status: Any) -> None:
        self.lost = str(status.Status.name)
