"""After a fallback the supervisor asks for control again only after clean cycles, on a clean
cycle, and at most ``runtime.reengage_limit`` times in a run.

A review watched a closed loop flap: FALLBACK -> REQUESTING on the first clean cycle, a
request written on a cycle of bad data, RUNNING on the PLC's answer, HOLD, FALLBACK again
(the bad cycles counted from before it engaged): 15 rounds in 100 s, each one the PLC handing
control over and taking it back. The freeze dryer rig of ``test_data_trust`` (in-memory PLC
that answers ``mpc_request`` with ``mpc_active``, true plant); bad data is a measurement the
PLC reports with BAD quality.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
from test_data_trust import LYO, Rig, lyo_rig

from controller.ports.base import Quality
from controller.runtime.site import Site, load_site
from controller.runtime.supervisor import State

pytestmark = pytest.mark.timeout(120)
TBOT = "product_temp_bottom"


@pytest.fixture(scope="module")
def lyo() -> Site:
    return load_site(LYO)


def bad(rig: Rig, on: bool) -> None:
    if on:
        rig.plc.forced[TBOT] = (-30.0, Quality.BAD)
    else:
        rig.plc.forced.pop(TBOT, None)


async def fall_back(rig: Rig) -> None:
    """Bad data until the supervisor falls back."""
    bad(rig, True)
    for _ in range(rig.site.runtime.max_bad_cycles + 1):
        if (await rig.cycle()).state is State.FALLBACK:
            break
    assert rig.sup.state is State.FALLBACK


async def test_it_asks_again_only_after_clean_cycles_and_only_on_a_clean_one(
    lyo: Site, tmp_path: Path
) -> None:
    rig = await lyo_rig(lyo, tmp_path)
    assert (await rig.cycles(3))[-1] is State.RUNNING
    await fall_back(rig)
    n = lyo.runtime.max_bad_cycles
    bad(rig, False)
    states = await rig.cycles(n)  # clean cycles in FALLBACK, the PLC permitting
    assert states == [State.FALLBACK] * n, states  # not yet: n clean cycles first
    view = await rig.cycle()
    assert view.state is State.REQUESTING  # ... then it asks
    requests = [r for r in rig.records("tag.write.request") if r.new_value == "1.0"]
    assert len(requests) == 2  # the first engagement's and this one
    # a REQUESTING cycle with bad data writes no request
    rig2 = await lyo_rig(lyo, tmp_path / "2")
    assert (await rig2.cycles(3))[-1] is State.RUNNING
    await fall_back(rig2)
    bad(rig2, False)
    await rig2.cycles(n + 1)
    assert rig2.sup.state is State.REQUESTING
    before = len(rig2.records("tag.write.request"))
    rig2.sup._requested = False  # as if the request were still to be written
    bad(rig2, True)
    view = await rig2.cycle()
    assert view.problems and "mpc_request" not in view.written
    assert len(rig2.records("tag.write.request")) == before


async def test_the_bad_cycles_count_from_zero_when_it_engages(lyo: Site, tmp_path: Path) -> None:
    """Bad cycles while it waits for the PLC's answer are not cycles in control: engaged, it
    holds ``max_bad_cycles`` cycles of bad data before it falls back (it fell back at once)."""
    rig = await lyo_rig(lyo, tmp_path)
    assert (await rig.cycles(3))[-1] is State.RUNNING
    await fall_back(rig)
    bad(rig, False)
    n = lyo.runtime.max_bad_cycles
    await rig.cycles(n)  # the PLC has seen the release: mpc_active cleared
    rig.plc.follow = False  # from now on it answers late
    await rig.cycle()  # asks again, on a clean cycle
    assert rig.sup.state is State.REQUESTING
    bad(rig, True)  # bad data while it waits: n - 1 bad cycles, no fallback yet
    assert await rig.cycles(n - 1) == [State.REQUESTING] * (n - 1)
    rig.plc.follow = True  # the PLC engages it, the data still bad
    states = await rig.cycles(n)
    assert states == [State.HOLD] * (n - 1) + [State.FALLBACK], states


async def test_after_reengage_limit_automatic_re_engagements_an_operator_asks(
    lyo: Site, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    window = {"reengage_limit": 2, "reengage_window_s": 1e9}
    limited = dataclasses.replace(lyo, runtime=lyo.runtime.model_copy(update=window))
    rig = await lyo_rig(limited, tmp_path)
    assert (await rig.cycles(3))[-1] is State.RUNNING
    n = limited.runtime.max_bad_cycles
    engagements = 0
    for _ in range(3):
        await fall_back(rig)
        bad(rig, False)
        states = await rig.cycles(n + 3)
        engagements += State.RUNNING in states
    assert engagements == 2  # the limit
    assert rig.sup.state is State.FALLBACK
    assert "(runtime.reengage_limit 2 in runtime.reengage_window_s 1e+09)" in caplog.text
    rig.sup.request_control("operator", "checked the probe")  # an operator still may
    states = await rig.cycles(2)
    assert states[-1] is State.RUNNING, states


async def test_the_limit_is_per_window_of_the_runtime_s_clock(lyo: Site, tmp_path: Path) -> None:
    """A second review: a lifetime count left a long-running continuous process to an operator
    for every blip after its third. The limit counts the re-engagements of the last
    ``reengage_window_s``: once the oldest is older, it asks again by itself."""
    dt = 360.0  # the freeze dryer's sample, s
    window = {"reengage_limit": 1, "reengage_window_s": 20 * dt}
    limited = dataclasses.replace(lyo, runtime=lyo.runtime.model_copy(update=window))
    rig = await lyo_rig(limited, tmp_path)
    assert rig.sup.dt_s == dt
    assert (await rig.cycles(3))[-1] is State.RUNNING
    n = limited.runtime.max_bad_cycles
    await fall_back(rig)
    bad(rig, False)
    assert State.RUNNING in await rig.cycles(n + 3)  # the one re-engagement of the window
    await fall_back(rig)
    bad(rig, False)
    waited = await rig.cycles(8)
    assert State.REQUESTING not in waited  # the limit: within the window
    states = await rig.cycles(20)  # the first re-engagement leaves the window meanwhile
    assert State.RUNNING in states, states
