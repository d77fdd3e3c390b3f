"""Case files and one-case campaigns on the lyophilizer site, for the HIL tests (not a test
module): a site whose HIL scenario schedules given faults, a campaign of a clean case and a
faulted one, and a campaign of one case whose true plant is disturbed."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from hil.campaign.cases import Case
from hil.campaign.runner import write_case_files

ROOT = Path(__file__).resolve().parents[2]
LYO = ROOT / "configs" / "sites" / "lyophilizer-modbus.yaml"


def case_site(tmp_path: Path, faults: list[dict[str, Any]]) -> Path:
    """The lyophilizer site, its HIL scenario scheduling ``faults`` (a campaign case's files)."""
    scenario = yaml.safe_load((ROOT / "configs" / "scenarios" / "lyophilizer-hil.yaml").read_text())
    scenario["plant"] = str(ROOT / "configs" / "plants" / "lyophilizer.yaml")
    scenario["faults"] = faults
    case = Case("c000-test", 0, {}, 1, scenario, None, ())
    return write_case_files(case, tmp_path, LYO, None, "fast")


def disturbed_campaign(
    tmp_path: Path,
    name: str,
    disturbances: list[dict[str, Any]],
    *,
    duration: float,
    parameters: dict[str, float] | None = None,
) -> Path:
    """A fast-mode campaign of one case (seed 3) whose true plant gets ``disturbances`` (and
    ``parameters``), judged by REQ-ROB-01 only; the file written in ``tmp_path``."""
    variant: dict[str, Any] = {"disturbances": disturbances}
    if parameters:
        variant["parameters"] = parameters
    spec = {
        "name": name,
        "site": str(LYO),
        "duration": duration,
        "mode": "fast",
        "matrix": [{"factors": {"shelf": {"heater-fault": variant}}, "seeds": [3]}],
        "criteria": [
            {
                "id": "REQ-ROB-01",
                "description": "No more than 3 failed solves in a row",
                "check": {"kind": "consecutive_failed_solves", "at_most": 3},
            }
        ],
    }
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(spec), encoding="utf-8")
    return path


def faulted_campaign(tmp_path: Path, fault: dict[str, Any], *, mode: str, name: str) -> Path:
    """A campaign (2 h, seed 1) of two cases: ``none``, and ``name`` scheduling ``fault``
    (case ``c001-<name>-s1``), judged by REQ-ROB-01 only; the file written in ``tmp_path``."""
    spec = {
        "name": f"{name}-fault",
        "site": str(LYO),
        "duration": 2.0,
        "mode": mode,
        "matrix": [{"factors": {"faults": {"none": {}, name: {"faults": [fault]}}}, "seeds": [1]}],
        "criteria": [
            {
                "id": "REQ-ROB-01",
                "description": "solves",
                "check": {"kind": "consecutive_failed_solves", "at_most": 3},
            }
        ],
    }
    path = tmp_path / "camp.yaml"
    path.write_text(yaml.safe_dump(spec), encoding="utf-8")
    return path
