"""A worker keeps its compiled controller pieces between cases (controller.core.ekf_memo), and
a case's result does not depend on the cases that ran before it in that worker: the same
verdicts, KPIs, counters, trajectory and cycles as when it runs first in a fresh process
(only the measured solve times differ)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq

from controller.core import ekf_memo
from hil.campaign.cases import Case
from hil.campaign.runner import run_case
from hil.campaign.spec import load_campaign

ROOT = Path(__file__).resolve().parents[2]
MC = ROOT / "configs" / "campaigns" / "lyophilizer-mc.yaml"
#: clock facts of a run (wall and CPU), not its results
TIMED = ("started", "ended", "wall_time_s", "cpu_time_s")


def _job(case: Case, out: Path, site: Path, criteria: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        "case": case.to_json(),
        "criteria": criteria,
        "out": str(out),
        "site": str(site),
        "controller": None,
        "mode": case.run_mode("fast"),
        "rate": 0.0,
    }


def _evidence(out: Path, case: Case) -> dict[str, Any]:
    folder = out / "cases" / case.id
    result = json.loads((folder / "result.json").read_text(encoding="utf-8"))
    cycles = pq.read_table(folder / "cycles.parquet").drop_columns(["solve.time_s"])
    return {
        "result": {k: v for k, v in result.items() if k not in TIMED},
        "trajectory": _rows(pq.read_table(folder / "trajectory.parquet").to_pylist()),
        "cycles": _rows(cycles.to_pylist()),
    }


def _rows(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The rows with every NaN as the text "nan" (NaN never equals itself)."""
    return [{k: "nan" if v != v else v for k, v in row.items()} for row in rows]


def test_a_cases_result_does_not_depend_on_the_cases_run_before_it(tmp_path: Path) -> None:
    campaign = load_campaign(MC)
    criteria = [c.model_dump(mode="json") for c in campaign.spec.criteria]
    site = campaign.site_path.resolve()
    first, second = campaign.cases[0], campaign.cases[1]
    ekf_memo.clear()  # the second case runs first, in a worker that has built nothing
    alone = tmp_path / "alone"
    run_case(_job(second, alone, site, criteria))
    after = tmp_path / "after"
    ekf_memo.clear()
    run_case(_job(first, after, site, criteria))
    hits = len(ekf_memo._PLAIN.data)
    run_case(_job(second, after, site, criteria))  # its filter from the first case's memo
    assert len(ekf_memo._PLAIN.data) == hits == 1  # built once, for both cases
    a, b = _evidence(alone, second), _evidence(after, second)
    assert a["result"]["status"] in ("passed", "failed") and a["result"]["verdicts"]
    assert a == b
