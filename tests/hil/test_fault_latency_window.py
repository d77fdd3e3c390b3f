"""A ``comm_latency`` window shorter than the controller's sample time is refused.

The controller meets a latency only at its reads, once per sample time (0.1 h on the
lyophilizer site): a shorter window could begin and end between two reads and delay none of
them, like a sensor or ``comm_bad_status`` window (``test_fault_honesty_checks``). It is
refused by the serving rig (scheduled and injected, with Modbus servers, which can carry a
latency), by the campaign loader in the HIL mode and by ``check-config``, naming its duration
and the minimum; a window of one whole sample is still accepted.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
from lyo_cases import case_site, faulted_campaign

from controller.clock import SteppedClock
from controller.errors import ConfigError
from controller.runtime.site import load_site
from hil.campaign.spec import load_campaign
from hil.cli import main as hil_main
from hil.faultcheck import FaultRefusedError, parse_fault
from hil.rig import HilRig
from hil.servers.modbus import ModbusPlcServer

pytestmark = pytest.mark.timeout(120)

SHORT: dict[str, Any] = {
    "kind": "comm_latency",
    "target": "*",
    "start": 1.01,
    "duration": 0.05,
    "magnitude": 0.5,
}
REFUSAL = "a comm_latency fault on * lasting 0.05 h is shorter than the controller's sample time"


def _modbus_rig(site_file: Path) -> HilRig:
    """A rig with a Modbus server (made, never started: the checks are made before)."""
    site = load_site(site_file)
    return HilRig(site, SteppedClock(), [ModbusPlcServer(site.tags)])


def test_a_short_latency_window_is_refused_by_the_rig(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        _modbus_rig(case_site(tmp_path, [SHORT]))
    (problem,) = info.value.problems
    text = str(problem)
    assert problem.location.startswith("faults.0") and "\n" not in text
    assert REFUSAL + " (0.1 h)" in text
    assert "allowed: a duration of at least 0.1 h" in text


def test_a_short_latency_window_is_refused_at_injection(tmp_path: Path) -> None:
    rig = _modbus_rig(case_site(tmp_path, []))
    with pytest.raises(FaultRefusedError, match=re.escape(REFUSAL)):
        rig.inject(parse_fault(SHORT | {"start": 0.0}))
    assert rig.faults.faults == ()


def test_a_latency_of_one_whole_sample_or_open_ended_is_accepted(tmp_path: Path) -> None:
    rig = _modbus_rig(case_site(tmp_path, [SHORT | {"duration": 0.1}]))
    assert [f.kind for f in rig.faults.faults] == ["comm_latency"]
    held = rig.inject(parse_fault({k: v for k, v in SHORT.items() if k != "duration"}))
    assert held.duration is None


def test_a_hil_campaign_with_a_short_latency_window_is_refused_at_load(tmp_path: Path) -> None:
    path = faulted_campaign(tmp_path, SHORT, mode="hil", name="slow")
    with pytest.raises(ConfigError) as info:
        load_campaign(path)
    texts = [str(p) for p in info.value.problems]
    assert len(texts) == 1 and "(case c001-slow-s1): faults.0" in texts[0], texts
    assert REFUSAL in texts[0]


def test_check_config_refuses_a_short_latency_window_of_a_site(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    site = case_site(tmp_path, [SHORT])
    assert hil_main(["check-config", str(site)]) == 1
    assert REFUSAL + " (0.1 h)" in capsys.readouterr().out
