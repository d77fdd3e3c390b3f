"""The HIL OPC UA server's nodes: namespace, node ids, value types, units and status codes.

Each tag's variable keeps the tag map's node id (``ns=2;s=<map>.<tag>``, or the same named by
namespace URI: ``nsu=urn:pharmatwin:test-plc;s=<map>.<tag>``, :func:`node_id_of`) and variant
type (:func:`python_value`, :func:`fitting`), and has the properties ``0:EngineeringUnits``
(EUInformation with the tag's UNECE code where it has one, :data:`UNECE_UNITS`; ``UnitId`` -1
where none) and, where the tag has limits, ``0:EURange`` (:func:`add_properties`).
"""

from __future__ import annotations

import math
from datetime import UTC, datetime
from typing import Any, cast

from asyncua import Node, ua

from controller.tags import OPCUA_INT_RANGE, Tag

NAMESPACE = "urn:pharmatwin:test-plc"
#: Where an EUInformation's UnitId comes from (OPC UA Part 8 §5.6.3).
CEFACT = "http://www.opcfoundation.org/UA/units/un/cefact"
#: Our units -> (UNECE Recommendation 20 common code, its name). Units without a code (ratios
#: such as g/g, bit masks, composite units) get UnitId -1 and only their DisplayName.
UNECE_UNITS: dict[str, tuple[str, str]] = {
    "degC": ("CEL", "degree Celsius"),
    "K": ("KEL", "kelvin"),
    "%": ("P1", "percent"),
    "1/h": ("H10", "reciprocal hour"),
    "1/s": ("C97", "reciprocal second"),
    "h": ("HUR", "hour"),
    "L": ("LTR", "litre"),
    "L/h": ("E32", "litre per hour"),
    "Torr": ("UA", "torr"),
    "cm": ("CMT", "centimetre"),
    "um": ("4H", "micrometre (micron)"),
    "g/L": ("GL", "gram per litre"),
    "mol/L": ("C38", "mole per litre"),
    "kJ/h": ("P20", "kilojoule per hour"),
    "count": ("C62", "one"),
    "-": ("C62", "one"),
}


def status_code(name: str) -> ua.StatusCode:
    return ua.StatusCode(ua.UInt32(getattr(ua.StatusCodes, name)))


def request_type(service: str) -> ua.NodeId:
    """The type id of a service's request (``Read``: ReadRequest_Encoding_DefaultBinary)."""
    return ua.NodeId(ua.Int32(getattr(ua.ObjectIds, f"{service}Request_Encoding_DefaultBinary")))


GOOD = status_code("Good")
OUT_OF_RANGE = status_code("BadOutOfRange")
COMMUNICATION = status_code("BadCommunicationError")
SENSOR_FAILURE = status_code("BadSensorFailure")
ACCESS_DENIED = status_code("BadUserAccessDenied")
NOT_WRITABLE = status_code("BadNotWritable")


def engineering_units(unit: str) -> ua.EUInformation:
    """The EUInformation of ``unit``: its UNECE code as UnitId (Part 8 §5.6.3), else -1."""
    code, name = UNECE_UNITS.get(unit, ("", unit))
    unit_id = int.from_bytes(code.encode("ascii"), "big") if code else -1
    return ua.EUInformation(
        NamespaceUri=CEFACT if code else "",
        UnitId=unit_id,
        DisplayName=ua.LocalizedText(unit),
        Description=ua.LocalizedText(name),
    )


async def add_properties(node: Node, tag: Tag) -> None:
    """EngineeringUnits, and EURange where the tag has limits (OPC UA Part 8 §5.3.2)."""
    auto_id = ua.NodeId(ua.Int32(0), node.nodeid.NamespaceIndex)  # the server numbers it
    await node.add_property(
        auto_id,
        ua.QualifiedName("EngineeringUnits", 0),
        engineering_units(tag.unit),
        ua.VariantType.ExtensionObject,
        ua.NodeId(ua.Int32(ua.ObjectIds.EUInformation)),
    )
    if tag.limits is not None:
        await node.add_property(
            auto_id,
            ua.QualifiedName("EURange", 0),
            ua.Range(Low=float(tag.limits[0]), High=float(tag.limits[1])),
            ua.VariantType.ExtensionObject,
            ua.NodeId(ua.Int32(ua.ObjectIds.Range)),
        )


def node_id_of(name: str, tag: Tag) -> ua.NodeId | None:
    """The tag's node id in the server's namespace (index 2), from ``ns=2;...`` or
    ``nsu=<NAMESPACE>;...``; ValueError naming the tag for another namespace."""
    spec = tag.opcua
    if spec is None or spec.node_id is None:
        return None
    node = ua.NodeId.from_string(spec.node_id)
    uri = getattr(node, "NamespaceUri", None)
    if uri:
        if uri != NAMESPACE:
            raise ValueError(
                f"tag {name!r}: node id {spec.node_id!r} names the namespace {uri!r}; the HIL "
                f"server's is {NAMESPACE!r}"
            )
        return ua.NodeId(node.Identifier, ua.Int16(2), node.NodeIdType)
    return ua.NodeId(node.Identifier, node.NamespaceIndex, node.NodeIdType)


def stamped(item: ua.WriteValue) -> ua.WriteValue:
    """A Value write with a SourceTimestamp (the client's, else now) and ServerTimestamp now.

    ``item`` is one item of a decoded client request, owned by the request being served: it
    is stamped in place (no copies per item)."""
    dv = item.Value
    if item.AttributeId != ua.AttributeIds.Value or dv is None:
        return item
    now = cast(ua.DateTime, datetime.now(UTC))
    dv.SourceTimestamp = dv.SourceTimestamp or now
    dv.ServerTimestamp = now
    return item


def variant_value(item: ua.WriteValue) -> Any:
    variant = item.Value.Value if item.Value is not None else None
    return None if variant is None else variant.Value


def communication_error() -> ua.DataValue:
    now = cast(ua.DateTime, datetime.now(UTC))
    return ua.DataValue(StatusCode=COMMUNICATION, ServerTimestamp=now)


def ours(items: list[Any]) -> bool:
    return any(item.NodeId.NamespaceIndex == 2 for item in items)


def python_value(value: float, vtype: ua.VariantType) -> bool | int | float:
    if vtype == ua.VariantType.Boolean:
        return bool(value)
    if vtype in (ua.VariantType.Float, ua.VariantType.Double):
        return float(value)
    return int(value)


def fitting(tag: str, value: float, vtype: ua.VariantType) -> bool | int | float:
    """``value`` as the node's type holds it; ValueError naming the tag if it cannot."""
    if vtype == ua.VariantType.Boolean:
        if value not in (0, 1):
            raise ValueError(f"tag {tag!r}: a Boolean node takes 0 or 1, got {value!r}")
    elif vtype.name in OPCUA_INT_RANGE:
        lo, hi = OPCUA_INT_RANGE[vtype.name]
        if not (math.isfinite(value) and lo <= round(value) <= hi):
            raise ValueError(f"tag {tag!r}: {value!r} does not fit {vtype.name} [{lo}, {hi}]")
        return round(value)
    return python_value(value, vtype)
