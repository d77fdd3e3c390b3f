"""``compare``: two controller configs on the same scenarios (same seeds), side by side."""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from rich.console import Console
from rich.table import Table

from controller.configfile import read_yaml
from controller.controllerfile import load_controller
from hil.campaign.spec import Campaign, load_campaign
from hil.tuning.evaluate import CaseExecutor, ExecutorSettings, case_jobs
from hil.tuning.report import html_table, img_tag, trajectory_plot, write_html
from hil.tuning.spec import load_tuning


@dataclass(frozen=True)
class Comparison:
    kpis: list[tuple[str, float, float]]  # KPI, mean for A, mean for B
    html: Path
    json: Path
    #: per config (A, B): the cases that errored, case id -> why (no KPIs: no comparison)
    errored: dict[str, dict[str, str]] = field(default_factory=dict)


def scenario_campaigns(paths: list[Path]) -> list[Campaign]:
    """Campaign files or tuning files (their scenario set)."""
    out = []
    for p in paths:
        if "matrix" in read_yaml(p):
            out.append(load_campaign(p))
        else:
            out.append(load_tuning(p).campaign)
    return out


def _means(results: list[dict[str, Any]]) -> dict[str, float]:
    keys = sorted(
        {k for r in results for k, v in r.get("kpis", {}).items() if isinstance(v, int | float)}
    )
    return {
        k: float(
            np.mean([r["kpis"][k] for r in results if isinstance(r["kpis"].get(k), int | float)])
        )
        for k in keys
    }


def compare(
    config_a: Path,
    config_b: Path,
    scenarios: list[Path],
    out: Path,
    executor: ExecutorSettings,
    console: Console,
) -> Comparison:
    for cfg in (config_a, config_b):
        load_controller(cfg)
    labels = {"A": config_a, "B": config_b}
    results: dict[str, list[dict[str, Any]]] = {"A": [], "B": []}
    sections = []
    with CaseExecutor(executor) as ex:
        for camp in scenario_campaigns(scenarios):
            camp = dataclasses.replace(camp, controller_path=None)
            folders = {k: out / k / camp.name for k in labels}
            jobs = {k: case_jobs(camp, labels[k].resolve(), folders[k]) for k in labels}
            done = ex.run(jobs["A"] + jobs["B"])
            results["A"] += done[: len(jobs["A"])]
            results["B"] += done[len(jobs["A"]) :]
            png = trajectory_plot(
                {f"A: {config_a.name}": folders["A"], f"B: {config_b.name}": folders["B"]},
                [c.id for c in camp.cases],
                out / f"{camp.name}.png",
                f"{camp.name}: A vs B",
                max_cases=4,
            )
            sections.append((camp.name, png))
    a, b = _means(results["A"]), _means(results["B"])
    rows = [(k, a.get(k, math.nan), b.get(k, math.nan)) for k in sorted(set(a) | set(b))]
    bad = {k: float(sum(r.get("status") != "passed" for r in res)) for k, res in results.items()}
    rows.append(("cases not passed", bad["A"], bad["B"]))
    errored = {
        k: {str(r["id"]): str(r.get("error")) for r in res if r.get("status") == "error"}
        for k, res in results.items()
    }
    rows.append(("cases errored", float(len(errored["A"])), float(len(errored["B"]))))
    table = Table(title=f"A = {config_a}  vs  B = {config_b} (mean over {len(results['A'])} cases)")
    for col in ("KPI", "A", "B"):
        table.add_column(col, justify="right")
    for k, va, vb in rows:
        table.add_row(
            k, f"{va:.6g}" if math.isfinite(va) else "-", f"{vb:.6g}" if math.isfinite(vb) else "-"
        )
    console.print(table)
    body = [("KPIs (mean over the cases)", html_table(["KPI", "A", "B"], [list(r) for r in rows]))]
    body += [(name, img_tag(p)) for name, p in sections]
    html_path = write_html(
        out / "compare.html", f"Compare {config_a.name} vs {config_b.name}", body
    )
    per_case = {k: {r["id"]: r.get("kpis", {}) for r in res} for k, res in results.items()}
    json_path = out / "compare.json"
    json_path.write_text(
        json.dumps(
            {
                "A": str(config_a),
                "B": str(config_b),
                "mean": {"A": a, "B": b},
                "cases": per_case,
                "errored": errored,
            },
            indent=2,
            default=str,
        ),
        encoding="utf-8",
    )
    return Comparison(rows, html_path, json_path, errored)
