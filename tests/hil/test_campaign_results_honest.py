"""The campaign reports say only what the run's own evidence shows.

A case folder left by an earlier run in a reused results directory is not evidence; a
requirement no case judged, and a case that never ran, fail the JUnit suite (a CI dashboard must
not show green); a result that claims "passed" with no verdicts, or that is empty, is an error;
summary.json, report.html and junit.xml give the same counts for the same folder.
"""

from __future__ import annotations

import json
import logging
import re
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

import pytest
from case_evidence import write_evidence

from hil.campaign.report import write_reports
from hil.campaign.results import load_results

CAMPAIGN = "demo"


def _req(rid: str) -> dict[str, str]:
    return {"id": rid, "description": f"{rid} holds", "check": f"{rid.lower()} <= 0"}


def _v(rid: str, passed: bool) -> dict[str, Any]:
    return {
        "requirement": rid,
        "description": f"{rid} holds",
        "check": f"{rid.lower()} <= 0",
        "passed": passed,
        "value": 0.5 if passed else 2.0,
        "limit": 1.0,
        "unit": "degC",
        "detail": "" if passed else f"{rid} exceeded",
    }


def _folder(out: Path, reqs: list[str], listed: list[str]) -> Path:
    manifest = {
        "campaign": CAMPAIGN,
        "description": "reused results folder",
        "started": "2025-01-01T00:00:00+00:00",
        "ended": "2025-01-01T01:00:00+00:00",
        "software": {"version": "0.1.0"},
        "requirements": [_req(r) for r in reqs],
        "cases": listed,
    }
    (out / "cases").mkdir(parents=True)
    (out / "campaign.json").write_text(json.dumps(manifest))
    return out


def _case(out: Path, cid: str, result: dict[str, Any] | str | None) -> Path:
    """A case folder with ``spec.json`` and (unless None) ``result.json``, its audit trail and
    recordings, as the runner writes them; ``result`` a string is written verbatim."""
    d = out / "cases" / cid
    d.mkdir()
    (d / "spec.json").write_text(json.dumps({"id": cid, "factors": {}, "seed": 1}))
    if result is not None:
        text = result if isinstance(result, str) else json.dumps(result)
        (d / "result.json").write_text(text)
        write_evidence(d)  # its audit trail and recordings: a judged case has them
    return d


def _passed(*rids: str) -> dict[str, Any]:
    return {"status": "passed", "wall_time_s": 1.0, "verdicts": [_v(r, True) for r in rids]}


def _reports(out: Path) -> tuple[dict[str, Any], str, ET.Element]:
    paths = write_reports(out)
    summary = json.loads(paths.summary.read_text(encoding="utf-8"))
    return summary, paths.html.read_text(encoding="utf-8"), ET.parse(paths.junit).getroot()


def _html_summary(html: str) -> tuple[dict[str, dict[str, int]], str]:
    """The HTML summary table's counts ({"cases"|"requirements": {status: n}}) and verdict."""
    section = re.search(r'<section id="summary">.*?</section>', html, re.S)
    assert section is not None, "no summary section"
    counts = {}
    for row in re.findall(r"<tr>(.*?)</tr>", section.group(0)):
        cells = re.findall(r"<td>(.*?)</td>", row)
        if cells:
            names = ("passed", "failed", "error", "not_run", "total")
            counts[cells[0]] = dict(zip(names, map(int, cells[1:]), strict=True))
    (verdict,) = re.findall(r"Campaign verdict: <span class=\"badge [^\"]+\">([^<]+)<", html)
    return counts, verdict.lower()


def _outcome(tc: ET.Element) -> str:
    """A testcase as a dashboard sees it: error, failure, skipped or passed."""
    for tag in ("error", "failure", "skipped"):
        if tc.find(tag) is not None:
            return tag
    return "passed"


# ------------------------------------------------------- 1. stale folders are not evidence


def test_a_stale_case_folder_does_not_pass_a_requirement(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    out = _folder(tmp_path / "out", ["REQ-A", "REQ-B"], ["c1"])
    _case(out, "c1", _passed("REQ-A"))
    _case(out, "c9-old", _passed("REQ-B"))  # an earlier run's case, not in this manifest
    with caplog.at_level(logging.WARNING, logger="pharmatwin"):
        summary, html, suite = _reports(out)

    reqs = {r["id"]: r for r in summary["requirements"]}
    assert reqs["REQ-B"]["verdict"] == "not run" and reqs["REQ-B"]["cases"] == []
    assert summary["verdict"] == "not run" and summary["passed"] is False
    assert summary["counts"]["total"] == 1
    assert [c["id"] for c in summary["cases"]] == ["c1"]
    assert summary["unlisted_case_folders"] == ["c9-old"]
    assert any("c9-old" in n and "not part of this campaign run" in n for n in summary["notes"])

    counts, verdict = _html_summary(html)
    assert verdict == "not run" and counts["cases"]["total"] == 1
    assert 'id="case-c9-old"' not in html and 'href="#case-c9-old"' not in html
    note = re.search(r'<section id="summary">.*?</section>', html, re.S)
    assert note is not None and "c9-old" in note.group(0)
    assert "not part of this campaign run" in note.group(0)

    assert not [tc for tc in suite.iter("testcase") if "c9-old" in (tc.get("classname") or "")]
    props = {p.get("name"): p.get("value") for p in suite.iter("property")}
    assert props["unlisted_case_folders"] == "c9-old"
    assert int(suite.get("failures", "0")) + int(suite.get("errors", "0")) >= 1

    logged = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert any("c9-old" in m and "not part of this campaign run" in m for m in logged), logged


def test_a_stale_failing_case_folder_does_not_fail_the_campaign(tmp_path: Path) -> None:
    out = _folder(tmp_path / "out", ["REQ-A"], ["c1"])
    _case(out, "c1", _passed("REQ-A"))
    stale = {"status": "failed", "verdicts": [_v("REQ-A", False), _v("REQ-Z", False)]}
    _case(out, "c0-old", stale)
    _case(out, "c8-old", "{not json")  # torn, from an interrupted earlier run
    summary, html, suite = _reports(out)
    assert summary["verdict"] == "passed" and summary["passed"] is True
    assert [r["id"] for r in summary["requirements"]] == ["REQ-A"]  # no REQ-Z from c0-old
    assert summary["unlisted_case_folders"] == ["c0-old", "c8-old"]
    assert _html_summary(html)[1] == "passed"
    assert (suite.get("tests"), suite.get("failures"), suite.get("errors")) == ("1", "0", "0")
    results = load_results(out)
    assert [c.id for c in results.cases] == ["c1"]
    assert results.unlisted_cases == ("c0-old", "c8-old")


# ---------------------------------------- 2. JUnit: nothing that should have run shows green


def test_a_requirement_no_case_judged_fails_the_junit_suite(tmp_path: Path) -> None:
    out = _folder(tmp_path / "out", ["REQ-A", "REQ-B"], ["c1"])
    _case(out, "c1", _passed("REQ-A"))
    summary, _, suite = _reports(out)
    assert {r["id"]: r["verdict"] for r in summary["requirements"]}["REQ-B"] == "not run"
    (tc,) = [tc for tc in suite.iter("testcase") if tc.get("name") == "REQ-B"]
    assert _outcome(tc) in ("error", "failure")
    problem = tc.find(_outcome(tc))
    assert problem is not None and "not run: no case judged it" in problem.get("message", "")
    assert suite.get("tests") == "2"
    assert int(suite.get("failures", "0")) + int(suite.get("errors", "0")) == 1


def test_a_case_that_did_not_run_is_an_error_not_a_skip(tmp_path: Path) -> None:
    out = _folder(tmp_path / "out", ["REQ-A"], ["c1", "c2"])
    _case(out, "c1", _passed("REQ-A"))
    _case(out, "c2", None)  # listed, never finished: no result.json
    summary, _, suite = _reports(out)
    assert {c["id"]: c["status"] for c in summary["cases"]}["c2"] == "not run"
    assert suite.findall(".//skipped") == [] and suite.get("skipped") == "0"
    mine = [tc for tc in suite.iter("testcase") if tc.get("classname") == f"{CAMPAIGN}.c2"]
    assert mine and all(_outcome(tc) == "error" for tc in mine)
    for tc in mine:
        error = tc.find("error")
        assert error is not None and error.get("type") == "CaseNotRun"
        assert "not run" in error.get("message", "") and "result.json" in error.get("message", "")
    assert suite.get("errors") == str(len(mine))


# ---------------------------------------------- 3. no verdicts, or an empty result: an error


@pytest.mark.parametrize(
    "result",
    [{"status": "passed"}, {"status": "passed", "verdicts": []}],
    ids=["no-verdicts-key", "empty-verdicts"],
)
def test_a_pass_with_no_verdicts_is_an_error(tmp_path: Path, result: dict[str, Any]) -> None:
    out = _folder(tmp_path / "out", ["REQ-A"], ["c1", "c2"])
    _case(out, "c1", _passed("REQ-A"))
    _case(out, "c2", result)
    summary, html, suite = _reports(out)
    c2 = {c["id"]: c for c in summary["cases"]}["c2"]
    assert c2["status"] == "error" and "no verdicts recorded" in (c2["error"] or "")
    assert summary["verdict"] == "error" and summary["passed"] is False
    assert {r["id"]: r["verdict"] for r in summary["requirements"]}["REQ-A"] == "error"
    assert _html_summary(html)[1] == "error" and "no verdicts recorded" in html
    mine = [tc for tc in suite.iter("testcase") if tc.get("classname") == f"{CAMPAIGN}.c2"]
    assert mine and all(_outcome(tc) == "error" for tc in mine)


@pytest.mark.parametrize(
    "verdicts",
    [[_v("REQ-A", True), "REQ-A failed"], {"REQ-A": True}],
    ids=["entry-not-an-object", "not-a-list"],
)
def test_verdicts_that_cannot_be_read_do_not_pass(tmp_path: Path, verdicts: Any) -> None:
    out = _folder(tmp_path / "out", ["REQ-A"], ["c1", "c2"])
    _case(out, "c1", _passed("REQ-A"))
    folder = _case(out, "c2", {"status": "passed", "verdicts": verdicts})
    summary, _, _ = _reports(out)
    c2 = {c["id"]: c for c in summary["cases"]}["c2"]
    assert c2["status"] == "error" and str(folder / "result.json") in (c2["error"] or "")
    assert summary["verdict"] == "error" and summary["passed"] is False


@pytest.mark.parametrize("text", ["{}", ""], ids=["empty-object", "empty-file"])
def test_an_empty_result_is_an_error_naming_the_file(tmp_path: Path, text: str) -> None:
    out = _folder(tmp_path / "out", ["REQ-A"], ["c1", "c2"])
    _case(out, "c1", _passed("REQ-A"))
    folder = _case(out, "c2", text)
    summary, _, suite = _reports(out)
    c2 = {c["id"]: c for c in summary["cases"]}["c2"]
    assert c2["status"] == "error"
    assert str(folder / "result.json") in (c2["error"] or "")
    assert summary["verdict"] == "error"
    assert int(suite.get("errors", "0")) >= 1


# ----------------------------------------------------- 4. the three reports agree on counts


def _assert_reports_agree(out: Path) -> dict[str, Any]:
    """summary.json, the HTML summary and junit.xml of ``out`` give the same counts."""
    summary, html, suite = _reports(out)
    html_counts, html_verdict = _html_summary(html)
    assert html_counts["cases"] == summary["counts"]
    assert html_counts["requirements"] == summary["requirement_counts"]
    assert html_verdict == summary["verdict"]

    # JUnit: the listed cases and no others; each case's worst outcome is its status
    by_case: dict[str, list[ET.Element]] = {}
    reqs_alone = []
    for tc in suite.iter("testcase"):
        classname = tc.get("classname") or ""
        if classname == CAMPAIGN:
            reqs_alone.append(tc)
        else:
            by_case.setdefault(classname.removeprefix(f"{CAMPAIGN}."), []).append(tc)
    assert sorted(by_case) == sorted(c["id"] for c in summary["cases"])
    junit_status = {}
    for cid, tcs in by_case.items():
        outcomes = {_outcome(tc) for tc in tcs}
        types = {e.get("type") for tc in tcs for e in tc.findall("error")}
        worst = next(o for o in ("error", "failure", "skipped", "passed") if o in outcomes)
        status = {"failure": "failed"}.get(worst, worst)
        junit_status[cid] = "not run" if types == {"CaseNotRun"} else status
    assert junit_status == {c["id"]: c["status"] for c in summary["cases"]}
    junit_counts = {s: list(junit_status.values()).count(s) for s in ("passed", "failed", "error")}
    junit_counts["not_run"] = list(junit_status.values()).count("not run")
    assert junit_counts | {"total": len(junit_status)} == summary["counts"]
    # every requirement no case judged has its own failing testcase, and only those
    req_verdicts = {r["id"]: r["verdict"] for r in summary["requirements"]}
    not_run_reqs = sorted(r for r, v in req_verdicts.items() if v == "not run")
    assert sorted(tc.get("name") or "" for tc in reqs_alone) == not_run_reqs
    assert len(reqs_alone) == summary["requirement_counts"]["not_run"]
    assert all(_outcome(tc) in ("error", "failure") for tc in reqs_alone)
    # the requirements JUnit shows failing are those summary.json says failed
    failing = {tc.get("name") for tc in suite.iter("testcase") if _outcome(tc) == "failure"}
    assert failing == {r for r, v in req_verdicts.items() if v == "failed"}
    # the suite's totals are those of its testcases, and a failed campaign is not green
    testcases = list(suite.iter("testcase"))
    assert suite.get("tests") == str(len(testcases))
    assert suite.get("failures") == str(sum(_outcome(tc) == "failure" for tc in testcases))
    assert suite.get("errors") == str(sum(_outcome(tc) == "error" for tc in testcases))
    assert suite.get("skipped") == "0"
    green = suite.get("failures") == suite.get("errors") == "0"
    assert green is (summary["verdict"] == "passed") is summary["passed"]
    return summary


def test_summary_html_and_junit_agree_with_errors_and_a_stale_folder(tmp_path: Path) -> None:
    listed = ["c0-pass", "c1-fail", "c2-error", "c3-notrun", "c4-noverdicts", "c5-empty"]
    out = _folder(tmp_path / "out", ["REQ-A", "REQ-B", "REQ-C", "REQ-D"], listed)
    _case(out, "c0-pass", _passed("REQ-A", "REQ-B"))
    _case(out, "c1-fail", {"status": "failed", "verdicts": [_v("REQ-A", True), _v("REQ-B", False)]})
    _case(out, "c2-error", {"status": "error", "error": "worker lost", "verdicts": []})
    _case(out, "c3-notrun", None)
    _case(out, "c4-noverdicts", {"status": "passed"})
    _case(out, "c5-empty", "{}")
    _case(out, "c9-old", _passed("REQ-D"))  # stale, not listed
    summary = _assert_reports_agree(out)
    assert summary["counts"] == {"total": 6, "passed": 1, "failed": 1, "error": 3, "not_run": 1}
    verdicts = {r["id"]: r["verdict"] for r in summary["requirements"]}
    # an errored case counts as testing every requirement, so none is merely "not run"
    assert verdicts == {"REQ-A": "error", "REQ-B": "failed", "REQ-C": "error", "REQ-D": "error"}
    assert summary["verdict"] == "failed"


def test_summary_html_and_junit_agree_with_untested_requirements(tmp_path: Path) -> None:
    out = _folder(tmp_path / "out", ["REQ-A", "REQ-B", "REQ-C"], ["c0", "c1", "c2"])
    _case(out, "c0", _passed("REQ-A"))
    _case(out, "c1", {"status": "failed", "verdicts": [_v("REQ-A", False)]})
    _case(out, "c2", None)
    _case(out, "c9-old", _passed("REQ-B", "REQ-C"))  # stale, not listed
    summary = _assert_reports_agree(out)
    assert summary["counts"] == {"total": 3, "passed": 1, "failed": 1, "error": 0, "not_run": 1}
    verdicts = {r["id"]: r["verdict"] for r in summary["requirements"]}
    assert verdicts == {"REQ-A": "failed", "REQ-B": "not run", "REQ-C": "not run"}


def test_summary_html_and_junit_agree_on_a_clean_pass(tmp_path: Path) -> None:
    out = _folder(tmp_path / "out", ["REQ-A", "REQ-B"], ["c1", "c2"])
    _case(out, "c1", _passed("REQ-A", "REQ-B"))
    _case(out, "c2", _passed("REQ-A"))
    summary, html, suite = _reports(out)
    assert summary["verdict"] == "passed" and summary["passed"] is True
    assert summary["unlisted_case_folders"] == [] and summary["notes"] == []
    html_counts, html_verdict = _html_summary(html)
    assert html_counts["cases"] == summary["counts"]
    assert html_counts["requirements"] == summary["requirement_counts"]
    assert html_verdict == "passed"
    assert (suite.get("tests"), suite.get("failures"), suite.get("errors")) == ("3", "0", "0")


def test_a_pass_whose_own_verdict_failed_is_an_error(tmp_path: Path) -> None:
    out = _folder(tmp_path / "out", ["REQ-A", "REQ-B"], ["c1"])
    _case(out, "c1", {"status": "passed", "verdicts": [_v("REQ-A", True), _v("REQ-B", False)]})
    summary, _, _ = _reports(out)
    (c1,) = summary["cases"]
    assert c1["status"] == "error" and "status passed but REQ-B failed" in (c1["error"] or "")
    assert summary["passed"] is False
    assert {r["id"]: r["verdict"] for r in summary["requirements"]}["REQ-B"] == "failed"


def test_a_failed_status_that_no_verdict_explains_is_an_error_in_every_report(
    tmp_path: Path,
) -> None:
    """Before: a result.json saying "failed" with every verdict passed was counted failed in
    summary.json and report.html, and junit.xml showed 0 failures and 0 errors."""
    out = _folder(tmp_path, ["REQ-A"], ["c0", "c1"])
    _case(out, "c0", _passed("REQ-A"))
    _case(out, "c1", {"status": "failed", "wall_time_s": 1.0, "verdicts": [_v("REQ-A", True)]})
    summary, html, junit = _reports(out)
    assert summary["verdict"] == "error" and not summary["passed"]
    assert "status failed but no verdict failed" in json.dumps(summary)
    assert "status failed but no verdict failed" in html
    assert int(junit.get("errors") or 0) + int(junit.get("failures") or 0) >= 1


@pytest.mark.parametrize(
    "result",
    [
        {"status": "passed", "verdicts": []},
        {"status": "passed", "verdicts": [_v("REQ-A", False)]},
        {"status": "failed", "verdicts": [_v("REQ-A", True)]},
    ],
)
def test_a_record_the_reports_call_an_error_is_run_again_not_reused(
    tmp_path: Path, result: dict[str, Any]
) -> None:
    """Before: ``campaign run`` (without --force) took these records as finished cases and
    exited 0 with "6 passed, 0 errored" while its own summary.json said failed."""
    from types import SimpleNamespace

    from hil.campaign.resume import previous_result

    case = SimpleNamespace(id="c0", digest="D")
    folder = tmp_path / "cases" / "c0"
    folder.mkdir(parents=True)
    spec = {"digest": "D", "mode": "fast", "configuration": "C"}
    (folder / "spec.json").write_text(json.dumps(spec))
    (folder / "result.json").write_text(json.dumps(result))
    assert previous_result(tmp_path, case, "fast", "C") is None  # type: ignore[arg-type]
    (folder / "result.json").write_text(json.dumps(_passed("REQ-A")))  # one that stands
    assert previous_result(tmp_path, case, "fast", "C") == _passed("REQ-A")  # type: ignore[arg-type]
