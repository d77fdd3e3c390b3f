"""Data trust against a PLC clock ahead of ours, and a stuck value read UNCERTAIN.

Found by a review helper with the real supervisor: a measurement stamped 1 h in the future had
a negative age, so it passed as fresh for that hour (a stuck value was written from); and the
stuck-value count only counted GOOD reads, so a value stuck at UNCERTAIN quality on a tag that
trusts UNCERTAIN (``uncertain_is_good``) was never caught. Each test fails on the old code."""

from __future__ import annotations

from pathlib import Path

import pytest

from controller.binding import Binding
from controller.ports.base import Quality, Snapshot, TagValue
from controller.runtime.site import Site, load_site
from controller.runtime.trust import DataTrust, Reason
from controller.tags import TagMap

ROOT = Path(__file__).resolve().parents[3]
BIO = ROOT / "configs" / "sites" / "bioreactor-modbus.yaml"
TAG = "broth_volume"  # stale_after 30 s, frozen_after 6


def trust_for(site: Site, tags: TagMap | None = None) -> DataTrust:
    tm = tags or site.tags
    binding = Binding.of(tm, site.model)
    sp, pv = binding.setpoint_tags(), binding.working_setpoint_tags()
    working = {i: pv.get(i) or sp[i] for i in site.model.input_names}
    return DataTrust(tm, binding.output_tags(), working, binding.measurement_tags()[:16])


def _read(value: float, quality: Quality, source: float, now: float) -> Snapshot:
    return Snapshot({TAG: TagValue(value, quality, source, now)}, now)


def _distrust(trust: DataTrust, snap: Snapshot) -> Reason | None:
    judged = trust.judge(snap)
    out = [d for d in judged.outputs.values() if d.tag == TAG]
    return out[0].reason if out else None


def test_a_source_timestamp_in_the_future_is_not_fresh() -> None:
    site = load_site(BIO)
    trust = trust_for(site)
    now = 10_000.0
    assert _distrust(trust, _read(120.0, Quality.GOOD, now, now)) is None
    assert _distrust(trust, _read(120.0, Quality.GOOD, now + 20.0, now)) is None  # within 30 s
    judged = trust.judge(_read(120.0, Quality.GOOD, now + 3600.0, now))
    (why,) = [d for d in judged.outputs.values() if d.tag == TAG]
    assert why.reason is Reason.STALE and "3.6e+03 s in the future" in why.detail
    assert "V_meas" not in judged.measured


def test_a_scaled_clock_tolerates_a_tiny_wall_skew_in_the_future() -> None:
    # at 3600 x, 1 ms of wall skew is 3.6 process seconds: the wall-time floor applies both ways
    site = load_site(BIO)
    trust = trust_for(site)
    trust.rate = 3600.0
    now = 10_000.0
    assert _distrust(trust, _read(120.0, Quality.GOOD, now + 100.0, now)) is None
    assert _distrust(trust, _read(120.0, Quality.GOOD, now + 3600.0 * 5, now)) is Reason.STALE


@pytest.mark.parametrize(
    "qualities",
    [
        [Quality.UNCERTAIN] * 6,
        [Quality.GOOD, Quality.UNCERTAIN] * 3,  # a change of quality alone is no new value
    ],
)
def test_a_stuck_value_read_uncertain_on_a_tag_that_trusts_it_is_frozen(
    qualities: list[Quality],
) -> None:
    site = load_site(BIO)
    tags = dict(site.tags.tags)
    tags[TAG] = tags[TAG].model_copy(update={"uncertain_is_good": True})
    trust = trust_for(site, site.tags.model_copy(update={"tags": tags}))
    reasons = []
    for k, quality in enumerate(qualities):
        now = 1800.0 * k  # a fresh stamp each read: only the value is stuck
        reasons.append(_distrust(trust, _read(120.05, quality, now, now)))
    assert reasons[:5] == [None] * 5 and reasons[5] is Reason.FROZEN


def test_a_stuck_value_alternating_good_and_uncertain_is_frozen_on_a_tag_not_trusting_it() -> None:
    """A review: an UNCERTAIN read ended the run, so a stuck transmitter read GOOD and
    UNCERTAIN in turn was never frozen, and every GOOD cycle wrote from it (the UNCERTAIN
    cycles held)."""
    site = load_site(BIO)
    assert not site.tags.tags[TAG].uncertain_is_good
    trust = trust_for(site)
    reasons = []
    for k, quality in enumerate([Quality.GOOD, Quality.UNCERTAIN] * 5):
        now = 1800.0 * k
        reasons.append(_distrust(trust, _read(120.05, quality, now, now)))
    assert reasons[:5] == [None, Reason.UNCERTAIN] * 2 + [None]
    assert reasons[5] is Reason.UNCERTAIN  # its own quality first
    assert reasons[6::2] == [Reason.FROZEN] * 2  # the GOOD reads from the sixth on


def test_a_bad_read_still_ends_a_run_of_repeats() -> None:
    site = load_site(BIO)
    trust = trust_for(site)
    reasons = []
    for k, quality in enumerate([Quality.GOOD] * 5 + [Quality.BAD] + [Quality.GOOD] * 5):
        now = 1800.0 * k
        reasons.append(_distrust(trust, _read(120.05, quality, now, now)))
    assert reasons[5] is Reason.BAD and Reason.FROZEN not in reasons
