"""Campaign reports from a fake results directory: HTML, JUnit XML and summary.json."""

from __future__ import annotations

import base64
import json
import re
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from case_evidence import write_evidence

from hil.campaign.report import write_reports, write_summary
from hil.campaign.report_junit import write_junit
from hil.campaign.report_plot import _envelope, _mode_spans, _panels
from hil.campaign.results import CampaignReportError, load_results

REQUIREMENTS = [
    {
        "id": "REQ-SAFE-01",
        "description": "shelf <setpoint> & limits",
        "check": "max(u.Tsh - limit) <= 0",
    },
    {
        "id": "REQ-PROD-01",
        "description": "product below collapse",
        "check": "max(x.Tbot) <= T_crit - 1",
    },
    {
        "id": "REQ-FALL-01",
        "description": "fallback in time",
        "check": "fallback_delay <= 2 * watchdog",
    },
]
IDS = ["c000-nominal-s1", "c001-R0-high-s2", "c002-bias-Tbot-s3", "c003-loss-s4"]


def _verdict(req: dict[str, str], passed: bool, value: float, limit: float) -> dict[str, Any]:
    detail = "" if passed else "Tbot reached -29.0 at t=3.1 h"
    verdict = {"requirement": req["id"], "description": req["description"], "check": req["check"]}
    return verdict | {
        "passed": passed,
        "value": value,
        "limit": limit,
        "unit": "degC",
        "detail": detail,
    }


def _trajectory(path: Path, fallback: bool) -> None:
    t = np.linspace(0.0, 10.0, 200)
    mode = ["active"] * 200
    if fallback:
        mode[120:160] = ["fallback"] * 40
    sp = np.where(t < 5, -20.0, np.nan)
    table = pa.table(
        {
            "t": t,
            "x.Tbot": -35 + 2 * t,
            "x.Lck": 0.1 * t,
            "e.Tsub": -36 + 2 * t,
            "y.Tbot": -35 + 2 * t + 0.1,
            "u.Tsh": np.full(200, -20.0),
            "u.Pch": np.full(200, 0.1),
            "sp.Tsh": sp,
            "sp.Pch": np.full(200, 0.1),
            "plc.mode": mode,
            "plc.alarm": [m == "fallback" for m in mode],
        }
    )
    pq.write_table(table.replace_schema_metadata({b"time_unit": b"h"}), path)


def _write_case(out: Path, index: int, status: str | None, **result: Any) -> None:
    case_id = IDS[index]
    d = out / "cases" / case_id
    d.mkdir(parents=True)
    factors = {"initial": "nominal", "mismatch": "R0-high", "seed": index + 1}
    spec = {
        "id": case_id,
        "index": index,
        "factors": factors,
        "seed": index + 1,
        "scenario": {"name": "lyo"},
        "controller_loss_at": None,
        "mode": "fast",
    }
    (d / "spec.json").write_text(json.dumps(spec))
    if status is None:
        return
    base: dict[str, Any] = {
        "id": case_id,
        "status": status,
        "error": None,
        "wall_time_s": 1.5,
        "attempts": 1,
        "started": "2025-01-01T00:00:00Z",
        "ended": "2025-01-01T00:00:02Z",
        "kpis": {"drying_time_h": 9.5, "bad": float("nan")},
        "verdicts": [],
    }
    (d / "result.json").write_text(json.dumps(base | result))
    if status != "error":
        _trajectory(d / "trajectory.parquet", fallback=index == 1)
        pq.write_table(pa.table({"t": [0.0, 1.0], "state": ["RUNNING"] * 2}), d / "cycles.parquet")
        write_evidence(d)  # and its audit trail


def _manifest(out: Path, **extra: Any) -> None:
    manifest = {
        "campaign": "lyophilizer-oq",
        "description": "OQ of the lyophilizer MPC",
        "file": "configs/campaigns/lyophilizer-oq.yaml",
        "mode": "fast",
        "executor": "process",
        "workers": 2,
        "started": "2025-01-01T00:00:00+00:00",
        "ended": None,
        "software": {
            "version": "0.1.0",
            "git_commit": "abc1234",
            "python": "3.11.9",
            "platform": "Linux",
            "machine": "x86_64",
            "hostname": "bench-1",
            "libraries": {"casadi": "3.8.2", "do-mpc": "5.1.2"},
        },
        "config_hashes": {"configs/campaigns/lyophilizer-oq.yaml": "ab" * 32},
        "requirements": REQUIREMENTS,
        "cases": IDS,
    }
    out.mkdir(parents=True, exist_ok=True)
    (out / "campaign.json").write_text(json.dumps(manifest | extra))


@pytest.fixture
def results_dir(tmp_path: Path) -> Path:
    """c000 passed, c001 failed REQ-PROD-01, c002 errored (no parquet), c003 not run."""
    out = tmp_path / "out"
    _manifest(out)
    safe, prod, fall = REQUIREMENTS
    ok = [_verdict(safe, True, -1.0, 0.0), _verdict(prod, True, -33.0, -31.0)]
    _write_case(out, 0, "passed", verdicts=[*ok, _verdict(fall, True, 1.0, 2.0)])
    bad = [ok[0], _verdict(prod, False, -29.0, -31.0), _verdict(fall, True, 1.0, 2.0)]
    _write_case(out, 1, "failed", verdicts=bad)
    trace = "Traceback (most recent call last):\n  KilledWorker: <worker>"
    _write_case(out, 2, "error", error="worker lost twice", attempts=2, traceback=trace)
    _write_case(out, 3, None)
    return out


def test_html_is_one_self_contained_file_with_every_requirement_and_case(results_dir: Path) -> None:
    paths = write_reports(results_dir)
    assert paths.html == results_dir / "report.html"
    written = sorted(p.name for p in results_dir.iterdir())
    assert written == ["campaign.json", "cases", "junit.xml", "report.html", "summary.json"]
    text = paths.html.read_text(encoding="utf-8")
    for req in REQUIREMENTS:
        assert f'id="req-{req["id"]}"' in text
    for case_id in IDS:
        assert f'id="case-{case_id}"' in text
        assert f'href="#case-{case_id}"' in text
    assert 'href="cases/c000-nominal-s1/trajectory.parquet"' in text
    assert "trajectory.parquet (absent)" in text  # the errored case has no trajectory
    assert not re.search(r"""(src|href)=["']?(https?:)?//""", text)
    assert "<script" not in text and "<link" not in text
    assert "&lt;setpoint&gt; &amp; limits" in text  # escaped
    assert "KilledWorker: &lt;worker&gt;" in text
    images = re.findall(r'src="data:image/png;base64,([^"]+)"', text)
    assert len(images) == 2  # the two cases with a trajectory
    pngs = [base64.b64decode(b64) for b64 in images]
    assert all(png.startswith(b"\x89PNG\r\n\x1a\n") for png in pngs)
    assert max(len(png) for png in pngs) < 150_000  # 48 cases stay well below 10 MB
    for shown in ("abc1234", "3.11.9", "casadi", "ab" * 32, "x86_64", "worker lost twice"):
        assert shown in text


def test_junit_has_one_testcase_per_case_and_criterion(results_dir: Path) -> None:
    suite = ET.parse(write_junit(load_results(results_dir), results_dir / "j.xml")).getroot()
    assert suite.tag == "testsuite" and suite.get("name") == "lyophilizer-oq"
    cases = suite.findall("testcase")
    assert len(cases) == 12 and suite.get("tests") == "12"
    assert len(suite.findall("testcase/failure")) == 1 and suite.get("failures") == "1"
    # a case that did not run is an error in JUnit, not a skip a dashboard shows as green
    assert len(suite.findall("testcase/error")) == 6 and suite.get("errors") == "6"
    assert not suite.findall("testcase/skipped") and suite.get("skipped") in (None, "0")
    assert float(suite.get("time", "nan")) == pytest.approx(4.5)
    assert {c.get("classname") for c in cases} == {f"lyophilizer-oq.{i}" for i in IDS}
    failed = next(c for c in cases if c.find("failure") is not None)
    assert failed.get("classname") == "lyophilizer-oq.c001-R0-high-s2"
    assert failed.get("name") == "REQ-PROD-01"
    message = failed.find("failure").get("message", "")  # type: ignore[union-attr]
    assert "-29" in message and "-31" in message and "Tbot reached" in message
    errors = [c.get("name") for c in cases if c.find("error") is not None]
    assert errors == [r["id"] for r in REQUIREMENTS] * 2  # the errored case, the one not run


def test_summary_counts_and_requirement_verdicts(results_dir: Path) -> None:
    path = write_summary(load_results(results_dir), results_dir / "s.json")
    summary = json.loads(path.read_text())
    assert summary["counts"] == {"total": 4, "passed": 1, "failed": 1, "error": 1, "not_run": 1}
    assert summary["passed"] is False and summary["complete"] is False
    assert summary["verdict"] == "failed"
    verdicts = {r["id"]: r for r in summary["requirements"]}
    assert verdicts["REQ-PROD-01"]["verdict"] == "failed"
    assert verdicts["REQ-PROD-01"]["failed_cases"] == ["c001-R0-high-s2"]
    assert verdicts["REQ-SAFE-01"]["verdict"] == "error"  # passed where run, but c002 errored
    assert verdicts["REQ-SAFE-01"]["cases"] == IDS[:3]
    counts = {"total": 3, "passed": 0, "failed": 1, "error": 2, "not_run": 0}
    assert summary["requirement_counts"] == counts
    by_case = {c["id"]: c for c in summary["cases"]}
    assert by_case["c003-loss-s4"]["status"] == "not run"
    assert by_case["c000-nominal-s1"]["wall_time_s"] == 1.5
    assert by_case["c001-R0-high-s2"]["failed_requirements"] == ["REQ-PROD-01"]
    assert summary["software"]["git_commit"] == "abc1234" and summary["workers"] == 2


def test_a_complete_passing_campaign_passes(tmp_path: Path) -> None:
    out = tmp_path / "out"
    _manifest(out, cases=IDS[:2], ended="2025-01-01T01:00:00+00:00")
    for i in range(2):
        _write_case(out, i, "passed", verdicts=[_verdict(r, True, 0.0, 1.0) for r in REQUIREMENTS])
    results = load_results(out)
    summary = json.loads(write_summary(results, out / "summary.json").read_text())
    assert summary["passed"] is True and summary["complete"] is True
    assert [r["verdict"] for r in summary["requirements"]] == ["passed"] * 3
    suite = ET.parse(write_junit(results, out / "junit.xml")).getroot()
    assert (suite.get("tests"), suite.get("failures"), suite.get("errors")) == ("6", "0", "0")


def test_unreadable_result_is_an_error_and_stray_cases_are_reported(results_dir: Path) -> None:
    (results_dir / "cases" / IDS[3] / "result.json").write_text('{"status": "pass')  # torn write
    (results_dir / "cases" / "c099-stray").mkdir()
    results = load_results(results_dir)
    status = {c.id: c.status for c in results.cases}
    assert status[IDS[3]] == "error" and "unreadable" in (results.cases[3].error or "")
    # a folder the run's campaign.json does not list is no evidence of this run
    assert "c099-stray" not in status and results.unlisted_cases == ("c099-stray",)
    assert "c099-stray" in results.unlisted_note()


def test_missing_or_malformed_manifest_raises_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(CampaignReportError, match=r"campaign\.json is missing") as info:
        write_reports(tmp_path)
    assert str(tmp_path) in str(info.value)
    (tmp_path / "campaign.json").write_text("{not json")
    with pytest.raises(CampaignReportError, match="cannot read the manifest"):
        write_reports(tmp_path)
    (tmp_path / "campaign.json").write_text(json.dumps({"requirements": [{"check": "x"}]}))
    with pytest.raises(CampaignReportError) as info:
        write_reports(tmp_path)
    for problem in ("campaign:", "cases:", "requirements[0]:"):
        assert problem in str(info.value)
    assert not (tmp_path / "report.html").exists()


def test_plots_inputs_and_the_variables_the_checks_name() -> None:
    columns = ["t", "x.Lck", "x.Tbot", "e.Tsub", "y.Tbot", "u.Tsh", "u.Pch", "sp.Tsh", "plc.mode"]
    checks = ["max(x.Tbot) <= T_crit - 1", "max(u.Tsh - limit) <= 0"]
    assert _panels(columns, checks) == ["Tsh", "Pch", "Tbot"]
    assert _panels(columns, ["fallback_delay <= 2"]) == ["Tsh", "Pch", "Lck", "Tbot", "Tsub"]
    t = np.arange(6, dtype=float)
    modes = ["active", "fallback", "fallback", "active", "fallback", "fallback"]
    assert _mode_spans(t, modes, "fallback") == [(1.0, 3.0), (4.0, 5.0)]


def test_long_trajectories_are_thinned_without_losing_an_excursion() -> None:
    t = np.arange(100_000, dtype=float)
    y = np.zeros_like(t)
    y[54_321], y[77_777] = 5.0, -3.0
    y[10:500] = np.nan
    t_kept, y_kept = _envelope(t, y)
    assert len(t_kept) <= 2002 and np.all(np.diff(t_kept) > 0)
    assert 54_321.0 in t_kept and 77_777.0 in t_kept
    assert np.nanmax(y_kept) == 5.0 and np.nanmin(y_kept) == -3.0


def test_campaign_report_exits_by_the_verdict_it_writes(
    results_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # `campaign report` said nothing of the verdict and exited 0 for a failed campaign, so a
    # script that regenerated the reports took them as passed
    from hil.cli import main as hil_main

    assert hil_main(["campaign", "report", str(results_dir)]) == 1
    assert "verdict: failed" in capsys.readouterr().out
    passing = tmp_path / "passing"
    _manifest(passing, cases=IDS[:2], ended="2025-01-01T01:00:00+00:00")
    for i in range(2):
        _write_case(
            passing, i, "passed", verdicts=[_verdict(r, True, 0.0, 1.0) for r in REQUIREMENTS]
        )
    assert hil_main(["campaign", "report", str(passing)]) == 0
    assert "verdict: passed" in capsys.readouterr().out
