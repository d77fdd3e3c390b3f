"""Faults that could never act, or never be seen, are refused before anything runs.

* a sensor or ``comm_bad_status`` fault shorter than the controller's sample time could begin
  and end between two controller reads: refused by the rig (scheduled and injected), by the
  campaign loader and by ``check-config``, naming its duration and the minimum (0.1 h here);
* a scheduled fault that starts at or after the scenario's end: refused by the rig and by
  ``pharmatwin-hil check-config`` (site and scenario files);
* an ``actuator_saturation`` outside the input's physical range (below its lower bound too):
  a value the plant could never receive.

The lyophilizer site: controller sample time 0.1 h, plant step 0.02 h, scenario duration 20 h,
shelf temperature Tsh in [-45, 120] degC.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from lyo_cases import case_site, faulted_campaign

from controller.clock import SteppedClock
from controller.errors import ConfigError
from controller.runtime.site import load_site
from hil.campaign.spec import load_campaign
from hil.cli import main as hil_main
from hil.faultcheck import FaultRefusedError, FaultTargets, fault_problems, parse_fault
from hil.rig import HilRig
from hil.servers.memory import MemoryPlcServer

ROOT = Path(__file__).resolve().parents[2]
SITES = ROOT / "configs" / "sites"
LYO = SITES / "lyophilizer-modbus.yaml"
pytestmark = pytest.mark.timeout(120)


def _rig(site_file: Path) -> HilRig:
    site = load_site(site_file)
    clock = SteppedClock()
    return HilRig(site, clock, [MemoryPlcServer(site.tags, clock)])


def _refused_by_rig(tmp_path: Path, fault: dict[str, Any]) -> str:
    with pytest.raises(ConfigError) as info:
        _rig(case_site(tmp_path, [fault]))
    (problem,) = info.value.problems
    assert problem.file.endswith("scenario.yaml") and problem.location.startswith("faults.0")
    assert "\n" not in str(problem)  # one line
    return str(problem)


# ------------------------------------------------------------ shorter than a controller sample
SHORT: list[dict[str, Any]] = [
    {"kind": "sensor_bias", "target": "Tbot", "start": 1.01, "duration": 0.05, "magnitude": 2.0},
    {"kind": "sensor_dropout", "target": "Tbot", "start": 1.01, "duration": 0.05},
    {"kind": "sensor_stuck", "target": "Tbot", "start": 1.01, "duration": 0.05},
    {"kind": "comm_bad_status", "target": "product_temp_bottom", "start": 1.01, "duration": 0.05},
]


@pytest.mark.parametrize("fault", SHORT, ids=[str(f["kind"]) for f in SHORT])
def test_a_read_fault_shorter_than_a_controller_sample_is_refused_by_the_rig(
    tmp_path: Path, fault: dict[str, Any]
) -> None:
    text = _refused_by_rig(tmp_path, fault)
    assert f"a {fault['kind']} fault on {fault['target']} lasting 0.05 h" in text
    assert "shorter than the controller's sample time (0.1 h)" in text
    assert "allowed: a duration of at least 0.1 h" in text


def test_a_short_read_fault_is_refused_at_injection_and_nothing_is_held(tmp_path: Path) -> None:
    rig = _rig(case_site(tmp_path, []))
    with pytest.raises(FaultRefusedError, match="shorter than the controller's sample time"):
        rig.inject(parse_fault(SHORT[3] | {"start": 0.0}))
    assert rig.faults.faults == ()


def test_a_window_of_one_sample_and_a_short_actuator_fault_are_accepted(tmp_path: Path) -> None:
    ok = [
        SHORT[0] | {"duration": 0.1},  # one whole sample: one controller read falls in it
        {"kind": "actuator_stuck", "target": "Tsh", "start": 1.0, "duration": 0.05},  # plant
    ]
    rig = _rig(case_site(tmp_path, ok))
    assert [f.kind for f in rig.faults.faults] == ["sensor_bias", "actuator_stuck"]


def test_a_campaign_with_a_short_read_fault_is_refused_at_load(tmp_path: Path) -> None:
    path = faulted_campaign(tmp_path, SHORT[1], mode="fast", name="short")
    with pytest.raises(ConfigError) as info:
        load_campaign(path)
    texts = [str(p) for p in info.value.problems]
    assert len(texts) == 1 and "(case c001-short-s1): faults.0" in texts[0], texts
    assert (
        "sensor_dropout fault on Tbot lasting 0.05 h is shorter than the controller's" in texts[0]
    )


# ------------------------------------------------------------ after the scenario's end
LATE = {"kind": "sensor_bias", "target": "Tbot", "start": 50.0, "magnitude": 3.0}


def test_a_fault_starting_after_the_scenario_end_is_refused_by_the_rig(tmp_path: Path) -> None:
    text = _refused_by_rig(tmp_path, LATE)
    assert "a sensor_bias fault on Tbot: it starts at 50 h, when the run (20 h) is over" in text
    assert "allowed: a start before 20 h" in text


def test_check_config_refuses_a_fault_after_the_scenario_end(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    site = case_site(tmp_path, [LATE])
    scenario = tmp_path / "scenario.yaml"
    assert hil_main(["check-config", str(site), str(scenario)]) == 1
    out = capsys.readouterr().out
    lines = [line for line in out.splitlines() if "it starts at 50 h" in line]
    assert len(lines) == 2, out  # once for the site's scenario, once for the scenario file
    assert all("scenario.yaml" in line and "faults.0" in line for line in lines)
    assert "2 files: 2 failed" in out


def test_check_config_refuses_a_short_read_fault_of_a_site(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    site = case_site(tmp_path, [SHORT[0]])
    assert hil_main(["check-config", str(site)]) == 1
    assert "shorter than the controller's sample time (0.1 h)" in capsys.readouterr().out


def test_check_config_still_passes_a_valid_fault(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    site = case_site(tmp_path, [LATE | {"start": 5.0}])
    assert hil_main(["check-config", str(site), str(tmp_path / "scenario.yaml")]) == 0, (
        capsys.readouterr().out
    )


# ------------------------------------------------------------ saturation outside the range
@pytest.mark.parametrize(
    ("site_file", "target", "cap", "range_text"),
    [
        ("lyophilizer-modbus", "Tsh", -100.0, "[-45, 120] degC"),
        ("cstr-modbus", "Q_dot", -20000.0, "[-8500, 0] kJ/h"),
        ("bioreactor-modbus", "u", -0.5, "[0, 0.2] L/h"),
    ],
)
def test_a_saturation_below_the_physical_range_is_refused(
    site_file: str, target: str, cap: float, range_text: str
) -> None:
    site = load_site(SITES / f"{site_file}.yaml")
    spec = parse_fault(
        {"kind": "actuator_saturation", "target": target, "start": 0.0, "magnitude": cap}
    )
    (problem,) = fault_problems(spec, FaultTargets.of(site.model, site.tags))
    assert f"a saturation at {cap:g}" in problem
    assert f"outside {target}'s physical range {range_text}" in problem
    assert "the plant could never receive it; allowed: a magnitude in" in problem


def test_a_saturation_below_the_range_is_refused_at_injection(tmp_path: Path) -> None:
    rig = _rig(case_site(tmp_path, []))
    low = {"kind": "actuator_saturation", "target": "Tsh", "start": 0.0, "magnitude": -100.0}
    with pytest.raises(FaultRefusedError, match=r"outside Tsh's physical range \[-45, 120\]"):
        rig.inject(parse_fault(low))
    assert rig.faults.faults == ()
    at_lower = rig.inject(parse_fault(low | {"magnitude": -45.0}))  # the bound itself is fine
    assert at_lower.magnitude == -45.0
