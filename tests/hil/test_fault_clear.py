"""``fault clear``: a wildcard target clears the held faults whose targets it matches, a pattern
that could match nothing is refused, and a clear that removes nothing is never an ok: the rig
answers ``ok: false`` naming what was asked and the faults held, and the CLI exits 2.

Before the fix ``clear --target 'product_temp_*'`` was accepted, cleared nothing (targets were
compared as plain strings) and answered ok.
"""

from __future__ import annotations

import asyncio
import json
import re
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import test_fault_inject

from controller.clock import SteppedClock
from controller.runtime.site import load_site
from hil.cli import main
from hil.faultcheck import FaultRefusedError, FaultTargets, check_clear, check_fault, parse_fault
from hil.faults import FaultSet
from hil.rig import HilRig
from hil.serve import Admin
from hil.servers.memory import MemoryPlcServer

ROOT = Path(__file__).resolve().parents[2]
LYO = ROOT / "configs" / "sites" / "lyophilizer-modbus.yaml"
SITE = load_site(LYO)
TARGETS = FaultTargets.for_site(SITE)
pytestmark = pytest.mark.timeout(60)

BAD_STATUS = {"kind": "comm_bad_status", "target": "product_temp_bottom", "start": 0}
BIAS = {"kind": "sensor_bias", "target": "Tbot", "start": 0, "magnitude": 5}


def _held() -> FaultSet:
    fs = FaultSet([], np.random.default_rng(0), tags=TARGETS.tags)
    for raw in (BAD_STATUS, BIAS):
        fs.inject(check_fault(parse_fault(raw), TARGETS), 0.0)
    return fs


@pytest.mark.parametrize(
    ("kind", "pattern", "left"),
    [
        ("comm_bad_status", "product_temp_*", ["sensor_bias"]),
        (None, "T*", ["comm_bad_status"]),
        (None, "*", []),
        ("sensor_bias", "*", ["comm_bad_status"]),
    ],
)
def test_a_pattern_clears_the_faults_whose_targets_it_matches(
    kind: str | None, pattern: str, left: list[str]
) -> None:
    check_clear(kind, pattern, TARGETS)  # accepted
    fs = _held()
    removed = fs.clear(kind, pattern, now=0.1)  # type: ignore[arg-type]
    assert removed and [f.kind for f in fs.faults] == left
    assert "product_temp_bottom" not in fs.comms(0.1).bad_tags or "comm_bad_status" in left


def test_a_held_pattern_is_cleared_by_its_own_text() -> None:
    fs = FaultSet([], np.random.default_rng(0), tags=TARGETS.tags)
    fs.inject(parse_fault({**BAD_STATUS, "target": "product_temp_*"}), 0.0)
    assert [f.target for f in fs.clear(target="product_temp_*")] == ["product_temp_*"]


def test_a_pattern_that_matches_no_target_of_the_site_is_refused() -> None:
    sentence = "the clear pattern 'shelf_tmp_*' matches no name a fault may target on this site"
    with pytest.raises(FaultRefusedError, match=re.escape(sentence)):
        check_clear(None, "shelf_tmp_*", TARGETS)


def _admin() -> Admin:
    clock = SteppedClock()
    rig = HilRig(SITE, clock, [MemoryPlcServer(SITE.tags, clock)])
    return Admin(rig)


def _ask(admin: Admin, request: dict[str, Any]) -> dict[str, Any]:
    return admin.answer(json.dumps(request).encode())


def test_a_clear_that_removes_nothing_is_not_ok() -> None:
    admin = _admin()
    assert _ask(admin, {"cmd": "inject", "fault": BIAS})["ok"]
    answer = _ask(admin, {"cmd": "clear", "kind": "comm_bad_status", "target": "product_temp_*"})
    assert answer["ok"] is False
    assert answer["error"] == (
        "fault refused: no held fault matches kind 'comm_bad_status', target "
        "'product_temp_*': nothing was cleared; held: sensor_bias on 'Tbot'"
    )
    assert [f.kind for f in admin.rig.faults.faults] == ["sensor_bias"]  # untouched
    answer = _ask(admin, {"cmd": "clear", "target": "T*"})
    assert answer["ok"] is True and answer["matched"] == 1
    assert [f["target"] for f in answer["cleared"]] == ["Tbot"]
    answer = _ask(admin, {"cmd": "clear"})
    assert answer["ok"] is False
    assert answer["problems"] == ["no fault is held: nothing was cleared"]


#: ``pharmatwin-hil serve`` for the freeze dryer in this process (the fault CLI's own fixture)
served = test_fault_inject.served


async def test_the_cli_exits_2_when_a_clear_matched_nothing(
    served: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    def cli(*argv: str) -> tuple[int, str]:
        code = main(["fault", str(LYO), "--state-dir", str(served), *argv])
        return code, capsys.readouterr().out

    code, out = await asyncio.to_thread(cli, "inject", "comm_bad_status", "product_temp_bottom")
    assert code == 0, out
    code, out = await asyncio.to_thread(cli, "clear", "--kind", "sensor_bias")
    assert code == 2, out
    assert out.startswith("error: no held fault matches kind 'sensor_bias': nothing was cleared")
    assert "held: comm_bad_status on 'product_temp_bottom'" in out
    code, out = await asyncio.to_thread(cli, "clear", "--target", "product_temp_*")
    assert code == 0 and "1 fault(s) cleared" in out, out
    code, out = await asyncio.to_thread(cli, "status", "--json")
    assert json.loads(out)["status"]["active_faults"] == []
