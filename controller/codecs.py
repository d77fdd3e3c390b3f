"""The pure Modbus register codecs: engineering value <-> 16-bit registers.

In the spirit of pymodbus's framers, these are pure functions over a register *format* (data
type, word/byte order, scale and offset: a :class:`controller.tags.ModbusSpec` is one).
Word/byte orders for multi-register values, with A the most significant byte of the value:

* ``ABCD``: big-endian words, big-endian bytes (Modbus's own order);
* ``CDAB``: words swapped (low word first), big-endian bytes in each word;
* ``BADC``: words in order, bytes swapped inside each word;
* ``DCBA``: words swapped and bytes swapped (little-endian).

For 64-bit values the same rule applies word-wise (ABCD -> AB CD EF GH). For 16-bit values
only the byte swap matters. Codecs never mutate their arguments and raise
:class:`CodecError` naming the tag, the bad value and what is allowed.
"""

from __future__ import annotations

import math
import struct
from collections.abc import Sequence
from enum import StrEnum
from typing import Protocol

from controller.errors import PharmaTwinError

__all__ = [
    "FLOAT32_MAX",
    "INT_RANGE",
    "REGISTERS",
    "CodecError",
    "DataType",
    "Order",
    "RegisterFormat",
    "decode",
    "encode",
    "encode_within",
]


class CodecError(PharmaTwinError):
    """A value cannot be encoded into, or decoded from, its registers."""


class DataType(StrEnum):
    BOOL = "bool"
    INT16 = "int16"
    UINT16 = "uint16"
    INT32 = "int32"
    UINT32 = "uint32"
    FLOAT32 = "float32"
    FLOAT64 = "float64"


class Order(StrEnum):
    ABCD = "ABCD"
    CDAB = "CDAB"
    BADC = "BADC"
    DCBA = "DCBA"


#: Registers per data type; struct format (big-endian) for each.
REGISTERS = {
    DataType.BOOL: 1,
    DataType.INT16: 1,
    DataType.UINT16: 1,
    DataType.INT32: 2,
    DataType.UINT32: 2,
    DataType.FLOAT32: 2,
    DataType.FLOAT64: 4,
}
_FORMAT = {
    DataType.INT16: ">h",
    DataType.UINT16: ">H",
    DataType.INT32: ">i",
    DataType.UINT32: ">I",
    DataType.FLOAT32: ">f",
    DataType.FLOAT64: ">d",
}
INT_RANGE = {
    DataType.INT16: (-(2**15), 2**15 - 1),
    DataType.UINT16: (0, 2**16 - 1),
    DataType.INT32: (-(2**31), 2**31 - 1),
    DataType.UINT32: (0, 2**32 - 1),
}
#: Largest finite float32.
FLOAT32_MAX = 3.4028234663852886e38


class RegisterFormat(Protocol):
    """How one value sits in its registers (a ``ModbusSpec`` is one)."""

    @property
    def type(self) -> DataType: ...

    @property
    def order(self) -> Order: ...

    @property
    def scale(self) -> float: ...

    @property
    def offset(self) -> float: ...

    @property
    def count(self) -> int: ...


def _bytes_to_registers(data: bytes, order: Order) -> list[int]:
    """Big-endian bytes of a value -> registers in the wire order of ``order``."""
    words = [data[i : i + 2] for i in range(0, len(data), 2)]
    if order in (Order.BADC, Order.DCBA):
        words = [w[::-1] for w in words]
    if order in (Order.CDAB, Order.DCBA):
        words = words[::-1]
    return [int.from_bytes(w, "big") for w in words]


def _registers_to_bytes(registers: Sequence[int], order: Order) -> bytes:
    words = [int(r).to_bytes(2, "big") for r in registers]
    if order in (Order.CDAB, Order.DCBA):
        words = words[::-1]
    if order in (Order.BADC, Order.DCBA):
        words = [w[::-1] for w in words]
    return b"".join(words)


def encode(tag_name: str, spec: RegisterFormat, value: float) -> list[int]:
    """Engineering value -> registers (or ``[0|1]`` for a bool) in wire order.

    raw = (value - offset) / scale; integer types round to nearest and must fit their range.
    Raises CodecError naming the tag, the value and the allowed range.
    """
    if not math.isfinite(value):
        raise CodecError(f"tag {tag_name!r}: cannot encode non-finite value {value!r}")
    if spec.type is DataType.BOOL:
        if value not in (0, 1):
            raise CodecError(f"tag {tag_name!r}: bool value must be 0 or 1, got {value!r}")
        return [int(value)]
    raw = (value - spec.offset) / spec.scale
    if spec.type in INT_RANGE:
        lo, hi = INT_RANGE[spec.type]
        rounded = round(raw)
        if not lo <= rounded <= hi:
            allowed = (lo * spec.scale + spec.offset, hi * spec.scale + spec.offset)
            raise CodecError(
                f"tag {tag_name!r}: value {value!r} gives raw {rounded}, outside {spec.type} "
                f"[{lo}, {hi}]; allowed engineering range [{min(allowed)}, {max(allowed)}]"
            )
        data = struct.pack(_FORMAT[spec.type], rounded)
    else:
        if spec.type is DataType.FLOAT32 and abs(raw) > FLOAT32_MAX:
            raise CodecError(f"tag {tag_name!r}: value {value!r} overflows float32")
        data = struct.pack(_FORMAT[spec.type], raw)
    return _bytes_to_registers(data, spec.order)


def encode_within(
    tag_name: str, spec: RegisterFormat, value: float, limits: tuple[float, float] | None
) -> list[int]:
    """Like :func:`encode`, but the value on the wire never leaves ``limits``.

    A limit may not be representable (0.3 in float32 is 0.30000001, a scaled integer rounds):
    then the nearest representable value inside the limits is sent instead.
    """
    registers = encode(tag_name, spec, value)
    if limits is None or spec.type is DataType.BOOL:
        return registers
    lo, hi = limits
    if lo <= decode(tag_name, spec, registers) <= hi:
        return registers
    raw = (value - spec.offset) / spec.scale
    for c in sorted(_raw_candidates(spec.type, raw), key=lambda c: abs(c - raw)):
        regs = encode(tag_name, spec, c * spec.scale + spec.offset)
        if lo <= decode(tag_name, spec, regs) <= hi:
            return regs
    raise CodecError(
        f"tag {tag_name!r}: no {spec.type} value near {value!r} lies within {[lo, hi]}"
    )


def _raw_candidates(type_: DataType, raw: float) -> list[float]:
    """The representable raw values of ``type_`` next to ``raw``."""
    if type_ in INT_RANGE:
        return [float(math.floor(raw)), float(math.ceil(raw))]
    if type_ is DataType.FLOAT32:
        f = struct.unpack(">f", struct.pack(">f", raw))[0]
        return [f, *(_float32_neighbours(f))]
    return [math.nextafter(raw, -math.inf), math.nextafter(raw, math.inf)]


def _float32_neighbours(f: float) -> list[float]:
    """The float32 values just below and just above ``f`` (itself a float32)."""
    (bits,) = struct.unpack(">i", struct.pack(">f", f))
    out = []
    for step in (-1, 1):
        (g,) = struct.unpack(">f", struct.pack(">i", bits + step))
        out.append(g)
    return out


def decode(tag_name: str, spec: RegisterFormat, registers: Sequence[int]) -> float:
    """Registers in wire order (or one bit) -> engineering value (raw * scale + offset)."""
    if len(registers) != spec.count:
        raise CodecError(
            f"tag {tag_name!r}: {spec.type} needs {spec.count} register(s), got {len(registers)}"
        )
    if spec.type is DataType.BOOL:
        return 1.0 if registers[0] else 0.0
    bad = [r for r in registers if not 0 <= int(r) <= 0xFFFF]
    if bad:
        raise CodecError(f"tag {tag_name!r}: register values must be 0..65535, got {bad}")
    (raw,) = struct.unpack(_FORMAT[spec.type], _registers_to_bytes(registers, spec.order))
    return float(raw) * spec.scale + spec.offset
