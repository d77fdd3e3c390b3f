"""A stuck transmitter whose last digit flickers between two codes is as stuck as one that
repeats one value (``frozen_values`` in the tag map).

Found by a review: an analyser stuck at one reading but toggling its last digit never read
the same value twice in a row, so ``frozen_after`` (identical reads) never caught it and the
MPC wrote setpoints computed from it for as long as it was stuck. The first test shows that
failure with a tag that counts identical reads only; the shipped CSTR analysers count reads
taking at most two values."""

from __future__ import annotations

import itertools
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from test_trust_clock_and_stuck import trust_for

from controller.configfile import ConfigError
from controller.ports.base import Quality, Snapshot, TagValue
from controller.runtime.site import Site, load_site
from controller.runtime.trust import DataTrust, Reason
from controller.tags import Tag, TagMap, load_tag_map

ROOT = Path(__file__).resolve().parents[3]
CSTR = ROOT / "configs" / "sites" / "cstr-modbus.yaml"
TAG = "conc_a"
STUCK, CODE = 1.234567, 1.2345671  # a float32 reading and the next one up: the toggling digit


def _with(site: Site, **update: object) -> TagMap:
    tags = dict(site.tags.tags)
    tags[TAG] = tags[TAG].model_copy(update=update)
    return site.tags.model_copy(update={"tags": tags})


def _reasons(trust: DataTrust, values: list[float]) -> list[tuple[Reason | None, str]]:
    out: list[tuple[Reason | None, str]] = []
    for k, value in enumerate(values):
        now = 18.0 * k  # a fresh stamp each read: only the value is stuck
        judged = trust.judge(Snapshot({TAG: TagValue(value, Quality.GOOD, now, now)}, now))
        why = [d for d in judged.outputs.values() if d.tag == TAG]
        out.append((why[0].reason, why[0].detail) if why else (None, ""))
    return out


def test_counting_identical_reads_never_catches_a_flickering_analyser() -> None:
    """The failure the rule protects against: 40 reads of a stuck analyser, all trusted."""
    site = load_site(CSTR)
    trust = trust_for(site, _with(site, frozen_after=3, frozen_values=1))
    flicker = [STUCK, CODE, STUCK, STUCK, CODE] * 8
    assert all(reason is None for reason, _ in _reasons(trust, flicker))


def test_the_shipped_analyser_is_frozen_after_four_reads_of_two_values() -> None:
    site = load_site(CSTR)
    tag = site.tags.tags[TAG]
    assert (tag.frozen_after, tag.frozen_values) == (4, 2)
    trust = trust_for(site)
    got = _reasons(trust, [STUCK, CODE, STUCK, STUCK, CODE, CODE])
    assert [r for r, _ in got] == [None, None, None, Reason.FROZEN, Reason.FROZEN, Reason.FROZEN]
    detail = got[3][1]
    assert "4 reads in a row" in detail and "at most 2 values" in detail
    assert "1.234567 / 1.2345671" in detail and "frozen_values 2" in detail
    assert "6 reads in a row" in got[5][1]  # the run keeps counting
    # one read elsewhere ends it; the next three reads cannot be frozen yet
    again = _reasons(trust, [1.25, STUCK, CODE])
    assert [r for r, _ in again] == [None, None, None]


def test_a_stuck_value_is_still_frozen_and_named_as_before() -> None:
    site = load_site(CSTR)
    got = _reasons(trust_for(site), [STUCK] * 5)
    assert [r for r, _ in got] == [None, None, None, Reason.FROZEN, Reason.FROZEN]
    assert got[4][1] == "the same value for 5 reads (frozen_after 4)"
    one = _reasons(trust_for(site, _with(site, frozen_after=3, frozen_values=1)), [STUCK] * 4)
    assert one[2][1] == "the same value for 3 reads (frozen_after 3)"


def test_a_value_read_again_from_the_same_plc_image_is_no_new_sample() -> None:
    """A review: in a HIL at rate 600 the PLC publishes every 30 s of process time and the
    controller reads every 18 s, so reads come in pairs of one image: four reads of two images
    are two values, and the live analysers were held in a fifth of the cycles. A read whose
    scan counter did not move is not counted."""
    site = load_site(CSTR)
    trust = trust_for(site)
    images = [(1, 0.81), (1, 0.81), (2, 0.83), (2, 0.83), (3, 0.8), (4, 0.82), (4, 0.82)]
    images += [(5, 0.84), (5, 0.84), (6, 0.79), (7, 0.85), (7, 0.85)]
    reads = [*images, (8, STUCK), (8, STUCK), (9, CODE), (10, STUCK), (11, CODE)]
    reasons = []
    for k, (scan, value) in enumerate(reads):
        now = 18.0 * k
        snap = Snapshot(
            {
                TAG: TagValue(value, Quality.GOOD, now, now),
                "plc_scan_counter": TagValue(float(scan), Quality.GOOD, now, now),
            },
            now,
        )
        judged = trust.judge(snap)
        reasons.append([d.reason for d in judged.outputs.values() if d.tag == TAG])
    assert reasons[: len(images)] == [[]] * len(images)
    # a stuck analyser is still caught: four new images taking two values
    assert reasons[len(images) :] == [[], [], [], [], [Reason.FROZEN]]


def _judged(trust: DataTrust, reads: list[tuple[float, Quality]]) -> list[Reason | None]:
    out = []
    for k, (value, quality) in enumerate(reads):
        now = 18.0 * k
        judged = trust.judge(Snapshot({TAG: TagValue(value, quality, now, now)}, now))
        why = [d.reason for d in judged.outputs.values() if d.tag == TAG]
        out.append(why[0] if why else None)
    return out


@pytest.mark.parametrize(("held", "reason"), [(0.81, Reason.UNCERTAIN), (10.5, Reason.IMPLAUSIBLE)])
def test_a_live_value_after_a_held_stretch_is_not_frozen(held: float, reason: Reason) -> None:
    """A review: an analyser held at its last value through a calibration (flagged UNCERTAIN),
    or pinned outside its range, then live again: its first live read was called frozen (the
    held reads and it took two values)."""
    site = load_site(CSTR)
    live = [(0.80 + 0.0013 * k, Quality.GOOD) for k in range(5)]
    again = [(0.83 + 0.0011 * k, Quality.GOOD) for k in range(5)]
    got = _judged(trust_for(site), [*live, *[(held, Quality.UNCERTAIN)] * 5, *again])
    assert got == [None] * 5 + [reason] * 5 + [None] * 5


@settings(max_examples=300, deadline=None)
@given(st.lists(st.sampled_from([0.8, 0.81, 0.82, 0.83]), min_size=1, max_size=40))
def test_frozen_is_exactly_four_reads_in_a_row_taking_at_most_two_values(
    values: list[float],
) -> None:
    """Against a brute-force oracle, on readings that repeat often."""
    site = load_site(CSTR)
    got = [r is Reason.FROZEN for r, _ in _reasons(trust_for(site), values)]
    want = [k >= 3 and len(set(values[k - 3 : k + 1])) <= 2 for k in range(len(values))]
    assert got == want


@pytest.mark.parametrize("period", [2, 3])
def test_three_values_in_turn_are_alive_to_a_two_value_rule(period: int) -> None:
    """Two values in turn are stuck; the B5 bench's still plant dithers over three."""
    site = load_site(CSTR)
    cycle = [STUCK, CODE, 1.2345673][:period]
    got = [
        r for r, _ in _reasons(trust_for(site), list(itertools.islice(itertools.cycle(cycle), 12)))
    ]
    assert (Reason.FROZEN in got) is (period == 2)


@pytest.mark.parametrize(
    ("update", "message"),
    [
        ({"frozen_after": None, "frozen_values": 2}, "frozen_values 2 needs 'frozen_after'"),
        ({"frozen_after": 3, "frozen_values": 3}, "frozen_values 3 is not below frozen_after 3"),
    ],
)
def test_a_frozen_values_that_would_do_nothing_or_hold_everything_is_refused(
    tmp_path: Path, update: dict[str, object], message: str
) -> None:
    source = (ROOT / "configs" / "tags" / "cstr.yaml").read_text()
    tag = load_tag_map(ROOT / "configs" / "tags" / "cstr.yaml").tags[TAG]
    with pytest.raises(ValueError, match=message):
        Tag.model_validate({**tag.model_dump(exclude_none=True), **update})
    bad = source.replace(
        "    frozen_after: 4\n    frozen_values: 2\n",
        "".join(f"    {k}: {v}\n" for k, v in update.items() if v is not None),
        1,
    )
    assert bad != source
    path = tmp_path / "cstr.yaml"
    path.write_text(bad)
    with pytest.raises(ConfigError) as err:
        load_tag_map(path)
    text = str(err.value)
    assert str(path) in text and "conc_a" in text and message in text


def test_frozen_values_on_a_publication_is_refused() -> None:
    """A review: it was taken for a measurement's key and asked for 'frozen_after' (which a
    publication refuses)."""
    tag = load_tag_map(ROOT / "configs" / "tags" / "cstr.yaml").tags["conc_b_estimate"]
    data = {**tag.model_dump(exclude_none=True), "frozen_values": 2}
    with pytest.raises(ValueError, match="'frozen_values' applies to setpoints and measurements"):
        Tag.model_validate(data)
