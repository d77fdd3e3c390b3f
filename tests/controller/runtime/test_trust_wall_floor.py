"""Freshness in scaled-clock runs (issue 20): a read a busy machine delayed is not stale.

At 10 800 x real time, ``stale_after: 30`` process seconds is 2.8 ms of wall time, so a read
that waited a few ms for the CPU was judged stale and the demo's verdict depended on machine
load. In a scaled run a measurement is stale only when it is older than ``stale_after`` in
process time and than the wall-time floor; at real time (rate 1) nothing changes.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from controller.ports.base import Quality, Snapshot, TagValue
from controller.runtime.trust import DataTrust, Reason
from controller.tags import load_tag_map

ROOT = Path(__file__).resolve().parents[3]
TAGS = load_tag_map(ROOT / "configs" / "tags" / "lyophilizer.yaml")
OUT = "product_temp_bottom"


def _judge(rate: float, age_s: float) -> list[Reason]:
    trust = DataTrust(TAGS, {"Tbot": OUT}, {}, [])
    trust.rate = rate
    now = 1_000_000.0
    snap = Snapshot({OUT: TagValue(-30.0, Quality.GOOD, now - age_s, now)}, now)
    return [d.reason for d in trust.judge(snap).outputs.values()]


def test_a_late_read_in_a_scaled_run_is_not_stale() -> None:
    stale_after = TAGS.tags[OUT].stale_after
    late = stale_after + 24.0  # process s: 5 ms of wall time at 10 800 x
    assert _judge(10_800.0, late) == []
    assert _judge(1.0, late) == [Reason.STALE]  # the same age at real time is stale


@pytest.mark.parametrize("rate", [1.0, 10_800.0])
def test_an_old_value_is_stale_at_any_rate(rate: float) -> None:
    # 2 wall seconds at 10 800 x (beyond the 1 s floor), or a day at real time
    age = max(2.0 * rate, 86_400.0 if rate == 1.0 else 0.0)
    assert _judge(rate, age) == [Reason.STALE]
