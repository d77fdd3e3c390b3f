"""What the runtime says and counts about an OPC UA value it cannot use (a Bad status, or a
value of the wrong variant type): "non finite values" counts only numbers the PLC really sent
as NaN or infinity, and the message shows what was sent, never "nan" for a number that was not.

A real asyncua server (the HIL OPC UA server of the shipped cstr-opcua site's tag map) on
127.0.0.1 and the site's own port; the rogue values are put straight into the server's
address space, as a buggy or misconfigured PLC program serves them. The snapshot goes through
the runtime's own judgement (:class:`DataTrust`) and records (:class:`TrustCycle`).
"""

from __future__ import annotations

import dataclasses
import logging
import math
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path
from typing import cast

import pytest
from asyncua import ua
from conftest import free_port
from test_ports_opcua import _connection, shelf  # noqa: F401 - shelf is a fixture

from controller.clock import RealClock
from controller.core.pipeline import ControlPipeline
from controller.ports.base import Quality
from controller.runtime.audit import AuditTrail
from controller.runtime.cycle import Counters, CycleView, State
from controller.runtime.site import Site, load_site, port_for_site
from controller.runtime.trust import BadMeasurementPolicy, DataTrust, Judgement, Reason
from controller.runtime.trust_cycle import TrustCycle
from hil.servers.opcua import OpcUaPlcServer

pytestmark = pytest.mark.timeout(60)

ROOT = Path(__file__).resolve().parents[3]
T = ua.VariantType
#: model output -> measurement tag (every tag a Double node of the cstr-opcua site)
OUTPUTS = {
    "C_a_meas": "conc_a",
    "C_b_meas": "conc_b",
    "T_R_meas": "reactor_temp",
    "T_K_meas": "jacket_temp",
    "F": "feed_dilution_pv",
}
FLOAT = 0.6971959471702576  # a float32, sent as Float where the node is Double


@pytest.fixture(scope="module")
def site() -> Site:
    return load_site(ROOT / "configs/sites/cstr-opcua.yaml")


@pytest.fixture
async def plc(site: Site, shelf: Path) -> AsyncIterator[OpcUaPlcServer]:  # noqa: F811
    async with OpcUaPlcServer(site.tags, free_port(), shelf=shelf) as server:
        yield server


def _serve(plc: OpcUaPlcServer, tag: str, variant: ua.Variant, status: str = "Good") -> None:
    """Make the node of ``tag`` hold ``variant`` with ``status``, bypassing the server's checks."""
    now = cast(ua.DateTime, datetime.now(UTC))
    code = ua.StatusCode(getattr(ua.StatusCodes, status))
    dv = ua.DataValue(variant, code, SourceTimestamp=now, ServerTimestamp=now)
    plc.server.iserver.aspace[plc.node_id(tag)].attributes[ua.AttributeIds.Value].value = dv


async def _judged(site: Site, plc: OpcUaPlcServer, subscription: bool = False) -> Judgement:
    connection = _connection(plc.port, subscription=subscription)
    port = port_for_site(dataclasses.replace(site, connection=connection), RealClock())
    async with port:
        snap = await port.read(list(OUTPUTS.values()))
    return DataTrust(site.tags, OUTPUTS, {}, []).judge(snap)


def _recorded(judged: Judgement, caplog: pytest.LogCaptureFixture) -> tuple[Counters, CycleView]:
    """The runtime's count and records of the distrusted measurements of one cycle."""
    counters = Counters()
    # count() and record() (with a plain use map) need neither the pipeline nor the audit trail
    trust = TrustCycle(
        cast(ControlPipeline, None),
        OUTPUTS,
        cast(BadMeasurementPolicy, None),
        counters,
        cast(AuditTrail, None),
        run_id="run",
        actor="test",
        problem=lambda view, text: None,
    )
    view = CycleView(1, 0.0, State.RUNNING, judged.snapshot)
    with caplog.at_level(logging.WARNING, logger="pharmatwin.supervisor"):
        trust.count(judged.outputs.values())
        trust.record(view, judged.outputs.values(), {})
    return counters, view


@pytest.mark.parametrize("subscription", [False, True], ids=["polling", "subscription"])
async def test_bad_status_and_wrong_type_values_are_not_counted_as_non_finite(
    site: Site, plc: OpcUaPlcServer, caplog: pytest.LogCaptureFixture, subscription: bool
) -> None:
    """Four finite numbers the controller cannot use and one NaN the PLC really sent: one non
    finite value, and each message says what the PLC sent."""
    _serve(plc, "conc_a", ua.Variant(FLOAT, T.Float))  # Good, but a Float in a Double node
    _serve(plc, "conc_b", ua.Variant(3, T.Int32))  # Good, but an Int32 in a Double node
    _serve(plc, "reactor_temp", ua.Variant(61.5, T.Float), "BadSensorFailure")  # both
    await plc.set_value("jacket_temp", 40.0, status="BadSensorFailure")  # the server nulls it
    _serve(plc, "feed_dilution_pv", ua.Variant(math.nan, T.Double))  # a real NaN, Good
    judged = await _judged(site, plc, subscription)
    assert judged.measured == {}  # none of them is used for control
    snap = judged.snapshot
    assert snap.bad(OUTPUTS.values()) == list(OUTPUTS.values())
    for tag in ("conc_a", "conc_b", "reactor_temp", "jacket_temp"):
        assert snap[tag].quality is Quality.BAD and math.isnan(snap[tag].value), snap[tag]
    reasons = {d.tag: d.reason for d in judged.outputs.values()}
    assert reasons == {
        "conc_a": Reason.BAD,
        "conc_b": Reason.BAD,
        "reactor_temp": Reason.BAD,
        "jacket_temp": Reason.BAD,
        "feed_dilution_pv": Reason.NON_FINITE,
    }

    counters, view = _recorded(judged, caplog)

    assert counters.non_finite_values == 1  # the NaN the PLC sent, nothing else
    assert counters.implausible_values == 0
    said = {e.key: e.message for e in view.events}
    logged = [r.getMessage() for r in caplog.records if "not trusted" in r.getMessage()]
    assert len(logged) == len(OUTPUTS)
    for tag, message in said.items():
        assert any(message in line for line in logged), (tag, message)  # logged as recorded
    for tag in ("conc_a", "conc_b", "reactor_temp", "jacket_temp"):
        assert "nan" not in said[tag].lower(), said[tag]  # the PLC sent no NaN there
        assert "bad quality" in said[tag], said[tag]
    assert f"the node sent Float {FLOAT}; the tag's node is Double" in said["conc_a"]
    assert "the node sent Int32 3; the tag's node is Double" in said["conc_b"]
    assert "BadSensorFailure" in said["reactor_temp"]  # the status, and the value sent with it
    assert "the node sent Float 61.5; the tag's node is Double" in said["reactor_temp"]
    assert "BadSensorFailure" in said["jacket_temp"]  # no value came: none is shown
    assert said["feed_dilution_pv"].startswith("feed_dilution_pv = nan not a finite number")


async def test_an_uncertain_wrong_type_value_and_a_bad_value_of_the_node_type_show_what_was_sent(
    site: Site, plc: OpcUaPlcServer, caplog: pytest.LogCaptureFixture
) -> None:
    """A Float sent Uncertain where the node is Double is bad quality (its type), shown as
    sent; a Double sent with BadSensorFailure is shown as sent; neither is a non finite
    value. An infinity the PLC sent as Good is the one non finite value."""
    _serve(plc, "conc_a", ua.Variant(FLOAT, T.Float), "UncertainLastUsableValue")
    _serve(plc, "conc_b", ua.Variant(0.25, T.Double), "BadSensorFailure")
    _serve(plc, "reactor_temp", ua.Variant(math.inf, T.Double))
    judged = await _judged(site, plc)
    assert not {"C_a_meas", "C_b_meas", "T_R_meas"} & set(judged.measured)
    counters, view = _recorded(judged, caplog)
    assert counters.non_finite_values == 1
    said = {e.key: e.message for e in view.events}
    assert "nan" not in said["conc_a"].lower() and "bad quality" in said["conc_a"]
    assert "UncertainLastUsableValue" in said["conc_a"]
    assert f"the node sent Float {FLOAT}; the tag's node is Double" in said["conc_a"]
    assert said["conc_b"] == "conc_b = 0.25 bad quality: BadSensorFailure"
    assert said["reactor_temp"].startswith("reactor_temp = inf not a finite number")
