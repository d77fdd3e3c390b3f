"""The campaign's HTML report: one self-contained file (inline CSS, plots as data URIs).

Sections: the run record (software, libraries, configuration hashes, seeds), the summary
counts, the requirement traceability matrix, the case overview, then one section per case
with its evidence files, acceptance criteria, KPIs (and a Monte Carlo case's drawn
parameters) and trajectory figure. A campaign of more than :data:`MAX_PLOTS` cases (a Monte
Carlo one) gets that many figures, the cases that did not pass first; every case keeps its
recording on disk.
"""

from __future__ import annotations

import base64
import html
from collections.abc import Iterable, Sequence
from pathlib import Path
from urllib.parse import quote

from hil.campaign.report_plot import plot_png
from hil.campaign.results import (
    CASE_FILES,
    STATUSES,
    CampaignResults,
    CaseRecord,
    audit_key_text,
    fmt_value,
    software_rows,
    utc_now,
)

__all__ = ["MAX_PLOTS", "plotted_cases", "write_html"]

#: the most trajectory figures one report draws (each costs a plot and about 60 kB)
MAX_PLOTS = 60


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
    plotted = plotted_cases(results)
    parts = [
        f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8"><title>{_e(title)}</title>',
        f"<style>{CSS}</style></head><body>",
        f"<h1>{_e(title)} {_badge(results.verdict())}</h1>",
        f"<p>{_e(results.manifest.get('description') or '')}</p>",
        _html_header(results),
        _html_summary(results),
        _html_traceability(results),
        _html_case_overview(results),
        *(_html_case(results, case, case.id in plotted) for case in results.cases),
        f"<hr><p>Report generated {_e(utc_now())} from <code>{_e(results.out)}</code>.</p>",
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
    run += [(f"software {k}", v) for k, v in software_rows(sw)]
    run += [("audit trails signed with", audit_key_text(m))]
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
    note = results.unlisted_note()
    return (
        '<section id="summary"><h2>Summary</h2>'
        + _table(["", "passed", "failed", "error", "not run", "total"], rows)
        + f"<p>Campaign verdict: {_badge(results.verdict())}</p>"
        + (f'<p class="problem" id="unlisted-cases">{_e(note)}</p>' if note else "")
        + "</section>"
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
            _e(fmt_value(c.wall_time_s)),
            _e(c.attempts),
        ]
        for c in results.cases
    ]
    head = ["case", "status", "factors", "seed", "wall time [s]", "attempts"]
    return '<section id="cases"><h2>Cases</h2>' + _table(head, rows) + "</section>"


def plotted_cases(results: CampaignResults) -> set[str]:
    """The cases whose trajectory the report plots: all of a campaign of at most
    :data:`MAX_PLOTS` cases; of a larger one (a Monte Carlo campaign), the first
    :data:`MAX_PLOTS` in matrix order of those that did not pass, then of those that did."""
    ranked = sorted(results.cases, key=lambda c: (c.status == "passed", c.index))
    return {c.id for c in ranked[:MAX_PLOTS]}


def _html_case(results: CampaignResults, case: CaseRecord, plot: bool = True) -> str:
    info: list[tuple[str, object]] = [
        ("status", case.status),
        ("seed", case.seed),
        ("wall time [s]", fmt_value(case.wall_time_s)),
    ]
    info += [("attempts", case.attempts), ("started", case.started), ("ended", case.ended)]
    info += [("controller loss planned at", case.controller_loss_at)]
    info += [(f"factor: {k}", v) for k, v in case.factors.items()]
    info += [(f"drawn: {k}", fmt_value(v)) for k, v in case.drawn.items()]
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
        kpi_rows = ([_e(k), _e(fmt_value(v))] for k, v in case.kpis.items())
        parts += ["<h4>KPIs</h4>", _table(["KPI", "value"], kpi_rows)]
    parts += [_html_plot(results, case) if plot else _no_plot(results), "</section>"]
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
            _e(fmt_value(v.value)),
            _e(fmt_value(v.limit)),
            _e(v.unit),
            _badge("passed" if v.passed else "failed"),
            _e(v.detail),
        ]
        for v in case.verdicts
    ]
    head = ["requirement", "description", "check", "value", "limit", "unit", "result", "detail"]
    return "<h4>Acceptance criteria</h4>" + _table(head, rows)


def _no_plot(results: CampaignResults) -> str:
    return (
        f"<p>Trajectory not plotted: the report plots {MAX_PLOTS} of the "
        f"{len(results.cases)} cases, those that did not pass first; this case's recording is "
        "in its trajectory.parquet (linked above).</p>"
    )


def _html_plot(results: CampaignResults, case: CaseRecord) -> str:
    trajectory = case.directory / "trajectory.parquet"
    if not trajectory.is_file():
        return "<p>No trajectory recorded.</p>"
    checks = [v.check for v in case.verdicts] or [r.check for r in results.requirements]
    try:
        png = plot_png(trajectory, checks, f"{case.id} ({case.status})")
    except Exception as exc:  # a bad file must not stop the report; show why instead
        return f'<p class="problem">Cannot plot {_e(trajectory.name)}: {_e(exc)}</p>'
    data = base64.b64encode(png).decode("ascii")
    caption = "Dashed: setpoint the controller wrote. Bands: PLC in fallback (red), local (grey)."
    img = f'<img alt="trajectory of {_e(case.id)}" src="data:image/png;base64,{data}">'
    return f"<h4>Trajectory</h4>{img}<p>{caption}</p>"
