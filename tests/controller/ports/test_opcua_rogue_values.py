"""OpcUaPort against a PLC that serves values of the wrong variant type, or an Uncertain
read-back after a write: nothing of that may be taken as a GOOD measurement or an OK write.

The server is the HIL OPC UA server of the shipped cstr-opcua site's tag map on 127.0.0.1
(security off); the port is the site's own (:func:`port_for_site`) with host and port pointed
at it. A rogue value is put straight into the server's address space, past the type check its
Write service would make, as a buggy or misconfigured PLC program serves it.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, cast

import pytest
from asyncua import ua
from asyncua.common.callback import CallbackType, ServerItemCallback
from conftest import free_port
from test_ports_opcua import _connection, shelf  # noqa: F401 - shelf is a fixture

from controller.clock import RealClock
from controller.ports.base import Port, Quality, WriteStatus
from controller.runtime.site import Site, load_site, port_for_site
from hil.servers.opcua import OpcUaPlcServer

pytestmark = pytest.mark.timeout(60)

ROOT = Path(__file__).resolve().parents[3]
T = ua.VariantType


@pytest.fixture(scope="module")
def site() -> Site:
    return load_site(ROOT / "configs/sites/cstr-opcua.yaml")


@pytest.fixture
async def plc(site: Site, shelf: Path) -> AsyncIterator[OpcUaPlcServer]:  # noqa: F811
    async with OpcUaPlcServer(site.tags, free_port(), shelf=shelf) as server:
        yield server


def _port(site: Site, plc: OpcUaPlcServer, *, subscription: bool = False) -> Port:
    """The site's port, security off, dialling the test server."""
    connection = _connection(plc.port, subscription=subscription)
    return port_for_site(dataclasses.replace(site, connection=connection), RealClock())


def _serve(plc: OpcUaPlcServer, tag: str, variant: ua.Variant, status: str = "Good") -> None:
    """Make the node of ``tag`` hold ``variant``, bypassing the server's type check."""
    now = cast(ua.DateTime, datetime.now(UTC))
    code = ua.StatusCode(getattr(ua.StatusCodes, status))
    dv = ua.DataValue(variant, code, SourceTimestamp=now, ServerTimestamp=now)
    plc.server.iserver.aspace[plc.node_id(tag)].attributes[ua.AttributeIds.Value].value = dv


async def _read_rogue(
    site: Site, plc: OpcUaPlcServer, served: dict[str, ua.Variant], subscription: bool = False
) -> dict[str, tuple[float, Quality, str]]:
    """Serve ``served`` (tag -> variant), read those tags once: tag -> (value, quality, detail)."""
    for tag, variant in served.items():
        _serve(plc, tag, variant)
    async with _port(site, plc, subscription=subscription) as port:
        snap = await port.read(list(served))
    return {t: (v.value, v.quality, v.detail) for t, v in snap.values.items()}


# ---------------------------------------------------------------------- reads (D3)
@pytest.mark.parametrize("subscription", [False, True], ids=["polling", "subscription"])
async def test_a_boolean_in_a_double_node_is_bad_naming_both_types(
    site: Site, plc: OpcUaPlcServer, subscription: bool
) -> None:
    """True from reactor_temp is not 1 degC (inside its valid range); nor is a String, an
    array or no value a temperature. A real Double stays GOOD."""
    read = await _read_rogue(
        site,
        plc,
        {
            "reactor_temp": ua.Variant(True, T.Boolean),
            "jacket_temp": ua.Variant("110.0", T.String),
            "feed_dilution_pv": ua.Variant([20.0, 21.0], T.Double),
            "jacket_duty_pv": ua.Variant(None, T.Null),
            "conc_a": ua.Variant(2.0, T.Double),
        },
        subscription,
    )
    assert read["conc_a"] == (2.0, Quality.GOOD, "")
    for tag, sent in {
        "reactor_temp": "Boolean True",
        "jacket_temp": "String '110.0'",
        "feed_dilution_pv": "an array of Double [20.0, 21.0]",
        "jacket_duty_pv": "Null (no value)",
    }.items():
        value, quality, detail = read[tag]
        assert quality is Quality.BAD and math.isnan(value), (tag, read[tag])
        assert f"the node sent {sent}; the tag's node is Double" in detail, (tag, detail)


async def test_a_double_or_an_int32_in_a_boolean_node_is_bad(
    site: Site, plc: OpcUaPlcServer
) -> None:
    read = await _read_rogue(
        site,
        plc,
        {
            "mpc_permissive": ua.Variant(0.5, T.Double),
            "mpc_active": ua.Variant(7, T.Int32),
            "interlock_active": ua.Variant(True, T.Boolean),
        },
    )
    assert read["interlock_active"] == (1.0, Quality.GOOD, "")
    for tag, sent in {"mpc_permissive": "Double 0.5", "mpc_active": "Int32 7"}.items():
        value, quality, detail = read[tag]
        assert quality is Quality.BAD and math.isnan(value), (tag, read[tag])
        assert f"the node sent {sent}; the tag's node is Boolean" in detail, (tag, detail)


async def test_a_float_or_an_out_of_range_integer_in_a_uint16_node_is_bad(
    site: Site, plc: OpcUaPlcServer
) -> None:
    read = await _read_rogue(
        site,
        plc,
        {
            "plc_scan_counter": ua.Variant(3.7, T.Double),
            "plc_heartbeat": ua.Variant(-5, T.Int32),
            "write_refusal_count": ua.Variant(70000, T.UInt32),
            "measurement_validity": ua.Variant(7, T.UInt16),
        },
    )
    assert read["measurement_validity"] == (7.0, Quality.GOOD, "")
    for tag, sent in {
        "plc_scan_counter": "Double 3.7",
        "plc_heartbeat": "Int32 -5",
        "write_refusal_count": "UInt32 70000",
    }.items():
        value, quality, detail = read[tag]
        assert quality is Quality.BAD and math.isnan(value), (tag, read[tag])
        assert f"the node sent {sent}; the tag's node is UInt16" in detail, (tag, detail)
        assert "[0, 65535]" in detail


# ---------------------------------------------------------------------- write read-backs (D4)
@pytest.mark.parametrize(
    ("status", "stored", "named"),
    [
        ("UncertainSensorNotAccurate", None, ["UncertainSensorNotAccurate"]),
        ("Good", ua.Variant(True, T.Boolean), ["Boolean True", "the tag's node is Double"]),
    ],
    ids=["uncertain", "wrong-type"],
)
async def test_a_read_back_that_is_not_a_good_value_of_the_node_type_fails_the_write(
    site: Site, plc: OpcUaPlcServer, status: str, stored: ua.Variant | None, named: list[str]
) -> None:
    """The server stores the write, then reports the node with ``status`` (and ``stored`` in
    place of the value, if given): written, outcome not confirmed, so FAILED, never OK."""
    async with _port(site, plc) as port:
        assert (await port.write({"feed_dilution_sp": 20.0})).ok  # the rig itself is sound

        async def after_write(event: ServerItemCallback, _: Any) -> None:
            for item in event.request_params.NodesToWrite:
                value = plc.server.iserver.aspace[item.NodeId].attributes[ua.AttributeIds.Value]
                _serve(plc, plc.tag_of[item.NodeId], stored or value.value.Value, status)

        plc.server.subscribe_server_callback(CallbackType.PostWrite, after_write)
        report = await port.write({"feed_dilution_sp": 30.0})
    result = report.results["feed_dilution_sp"]
    assert result.status is WriteStatus.FAILED and not report.ok, result
    assert result.readback is None
    assert "written, but the read-back" in result.detail
    for words in named:
        assert words in result.detail, result.detail
    if stored is None:
        assert plc.value("feed_dilution_sp") == 30.0  # it was written: only unconfirmed
