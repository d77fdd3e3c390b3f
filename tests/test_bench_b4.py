"""B4's verdicts (bench/b4_campaign.py) on made-up figures: only the whole 1000-case Monte
Carlo campaign is judged, a slow one says "not met", and incomplete evidence fails its row.
No timing is measured here."""

from __future__ import annotations

import importlib
import json
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

from controller.runtime.audit import AuditTrail
from hil.campaign.spec import load_campaign

BENCH = Path(__file__).resolve().parents[1] / "bench"


@pytest.fixture(scope="module")
def b4() -> ModuleType:
    if str(BENCH) not in sys.path:
        sys.path.insert(0, str(BENCH))
    return importlib.import_module("b4_campaign")


def _figures(wall: float, workers: int, cases: int = 1000, complete: int = 1000) -> dict[str, Any]:
    return {
        "executor": "process",
        "workers": workers,
        "cases": cases,
        "wall_s": wall,
        "per_minute": 60.0 * cases / wall,
        "passed": cases,
        "failed": 0,
        "errored": 0,
        "evidence_complete": complete,
        "case_wall_median_s": 0.5,
        "case_wall_mean_s": 0.5,
        "case_cpu_median_s": 0.4,
        "overhead_s": 2.0,
    }


def _verdicts(rows: list[dict[str, Any]]) -> dict[str, bool | None]:
    return {r["metric"]: r["met"] for r in rows}


def test_the_full_campaign_is_judged_against_90_s(b4: ModuleType) -> None:
    slow = _verdicts(b4._run_rows(_figures(300.0, 2), "lyophilizer-mc", True))
    assert slow["wall time, the target"] is False  # not met, and said so
    fast = _verdicts(b4._run_rows(_figures(80.0, 2), "lyophilizer-mc", True))
    assert fast["wall time, the target"] is True


def test_a_smaller_run_is_never_called_the_target(b4: ModuleType) -> None:
    rows = b4._run_rows(_figures(2.0, 2, cases=8, complete=8), "lyophilizer-mc", False)
    verdicts = _verdicts(rows)
    assert "wall time, the target" not in verdicts
    assert verdicts["1000 cases extrapolated (not judged)"] is None


def test_missing_evidence_fails_its_row(b4: ModuleType) -> None:
    rows = b4._run_rows(_figures(80.0, 2, complete=999), "lyophilizer-mc", True)
    assert _verdicts(rows)["cases with full evidence"] is False


def test_the_evidence_count_checks_files_draw_and_verdicts(b4: ModuleType, tmp_path: Path) -> None:
    campaign = load_campaign(b4.CAMPAIGN)
    case = campaign.cases[0]
    folder = tmp_path / "cases" / case.id
    folder.mkdir(parents=True)
    for name in b4.EVIDENCE:
        (folder / name).write_text("x")
    (folder / "audit.db").unlink()
    trail = AuditTrail(folder / "audit.db", synchronous="NORMAL")
    trail.record("setpoint.write", "Tsh_sp", reason="a decision", new_value=-20.0)
    trail.close()  # checkpointed and made durable
    spec = case.to_json()
    (folder / "spec.json").write_text(json.dumps(spec))
    result = {"status": "passed", "draw": case.draw, "verdicts": [{"passed": True}]}
    (folder / "result.json").write_text(json.dumps(result))
    assert b4.evidence_complete(tmp_path, campaign) == 1
    (folder / "result.json").write_text(json.dumps(result | {"verdicts": []}))
    assert b4.evidence_complete(tmp_path, campaign) == 0  # judged on nothing
    (folder / "result.json").write_text(json.dumps(result))
    (folder / "audit.db").unlink()
    assert b4.evidence_complete(tmp_path, campaign) == 0
