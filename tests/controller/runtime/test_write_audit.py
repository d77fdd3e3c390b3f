"""Every value the runtime writes to the PLC is in the audit trail before it is sent, in
shadow mode as in closed loop: the advice of shadow mode (``advisory.write``), the twin's
soft sensors (``publication.write``), the heartbeat (``heartbeat.write``, alone or with the
setpoints) as much as the setpoints and the request. Before, a shadow run with advisory tags
and ``publish_in_shadow`` wrote 8 cycles of advice and soft sensors with no record at all,
and the heartbeat was never audited. A site may not name a setpoint, contract or
publication tag as an advisory tag (shadow mode would write a control tag).

On the in-memory port with the PLC stand-in of ``test_supervisor.py``, whose recording port
checks each tag of each write against the audit trail as it is at that moment.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, TypeVar

import pytest
import yaml
from test_supervisor import (  # noqa: F401 - site is a fixture
    LYO_MODBUS,
    TAGS_PUBLISHED,
    Plc,
    RecordingPort,
    StubPolicy,
    _table,
    site,
)

from controller.clock import SteppedClock
from controller.core.mpc import Decision, SolveStatus
from controller.errors import ConfigError, PortError, ProtocolError
from controller.ports.base import Quality, WriteReport
from controller.runtime.audit import AuditTrail
from controller.runtime.site import Site, load_site
from controller.runtime.supervisor import CycleView, Mode, State, Supervisor
from controller.runtime.wiring import build_pipeline

ADVICE = {"Tsh": "shelf_temp_advice", "Pch": "chamber_pressure_advice"}
P = TypeVar("P", bound=RecordingPort)
pytestmark = pytest.mark.timeout(60)


def _advisory_site(tmp_path: Path, advisory: dict[str, str]) -> Path:
    """The lyophilizer Modbus site with two advisory tags of its own (holding 200-203),
    ``runtime.advisory_tags`` set to ``advisory`` and ``publish_in_shadow``."""
    data: dict[str, Any] = yaml.safe_load(LYO_MODBUS.read_text())
    for key in ("plant", "controller", "tags"):
        data[key] = str((LYO_MODBUS.parent / data[key]).resolve())
    for key in ("scenario",):
        data["hil"][key] = str((LYO_MODBUS.parent / data["hil"][key]).resolve())
    data["forecast"]["local_recipe"] = str(
        (LYO_MODBUS.parent / data["forecast"]["local_recipe"]).resolve()
    )
    tags = yaml.safe_load(Path(data["tags"]).read_text())
    for k, (inp, name) in enumerate(ADVICE.items()):
        tags["tags"][name] = {
            "description": f"the twin's recommended {inp} (shadow mode), for the HMI",
            "unit": "-",
            "direction": "write",
            "modbus": {"table": "holding", "address": 200 + 2 * k, "type": "float32"},
        }
    tag_file = tmp_path / "tags.yaml"
    tag_file.write_text(yaml.safe_dump(tags, sort_keys=False))
    data["tags"] = str(tag_file)
    data["runtime"] = {**data.get("runtime", {}), "advisory_tags": advisory}
    data["runtime"]["publish_in_shadow"] = True
    path = tmp_path / "site.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


async def _supervised(
    site: Site,  # noqa: F811 - not the fixture: the site to run
    tmp_path: Path,
    kind: type[P],
    policy: StubPolicy,
    mode: Mode = Mode.CLOSED_LOOP,
) -> tuple[Supervisor, P, Plc, SteppedClock, AuditTrail]:
    """A supervisor on a recording port of ``kind`` (its audit trail in ``tmp_path``) and
    the stand-in PLC."""
    clock = SteppedClock()
    table = _table(site)
    port = kind(table, clock)
    await port.connect()
    audit = AuditTrail(tmp_path / "audit.db", config_hash="cfg", actor="pharmatwin-service")
    port.audit = audit
    sup = Supervisor(site, port, clock, build_pipeline(site, policy), mode=mode, audit=audit)
    return sup, port, Plc(table, clock), clock, audit


def _hot() -> StubPolicy:
    """Far-away inputs every cycle: the safety layer limits the moves."""
    return StubPolicy({"Tsh": 100.0, "Pch": 0.3})


async def _shadow_run(
    base: Site, tmp_path: Path, policy: StubPolicy, cycles: int = 6
) -> tuple[list[CycleView], RecordingPort, AuditTrail]:
    """``cycles`` shadow cycles of the advisory site, the stand-in PLC scanned before each."""
    loaded = load_site(_advisory_site(tmp_path, ADVICE))
    # the module's site turns the innovation gate off (the stand-in's ramp is no plant)
    shadow = dataclasses.replace(loaded, controller=base.controller)
    sup, port, plc, clock, audit = await _supervised(
        shadow, tmp_path, RecordingPort, policy, Mode.SHADOW
    )
    views = []
    for k in range(cycles):
        plc.scan()
        views.append(await sup.cycle(k, clock.now()))
        clock.advance(360.0)
    return views, port, audit


async def test_shadow_advice_and_publications_are_audited_before_they_are_sent(
    site: Site,  # noqa: F811 - the fixture
    tmp_path: Path,
) -> None:
    views, port, audit = await _shadow_run(site, tmp_path, StubPolicy({"Tsh": 100.0, "Pch": 0.3}))
    assert [v.state for v in views] == [State.SHADOW] * 6
    written = [w for w, _ in port.writes] + port.published
    advice = [w for w in written if set(w) & set(ADVICE.values())]
    assert len(advice) == 6  # a recommendation every cycle, and it was written
    assert port.published  # so were the soft sensors
    assert port.unaudited == []  # ... each value audited before it was sent
    records = list(audit.records())
    advised = [r for r in records if r.action == "advisory.write"]
    assert len(advised) == 12 and {r.target for r in advised} == set(ADVICE.values())
    assert advised[-1].old_value is not None  # what the tag held before: the last advice
    assert "shadow mode" in advised[0].reason
    assert any(r.action == "publication.write" for r in records)
    # shadow mode never writes a setpoint, the heartbeat or the request
    assert not [w for w in written if {"shelf_temp_sp", "mpc_heartbeat", "mpc_request"} & set(w)]
    assert audit.verify() == len(records)
    audit.close()


@pytest.mark.parametrize(
    ("tag", "what"),
    [
        ("shelf_temp_sp", "a setpoint tag (it binds the model variable 'Tsh')"),
        ("mpc_heartbeat", "a tag of the PLC contract (heartbeat to the PLC"),
        ("percent_dried", "a publication of the twin (it publishes"),
    ],
)
def test_an_advisory_tag_may_not_be_one_the_process_acts_on(
    tmp_path: Path, tag: str, what: str
) -> None:
    path = _advisory_site(tmp_path, {"Tsh": tag})
    with pytest.raises(ConfigError) as exc:
        load_site(path)
    # (the heartbeat's write limits are not the shelf's either: a problem of its own)
    (problem,) = [p for p in exc.value.problems if p.location.startswith("runtime.")]
    assert (problem.file, problem.location, problem.value) == (
        str(path),
        "runtime.advisory_tags.Tsh",
        tag,
    )
    assert f"the tag {tag!r} is {what}" in problem.message
    assert "shadow mode never writes a control tag" in problem.message


class FailingEvery(StubPolicy):
    """Fails the solve on the cycles named (counted from 0), succeeds on the others."""

    def __init__(self, target: dict[str, float], failing: set[int]) -> None:
        super().__init__(target)
        self.failing, self.calls = failing, 0

    def step(self, t: float, *args: Any, **kwargs: Any) -> Decision:
        k, self.calls = self.calls, self.calls + 1
        if k in self.failing:
            return Decision(t, {}, SolveStatus.FAILED, "Infeasible_Problem_Detected", 9, 1e-3)
        return super().step(t, *args, **kwargs)


async def test_a_held_shadow_cycle_writes_no_advice(
    site: Site,  # noqa: F811 - the fixture
    tmp_path: Path,
) -> None:
    """A review: on cycles the shadow run held (the solve failed, the data was bad) the
    runtime still wrote "advice" (the held values: the PLC's own working setpoints), audited
    and logged as the recommendation of the cycle. A held cycle recommends nothing."""
    policy = FailingEvery({"Tsh": 100.0, "Pch": 0.3}, failing={2, 3})
    views, port, audit = await _shadow_run(site, tmp_path, policy)
    held = [v.cycle for v in views if v.outcome is not None and v.outcome.held]
    assert held == [2, 3], held
    records = [r for r in audit.records() if r.action == "advisory.write"]
    advised = {json.loads(r.detail)["cycle"] for r in records}
    assert advised == {0, 1, 4, 5}, advised
    written = [w for w, _ in port.writes if set(w) & set(ADVICE.values())]
    assert len(written) == 4
    assert port.unaudited == []
    audit.close()


class BatchingPort(RecordingPort):
    """The recording port, saying it batches writes: the twin's soft sensors ride with the
    cycle's first control write (as over OPC UA), each write still checked against the
    audit trail as it is sent."""

    batches_writes = True


async def test_soft_sensors_riding_a_control_write_are_audited_first_in_every_state(
    site: Site,  # noqa: F811 - the fixture
    tmp_path: Path,
) -> None:
    """Through REQUESTING, RUNNING, HOLD, FALLBACK (whose release of ``mpc_request`` is
    audited on its own, before the cycle's publication record is committed: the soft sensors
    may not ride with it) and back: every value audited before it was sent, and the soft
    sensors written once per cycle."""
    sup, port, plc, clock, audit = await _supervised(site, tmp_path, BatchingPort, _hot())
    max_bad = site.runtime.max_bad_cycles
    states = []
    for k in range(3 + max_bad + 1 + max_bad + 2):
        plc.tbot_quality = Quality.BAD if 3 <= k < 3 + max_bad + 1 else Quality.GOOD
        plc.scan()
        states.append((await sup.cycle(k, clock.now())).state)
        clock.advance(360.0)
    assert State.FALLBACK in states and states[-1] is State.RUNNING
    assert {"mpc_request": 0.0} in [v for v, _ in port.writes]  # the release was sent
    assert port.unaudited == []
    published = [r for r in audit.records() if r.action == "publication.write"]
    assert len(port.published) == len(published) == len(states)  # once per cycle
    assert sup.counters.publish_failures == 0
    audit.close()


class RefusesTheBatch(BatchingPort):
    """A PLC that refuses a write request with the soft sensors in it as a whole (as an OPC
    UA server answers BadTooManyOperations past its MaxNodesPerWrite), or a fault of ours
    (``fault``) in the batched write; each group alone goes through."""

    fault: type[Exception] = ProtocolError
    batches = 0

    async def write_each(
        self, groups: Sequence[Mapping[str, float]]
    ) -> list[WriteReport | PortError]:
        self.batches += 1
        if any(set(g) & set(TAGS_PUBLISHED) for g in groups):
            if self.fault is ProtocolError:
                error = ProtocolError("the server answered BadTooManyOperations")
                return [error for _ in groups]
            raise self.fault("a fault of the batching")
        return await super().write_each(groups)


@pytest.mark.parametrize("fault", [ProtocolError, RuntimeError])
async def test_a_batch_that_fails_whole_sends_the_control_write_and_the_soft_sensors_apart(
    site: Site,  # noqa: F811 - the fixture
    tmp_path: Path,
    fault: type[Exception],
) -> None:
    sup, port, plc, clock, audit = await _supervised(site, tmp_path, RefusesTheBatch, _hot())
    port.fault = fault
    views = []
    for k in range(5):
        plc.scan()
        views.append(await sup.cycle(k, clock.now()))
        clock.advance(360.0)
    assert [v.state for v in views] == [State.REQUESTING] + [State.RUNNING] * 4
    assert all(not v.problems for v in views)  # the control writes went through
    assert len(port.setpoint_writes()) == 4 and port.batches == 5  # one try per cycle
    assert sup.counters.failed_writes == 0 and sup.counters.publish_failures == 0
    assert sup.counters.twin_failures == (5 if fault is RuntimeError else 0)
    assert len(port.published) == 5  # the soft sensors, each cycle on their own
    assert all(any(k.startswith("pub.") for k in v.monitor) for v in views)
    assert port.unaudited == []
    audit.close()
