"""What a PLC can hold: the values a setpoint tag carries on the wire (pure, no I/O).

A Modbus register holds a float32, or an integer times ``scale`` plus ``offset``; an OPC UA
Float node a float32, an integer node an integer. A value sent there becomes the nearest one
it can hold, which may lie outside the limits the safety layer checked: float32(0.15) is
0.15000000596, and a x0.1 register turns a move of +0.26 into +0.3. :func:`grid_for` gives the
safety layer, per input, the value the PLC will hold nearest to a value *within* a window
(its limits and its move window), so that what is audited and written is what the PLC holds,
inside both. :func:`resolution` is the step between neighbouring values (the site loader
refuses a setpoint register coarser than its input's move limit).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np

from controller.codecs import CodecError, DataType, decode, encode_within
from controller.ports.opcua_types import float32_within
from controller.tags import OPCUA_INT_RANGE, Tag

#: ``snap(value, lo, hi)``: the value the PLC holds nearest to ``value`` within
#: ``[lo, hi]``, or None when it can hold none there
Grid = Callable[[float, float, float], float | None]


def grid_for(name: str, tag: Tag, protocol: str) -> Grid | None:
    """The grid of setpoint tag ``name`` over ``protocol`` (None: any float64 is held as is)."""
    if protocol == "modbus" and tag.modbus is not None:
        spec = tag.modbus
        if spec.scale == 1.0 and spec.offset == 0.0 and spec.type is DataType.FLOAT64:
            return None
        if spec.scale == 1.0 and spec.offset == 0.0 and spec.type is DataType.FLOAT32:
            return float32_within  # the common register, 20x faster than encoding it

        def snap_register(value: float, lo: float, hi: float) -> float | None:
            try:
                return decode(name, spec, encode_within(name, spec, value, (lo, hi)))
            except CodecError:  # nothing the register holds lies within [lo, hi]
                return None

        return snap_register
    if protocol == "opcua" and tag.opcua is not None:
        if tag.opcua.data_type == "Float":
            return float32_within
        if tag.opcua.data_type in OPCUA_INT_RANGE:
            return _snap_integer
    return None


def resolution(name: str, tag: Tag, protocol: str, near: float) -> float:
    """The step between the values the tag holds next to ``near`` (0: as fine as float64)."""
    if protocol == "modbus" and tag.modbus is not None:
        spec = tag.modbus
        if spec.type is DataType.FLOAT32:
            return abs(spec.scale) * _float32_ulp((near - spec.offset) / spec.scale)
        if spec.type is DataType.BOOL:
            return 1.0
        return 0.0 if spec.type is DataType.FLOAT64 else abs(spec.scale)
    if protocol == "opcua" and tag.opcua is not None:
        if tag.opcua.data_type == "Float":
            return _float32_ulp(near)
        if tag.opcua.data_type in OPCUA_INT_RANGE:
            return 1.0
    return 0.0


def _float32_ulp(x: float) -> float:
    return float(np.spacing(np.float32(min(max(abs(x), 0.0), 3.0e38))))


def _snap_integer(value: float, lo: float, hi: float) -> float | None:
    """The integer nearest to ``value`` within ``[lo, hi]``."""
    candidates = (float(round(value)), float(math.floor(value)), float(math.ceil(value)))
    inside = [c for c in candidates if lo <= c <= hi]
    return min(inside, key=lambda c: abs(c - value)) if inside else None
