"""The campaign's JUnit XML: one ``<testcase>`` per case x criterion, for CI dashboards.

A failed criterion has a ``<failure>``, an errored case one ``<error>`` per requirement, a case
not run one ``<error>`` per requirement, and a requirement no case judged a testcase of its own
with an ``<error>`` (see :func:`write_junit`). Nothing is ``<skipped>``: a dashboard shows a skip
as not failing, and everything in a campaign's matrix is meant to run.
"""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

from hil.campaign.results import (
    CampaignResults,
    CaseRecord,
    Verdict,
    audit_key_text,
    fmt_value,
    software_rows,
)

__all__ = ["write_junit"]

_XML_INVALID = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\ufffe\uffff]")


def _x(text: object) -> str:
    """Text ElementTree can write and parse back (XML 1.0 forbids most control characters)."""
    return _XML_INVALID.sub("?", str(text))


def write_junit(results: CampaignResults, path: Path) -> Path:
    """One ``<testsuite>``; a ``<testcase classname="<campaign>.<case>" name="<REQ>">`` per
    case x criterion of the cases ``campaign.json`` lists. A failed criterion has a
    ``<failure>``, an errored case one ``<error>`` per requirement, a case not run one ``<error
    type="CaseNotRun">`` per requirement; a requirement no case judged gets a ``<testcase
    classname="<campaign>" name="<REQ>">`` with an ``<error type="RequirementNotRun">``, so every
    requirement is in the suite. A case's wall time is shared evenly among its testcases, so the
    suite time is the campaign's summed case time. Case folders not listed (an earlier run's)
    are left out, named in the property ``unlisted_case_folders``.

    No testcase is ``<skipped>`` (the attribute stays, 0, for tools that read it): the only
    cases a campaign skips are those a re-run found done, and those are reported with the
    result they have; a case or requirement that should have run and did not is an error, as
    a skip would show green on a CI dashboard."""
    testcases = [tc for case in results.cases for tc in _case_testcases(results, case)]
    testcases += _not_run_requirements(results)
    suite = ET.Element(
        "testsuite",
        name=_x(results.name),
        tests=str(len(testcases)),
        failures=str(sum(tc.find("failure") is not None for tc in testcases)),
        errors=str(sum(tc.find("error") is not None for tc in testcases)),
        skipped=str(sum(tc.find("skipped") is not None for tc in testcases)),
        time=f"{sum(c.wall_time_s or 0.0 for c in results.cases):.3f}",
        timestamp=_x(results.manifest.get("started") or ""),
        hostname=_x((results.manifest.get("software") or {}).get("hostname") or ""),
    )
    suite.append(_junit_properties(results))
    suite.extend(testcases)
    tree = ET.ElementTree(suite)
    ET.indent(tree)
    tree.write(path, encoding="utf-8", xml_declaration=True)
    return path


def _junit_properties(results: CampaignResults) -> ET.Element:
    props = ET.Element("properties")
    m: dict[str, Any] = results.manifest
    software = m.get("software") or {}
    pairs = [(k, m.get(k)) for k in ("file", "mode", "executor", "workers", "ended")]
    pairs += [(f"software.{k}", v) for k, v in software_rows(software)]
    pairs += [("audit_key", audit_key_text(m))]
    pairs += [(f"config_hash.{k}", v) for k, v in (m.get("config_hashes") or {}).items()]
    if results.unlisted_cases:
        pairs += [("unlisted_case_folders", ", ".join(results.unlisted_cases))]
        pairs += [("unlisted_case_folders.note", results.unlisted_note())]
    for name, value in pairs:
        ET.SubElement(props, "property", name=_x(name), value=_x("" if value is None else value))
    return props


def _not_run_requirements(results: CampaignResults) -> list[ET.Element]:
    """A failing testcase per requirement that no case judged (its verdict is "not run")."""
    out = []
    for r in results.requirement_results():
        if r.verdict != "not run":
            continue
        tc = ET.Element("testcase", classname=_x(results.name), name=_x(r.requirement.id))
        tc.set("time", "0.000")
        el = ET.SubElement(tc, "error", type="RequirementNotRun")
        el.set("message", _x(f"{r.requirement.id} not run: no case judged it"))
        el.text = _x(f"{r.requirement.description}\ncheck: {r.requirement.check}")
        out.append(tc)
    return out


def _case_testcases(results: CampaignResults, case: CaseRecord) -> list[ET.Element]:
    judged: list[tuple[str, Verdict | None]]
    if case.status in ("error", "not run"):
        judged = [(r.id, None) for r in results.requirements]
    else:
        judged = [(v.requirement, v) for v in case.verdicts]
    judged = judged or [("status", None)]  # a case judged on nothing still shows up
    share = f"{(case.wall_time_s or 0.0) / len(judged):.3f}"
    out = []
    for name, verdict in judged:
        tc = ET.Element("testcase", classname=_x(f"{results.name}.{case.id}"), name=_x(name))
        tc.set("time", share)
        _junit_outcome(tc, case, verdict)
        out.append(tc)
    return out


def _junit_outcome(tc: ET.Element, case: CaseRecord, verdict: Verdict | None) -> None:
    evidence = f"evidence: cases/{case.id}/"
    if case.status == "error":
        el = ET.SubElement(tc, "error", type="CaseError")
        el.set("message", _x(f"case errored: {case.error or 'no error message'}"))
        lines = [f"attempts: {case.attempts}", *case.problems, evidence, case.traceback or ""]
        el.text = _x("\n".join(lines))
    elif case.status == "not run":
        el = ET.SubElement(tc, "error", type="CaseNotRun")
        el.set("message", _x(f"case not run: no result.json in cases/{case.id}/"))
        el.text = _x(f"the campaign lists {case.id} but it has no result (interrupted run?)")
    elif verdict is not None and not verdict.passed:
        el = ET.SubElement(tc, "failure", type="CriterionFailed")
        el.set("message", _x(_verdict_line(verdict)))
        el.text = _x(f"{verdict.description}\ncheck: {verdict.check}\n{evidence}")
    elif verdict is None and case.status == "failed":
        ET.SubElement(tc, "failure", type="CaseFailed", message=_x(case.error or "case failed"))


def _verdict_line(v: Verdict) -> str:
    unit = f" {v.unit}" if v.unit else ""
    detail = f": {v.detail}" if v.detail else ""
    value, limit = fmt_value(v.value), fmt_value(v.limit)
    return f"{v.requirement} failed: value {value}{unit}, limit {limit}{unit}{detail}"
