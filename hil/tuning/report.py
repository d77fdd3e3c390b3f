"""What a tuning run leaves in its folder: the ranked table (``ranking.csv``/``.json``), plots
(PNG), the tuned controller YAML with a provenance header, and ``report.html`` (one file, the
plots embedded)."""

from __future__ import annotations

import base64
import contextlib
import csv
import html
import json
import math
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import optuna
import pyarrow.parquet as pq
from optuna.trial import FrozenTrial, TrialState
from rich.console import Console
from rich.table import Table

from hil.campaign.execute import software
from hil.campaign.results import utc_now
from hil.tuning.spec import Tuning, candidate_config

if TYPE_CHECKING:
    from hil.tuning.evaluate import Score

RANKED = 10  # rows of the ranked table


@dataclass
class TuneOutcome:
    """What a tuning run produced: the study, the start config's score, the best trial."""

    out: Path
    study: optuna.Study
    baseline: Score
    best: FrozenTrial | None
    trials_run: int = 0
    wall_time_s: float = 0.0
    files: dict[str, Path] = field(default_factory=dict)


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return "-" if not math.isfinite(v) else f"{v:.6g}"
    return "-" if v is None else str(v)


def ranking(tuning: Tuning, study: optuna.Study) -> list[dict[str, Any]]:
    """Accepted trials best first (several objectives: the Pareto front first), then rejected."""
    names = [o.name for o in tuning.spec.objectives]
    done = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    pareto = {t.number for t in study.best_trials} if len(names) > 1 and done else set()
    done.sort(key=lambda t: (t.number not in pareto, t.values[0], t.number))
    rows = []
    for rank, t in enumerate(done, 1):
        rows.append(_row(t, names, rank, "pareto" if t.number in pareto else "accepted"))
    for t in study.get_trials(deepcopy=False, states=(TrialState.PRUNED, TrialState.FAIL)):
        status = "rejected" if t.state == TrialState.PRUNED else "failed"
        rows.append(_row(t, names, None, status))
    return rows


def _row(t: FrozenTrial, names: list[str], rank: int | None, status: str) -> dict[str, Any]:
    values = t.user_attrs.get("objective_values") or [None] * len(names)
    row: dict[str, Any] = {"rank": rank, "trial": t.number, "status": status}
    row |= {f"objective.{n}": v for n, v in zip(names, values, strict=False)}
    row |= {f"param.{k}": v for k, v in t.params.items()}
    row |= {f"kpi.{k}": v for k, v in (t.user_attrs.get("kpis") or {}).items()}
    row["rejected"] = "; ".join(t.user_attrs.get("rejected", [])[:3])
    return row


def _write_table(rows: list[dict[str, Any]], out: Path) -> tuple[Path, Path]:
    cols: dict[str, None] = {}
    for r in rows:
        cols.update(dict.fromkeys(r))
    with (out / "ranking.csv").open("w", newline="", encoding="utf-8") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(cols))
        writer.writeheader()
        writer.writerows(rows)
    (out / "ranking.json").write_text(json.dumps(rows, indent=2, default=str), encoding="utf-8")
    return out / "ranking.csv", out / "ranking.json"


def _key_kpis(tuning: Tuning) -> list[str]:
    keys = [t.label for o in tuning.spec.objectives for t in o.terms]
    keys += [b.kpi for b in tuning.spec.reject.kpis]
    return list(dict.fromkeys(keys))


def rich_table(tuning: Tuning, rows: list[dict[str, Any]]) -> Table:
    table = Table(title=f"tuning {tuning.name}: best candidates (objectives: lower is better)")
    shown = [r for r in rows if r["rank"] is not None][:RANKED]
    keys = ["rank", "trial", "status"]
    keys += [k for k in rows[0] if k.startswith(("objective.", "param."))] if rows else []
    keys += [f"kpi.{k}" for k in _key_kpis(tuning)]
    for k in keys:
        short = k.replace("objective.", "obj.").replace("param.", "").replace("kpi.", "")
        table.add_column(".".join(short.split(".")[-2:]), justify="right")
    for r in shown:
        table.add_row(*(_fmt(r.get(k)) for k in keys))
    return table


def before_after(tuning: Tuning, outcome: TuneOutcome) -> list[tuple[str, float, float]]:
    """(KPI, start config, tuned) means over the scenarios."""
    if outcome.best is None:
        return []
    best = Path(outcome.out) / "trials" / f"{outcome.best.number:04d}" / "score.json"
    tuned = json.loads(best.read_text(encoding="utf-8"))
    rows = []
    for i, o in enumerate(tuning.spec.objectives):
        rows.append((f"objective {o.name}", outcome.baseline.values[i], tuned["values"][i]))
    for k in [*_key_kpis(tuning), "solves.failed", "t_end"]:
        b, a = outcome.baseline.kpis.get(k, math.nan), tuned["kpis"].get(k)
        rows.append((k, b, math.nan if a is None else a))
    return list(dict.fromkeys(rows))


# ---------------------------------------------------------------------- plots
def _save(fig: Any, path: Path) -> Path:
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path


def _optuna_plots(
    tuning: Tuning, study: optuna.Study, out: Path
) -> tuple[dict[str, Path], list[str]]:
    from optuna.visualization import matplotlib as ovm

    plots: dict[str, Path] = {}
    notes: list[str] = []
    done = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    several = len(tuning.spec.objectives) > 1
    names = [o.name for o in tuning.spec.objectives]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if done:
            ax = ovm.plot_optimization_history(
                study, target=(lambda t: t.values[0]) if several else None, target_name=names[0]
            )
            # an objective is a weighted sum of KPIs: its unit is the tuning file's own
            ax.set_ylabel(f"{names[0]} [weighted KPIs, see the tuning file]")
            ax.set_xlabel("trial [-]")
            plots["history"] = _save(ax.figure, out / "history.png")
        else:
            notes.append("no accepted trial: no optimization history")
        if len(done) >= 2:
            try:
                evaluator = optuna.importance.PedAnovaImportanceEvaluator()
                ax = ovm.plot_param_importances(
                    study,
                    evaluator=evaluator,
                    target=(lambda t: t.values[0]) if several else None,
                    target_name=names[0],
                )
                plots["importance"] = _save(ax.figure, out / "importance.png")
            except (ValueError, RuntimeError) as exc:
                notes.append(f"parameter importance skipped: {exc}")
        else:
            notes.append("parameter importance skipped: fewer than 2 accepted trials")
        if several and done:
            ax = ovm.plot_pareto_front(study, target_names=names)
            plots["pareto"] = _save(ax.figure, out / "pareto.png")
    return plots, notes


def trajectory_plot(
    runs: dict[str, Path], case_ids: list[str], path: Path, title: str, max_cases: int = 3
) -> Path:
    """Overlaid true-plant states and applied inputs of each run (label -> results folder)."""
    cases = case_ids[:max_cases]
    tables = {
        (label, c): pq.read_table(folder / "cases" / c / "trajectory.parquet")
        for label, folder in runs.items()
        for c in cases
        if (folder / "cases" / c / "trajectory.parquet").exists()
    }
    cols: list[str] = []
    units: dict[str, str] = {}
    time_unit = ""
    for tbl in tables.values():
        cols += [n for n in tbl.column_names if n.startswith(("x.", "u.")) and n not in cols]
        meta = tbl.schema.metadata or {}
        time_unit = meta.get(b"time_unit", b"").decode(errors="replace") or time_unit
        with contextlib.suppress(ValueError):
            units.update(json.loads(meta.get(b"units", b"{}").decode()))
    if not cols:  # every case errored (or none ran): say so, not a zero-sized figure
        fig, ax = plt.subplots(figsize=(6.0, 1.5))
        ax.axis("off")
        ax.text(0.5, 0.5, "no trajectory to plot: every case errored", ha="center", va="center")
        fig.suptitle(title, fontsize=9)
        return _save(fig, path)
    fig, axes = plt.subplots(
        len(cols) or 1, len(cases) or 1, figsize=(4.2 * len(cases), 1.9 * len(cols)), squeeze=False
    )
    for j, c in enumerate(cases):
        for i, col in enumerate(cols):
            ax = axes[i][j]
            for label in runs:
                tbl = tables.get((label, c))
                if tbl is not None and col in tbl.column_names:
                    ax.plot(tbl.column("t").to_numpy(), tbl.column(col).to_numpy(), label=label)
            unit = units.get(col.split(".", 1)[1], "")
            ax.set_ylabel(f"{col} [{unit}]" if unit else f"{col} (unit not recorded)", fontsize=8)
            if i == 0:
                ax.set_title(c, fontsize=8)
        axes[0][j].legend(fontsize=7)
        axes[-1][j].set_xlabel(f"time [{time_unit}]" if time_unit else "time", fontsize=8)
    fig.suptitle(title, fontsize=9)
    return _save(fig, path)


# ---------------------------------------------------------------------- tuned config
def tuned_yaml(tuning: Tuning, best: FrozenTrial, folder: Path) -> str:
    """The best candidate's controller YAML, to be written in ``folder`` (its plant path
    relative to it when they share a project, see :func:`hil.tuning.spec.portable_path`),
    with a header saying how it was made."""
    sw = software()
    values = {p.path: float(best.params[p.path]) for p in tuning.spec.parameters}
    objective = ", ".join(f"{v:.6g}" for v in best.values)
    header = [
        f"# Tuned by `pharmatwin-hil tune {tuning.path}`",
        f"#   tuning file sha256: {tuning.sha256}",
        f"#   start config: {tuning.start_path}",
        f"#   trial {best.number}, objective(s) {objective} (lower is better), "
        f"sampler {tuning.sampler}",
        f"#   scenarios: {len(tuning.campaign.cases)} fast-mode cases of {tuning.campaign.name}",
        f"#   date: {utc_now()}",
        f"#   pharmatwin {sw['version']}, git commit {sw['git_commit'] or 'unknown'}, "
        f"optuna {optuna.__version__}",
        "#   tuned values: " + ", ".join(f"{k}={v:.6g}" for k, v in values.items()),
    ]
    config = candidate_config(tuning, values, jit=None, folder=folder)
    return "\n".join(header) + "\n" + config


def img_tag(path: Path) -> str:
    data = base64.b64encode(path.read_bytes()).decode()
    return f'<img alt="{path.stem}" src="data:image/png;base64,{data}">'


def html_table(header: list[str], rows: list[list[Any]]) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    body = "".join(
        "<tr>" + "".join(f"<td>{html.escape(_fmt(v))}</td>" for v in r) + "</tr>" for r in rows
    )
    return f"<table><tr>{head}</tr>{body}</table>"


CSS = (
    "body{font-family:sans-serif;margin:2em;max-width:1400px}"
    "table{border-collapse:collapse;font-size:13px}td,th{border:1px solid #ccc;padding:3px 6px}"
    "img{max-width:100%}"
)


def write_html(path: Path, title: str, sections: list[tuple[str, str]]) -> Path:
    parts = [f"<h2>{html.escape(h)}</h2>{body}" for h, body in sections]
    path.write_text(
        f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
        f"<style>{CSS}</style></head><body><h1>{html.escape(title)}</h1>{''.join(parts)}"
        "</body></html>",
        encoding="utf-8",
    )
    return path


def write_outputs(tuning: Tuning, outcome: TuneOutcome, console: Console) -> dict[str, Path]:
    out = Path(outcome.out)
    rows = ranking(tuning, outcome.study)
    files: dict[str, Path] = {}
    files["csv"], files["json"] = _write_table(rows, out)
    console.print(rich_table(tuning, rows))
    plots, notes = _optuna_plots(tuning, outcome.study, out)
    sections = [
        (
            "Provenance",
            f"<p>{html.escape(str(tuning.path))} (sha256 {tuning.sha256}), "
            f"{len(outcome.study.trials)} trials, sampler {tuning.sampler}, "
            f"{len(tuning.campaign.cases)} scenarios</p>",
        )
    ]
    if outcome.best is not None:
        best_dir = out / "trials" / f"{outcome.best.number:04d}"
        files["tuned"] = out / f"{tuning.name}-tuned.yaml"
        files["tuned"].write_text(tuned_yaml(tuning, outcome.best, out), encoding="utf-8")
        ids = [c.id for c in tuning.campaign.cases]
        plots["trajectories"] = trajectory_plot(
            {"start": out / "baseline", f"trial {outcome.best.number}": best_dir},
            ids,
            out / "trajectories.png",
            "best candidate vs start config",
        )
        ba = before_after(tuning, outcome)
        sections.append(
            (
                "Before / after (mean over scenarios)",
                html_table(["KPI", "start", "tuned"], [list(r) for r in ba]),
            )
        )
        table = Table(title="start config vs tuned (mean over scenarios)")
        for c in ("KPI", "start", "tuned"):
            table.add_column(c, justify="right")
        for k, b, a in ba:
            table.add_row(k, _fmt(b), _fmt(a))
        console.print(table)
    else:
        notes.append("no accepted candidate: no tuned config written")
        if outcome.baseline.rejected:
            notes.append("the start config is rejected too: " + outcome.baseline.rejected[0])
    keys = list(rows[0]) if rows else []
    sections.append(
        ("Ranked candidates", html_table(keys, [[r.get(k) for k in keys] for r in rows[:25]]))
    )
    sections += [(name, img_tag(p)) for name, p in plots.items()]
    if notes:
        sections.append(("Notes", "".join(f"<p>{html.escape(n)}</p>" for n in notes)))
        for n in notes:
            console.print(f"note: {n}", highlight=False)
    files |= plots
    files["html"] = write_html(out / "report.html", f"Tuning {tuning.name}", sections)
    return files
