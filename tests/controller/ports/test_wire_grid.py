"""What reaches the PLC stays inside the controller's limits and move limits.

A register or node holds only some values: float32(0.3) is 0.30000001, a x0.1 integer
register turns +0.26 into +0.3. The safety layer checked the value it was given, and the port
kept the wire value within the *tag's* limits only: over Modbus a x0.1 register moved 15 %
more than max_move every cycle, and the PLC held 10.3 under a controller limit of 10.27; over
OPC UA a Float node at the controller's upper limit 0.3 was sent as 0.30000001, which the PLC
refused (a PLC that does not check would have stored it). Each test first shows the hazard
without the setpoint grid, then that with it (:func:`controller.ports.wire.grid_for`, which
:func:`controller.runtime.wiring.build_pipeline` gives the safety layer) the PLC holds a value
inside both. Real servers on 127.0.0.1.

The OPC UA port itself keeps a Float node's value inside the TAG's limits (as the Modbus codec
does for a float32 register): a publication or an advisory value at a tag limit, which no
safety layer rounds, was refused the same way.
"""

from __future__ import annotations

import itertools
import shutil
from pathlib import Path

import pytest
import yaml
from conftest import LOOPBACK, free_port
from hypothesis import assume, given
from hypothesis import strategies as st

from controller.clock import RealClock, SteppedClock
from controller.codecs import CodecError, DataType, decode, encode_within
from controller.core.safety import InputLimit, SafetyFilter
from controller.errors import ConfigError
from controller.ports.base import WriteStatus
from controller.ports.modbus import ModbusPort
from controller.ports.opcua import OpcUaPort
from controller.ports.settings import Backoff, Connection, ModbusOptions, OpcUaOptions
from controller.ports.wire import grid_for
from controller.runtime.site import load_site
from controller.tags import TagMap
from hil.servers.modbus import ModbusPlcServer
from hil.servers.opcua import OpcUaPlcServer

ROOT = Path(__file__).resolve().parents[3]
SCALED = TagMap.model_validate(
    {
        "name": "t",
        "tags": {
            "temp_sp": {
                "unit": "degC",
                "direction": "read_write",
                "binds": "T",
                "limits": [0.0, 100.0],
                "modbus": {"table": "holding", "address": 0, "type": "int16", "scale": 0.1},
            }
        },
    }
)


def _float_node(upper: float) -> TagMap:
    return TagMap.model_validate(
        {
            "name": "t",
            "tags": {
                "pressure_sp": {
                    "unit": "Torr",
                    "direction": "read_write",
                    "binds": "Pch",
                    "limits": [0.05, upper],
                    "opcua": {"node_id": "ns=2;s=t.pressure_sp", "data_type": "Float"},
                }
            },
        }
    )


FLOAT_NODE = _float_node(0.3)  # the tag's limit is the controller's
WIDE_FLOAT_NODE = _float_node(0.5)  # the controller's limit (0.3) is inside the tag's
BACKOFF = Backoff(initial_s=0.2, factor=2.0, max_s=1.0)


def _modbus(port: int) -> Connection:
    options = ModbusOptions.model_validate({})
    return Connection(
        protocol="modbus", host=LOOPBACK, port=port, timeout_s=1.0, backoff=BACKOFF, modbus=options
    )


async def _moves_on_the_wire(limit: InputLimit, cycles: int) -> list[float]:
    """The values the PLC holds after each cycle of a safety filter asking for far above."""
    safety = SafetyFilter({"T": limit})
    safety.reset({"T": 10.0})
    held = [10.0]
    async with ModbusPlcServer(SCALED) as server:
        server.set_value("temp_sp", 10.0)
        async with ModbusPort(SCALED, _modbus(server.port), SteppedClock(0.0)) as port:
            for _ in range(cycles):
                value = safety.step({"T": 40.0}, solve_ok=True).setpoints["T"]
                result = (await port.write({"temp_sp": value})).results["temp_sp"]
                assert result.status is WriteStatus.OK and result.readback is not None
                held.append(server.value("temp_sp"))
                safety.reset({"T": result.readback})  # what the PLC has: the next origin
    return [b - a for a, b in itertools.pairwise(held)]


async def test_a_scaled_register_never_moves_more_than_max_move() -> None:
    grid = grid_for("temp_sp", SCALED.tags["temp_sp"], "modbus")
    assert grid is not None
    hazard = await _moves_on_the_wire(InputLimit("T", 0.0, 50.0, 0.26), 3)
    assert all(m == pytest.approx(0.3) for m in hazard)  # 15 % over max_move, every cycle
    moves = await _moves_on_the_wire(InputLimit("T", 0.0, 50.0, 0.26, grid=grid), 3)
    assert all(m == pytest.approx(0.2) for m in moves), moves  # the register's step inside


async def test_a_scaled_register_never_goes_past_the_controllers_limit() -> None:
    grid = grid_for("temp_sp", SCALED.tags["temp_sp"], "modbus")
    for limit, expected in ((InputLimit("T", 0.0, 10.27, 1.0), 10.3),
                            (InputLimit("T", 0.0, 10.27, 1.0, grid=grid), 10.2)):  # fmt: skip
        safety = SafetyFilter({"T": limit})
        safety.reset({"T": 10.0})
        value = safety.step({"T": 40.0}, solve_ok=True).setpoints["T"]
        async with ModbusPlcServer(SCALED) as server:
            async with ModbusPort(SCALED, _modbus(server.port), SteppedClock(0.0)) as port:
                await port.write({"temp_sp": value})
            assert server.value("temp_sp") == pytest.approx(expected)


def _opcua(number: int) -> Connection:
    return Connection(
        protocol="opcua",
        host=LOOPBACK,
        port=number,
        timeout_s=2.0,
        backoff=BACKOFF,
        opcua=OpcUaOptions(),
    )


async def test_a_float_node_at_the_controllers_upper_limit_is_written_inside_it(
    tmp_path: Path,
) -> None:
    """The controller's limit 0.3 inside the tag's 0.5: only the setpoint grid keeps the node
    at or below 0.3 (the port keeps it inside the tag's limits, which 0.30000001 is)."""
    tags = WIDE_FLOAT_NODE
    grid = grid_for("pressure_sp", tags.tags["pressure_sp"], "opcua")
    assert grid is not None
    number = free_port()
    initial = {"pressure_sp": 0.1}
    async with (
        OpcUaPlcServer(tags, number, initial=initial, shelf=tmp_path, roles=None) as server,
        OpcUaPort(tags, _opcua(number), RealClock()) as port,
    ):
        outcomes = []
        for limit in (
            InputLimit("Pch", 0.05, 0.3, 1.0),
            InputLimit("Pch", 0.05, 0.3, 1.0, grid=grid),
        ):
            safety = SafetyFilter({"Pch": limit})
            safety.reset({"Pch": 0.1})
            value = safety.step({"Pch": 1.0}, solve_ok=True).setpoints["Pch"]
            result = (await port.write({"pressure_sp": value})).results["pressure_sp"]
            outcomes.append((value, result.status, result.readback, server.value("pressure_sp")))
    (sent, status, _, held), (on_grid, ok, readback, held_on_grid) = outcomes
    assert sent == 0.3 and status is WriteStatus.OK and held > 0.3  # float32(0.3): 0.30000001
    assert ok is WriteStatus.OK and readback == on_grid == held_on_grid and on_grid < 0.3
    assert on_grid == pytest.approx(0.3, rel=1e-7)


async def test_the_opcua_port_writes_a_float_node_inside_the_tags_limits(tmp_path: Path) -> None:
    """A value at a tag limit that float32 cannot hold (a publication, an advisory value: no
    safety grid) is written as the float32 next to it on the inside: the HIL PLC, which checks
    the tag's range, refused 0.30000001 before (REJECTED); it now holds 0.29999998."""
    number = free_port()
    initial = {"pressure_sp": 0.1}
    async with (
        OpcUaPlcServer(FLOAT_NODE, number, initial=initial, shelf=tmp_path, roles=None) as plc,
        OpcUaPort(FLOAT_NODE, _opcua(number), RealClock()) as port,
    ):
        result = (await port.write({"pressure_sp": 0.3})).results["pressure_sp"]
        held = plc.value("pressure_sp")
    assert result.status is WriteStatus.OK, result.detail
    assert held < 0.3 and held == result.readback
    assert held == pytest.approx(0.3, rel=1e-7)  # the next float32 inward


def test_a_float_node_with_no_float32_inside_its_limits_is_refused_before_sending() -> None:
    from controller.ports.opcua_types import stored, type_refusal

    assert type_refusal("Float", "p", 0.1, (0.1, 0.1)) != ""  # 0.1 is not a float32
    assert "no Float (float32) value" in type_refusal("Float", "p", 0.1, (0.1, 0.1))
    assert type_refusal("Float", "p", 0.25, (0.1, 0.3)) == ""  # 0.25 is one: sent as it is
    assert stored("Float", 0.25, (0.1, 0.3)) == 0.25
    assert stored("Double", 0.3, (0.0, 0.3)) == 0.3  # a Double node holds it exactly
    low = stored("Float", 0.7, (0.7, 1.0))  # float32(0.7) is 0.69999999: below the limit
    assert 0.7 < low == pytest.approx(0.7, rel=1e-7)
    assert stored("Float", 0.7, None) < 0.7  # no limits: the nearest float32
    assert type_refusal("Float", "p", 3.1e38, (0.0, 3.2e38)) == ""  # a float32 holds 3.1e38
    assert "overflows" in type_refusal("Float", "p", 3.5e38, (0.0, 4e38))


def _site_with(tmp_path: Path, tag_changes: dict[str, object], inputs: dict[str, object]) -> Path:
    """A copy of the CSTR Modbus site with its feed setpoint tag and input F changed."""
    for kind in ("plants", "scenarios"):
        (tmp_path / kind).symlink_to(ROOT / "configs" / kind)
    for kind, name, key, changes in (
        ("tags", "cstr.yaml", ("tags", "feed_dilution_sp"), tag_changes),
        ("controllers", "cstr.yaml", ("inputs", "F"), inputs),
    ):
        (tmp_path / kind).mkdir()
        data = yaml.safe_load((ROOT / "configs" / kind / name).read_text(encoding="utf-8"))
        data[key[0]][key[1]].update(changes)
        (tmp_path / kind / name).write_text(yaml.safe_dump(data), encoding="utf-8")
    (tmp_path / "sites").mkdir()
    site = tmp_path / "sites" / "cstr-modbus.yaml"
    shutil.copy(ROOT / "configs" / "sites" / "cstr-modbus.yaml", site)
    return site


def test_a_setpoint_register_coarser_than_the_move_limit_is_refused(tmp_path: Path) -> None:
    spec = {"table": "holding", "address": 0, "type": "int16", "scale": 1.0}
    site = _site_with(tmp_path, {"modbus": spec}, {"max_move": 0.5})
    with pytest.raises(ConfigError) as info:
        load_site(site)
    text = str(info.value)
    assert "max_move 0.5" in text and "steps of 1" in text and "allowed: max_move >= 1" in text


def test_input_limits_no_register_value_lies_in_are_refused(tmp_path: Path) -> None:
    spec = {"table": "holding", "address": 0, "type": "int16", "scale": 1.0}
    site = _site_with(tmp_path, {"modbus": spec}, {"lower": 5.2, "upper": 5.7, "max_move": 1.0})
    with pytest.raises(ConfigError) as info:
        load_site(site)
    assert "holds no value within the limits [5.2, 5.7] of input 'F'" in str(info.value)


def test_the_runtime_gives_the_safety_layer_the_setpoint_grids() -> None:
    from controller.runtime.wiring import setpoint_grids

    site = load_site(ROOT / "configs" / "sites" / "lyophilizer-modbus.yaml")
    grids = setpoint_grids(site)
    assert set(grids) == {"Tsh", "Pch"}  # both setpoints are float32 registers
    held = grids["Pch"](0.3, 0.05, 0.3)
    assert held is not None and held < 0.3 and held == pytest.approx(0.3, rel=1e-7)


@given(
    value=st.floats(-1e6, 1e6),
    lo=st.floats(-1e6, 1e6),
    width=st.floats(0.0, 10.0),
)
def test_a_float32_registers_grid_is_what_its_encoding_holds(
    value: float, lo: float, width: float
) -> None:
    """The float32 register's fast path gives what encoding the register gives (away from
    float32's subnormals, where encoding refuses values the fast path still finds)."""
    assume(all(x == 0.0 or abs(x) > 1e-30 for x in (value, lo, width)))
    register = SCALED.tags["temp_sp"].modbus
    assert register is not None
    register = register.model_copy(update={"type": DataType.FLOAT32, "scale": 1.0})
    tag = SCALED.tags["temp_sp"].model_copy(update={"modbus": register})
    fast = grid_for("temp_sp", tag, "modbus")
    assert fast is not None
    hi = lo + width
    value = min(max(value, lo), hi)
    try:
        words = encode_within("temp_sp", register, value, (lo, hi))
        encoded: float | None = decode("temp_sp", register, words)
    except CodecError:
        encoded = None
    assert fast(value, lo, hi) == encoded
