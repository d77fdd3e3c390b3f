"""The probabilistic design space: at every grid point, N draws of the uncertain parameters.

``pharmatwin-hil design-space FILE --monte-carlo N`` runs the deterministic grid of
:mod:`hil.design_space` N times per point, each time with the true plant's uncertain
parameters drawn over their plausible ranges (the plant file's ``range``; the design-space
file's ``uncertainty`` section says which parameters and which distribution). Every point
gets the probability that all its CQA limits hold (the share of draws that were acceptable,
with a 95 % Wilson interval), and the map is drawn with the contour of the probability the
user asks for (``--probability``, default 0.95): the probability-map form of a QbD design
space (Peterson's Bayesian design space; Fissore's and Pisano's freeze-drying maps).

The draws are the same at every point (common random numbers: a Latin hypercube from
``uncertainty.seed``), so neighbouring points differ by the recipe, not by luck. With no
uncertain parameter the map is the deterministic design space: every probability is 0 or 1.
Runs go to the same executors as the deterministic grid (a local process pool or Dask).
"""

from __future__ import annotations

import copy
import csv
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from rich.console import Console
from rich.table import Table

from controller.errors import ConfigError, Problem, unknown_name
from controller.jsonfile import write_json as write_json_file
from controller.plantfile import build_model
from hil.campaign.montecarlo import Law
from hil.campaign.montecarlo import draw as draw_laws
from hil.design_space import fmt, judge
from hil.design_space_exec import Executor, lost, progress_bar, run_dask, run_pool
from hil.design_space_spec import DesignSpace
from plant_models import PlantModel


def uncertain_parameters(space: DesignSpace) -> dict[str, tuple[float, float, float]]:
    """name -> (lower, mode, upper) of the parameters drawn; ConfigError for unusable names."""
    model = _model(space)
    spec = space.spec.uncertainty
    params = model.parameter_set.parameters
    ranged = [n for n, p in params.items() if math.isfinite(p.lower) and math.isfinite(p.upper)]
    names = list(spec.parameters) if spec.parameters is not None else ranged
    problems = []
    for i, name in enumerate(names):
        if name not in params:
            problems.append(
                Problem(
                    str(space.path),
                    f"uncertainty.parameters.{i}",
                    unknown_name("parameter", name, sorted(params)),
                    name,
                )
            )
        elif name not in ranged:
            problems.append(
                Problem(
                    str(space.path),
                    f"uncertainty.parameters.{i}",
                    "has no plausible range in the plant file (give 'range: [low, high]')",
                    name,
                )
            )
    if problems:
        raise ConfigError(problems)
    return {n: (params[n].lower, params[n].value, params[n].upper) for n in names}


def _model(space: DesignSpace) -> PlantModel:
    return build_model(Path(space.points[0].scenario["plant"]))


def draw(
    ranges: dict[str, tuple[float, float, float]], n: int, distribution: str, seed: int
) -> list[dict[str, float]]:
    """``n`` parameter sets: a Latin hypercube mapped through each parameter's distribution
    (the campaigns' Monte Carlo draws, :func:`hil.campaign.montecarlo.draw`)."""
    laws = {name: Law(distribution, lo, hi, mode) for name, (lo, mode, hi) in ranges.items()}
    return draw_laws(laws, n, seed)


def wilson(k: int, n: int, z: float = 1.96) -> tuple[float, float]:
    """The 95 % Wilson score interval of a proportion k/n."""
    if n == 0:
        return (math.nan, math.nan)
    p = k / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return (max(0.0, centre - half), min(1.0, centre + half))


@dataclass
class ProbabilisticOutcome:
    space: DesignSpace
    out: Path
    n: int
    level: float
    executor: str
    workers: int
    draws: list[dict[str, float]]
    rows: list[dict[str, Any]] = field(default_factory=list)  # grid order
    wall_time_s: float = 0.0
    files: dict[str, Path] = field(default_factory=dict)

    @property
    def errors(self) -> int:
        """Runs that did not finish (an errored draw counts as not acceptable, and is shown)."""
        return sum(int(r["errors"]) for r in self.rows)

    @property
    def inside(self) -> list[dict[str, Any]]:
        """The points whose probability of meeting every limit reaches the level."""
        return [r for r in self.rows if r["probability"] >= self.level]


def run_probabilistic(
    space: DesignSpace,
    out: Path,
    n: int,
    *,
    level: float = 0.95,
    executor: Executor = "process",
    workers: int = 1,
    progress: bool = True,
    console: Console | None = None,
) -> ProbabilisticOutcome:
    """Run ``n`` draws at every grid point; judge each run; write the map, table and plot."""
    if n < 1:
        raise ValueError(f"--monte-carlo needs at least 1 draw, got {n}")
    if not 0.0 < level < 1.0:
        raise ValueError(f"--probability must lie strictly between 0 and 1, got {level}")
    console = console or Console(stderr=True)
    out.mkdir(parents=True, exist_ok=True)
    ranges = uncertain_parameters(space)
    spec = space.spec.uncertainty
    draws = draw(ranges, n, spec.distribution, spec.seed)
    cqa = space.spec.cqas.model_dump()
    jobs = []
    for p in space.points:
        for k, values in enumerate(draws):
            scenario = copy.deepcopy(p.scenario)
            tp = scenario.setdefault("true_plant", {}) or {}
            tp["parameters"] = {**(tp.get("parameters") or {}), **values}
            scenario["true_plant"] = tp
            jid = f"{p.id}-d{k:03d}"
            jobs.append(
                {
                    "id": jid,
                    "scenario": scenario,
                    "scenario_file": str((out / "runs" / jid / "scenario.yaml").resolve()),
                    "cqas": cqa,
                }
            )
    results: dict[str, dict[str, Any]] = {}
    t0 = time.perf_counter()
    with progress_bar(progress, len(jobs), console) as advance:

        def on_result(result: dict[str, Any]) -> None:
            results[result["id"]] = result
            advance()

        (run_dask if executor == "dask" else run_pool)(jobs, max(1, workers), on_result)
    outcome = ProbabilisticOutcome(
        space, out, n, level, executor, workers, draws, wall_time_s=time.perf_counter() - t0
    )
    for p in space.points:
        runs = [
            results.get(f"{p.id}-d{k:03d}") or lost(f"{p.id}-d{k:03d}", RuntimeError("no result"))
            for k in range(n)
        ]
        verdicts = [judge(r, space.limits) for r in runs]
        ok = sum(v for v, _ in verdicts)
        errors = sum(r.get("status") != "ok" for r in runs)
        lo, hi = wilson(ok, n)
        row: dict[str, Any] = {"id": p.id, **p.values}
        row |= {"draws": n, "acceptable_draws": ok, "errors": errors}
        row["first_error"] = next((r.get("error") for r in runs if r.get("status") != "ok"), None)
        row |= {"probability": ok / n, "ci_low": lo, "ci_high": hi}
        for name in space.cqa_names:
            seen = [float(r[name]) for r in runs if isinstance(r.get(name), int | float)]
            finite = [v for v in seen if math.isfinite(v)]
            row[f"mean_{name}"] = float(np.mean(finite)) if finite else math.nan
            row[f"worst_{name}"] = float(max(finite)) if finite else math.nan
        reasons: dict[str, int] = {}
        for _, why in verdicts:
            for text in why:
                key = text.split(" ")[0]
                reasons[key] = reasons.get(key, 0) + 1
        row["failed_limits"] = reasons
        outcome.rows.append(row)
    outcome.files = {
        "csv": _write_csv(outcome, out / "design_space_probability.csv"),
        "json": _write_json(outcome, out / "design_space_probability.json"),
        "png": write_probability_plot(outcome, out / "design_space_probability.png"),
    }
    return outcome


def _columns(outcome: ProbabilisticOutcome) -> list[str]:
    names = [f.name for f in outcome.space.spec.factors]
    cqas = [f"{k}_{c}" for c in outcome.space.cqa_names for k in ("mean", "worst")]
    return ["id", *names, "draws", "acceptable_draws", "errors", "probability", "ci_low",
            "ci_high", *cqas]  # fmt: skip


def _write_csv(outcome: ProbabilisticOutcome, path: Path) -> Path:
    cols = _columns(outcome)
    with path.open("w", newline="", encoding="utf-8") as fh:
        w = csv.writer(fh)
        w.writerow(cols)
        for r in outcome.rows:
            w.writerow([r[c] for c in cols])
    return path


def _write_json(outcome: ProbabilisticOutcome, path: Path) -> Path:
    space = outcome.space
    data = {
        "name": space.name,
        "file": str(space.path),
        "monte_carlo": outcome.n,
        "probability_level": outcome.level,
        "uncertainty": space.spec.uncertainty.model_dump(),
        "draws": outcome.draws,
        "limits": {k: {"lower": lo, "upper": hi} for k, (lo, hi) in space.limits.items()},
        "executor": outcome.executor,
        "workers": outcome.workers,
        "wall_time_s": outcome.wall_time_s,
        "n_points": len(outcome.rows),
        "n_inside": len(outcome.inside),
        "points": outcome.rows,
    }
    return write_json_file(path, data)


def write_probability_plot(outcome: ProbabilisticOutcome, path: Path) -> Path:
    """The probability map (0..1) with the contour of the asked probability, labelled."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    space = outcome.space
    fx, fy = space.spec.factors
    x, y = np.asarray(fx.values), np.asarray(fy.values)
    z = np.full((len(y), len(x)), np.nan)
    for p, r in zip(space.points, outcome.rows, strict=True):
        z[p.j, p.i] = r["probability"]
    fig, ax = plt.subplots(figsize=(7.5, 5.6), constrained_layout=True)
    cs = ax.contourf(x, y, z, levels=np.linspace(0.0, 1.0, 11), cmap="RdYlGn", vmin=0, vmax=1)
    fig.colorbar(cs, ax=ax, label="probability that every CQA limit holds [-]")
    if np.nanmin(z) < outcome.level < np.nanmax(z):
        line = ax.contour(x, y, z, levels=[outcome.level], colors="k", linewidths=2.2)
        ax.clabel(line, fmt={outcome.level: f"P = {100 * outcome.level:g} %"}, fontsize=9)
    xx, yy = np.meshgrid(x, y)
    for xi, yi, zi in zip(xx.ravel(), yy.ravel(), z.ravel(), strict=True):
        ax.annotate(fmt(zi), (xi, yi), ha="center", va="center", fontsize=7)
    model = _model(space)
    ax.set_xlabel(fx.label or model.label(fx.input))
    ax.set_ylabel(fy.label or model.label(fy.input))
    drawn = ", ".join(sorted(outcome.draws[0])) if outcome.draws and outcome.draws[0] else "none"
    ax.set_title(
        f"probabilistic design space {space.name}: {outcome.n} draws per point of "
        f"{drawn}\n{len(outcome.inside)}/{len(outcome.rows)} points at P >= "
        f"{100 * outcome.level:g} %",
        fontsize=9,
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def probability_table(outcome: ProbabilisticOutcome) -> Table:
    """The probability per grid point (rows: second factor, columns: first)."""
    space = outcome.space
    fx, fy = space.spec.factors
    table = Table(
        title=f"P(every CQA limit holds), {outcome.n} draws per point "
        f"(green: >= {100 * outcome.level:g} %)"
    )
    table.add_column(f"{fy.name} \\ {fx.name}")
    for v in fx.values:
        table.add_column(f"{v:g}", justify="right")
    cells = {(p.i, p.j): r for p, r in zip(space.points, outcome.rows, strict=True)}
    for j, vy in enumerate(fy.values):
        row: Sequence[str] = [
            f"[{'green' if cells[(i, j)]['probability'] >= outcome.level else 'red'}]"
            f"{cells[(i, j)]['probability']:.2f}[/]"
            for i in range(len(fx.values))
        ]
        table.add_row(f"{vy:g}", *row)
    return table
