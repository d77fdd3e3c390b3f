"""The campaign's verdict data, read from its results directory (never from the runner)::

    OUT/campaign.json                   manifest: campaign, software, config hashes, requirements,
                                        case ids in matrix order
    OUT/cases/<id>/spec.json            factors, seed, scenario, controller_loss_at
    OUT/cases/<id>/result.json          status, wall time, attempts, KPIs, one verdict per
                                        criterion, faults (every fault event, with its time)
    OUT/cases/<id>/trajectory.parquet   one row per PLC scan: t (the plant's), plc.t (the scan's
                                        process time), x.*, e.*, y.*, u.* (the PLC's), i.* (what
                                        the plant received), sp.*, plc.mode
    OUT/cases/<id>/cycles.parquet       one row per controller cycle: t (scheduled), t_done, ...

Only the cases ``campaign.json`` lists are this run's evidence. The results directory is reused
across runs, so ``cases/`` may hold folders of earlier runs (other matrices): those are named in
``CampaignResults.unlisted_cases`` and nothing else; they count toward no count and no verdict.

A partial directory is fine: a listed case without ``result.json`` is "not run". A
``result.json`` that is unreadable, not a JSON object, empty (``{}``), of an unknown status,
that says "passed" with no verdicts (nothing was judged), whose status its verdicts contradict,
or that has no verdict for a criterion the case's ``spec.json`` lists, makes the case "error",
with a reason naming the file. So does, for a case with verdicts (judged on its run), evidence
that is missing or does not stand (:data:`EVIDENCE`): ``audit.db``, ``trajectory.parquet`` or
``cycles.parquet`` absent, a recording that is no readable Parquet table with rows, an audit
trail that does not verify (:func:`controller.runtime.audit_verify.verify_file`; a signed one
with its own key, from ``$PHARMATWIN_AUDIT_KEY``) or cannot be checked. A case that errored
before it was judged (no verdicts) may lack them. A requirement's verdict is "failed" if any
case failed it, else "error" if a case that would test it errored (an errored case counts as
testing every requirement of the manifest), else "passed" if a case passed it, else "not run".
The campaign passes only when it has cases, every one ran and passed, and every requirement
passed.

A missing or malformed ``campaign.json`` raises ``CampaignReportError`` naming the directory
and every problem found. The reports rendered from these data are :mod:`hil.campaign.report`.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

import pyarrow as pa
import pyarrow.parquet as pq

from controller.errors import PharmaTwinError
from hil.campaign.criteria import Verdict  # the one record of a judgement, as result.json holds it
from hil.campaign.evidence_audit import NOT_RECORDED, audit_problem

__all__ = [
    "CASE_FILES",
    "STATUSES",
    "CampaignReportError",
    "CampaignResults",
    "CaseRecord",
    "Requirement",
    "RequirementResult",
    "Status",
    "Verdict",
    "fmt_value",
    "load_results",
    "utc_now",
]

Status = Literal["passed", "failed", "error", "not run"]
STATUSES: tuple[Status, ...] = ("passed", "failed", "error", "not run")
CASE_FILES = ("spec.json", "result.json", "audit.db", "trajectory.parquet", "cycles.parquet")
#: what a case judged on its run leaves (hil.campaign.runner.run_case), without which its
#: verdicts are no evidence: the audit trail of every write, and the recordings judged
EVIDENCE = ("audit.db", "trajectory.parquet", "cycles.parquet")


class CampaignReportError(PharmaTwinError):
    """The results directory cannot be reported on (no or malformed ``campaign.json``)."""


@dataclass(frozen=True)
class Requirement:
    """One acceptance criterion of the manifest; ``check`` is its human-readable form."""

    id: str
    description: str
    check: str


@dataclass(frozen=True)
class CaseRecord:
    """One case of the matrix as found on disk; ``problems`` lists unreadable evidence."""

    id: str
    index: int
    directory: Path
    status: Status
    factors: dict[str, Any] = field(default_factory=dict)
    seed: int | None = None
    controller_loss_at: float | None = None
    error: str | None = None
    traceback: str | None = None
    wall_time_s: float | None = None
    attempts: int | None = None
    started: str | None = None
    ended: str | None = None
    kpis: dict[str, Any] = field(default_factory=dict)
    verdicts: tuple[Verdict, ...] = ()
    problems: tuple[str, ...] = ()
    #: a Monte Carlo case's drawn parameters (name -> value; empty for any other case)
    drawn: dict[str, float] = field(default_factory=dict)


@dataclass(frozen=True)
class RequirementResult:
    """The campaign verdict on one requirement and the cases (ids, matrix order) behind it."""

    requirement: Requirement
    verdict: Status
    passed_cases: tuple[str, ...]
    failed_cases: tuple[str, ...]
    error_cases: tuple[str, ...]
    cases: tuple[str, ...]


@dataclass(frozen=True)
class CampaignResults:
    """Everything read from one results directory."""

    out: Path
    manifest: dict[str, Any]
    requirements: tuple[Requirement, ...]
    cases: tuple[CaseRecord, ...]
    #: folders under ``cases/`` that ``campaign.json`` does not list (an earlier run's):
    #: not part of this campaign run, excluded from every count and verdict
    unlisted_cases: tuple[str, ...] = ()

    @property
    def name(self) -> str:
        return str(self.manifest["campaign"])

    def case_counts(self) -> dict[Status, int]:
        return {s: sum(c.status == s for c in self.cases) for s in STATUSES}

    def requirement_results(self) -> list[RequirementResult]:
        return [_judge(r, self.cases) for r in self.requirements]

    def requirement_counts(self) -> dict[Status, int]:
        verdicts = [r.verdict for r in self.requirement_results()]
        return {s: verdicts.count(s) for s in STATUSES}

    def verdict(self) -> Status:
        """The campaign verdict, worst first: failed, error, not run (incomplete), passed."""
        found = {c.status for c in self.cases} | {r.verdict for r in self.requirement_results()}
        if not self.cases:
            return "not run"
        return next(s for s in ("failed", "error", "not run", "passed") if s in found)

    def unlisted_note(self) -> str | None:
        """The plain sentence the reports give about :attr:`unlisted_cases` (None if none)."""
        if not self.unlisted_cases:
            return None
        n = len(self.unlisted_cases)
        return (
            f"{n} case folder(s) in {self.out / 'cases'} not listed in campaign.json are not "
            "part of this campaign run (left by an earlier run?) and are excluded from every "
            "count and verdict: " + ", ".join(self.unlisted_cases)
        )


# ---------------------------------------------------------------- reading the directory


def load_results(out: Path) -> CampaignResults:
    """Read ``out``; raises CampaignReportError if ``campaign.json`` is missing or malformed."""
    out = Path(out)
    manifest = _read_manifest(out)
    requirements = tuple(
        Requirement(str(r["id"]), str(r.get("description", "")), str(r.get("check", "")))
        for r in manifest["requirements"]
    )
    ids = [str(c) for c in manifest["cases"]]
    cases_dir = out / "cases"
    found = sorted(p.name for p in cases_dir.iterdir() if p.is_dir()) if cases_dir.is_dir() else []
    listed = set(ids)
    ran_with = manifest.get("audit_key", NOT_RECORDED)  # the key the run signed with
    cases = tuple(_read_case(cases_dir / cid, i, True, ran_with) for i, cid in enumerate(ids))
    known = {r.id for r in requirements}
    extra = {v.requirement: v for c in cases for v in c.verdicts if v.requirement not in known}
    requirements += tuple(
        Requirement(v.requirement, v.description, v.check) for v in extra.values()
    )
    unlisted = tuple(c for c in found if c not in listed)
    return CampaignResults(out, manifest, requirements, cases, unlisted)


def _read_manifest(out: Path) -> dict[str, Any]:
    path = out / "campaign.json"
    if out.is_file():
        raise CampaignReportError(
            f"{out}: is a file; give a campaign's results directory (what `campaign run` "
            "wrote: runs/campaigns/<name>-<mode>, or its --out)"
        )
    if not out.is_dir():
        raise CampaignReportError(f"{out}: no such results directory")
    if not path.is_file():
        raise CampaignReportError(
            f"{out}: campaign.json is missing; is this a campaign results directory?"
        )
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CampaignReportError(f"{path}: cannot read the manifest: {exc}") from exc
    problems = _manifest_problems(manifest)
    if problems:
        raise CampaignReportError(f"{path}: malformed manifest:\n  " + "\n  ".join(problems))
    return dict(manifest)


def _manifest_problems(manifest: Any) -> list[str]:
    if not isinstance(manifest, dict):
        return [f"expected a JSON object, got {type(manifest).__name__}"]
    problems = []
    if not isinstance(manifest.get("campaign"), str) or not manifest["campaign"]:
        problems.append(f"campaign: expected a non-empty string (got {manifest.get('campaign')!r})")
    cases = manifest.get("cases")
    if not isinstance(cases, list) or not all(isinstance(c, str) and c for c in cases):
        problems.append(f"cases: expected a list of case ids (got {cases!r:.80})")
    reqs = manifest.get("requirements")
    if not isinstance(reqs, list):
        problems.append(f"requirements: expected a list (got {reqs!r:.80})")
    else:
        problems += [
            f"requirements[{i}]: expected an object with a string 'id' (got {r!r:.80})"
            for i, r in enumerate(reqs)
            if not (isinstance(r, dict) and isinstance(r.get("id"), str) and r["id"])
        ]
    return problems


def _read_json(path: Path) -> tuple[dict[str, Any] | None, str | None]:
    """(object, None), (None, None) when absent, or (None, problem naming ``path``) when
    unreadable, not a JSON object or an empty one (a file that records nothing is no record)."""
    if not path.is_file():
        return None, None
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        return None, f"{path} unreadable: {exc}"
    if not isinstance(data, dict):
        return None, f"{path} is not a JSON object"
    if not data:
        return None, f"{path} is empty ({{}}): it records nothing"
    return data, None


def _read_case(
    directory: Path, position: int, listed: bool, ran_with: object = NOT_RECORDED
) -> CaseRecord:
    spec, spec_problem = _read_json(directory / "spec.json")
    result, result_problem = _read_json(directory / "result.json")
    problems = [p for p in (spec_problem, result_problem) if p]
    if not listed:
        problems.append("case directory not listed in campaign.json")
    spec = spec or {}
    result = result or {}
    verdicts, verdict_problem = _verdicts(result, directory / "result.json", _listed(spec))
    evidence = "; ".join(_evidence_problems(directory, ran_with)) if verdicts else None
    status, status_problem = _case_status(result, result_problem or verdict_problem or evidence)
    problems += [p for p in (verdict_problem, evidence, status_problem) if p]
    recorded = None if result_problem else _text_or_none(result.get("error"))
    reasons = [
        r for r in (result_problem, verdict_problem, evidence, status_problem, recorded) if r
    ]
    factors = spec.get("factors") if isinstance(spec.get("factors"), dict) else {}
    seed = spec.get("seed", factors.get("seed") if factors else None)
    return CaseRecord(
        id=directory.name,
        index=spec["index"] if isinstance(spec.get("index"), int) else position,
        directory=directory,
        status=status,
        factors=dict(factors or {}),
        seed=seed if isinstance(seed, int) else None,
        controller_loss_at=_number(spec.get("controller_loss_at")),
        error="; ".join(reasons) or None,
        traceback=_text_or_none(result.get("traceback")),
        wall_time_s=_number(result.get("wall_time_s")),
        attempts=result.get("attempts") if isinstance(result.get("attempts"), int) else None,
        started=_text_or_none(result.get("started")),
        ended=_text_or_none(result.get("ended")),
        kpis=dict(result["kpis"]) if isinstance(result.get("kpis"), dict) else {},
        verdicts=verdicts,
        problems=tuple(problems),
        drawn=_drawn(spec.get("draw")),
    )


def _listed(spec: dict[str, Any]) -> tuple[str, ...] | None:
    """The criterion ids a case's ``spec.json`` lists (None when it lists none)."""
    criteria = spec.get("criteria")
    return tuple(str(c) for c in criteria) if isinstance(criteria, list) else None


def _evidence_problems(directory: Path, ran_with: object = NOT_RECORDED) -> list[str]:
    """What is wrong with the evidence of a case that was judged (it has verdicts): each of
    :data:`EVIDENCE` missing, a recording that is no readable Parquet table, an audit trail
    that does not verify or cannot be checked (:func:`~hil.campaign.evidence_audit.audit_problem`,
    ``ran_with`` the key id ``campaign.json`` records)."""
    problems = [f"{directory / n} is missing: the case's evidence is incomplete"
                for n in EVIDENCE if not (directory / n).is_file()]  # fmt: skip
    for name in ("trajectory.parquet", "cycles.parquet"):
        path = directory / name
        if path.is_file():
            try:
                rows = pq.read_metadata(path).num_rows
            except (OSError, ValueError, pa.ArrowException) as exc:
                problems.append(f"{path} is not a readable Parquet table: {exc}")
                continue
            if rows == 0:
                problems.append(f"{path} holds no rows: nothing was recorded")
    db = directory / "audit.db"
    if db.is_file():
        why = audit_problem(db, ran_with)
        if why is not None:
            problems.append(why)
    return problems


def _drawn(draw: Any) -> dict[str, float]:
    """The drawn parameters of a Monte Carlo case's ``spec.json`` (empty for others)."""
    params = draw.get("parameters") if isinstance(draw, dict) else None
    if not isinstance(params, dict):
        return {}
    return {str(k): float(v) for k, v in params.items() if isinstance(v, int | float)}


_RESULT_STATUS: dict[str, Status] = {"passed": "passed", "failed": "failed", "error": "error"}


def _verdicts(
    result: dict[str, Any], path: Path, listed: Sequence[str] | None = None
) -> tuple[tuple[Verdict, ...], str | None]:
    """The verdicts of a ``result.json``, and the problem that makes its case "error": a
    "passed" with no verdicts (nothing was judged, so nothing passed), a status its verdicts
    contradict, verdicts that are not a list of objects (a verdict dropped unread could be
    the one that failed), or no verdict for a criterion the case's ``spec.json`` lists
    (``listed``: one deleted could be the one that failed)."""
    raw = result.get("verdicts")
    raw = [] if raw is None else raw
    if not isinstance(raw, list):
        return (), f"{path}: verdicts is not a list ({raw!r:.80})"
    verdicts = tuple(_verdict(v) for v in raw if isinstance(v, dict))
    if len(verdicts) < len(raw):  # the ones read still count (a failed one fails)
        return verdicts, f"{path}: {len(raw) - len(verdicts)} verdict(s) are not JSON objects"
    if not verdicts and result.get("status") == "passed":
        return (), f"{path}: status passed but no verdicts recorded"
    missing = [c for c in listed or () if c not in {v.requirement for v in verdicts}]
    if missing and result.get("status") in ("passed", "failed"):
        return verdicts, (
            f"{path}: no verdict for {', '.join(missing)}, which spec.json lists among the "
            f"case's criteria ({', '.join(listed or ())}): a judged case has one for each"
        )
    failed = [v.requirement for v in verdicts if not v.passed]
    if failed and result.get("status") == "passed":  # a record that contradicts itself
        return verdicts, f"{path}: status passed but {', '.join(failed)} failed"
    if not failed and result.get("status") == "failed":  # ... the other way round
        return verdicts, f"{path}: status failed but no verdict failed"
    return verdicts, None


def record_problem(
    result: dict[str, Any], path: Path, criteria: Sequence[str] | None = None
) -> str | None:
    """Why a case's ``result.json`` (read as ``result``) makes its case "error" (a record
    that contradicts itself, judged nothing, or lacks a verdict for one of ``criteria``, the
    ids its ``spec.json`` lists), or None for a record that stands."""
    return _verdicts(result, path, criteria)[1]


def _case_status(result: dict[str, Any], unreadable: str | None) -> tuple[Status, str | None]:
    """The case's status and, for an unknown one, why it is "error"; ``result`` is empty only
    when there is no ``result.json`` (an empty one is ``unreadable``)."""
    if unreadable:
        return "error", None
    if not result:
        return "not run", None
    status = _RESULT_STATUS.get(str(result.get("status")))
    if status is not None:
        return status, None
    return "error", f"result.json has an unknown status {result.get('status')!r}"


def _verdict(raw: dict[str, Any]) -> Verdict:
    return Verdict(
        requirement=str(raw.get("requirement", "?")),
        description=str(raw.get("description") or ""),
        check=str(raw.get("check") or ""),
        passed=raw.get("passed") is True,
        value=_number(raw.get("value"), finite=False),
        limit=_number(raw.get("limit"), finite=False),
        unit=str(raw.get("unit") or ""),
        detail=str(raw.get("detail") or ""),
    )


def _number(v: Any, finite: bool = True) -> float | None:
    """``v`` as a float, or None if it is not a number (or, with ``finite``, not finite)."""
    ok = isinstance(v, int | float) and not isinstance(v, bool)
    return float(v) if ok and (math.isfinite(v) or not finite) else None


def _text_or_none(v: Any) -> str | None:
    return None if v is None else str(v)


def _judge(req: Requirement, cases: Sequence[CaseRecord]) -> RequirementResult:
    """A failed verdict counts even in an errored case; an errored case tests every requirement."""
    passed, failed, errored = [], [], []
    for case in cases:
        mine = [v for v in case.verdicts if v.requirement == req.id]
        if any(not v.passed for v in mine):
            failed.append(case.id)
        elif case.status == "error":
            errored.append(case.id)
        elif mine:
            passed.append(case.id)
    verdict: Status = (
        "failed" if failed else "error" if errored else "passed" if passed else "not run"
    )
    tested = [c.id for c in cases if c.id in {*passed, *failed, *errored}]
    return RequirementResult(
        req, verdict, tuple(passed), tuple(failed), tuple(errored), tuple(tested)
    )


def utc_now() -> str:
    """The current UTC time to the second, ISO 8601 (run records and reports)."""
    return datetime.now(UTC).isoformat(timespec="seconds")


def fmt_value(v: Any) -> str:
    """A verdict's value or limit, a KPI or a duration as the reports print it."""
    if v is None:
        return "n/a"
    if isinstance(v, float):
        return f"{v:.6g}"
    return str(v)


#: the software a campaign ran, as its reports name it (``campaign.json``'s ``software``)
SOFTWARE_KEYS = ("version", "git_commit", "source_changes", "python")


def software_rows(software: dict[str, Any]) -> list[tuple[str, str]]:
    """:data:`SOFTWARE_KEYS` of a manifest's ``software``; ``source_changes``: what was
    edited since the commit, "none" (the commit's code), or "not recorded" (an older run)."""
    rows = []
    for k in SOFTWARE_KEYS:
        v = software.get(k)
        if k == "source_changes" and v is None:
            v = "none (the commit's code)" if k in software else "not recorded"
        rows.append((k, "n/a" if v is None else str(v)))
    return rows


def audit_key_text(manifest: dict[str, Any]) -> str:
    """The key the run signed its cases' audit trails with, as the reports name it."""
    if "audit_key" not in manifest:
        return "not recorded (a run before the key was recorded)"
    key = manifest["audit_key"]
    return f"key {key}" if key else "none: the trails are unsigned"
