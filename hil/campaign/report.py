"""Campaign reports: one self-contained HTML file, JUnit XML and ``summary.json``.

Reads the results directory the campaign runner writes (it never imports the runner)::

    OUT/campaign.json                   manifest: campaign, software, config hashes, requirements,
                                        case ids in matrix order
    OUT/cases/<id>/spec.json            factors, seed, scenario, controller_loss_at
    OUT/cases/<id>/result.json          status, wall time, attempts, KPIs, one verdict per criterion
    OUT/cases/<id>/trajectory.parquet   one row per PLC scan: t, x.*, e.*, y.*, u.*, sp.*, plc.mode
    OUT/cases/<id>/cycles.parquet       one row per controller cycle

and writes ``OUT/report.html``, ``OUT/junit.xml`` and ``OUT/summary.json``.

A partial directory is fine: a case without ``result.json`` is "not run"; an unreadable
``result.json`` makes the case "error" (the evidence is missing). A requirement's verdict is
"failed" if any case failed it, else "error" if a case that would test it errored (an errored
case counts as testing every requirement of the manifest), else "passed" if a case passed it,
else "not run". The campaign passes only when it has cases, every one ran and passed, and every
requirement passed.

A missing or malformed ``campaign.json`` raises ``CampaignReportError`` naming the directory
and every problem found.
"""

from __future__ import annotations

import base64
import html
import io
import json
import math
import re
import xml.etree.ElementTree as ET
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal
from urllib.parse import quote

import numpy as np
import pyarrow.parquet as pq

from controller.errors import PharmaTwinError
from controller.jsonfile import write_json
from hil.campaign.criteria import Verdict  # the one record of a judgement, as result.json holds it

__all__ = [
    "CampaignReportError",
    "CampaignResults",
    "CaseRecord",
    "ReportPaths",
    "Requirement",
    "RequirementResult",
    "Verdict",
    "load_results",
    "write_html",
    "write_junit",
    "write_reports",
    "write_summary",
]

Status = Literal["passed", "failed", "error", "not run"]
STATUSES: tuple[Status, ...] = ("passed", "failed", "error", "not run")
CASE_FILES = ("spec.json", "result.json", "trajectory.parquet", "cycles.parquet")
MAX_PANELS = 8
MODE_BANDS = {"fallback": ("tab:red", 0.18), "local": ("0.5", 0.12)}  # plc.mode: colour, alpha
PLOTTED = ("x.", "z.", "e.", "y.", "u.", "sp.")
VARIABLES = ("x.", "z.", "e.", "y.")


class CampaignReportError(PharmaTwinError):
    """The results directory cannot be reported on (no or malformed ``campaign.json``)."""


@dataclass(frozen=True)
class ReportPaths:
    """Where :func:`write_reports` put the three reports."""

    html: Path
    junit: Path
    summary: Path


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
    extra = sorted(p.name for p in cases_dir.iterdir() if p.is_dir()) if cases_dir.is_dir() else []
    listed = set(ids)
    cases = [_read_case(cases_dir / cid, i, cid in listed) for i, cid in enumerate(ids)]
    cases += [
        _read_case(cases_dir / cid, len(ids) + i, False)
        for i, cid in enumerate(c for c in extra if c not in listed)
    ]
    known = {r.id for r in requirements}
    unlisted = {v.requirement: v for c in cases for v in c.verdicts if v.requirement not in known}
    requirements += tuple(
        Requirement(v.requirement, v.description, v.check) for v in unlisted.values()
    )
    return CampaignResults(out, manifest, requirements, tuple(cases))


def _read_manifest(out: Path) -> dict[str, Any]:
    path = out / "campaign.json"
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
    """(object, None), (None, None) when absent, or (None, problem) when unreadable."""
    if not path.is_file():
        return None, None
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        return None, f"{path.name} unreadable: {exc}"
    if not isinstance(data, dict):
        return None, f"{path.name} is not a JSON object"
    return data, None


def _read_case(directory: Path, position: int, listed: bool) -> CaseRecord:
    spec, spec_problem = _read_json(directory / "spec.json")
    result, result_problem = _read_json(directory / "result.json")
    problems = [p for p in (spec_problem, result_problem) if p]
    if not listed:
        problems.append("case directory not listed in campaign.json")
    spec = spec or {}
    result = result or {}
    status = _case_status(result, result_problem, problems)
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
        error=result_problem if result_problem else _text_or_none(result.get("error")),
        traceback=_text_or_none(result.get("traceback")),
        wall_time_s=_number(result.get("wall_time_s")),
        attempts=result.get("attempts") if isinstance(result.get("attempts"), int) else None,
        started=_text_or_none(result.get("started")),
        ended=_text_or_none(result.get("ended")),
        kpis=dict(result["kpis"]) if isinstance(result.get("kpis"), dict) else {},
        verdicts=tuple(_verdict(v) for v in result.get("verdicts") or () if isinstance(v, dict)),
        problems=tuple(problems),
    )


_RESULT_STATUS: dict[str, Status] = {"passed": "passed", "failed": "failed", "error": "error"}


def _case_status(result: dict[str, Any], unreadable: str | None, problems: list[str]) -> Status:
    if unreadable:
        return "error"
    if not result:
        return "not run"
    status = _RESULT_STATUS.get(str(result.get("status")))
    if status is not None:
        return status
    problems.append(f"result.json has an unknown status {result.get('status')!r}")
    return "error"


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


# ---------------------------------------------------------------- the three reports


def write_reports(out: Path) -> ReportPaths:
    """Write ``report.html``, ``junit.xml`` and ``summary.json`` into ``out``; see module doc."""
    results = load_results(Path(out))
    return ReportPaths(
        html=write_html(results, results.out / "report.html"),
        junit=write_junit(results, results.out / "junit.xml"),
        summary=write_summary(results, results.out / "summary.json"),
    )


def write_summary(results: CampaignResults, path: Path) -> Path:
    """Counts, per-requirement and per-case verdicts and the manifest header, as JSON."""
    m = results.manifest
    header = ("campaign", "description", "file", "mode", "executor", "workers", "started", "ended")
    summary: dict[str, Any] = {k: m.get(k) for k in header}
    summary |= {
        "software": m.get("software"),
        "config_hashes": m.get("config_hashes"),
        "report_generated": _now(),
        "verdict": results.verdict(),
        "passed": results.verdict() == "passed",
        "complete": results.case_counts()["not run"] == 0,
        "counts": _counts_json(results.case_counts()),
        "requirement_counts": _counts_json(results.requirement_counts()),
        "requirements": [_requirement_json(r) for r in results.requirement_results()],
        "cases": [_case_json(c) for c in results.cases],
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


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


# ---------------------------------------------------------------- JUnit XML

_XML_INVALID = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\ufffe\uffff]")


def _x(text: object) -> str:
    """Text ElementTree can write and parse back (XML 1.0 forbids most control characters)."""
    return _XML_INVALID.sub("?", str(text))


def write_junit(results: CampaignResults, path: Path) -> Path:
    """One ``<testsuite>``; a ``<testcase classname="<campaign>.<case>" name="<REQ>">`` per
    case x criterion. A failed criterion has a ``<failure>``, an errored case one ``<error>`` per
    requirement, a case not run one ``<skipped>`` per requirement. A case's wall time is shared
    evenly among its testcases, so the suite time is the campaign's summed case time."""
    testcases = [tc for case in results.cases for tc in _case_testcases(results, case)]
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
    suite.append(_junit_properties(results.manifest))
    suite.extend(testcases)
    tree = ET.ElementTree(suite)
    ET.indent(tree)
    tree.write(path, encoding="utf-8", xml_declaration=True)
    return path


def _junit_properties(m: dict[str, Any]) -> ET.Element:
    props = ET.Element("properties")
    software = m.get("software") or {}
    pairs = [(k, m.get(k)) for k in ("file", "mode", "executor", "workers", "ended")]
    pairs += [(f"software.{k}", software.get(k)) for k in ("version", "git_commit", "python")]
    pairs += [(f"config_hash.{k}", v) for k, v in (m.get("config_hashes") or {}).items()]
    for name, value in pairs:
        ET.SubElement(props, "property", name=_x(name), value=_x("" if value is None else value))
    return props


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
        ET.SubElement(tc, "skipped", message="case not run (no result.json)")
    elif verdict is not None and not verdict.passed:
        el = ET.SubElement(tc, "failure", type="CriterionFailed")
        el.set("message", _x(_verdict_line(verdict)))
        el.text = _x(f"{verdict.description}\ncheck: {verdict.check}\n{evidence}")
    elif verdict is None and case.status == "failed":
        ET.SubElement(tc, "failure", type="CaseFailed", message=_x(case.error or "case failed"))


def _verdict_line(v: Verdict) -> str:
    unit = f" {v.unit}" if v.unit else ""
    detail = f": {v.detail}" if v.detail else ""
    return (
        f"{v.requirement} failed: value {_fmt(v.value)}{unit}, limit {_fmt(v.limit)}{unit}{detail}"
    )


def _fmt(v: Any) -> str:
    if v is None:
        return "n/a"
    if isinstance(v, float):
        return f"{v:.6g}"
    return str(v)


# ---------------------------------------------------------------- plots


def _plot_png(trajectory: Path, checks: Iterable[str], title: str) -> bytes:
    """A PNG: one panel per input (applied u, written sp), per x./e./y. variable named in
    ``checks`` (else the first few states/expressions); PLC fallback periods shaded red and
    local-control periods grey.
    Raises OSError or pyarrow errors when the file cannot be read."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    schema = pq.read_schema(trajectory)
    panels = _panels(schema.names, checks)
    if not panels:
        raise ValueError("no u.*, x.*, e.* or y.* columns to plot")
    wanted = [
        c
        for c in schema.names
        if c in ("t", "plc.mode") or (c.startswith(PLOTTED) and c.split(".", 1)[1] in panels)
    ]
    table = pq.read_table(trajectory, columns=wanted)
    cols = {name: table.column(name) for name in table.column_names}
    t = _floats(cols.get("t")) if "t" in cols else np.arange(table.num_rows, dtype=float)
    modes = cols["plc.mode"].to_pylist() if "plc.mode" in cols else []
    bands = {mode: _mode_spans(t, modes, mode) for mode in MODE_BANDS}
    ncols = 2 if len(panels) > 1 else 1
    nrows = max(1, math.ceil(len(panels) / ncols))
    fig, axes = plt.subplots(nrows, ncols, figsize=(4.6 * ncols, 1.9 * nrows + 0.6), squeeze=False)
    try:
        meta = schema.metadata or {}
        try:
            units = json.loads(meta.get(b"units", b"{}").decode())
        except ValueError:
            units = {}
        for ax, name in zip(axes.flat, panels, strict=False):
            _draw_panel(ax, t, cols, name, bands)
            ax.set_ylabel(
                f"[{units[name]}]" if units.get(name) else "(unit not recorded)", fontsize=7
            )
        for ax in list(axes.flat)[len(panels) :]:
            ax.set_visible(False)
        unit = (schema.metadata or {}).get(b"time_unit", b"").decode(errors="replace")
        fig.supxlabel(f"time [{unit}]" if unit else "time", fontsize=8)
        fig.suptitle(title, fontsize=9)
        fig.tight_layout()
        buf = io.BytesIO()
        fig.savefig(buf, format="png", dpi=72)
    finally:
        plt.close(fig)
    return buf.getvalue()


def _panels(columns: Sequence[str], checks: Iterable[str]) -> list[str]:
    """Variable names to plot: every input, then the variables the checks name (else the first
    three states/expressions), at most MAX_PANELS."""
    inputs = [c[2:] for c in columns if c.startswith("u.")]
    variables = {c.split(".", 1)[1] for c in columns if c.startswith(VARIABLES)}
    named: list[str] = []
    for token in re.findall(r"[A-Za-z_][A-Za-z0-9_]*", " ".join(checks)):
        if token in variables and token not in inputs and token not in named:
            named.append(token)
    if not named:
        named = [c.split(".", 1)[1] for c in columns if c.startswith(("x.", "z.", "e."))][:3]
    return [*inputs, *named][:MAX_PANELS]


def _floats(column: Any) -> np.ndarray:
    try:
        return np.asarray(column.to_numpy(), dtype=float)
    except (TypeError, ValueError):
        return np.full(len(column), np.nan)


def _envelope(t: np.ndarray, y: np.ndarray, buckets: int = 1000) -> tuple[np.ndarray, np.ndarray]:
    """At most ``2 * buckets + 2`` points keeping each bucket's minimum and maximum in time
    order, so a long trajectory plots fast and no excursion disappears from the picture."""
    n = len(y)
    if n <= 2 * buckets + 2:
        return t, y
    size = -(-n // buckets)
    padded = np.full(buckets * size, np.nan)
    padded[:n] = y
    rows = padded.reshape(buckets, size)
    offsets = np.arange(buckets) * size
    lows = offsets + np.argmin(np.where(np.isnan(rows), np.inf, rows), axis=1)
    highs = offsets + np.argmax(np.where(np.isnan(rows), -np.inf, rows), axis=1)
    index = np.unique(
        np.concatenate(([0, n - 1], np.minimum(lows, n - 1), np.minimum(highs, n - 1)))
    )
    return t[index], y[index]


def _mode_spans(t: np.ndarray, modes: Sequence[Any], mode: str) -> list[tuple[float, float]]:
    """(start, end) times of each run of scans where ``plc.mode`` was ``mode``; a run ends at
    the first scan in another mode (or at the last scan)."""
    spans = []
    mask = np.array([m == mode for m in modes], dtype=bool)
    edges = np.flatnonzero(np.diff(np.concatenate(([0], mask.astype(int), [0]))))
    for start, stop in zip(edges[::2], edges[1::2], strict=True):
        spans.append((float(t[start]), float(t[min(stop, len(t) - 1)])))
    return spans


def _draw_panel(
    ax: Any, t: np.ndarray, cols: dict[str, Any], name: str, bands: dict[str, list[Any]]
) -> None:
    styles: list[tuple[str, str, dict[str, Any]]] = [  # column prefix, label, plot() kwargs
        ("x.", "true", {"color": "tab:blue"}),
        ("z.", "algebraic", {"color": "tab:cyan"}),
        ("e.", "expression", {"color": "tab:purple"}),
        ("y.", "measured", {"color": "0.55", "lw": 0.8}),
        ("u.", "applied", {"color": "tab:green", "drawstyle": "steps-post"}),
        ("sp.", "written sp", {"color": "tab:orange", "ls": "--", "drawstyle": "steps-post"}),
    ]
    for prefix, label, kwargs in styles:
        if prefix + name in cols:
            ax.plot(*_envelope(t, _floats(cols[prefix + name])), label=label, **kwargs)
    for mode, spans in bands.items():
        color, alpha = MODE_BANDS[mode]
        for i, (start, end) in enumerate(spans):
            band = f"PLC {mode}" if i == 0 else None
            ax.axvspan(start, end, color=color, alpha=alpha, lw=0, label=band)
    kind = "input: applied and written setpoint" if "u." + name in cols else "plant variable"
    ax.set_title(f"{name} ({kind})", fontsize=8)
    ax.tick_params(labelsize=7)
    ax.grid(alpha=0.3)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=6, loc="best")


# ---------------------------------------------------------------- HTML

CSS = """
body{font:14px/1.4 system-ui,sans-serif;margin:1.5em auto;max-width:1100px;color:#222}
h1{font-size:1.6em}h2{border-bottom:2px solid #ccc;margin-top:2em}h3{margin-bottom:.3em}
table{border-collapse:collapse;margin:.5em 0}th,td{border:1px solid #ccc;padding:3px 7px;
text-align:left;vertical-align:top}th{background:#f2f2f2}code{font-size:.9em}
.passed{background:#dcf5dc}.failed{background:#f8d3d3}.error{background:#fbe7c6}
.not-run{background:#e6e6e6}.badge{padding:1px 6px;border-radius:3px;font-weight:600}
section.case{border-top:1px solid #999;margin-top:2em}img{max-width:100%}
.problem{color:#a00}
"""


def _e(text: object) -> str:
    return html.escape("" if text is None else str(text), quote=True)


def _badge(status: str) -> str:
    return f'<span class="badge {status.replace(" ", "-")}">{_e(status.upper())}</span>'


def _case_link(case_id: str) -> str:
    return f'<a href="#case-{_e(quote(case_id, safe=""))}">{_e(case_id)}</a>'


def _table(head: Sequence[str], rows: Iterable[Sequence[str]]) -> str:
    """An HTML table; ``rows`` cells are already HTML (escape before)."""
    th = "".join(f"<th>{_e(h)}</th>" for h in head)
    body = "".join("<tr>" + "".join(f"<td>{c}</td>" for c in row) + "</tr>" for row in rows)
    return f"<table><tr>{th}</tr>{body}</table>"


def _kv_table(pairs: Iterable[tuple[str, object]]) -> str:
    return (
        "<table>"
        + "".join(f"<tr><th>{_e(k)}</th><td>{_e(v)}</td></tr>" for k, v in pairs)
        + "</table>"
    )


def write_html(results: CampaignResults, path: Path) -> Path:
    """The single-file HTML report (inline CSS, plots as base64 PNG data URIs)."""
    title = f"Campaign report: {results.name}"
    parts = [
        f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8"><title>{_e(title)}</title>',
        f"<style>{CSS}</style></head><body>",
        f"<h1>{_e(title)} {_badge(results.verdict())}</h1>",
        f"<p>{_e(results.manifest.get('description') or '')}</p>",
        _html_header(results),
        _html_summary(results),
        _html_traceability(results),
        _html_case_overview(results),
        *(_html_case(results, case) for case in results.cases),
        f"<hr><p>Report generated {_e(_now())} from <code>{_e(results.out)}</code>.</p>",
        "</body></html>\n",
    ]
    path.write_text("\n".join(parts), encoding="utf-8")
    return path


def _html_header(results: CampaignResults) -> str:
    m = results.manifest
    sw = m.get("software") or {}
    run = [("campaign", m.get("campaign")), ("campaign file", m.get("file"))]
    run += [(k, m.get(k)) for k in ("mode", "executor", "workers", "started")]
    run += [("ended", m.get("ended") or "not recorded (still running or interrupted)")]
    run += [(f"software {k}", sw.get(k)) for k in ("version", "git_commit", "python")]
    run += [(k, sw.get(k)) for k in ("platform", "machine", "hostname")]
    libs = sorted((sw.get("libraries") or {}).items())
    hashes = sorted((m.get("config_hashes") or {}).items())
    seeds = sorted({c.seed for c in results.cases if c.seed is not None})
    return "\n".join(
        [
            '<section id="header"><h2>Run record</h2>',
            _kv_table((k, "" if v is None else v) for k, v in run),
            "<h3>Library versions</h3>",
            _table(["library", "version"], ([_e(k), _e(v)] for k, v in libs)),
            "<h3>Configuration files (SHA-256)</h3>",
            _table(["file", "sha256"], ([_e(k), f"<code>{_e(v)}</code>"] for k, v in hashes)),
            "<h3>Seeds</h3>",
            f"<p>{_e(', '.join(map(str, seeds)) or 'none recorded')} (per case below)</p>",
            "</section>",
        ]
    )


def _html_summary(results: CampaignResults) -> str:
    cases = results.case_counts()
    reqs = results.requirement_counts()
    rows = [
        [_e(label), *(_e(n[s]) for s in STATUSES), _e(sum(n.values()))]
        for label, n in (("cases", cases), ("requirements", reqs))
    ]
    return (
        '<section id="summary"><h2>Summary</h2>'
        + _table(["", "passed", "failed", "error", "not run", "total"], rows)
        + f"<p>Campaign verdict: {_badge(results.verdict())}</p></section>"
    )


def _html_traceability(results: CampaignResults) -> str:
    rows = []
    for r in results.requirement_results():
        req = r.requirement
        failed, errored = set(r.failed_cases), set(r.error_cases)
        outcome = {
            cid: "failed" if cid in failed else "error" if cid in errored else "passed"
            for cid in r.cases
        }
        links = [f"{_case_link(cid)} ({outcome[cid]})" for cid in r.cases]
        rows.append(
            [
                f'<span id="req-{_e(req.id)}">{_e(req.id)}</span>',
                _e(req.description),
                f"<code>{_e(req.check)}</code>",
                "<br>".join(links) or "none yet",
                _badge(r.verdict),
            ]
        )
    head = ["requirement", "description", "check", "cases testing it (evidence)", "verdict"]
    return (
        '<section id="traceability"><h2>Requirement traceability matrix</h2>'
        + _table(head, rows)
        + "</section>"
    )


def _html_case_overview(results: CampaignResults) -> str:
    rows = [
        [
            _case_link(c.id),
            _badge(c.status),
            _e(", ".join(f"{k}={v}" for k, v in c.factors.items())),
            _e(c.seed),
            _e(_fmt(c.wall_time_s)),
            _e(c.attempts),
        ]
        for c in results.cases
    ]
    head = ["case", "status", "factors", "seed", "wall time [s]", "attempts"]
    return '<section id="cases"><h2>Cases</h2>' + _table(head, rows) + "</section>"


def _html_case(results: CampaignResults, case: CaseRecord) -> str:
    info: list[tuple[str, object]] = [
        ("status", case.status),
        ("seed", case.seed),
        ("wall time [s]", _fmt(case.wall_time_s)),
    ]
    info += [("attempts", case.attempts), ("started", case.started), ("ended", case.ended)]
    info += [("controller lost at", case.controller_loss_at)]
    info += [(f"factor: {k}", v) for k, v in case.factors.items()]
    parts = [
        f'<section class="case" id="case-{_e(quote(case.id, safe=""))}">',
        f"<h3>{_e(case.id)} {_badge(case.status)}</h3>",
        _kv_table((k, "" if v is None else v) for k, v in info),
        f'<p class="problem">error: {_e(case.error)}</p>' if case.error else "",
        _html_traceback(case.traceback),
        *(f'<p class="problem">{_e(p)}</p>' for p in case.problems),
        _html_files(case),
        _html_criteria(case),
    ]
    if case.kpis:
        kpi_rows = ([_e(k), _e(_fmt(v))] for k, v in case.kpis.items())
        parts += ["<h4>KPIs</h4>", _table(["KPI", "value"], kpi_rows)]
    parts += [_html_plot(results, case), "</section>"]
    return "\n".join(parts)


def _html_traceback(traceback: str | None) -> str:
    if not traceback:
        return ""
    return f"<details><summary>traceback</summary><pre>{_e(traceback)}</pre></details>"


def _html_files(case: CaseRecord) -> str:
    """Relative links to every file of the case directory; expected files absent are named."""
    present = sorted(p.name for p in case.directory.iterdir()) if case.directory.is_dir() else []
    folder = "cases/" + quote(case.id, safe="")
    links = [f'<a href="{_e(f"{folder}/{quote(name)}")}">{_e(name)}</a>' for name in present]
    links += [f"{_e(name)} (absent)" for name in CASE_FILES if name not in present]
    return "<p>Evidence: " + " · ".join(links) + "</p>"


def _html_criteria(case: CaseRecord) -> str:
    if not case.verdicts:
        return "<p>No criteria judged.</p>"
    rows = [
        [
            f'<a href="#req-{_e(v.requirement)}">{_e(v.requirement)}</a>',
            _e(v.description),
            f"<code>{_e(v.check)}</code>",
            _e(_fmt(v.value)),
            _e(_fmt(v.limit)),
            _e(v.unit),
            _badge("passed" if v.passed else "failed"),
            _e(v.detail),
        ]
        for v in case.verdicts
    ]
    head = ["requirement", "description", "check", "value", "limit", "unit", "result", "detail"]
    return "<h4>Acceptance criteria</h4>" + _table(head, rows)


def _html_plot(results: CampaignResults, case: CaseRecord) -> str:
    trajectory = case.directory / "trajectory.parquet"
    if not trajectory.is_file():
        return "<p>No trajectory recorded.</p>"
    checks = [v.check for v in case.verdicts] or [r.check for r in results.requirements]
    try:
        png = _plot_png(trajectory, checks, f"{case.id} ({case.status})")
    except Exception as exc:  # a bad file must not stop the report; show why instead
        return f'<p class="problem">Cannot plot {_e(trajectory.name)}: {_e(exc)}</p>'
    data = base64.b64encode(png).decode("ascii")
    caption = "Dashed: setpoint the controller wrote. Bands: PLC in fallback (red), local (grey)."
    img = f'<img alt="trajectory of {_e(case.id)}" src="data:image/png;base64,{data}">'
    return f"<h4>Trajectory</h4>{img}<p>{caption}</p>"
