"""The report of a large (Monte Carlo) campaign: a bounded number of figures, the cases that
did not pass first, and each case's drawn parameters."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace
from typing import Any, cast

from hil.campaign.report_html import MAX_PLOTS, plotted_cases
from hil.campaign.results import CampaignResults, CaseRecord, _read_case


def _results(statuses: list[str]) -> CampaignResults:
    cases = [
        CaseRecord(id=f"c{i:04d}", index=i, directory=Path("."), status=cast(Any, s))
        for i, s in enumerate(statuses)
    ]
    return cast(CampaignResults, SimpleNamespace(cases=cases))


def test_a_small_campaign_plots_every_case() -> None:
    statuses = ["passed"] * MAX_PLOTS
    assert plotted_cases(_results(statuses)) == {f"c{i:04d}" for i in range(MAX_PLOTS)}


def test_a_large_campaign_plots_the_cases_that_did_not_pass_first() -> None:
    statuses = ["passed"] * 1000
    bad = {5: "failed", 500: "error", 999: "failed"}
    for i, s in bad.items():
        statuses[i] = s
    plotted = plotted_cases(_results(statuses))
    assert len(plotted) == MAX_PLOTS
    assert {f"c{i:04d}" for i in bad} <= plotted
    passed_plotted = sorted(p for p in plotted if int(p[1:]) not in bad)
    assert passed_plotted == [f"c{i:04d}" for i in range(MAX_PLOTS + 1) if i not in bad][:57]


def test_a_monte_carlo_case_record_carries_its_drawn_parameters(tmp_path: Path) -> None:
    folder = tmp_path / "c000-none-d0"
    folder.mkdir()
    draw = {"index": 0, "draws": 2, "block_seed": 1, "seed": 77, "parameters": {"R0": 1.25}}
    spec = {"id": folder.name, "index": 0, "factors": {}, "seed": 77, "draw": draw}
    (folder / "spec.json").write_text(json.dumps(spec))
    (folder / "result.json").write_text(json.dumps({"status": "passed", "verdicts": []}))
    record = _read_case(folder, 0, listed=True)
    assert record.drawn == {"R0": 1.25} and record.seed == 77
    plain = tmp_path / "c001-none-s1"
    plain.mkdir()
    (plain / "spec.json").write_text(json.dumps(spec | {"draw": None}))
    (plain / "result.json").write_text(json.dumps({"status": "passed", "verdicts": []}))
    assert _read_case(plain, 1, listed=True).drawn == {}
