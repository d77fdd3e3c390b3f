"""The twin's publication goes with the cycle's control write (issue 19, B2 over OPC UA).

Over OPC UA a RUNNING cycle with soft sensors to publish used four service calls: the Read
of the inputs, the Write of the setpoints and heartbeat, the Read of their read-backs, and a
Write of the soft sensors of its own. The soft sensors now ride with the control write
(``Port.write_each``, :class:`controller.runtime.cycle.Rider`): one Write and one Read of
read-backs for both, three calls in all. What must not change with it, shown here too:

* the publication's ``publication.write`` record is committed before the write is sent;
* the soft sensors are checked and reported apart: the PLC refusing one of them is counted
  as a failed publication, never a failed control write, and the setpoints keep going.

The CSTR's secured OPC UA site (Basic256Sha256 SignAndEncrypt, the test-bench PKI) against
the HIL's server and rig on 127.0.0.1, on a stepped clock, one controller sample per cycle.
"""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import AsyncIterator, Mapping, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from conftest import FixedPolicy

from controller.clock import SteppedClock
from controller.errors import PortError
from controller.ports.base import Port, WriteReport
from controller.ports.memory import MemoryPort, table_from_tag_map
from controller.runtime.audit import AuditTrail
from controller.runtime.site import Site, load_site, port_for_site
from controller.runtime.supervisor import CycleView, Mode, State, Supervisor
from controller.runtime.wiring import build_pipeline
from controller.timebase import TimeBase
from hil.campaign.recorder import Recorder, RecordingPort
from hil.net import LOOPBACK, free_port
from hil.rig import HilRig
from hil.servers.opcua import OpcUaPlcServer, opcua_server_for_site
from hil.site import OpcUaLimits, hil_section, with_hil

pytestmark = pytest.mark.timeout(120)

ROOT = Path(__file__).resolve().parents[2]
SITE = ROOT / "configs" / "sites" / "cstr-opcua.yaml"
CYCLES = 8


@dataclass
class Run:
    site: Site
    supervisor: Supervisor
    server: OpcUaPlcServer
    audit: AuditTrail
    publications: frozenset[str]
    #: per cycle: the view, and the server's Write and Read calls within it
    cycles: list[tuple[CycleView, int, int]] = field(default_factory=list)
    #: soft-sensor values sent while the audit trail's last publication record differed
    unaudited: list[dict[str, float]] = field(default_factory=list)


def _audit_checked(port: Port, audit: AuditTrail, pubs: frozenset[str], run: Run) -> None:
    """Check, as each write is handed to the port, that the soft sensors in it are the
    values of the audit trail's last ``publication.write`` record."""
    each, one = port.write_each, port.write

    def check(groups: Sequence[Mapping[str, float]]) -> None:
        records = [r for r in audit.records() if r.action == "publication.write"]
        last = json.loads(records[-1].new_value or "{}") if records else None
        for group in groups:
            soft = {t: v for t, v in group.items() if t in pubs}
            if soft and soft != last:
                run.unaudited.append(soft)

    async def write_each(groups: Sequence[Mapping[str, float]]) -> list[WriteReport | PortError]:
        check(groups)
        return await each(groups)

    async def write(values: Mapping[str, float]) -> WriteReport:
        check([values])
        return await one(values)

    port.write_each = write_each  # type: ignore[method-assign]
    port.write = write  # type: ignore[method-assign]


@asynccontextmanager
async def _running(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    refused: str | None = None,
    limits: OpcUaLimits | None = None,
) -> AsyncIterator[Run]:
    """``CYCLES`` cycles from the start; ``refused``: a soft sensor the PLC refuses (its
    range on the server: BadOutOfRange for every value); ``limits``: the site's
    ``hil.opcua_limits``."""
    monkeypatch.setenv("PHARMATWIN_OPCUA_PASSWORD", "loopback-bench-only")
    site = load_site(SITE)
    if limits is not None:
        section = hil_section(site)
        assert section is not None
        site = with_hil(site, section.model_copy(update={"opcua_limits": limits}))
    clock = SteppedClock()
    server = await opcua_server_for_site(
        site, port=free_port(), host=LOOPBACK, state_dir=tmp_path / "hil", shelf=tmp_path
    )
    async with server:
        if refused is not None:
            server.set_range(refused, 0.0, 1e-9)
        rig = HilRig(site, clock, [server])
        policy = FixedPolicy(rig.summary()["applied"])  # the PLC's own inputs: they hold
        on_port = dataclasses.replace(
            site, connection=site.connection.model_copy(update={"port": server.port})
        )
        port = port_for_site(on_port, clock)
        audit = AuditTrail(tmp_path / "audit.db", config_hash="cfg", actor="pharmatwin-service")
        pipeline = build_pipeline(site, policy)
        sup = Supervisor(site, port, clock, pipeline, mode=Mode.CLOSED_LOOP, audit=audit)
        pubs = frozenset(n for n, t in site.tags.tags.items() if t.publishes)
        run = Run(site, sup, server, audit, pubs)
        _audit_checked(port, audit, pubs, run)
        dt_s = TimeBase.of(site.model).seconds(site.controller.sample_time)
        try:
            async with port:
                for k in range(CYCLES):
                    await rig.scan()
                    writes, reads = server.write_requests, server.read_requests
                    view = await sup.cycle(k, clock.now())
                    calls = (server.write_requests - writes, server.read_requests - reads)
                    run.cycles.append((view, *calls))
                    clock.advance(dt_s)
                yield run
        finally:
            audit.close()


def _running_cycles(run: Run) -> list[tuple[CycleView, int, int]]:
    """The RUNNING cycles that wrote setpoints."""
    return [(v, w, r) for v, w, r in run.cycles if v.state is State.RUNNING and v.written]


def _published(view: CycleView) -> dict[str, float]:
    """The soft sensors the PLC took in ``view``'s cycle (the historian's ``pub.<tag>``)."""
    return {k.removeprefix("pub."): v for k, v in view.monitor.items() if k.startswith("pub.")}


async def test_the_publication_rides_the_control_write_and_a_refused_one_holds_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with _running(tmp_path, monkeypatch) as run:
        running = _running_cycles(run)
        sup, server = run.supervisor, run.server
        assert len(running) >= 4, [(v.state, v.problems) for v, _, _ in run.cycles]
        # one Write (setpoints, heartbeat and soft sensors) and two Reads (inputs, read-backs)
        assert [(w, r) for _, w, r in running] == [(1, 2)] * len(running)
        assert all(_published(v) for v, _, _ in running)
        last = _published(running[-1][0])
        assert set(last) <= run.publications and "conc_b_estimate" in last
        assert {t: server.value(t) for t in last} == pytest.approx(last)  # the PLC has them
        assert run.unaudited == []  # every soft sensor audited before it was sent
        assert sup.counters.failed_writes == 0 and sup.counters.publish_failures == 0
        assert all(not v.problems for v, _, _ in running)
        wrote = [sorted(v.written) for v, _, _ in running]
    refusing = tmp_path / "refusing"
    refusing.mkdir()
    async with _running(refusing, monkeypatch, refused="conc_b_estimate") as run:
        sup = run.supervisor
        running = _running_cycles(run)
        assert len(running) >= 4, [(v.state, v.problems) for v, _, _ in run.cycles]
        assert [(w, r) for _, w, r in running] == [(1, 2)] * len(running)
        # the refused soft sensor is a failed publication, never a problem of the cycle
        assert all(not v.problems for v, _, _ in running)
        assert sup.counters.failed_writes == 0
        assert sup.counters.publish_failures >= len(running)
        assert all("conc_b_estimate" not in _published(v) for v, _, _ in running)
        assert all("jacket_coefficient" in _published(v) for v, _, _ in running)  # the others
        assert run.server.value("conc_b_estimate") == 0.0
    # and the setpoints went as in the run whose PLC took every soft sensor
    assert [sorted(v.written) for v, _, _ in running] == wrote[: len(running)]


async def test_closed_loop_on_a_plc_that_takes_few_nodes_per_request(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A PLC whose server takes 5 nodes per Read and 2 per Write (``hil.opcua_limits``,
    advertised and enforced): the port cuts every request to fit, and the loop runs as on
    one that takes them all (a request over a limit is refused whole: without the cut, the
    port could not even connect, ``test_opcua_limits.py``)."""
    limits = OpcUaLimits(max_nodes_per_read=5, max_nodes_per_write=2)
    async with _running(tmp_path, monkeypatch, limits=limits) as run:
        running = _running_cycles(run)
        sup, server = run.supervisor, run.server
        assert len(running) >= 4, [(v.state, v.problems) for v, _, _ in run.cycles]
        assert all(not v.problems for v, _, _ in running)
        assert sup.counters.failed_writes == 0 and sup.counters.publish_failures == 0
        for view, writes, reads in running:
            sent = len(view.written) + len(_published(view))  # setpoints, heartbeat, soft
            assert writes == math.ceil(sent / 2) > 1, (sorted(view.written), writes)
            assert reads > 2  # the inputs and the read-backs, 5 nodes a Read
        last = _published(running[-1][0])
        assert "conc_b_estimate" in last
        assert {t: server.value(t) for t in last} == pytest.approx(last)
        assert run.unaudited == []


async def test_a_campaign_recording_port_batches_as_the_port_it_wraps(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """In a hil-mode campaign over OPC UA the runtime's port is wrapped to record what it
    is asked to send: it batches as the OPC UA port does, and still records the setpoints."""
    monkeypatch.setenv("PHARMATWIN_OPCUA_PASSWORD", "loopback-bench-only")
    site = load_site(SITE)
    clock = SteppedClock()
    server = await opcua_server_for_site(
        site, port=free_port(), host=LOOPBACK, state_dir=tmp_path / "hil", shelf=tmp_path
    )
    async with server:
        on_port = dataclasses.replace(
            site, connection=site.connection.model_copy(update={"port": server.port})
        )
        inner = port_for_site(on_port, clock)
        recorder = Recorder(site, clock)
        port = RecordingPort(inner, site, clock, recorder.rec)
        assert (
            port.batches_writes
            and not RecordingPort(
                MemoryPort(table_from_tag_map(site.tags, {}), clock), site, clock, recorder.rec
            ).batches_writes
        )
        async with port:
            writes = server.write_requests
            control, soft = await port.write_each(
                [{"feed_dilution_sp": 20.0}, {"conc_b_estimate": 0.25}]
            )
            assert server.write_requests - writes == 1
        port.severed = True
        lost = await port.write_each([{"feed_dilution_sp": 21.0}])
    assert isinstance(control, WriteReport) and control.ok
    assert isinstance(soft, WriteReport) and soft.ok
    assert recorder.rec.sent == [(0.0, {"F": 20.0})]  # recorded as asked, once
    assert [type(e).__name__ for e in lost] == ["PortConnectError"]
