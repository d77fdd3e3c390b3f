"""A ``comm_bad_status`` on a tag the controller never reads is refused: it would do nothing.

The lyophilizer's ``drift_alarm_word`` is a publication of the twin (it writes it, never
reads it back) and ``write_refusal_count`` is a diagnostic the runtime reads but acts on in no
way: a bad status on either left the case's trajectory identical to the case without a fault,
and the case passed with the fault's start and end recorded as if it had acted. Such a fault
is refused when the campaign is loaded, and by ``pharmatwin-hil fault inject`` before anything
is held, naming the fault, the tag and the tags the controller reads; a wildcard must match at
least one of those.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import yaml

from controller.errors import ConfigError
from controller.runtime.site import load_site
from hil.campaign.spec import load_campaign
from hil.cli import main
from hil.faultcheck import FaultRefusedError, FaultTargets, check_fault, parse_fault

ROOT = Path(__file__).resolve().parents[2]
LYO = ROOT / "configs" / "sites" / "lyophilizer-modbus.yaml"
#: what the lyophilizer's controller reads and acts on: measurements, working setpoints, the
#: setpoints it writes and reads back, and the PLC contract's flags and words
READ = [
    "shelf_temp_sp",
    "chamber_pressure_sp",
    "shelf_temp_pv",
    "chamber_pressure_pv",
    "product_temp_bottom",
    "plc_scan_counter",
    "mpc_permissive",
    "mpc_active",
    "measurement_validity",
]
pytestmark = pytest.mark.timeout(60)


def _bad_status(target: str) -> dict[str, Any]:
    fault = {"kind": "comm_bad_status", "target": target, "start": 1.0, "duration": 1.0}
    return {"faults": [fault]}


def _campaign(tmp_path: Path, variants: dict[str, Any]) -> Path:
    raw = {
        "name": "cbs",
        "site": str(LYO),
        "duration": 2.5,
        "mode": "fast",
        "retries": 0,
        "matrix": [{"factors": {"faults": variants}, "seeds": [7]}],
        "criteria": [
            {
                "id": "REQ-ROB-01",
                "description": "No more than 3 failed solves in a row",
                "check": {"kind": "consecutive_failed_solves", "at_most": 3},
            }
        ],
    }
    path = tmp_path / "cbs.yaml"
    path.write_text(yaml.safe_dump(raw), encoding="utf-8")
    return path


def _variant(where: str) -> str:
    """The variant of a problem's ``FILE (case c001-<variant>-s7)``."""
    case = where.rsplit("(case ", 1)[1].rstrip(")")
    return case.split("-", 1)[1].rsplit("-", 1)[0]


def test_bad_status_on_tags_the_controller_never_reads_is_refused_at_load(
    tmp_path: Path,
) -> None:
    variants = {
        "none": {},
        "bs-pub": _bad_status("drift_alarm_word"),
        "bs-refusal": _bad_status("write_refusal_count"),
        "bs-drift": _bad_status("drift_*"),  # drift_alarm_count, drift_alarm_word: published
    }
    path = _campaign(tmp_path, variants)
    with pytest.raises(ConfigError) as info:
        load_campaign(path)
    problems = {_variant(p.file): p for p in info.value.problems}
    assert sorted(problems) == ["bs-drift", "bs-pub", "bs-refusal"]
    for variant, tag in [("bs-pub", "drift_alarm_word"), ("bs-refusal", "write_refusal_count")]:
        p = problems[variant]
        assert p.file.startswith(f"{path} (case c") and p.file.endswith(f"-{variant}-s7)")
        assert p.location == "faults.0" and p.value == "comm_bad_status"
        assert p.message.startswith(
            f"a comm_bad_status fault on {tag!r} would do nothing: the controller never reads "
            f"{tag!r}"
        ), p.message
        assert p.message.endswith(f"allowed: the tags the controller reads: {READ}"), p.message
    assert "twin publishes it" in problems["bs-pub"].message
    assert "no decision depends on it" in problems["bs-refusal"].message
    drift = problems["bs-drift"].message
    assert drift.startswith(
        "the pattern 'drift_*' for a comm_bad_status fault matches no tag the controller reads "
        "(it matches ['drift_alarm_count', 'drift_alarm_word'])"
    ), drift
    assert drift.endswith(f"allowed: the tags the controller reads: {READ}")
    assert "Traceback" not in str(info.value)


def test_bad_status_on_tags_the_controller_reads_still_loads(tmp_path: Path) -> None:
    variants = {
        "tbot": _bad_status("product_temp_bottom"),
        "sp": _bad_status("shelf_temp_sp"),
        "every": _bad_status("*"),  # matches tags the controller reads, and others
        "pattern": _bad_status("product_temp_*"),
    }
    assert len(load_campaign(_campaign(tmp_path, variants)).cases) == 4


def test_the_refusal_lists_the_tags_the_controller_reads_as_allowed() -> None:
    targets = FaultTargets.for_site(load_site(LYO))
    spec = parse_fault({"kind": "comm_bad_status", "target": "drift_alarm_word", "start": 0.0})
    with pytest.raises(FaultRefusedError) as info:
        check_fault(spec, targets)
    assert list(info.value.allowed) == READ


def test_fault_inject_refuses_it_before_asking_a_server(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    argv = ["fault", str(LYO), "--state-dir", str(tmp_path), "inject", "comm_bad_status"]
    code = main([*argv, "write_refusal_count", "--json"])
    answer = json.loads(capsys.readouterr().out)
    assert code == 2 and answer["ok"] is False
    assert answer["allowed"] == READ
    (problem,) = answer["problems"]
    assert problem.startswith(
        "a comm_bad_status fault on 'write_refusal_count' would do nothing: the controller "
        "never reads 'write_refusal_count'"
    )
    code = main([*argv, "drift_alarm_word"])
    out = capsys.readouterr().out
    assert code == 2 and out.startswith("error: a comm_bad_status fault on 'drift_alarm_word'")
    assert "no running" not in out and "Traceback" not in out  # refused by the CLI itself
