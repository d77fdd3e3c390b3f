"""The supervisor's state machine, on the in-memory port and a stepped clock (no network).

A small PLC stand-in plays the PLC's side of the contract on the tag table: it publishes the
measurements, the working setpoints (tracked on the setpoint tags while the MPC is not
active), the scan counter, and answers ``mpc_request`` with ``mpc_active``. A stub policy
always asks for a far-away target, so the safety layer's move limits decide every move.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import logging
import os
import signal
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from conftest import FixedPolicy

from controller.clock import SteppedClock
from controller.ports.base import Quality, Snapshot, WriteReport, WriteResult, WriteStatus
from controller.ports.memory import MemoryPort, TagTable, table_from_tag_map
from controller.runtime.audit import AuditTrail
from controller.runtime.audit_chain import AuditRecord
from controller.runtime.site import Site, load_site
from controller.runtime.supervisor import ControlRefused, CycleView, Mode, State, Supervisor
from controller.runtime.wiring import RunOptions, build_pipeline, run_site

ROOT = Path(__file__).resolve().parents[3]
LYO_MODBUS = ROOT / "configs" / "sites" / "lyophilizer-modbus.yaml"
DT = 360.0  # the lyophilizer's sample time [s]
SETPOINTS = {"Tsh": "shelf_temp_sp", "Pch": "chamber_pressure_sp"}
WORKING = {"Tsh": -20.0, "Pch": 0.12}  # what the PLC is running when the controller starts
#: tag -> what the twin publishes into it (soft sensors: tests/controller/twin/test_twin.py)
TAGS_PUBLISHED = {
    n: t.publishes for n, t in load_site(LYO_MODBUS).tags.tags.items() if t.publishes is not None
}
pytestmark = pytest.mark.timeout(60)


@pytest.fixture(scope="module")
def site() -> Site:
    """The lyophilizer site, its estimator's innovation gate off: the stand-in PLC's product
    temperature is a ramp, not the model's, and the gate would (rightly) reject it and hold.
    tests/controller/runtime/test_data_trust.py runs the gate against a true plant."""
    site = load_site(LYO_MODBUS)
    spec = site.controller.estimator.model_copy(update={"innovation_gate": None})
    controller = site.controller.model_copy(update={"estimator": spec})
    return dataclasses.replace(site, controller=controller)


StubPolicy = FixedPolicy  # the name its neighbours import


class Plc:
    """The PLC's side of the contract, on the tag table, one :meth:`scan` at a time."""

    def __init__(self, table: TagTable, clock: SteppedClock) -> None:
        self.table, self.clock = table, clock
        self.working = dict(WORKING)
        self.follow = True  # answer mpc_request with mpc_active
        self.active = False
        self.scans = 0
        self.tbot_quality = Quality.GOOD
        self.tbot_stuck: float | None = None

    def scan(self) -> None:
        t, now = self.table, self.clock.now()
        was_active = self.active
        if self.follow:
            self.active = t.current("mpc_request") > 0.5
        if self.active and was_active:  # the remote setpoints are the working ones
            self.working = {i: t.current(tag) for i, tag in SETPOINTS.items()}
        else:  # setpoint tracking, for a bumpless start
            t.publish(now, {tag: self.working[i] for i, tag in SETPOINTS.items()})
        self.scans += 1
        t.publish(
            now,
            {
                "shelf_temp_pv": self.working["Tsh"],
                "chamber_pressure_pv": self.working["Pch"],
                "mpc_permissive": 1.0,
                "mpc_active": float(self.active),
                "plc_scan_counter": float(self.scans),
                "plc_heartbeat": float(self.scans),
                "measurement_validity": 1.0,
            },
        )
        # a live thermocouple never reads the same twice; ``tbot_stuck`` freezes it
        tbot = self.tbot_stuck if self.tbot_stuck is not None else -35.0 + 0.01 * self.scans
        t.publish(now, {"product_temp_bottom": tbot}, self.tbot_quality)


def unaudited_writes(
    values: Mapping[str, float], records: Iterable[AuditRecord]
) -> list[tuple[str, float]]:
    """The tags of a write whose value no audit record holds yet: for each tag the newest
    record naming it (any action; a ``publication.write`` names its tags in its JSON value)
    must carry the value sent (a retry of the same value is covered by the record before its
    first send)."""
    newest: dict[str, object] = {}
    for rec in records:
        if rec.action == "publication.write":
            newest.update(json.loads(rec.new_value or "{}"))
        else:
            newest[rec.target] = rec.new_value
    return [(t, v) for t, v in values.items() if not _same(newest.get(t), v)]


def _same(recorded: object, sent: float) -> bool:
    try:
        return float(recorded) == float(sent)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return False


class RecordingPort(MemoryPort):
    """A memory port that notes, at each write, what the audit trail held at that moment;
    ``refuse`` > 0 makes the PLC refuse that many setpoint writes (exception 03 style)."""

    def __init__(self, table: TagTable, clock: SteppedClock) -> None:
        super().__init__(table, clock)
        self.audit: AuditTrail | None = None
        self.writes: list[tuple[dict[str, float], list[AuditRecord]]] = []
        self.reads = 0
        self.refuse = 0
        self.published: list[dict[str, float]] = []
        #: (tag, value) of every write with no audit record of that value before it was sent
        self.unaudited: list[tuple[str, float]] = []

    async def read(self, tags: Iterable[str]) -> Snapshot:
        self.reads += 1
        return await super().read(tags)

    async def write(self, values: Mapping[str, float]) -> WriteReport:
        assert self.audit is not None
        self.unaudited += unaudited_writes(values, list(self.audit.records()))
        if all(TAGS_PUBLISHED.get(t) for t in values):  # soft sensors: apart from the contract
            self.published.append(dict(values))
            return await super().write(values)
        self.writes.append((dict(values), list(self.audit.records())))
        if self.refuse and set(values) & set(SETPOINTS.values()):
            self.refuse -= 1
            return WriteReport(
                {
                    tag: WriteResult(tag, v, WriteStatus.REJECTED, None, "exception 03")
                    for tag, v in values.items()
                },
                self.clock.now(),
            )
        return await super().write(values)

    def setpoint_writes(self) -> list[dict[str, float]]:
        return [v for v, _ in self.writes if set(v) & set(SETPOINTS.values())]


@dataclass
class Env:
    sup: Supervisor
    plc: Plc
    port: RecordingPort
    clock: SteppedClock
    audit: AuditTrail
    policy: StubPolicy
    views: list[CycleView] = field(default_factory=list)

    async def cycle(self) -> CycleView:
        """One PLC scan, one controller cycle, then a sample of process time."""
        self.plc.scan()
        view = await self.sup.cycle(len(self.views), self.clock.now())
        self.views.append(view)
        self.clock.advance(DT)
        return view

    async def cycles(self, n: int) -> list[State]:
        return [(await self.cycle()).state for _ in range(n)]

    def changes(self) -> list[tuple[str | None, str | None, str]]:
        return [
            (r.old_value, r.new_value, r.reason)
            for r in self.audit.records()
            if r.action == "mode.change"
        ]


def _table(site: Site) -> TagTable:
    initial = {
        "shelf_temp_pv": WORKING["Tsh"],
        "chamber_pressure_pv": WORKING["Pch"],
        # a stale remote setpoint from an earlier run: the working ones are the pv tags
        "shelf_temp_sp": -45.0,
        "chamber_pressure_sp": 0.3,
        "product_temp_bottom": -35.0,
        "measurement_validity": 1.0,
        "mpc_permissive": 1.0,
    }
    return table_from_tag_map(site.tags, initial)


@pytest.fixture
async def env(site: Site, tmp_path: Path) -> Env:
    clock = SteppedClock()
    table = _table(site)
    port = RecordingPort(table, clock)
    await port.connect()
    policy = StubPolicy({"Tsh": 100.0, "Pch": 0.3})
    audit = AuditTrail(tmp_path / "audit.db", config_hash="cfg", actor="pharmatwin-service")
    port.audit = audit
    sup = Supervisor(
        site, port, clock, build_pipeline(site, policy), mode=Mode.CLOSED_LOOP, audit=audit
    )
    return Env(sup, Plc(table, clock), port, clock, audit, policy)


# ------------------------------------------------------------------------------- tests
async def test_init_reads_the_working_setpoints_and_the_first_move_is_bumpless(
    env: Env, site: Site
) -> None:
    view = await env.cycle()
    assert view.state is State.REQUESTING
    assert env.policy.resets == [WORKING]  # from the pv tags, not the stale sp tags
    assert str(WORKING) in env.changes()[0][2]  # the INIT -> REQUESTING cause says so
    assert env.port.setpoint_writes() == []  # nothing written before the PLC hands over
    assert [v for v, _ in env.port.writes] == [{"mpc_heartbeat": 1.0}, {"mpc_request": 1.0}]
    # the PLC's recipe moved on before it engaged: the controller starts from *that*
    env.plc.working = {"Tsh": -17.0, "Pch": 0.13}
    view = await env.cycle()
    assert view.state is State.RUNNING
    assert env.policy.resets[-1] == {"Tsh": -17.0, "Pch": 0.13}
    first = env.port.setpoint_writes()[0]
    tsh, pch = site.controller.inputs["Tsh"], site.controller.inputs["Pch"]
    assert first["shelf_temp_sp"] == pytest.approx(-17.0 + tsh.max_move)  # limited by Δu
    assert first["chamber_pressure_sp"] == pytest.approx(0.13 + pch.max_move)
    await env.cycles(3)
    moves = [w["shelf_temp_sp"] for w in env.port.setpoint_writes()]
    assert moves == pytest.approx([-17.0 + tsh.max_move * k for k in range(1, 5)])


class SpyEstimator:
    """Wraps the pipeline's estimator and notes the inputs each update predicts with."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.inputs: list[dict[str, float] | None] = []

    def update(self, u: Any, y: Any, states: Any = None, *, exclude: Any = ()) -> Any:
        self.inputs.append(None if u is None else dict(u))
        return self.inner.update(u, y, states, exclude=exclude)

    @property
    def estimate(self) -> Any:
        return self.inner.estimate


async def test_the_estimator_predicts_over_every_sample_across_engagement(env: Env) -> None:
    """Engaging restarts the policy and the move limits from the PLC's working setpoints,
    but the process went on under those setpoints over the sample before: the estimator
    must predict over it (an update without inputs corrects only, and the estimate, and the
    MPC's first solve, would lag a sample behind the plant)."""
    spy = SpyEstimator(env.sup.pipeline.estimator)
    env.sup.pipeline.estimator = spy
    env.plc.follow = False
    assert await env.cycles(3) == [State.REQUESTING] * 3
    env.plc.follow = True
    assert await env.cycles(3) == [State.RUNNING] * 3
    assert len(spy.inputs) == 6
    assert [u is not None for u in spy.inputs] == [True] * 6, spy.inputs


async def test_requesting_waits_for_mpc_active(env: Env) -> None:
    env.plc.follow = False
    assert await env.cycles(4) == [State.REQUESTING] * 4
    written = [v for v, _ in env.port.writes]
    assert written.count({"mpc_request": 1.0}) == 1  # requested once, not every cycle
    assert [w for w in written if "mpc_heartbeat" in w] == [
        {"mpc_heartbeat": float(k)} for k in range(1, 5)
    ]  # the heartbeat goes on
    assert env.port.setpoint_writes() == []
    env.plc.active = True
    assert await env.cycles(2) == [State.RUNNING] * 2
    assert len(env.port.setpoint_writes()) == 2
    assert env.changes()[-1][:2] == ("REQUESTING", "RUNNING")
    assert "mpc_active" in env.changes()[-1][2]


async def test_every_write_is_audited_before_it_is_sent(env: Env) -> None:
    await env.cycles(6)
    # every tag of every write: the heartbeat (alone, or in the setpoints' write), the
    # request, the setpoints and the twin's soft sensors
    assert env.port.unaudited == []
    actions = {r.action for r in env.audit.records()}
    assert {"heartbeat.write", "publication.write", "setpoint.write"} <= actions
    setpoint_writes = 0
    for values, records in env.port.writes:
        if "mpc_request" in values:
            last = records[-1]
            assert (last.action, last.target) == ("tag.write.request", "mpc_request")
            assert float(last.new_value or "nan") == values["mpc_request"]
        if not set(values) & set(SETPOINTS.values()):
            continue
        setpoint_writes += 1
        audited = [r for r in records if r.action == "setpoint.write"]
        assert len(audited) == 2 * setpoint_writes  # both tags recorded before the write
        for rec in audited[-2:]:
            assert float(rec.new_value or "nan") == values[rec.target]
            assert rec.actor == "pharmatwin-service" and rec.config_hash == "cfg"
            assert rec.ts_utc.endswith("+00:00") and rec.reason.startswith("MPC decision")
    assert setpoint_writes == 5
    last = [r for r in env.audit.records() if r.target == "shelf_temp_sp"][-1]
    detail = last.detail
    for key in ("decision_id", "solver_status", "safety_changes", "config_hash", "model_version"):
        assert key in detail
    assert "clipped_to_move_limit" in detail  # what the safety layer changed, and why
    old, new = float(last.old_value or "nan"), float(last.new_value or "nan")
    assert new - old == pytest.approx(6.0)  # the old value is what the PLC had
    assert env.audit.verify() == len(list(env.audit.records()))


async def test_transitions_are_audited_with_their_cause(env: Env, site: Site) -> None:
    max_bad = site.runtime.max_bad_cycles
    assert await env.cycles(3) == [State.REQUESTING, State.RUNNING, State.RUNNING]
    env.plc.tbot_quality = Quality.BAD  # the product temperature goes bad
    states = await env.cycles(max_bad + 1)
    assert states == [State.HOLD] * (max_bad - 1) + [State.FALLBACK] * 2
    held = env.port.setpoint_writes()
    assert len(held) == 2  # nothing written while bad
    assert {"mpc_request": 0.0} in [v for v, _ in env.port.writes]  # released to the PLC
    assert not env.plc.active
    env.plc.tbot_quality = Quality.GOOD  # good again: max_bad clean cycles, then re-engage
    clean = [State.FALLBACK] * max_bad  # asks once the last max_bad cycles were clean
    assert await env.cycles(max_bad + 2) == [*clean, State.REQUESTING, State.RUNNING]
    # the PLC drops the MPC on its own (e.g. an interlock)
    env.plc.follow = False
    env.plc.active = False
    assert (await env.cycle()).state is State.FALLBACK
    await env.sup.shutdown("operator stop")
    changes = env.changes()
    assert [c[:2] for c in changes] == [
        ("INIT", "REQUESTING"),
        ("REQUESTING", "RUNNING"),
        ("RUNNING", "HOLD"),
        ("HOLD", "FALLBACK"),
        ("FALLBACK", "REQUESTING"),
        ("REQUESTING", "RUNNING"),
        ("RUNNING", "FALLBACK"),
        ("FALLBACK", "STOPPED"),
    ]
    causes = [c[2] for c in changes]
    assert "working setpoints" in causes[0]
    assert "mpc_active" in causes[1]
    assert "bad-quality inputs ['product_temp_bottom']" in causes[2]
    assert f"{max_bad} bad cycles in a row" in causes[3] and "mpc_request" in causes[3]
    assert "permits" in causes[4]
    assert "dropped" in causes[6]
    assert causes[7] == "operator stop"
    records = list(env.audit.records())
    assert all(r.actor == "pharmatwin-service" for r in records if r.action == "mode.change")
    assert records[-1].action == "run.stop"


async def test_refused_writes_hold_count_and_the_moves_restart_from_the_plc(
    env: Env, site: Site
) -> None:
    max_move = site.controller.inputs["Tsh"].max_move
    assert await env.cycles(3) == [State.REQUESTING, State.RUNNING, State.RUNNING]
    in_place = env.port.table.current("shelf_temp_sp")
    env.port.refuse = site.runtime.max_bad_cycles - 1  # refused, but one short of the limit
    states = await env.cycles(site.runtime.max_bad_cycles)
    assert states == [State.HOLD] * (site.runtime.max_bad_cycles - 1) + [State.RUNNING]
    assert env.sup.counters.failed_writes == site.runtime.max_bad_cycles - 1
    # the next move counts from what the PLC has, not from the refused proposals
    assert env.port.table.current("shelf_temp_sp") == pytest.approx(in_place + max_move)
    # as many refusals in a row as max_bad_cycles: the PLC takes over
    env.port.refuse = site.runtime.max_bad_cycles
    states = await env.cycles(site.runtime.max_bad_cycles)
    assert states[-1] is State.FALLBACK
    assert env.sup.counters.fallbacks == 1
    await env.cycle()
    assert [v for v, _ in env.port.writes][-1] == {"mpc_request": 0.0}


async def test_sigint_releases_mpc_request_and_writes_run_stop(site: Site, tmp_path: Path) -> None:
    clock = SteppedClock()
    table = _table(site)
    port = RecordingPort(table, clock)
    audit_db = tmp_path / "audit.db"
    port.audit = AuditTrail(audit_db)  # a second connection onto the runtime's audit file
    plc = Plc(table, clock)
    policy = StubPolicy({"Tsh": 100.0, "Pch": 0.3})
    opts = RunOptions(Mode.CLOSED_LOOP, audit_path=audit_db, historian_path=None)
    task = asyncio.create_task(run_site(site, opts, port=port, clock=clock, policy=policy))
    plc.scan()
    for _ in range(5):  # REQUESTING, then RUNNING
        while clock.waiting == 0:  # the cycle is done when the supervisor waits for the next
            assert not task.done()
            await asyncio.sleep(0.001)
        clock.advance(DT)
        plc.scan()  # before the supervisor wakes up: no await in between
    while clock.waiting == 0:
        await asyncio.sleep(0.001)
    assert len(port.setpoint_writes()) == 5
    assert table.current("mpc_request") == 1.0
    # run_site has replaced Python's KeyboardInterrupt handler with its own
    assert signal.getsignal(signal.SIGINT) is not signal.default_int_handler
    os.kill(os.getpid(), signal.SIGINT)
    sup = await asyncio.wait_for(task, 10)
    assert sup.state is State.STOPPED
    assert table.current("mpc_request") == 0.0  # released: the PLC takes over
    assert [v for v, _ in port.writes][-1] == {"mpc_request": 0.0}
    records = list(port.audit.records())
    assert records[-1].action == "run.stop" and records[-1].reason == "stop requested"
    stop = [r for r in records if r.action == "mode.change"][-1]
    assert (stop.old_value, stop.new_value) == ("RUNNING", "STOPPED")
    release = [r for r in records if r.action == "tag.write.request"][-1]
    assert release.new_value == "0.0"
    assert port.audit.verify() == len(records)
    port.audit.close()


async def test_a_frozen_measurement_is_stale_and_holds(env: Env, site: Site) -> None:
    """A thermocouple stuck at one value (``frozen_after`` reads unchanged) is not trusted."""
    limit = site.tags.tags["product_temp_bottom"].frozen_after
    assert limit == 4
    assert await env.cycles(3) == [State.REQUESTING, State.RUNNING, State.RUNNING]
    env.plc.tbot_stuck = -20.0  # the transmitter freezes
    states = await env.cycles(limit)
    assert states == [State.RUNNING] * (limit - 1) + [State.HOLD]
    assert env.views[-1].problems == ["stale inputs ['product_temp_bottom']"]
    assert "-20 frozen: the same value for 4 reads" in env.views[-1].events[0].message
    writes = len(env.port.setpoint_writes())
    assert (await env.cycle()).state is State.HOLD  # still frozen: nothing written
    assert len(env.port.setpoint_writes()) == writes
    env.plc.tbot_stuck = None  # alive again: the next clean cycle runs
    assert (await env.cycle()).state is State.RUNNING
    assert len(env.port.setpoint_writes()) == writes + 1
    assert env.sup.counters.stale_data == 2


async def test_an_operator_release_keeps_running_writes_nothing_until_requested(
    env: Env,
) -> None:
    assert await env.cycles(3) == [State.REQUESTING, State.RUNNING, State.RUNNING]
    written_before = len(env.port.setpoint_writes())
    assert written_before == 2
    assert "released" in env.sup.release_control("carl", "sampling the batch")
    n = len(env.port.writes)
    assert await env.cycles(3) == [State.RELEASED] * 3  # the runtime goes on, released
    after = [v for v, _ in env.port.writes[n:]]
    assert after == [{"mpc_request": 0.0}]  # cleared once; no heartbeat, no setpoint
    assert len(env.port.setpoint_writes()) == written_before
    assert not env.plc.active  # the PLC took over
    assert all(v.outcome is not None for v in env.views[-3:])  # it still recommends
    with pytest.raises(ControlRefused, match="nothing to release"):
        env.sup.release_control("carl", "again")
    assert "requesting" in env.sup.request_control("carl", "sampling done")
    with pytest.raises(ControlRefused, match="nothing to request"):
        env.sup.request_control("carl", "again")
    assert await env.cycles(3) == [State.REQUESTING, State.RUNNING, State.RUNNING]
    assert len(env.port.setpoint_writes()) == written_before + 2
    ops = [r for r in env.audit.records() if r.action.startswith("operator.")]
    assert [(r.actor, r.action, r.reason, r.old_value, r.new_value[:8]) for r in ops] == [
        ("carl", "operator.release", "sampling the batch", "RUNNING", "RELEASED"),
        ("carl", "operator.release", "again", "RELEASED", "refused:"),
        ("carl", "operator.request", "sampling done", "RELEASED", "REQUESTI"),
        ("carl", "operator.request", "again", "REQUESTING", "refused:"),
    ]
    causes = [c for c in env.changes() if c[1] == "RELEASED"]
    assert causes and "operator carl released control: sampling the batch" in causes[0][2]


async def test_operator_control_refused_before_init_and_in_shadow(
    env: Env, site: Site, tmp_path: Path
) -> None:
    with pytest.raises(ControlRefused, match="INIT"):
        env.sup.release_control("carl", "too early")
    assert env.sup.state is State.INIT
    shadow = Supervisor(
        site,
        env.port,
        env.clock,
        build_pipeline(site, StubPolicy({"Tsh": 0.0, "Pch": 0.1})),
        mode=Mode.SHADOW,
        audit=env.audit,
    )
    with pytest.raises(ControlRefused, match="shadow"):
        shadow.request_control("carl", "no")
    refused = [r.new_value for r in env.audit.records() if r.action.startswith("operator.")]
    assert len(refused) == 2 and all(v.startswith("refused:") for v in refused)


async def test_fallback_and_hold_are_logged_as_warnings(
    env: Env, site: Site, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="pharmatwin.supervisor")
    await env.cycles(2)
    env.plc.tbot_quality = Quality.BAD
    await env.cycles(site.runtime.max_bad_cycles)
    changes = {
        r.getMessage().split(":")[0]: r.levelno
        for r in caplog.records
        if r.getMessage().startswith("state ")
    }
    assert changes == {
        "state INIT -> REQUESTING": logging.INFO,
        "state REQUESTING -> RUNNING": logging.INFO,
        "state RUNNING -> HOLD": logging.WARNING,
        "state HOLD -> FALLBACK": logging.WARNING,
    }
