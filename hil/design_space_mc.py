"""The probabilistic design space: at every grid point, N draws of the uncertain parameters.

``pharmatwin-hil design-space FILE --monte-carlo N`` runs the deterministic grid of
:mod:`hil.design_space` N times per point, each time with the true plant's uncertain
parameters drawn over their plausible ranges (the plant file's ``range``; the design-space
file's ``uncertainty`` section says which parameters and which distribution; a drawn value
replaces the scenario's own ``true_plant`` value of that parameter). Every point gets the
probability that all its CQA limits hold: the share of its N draws that were acceptable (a
draw whose run failed or was lost counts as not acceptable and stays in the N), with its 95 %
Wilson interval. The map is drawn with the contour of the probability the user asks for
(``--probability``, default 0.95): the probability-map form of a QbD design space (Peterson's
Bayesian design space; Fissore's and Pisano's freeze-drying maps).

A point's verdict does not rest on the estimate alone (N draws estimate the probability; they
do not measure it): ``inside`` when its whole 95 % interval lies at or above the level,
``outside`` when it lies wholly below, ``undecided`` otherwise (more draws tell). So with few
draws nothing is shown inside: a point whose every draw was acceptable is inside from
:func:`min_draws` draws on (73 for 0.95). The draws are a Latin hypercube, not independent, so
the binomial interval is an approximation (for a stratified sample, usually a cautious one).

The draws are the same at every point (common random numbers: a Latin hypercube from
``uncertainty.seed``), so neighbouring points differ by the recipe, not by luck. With
``parameters: []`` (no uncertain parameter, on purpose) every draw is the same run and the map
is the deterministic design space: every probability is 0 or 1, with no interval around it,
and each verdict is the grid's. With the ``parameters`` left out, every parameter with a
range is drawn; a plant file with none is an error, not a map of nothing drawn. Runs go to the
same executors as the deterministic grid (a local process pool or Dask).
"""

from __future__ import annotations

import copy
import csv
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from rich.console import Console
from rich.table import Table

from controller.errors import ConfigError
from controller.jsonfile import write_json as write_json_file
from controller.plantfile import build_model
from hil.campaign.montecarlo import Law
from hil.campaign.montecarlo import draw as draw_laws
from hil.campaign.schema import MAX_DRAWS
from hil.design_space import judge
from hil.design_space_exec import DRAW_FOLDER, Executor, lost, run_sweep
from hil.design_space_spec import DesignSpace, Point, ranged_parameters, uncertainty_problems
from plant_models import PlantModel

Verdict = tuple[bool, list[str]]  #: a run acceptable or not, and why not (``judge``)
#: what a Monte Carlo sweep writes in its ``--out`` (the CLI refuses a path in the way first)
FILES = {
    "runs": "design_space_runs.csv",
    "csv": "design_space_probability.csv",
    "png": "design_space_probability.png",
    "json": "design_space_probability.json",
}


def uncertain_parameters(space: DesignSpace) -> dict[str, tuple[float, float, float]]:
    """name -> (lower, mode, upper) of the parameters drawn; ConfigError for unusable names,
    or for nothing to draw when none is named and the plant file gives no range."""
    model = _model(space)
    spec = space.spec.uncertainty
    problems = uncertainty_problems(spec, model, str(space.path), drawing=True)
    if problems:
        raise ConfigError(problems)
    params = model.parameter_set.parameters
    names = list(spec.parameters) if spec.parameters is not None else ranged_parameters(model)
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


def verdict(acceptable: int, n: int, level: float) -> str:
    """``inside`` (the 95 % Wilson interval of acceptable/n at or above ``level``),
    ``outside`` (wholly below it) or ``undecided`` (across it: more draws tell)."""
    lo, hi = wilson(acceptable, n)
    if lo >= level:
        return "inside"
    return "outside" if hi < level else "undecided"


def min_draws(level: float) -> int:
    """The fewest draws with which a point whose every draw is acceptable is ``inside``
    (the Wilson lower bound of n/n is n / (n + z^2))."""
    n = max(1, math.ceil(level * 1.96**2 / (1.0 - level)))
    while wilson(n, n)[0] < level:  # the closed form's rounding
        n += 1
    while n > 1 and wilson(n - 1, n - 1)[0] >= level:
        n -= 1
    return n


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
    #: drawn parameters that the scenario's true plant set to a value of its own (replaced)
    overridden: dict[str, float] = field(default_factory=dict)
    #: what the plot shows of the level: the contour, or why there is none
    contour: str = ""

    @property
    def errors(self) -> int:
        """Runs that did not finish (an errored draw counts as not acceptable, and is shown)."""
        return sum(int(r["errors"]) for r in self.rows)

    @property
    def inside(self) -> list[dict[str, Any]]:
        """The points shown to meet every limit with probability >= the level: their 95 %
        interval lies at or above it."""
        return [r for r in self.rows if r["verdict"] == "inside"]

    @property
    def undecided(self) -> list[dict[str, Any]]:
        """The points whose 95 % interval straddles the level (more draws tell)."""
        return [r for r in self.rows if r["verdict"] == "undecided"]

    @property
    def estimated_inside(self) -> list[dict[str, Any]]:
        """The points whose estimate (acceptable share) reaches the level, shown or not."""
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
    if not 1 <= n <= MAX_DRAWS:
        raise ValueError(f"--monte-carlo needs 1 to {MAX_DRAWS} draws, got {n}")
    if not 0.0 < level < 1.0:
        raise ValueError(f"--probability must lie strictly between 0 and 1, got {level}")
    console = console or Console(stderr=True)
    ranges = uncertain_parameters(space)
    out.mkdir(parents=True, exist_ok=True)
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
    results, wall = run_sweep(
        jobs, executor, workers, progress=progress, console=console, names=DRAW_FOLDER
    )
    outcome = ProbabilisticOutcome(space, out, n, level, executor, workers, draws, wall_time_s=wall)
    own = (space.points[0].scenario.get("true_plant") or {}).get("parameters") or {}
    outcome.overridden = {k: float(v) for k, v in own.items() if k in ranges}
    every: list[tuple[Point, int, dict[str, Any], Verdict]] = []  # each run, the evidence
    for p in space.points:
        runs = [
            results.get(f"{p.id}-d{k:03d}") or lost(f"{p.id}-d{k:03d}", RuntimeError("no result"))
            for k in range(n)
        ]
        verdicts = judge_runs(space, runs, draws)
        every += [(p, k, r, v) for k, (r, v) in enumerate(zip(runs, verdicts, strict=True))]
        outcome.rows.append(point_row(space, p, runs, level, exact=not ranges, verdicts=verdicts))
    outcome.files = {
        "runs": _write_runs(outcome, every, out / FILES["runs"]),
        "csv": _write_csv(outcome, out / FILES["csv"]),
        "png": write_probability_plot(outcome, out / FILES["png"]),
    }
    outcome.files["json"] = _write_json(outcome, out / FILES["json"])
    return outcome


def point_row(
    space: DesignSpace,
    p: Point,
    runs: Sequence[dict[str, Any]],
    level: float,
    *,
    exact: bool = False,
    draws: Sequence[dict[str, float]] | None = None,
    verdicts: Sequence[Verdict] | None = None,
) -> dict[str, Any]:
    """One grid point's row from its runs (one per draw, a failed or lost one included):
    the acceptable share, its interval and verdict, each CQA's mean and worst value, and how
    often each limit was broken. ``exact``: nothing was drawn, every run is the same run, so
    the share is no estimate (its interval is itself; the verdict the deterministic one).
    ``draws``/``verdicts``: as :func:`judge_runs` takes them / gave them."""
    n = len(runs)
    verdicts = verdicts if verdicts is not None else judge_runs(space, runs, draws)
    ok = sum(v for v, _ in verdicts)
    lo, hi = (ok / n, ok / n) if exact else wilson(ok, n)
    row: dict[str, Any] = {"id": p.id, **p.values}
    row |= {
        "draws": n,
        "acceptable_draws": ok,
        "errors": sum(r.get("status") != "ok" for r in runs),
    }
    row["first_error"] = next((r.get("error") for r in runs if r.get("status") != "ok"), None)
    # exact: every run is the same run, so one that failed (or was lost) decides the point:
    # it is not acceptable, whatever share the others make
    judged = ("inside" if ok == n else "outside") if exact else verdict(ok, n, level)
    row |= {"probability": ok / n, "ci_low": lo, "ci_high": hi, "verdict": judged}
    for name in space.cqa_names:
        seen = [float(r[name]) for r in runs if isinstance(r.get(name), int | float)]
        finite = [v for v in seen if math.isfinite(v)]
        row[f"mean_{name}"] = float(np.mean(finite)) if finite else math.nan
        row[f"worst_{name}"] = worst(finite, space.limits.get(name))
    reasons: dict[str, int] = {}
    for _, why in verdicts:
        for text in why:
            key = text.replace(":", " ").split(" ")[0]  # the CQA, plant_fault, unfinished, run
            reasons[key] = reasons.get(key, 0) + 1
    row["failed_limits"] = reasons
    return row


def judge_runs(
    space: DesignSpace, runs: Sequence[dict[str, Any]], draws: Sequence[dict[str, float]] | None
) -> list[Verdict]:
    """Each run judged against the limits of its own draw (``draws``: for ``T_crit``)."""
    limits = [space.limits_for(d) for d in draws] if draws else [space.limits] * len(runs)
    return [judge(r, lim) for r, lim in zip(runs, limits, strict=True)]


def worst(values: Sequence[float], limit: tuple[float | None, float | None] | None) -> float:
    """The value nearest its limit, or furthest past it: the largest under an upper limit, the
    smallest over a lower one, the one with the least margin between both. NaN without a
    limit (no side is worse) or without values (every run failed)."""
    if not values or limit is None or limit == (None, None):
        return math.nan
    lo, hi = limit
    if lo is None:
        return max(values)
    if hi is None:
        return min(values)
    return min(values, key=lambda v: min(v - lo, hi - v))


def _columns(outcome: ProbabilisticOutcome) -> list[str]:
    names = [f.name for f in outcome.space.spec.factors]
    cqas = [f"{k}_{c}" for c in outcome.space.cqa_names for k in ("mean", "worst")]
    return ["id", *names, "draws", "acceptable_draws", "errors", "probability", "ci_low",
            "ci_high", "verdict", *cqas]  # fmt: skip


def _write_csv(outcome: ProbabilisticOutcome, path: Path) -> Path:
    cols = _columns(outcome)
    with path.open("w", newline="", encoding="utf-8") as fh:
        w = csv.writer(fh)
        w.writerow(cols)
        for r in outcome.rows:
            w.writerow([r[c] for c in cols])
    return path


def _write_runs(
    outcome: ProbabilisticOutcome,
    every: Sequence[tuple[Point, int, dict[str, Any], Verdict]],
    path: Path,
) -> Path:
    """One row per run: its point, draw, drawn values, CQAs and verdict (the shares' parts)."""
    space = outcome.space
    factors = [f.name for f in space.spec.factors]
    drawn = sorted(outcome.draws[0]) if outcome.draws else []
    cols = ["point", "draw", *factors, *drawn, *space.cqa_names, "finished", "status",
            "acceptable", "reasons"]  # fmt: skip
    with path.open("w", newline="", encoding="utf-8") as fh:
        w = csv.writer(fh)
        w.writerow(cols)
        for p, k, r, (ok, why) in every:
            w.writerow([p.id, k, *(p.values[f] for f in factors), *map(outcome.draws[k].get, drawn),
                        *(r.get(c, "") for c in space.cqa_names), r.get("finished", ""),
                        r.get("status", "error"), ok, "; ".join(why)])  # fmt: skip
    return path


def _write_json(outcome: ProbabilisticOutcome, path: Path) -> Path:
    space = outcome.space
    data = {
        "name": space.name,
        "file": str(space.path),
        "monte_carlo": outcome.n,
        "probability_level": outcome.level,
        "verdict_rule": (
            "inside: the 95 % Wilson interval of the acceptable share lies at or above the "
            "level; outside: wholly below it; undecided: across it"
        ),
        "min_draws_to_show_inside": min_draws(outcome.level),
        "uncertainty": space.spec.uncertainty.model_dump(),
        "draws": outcome.draws,
        "overridden_true_plant_parameters": outcome.overridden,
        "limits": {k: {"lower": lo, "upper": hi} for k, (lo, hi) in space.limits.items()},
        # bounds named by a drawn parameter: each draw is judged against its own value
        "limits_from_draws": {
            f"{k}.{side}": name
            for k, lim in space.spec.limits.items()
            for side, name in (("lower", lim.lower), ("upper", lim.upper))
            if isinstance(name, str) and outcome.draws and name in outcome.draws[0]
        },
        "executor": outcome.executor,
        "workers": outcome.workers,
        "wall_time_s": outcome.wall_time_s,
        "n_points": len(outcome.rows),
        "n_inside": len(outcome.inside),
        "n_undecided": len(outcome.undecided),
        "n_estimated_inside": len(outcome.estimated_inside),
        "contour": outcome.contour,
        "points": outcome.rows,
    }
    return write_json_file(path, data)


def contour_level(z: np.ndarray, level: float) -> float | None:
    """The value to draw the contour of ``P >= level`` at: just below the level, so that a
    point exactly at it (19 of 20 draws at 0.95) lies inside the line; None when no point or
    every point reaches the level (there is no boundary on the grid to draw)."""
    at = float(np.nextafter(level, -np.inf))
    finite = z[np.isfinite(z)]
    if finite.size == 0 or not finite.min() < at < finite.max():
        return None
    return at


def write_probability_plot(outcome: ProbabilisticOutcome, path: Path) -> Path:
    """The probability map (0..1) with the contour of the asked probability, labelled, and
    each point's verdict marked; ``outcome.contour`` says what was drawn of the level."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    space = outcome.space
    fx, fy = space.spec.factors
    x, y = np.asarray(fx.values), np.asarray(fy.values)
    z = np.full((len(y), len(x)), np.nan)
    for p, r in zip(space.points, outcome.rows, strict=True):
        z[p.j, p.i] = r["probability"]
    fig, ax = plt.subplots(figsize=(7.5, 6.2), constrained_layout=True)
    cs = ax.contourf(x, y, z, levels=np.linspace(0.0, 1.0, 11), cmap="RdYlGn", vmin=0, vmax=1)
    fig.colorbar(cs, ax=ax, label="probability that every CQA limit holds [-]")
    pct = percent(outcome.level)
    at = contour_level(z, outcome.level)
    if at is not None:
        line = ax.contour(x, y, z, levels=[at], colors="k", linewidths=2.2)
        ax.clabel(line, fmt={at: f"estimated P = {pct}"}, fontsize=9)
        outcome.contour = f"drawn: the line of the estimated P = {pct}"
    else:
        side = "no point's" if np.nanmax(z) < outcome.level else "every point's"
        why = f"{side} estimate reaches P = {pct}"
        outcome.contour = f"none: {why}"
        ax.text(0.5, 0.02, f"no contour: {why}", transform=ax.transAxes, ha="center",
                va="bottom", fontsize=9,
                bbox={"facecolor": "white", "alpha": 0.8, "edgecolor": "0.5"})  # fmt: skip
    for p, r in zip(space.points, outcome.rows, strict=True):
        ax.annotate(share(r), (x[p.i], y[p.j]), ha="center", va="center", fontsize=7)
    notes = []
    if any(r["errors"] for r in outcome.rows):
        notes.append("!: some draws of the point failed (counted as not acceptable)")
    need, exact = min_draws(outcome.level), not outcome.draws or not outcome.draws[0]
    if outcome.n < need and not exact:
        notes.append(f"{outcome.n} draws a point: no point can be shown inside at {pct} "
                     f"(from {need} on)")  # fmt: skip
    if notes:
        box = {"facecolor": "white", "alpha": 0.85, "edgecolor": "0.5"}
        ax.text(0.5, 0.98, "\n".join(notes), transform=ax.transAxes, ha="center", va="top",
                fontsize=8, bbox=box)  # fmt: skip
    marks = {"inside": ("k", "-"), "undecided": ("0.35", "--")}
    for kind, (colour, style) in marks.items():
        pts = [(r[fx.name], r[fy.name]) for r in outcome.rows if r["verdict"] == kind]
        ax.scatter([a for a, _ in pts], [b for _, b in pts], s=520, facecolors="none",
                   edgecolors=colour, linestyles=style, linewidths=1.4,
                   label=f"{kind} ({len(pts)})")  # fmt: skip
    ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.12), ncol=2, fontsize=8, markerscale=0.5,
              title=f"95 % interval vs {pct}", title_fontsize=8)  # fmt: skip
    model = _model(space)
    ax.set_xlabel(fx.label or model.label(fx.input))
    ax.set_ylabel(fy.label or model.label(fy.input))
    drawn = ", ".join(sorted(outcome.draws[0])) if outcome.draws and outcome.draws[0] else ""
    what = drawn or "no parameter (zero uncertainty: the deterministic design space)"
    ax.set_title(
        f"probabilistic design space {space.name}: {outcome.n} draws per point of {what}\n"
        f"{len(outcome.inside)}/{len(outcome.rows)} points inside at {pct} (their 95 % "
        f"interval at or above it), {len(outcome.undecided)} undecided",
        fontsize=9,
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def percent(level: float) -> str:
    """A probability level in percent, with every digit it was given (0.9999999 is not 100 %)."""
    return f"{100 * level:.10g} %"


def share(row: dict[str, Any]) -> str:
    """A point's acceptable share for the table and the map: two decimals, never rounded to 1
    or 0 when it is not (249 of 250 is ">0.99"), and "!" when some of its draws failed."""
    ok, n = row["acceptable_draws"], row["draws"]
    text = f"{ok / n:.2f}"
    if text == "1.00" and ok < n:
        text = ">0.99"
    elif text == "0.00" and ok > 0:
        text = "<0.01"
    elif ok == n:
        text = "1"
    elif ok == 0:
        text = "0"
    return text + ("!" if row["errors"] else "")


#: the table's colour per verdict
_COLOUR = {"inside": "green", "undecided": "yellow", "outside": "red"}


def probability_table(outcome: ProbabilisticOutcome) -> Table:
    """The probability per grid point (rows: second factor, columns: first), coloured by
    verdict."""
    space = outcome.space
    fx, fy = space.spec.factors
    pct = percent(outcome.level)
    table = Table(
        title=f"P(every CQA limit holds), {outcome.n} draws per point (green: inside, its 95 % "
        f"interval at or above {pct}; yellow: undecided; red: outside; !: some draws failed)"
    )
    table.add_column(f"{fy.name} \\ {fx.name}")
    for v in fx.values:
        table.add_column(f"{v:g}", justify="right")
    cells = {(p.i, p.j): r for p, r in zip(space.points, outcome.rows, strict=True)}
    for j, vy in enumerate(fy.values):
        row: Sequence[str] = [
            f"[{_COLOUR[cells[(i, j)]['verdict']]}]{share(cells[(i, j)])}[/]"
            for i in range(len(fx.values))
        ]
        table.add_row(f"{vy:g}", *row)
    return table
