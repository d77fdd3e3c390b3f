"""Soft sensors published as tags: validation, the Publisher's values, and the HIL servers.

The values come from a real EKF run on each model (the true plant stepped by
:class:`~hil.plant_runner.PlantRunner`); the HIL tests start the real pymodbus and asyncua
servers on 127.0.0.1, write the publications with the controller's own ports as the twin and
read them back with independent clients, while the real rig (virtual PLC) scans.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import AsyncIterator, Mapping
from pathlib import Path
from typing import Any

import pytest
import yaml
from asyncua import Client, Node, ua
from conftest import LOOPBACK, free_port
from pymodbus.client import AsyncModbusTcpClient

from controller.binding import Binding
from controller.clock import SteppedClock
from controller.codecs import DataType, decode
from controller.configfile import parse
from controller.controllerfile import load_controller
from controller.core.ekf import ExtendedKalmanFilter
from controller.core.estimate import Estimate
from controller.errors import ConfigError, PortError, Problem
from controller.ports.modbus import ModbusPort
from controller.ports.opcua import OpcUaPort
from controller.ports.settings import Connection, OpcUaOptions
from controller.runtime.site import load_site
from controller.runtime.solver_cache import LibraryCache
from controller.tags import Direction, Table, TagMap, load_tag_map
from controller.twin.publish import Publisher, Source, check_publications, source_of
from hil.plant_runner import PlantRunner
from hil.rig import HilRig
from hil.servers.modbus import ModbusPlcServer
from hil.servers.opcua import OpcUaPlcServer, opcua_server_for_site
from hil.servers.opcua_cache import address_space_shelf
from plant_models import PlantModel

pytestmark = pytest.mark.timeout(60)

ROOT = Path(__file__).resolve().parents[3]
MODELS = ("lyophilizer", "bioreactor", "crystallizer", "cstr")
TWIN, TWIN_PASSWORD = "twin", "pub-s3cret"
HMI, HMI_PASSWORD = "hmi", "hmi-s3cret"
EXTRA = {
    "alarm.active": 2.0,
    "alarm.word": 0b101,
    "maintenance.KC.time_to_threshold": 310.5,
    "maintenance.KC.low": 220.25,
    "maintenance.KC.high": 455.0,
}


def tag_map(name: str) -> TagMap:
    return load_tag_map(ROOT / "configs" / "tags" / f"{name}.yaml")


def raw_map(name: str) -> dict[str, Any]:
    data: dict[str, Any] = yaml.safe_load((ROOT / "configs/tags" / f"{name}.yaml").read_text())
    return data


def problems_of(data: Mapping[str, Any]) -> list[Problem]:
    with pytest.raises(ConfigError) as err:
        parse(TagMap, data, "tags.yaml")
    return list(err.value.problems)


# ---------------------------------------------------------------------- validation
def test_a_publication_may_not_bind_a_model_variable() -> None:
    data = raw_map("lyophilizer")
    data["tags"]["percent_dried"]["binds"] = "Lck"
    (p,) = problems_of(data)
    assert (p.location, p.value) == ("tags.percent_dried.publishes", "percent_dried")
    assert "binds the model variable 'Lck'" in p.message and "remove 'binds'" in p.message


def test_a_publication_may_not_write_into_a_tag_bound_to_a_model_input() -> None:
    data = raw_map("lyophilizer")
    sp = data["tags"]["shelf_temp_sp"]  # binds the input Tsh
    sp["publishes"] = "Lck"
    (p,) = problems_of(data)
    assert (p.location, p.value) == ("tags.shelf_temp_sp.publishes", "Lck")
    assert "needs direction 'publish'" in p.message and "not 'read_write'" in p.message
    del sp["publishes"]
    sp["direction"] = "publish"
    sp["publishes"] = "Lck"
    (p,) = problems_of(data)
    assert "binds the model variable 'Tsh'" in p.message and "never a control input" in p.message
    # a publication at the setpoint's own register and node: refused against the model
    data = raw_map("lyophilizer")
    data["tags"]["percent_dried"]["modbus"]["address"] = 0
    data["tags"]["percent_dried"]["opcua"]["node_id"] = "ns=2;s=lyophilizer.shelf_temp_sp"
    tm = parse(TagMap, data, "tags.yaml")
    _, model = load_controller(ROOT / "configs/controllers/lyophilizer.yaml")
    found = {p.location: p for p in check_publications(tm, model, ("KC", "R0"), source="t.yaml")}
    mb, ua_ = found["tags.percent_dried.modbus.address"], found["tags.percent_dried.opcua.node_id"]
    assert mb.value == 0 and ua_.value == "ns=2;s=lyophilizer.shelf_temp_sp"
    for p in (mb, ua_):
        assert "tag 'shelf_temp_sp'" in p.message and "the model input 'Tsh'" in p.message


def test_a_publication_lives_where_the_twin_can_write() -> None:
    data = raw_map("cstr")
    data["tags"]["jacket_coefficient"]["modbus"]["table"] = "input"
    (p,) = problems_of(data)
    assert (p.location, p.value) == ("tags.jacket_coefficient.publishes", "Kw")
    assert "table 'input' is written only by the PLC" in p.message and "'holding'" in p.message


def test_direction_and_publishes_go_together() -> None:
    data = raw_map("bioreactor")
    del data["tags"]["titer_estimate"]["publishes"]
    data["tags"]["biomass_estimate"]["max_rate"] = 0.1
    data["tags"]["biomass_estimate_std"]["publishes"] = "X std"
    found = {p.location: p for p in problems_of(data)}
    assert "direction 'publish' needs 'publishes'" in found["tags.titer_estimate.publishes"].message
    assert "'max_rate' applies to setpoints" in found["tags.biomass_estimate.publishes"].message
    bad = found["tags.biomass_estimate_std.publishes"]
    assert bad.value == "X std" and "'<name>.std'" in bad.message


def test_unknown_publications_name_the_key_the_value_and_the_allowed_names() -> None:
    data = raw_map("cstr")
    data["tags"]["conc_b_estimate"]["publishes"] = "C_c"  # no such state
    data["tags"]["conc_b_estimate_std"]["publishes"] = "k0_ab.std"  # a fixed parameter
    data["tags"]["maintenance_kw_hours"]["publishes"] = "maintenance.A_R.time_to_threshold"
    data["tags"]["feed_conc_a_estimate"]["publishes"] = "T_in"  # a parameter not estimated
    tm = parse(TagMap, data, "cstr.yaml")
    cfg, model = load_controller(ROOT / "configs/controllers/cstr.yaml")
    problems = check_publications(tm, model, cfg.estimator.parameters, source="cstr.yaml")
    found = {p.location: p for p in problems}
    assert set(found) == {
        "tags.conc_b_estimate.publishes",
        "tags.conc_b_estimate_std.publishes",
        "tags.maintenance_kw_hours.publishes",
        "tags.feed_conc_a_estimate.publishes",
    }
    p = found["tags.conc_b_estimate.publishes"]
    assert p.file == "cstr.yaml" and p.value == "C_c"
    for allowed in ("states ['C_a', 'C_b', 'T_R', 'T_K']", "estimated parameters ['Kw', 'C_A0']"):
        assert allowed in p.message
    assert "'selectivity_b'" in p.message and "'<state or estimated parameter>.std'" in p.message
    assert "maintenance.<param>.time_to_threshold" in p.message and "alarm.word" in p.message
    # the twin-intelligence names computed at a site, when known, are the only ones allowed
    only = check_publications(tag_map("cstr"), model, ("Kw", "C_A0"), {"alarm.word"}, "c.yaml")
    assert {p.value for p in only} == {
        "alarm.active",
        "maintenance.Kw.time_to_threshold",
        "maintenance.Kw.low",
        "maintenance.Kw.high",
    }
    assert "twin-intelligence values ['alarm.word']" in only[0].message


def test_a_publication_is_written_by_the_twin_and_never_read_as_an_input() -> None:
    for name in MODELS:
        tm = tag_map(name)
        _, model = load_controller(ROOT / "configs/controllers" / f"{name}.yaml")
        published = set(tm.publication_tags())
        assert published, name
        for tag in published:
            t = tm.tags[tag]
            assert t.direction is Direction.PUBLISH and t.binds is None
            assert t.writable and not t.readable  # the supervisor reads only readable tags
            assert t.modbus is not None and t.modbus.table is Table.HOLDING
            assert t.modbus.protocol_address >= 100
            assert t.opcua is not None and t.opcua.node_id == f"ns=2;s={name}.{tag}"
        binding = Binding.of(tm, model)
        assert not published & set(binding.measurement_tags())
        assert not published & set(binding.reading_tags().values())
        assert not published & {binding.setpoint_tag(i) for i in model.input_names}


# ---------------------------------------------------------------------- shipped maps
@pytest.mark.parametrize("name", MODELS)
def test_every_shipped_map_publishes_cleanly_for_its_model(name: str) -> None:
    tm = tag_map(name)
    cfg, model = load_controller(ROOT / "configs/controllers" / f"{name}.yaml")
    source = f"configs/tags/{name}.yaml"
    assert check_publications(tm, model, cfg.estimator.parameters, source=source) == []
    for site in ("modbus", "opcua"):
        assert load_site(ROOT / "configs/sites" / f"{name}-{site}.yaml").tags == tm
    if name == "crystallizer":  # states and expressions only: whatever it estimates
        assert check_publications(tm, model, (), source=source) == []
        assert {source_of(n, model, ()) for n in tm.publication_tags().values()} <= {
            Source.STATE,
            Source.EXPRESSION,
            Source.EXTRA,
        }
    assert Publisher(tm, model, cfg.estimator.parameters).names() == tm.publication_tags()


# ---------------------------------------------------------------------- values
def ekf_run(name: str, samples: int = 3) -> tuple[PlantModel, tuple[str, ...], Estimate]:
    """An EKF on the controller's model after ``samples`` samples of the true plant (its
    estimated parameters 10 % off the model's)."""
    cfg, model = load_controller(ROOT / "configs/controllers" / f"{name}.yaml")
    ekf = ExtendedKalmanFilter(model, cfg.estimator, cfg.sample_time, compile=LibraryCache())
    plant = PlantRunner(model, cfg.sample_time)
    plant.set_parameters({p: 1.1 * model.parameters[p] for p in cfg.estimator.parameters})
    u = model.nominal_inputs
    estimate = ekf.update(None, plant.measure())
    for _ in range(samples):
        plant.advance(u)
        estimate = ekf.update(u, plant.measure())
    return model, tuple(cfg.estimator.parameters), estimate


@pytest.mark.parametrize("name", MODELS)
def test_values_from_a_real_ekf_estimate(name: str) -> None:
    model, estimated, est = ekf_run(name)
    u = model.nominal_inputs
    tm = tag_map(name)
    publisher = Publisher(tm, model, estimated)
    extra = {k.replace("KC", "Kw") if name == "cstr" else k: v for k, v in EXTRA.items()}
    pub = publisher.publication(est, u, extra)
    assert pub.clipped == {} and pub.omitted == {}
    assert publisher.values(est, u, extra) == pub.values
    assert set(pub.values) == set(tm.publication_tags())
    z = dict(est.algebraic) or None
    expr = model.evaluate(x=est.states, u=u, z=z, p=est.parameters).expressions
    if publisher._evaluate is not None:  # the buffered evaluation: the same bits
        assert publisher._expressions(est, u) == (expr, "")
    std = {f"{k}.std": v for k, v in {**est.state_std, **est.parameter_std}.items()}
    where = {
        Source.STATE: est.states,
        Source.PARAMETER: est.parameters,
        Source.STD: std,
        Source.EXPRESSION: expr,
        Source.EXTRA: extra,
    }
    for tag, what in tm.publication_tags().items():
        expected = where[source_of(what, model, estimated)][what]  # type: ignore[index]
        assert pub.values[tag] == pytest.approx(expected, rel=1e-12), tag
    v, s, p = pub.values, est.states, est.parameters
    if name == "lyophilizer":
        assert 0 < s["Lck"] < 0.5 and v["drying_front_position"] == s["Lck"]
        lpr0 = float(model.lpr0(p))  # type: ignore[attr-defined]
        assert v["percent_dried"] == pytest.approx(100 * s["Lck"] / lpr0, rel=1e-9)
        kv = p["KC"] + p["KP"] * u["Pch"] / (1 + p["KD"] * u["Pch"])
        assert v["vial_heat_transfer_coeff"] == pytest.approx(kv, rel=1e-9)
        assert v["vial_contact_coeff"] == p["KC"] != model.parameters["KC"]  # estimated
        rp = p["R0"] + p["A1"] * s["Lck"] / (1 + p["A2"] * s["Lck"])
        assert v["cake_resistance"] == pytest.approx(rp, rel=1e-9)
        assert v["maintenance_kc_hours_low"] == 220.25 and v["drift_alarm_word"] == 5
    elif name == "bioreactor":
        assert v["titer_estimate"] == s["P"] and v["biomass_estimate"] == s["X"]
        assert v["titer_estimate_std"] == est.state_std["P"] > 0
    elif name == "crystallizer":
        size = s["mu1"] / s["mu0"]  # the seeds' number-mean size; fines are not product
        assert v["mean_crystal_size"] == pytest.approx(size, rel=1e-12)
        assert v["fines_volume"] == s["mu3n"]
    else:
        assert v["conc_b_estimate"] == s["C_b"] and v["jacket_coefficient"] == p["Kw"]
        assert v["jacket_coefficient_std"] == est.parameter_std["Kw"] > 0
        assert v["maintenance_kw_hours"] == 310.5


def _lyo_estimate(**states: float) -> Estimate:
    return Estimate(
        states={"Lck": 0.2, **states},
        parameters=dict(LYO_MODEL.parameters),
        state_std={"Lck": math.nan},
        parameter_std={"KC": 1e-5, "R0": 0.1},
        innovation={},
        algebraic={"Tsub": -35.0},
    )


LYO_CFG, LYO_MODEL = load_controller(ROOT / "configs/controllers/lyophilizer.yaml")


def test_values_are_clipped_to_the_limits_and_non_finite_ones_are_never_written() -> None:
    publisher = Publisher(tag_map("lyophilizer"), LYO_MODEL, ("KC", "R0"))
    extra = {
        "alarm.active": 3.0,
        "alarm.word": 2.0**40,  # more alarms than the uint32 holds
        "maintenance.KC.time_to_threshold": math.inf,  # nothing drifts: never
        "maintenance.KC.low": -5.0,
        "maintenance.KC.high": math.nan,
    }
    u = LYO_MODEL.nominal_inputs
    pub = publisher.publication(_lyo_estimate(Lck=7.0), u, extra)
    assert pub.clipped == {
        "drying_front_position": (7.0, 5.0),
        "drift_alarm_word": (2.0**40, 4294967295.0),
        "maintenance_kc_hours": (math.inf, 100000.0),
        "maintenance_kc_hours_low": (-5.0, 0.0),
    }
    assert pub.values["percent_dried"] == 100.0  # the model's own fmin, not a clip
    assert set(pub.omitted) == {"drying_front_position_std", "maintenance_kc_hours_high"}
    assert "'Lck.std' is not a number" in pub.omitted["drying_front_position_std"]
    assert all(math.isfinite(v) for v in pub.values.values())
    assert not set(pub.omitted) & set(pub.values)
    lines = pub.problems()
    assert "drying_front_position: computed 7.0, clipped to 5.0" in lines
    assert any(line.startswith("maintenance_kc_hours_high: not published") for line in lines)
    # no inputs: the expressions cannot be evaluated; nothing else suffers
    pub = publisher.publication(_lyo_estimate(), {}, None)
    expressions = {"percent_dried", "vial_heat_transfer_coeff", "cake_resistance"}
    assert expressions | {"drift_alarm_count"} <= set(pub.omitted)
    assert "could not be evaluated" in pub.omitted["percent_dried"]
    assert "has no value this cycle" in pub.omitted["drift_alarm_count"]
    assert pub.values["drying_front_position"] == 0.2


def test_integer_boolean_and_unlimited_tags() -> None:
    data = raw_map("lyophilizer")
    tags = data["tags"]
    tags["drift_alarm_count"]["modbus"] = {"table": "coil", "address": 5, "type": "bool"}
    tags["drift_alarm_count"]["opcua"]["data_type"] = "Boolean"
    tags["maintenance_kc_hours"]["opcua"]["data_type"] = "UInt16"
    del tags["maintenance_kc_hours"]["limits"]
    del tags["maintenance_kc_hours_low"]["limits"]
    publisher = Publisher(parse(TagMap, data, "t.yaml"), LYO_MODEL, ("KC", "R0"))
    extra = {
        "alarm.active": 3.0,
        "maintenance.KC.time_to_threshold": 70000.6,
        "maintenance.KC.low": math.inf,
    }
    pub = publisher.publication(_lyo_estimate(), LYO_MODEL.nominal_inputs, extra)
    assert pub.values["drift_alarm_count"] == 1.0 and "drift_alarm_count" not in pub.clipped
    assert pub.values["maintenance_kc_hours"] == 65535.0  # the node's UInt16 holds no more
    assert "+inf and the tag has no upper limit" in pub.omitted["maintenance_kc_hours_low"]
    extra["maintenance.KC.time_to_threshold"] = 1234.4
    pub = publisher.publication(_lyo_estimate(), LYO_MODEL.nominal_inputs, extra)
    assert pub.values["maintenance_kc_hours"] == 1234.0  # an integer node takes integers


# ---------------------------------------------------------------------- HIL servers
LYO_TAGS = tag_map("lyophilizer")
PUBLISHED = LYO_TAGS.publication_tags()


@pytest.fixture(scope="module")
def shelf(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return asyncio.run(address_space_shelf(tmp_path_factory.mktemp("publish-shelf")))


@pytest.fixture
async def rig(shelf: Path) -> AsyncIterator[HilRig]:
    """The lyophilizer's true plant and virtual PLC behind a Modbus and an OPC UA server."""
    site = load_site(ROOT / "configs/sites/lyophilizer-modbus.yaml")
    modbus = ModbusPlcServer(site.tags, free_port())
    opcua = OpcUaPlcServer(
        site.tags,
        free_port(),
        shelf=shelf,
        users={TWIN: TWIN_PASSWORD, HMI: HMI_PASSWORD},
        allow_anonymous=False,
        publishers={TWIN},
    )
    async with modbus, opcua:
        hil = HilRig(site, SteppedClock(0.0), [modbus, opcua])
        await hil.scan()
        yield hil


def _publications() -> dict[str, float]:
    model, estimated, estimate = ekf_run("lyophilizer", samples=1)
    return Publisher(LYO_TAGS, model, estimated).values(estimate, model.nominal_inputs, EXTRA)


async def _independent_modbus(port: int) -> dict[str, float]:
    client = AsyncModbusTcpClient(LOOPBACK, port=port, retries=0, reconnect_delay=0)
    await client.connect()
    try:
        out = {}
        for tag in PUBLISHED:
            spec = LYO_TAGS.tags[tag].modbus
            assert spec is not None
            answer = await client.read_holding_registers(spec.protocol_address, count=spec.count)
            assert not answer.isError(), tag
            out[tag] = decode(tag, spec, answer.registers)
        return out
    finally:
        client.close()


def _opcua_client(server: OpcUaPlcServer, user: str, password: str) -> Client:
    client = Client(server.url, timeout=3)
    client.set_user(user)
    client.set_password(password)
    return client


async def _independent_opcua(server: OpcUaPlcServer) -> dict[str, float]:
    async with _opcua_client(server, HMI, HMI_PASSWORD) as client:
        nodes = [client.get_node(server.node_id(t)) for t in PUBLISHED]
        values = await client.read_values(nodes)
    return {t: float(v) for t, v in zip(PUBLISHED, values, strict=True)}


async def test_the_twin_publishes_over_both_protocols_and_the_plc_leaves_them_alone(
    rig: HilRig,
) -> None:
    modbus, opcua = rig.servers
    assert isinstance(modbus, ModbusPlcServer) and isinstance(opcua, OpcUaPlcServer)
    values = _publications()
    assert set(values) == set(PUBLISHED)
    mb_conn = Connection(protocol="modbus", host=LOOPBACK, port=modbus.port)
    ua_conn = Connection(
        protocol="opcua",
        host=LOOPBACK,
        port=opcua.port,
        timeout_s=3.0,
        opcua=OpcUaOptions(username=TWIN, password_env="PHARMATWIN_TEST_TWIN"),
    )
    mb_port = ModbusPort(LYO_TAGS, mb_conn, rig.clock)
    ua_port = OpcUaPort(LYO_TAGS, ua_conn, rig.clock, password=TWIN_PASSWORD)
    async with mb_port, ua_port:
        for port in (mb_port, ua_port):
            report = await port.write(values)
            assert report.ok, report.failed()
            with pytest.raises(PortError, match="write-only"):
                await port.read(["percent_dried"])  # never an input of the twin
    before = (rig.vplc.mode, len(rig.vplc.events))
    for k in range(1, 4):  # PLC scans: the image is published to both servers
        rig.clock.advance_to(60.0 * k)  # type: ignore[attr-defined]
        await rig.scan()
    measured, bad = rig.measured
    assert not set(rig.vplc.image(measured, bad, rig.applied)) & set(PUBLISHED)
    assert (rig.vplc.mode, len(rig.vplc.events)) == before  # no refusal, no mode change
    recipe = rig.vplc.local_recipe
    assert recipe is not None and rig.applied == dict(recipe(rig.t_model))  # its own control
    for tag in PUBLISHED:
        assert rig.vplc.check_write(tag, values[tag]) is None
    read_mb, read_ua = await _independent_modbus(modbus.port), await _independent_opcua(opcua)
    for tag, value in values.items():
        spec = LYO_TAGS.tags[tag].modbus
        assert spec is not None
        rel = 1e-6 if spec.type is DataType.FLOAT32 else 0
        assert read_mb[tag] == pytest.approx(value, rel=rel), tag
        assert read_ua[tag] == pytest.approx(value, rel=1e-12), tag


async def _can_write(node: Node, attribute: ua.AttributeIds) -> bool:
    """Whether the CurrentWrite bit is set in the node's (User)AccessLevel, as read."""
    variant = (await node.read_attribute(attribute)).Value
    assert variant is not None
    assert ua.ua_binary.test_bit(variant.Value, ua.AccessLevel.CurrentRead)
    return bool(ua.ua_binary.test_bit(variant.Value, ua.AccessLevel.CurrentWrite))


async def test_only_the_twin_may_write_publications_over_opcua(rig: HilRig) -> None:
    opcua = rig.servers[1]
    assert isinstance(opcua, OpcUaPlcServer)
    node_id = opcua.node_id("percent_dried")
    variant = ua.Variant(42.0, ua.VariantType.Double)
    user_level, level = ua.AttributeIds.UserAccessLevel, ua.AttributeIds.AccessLevel
    async with _opcua_client(opcua, HMI, HMI_PASSWORD) as hmi:
        node = hmi.get_node(node_id)
        with pytest.raises(ua.UaStatusCodeError, match="BadUserAccessDenied"):
            await node.write_value(variant)
        assert not await _can_write(node, user_level)  # not for this user
        assert await _can_write(node, level)  # the node itself: some user may write it
        heartbeat = hmi.get_node(opcua.node_id("mpc_heartbeat"))  # not a publication
        assert await _can_write(heartbeat, user_level)
    assert opcua.value("percent_dried") == 0.0
    async with _opcua_client(opcua, TWIN, TWIN_PASSWORD) as twin:
        node = twin.get_node(node_id)
        assert await _can_write(node, user_level)
        await node.write_value(variant)
    assert opcua.value("percent_dried") == 42.0


async def test_a_site_server_lets_only_the_sites_own_user_publish(
    shelf: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PHARMATWIN_OPCUA_PASSWORD", "s3cret")
    site = load_site(ROOT / "configs/sites/cstr-opcua.yaml")
    server = await opcua_server_for_site(site, free_port(), state_dir=tmp_path, shelf=shelf)
    assert site.connection.opcua.username == "operator"
    assert server.publishers == {"operator"}
