"""A campaign rerun into the same results folder reuses a case's result only when nothing it
depends on changed: not its definition, and not the controller, the site's files, the
criteria that judge it or the software. Before, a rerun after the controller was broken, or
after a criterion was tightened, skipped every case as "already done" and exited 0 with the
old verdicts: the evidence said the broken controller passed, and that the new limit held."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import yaml

from hil.campaign.execute import RunSettings, run_campaign
from hil.campaign.spec import load_campaign

ROOT = Path(__file__).resolve().parents[2]
SMOKE = ROOT / "configs" / "campaigns" / "lyophilizer-smoke.yaml"
pytestmark = [pytest.mark.slow, pytest.mark.serial]


def _campaign(tmp_path: Path, name: str, controller: Path, cqa_limit: float) -> Path:
    """The smoke campaign, its first case only, with ``controller`` and REQ-CQA-01's limit."""
    data = yaml.safe_load(SMOKE.read_text(encoding="utf-8"))
    data["site"] = str(ROOT / "configs" / "sites" / "lyophilizer-modbus.yaml")
    data["controller"] = str(controller)
    data["matrix"][0]["factors"]["faults"] = {"none": {}}
    data["criteria"] = [c for c in data["criteria"] if c["id"] != "REQ-SAFE-02"]  # no loss
    for c in data["criteria"]:
        if c["id"] == "REQ-CQA-01":
            c["check"]["at_most"] = cqa_limit
            c["applies_to"] = {"faults": ["none"]}
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(data), encoding="utf-8")
    return path


def test_a_rerun_runs_again_what_a_changed_controller_or_criterion_would_judge(
    tmp_path: Path,
) -> None:
    (tmp_path / "plants").symlink_to(ROOT / "configs" / "plants")  # the controller's plant
    (tmp_path / "controllers").mkdir()
    controller = tmp_path / "controllers" / "lyo-ctrl.yaml"
    shutil.copy(ROOT / "configs" / "controllers" / "lyophilizer.yaml", controller)
    out = tmp_path / "out"

    def run(name: str, limit: float) -> tuple[list[str], str]:
        campaign = load_campaign(_campaign(tmp_path, name, controller, limit))
        outcome = run_campaign(campaign, RunSettings(out=out, progress=False))
        (case_id,) = outcome.results
        return outcome.skipped, outcome.results[case_id]["status"]

    assert run("a", -6.0) == ([], "passed")
    assert run("a", -6.0) == (["c000-none-s7"], "passed")  # nothing changed: reused
    # the criterion tightened: run again and judged by it (the product reaches ~-8 degC)
    assert run("b", -30.0) == ([], "failed")
    # the controller changed (its file, not the case): run again
    text = controller.read_text(encoding="utf-8")
    controller.write_text(text + "\n# edited after the first run\n", encoding="utf-8")
    skipped, _ = run("b", -30.0)
    assert skipped == []
    spec = json.loads((out / "cases" / "c000-none-s7" / "spec.json").read_text())
    assert len(spec["configuration"]) == 64  # what the result was made with, recorded
