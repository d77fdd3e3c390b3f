"""Data the controller must not trust (issue 15): the supervisor against a true plant.

A PLC stand-in plays the contract on the in-memory tag table with a true plant behind it (the
site's own model, seeded noise): each scan the plant moves one sample with the working
setpoints and the measurements are published. A test forces tag values on top (``forced``:
value and quality, every scan) to play the bad data. The port flags values as every port does
(tag map given). A target policy asks for fixed far-away inputs (the safety layer limits the
moves) and records the estimates it was given; a spy records what reached the estimator.

Each test shows the failure it protects against: the code before this change wrote setpoints
computed from a biomass of 50 g/L, crashed on a NaN read-back and on a NaN working setpoint
at start, ran missed cycles back to back after a stall, and so on.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import yaml
from conftest import FixedPolicy

from controller.binding import Binding
from controller.clock import SteppedClock
from controller.core.estimate import Estimate
from controller.errors import ConfigError
from controller.ports.base import Quality, TagValue, WriteReport, WriteResult, WriteStatus
from controller.ports.memory import MemoryPort, TagTable, table_from_tag_map
from controller.runtime.audit import AuditTrail
from controller.runtime.historian import MemoryHistorian
from controller.runtime.historian_run import run_info
from controller.runtime.site import Site, load_site
from controller.runtime.supervisor import CycleView, Mode, State, Supervisor
from controller.runtime.wiring import build_pipeline, config_files, historian_sink
from controller.tags import Tag, load_tag_map
from hil.plant_runner import PlantRunner

ROOT = Path(__file__).resolve().parents[3]
SITES = ROOT / "configs" / "sites"
LYO = SITES / "lyophilizer-modbus.yaml"
BIO = SITES / "bioreactor-modbus.yaml"
pytestmark = pytest.mark.timeout(120)


# ------------------------------------------------------------------------------ the rig
#: asks for the same far-away inputs every cycle; records the estimates it was given
Target = FixedPolicy


class Plc:
    """The PLC's side of the contract on a tag table, with the site's model as true plant."""

    def __init__(
        self,
        site: Site,
        table: TagTable,
        clock: SteppedClock,
        working: Mapping[str, float],
        noise: Mapping[str, float],
    ) -> None:
        self.table, self.clock = table, clock
        tm, model = site.tags, site.model
        binding = Binding.of(tm, model)
        readings = binding.reading_tags()
        self.sp = binding.setpoint_tags()
        self.pv = {i: readings[i] for i in model.input_names}
        self.meas = {o: readings[o] for o in model.output_names if o in readings}
        self.plant = PlantRunner(model, site.controller.sample_time, noise_std=noise, seed=5)
        self.working = dict(working)
        self.follow, self.active, self.scans = True, False, 0
        self.forced: dict[str, tuple[float, Quality]] = {}

    def scan(self) -> None:
        t, now = self.table, self.clock.now()
        was_active = self.active
        if self.follow:
            self.active = t.current("mpc_request") > 0.5
        if self.active and was_active:  # the remote setpoints are the working ones
            self.working = {i: t.current(tag) for i, tag in self.sp.items()}
        else:  # setpoint tracking, for a bumpless start
            t.publish(now, {tag: self.working[i] for i, tag in self.sp.items()})
        if self.scans:
            self.plant.advance(self.working)
        self.scans += 1
        y = self.plant.measure()
        t.publish(now, {tag: y[o] for o, tag in self.meas.items()})
        t.publish(now, {tag: self.working[i] for i, tag in self.pv.items()})
        t.publish(
            now,
            {
                "mpc_permissive": 1.0,
                "mpc_active": float(self.active),
                "plc_scan_counter": float(self.scans),
                "plc_heartbeat": float(self.scans),
                "measurement_validity": 65535.0,
            },
        )
        for tag, (value, quality) in self.forced.items():
            t.values[tag] = TagValue(value, quality, now, now)


class Port(MemoryPort):
    """A memory port (flagging reads as every port does) that logs the writes; ``tamper``
    may rewrite the report of a setpoint write (a rogue read-back)."""

    def __init__(self, table: TagTable, clock: SteppedClock, site: Site) -> None:
        super().__init__(table, clock, site.tags)
        self.sp_names = {n for n, t in site.tags.tags.items() if t.binds and t.writable}
        self.writes: list[dict[str, float]] = []
        self.tamper: Callable[[WriteReport], WriteReport] | None = None

    async def write(self, values: Mapping[str, float]) -> WriteReport:
        report = await super().write(values)
        if set(values) & self.sp_names:
            self.writes.append(dict(values))
            if self.tamper is not None:
                report = self.tamper(report)
        return report


@dataclass
class Rig:
    site: Site
    sup: Supervisor
    plc: Plc
    port: Port
    clock: SteppedClock
    audit: AuditTrail
    policy: Target
    historian: MemoryHistorian
    #: (y, exclude) of every estimator update
    estimator_calls: list[tuple[dict[str, float], tuple[str, ...]]]
    views: list[CycleView] = field(default_factory=list)

    async def cycle(self) -> CycleView:
        """One PLC scan, one controller cycle, then a sample of process time."""
        self.plc.scan()
        view = await self.sup.cycle(len(self.views), self.clock.now())
        self.views.append(view)
        self.clock.advance(self.sup.dt_s)
        return view

    async def cycles(self, n: int) -> list[State]:
        return [(await self.cycle()).state for _ in range(n)]

    def records(self, action: str) -> list[Any]:
        return [r for r in self.audit.records() if r.action == action]


def why(view: CycleView) -> str:
    """What the cycle recorded about the data it did not trust (one historian event each)."""
    return "; ".join(e.message for e in view.events)


def _with_tags(site: Site, **changes: dict[str, Any]) -> Site:
    """The site with some tags changed (tag -> field -> value)."""
    tags = dict(site.tags.tags)
    for name, update in changes.items():
        tags[name] = Tag.model_validate({**tags[name].model_dump(), **update})
    return dataclasses.replace(site, tags=site.tags.model_copy(update={"tags": tags}))


async def make_rig(
    site: Site,
    tmp_path: Path,
    working: Mapping[str, float],
    target: Mapping[str, float],
    noise: Mapping[str, float],
) -> Rig:
    clock = SteppedClock()
    initial = {"measurement_validity": 65535.0, "mpc_permissive": 1.0}
    table = table_from_tag_map(site.tags, initial)
    port = Port(table, clock, site)
    await port.connect()
    policy = Target(target)
    pipeline = build_pipeline(site, policy)
    calls: list[tuple[dict[str, float], tuple[str, ...]]] = []
    update = pipeline.estimator.update

    def spy(u: Any, y: Mapping[str, float], *args: Any, **kwargs: Any) -> Any:
        calls.append((dict(y), tuple(kwargs.get("exclude", ()))))
        return update(u, y, *args, **kwargs)

    pipeline.estimator.update = spy  # type: ignore[method-assign]
    audit = AuditTrail(tmp_path / "audit.db", config_hash="cfg", actor="pharmatwin-service")
    historian = MemoryHistorian()
    info = run_info(site.name, "closed-loop", config_files(site), site.model)
    historian.start_run(info)
    sup = Supervisor(
        site,
        port,
        clock,
        pipeline,
        mode=Mode.CLOSED_LOOP,
        audit=audit,
        historian=historian_sink(historian, 0),
        run_id=info.run_id,
    )
    plc = Plc(site, table, clock, working, noise)
    return Rig(site, sup, plc, port, clock, audit, policy, historian, calls)


@pytest.fixture(scope="module")
def lyo() -> Site:
    return load_site(LYO)


@pytest.fixture(scope="module")
def bio() -> Site:
    return load_site(BIO)


async def lyo_rig(site: Site, tmp_path: Path) -> Rig:
    """The freeze dryer from its nominal inputs, asked for a warmer shelf and more pressure."""
    return await make_rig(
        site, tmp_path, {"Tsh": -35.0, "Pch": 0.15}, {"Tsh": -10.0, "Pch": 0.2}, {"Tbot": 0.1}
    )


async def bio_rig(site: Site, tmp_path: Path) -> Rig:
    """The fed batch on the PLC's 0.03 L/h recipe, asked for 0.1 L/h."""
    noise = {"X_meas": 0.01, "S_meas": 0.005, "P_meas": 0.002, "V_meas": 0.05}
    return await make_rig(site, tmp_path, {"u": 0.03}, {"u": 0.1}, noise)


# ------------------------------------------------------------------------------ schema
def test_the_tag_schema_refuses_bad_data_trust_keys_naming_tag_key_and_value(
    tmp_path: Path,
) -> None:
    doc = yaml.safe_load((ROOT / "configs" / "tags" / "bioreactor.yaml").read_text())
    tags = doc["tags"]
    tags["biomass"]["valid_range"] = [30.0, -0.5]
    tags["substrate"]["on_bad"] = "predict"  # without predict_cycles
    tags["product_titer"]["predict_cycles"] = 3  # without on_bad: predict
    tags["titer_estimate"]["valid_range"] = [0.0, 1.0]  # a publication is never read
    tags["feed_rate_pv"]["min_write_interval"] = 10.0  # a read-only tag is never written
    tags["broth_volume"]["on_bad"] = "guess"
    path = tmp_path / "tags.yaml"
    path.write_text(yaml.safe_dump(doc))
    with pytest.raises(ConfigError) as err:
        load_tag_map(path)
    text = str(err.value)
    for expected in (
        "tags.biomass",
        "valid_range lower 30.0 must be below upper -0.5",
        "tags.substrate",
        "on_bad 'predict' needs 'predict_cycles'",
        "tags.product_titer",
        "'predict_cycles' applies only with on_bad 'predict'",
        "tags.titer_estimate",
        "'valid_range' applies to setpoints and measurements only",
        "tags.feed_rate_pv",
        "'min_write_interval' applies to setpoints the twin writes",
        "tags.broth_volume.on_bad",
        "'guess'",
    ):
        assert expected in text, expected
    assert str(path) in text


def test_on_bad_predict_on_a_working_setpoint_is_refused(bio: Site, tmp_path: Path) -> None:
    site = _with_tags(bio, feed_rate_pv={"on_bad": "predict", "predict_cycles": 2})
    with pytest.raises(ConfigError) as err:
        Supervisor(
            site,
            MemoryPort(TagTable(), SteppedClock()),
            SteppedClock(),
            build_pipeline(site, Target({"u": 0.1})),
            mode=Mode.CLOSED_LOOP,
            audit=AuditTrail(tmp_path / "a.db"),
        )
    assert "tags.feed_rate_pv.on_bad" in str(err.value)
    assert "working setpoint of input 'u'" in str(err.value)


@pytest.mark.parametrize("path", sorted((ROOT / "configs" / "sites").glob("*-modbus.yaml")))
def test_every_shipped_measurement_is_range_checked_and_watched_for_freezing(path: Path) -> None:
    """Every noisy analog measurement has ``frozen_after`` and a ``valid_range`` inside its
    instrument span; every working setpoint a ``valid_range``; every setpoint a minimum
    write interval; and the model's own start lies inside every range."""
    site = load_site(path)
    tm, model = site.tags, site.model
    binding = Binding.of(tm, model)
    readings = binding.reading_tags()
    outputs = model.output_names
    assert all(o in readings for o in outputs)
    for o in outputs:
        tag = tm.tags[readings[o]]
        assert tag.frozen_after is not None and 2 <= tag.frozen_after <= 6, readings[o]
        assert tag.valid_range is not None and tag.limits is not None, readings[o]
        assert tag.limits[0] <= tag.valid_range[0] < tag.valid_range[1] <= tag.limits[1]
        assert tag.on_bad == "hold" and not tag.uncertain_is_good
    for i in model.input_names:
        pv = tm.tags[readings[i]]
        assert pv.valid_range is not None and pv.frozen_after is None
        lo, hi = pv.valid_range
        assert lo <= model.variable(i).lower and model.variable(i).upper <= hi  # the actuator
        sp = tm.tags[binding.setpoint_tag(i) or ""]
        assert sp.min_write_interval == pytest.approx(
            site.controller.sample_time * model.seconds_per_unit / 2
        )
    outputs_at_start = PlantRunner(model, site.controller.sample_time).true_state().outputs
    for o, value in outputs_at_start.items():
        lo, hi = tm.tags[readings[o]].valid_range or (math.nan, math.nan)
        assert lo <= value <= hi, (o, value)


# ------------------------------------------------------------------------------ plausibility
@pytest.mark.parametrize(
    ("value", "counter"),
    [
        (50.0, "implausible_values"),  # the biomass: impossible by mass balance
        (1e30, "implausible_values"),  # a byte-swapped float (outside the probe's span too)
        (3e38, "implausible_values"),
        (math.nan, "non_finite_values"),
        (math.inf, "non_finite_values"),
    ],
)
async def test_an_impossible_biomass_never_reaches_the_estimator_or_the_mpc(
    bio: Site, tmp_path: Path, value: float, counter: str, caplog: pytest.LogCaptureFixture
) -> None:
    rig = await bio_rig(bio, tmp_path)
    assert await rig.cycles(3) == [State.REQUESTING, State.RUNNING, State.RUNNING]
    writes, solves, updates = len(rig.port.writes), len(rig.policy.seen), len(rig.estimator_calls)
    rig.plc.forced["biomass"] = (value, Quality.GOOD)
    view = await rig.cycle()
    assert view.state is State.HOLD
    assert len(rig.port.writes) == writes  # nothing written
    assert len(rig.policy.seen) == solves  # the MPC was not even asked
    y, exclude = rig.estimator_calls[-1]
    assert len(rig.estimator_calls) == updates + 1  # the estimator rode on its prediction
    assert exclude == ("X_meas",) and "X_meas" not in y
    assert getattr(rig.sup.counters, counter) == 1
    assert "bad-quality inputs ['biomass']" in view.problems[0]
    assert "bad-quality inputs ['biomass']" in caplog.text  # logged
    kind = "data.implausible" if counter == "implausible_values" else "data.non_finite"
    events = rig.historian.events(rig.sup.run_id)
    assert [e.kind for e in events if e.key == "biomass"] == ["data.policy", kind, "data.use"]
    assert rig.records("mode.change")[-1].new_value == "HOLD"  # audited with its cause
    assert "biomass" in rig.records("mode.change")[-1].reason
    del rig.plc.forced["biomass"]  # the probe is back: control resumes
    assert (await rig.cycle()).state is State.RUNNING
    assert len(rig.port.writes) == writes + 1


async def test_the_biomass_of_50_g_per_l_is_named_with_its_physical_range(
    bio: Site, tmp_path: Path
) -> None:
    rig = await bio_rig(bio, tmp_path)
    await rig.cycles(2)
    rig.plc.forced["biomass"] = (50.0, Quality.GOOD)
    view = await rig.cycle()
    assert view.problems == ["bad-quality inputs ['biomass']"]
    assert "biomass = 50 outside its valid range: physically possible: [-0.5, 30] g/L" in why(view)
    kinds = {e.kind for e in rig.historian.events(rig.sup.run_id)}
    assert "data.implausible" in kinds


async def test_a_value_outside_the_instrument_span_is_flagged_and_held(
    bio: Site, tmp_path: Path
) -> None:
    """A titer read as 60 g/L (a lost x0.1 scale): the port flags it uncertain ("outside
    limits"), and it is outside the physical range too. Without a valid_range, the uncertain
    quality alone holds (uncertain does not count as good by default)."""
    for k, (site, reason) in enumerate((
        (bio, "product_titer = 60 outside its valid range: physically possible: [-0.1, 20] g/L; "
         "outside limits: wrong word order or scale? (read 60, limits [-1, 50])"),
        (_with_tags(bio, product_titer={"valid_range": None}),
         "product_titer = 60 uncertain quality: outside limits: wrong word order or scale?"),
    )):  # fmt: skip
        (tmp_path / str(k)).mkdir()
        rig = await bio_rig(site, tmp_path / str(k))
        await rig.cycles(2)
        rig.plc.forced["product_titer"] = (60.0, Quality.GOOD)
        view = await rig.cycle()
        tv = view.snapshot.values["product_titer"] if view.snapshot else None
        assert tv is not None and tv.quality is Quality.UNCERTAIN
        assert tv.detail.startswith("outside limits: wrong word order or scale?")
        assert view.state is State.HOLD and reason in why(view)


# ------------------------------------------------------------------------------ non-finite
async def test_a_nan_working_setpoint_at_start_keeps_init_and_never_crashes(
    lyo: Site, tmp_path: Path
) -> None:
    """Before: the supervisor stayed in INIT and then called the estimator, which raised
    SafetyOrderError out of the loop (the run ended with a traceback)."""
    rig = await lyo_rig(lyo, tmp_path)
    rig.plc.forced["shelf_temp_pv"] = (math.nan, Quality.GOOD)
    assert await rig.cycles(3) == [State.INIT] * 3
    assert rig.port.writes == [] and rig.estimator_calls == [] and rig.policy.seen == []
    assert "working setpoints not trusted, staying in INIT" in rig.views[-1].problems[0]
    assert "shelf_temp_pv = nan" in rig.views[-1].problems[0]
    assert rig.sup.counters.untrusted_working == 3
    del rig.plc.forced["shelf_temp_pv"]
    assert await rig.cycles(2) == [State.REQUESTING, State.RUNNING]


@pytest.mark.parametrize("value", [1e30, -3e38, 500.0])
async def test_an_impossible_working_setpoint_at_start_keeps_init(
    lyo: Site, tmp_path: Path, value: float
) -> None:
    """Before: a shelf PV of 1e30 became the safety layer's last value and the estimator's
    input; the controller engaged and wrote the pressure alone."""
    rig = await lyo_rig(lyo, tmp_path)
    rig.plc.forced["shelf_temp_pv"] = (value, Quality.GOOD)
    assert await rig.cycles(3) == [State.INIT] * 3
    assert rig.port.writes == [] and rig.sup.counters.implausible_values == 3


async def test_a_nan_read_back_holds_and_the_next_move_counts_from_what_was_trusted(
    lyo: Site, tmp_path: Path
) -> None:
    """Before: the NaN read-back became the move limits' origin and SafetyFilter.reset raised
    ValueError out of the loop."""
    rig = await lyo_rig(lyo, tmp_path)
    assert await rig.cycles(3) == [State.REQUESTING, State.RUNNING, State.RUNNING]
    in_place = rig.sup.pipeline.safety.last["Tsh"]

    def nan_readback(report: WriteReport) -> WriteReport:
        results = {
            tag: WriteResult(tag, r.requested, WriteStatus.MISMATCH, math.nan, "read back nan")
            for tag, r in report.results.items()
        }
        return WriteReport(results, report.write_time)

    rig.port.tamper = nan_readback
    view = await rig.cycle()
    assert view.state is State.HOLD
    assert rig.sup.counters.readback_failures == 2
    assert any("read-back of shelf_temp_sp is nan" in p for p in view.problems)
    assert rig.sup.pipeline.safety.last["Tsh"] == in_place  # not the NaN, not the request
    rig.port.tamper = None
    assert (await rig.cycle()).state is State.RUNNING
    # the PLC did apply the write whose read-back was NaN (in_place + 6): the next move
    # counts from what its working setpoint says it has, not from what was assumed
    assert rig.port.writes[-1]["shelf_temp_sp"] == pytest.approx(in_place + 12.0)


async def test_a_nan_validity_word_or_scan_counter_holds_and_never_crashes(
    lyo: Site, tmp_path: Path
) -> None:
    """Before: int(nan) of the validity word raised ValueError out of the loop."""
    rig = await lyo_rig(lyo, tmp_path)
    await rig.cycles(3)
    writes = len(rig.port.writes)
    rig.plc.forced["measurement_validity"] = (math.nan, Quality.GOOD)
    view = await rig.cycle()
    assert view.problems == ["bad-quality inputs ['product_temp_bottom']"]
    assert "product_temp_bottom = " in why(view) and "marked invalid by the PLC" in why(view)
    del rig.plc.forced["measurement_validity"]
    rig.plc.forced["plc_scan_counter"] = (math.inf, Quality.GOOD)
    view = await rig.cycle()
    assert view.problems == ["stale inputs ['product_temp_bottom']"]
    assert "the PLC image is stale" in why(view) and "plc_scan_counter = inf" in why(view)
    assert len(rig.port.writes) == writes


# ------------------------------------------------------------------------------ working SPs
async def test_a_bad_working_setpoint_pv_holds_the_writes(lyo: Site, tmp_path: Path) -> None:
    """Before: only the measured outputs were checked; a BAD shelf PV went unnoticed."""
    rig = await lyo_rig(lyo, tmp_path)
    await rig.cycles(3)
    writes = len(rig.port.writes)
    rig.plc.forced["chamber_pressure_pv"] = (0.2, Quality.BAD)
    view = await rig.cycle()
    assert view.state is State.HOLD and len(rig.port.writes) == writes
    assert "untrusted working setpoints ['chamber_pressure_pv']" in view.problems[0]
    assert rig.sup.counters.untrusted_working == 1


# ------------------------------------------------------------------------------ the policy
async def test_on_bad_predict_rides_on_the_model_then_holds_and_is_audited(
    lyo: Site, tmp_path: Path
) -> None:
    site = _with_tags(lyo, product_temp_bottom={"on_bad": "predict", "predict_cycles": 2})
    rig = await lyo_rig(site, tmp_path)
    await rig.cycles(3)
    writes = len(rig.port.writes)
    rig.plc.forced["product_temp_bottom"] = (-30.0, Quality.BAD)
    states = await rig.cycles(4)
    assert states == [State.RUNNING, State.RUNNING, State.HOLD, State.HOLD]
    assert len(rig.port.writes) == writes + 2  # two cycles on the prediction, then held
    assert [c[1] for c in rig.estimator_calls[-4:]] == [("Tbot",)] * 4
    assert rig.sup.counters.predicted_cycles == 2
    del rig.plc.forced["product_temp_bottom"]
    assert (await rig.cycle()).state is State.RUNNING
    uses = [rig.historian.cycles(rig.sup.run_id)[k].monitor for k in range(3, 8)]
    assert [m["data.use.product_temp_bottom"] for m in uses] == [1.0, 1.0, 2.0, 2.0, 0.0]
    changes = [(r.old_value, r.new_value) for r in rig.records("data.use")]
    assert changes == [("measured", "predicted"), ("predicted", "held"), ("held", "measured")]
    assert "prediction for at most 2 cycles, then hold" in rig.records("data.use")[0].reason
    policy = rig.records("data.policy")
    assert [(r.target, r.new_value) for r in policy] == [("product_temp_bottom", "predict")]
    (event,) = rig.historian.events(rig.sup.run_id, "data.policy")  # the policy in force
    assert event.detail == {
        "output": "Tbot",
        "on_bad": "predict",
        "predict_cycles": 2,
        "uncertain_is_good": False,
    }
    assert [e.kind for e in rig.historian.events(rig.sup.run_id, "data.use")] == ["data.use"] * 3


@pytest.mark.parametrize("uncertain_is_good", [False, True])
async def test_uncertain_counts_as_good_only_where_the_tag_says_so(
    lyo: Site, tmp_path: Path, uncertain_is_good: bool
) -> None:
    site = _with_tags(lyo, product_temp_bottom={"uncertain_is_good": uncertain_is_good})
    rig = await lyo_rig(site, tmp_path)
    await rig.cycles(3)
    writes = len(rig.port.writes)
    value = rig.plc.plant.measure()["Tbot"]
    rig.plc.forced["product_temp_bottom"] = (value, Quality.UNCERTAIN)
    view = await rig.cycle()
    assert (len(rig.port.writes) == writes + 1) is uncertain_is_good
    assert (view.state is State.RUNNING) is uncertain_is_good


# ------------------------------------------------------------------------------ the gate
async def test_a_measurement_the_innovation_gate_rejects_is_counted_logged_recorded_and_held(
    lyo: Site, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A plausible value (30 degC is a product temperature the dryer can reach) that the
    model cannot explain: the estimator keeps it out of its correction, the cycle holds."""
    rig = await lyo_rig(lyo, tmp_path)
    assert await rig.cycles(4) == [State.REQUESTING] + [State.RUNNING] * 3
    writes = len(rig.port.writes)
    caplog.set_level(logging.WARNING, "pharmatwin.supervisor")
    rig.plc.forced["product_temp_bottom"] = (30.0, Quality.GOOD)
    view = await rig.cycle()
    assert view.estimate is not None and view.estimate.rejected == ("Tbot",)
    assert view.state is State.HOLD and len(rig.port.writes) == writes
    assert rig.sup.counters.gate_rejections == 1
    # a review: it said "bad-quality inputs" of a GOOD value the model could not explain
    assert view.problems == [
        "inputs the estimator's innovation gate rejected ['product_temp_bottom']"
    ]
    assert "product_temp_bottom = 30 rejected by the estimator's innovation gate" in why(view)
    assert "standard deviations" in why(view) and "rejected" in caplog.text
    rejected = rig.historian.events(rig.sup.run_id, "data.rejected")
    assert [(e.key, e.detail["value"]) for e in rejected] == [("product_temp_bottom", 30.0)]


async def test_a_failing_estimator_holds_counts_and_falls_back(lyo: Site, tmp_path: Path) -> None:
    """Before: an estimator failure held silently (no problem, no count), forever."""
    rig = await lyo_rig(lyo, tmp_path)
    await rig.cycles(3)
    update = rig.sup.pipeline.estimator.update

    def failing(*args: Any, **kwargs: Any) -> Estimate:
        est = update(*args, **kwargs)
        return dataclasses.replace(est, ok=False, reason="prediction failed")

    rig.sup.pipeline.estimator.update = failing  # type: ignore[method-assign]
    max_bad = lyo.runtime.max_bad_cycles
    states = await rig.cycles(max_bad)
    assert states == [State.HOLD] * (max_bad - 1) + [State.FALLBACK]
    assert rig.sup.counters.estimator_failures == max_bad
    assert "estimator failed: prediction failed" in rig.views[-1].problems[0]


# ------------------------------------------------------------------------------ timing
async def test_after_a_stall_missed_cycles_are_skipped_not_run_back_to_back(
    lyo: Site, tmp_path: Path
) -> None:
    rig = await lyo_rig(lyo, tmp_path)
    reads = 0
    read = rig.port.read

    async def counting(tags: Any) -> Any:
        nonlocal reads
        reads += 1
        return await read(tags)

    rig.port.read = counting  # type: ignore[method-assign]
    stop = asyncio.Event()
    task = asyncio.create_task(rig.sup.run(stop, cycles=4))
    dt = rig.sup.dt_s

    async def parked() -> None:
        while rig.clock.waiting == 0:
            assert not task.done()
            await asyncio.sleep(0)

    rig.plc.scan()
    await parked()
    assert reads == 1
    rig.clock.advance(5 * dt + 1.0)  # the process was stopped for five samples
    rig.plc.scan()
    await parked()
    assert reads == 2  # one cycle now, not five back to back
    assert (rig.sup.counters.stalls, rig.sup.counters.skipped_cycles) == (1, 4)
    rig.clock.advance(dt / 2)
    await asyncio.sleep(0)
    assert reads == 2  # the schedule restarted at the wake-up: the next one a sample later
    rig.clock.advance(dt / 2 + 1.0)
    await parked()
    assert reads == 3
    stop.set()
    await asyncio.wait_for(task, 10)


async def test_two_setpoint_writes_are_never_closer_than_the_minimum_interval(
    lyo: Site, tmp_path: Path
) -> None:
    """A cycle called 60 s after the last write (a loop driven off its schedule) holds."""
    rig = await lyo_rig(lyo, tmp_path)
    await rig.cycles(3)
    assert rig.sup.min_write_interval_s == 180.0  # min_write_interval of the setpoint tags
    rig.plc.scan()
    assert (await rig.sup.cycle(3, rig.clock.now())).state is State.RUNNING
    writes = len(rig.port.writes)
    rig.clock.advance(60.0)
    rig.plc.scan()
    view = await rig.sup.cycle(4, rig.clock.now())
    assert view.state is State.HOLD and len(rig.port.writes) == writes
    assert rig.sup.counters.write_spacing_holds == 1
    assert (
        "setpoints last written 60 s ago, less than the minimum interval of 180 s"
        in (view.problems[0])
    )
    rig.clock.advance(120.0)  # 180 s after the last write: allowed again
    rig.plc.scan()
    assert (await rig.sup.cycle(5, rig.clock.now())).state is State.RUNNING
    assert len(rig.port.writes) == writes + 1
