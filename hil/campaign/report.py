"""Campaign reports: one self-contained HTML file, JUnit XML and ``summary.json``.

:func:`write_reports` reads the results directory the campaign runner writes
(:func:`hil.campaign.results.load_results`, which documents the layout and how verdicts
combine) and writes ``OUT/report.html`` (:mod:`hil.campaign.report_html`), ``OUT/junit.xml``
(:mod:`hil.campaign.report_junit`) and ``OUT/summary.json`` (:func:`write_summary`).

Only the cases ``campaign.json`` lists are reported on; case folders it does not list (left by
an earlier run in a reused directory) are named in all three reports, and in a warning logged
(``pharmatwin.hil.campaign``), as not part of this campaign run, and count nowhere.

A missing or malformed ``campaign.json`` raises ``CampaignReportError`` naming the directory
and every problem found.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from controller.jsonfile import write_json
from hil.campaign.report_html import write_html
from hil.campaign.report_junit import write_junit
from hil.campaign.results import (
    CampaignResults,
    CaseRecord,
    RequirementResult,
    Status,
    load_results,
    utc_now,
)

__all__ = ["ReportPaths", "write_reports", "write_summary"]

log = logging.getLogger("pharmatwin.hil.campaign")


@dataclass(frozen=True)
class ReportPaths:
    """Where :func:`write_reports` put the three reports."""

    html: Path
    junit: Path
    summary: Path
    #: the campaign's verdict the three say ("passed", "failed", ...)
    verdict: str = ""


def write_reports(out: Path) -> ReportPaths:
    """Write ``report.html``, ``junit.xml`` and ``summary.json`` into ``out``; see module doc."""
    results = load_results(Path(out))
    note = results.unlisted_note()
    if note:  # with no logging configured (the CLI), Python prints this line on stderr
        log.warning("campaign report: %s", note)
    return ReportPaths(
        html=write_html(results, results.out / "report.html"),
        junit=write_junit(results, results.out / "junit.xml"),
        summary=write_summary(results, results.out / "summary.json"),
        verdict=results.verdict(),
    )


def write_summary(results: CampaignResults, path: Path) -> Path:
    """Counts, per-requirement and per-case verdicts and the manifest header, as JSON."""
    m = results.manifest
    header = ("campaign", "description", "file", "mode", "executor", "workers", "started", "ended")
    summary: dict[str, Any] = {k: m.get(k) for k in header}
    summary |= {
        "software": m.get("software"),
        "config_hashes": m.get("config_hashes"),
        "report_generated": utc_now(),
        "verdict": results.verdict(),
        "passed": results.verdict() == "passed",
        "complete": results.case_counts()["not run"] == 0,
        "counts": _counts_json(results.case_counts()),
        "requirement_counts": _counts_json(results.requirement_counts()),
        "requirements": [_requirement_json(r) for r in results.requirement_results()],
        "cases": [_case_json(c) for c in results.cases],
        "unlisted_case_folders": list(results.unlisted_cases),
        "notes": [n for n in (results.unlisted_note(),) if n],
    }
    return write_json(path, summary)


def _counts_json(counts: dict[Status, int]) -> dict[str, int]:
    return {"total": sum(counts.values())} | {s.replace(" ", "_"): n for s, n in counts.items()}


def _requirement_json(r: RequirementResult) -> dict[str, Any]:
    req = r.requirement
    return {
        "id": req.id,
        "description": req.description,
        "check": req.check,
        "verdict": r.verdict,
        "cases": list(r.cases),
        "passed_cases": list(r.passed_cases),
        "failed_cases": list(r.failed_cases),
        "error_cases": list(r.error_cases),
    }


def _case_json(c: CaseRecord) -> dict[str, Any]:
    return {
        "id": c.id,
        "index": c.index,
        "status": c.status,
        "wall_time_s": c.wall_time_s,
        "attempts": c.attempts,
        "seed": c.seed,
        "factors": c.factors,
        "error": c.error,
        "failed_requirements": sorted({v.requirement for v in c.verdicts if not v.passed}),
        "problems": list(c.problems),
        "kpis": c.kpis,
        "verdicts": [
            {
                "requirement": v.requirement,
                "passed": v.passed,
                "value": v.value,
                "limit": v.limit,
                "unit": v.unit,
            }
            for v in c.verdicts
        ],
    }
