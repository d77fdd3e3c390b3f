"""The pure register codecs and tag maps: golden vectors written by hand, round trips, errors.

A is the most significant byte of the value. Every expected register list below was written
from the IEEE 754 / two's complement bytes of the value, not computed with the codec.
"""

from __future__ import annotations

import math
import struct
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from controller.codecs import CodecError, DataType, Order, decode, encode, encode_within
from controller.errors import ConfigError
from controller.tags import ModbusSpec, Table, TagMap, load_tag_map

ROOT = Path(__file__).resolve().parents[2]
TAG_FILES = sorted((ROOT / "configs" / "tags").glob("*.yaml"))
ORDERS = list(Order)


def spec(
    type_: DataType, order: Order = Order.ABCD, *, scale: float = 1.0, offset: float = 0.0
) -> ModbusSpec:
    table = Table.COIL if type_ is DataType.BOOL else Table.HOLDING
    return ModbusSpec(table=table, address=0, type=type_, order=order, scale=scale, offset=offset)


# (type, value, {order: registers}); bytes of the value: A B C D (E F G H)
GOLDEN: list[tuple[DataType, float, dict[Order, list[int]]]] = [
    # int16 -2 = 0xFFFE; a single register only swaps bytes (BADC, DCBA)
    (DataType.INT16, -2, {Order.ABCD: [0xFFFE], Order.CDAB: [0xFFFE],
                          Order.BADC: [0xFEFF], Order.DCBA: [0xFEFF]}),
    (DataType.INT16, 0x0102, {Order.ABCD: [0x0102], Order.CDAB: [0x0102],
                              Order.BADC: [0x0201], Order.DCBA: [0x0201]}),
    (DataType.UINT16, 0xABCD, {Order.ABCD: [0xABCD], Order.CDAB: [0xABCD],
                               Order.BADC: [0xCDAB], Order.DCBA: [0xCDAB]}),
    (DataType.INT32, 0x01020304, {Order.ABCD: [0x0102, 0x0304], Order.CDAB: [0x0304, 0x0102],
                                  Order.BADC: [0x0201, 0x0403], Order.DCBA: [0x0403, 0x0201]}),
    # int32 -2 = 0xFFFFFFFE
    (DataType.INT32, -2, {Order.ABCD: [0xFFFF, 0xFFFE], Order.CDAB: [0xFFFE, 0xFFFF],
                          Order.BADC: [0xFFFF, 0xFEFF], Order.DCBA: [0xFEFF, 0xFFFF]}),
    (DataType.UINT32, 0xDEADBEEF, {Order.ABCD: [0xDEAD, 0xBEEF], Order.CDAB: [0xBEEF, 0xDEAD],
                                   Order.BADC: [0xADDE, 0xEFBE], Order.DCBA: [0xEFBE, 0xADDE]}),
    # float32 1.0 = 0x3F800000, -2.5 = 0xC0200000
    (DataType.FLOAT32, 1.0, {Order.ABCD: [0x3F80, 0x0000], Order.CDAB: [0x0000, 0x3F80],
                             Order.BADC: [0x803F, 0x0000], Order.DCBA: [0x0000, 0x803F]}),
    (DataType.FLOAT32, -2.5, {Order.ABCD: [0xC020, 0x0000], Order.CDAB: [0x0000, 0xC020],
                              Order.BADC: [0x20C0, 0x0000], Order.DCBA: [0x0000, 0x20C0]}),
    # float64 1.0 = 0x3FF0000000000000
    (DataType.FLOAT64, 1.0, {Order.ABCD: [0x3FF0, 0, 0, 0], Order.CDAB: [0, 0, 0, 0x3FF0],
                             Order.BADC: [0xF03F, 0, 0, 0], Order.DCBA: [0, 0, 0, 0xF03F]}),
    # float64 pi = 0x400921FB54442D18: every byte differs
    (DataType.FLOAT64, math.pi, {
        Order.ABCD: [0x4009, 0x21FB, 0x5444, 0x2D18], Order.CDAB: [0x2D18, 0x5444, 0x21FB, 0x4009],
        Order.BADC: [0x0940, 0xFB21, 0x4454, 0x182D], Order.DCBA: [0x182D, 0x4454, 0xFB21, 0x0940],
    }),
    (DataType.BOOL, 1, {order: [1] for order in ORDERS}),
    (DataType.BOOL, 0, {order: [0] for order in ORDERS}),
]  # fmt: skip

GOLDEN_CASES = [
    pytest.param(t, v, o, regs, id=f"{t}-{v}-{o}")
    for t, v, table in GOLDEN
    for o, regs in table.items()
]


@pytest.mark.parametrize(("type_", "value", "order", "registers"), GOLDEN_CASES)
def test_encode_matches_golden_vector(
    type_: DataType, value: float, order: Order, registers: list[int]
) -> None:
    assert encode("t", spec(type_, order), value) == registers


@pytest.mark.parametrize(("type_", "value", "order", "registers"), GOLDEN_CASES)
def test_decode_matches_golden_vector(
    type_: DataType, value: float, order: Order, registers: list[int]
) -> None:
    assert decode("t", spec(type_, order), registers) == value


def test_every_type_and_order_has_golden_vectors() -> None:
    covered = {(t, o) for t, _, table in GOLDEN for o in table}
    assert covered == {(t, o) for t in DataType for o in Order}


def test_float32_pi_rounds_to_the_nearest_float32() -> None:
    s = spec(DataType.FLOAT32, Order.CDAB)
    assert encode("t", s, math.pi) == [0x0FDB, 0x4049]  # 0x40490FDB, words swapped
    assert decode("t", s, [0x0FDB, 0x4049]) == struct.unpack(">f", bytes.fromhex("40490fdb"))[0]


# --------------------------------------------------------------- scale and offset
def test_int16_scale_and_offset() -> None:
    s = spec(DataType.INT16, scale=0.1, offset=-50)
    assert encode("t", s, 20.0) == [0x02BC]  # raw (20 + 50) / 0.1 = 700
    assert encode("t", s, -60.0) == [0xFF9C]  # raw -100
    assert decode("t", s, [0x02BC]) == pytest.approx(20.0)
    assert decode("t", s, [0xFF9C]) == pytest.approx(-60.0)


def test_scaled_integers_round_to_nearest_raw() -> None:
    s = spec(DataType.UINT16, scale=0.01)
    assert encode("t", s, 1.5) == [150]
    assert encode("t", s, 1.504) == [150]
    assert encode("t", s, 1.506) == [151]


def test_scaled_range_error_names_the_engineering_range() -> None:
    s = spec(DataType.INT16, scale=0.1, offset=-50)
    with pytest.raises(CodecError, match=r"'setpoint'.*4000.*int16.*\[-3326\.8, 3226\.7"):
        encode("setpoint", s, 4000.0)


# ----------------------------------------------------------------- round trips
INT_RANGES = {
    DataType.INT16: (-(2**15), 2**15 - 1),
    DataType.UINT16: (0, 2**16 - 1),
    DataType.INT32: (-(2**31), 2**31 - 1),
    DataType.UINT32: (0, 2**32 - 1),
}


@pytest.mark.parametrize("order", ORDERS)
@pytest.mark.parametrize("type_", list(INT_RANGES))
@given(data=st.data())
def test_integers_round_trip(type_: DataType, order: Order, data: st.DataObject) -> None:
    value = data.draw(st.integers(*INT_RANGES[type_]))
    regs = encode("t", spec(type_, order), value)
    assert all(0 <= r <= 0xFFFF for r in regs)
    assert decode("t", spec(type_, order), regs) == value


@pytest.mark.parametrize("order", ORDERS)
@given(value=st.floats(width=32, allow_nan=False, allow_infinity=False))
def test_float32_round_trips_exactly(order: Order, value: float) -> None:
    s = spec(DataType.FLOAT32, order)
    assert decode("t", s, encode("t", s, value)) == value


@pytest.mark.parametrize("order", ORDERS)
@given(value=st.floats(allow_nan=False, allow_infinity=False))
def test_float64_round_trips_exactly(order: Order, value: float) -> None:
    s = spec(DataType.FLOAT64, order)
    assert decode("t", s, encode("t", s, value)) == value


@given(raw=st.integers(-(2**15), 2**15 - 1))
def test_scaled_int16_round_trips(raw: int) -> None:
    s = spec(DataType.INT16, scale=0.1, offset=-50)
    value = raw * 0.1 - 50
    assert encode("t", s, value) == encode("t", s, decode("t", s, encode("t", s, value)))
    assert decode("t", s, encode("t", s, value)) == pytest.approx(value, abs=1e-9)


# ------------------------------------------------------------------------ errors
@pytest.mark.parametrize(
    ("type_", "value"),
    [
        (DataType.INT16, 32768),
        (DataType.INT16, -32769),
        (DataType.UINT16, -1),
        (DataType.UINT16, 65536),
        (DataType.INT32, 2**31),
        (DataType.UINT32, -1),
        (DataType.FLOAT32, 1e39),
        (DataType.BOOL, 2),
        (DataType.BOOL, 0.5),
    ],
)
def test_out_of_range_values_raise_naming_the_tag(type_: DataType, value: float) -> None:
    with pytest.raises(CodecError, match="feed_rate_sp"):
        encode("feed_rate_sp", spec(type_), value)


@pytest.mark.parametrize("type_", list(DataType))
@pytest.mark.parametrize("value", [math.nan, math.inf, -math.inf])
def test_non_finite_values_are_refused(type_: DataType, value: float) -> None:
    with pytest.raises(CodecError, match="non-finite"):
        encode("t", spec(type_), value)


@pytest.mark.parametrize("type_", list(DataType))
def test_wrong_register_count_is_refused(type_: DataType) -> None:
    s = spec(type_)
    for count in (0, s.count + 1):
        with pytest.raises(CodecError, match=rf"'level'.*needs {s.count} register"):
            decode("level", s, [0] * count)


@pytest.mark.parametrize("bad", [-1, 0x10000])
def test_register_values_outside_16_bits_are_refused(bad: int) -> None:
    with pytest.raises(CodecError, match=r"0\.\.65535"):
        decode("t", spec(DataType.FLOAT32), [0, bad])


# ----------------------------------------------------------------- no mutation
@pytest.mark.parametrize("order", ORDERS)
@pytest.mark.parametrize("type_", [DataType.UINT32, DataType.FLOAT32, DataType.FLOAT64])
def test_decode_does_not_mutate_the_callers_list(type_: DataType, order: Order) -> None:
    s = spec(type_, order)
    registers = [0x0102, 0x0304, 0x0506, 0x0708][: s.count]
    before = list(registers)
    decode("t", s, registers)
    assert registers == before


@pytest.mark.parametrize("order", ORDERS)
def test_encode_returns_a_fresh_list(order: Order) -> None:
    s = spec(DataType.FLOAT64, order)
    first = encode("t", s, math.pi)
    expected = list(first)
    first.clear()
    assert encode("t", s, math.pi) == expected


# -------------------------------------------------------------------- tag maps
def test_addresses_can_count_from_one() -> None:
    one_based = ModbusSpec(table=Table.INPUT, address=11, base=1)
    assert one_based.protocol_address == ModbusSpec(table=Table.INPUT, address=10).protocol_address


@pytest.mark.parametrize("path", TAG_FILES, ids=[p.name for p in TAG_FILES])
def test_every_tag_map_loads(path: Path) -> None:
    tm = load_tag_map(path)
    assert isinstance(tm, TagMap)
    assert tm.tags


def test_tag_maps_exist() -> None:
    assert TAG_FILES


def test_overlapping_tags_are_a_config_error_naming_both(tmp_path: Path) -> None:
    path = tmp_path / "clash.yaml"
    path.write_text(
        "name: clash\n"
        "tags:\n"
        "  jacket_temp:\n"
        "    {unit: degC, direction: read, modbus: {table: input, address: 0, type: float32}}\n"
        "  jacket_flow:\n"
        "    {unit: L/h, direction: read, modbus: {table: input, address: 1, type: uint16}}\n",
        encoding="utf-8",
    )
    with pytest.raises(ConfigError) as info:
        load_tag_map(path)
    message = str(info.value)
    assert "jacket_temp" in message
    assert "jacket_flow" in message
    assert "clash.yaml" in message


@pytest.mark.parametrize(
    ("type_", "scale", "value", "limits"),
    [
        ("float32", 1.0, 0.3, (0.05, 0.3)),  # 0.3f is 0.30000001: one step down
        ("float32", 1.0, -45.3, (-45.3, 120.0)),  # a negative lower limit
        ("float32", 1.0, 0.05, (0.05, 0.3)),
        ("int16", 0.01, 0.305, (0.0, 0.305)),  # rounds to 0.31: floor instead
        ("uint16", 0.5, 10.25, (10.25, 20.0)),  # rounds to 10.0 (below): ceil instead
        ("float64", 1.0, 0.1, (0.0, 0.1)),
    ],
)
def test_encode_within_never_leaves_the_limits(
    type_: str, scale: float, value: float, limits: tuple[float, float]
) -> None:
    spec = ModbusSpec(table=Table.HOLDING, address=0, type=DataType(type_), scale=scale)
    regs = encode_within("sp", spec, value, limits)
    got = decode("sp", spec, regs)
    assert limits[0] <= got <= limits[1]
    assert abs(got - value) <= max(abs(scale), 1e-6 * max(1.0, abs(value)))


def test_encode_within_leaves_representable_values_alone() -> None:
    spec = ModbusSpec(table=Table.HOLDING, address=0, type=DataType.FLOAT32)
    assert encode_within("sp", spec, 0.25, (0.0, 0.3)) == encode("sp", spec, 0.25)
