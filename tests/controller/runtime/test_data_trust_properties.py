"""Property tests: the supervisor driven with arbitrary snapshots and arbitrary read-backs.

Hypothesis draws, cycle after cycle, every tag's value (any float: NaN, infinities, 1e30,
3e38, or a plausible one), quality, age, the contract flags, the time to the next cycle, and
the PLC's answer to each setpoint write (ok, refused, failed, or a read-back of any float).
The properties, checked by an oracle written here from the specification, not from the code:

* nothing crashes;
* no write is computed from data that cannot be trusted: every value the estimator corrects
  with was GOOD, finite, within its limits and valid range, fresh and marked valid in that
  cycle's snapshot; a cycle that writes setpoints used no excluded or rejected measurement,
  an estimate that is ``ok``, and trusted working setpoints;
* every write lies within its input's limits and within one move of what the PLC last
  reported it had (the last accepted write or read-back, or the trusted working setpoint);
* two setpoint writes are never closer than the minimum interval.

The lyophilizer runs with its estimator's innovation gate off in one property (random
plausible product temperatures would all be rejected by the gate, leaving no write to check)
and on in the other.
"""

from __future__ import annotations

import asyncio
import dataclasses
import math
import tempfile
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from test_data_trust import Target

from controller.binding import Binding
from controller.clock import SteppedClock
from controller.core.pipeline import input_limits
from controller.ports.base import (
    Port,
    Quality,
    Snapshot,
    TagValue,
    WriteReport,
    WriteResult,
    WriteStatus,
)
from controller.runtime.audit import AuditTrail
from controller.runtime.site import Site, load_site
from controller.runtime.supervisor import Mode, Supervisor
from controller.runtime.wiring import build_pipeline
from controller.tags import Tag

ROOT = Path(__file__).resolve().parents[3]
LYO = load_site(ROOT / "configs" / "sites" / "lyophilizer-modbus.yaml")
CYCLES = 8
pytestmark = [pytest.mark.timeout(300), pytest.mark.slow]
#: values a rogue PLC sends
GARBAGE = [math.nan, math.inf, -math.inf, 1e30, -1e30, 3e38, -3e38, 4.2e9, 0.0, -1.0]
PROPERTY = settings(
    max_examples=25,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)


def _gate_off(site: Site) -> Site:
    spec = site.controller.estimator.model_copy(update={"innovation_gate": None})
    return dataclasses.replace(
        site, controller=site.controller.model_copy(update={"estimator": spec})
    )


# ------------------------------------------------------------------------------ drawing
def _plausible(tag: Tag) -> st.SearchStrategy[float]:
    if tag.valid_range is not None:
        return st.floats(*tag.valid_range)
    if tag.unit == "bool":
        return st.sampled_from([0.0, 1.0])
    return st.integers(0, 65535).map(float)


def _implausible(tag: Tag) -> st.SearchStrategy[float]:
    """Within the instrument's span but outside what the process can physically be."""
    if tag.valid_range is None or tag.limits is None:
        return st.sampled_from(GARBAGE)
    (lo, hi), (span_lo, span_hi) = tag.valid_range, tag.limits
    sides = [st.floats(hi, span_hi, exclude_min=True)] if span_hi > hi else []
    sides += [st.floats(span_lo, lo, exclude_max=True)] if span_lo < lo else []
    return st.one_of(*sides) if sides else st.sampled_from(GARBAGE)


def _value(tag: Tag) -> st.SearchStrategy[float]:
    return st.one_of(_plausible(tag), _implausible(tag), st.sampled_from(GARBAGE), st.floats())


@st.composite
def _tag_value(draw: st.DrawFn, tag: Tag, now: float, clean: bool) -> TagValue:
    if clean:
        return TagValue(draw(_plausible(tag)), Quality.GOOD, now, now)
    quality = draw(st.sampled_from([Quality.GOOD, Quality.GOOD, Quality.UNCERTAIN, Quality.BAD]))
    # negative: a source stamp ahead of the controller's clock (a PLC clock ahead, or ours
    # stepped back): its age cannot be known
    ages = (0.0, 2 * tag.stale_after, 1e9)
    age = draw(
        st.one_of(
            st.just(0.0),
            st.floats(-ages[1], ages[1]),
            st.floats(-ages[2], ages[2]),
        )
    )
    return TagValue(draw(_value(tag)), quality, now - age, now)


@st.composite
def _answer(draw: st.DrawFn) -> tuple[WriteStatus, float | None]:
    """The PLC's answer to a setpoint write (the same for every tag of it)."""
    status = draw(st.sampled_from(list(WriteStatus)))
    readback = draw(st.one_of(st.none(), st.sampled_from(GARBAGE), st.floats()))
    return status, readback


@dataclass
class Cycle:
    tags: dict[str, TagValue]
    proposal: dict[str, float]  # what the policy asks for
    answer: tuple[WriteStatus, float | None]
    advance: float  # process seconds to the next cycle


@st.composite
def _cycles(draw: st.DrawFn, site: Site) -> list[Cycle]:
    readable = {n: t for n, t in site.tags.tags.items() if t.readable}
    dt = site.controller.sample_time * site.model.seconds_per_unit
    out = []
    for k in range(CYCLES):
        now = 0.0  # shifted to the cycle's own time when read
        clean = draw(st.booleans())
        tags = {n: draw(_tag_value(t, now, clean)) for n, t in readable.items()}
        if clean:  # a PLC that plays the contract: active, scanning, every bit valid
            tags["mpc_active"] = TagValue(1.0, Quality.GOOD, now, now)
            tags["plc_scan_counter"] = TagValue(float(k), Quality.GOOD, now, now)
            tags["measurement_validity"] = TagValue(65535.0, Quality.GOOD, now, now)
        proposal = {
            i: draw(st.one_of(st.floats(lim.lower - 10, lim.upper + 10), st.floats()))
            for i, lim in site.controller.inputs.items()
        }
        advance = draw(st.sampled_from([1.0, 1.0, 1.0, 0.25, 3.0])) * dt
        out.append(Cycle(tags, proposal, draw(_answer()), advance))
    return out


# ------------------------------------------------------------------------------ the port
class ScriptedPort(Port):
    """Serves the drawn snapshots and answers setpoint writes as drawn."""

    def __init__(self, site: Site, clock: SteppedClock) -> None:
        self.clock = clock
        self.setpoints = set(Binding.of(site.tags, site.model).setpoint_tags().values())
        self.cycle: Cycle | None = None
        self.log: list[tuple[float, dict[str, float], WriteReport]] = []

    async def read(self, tags: Iterable[str]) -> Snapshot:
        assert self.cycle is not None
        now = self.clock.now()
        values = {
            n: dataclasses.replace(tv, source_time=tv.source_time + now, read_time=now)
            for n, tv in self.cycle.tags.items()
            if n in set(tags)
        }
        return Snapshot(values, now)

    async def write(self, values: Mapping[str, float]) -> WriteReport:
        now = self.clock.now()
        if not set(values) & self.setpoints:
            ok = {t: WriteResult(t, v, WriteStatus.OK, v) for t, v in values.items()}
            return WriteReport(ok, now)
        assert self.cycle is not None
        status, readback = self.cycle.answer
        if status is WriteStatus.OK:
            readback = None
        results = {
            t: WriteResult(t, v, status, v if status is WriteStatus.OK else readback)
            for t, v in values.items()
        }
        report = WriteReport(results, now)
        self.log.append((now, dict(values), report))
        return report


class Proposer(Target):
    """Asks for whatever was drawn for the cycle (NaN, huge, out of limits included)."""

    def __init__(self, port: ScriptedPort) -> None:
        super().__init__({})
        self.port = port

    def step(
        self,
        t: float,
        x_hat: Mapping[str, float],
        params: Mapping[str, float] | None = None,
        u_prev: Mapping[str, float] | None = None,
    ) -> Any:
        assert self.port.cycle is not None
        self.target = dict(self.port.cycle.proposal)
        return super().step(t, x_hat, params, u_prev)


# ------------------------------------------------------------------------------ the oracle
@dataclass
class Oracle:
    """What the specification allows, computed from the raw snapshots."""

    site: Site

    def trusted(self, name: str, tv: TagValue | None, now: float, measurement: bool) -> bool:
        tag = self.site.tags.tags[name]
        if tv is None or tv.quality is not Quality.GOOD or not math.isfinite(tv.value):
            return False
        for rng in (tag.limits, tag.valid_range):
            if rng is not None and not rng[0] <= tv.value <= rng[1]:
                return False
        return not measurement or abs(now - tv.source_time) <= tag.stale_after

    def valid_bit(self, snap: Snapshot, tag: str) -> bool:
        order = Binding.of(self.site.tags, self.site.model).measurement_tags()[:16]
        word = snap.values.get("measurement_validity")
        if word is None or tag not in order:
            return True
        v = word.value
        if word.quality is not Quality.GOOD or not math.isfinite(v) or v != int(v):
            return False
        return 0 <= v <= 0xFFFF and bool(int(v) >> order.index(tag) & 1)

    def working(self, snap: Snapshot) -> dict[str, float]:
        binding, out = Binding.of(self.site.tags, self.site.model), {}
        readings = binding.reading_tags()
        for i in self.site.model.input_names:
            tag = readings.get(i) or binding.setpoint_tag(i) or ""
            tv = snap.values.get(tag)
            if self.trusted(tag, tv, snap.read_time, measurement=False) and tv is not None:
                out[i] = tv.value
        return out

    def measured(self, snap: Snapshot) -> dict[str, float]:
        readings = Binding.of(self.site.tags, self.site.model).reading_tags()
        out = {}
        for o in self.site.model.output_names:
            tag = readings[o]
            tv = snap.values.get(tag)
            ok = self.trusted(tag, tv, snap.read_time, measurement=True)
            if ok and self.valid_bit(snap, tag) and tv is not None:
                out[o] = tv.value
        return out


async def _drive(site: Site, cycles: list[Cycle], audit_dir: Path) -> None:
    clock = SteppedClock()
    port = ScriptedPort(site, clock)
    policy = Proposer(port)
    pipeline = build_pipeline(site, policy)
    seen: list[tuple[int, dict[str, float], tuple[str, ...], Any]] = []
    update = pipeline.estimator.update
    k_now = 0

    def spy(u: Any, y: Mapping[str, float], *args: Any, **kwargs: Any) -> Any:
        est = update(u, y, *args, **kwargs)
        seen.append((k_now, dict(y), tuple(kwargs.get("exclude", ())), est))
        return est

    pipeline.estimator.update = spy  # type: ignore[method-assign]
    audit = AuditTrail(audit_dir / "audit.db", config_hash="cfg")
    sup = Supervisor(site, port, clock, pipeline, mode=Mode.CLOSED_LOOP, audit=audit)
    oracle = Oracle(site)
    limits = input_limits(site.controller)
    binding = Binding.of(site.tags, site.model)
    sp = {i: binding.setpoint_tag(i) or "" for i in site.model.input_names}
    last_write: float | None = None
    try:
        for k, cycle in enumerate(cycles):
            k_now = k
            port.cycle = cycle
            writes, solves = len(port.log), len(policy.seen)
            await sup.cycle(k, clock.now())
            snap = await port.read(cycle.tags)
            # every value the estimator corrected with was trusted in this cycle's snapshot
            trusted = oracle.measured(snap)
            for kk, y, exclude, _ in seen:
                if kk != k:
                    continue
                for o, v in y.items():
                    if o not in exclude:
                        assert o in trusted and v == trusted[o], (o, v, snap.values)
            if len(port.log) == writes:
                clock.advance(cycle.advance)
                continue
            # a setpoint write: computed from trusted data only ...
            now, values, _ = port.log[-1]
            assert len(policy.seen) == solves + 1
            updates = [s for s in seen if s[0] == k]
            assert updates and updates[-1][2] == () and updates[-1][3].ok
            assert not updates[-1][3].rejected
            working = oracle.working(snap)
            assert set(working) == set(site.model.input_names)
            # ... within limits and one move of what the PLC reports it has in this cycle
            # (its trusted working setpoints: what it has, whatever was written before) ...
            for i, tag in sp.items():
                if tag not in values:  # no safe value: not written (the PLC keeps its own)
                    continue
                v, lim, base = values[tag], limits[i], working[i]
                assert lim.lower <= v <= lim.upper
                assert base - lim.max_down - 1e-9 <= v <= base + lim.max_up + 1e-9, (i, base, v)
                tag_limits = site.tags.tags[tag].limits
                assert tag_limits is None or tag_limits[0] <= v <= tag_limits[1]
            # ... and never within the minimum interval of the last one
            assert last_write is None or now - last_write >= sup.min_write_interval_s
            last_write = now
            clock.advance(cycle.advance)
    finally:
        audit.close()
    event(f"setpoint writes: {len(port.log)}")  # --hypothesis-show-statistics


def _run(site: Site, cycles: list[Cycle]) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        asyncio.run(_drive(site, cycles, Path(tmp)))


@PROPERTY
@given(cycles=_cycles(LYO))
def test_arbitrary_snapshots_never_crash_nor_write_from_untrusted_data(cycles: list[Cycle]) -> None:
    _run(_gate_off(LYO), cycles)


@PROPERTY
@given(cycles=_cycles(LYO))
def test_with_the_innovation_gate_too(cycles: list[Cycle]) -> None:
    _run(LYO, cycles)
