"""Design space (Quality by Design): a grid of two recipe knobs, simulated, judged and plotted.

A design-space file (``configs/design-space/<name>.yaml``) names an open-loop recipe scenario,
two *factors* (named recipe knobs, each with a grid of values), the CQAs to compute from each
run and their acceptance limits::

    scenario: ../scenarios/lyophilizer-nominal-recipe.yaml
    duration: 30.0                      # optional: overrides the scenario's (model time unit)
    factors:
      - {name: Tsh_hold, input: Tsh, set: hold, ramp_rate: 60.0, values: [-20, 0, 20]}
      - {name: Pch, input: Pch, set: constant, values: [0.05, 0.1, 0.15]}
    cqas: {temperature: Tbot, progress: percent_dried, complete_at: 100.0}
    limits:
      max_Tbot: {upper: T_crit}         # a number or a plant parameter's name
      drying_time: {upper: 12.0}
      final_percent_dried: {lower: 99.9}

A factor sets one recipe input: ``set: constant`` in every row of the recipe table,
``set: hold`` in every row after the first (the value held after the ramp); with
``ramp_rate`` [input unit per time unit] the time of the second row is moved so the ramp from
the first row's value keeps that rate. The CQAs of a run are ``max_<temperature>`` (its maximum
over the run), ``drying_time`` (the first time ``progress`` reaches ``complete_at``; not known
when it never does) and ``final_<progress>``. A point is acceptable when every limit holds and
its run completed drying without error, its true plant inside its validity domain throughout.

Every point's scenario is built as a dict and validated when the file is loaded
(:mod:`hil.design_space_spec`), then run offline, open loop, on a local spawned process pool
or a Dask ``LocalCluster`` on 127.0.0.1 (:mod:`hil.design_space_exec`). This module judges
the points and writes the table, the JSON and the plot.
"""

from __future__ import annotations

import csv
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from controller.jsonfile import json_safe
from controller.jsonfile import write_json as write_json_file
from controller.plantfile import build_model
from hil.design_space_exec import POINT_FOLDER, Executor, lost, run_sweep
from hil.design_space_spec import DesignSpace

#: what a deterministic sweep writes in its ``--out`` (the CLI refuses a path in the way first)
FILES = {"csv": "design_space.csv", "json": "design_space.json", "png": "design_space.png"}


def judge(
    cqas: dict[str, Any], limits: dict[str, tuple[float | None, float | None]]
) -> tuple[bool, list[str]]:
    """Acceptable or not, and why not (one reason per limit broken). A run whose true plant
    left its validity domain (``plant_fault``: it stopped there) or whose drying did not
    finish is not acceptable, whatever its limits say of what it reached."""
    if cqas.get("status", "ok") != "ok":
        return False, [f"run failed: {cqas.get('error')}"]
    reasons = []
    if cqas.get("plant_fault"):
        reasons.append(f"plant_fault: the {cqas['plant_fault']}")
    if not cqas.get("finished", False):
        end = cqas.get("run_end", math.nan)
        reasons.append(f"unfinished: drying did not finish by the end of the run (t = {end:.4g})")
    for name, (lo, hi) in limits.items():
        value = cqas.get(name)
        if not isinstance(value, int | float) or not math.isfinite(value):
            if name != "drying_time" or cqas.get("finished", False):  # else: said above
                reasons.append(f"{name} not computed")
            continue
        if hi is not None and value > hi:
            reasons.append(f"{name} {value:.4g} > {hi:g}")
        if lo is not None and value < lo:
            reasons.append(f"{name} {value:.4g} < {lo:g}")
    return not reasons, reasons


@dataclass
class Outcome:
    space: DesignSpace
    out: Path
    executor: str
    workers: int
    rows: list[dict[str, Any]] = field(default_factory=list)  # grid order
    wall_time_s: float = 0.0
    files: dict[str, Path] = field(default_factory=dict)

    @property
    def acceptable(self) -> list[dict[str, Any]]:
        return [r for r in self.rows if r["acceptable"]]

    @property
    def errors(self) -> list[dict[str, Any]]:
        return [r for r in self.rows if r["status"] != "ok"]

    @property
    def best(self) -> dict[str, Any] | None:
        """The acceptable point with the shortest drying (then the coolest product)."""
        temp = self.space.temperature_cqa
        ok = self.acceptable
        return min(ok, key=lambda r: (r["drying_time"], r[temp])) if ok else None


def run_design_space(
    space: DesignSpace,
    out: Path,
    *,
    executor: Executor = "process",
    workers: int = 1,
    progress: bool = True,
    console: Console | None = None,
) -> Outcome:
    """Simulate every grid point in parallel, judge it and write the table and the plot."""
    console = console or Console(stderr=True)
    out.mkdir(parents=True, exist_ok=True)
    workers = max(1, workers)
    cqa = space.spec.cqas.model_dump()
    jobs = [
        {
            "id": p.id,
            "scenario": p.scenario,
            "scenario_file": str((out / "points" / p.id / "scenario.yaml").resolve()),
            "cqas": cqa,
        }
        for p in space.points
    ]
    results, wall = run_sweep(
        jobs, executor, workers, progress=progress, console=console, names=POINT_FOLDER
    )
    outcome = Outcome(space, out, executor, workers, wall_time_s=wall)
    for p in space.points:
        r = results.get(p.id) or lost(p.id, RuntimeError("no result"))
        acceptable, reasons = judge(r, space.limits)
        row: dict[str, Any] = {"id": p.id, **p.values}
        for name in space.cqa_names:
            row[name] = r.get(name, math.nan)
        row |= {
            "finished": bool(r.get("finished", False)),
            "acceptable": acceptable,
            "reasons": reasons,
            "status": r.get("status", "error"),
            "error": r.get("error"),
            "wall_time_s": r.get("wall_time_s", 0.0),
        }
        outcome.rows.append(row)
    outcome.files = {
        "csv": write_csv(outcome, out / FILES["csv"]),
        "json": write_json(outcome, out / FILES["json"]),
        "png": write_plot(outcome, out / FILES["png"]),
    }
    return outcome


def write_csv(outcome: Outcome, path: Path) -> Path:
    space = outcome.space
    names = [f.name for f in space.spec.factors]
    cols = ["id", *names, *space.cqa_names, "finished", "acceptable", "reasons", "status"]
    with path.open("w", newline="", encoding="utf-8") as fh:
        w = csv.writer(fh)
        w.writerow(cols)
        for r in outcome.rows:
            w.writerow(
                [
                    "; ".join(r[c]) if c == "reasons" else ("" if json_safe(r[c]) is None else r[c])
                    for c in cols
                ]
            )
    return path


def write_json(outcome: Outcome, path: Path) -> Path:
    space = outcome.space
    data = {
        "name": space.name,
        "description": space.spec.description,
        "file": str(space.path),
        "scenario": str(space.scenario_path),
        "factors": [f.model_dump() for f in space.spec.factors],
        "cqas": {
            "names": list(space.cqa_names),
            **space.spec.cqas.model_dump(),
        },
        "limits": {k: {"lower": lo, "upper": hi} for k, (lo, hi) in space.limits.items()},
        "executor": outcome.executor,
        "workers": outcome.workers,
        "wall_time_s": outcome.wall_time_s,
        "n_points": len(outcome.rows),
        "n_acceptable": len(outcome.acceptable),
        "n_errors": len(outcome.errors),
        "best": outcome.best,
        "points": outcome.rows,
    }
    return write_json_file(path, data)


def _grid(outcome: Outcome, key: str) -> list[list[float]]:
    fx, fy = outcome.space.spec.factors
    z = [[math.nan] * len(fx.values) for _ in fy.values]
    for p, r in zip(outcome.space.points, outcome.rows, strict=True):
        v = r[key]
        z[p.j][p.i] = float(v) if isinstance(v, int | float) else math.nan
    return z


def write_plot(outcome: Outcome, path: Path) -> Path:
    """Contours of the temperature CQA and the drying time, acceptable region shaded."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    space = outcome.space
    fx, fy = space.spec.factors
    x, y = np.asarray(fx.values), np.asarray(fy.values)
    acc = np.asarray(_grid(outcome, "acceptable"), dtype=float)
    fig, axes = plt.subplots(1, 2, figsize=(13, 5.2), constrained_layout=True)
    model = build_model(Path(space.points[0].scenario["plant"]))
    temp = space.spec.cqas.temperature
    panels = [
        (space.temperature_cqa, f"max {temp} [{model.unit_of(temp)}]", "coolwarm"),
        ("drying_time", f"drying time [{model.time_unit}]", "viridis_r"),
    ]
    best = outcome.best
    for ax, (key, title, cmap) in zip(axes, panels, strict=True):
        z = np.ma.masked_invalid(np.asarray(_grid(outcome, key), dtype=float))
        if z.count() >= 2 and float(z.max()) > float(z.min()):
            cs = ax.contourf(x, y, z, levels=12, cmap=cmap)
            lines = ax.contour(x, y, z, levels=cs.levels, colors="k", linewidths=0.3)
            ax.clabel(lines, fmt="%.3g", fontsize=7)
            fig.colorbar(cs, ax=ax, label=title)
        lo, hi = space.limits.get(key, (None, None))
        for level, style in ((hi, "-"), (lo, "--")):
            if level is not None and z.count() and float(z.min()) < level < float(z.max()):
                c = ax.contour(x, y, z, levels=[level], colors="red", linewidths=2.2)
                c.set(linestyles=style)
                ax.clabel(c, fmt=f"limit {level:g}", fontsize=8)
        if float(np.nanmax(acc)) > 0.5 > float(np.nanmin(acc)):
            ax.contourf(
                x, y, acc, levels=[0.5, 1.5], colors=["limegreen"], alpha=0.25, hatches=["//"]
            )
        elif float(np.nanmin(acc)) > 0.5:
            ax.set_facecolor((0.6, 1.0, 0.6))
        xx, yy = np.meshgrid(x, y)
        ok = acc > 0.5
        ax.scatter(xx[ok], yy[ok], marker="o", s=28, facecolors="white", edgecolors="k")
        ax.scatter(xx[~ok], yy[~ok], marker="x", s=28, c="k")
        if best is not None:
            ax.scatter(
                [best[fx.name]], [best[fy.name]], marker="*", s=260, c="gold", edgecolors="k"
            )
        ax.set_xlabel(fx.label or model.label(fx.input))
        ax.set_ylabel(fy.label or model.label(fy.input))
        limit = f" (limit {_limit_text(lo, hi)})" if (lo, hi) != (None, None) else ""
        ax.set_title(f"{title}{limit}")
    fig.suptitle(
        f"design space {space.name}: {len(outcome.acceptable)}/{len(outcome.rows)} acceptable "
        "(shaded, o); x not acceptable; * best (shortest drying)"
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _limit_text(lo: float | None, hi: float | None) -> str:
    if lo is not None and hi is not None:
        return f"[{lo:g}, {hi:g}]"
    return f"<= {hi:g}" if hi is not None else f">= {lo:g}"


def fmt(v: Any) -> str:
    return "-" if not isinstance(v, int | float) or not math.isfinite(v) else f"{v:.4g}"


def summary_tables(outcome: Outcome) -> list[Table]:
    """The grid (rows: second factor, columns: first) and the headline numbers."""
    space = outcome.space
    fx, fy = space.spec.factors
    temp = space.temperature_cqa
    grid = Table(
        title=f"design space {space.name}: max {space.spec.cqas.temperature} / drying time "
        "(green: acceptable)"
    )
    grid.add_column(f"{fy.name} \\ {fx.name}")
    for v in fx.values:
        grid.add_column(f"{v:g}", justify="right")
    by_cell = {(p.i, p.j): r for p, r in zip(space.points, outcome.rows, strict=True)}
    for j, vy in enumerate(fy.values):
        cells = []
        for i in range(len(fx.values)):
            r = by_cell[(i, j)]
            text = f"{fmt(r[temp])} / {fmt(r['drying_time'])}"
            if r["status"] != "ok":
                text = "error"
            elif any(why.startswith("plant_fault") for why in r["reasons"]):
                text += " (plant fault)"
            elif not r["finished"]:
                text += " (unfinished)"
            cells.append(f"[green]{text}[/]" if r["acceptable"] else f"[red]{text}[/]")
        grid.add_row(f"{vy:g}", *cells)
    head = Table(title="summary")
    for col in ("points", "acceptable", "errored", "best (shortest drying)", "wall time"):
        head.add_column(col, justify="right")
    best = outcome.best
    best_text = (
        f"{fx.name}={best[fx.name]:g}, {fy.name}={best[fy.name]:g}: drying "
        f"{fmt(best['drying_time'])}, {temp} {fmt(best[temp])}"
        if best
        else "none"
    )
    head.add_row(
        str(len(outcome.rows)),
        str(len(outcome.acceptable)),
        str(len(outcome.errors)),
        best_text,
        f"{outcome.wall_time_s:.1f} s ({outcome.executor}, {outcome.workers} workers)",
    )
    return [grid, head]
