"""A case passes only on evidence that is there and that verifies, and only with a verdict for
every criterion its ``spec.json`` lists.

Before, on real fast-mode result folders: deleting a passed case's ``audit.db``,
``trajectory.parquet`` and ``cycles.parquet`` left the report "passed" (rc 0; the HTML only
marked the Parquet files "(absent)"); an ``audit.db`` altered behind its hash chain (which
``pharmatwin audit verify`` catches) still reported "passed"; and a failed verdict deleted from
``result.json`` (its status set to "passed") went unnoticed by the report and by a rerun
without ``--force``, which took the case as done.
"""

from __future__ import annotations

import json
import shutil
import sqlite3
from pathlib import Path
from typing import Any

import pytest
import yaml

from controller.runtime.audit_chain import AuditMismatch
from controller.runtime.audit_verify import verify_file
from hil.campaign.execute import RunSettings, run_campaign
from hil.campaign.report import write_reports
from hil.campaign.results import load_results
from hil.campaign.spec import Campaign, load_campaign
from hil.cli import main as hil_main

ROOT = Path(__file__).resolve().parents[2]
LYO = ROOT / "configs" / "sites" / "lyophilizer-modbus.yaml"
RECORDINGS = ("audit.db", "trajectory.parquet", "cycles.parquet")
pytestmark = pytest.mark.timeout(300)

ROB_01 = {"id": "REQ-ROB-01", "description": "No more than 3 failed solves in a row",
          "check": {"kind": "consecutive_failed_solves", "at_most": 3}}  # fmt: skip
ROB_02 = {"id": "REQ-ROB-02", "description": "MPC never loses control",
          "check": {"kind": "control_losses", "at_most": 0}}  # fmt: skip


def _campaign(tmp: Path, name: str, variants: dict[str, Any], criteria: list[Any]) -> Campaign:
    raw = {
        "name": name,
        "site": str(LYO),
        "duration": 1.5,
        "mode": "fast",
        "retries": 0,
        "matrix": [{"factors": {"faults": variants}, "seeds": [7]}],
        "criteria": criteria,
    }
    path = tmp / f"{name}.yaml"
    path.write_text(yaml.safe_dump(raw), encoding="utf-8")
    return load_campaign(path)


@pytest.fixture(scope="module")
def passing(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A real one-case campaign that passes."""
    tmp = tmp_path_factory.mktemp("passing")
    campaign = _campaign(tmp, "passing", {"none": {}}, [ROB_01])
    out = tmp / "out"
    run_campaign(campaign, RunSettings(out=out, workers=1, progress=False))
    return out


@pytest.fixture(scope="module")
def dropped(tmp_path_factory: pytest.TempPathFactory) -> tuple[Campaign, Path]:
    """A real two-case campaign whose controller-loss case fails REQ-ROB-02."""
    tmp = tmp_path_factory.mktemp("dropped")
    variants = {"none": {}, "controller-loss": {"controller_loss_at": 1.0}}
    campaign = _campaign(tmp, "drop", variants, [ROB_01, ROB_02])
    out = tmp / "out"
    run_campaign(campaign, RunSettings(out=out, workers=1, progress=False))
    return campaign, out


def _copy(out: Path, tmp: Path) -> Path:
    copy = tmp / "copy"
    shutil.copytree(out, copy)
    return copy


def _report(out: Path, capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    rc = hil_main(["campaign", "report", str(out)])
    return rc, capsys.readouterr().out


# ------------------------------------------------------------ 2. evidence missing or altered


@pytest.mark.parametrize("gone", [RECORDINGS, *((name,) for name in RECORDINGS)])
def test_a_case_whose_evidence_is_gone_is_an_error(
    passing: Path, tmp_path: Path, gone: tuple[str, ...], capsys: pytest.CaptureFixture[str]
) -> None:
    out = _copy(passing, tmp_path)
    assert load_results(out).verdict() == "passed"  # as the run left it
    (case,) = load_results(out).cases
    for name in gone:
        (case.directory / name).unlink()
    (case,) = load_results(out).cases
    assert case.status == "error"
    for name in gone:
        assert any(str(case.directory / name) in p and "missing" in p for p in case.problems)
    assert name in (case.error or "")
    rc, text = _report(out, capsys)
    assert rc != 0 and "verdict: error" in text
    summary = json.loads((out / "summary.json").read_text(encoding="utf-8"))
    assert summary["passed"] is False and summary["verdict"] == "error"


def _tamper(db: Path) -> None:
    """Change a record behind the trail's back (its guard triggers dropped first)."""
    con = sqlite3.connect(db)
    try:
        query = "SELECT name FROM sqlite_master WHERE type = 'trigger'"
        for (name,) in con.execute(query).fetchall():
            con.execute(f'DROP TRIGGER "{name}"')
        con.execute("UPDATE audit SET reason = 'edited' WHERE id = (SELECT MAX(id) FROM audit)")
        con.commit()
    finally:
        con.close()


def test_a_case_whose_audit_trail_does_not_verify_is_an_error(
    passing: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = _copy(passing, tmp_path)
    (case,) = load_results(out).cases
    db = case.directory / "audit.db"
    verify_file(db)  # the run's trail verifies
    _tamper(db)
    with pytest.raises(AuditMismatch):  # what `pharmatwin audit verify` says
        verify_file(db)
    (case,) = load_results(out).cases
    assert case.status == "error"
    assert any(str(db) in p and "does not verify" in p for p in case.problems)
    rc, text = _report(out, capsys)
    assert rc != 0 and "verdict: error" in text


def test_an_errored_case_without_recordings_keeps_its_own_error(
    passing: Path, tmp_path: Path
) -> None:
    """A case no worker answered has only ``result.json`` (hil.campaign.execute._error): its
    error is the reason given, with no complaint about recordings it never made."""
    out = _copy(passing, tmp_path)
    (case,) = load_results(out).cases
    for name in RECORDINGS:
        (case.directory / name).unlink()
    error = {"id": case.id, "status": "error", "error": "worker lost twice", "verdicts": []}
    (case.directory / "result.json").write_text(json.dumps(error), encoding="utf-8")
    (case,) = load_results(out).cases
    assert case.status == "error" and case.error == "worker lost twice"
    assert case.problems == ()


# ------------------------------------------------------ 3. a verdict dropped from result.json


def _drop_failed_verdict(out: Path) -> str:
    """Delete the controller-loss case's failed verdict and call it passed; its id."""
    (path,) = (out / "cases").glob("*-controller-loss-s7/result.json")
    result = json.loads(path.read_text(encoding="utf-8"))
    failed = [v["requirement"] for v in result["verdicts"] if not v["passed"]]
    assert result["status"] == "failed" and failed == ["REQ-ROB-02"]  # as the run left it
    result["verdicts"] = [v for v in result["verdicts"] if v["passed"]]
    result["status"] = "passed"
    path.write_text(json.dumps(result, indent=2), encoding="utf-8")
    return path.parent.name


def test_a_case_missing_a_verdict_its_spec_lists_is_an_error(
    dropped: tuple[Campaign, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = _copy(dropped[1], tmp_path)
    assert load_results(out).verdict() == "failed"
    cid = _drop_failed_verdict(out)
    case = next(c for c in load_results(out).cases if c.id == cid)
    assert case.status == "error"
    assert any("REQ-ROB-02" in p and "result.json" in p for p in case.problems), case.problems
    rc, text = _report(out, capsys)
    assert rc != 0 and "verdict: passed" not in text
    summary = json.loads((out / "summary.json").read_text(encoding="utf-8"))
    assert summary["passed"] is False
    assert {r["id"]: r["verdict"] for r in summary["requirements"]}["REQ-ROB-02"] == "error"


def test_a_case_missing_a_verdict_is_run_again_not_reused(
    dropped: tuple[Campaign, Path], tmp_path: Path
) -> None:
    campaign, original = dropped
    out = _copy(original, tmp_path)
    cid = _drop_failed_verdict(out)
    outcome = run_campaign(campaign, RunSettings(out=out, workers=1, progress=False))
    assert cid not in outcome.skipped and len(outcome.skipped) == 1
    rerun = json.loads((out / "cases" / cid / "result.json").read_text(encoding="utf-8"))
    assert rerun["status"] == "failed"
    assert [v["requirement"] for v in rerun["verdicts"] if not v["passed"]] == ["REQ-ROB-02"]
    assert write_reports(out) and load_results(out).verdict() == "failed"


# ------------------------------------------------------------ the key the trails were signed with


def test_a_key_in_the_reporters_environment_does_not_make_an_unsigned_trail_altered(
    passing: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A review: with $PHARMATWIN_AUDIT_KEY set in the shell that wrote the report, every
    untouched, unsigned trail was "altered, cut or rewritten" and the campaign an error."""
    from controller.runtime.audit_keys import KEY_ENV, create_key

    out = _copy(passing, tmp_path)
    create_key(tmp_path / "k.key")
    monkeypatch.setenv(KEY_ENV, str(tmp_path / "k.key"))
    (case,) = load_results(out).cases
    assert case.status == "passed" and not case.problems
    assert load_results(out).verdict() == "passed"
    from hil.campaign.report import write_reports

    html = write_reports(out).html.read_text("utf-8")
    assert "audit trails signed with</th><td>none: the trails are unsigned" in html


def test_a_signed_trail_is_checked_with_its_own_key_and_said_so_without_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from controller.runtime.audit_keys import KEY_ENV, create_key

    key = create_key(tmp_path / "k.key")
    monkeypatch.setenv(KEY_ENV, str(tmp_path / "k.key"))
    campaign = _campaign(tmp_path, "signed", {"none": {}}, [ROB_01])
    out = tmp_path / "out"
    run_campaign(campaign, RunSettings(out=out, workers=1, progress=False))
    assert load_results(out).verdict() == "passed"  # its own key: verified, signatures too
    from hil.campaign.report import write_reports

    paths = write_reports(out)  # the reports say which key (a review: neither did)
    assert f"audit trails signed with</th><td>key {key.key_id}" in paths.html.read_text("utf-8")
    assert f'name="audit_key" value="key {key.key_id}"' in paths.junit.read_text("utf-8")
    monkeypatch.delenv(KEY_ENV)
    (case,) = load_results(out).cases
    assert case.status == "error"
    (why,) = case.problems
    assert why.endswith(
        f"cannot be verified: its anchors are signed with key {key.key_id} and this report "
        "has no key; give that key in $PHARMATWIN_AUDIT_KEY"
    ), why
    other = create_key(tmp_path / "other.key")
    monkeypatch.setenv(KEY_ENV, str(tmp_path / "other.key"))
    (case,) = load_results(out).cases
    assert case.status == "error" and f"this report has key {other.key_id}" in case.problems[0]


def test_a_signed_trail_swapped_for_an_unsigned_one_does_not_verify(
    passing: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A review: with the key to check with read from the anchors themselves, a signed
    case's trail replaced by an unsigned one (from another run) passed. campaign.json now
    records the key the run signed with, and the trail must be signed with it."""
    from controller.runtime.audit_keys import KEY_ENV, create_key

    key = create_key(tmp_path / "k.key")
    monkeypatch.setenv(KEY_ENV, str(tmp_path / "k.key"))
    campaign = _campaign(tmp_path, "signed", {"none": {}}, [ROB_01])
    out = tmp_path / "out"
    run_campaign(campaign, RunSettings(out=out, workers=1, progress=False))
    manifest = json.loads((out / "campaign.json").read_text(encoding="utf-8"))
    assert manifest["audit_key"] == key.key_id
    (case,) = load_results(out).cases
    assert case.status == "passed"
    (unsigned,) = load_results(passing).cases  # an unsigned run's trail, swapped in
    for name in ("audit.db", "audit.db.anchor"):
        shutil.copyfile(unsigned.directory / name, case.directory / name)
    (case,) = load_results(out).cases
    assert case.status == "error"
    (why,) = case.problems
    assert f"the campaign ran signed with key {key.key_id}" in why
    assert "its anchors are unsigned: the trail was replaced" in why
    # and the other way: an unsigned campaign's trail swapped for a signed one
    signed_run = tmp_path / "signed-run"
    run_campaign(campaign, RunSettings(out=signed_run, workers=1, progress=False))
    (signed,) = load_results(signed_run).cases
    other = _copy(passing, tmp_path / "other")
    (target,) = load_results(other).cases
    for name in ("audit.db", "audit.db.anchor"):
        shutil.copyfile(signed.directory / name, target.directory / name)
    (target,) = load_results(other).cases
    assert target.status == "error"
    assert "the campaign ran unsigned" in target.problems[0]
    assert f"its anchors are signed with key {key.key_id}" in target.problems[0]


def test_a_rerun_with_another_key_runs_the_cases_again(
    passing: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Cases signed with no key (or another) are not reused by a run that signs with this
    one: the report would call their trails replaced."""
    from controller.runtime.audit_keys import KEY_ENV, create_key

    out = _copy(passing, tmp_path)
    create_key(tmp_path / "k.key")
    monkeypatch.setenv(KEY_ENV, str(tmp_path / "k.key"))
    campaign = _campaign(tmp_path, "passing", {"none": {}}, [ROB_01])
    outcome = run_campaign(campaign, RunSettings(out=out, workers=1, progress=False))
    assert outcome.skipped == []
    assert load_results(out).verdict() == "passed"


def test_a_worker_with_another_key_errors_its_case_naming_both(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A review: a worker of an existing Dask cluster (its own environment, no key) signed
    nothing while campaign.json recorded the client's key, and the report called every trail
    replaced. The job carries the campaign's key id; a worker with another one errors."""
    from controller.runtime.audit_keys import KEY_ENV
    from hil.campaign.runner import run_case

    monkeypatch.delenv(KEY_ENV, raising=False)
    campaign = _campaign(tmp_path, "keyed", {"none": {}}, [ROB_01])
    (case,) = campaign.cases
    job = {
        "case": case.to_json(),
        "criteria": [c.model_dump(mode="json") for c in campaign.spec.criteria],
        "out": str(tmp_path / "out"),
        "site": str(campaign.site_path),
        "controller": None,
        "mode": "fast",
        "rate": None,
        "audit_key": "0123456789abcdef",
    }
    result = run_case(job)
    assert result["status"] == "error"
    assert result["error"] == (
        "CampaignKeyError: this worker signs audit trails with no key ($PHARMATWIN_AUDIT_KEY "
        "in its environment), the campaign with key 0123456789abcdef (campaign.json's "
        "audit_key): give every worker the campaign's key file, or none to all"
    )


def test_campaign_run_names_the_cases_its_report_judges_otherwise(
    passing: Path, tmp_path: Path
) -> None:
    """A review: the run's table said "passed 2" and the command exited 1 without a word of
    why (the report, reading the evidence, said error)."""
    from hil.cli_batch import report_disagreements

    out = _copy(passing, tmp_path)
    (case,) = load_results(out).cases
    (case.directory / "audit.db").unlink()
    lines = report_disagreements(out, {case.id: {"status": "passed"}})
    assert len(lines) == 1 and lines[0].startswith(f"{case.id}: the report says error: ")
    assert "audit.db is missing" in lines[0]
    assert report_disagreements(out, {case.id: {"status": "error"}}) == []
