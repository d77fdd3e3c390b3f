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
over the run), ``drying_time`` (the first time ``progress`` reaches ``complete_at``, or the end of
the run) and ``final_<progress>``. A point is acceptable when every limit holds and its run
finished without error.

Every point's scenario is built as a dict, validated as a
:class:`~controller.config.ScenarioConfig` (plus :func:`~controller.config.check_scenario`) when
the file is loaded, then run by :func:`hil.simulate.run_scenario` (offline, open loop) on a
local spawned process pool or a Dask ``LocalCluster`` on 127.0.0.1, as plain data in and out.
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import csv
import itertools
import logging
import math
import multiprocessing
import time
import traceback
from collections.abc import Callable, Iterator
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import Field, field_validator, model_validator
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from controller.config import (
    Finite,
    PositiveFinite,
    ScenarioConfig,
    Strict,
    build_model,
    check_scenario,
    parse,
    read_yaml,
    resolve,
)
from controller.errors import ConfigError, Problem
from controller.jsonfile import json_safe
from controller.jsonfile import write_json as write_json_file
from plant_models import PlantModel

Executor = Literal["process", "dask"]
EPS = 1e-9


# ---------------------------------------------------------------------- schema
class Factor(Strict):
    """One recipe knob swept over a grid."""

    name: Annotated[str, Field(min_length=1, pattern=r"^[A-Za-z_][A-Za-z0-9_]*$")]
    input: str
    set: Literal["constant", "hold"] = "constant"
    ramp_rate: PositiveFinite | None = None  # hold only: input unit per model time unit
    label: str = ""
    values: Annotated[tuple[Finite, ...], Field(min_length=2)]

    @field_validator("values")
    @classmethod
    def _increasing(cls, values: tuple[float, ...]) -> tuple[float, ...]:
        if any(b <= a for a, b in itertools.pairwise(values)):
            raise ValueError(f"values must increase strictly, got {list(values)}")
        return values

    @model_validator(mode="after")
    def _check(self) -> Factor:
        if self.ramp_rate is not None and self.set != "hold":
            raise ValueError("'ramp_rate' applies to 'set: hold' only")
        return self


class CqaSpec(Strict):
    temperature: str = "Tbot"  # its maximum over the run: max_<temperature>
    progress: str = "percent_dried"  # drying_time and final_<progress>
    complete_at: Finite = 100.0


class Limit(Strict):
    lower: Finite | str | None = None  # a number or a plant parameter's name
    upper: Finite | str | None = None

    @model_validator(mode="after")
    def _some_bound(self) -> Limit:
        if self.lower is None and self.upper is None:
            raise ValueError("give 'lower', 'upper' or both")
        return self


class Uncertainty(Strict):
    """What ``--monte-carlo N`` draws at every grid point (see :mod:`hil.design_space_mc`).

    ``parameters``: true-plant parameters drawn over their plausible ranges in the plant file
    (None: every parameter with a range; ``[]``: none, the zero-uncertainty limit).
    ``distribution``: ``uniform`` (Latin hypercube over the ranges) or ``triangular`` (mode at
    the plant file's value).
    """

    parameters: tuple[str, ...] | None = None
    distribution: Literal["uniform", "triangular"] = "uniform"
    seed: Annotated[int, Field(ge=0)] = 0


class DesignSpaceFile(Strict):
    name: str | None = None  # default: the file's stem
    description: str = ""
    scenario: str
    duration: PositiveFinite | None = None
    noise: bool = False  # keep the base scenario's measurement noise
    factors: tuple[Factor, Factor]
    cqas: CqaSpec = CqaSpec()
    limits: dict[str, Limit] = Field(default_factory=dict)
    uncertainty: Uncertainty = Uncertainty()

    @model_validator(mode="after")
    def _distinct(self) -> DesignSpaceFile:
        a, b = self.factors
        if a.name == b.name:
            raise ValueError(f"the two factors need different names, both are {a.name!r}")
        if a.input == b.input:
            raise ValueError(f"the two factors set the same input {a.input!r}")
        return self


# ---------------------------------------------------------------------- loaded form
@dataclass(frozen=True)
class Point:
    id: str
    i: int  # index into factors[0].values
    j: int  # index into factors[1].values
    values: dict[str, float]
    scenario: dict[str, Any]  # a valid ScenarioConfig as plain data (plant path absolute)


@dataclass(frozen=True)
class DesignSpace:
    path: Path
    name: str
    spec: DesignSpaceFile
    scenario_path: Path
    points: tuple[Point, ...]
    limits: dict[str, tuple[float | None, float | None]]

    @property
    def temperature_cqa(self) -> str:
        return f"max_{self.spec.cqas.temperature}"

    @property
    def progress_cqa(self) -> str:
        return f"final_{self.spec.cqas.progress}"

    @property
    def cqa_names(self) -> tuple[str, str, str]:
        return (self.temperature_cqa, "drying_time", self.progress_cqa)


def _named(model: PlantModel) -> set[str]:
    return (
        set(model.state_names)
        | set(model.input_names)
        | set(model.algebraic_names)
        | set(model.expression_names)
    )


def _bound(
    value: float | str | None, where: str, params: dict[str, float], source: str
) -> tuple[float | None, list[Problem]]:
    if value is None or isinstance(value, float | int):
        return value, []
    if value in params:
        return params[value], []
    allowed = f"a number or a plant parameter: {sorted(params)}"
    return None, [Problem(source, where, f"unknown parameter; allowed: {allowed}", value)]


def _apply(
    table: list[dict[str, Any]], factor: Factor, value: float, where: str, source: str
) -> list[Problem]:
    """Set ``factor`` to ``value`` in the recipe ``table`` (rows as dicts), in place."""
    if factor.set == "constant":
        for row in table:
            row["inputs"][factor.input] = value
        return []
    if len(table) < 2:
        return [
            Problem(source, where, "a 'hold' factor needs a recipe of at least two rows", value)
        ]
    for row in table[1:]:
        row["inputs"][factor.input] = value
    if factor.ramp_rate is not None:
        start = float(table[0]["inputs"].get(factor.input, value))
        t1 = float(table[0]["t"]) + max(abs(value - start) / factor.ramp_rate, 1e-6)
        if len(table) > 2 and t1 >= float(table[2]["t"]):
            return [
                Problem(
                    source,
                    where,
                    f"the ramp at {factor.ramp_rate:g}/time unit to this value ends at "
                    f"t = {t1:.4g}, after the recipe's next row (t = {table[2]['t']})",
                    value,
                )
            ]
        table[1]["t"] = t1
    return []


def load_design_space(path: Path) -> DesignSpace:
    """Load a design-space file; every problem (its own and its points') in one ConfigError."""
    source = str(path)
    spec = parse(DesignSpaceFile, read_yaml(path), source)
    sc_path = resolve(path, spec.scenario)
    base_raw = read_yaml(sc_path)
    base = parse(ScenarioConfig, base_raw, str(sc_path))
    if base.recipe is None:
        raise ConfigError(
            [
                Problem(
                    source,
                    "scenario",
                    "must be an open-loop recipe scenario (with 'recipe' and 'sample_time'), "
                    "not a closed loop",
                    spec.scenario,
                )
            ]
        )
    plant_path = resolve(sc_path, base.plant).resolve()
    model = build_model(plant_path)
    problems = check_scenario(base, model, str(sc_path))
    if problems:
        raise ConfigError(problems)
    named = _named(model)
    for i, f in enumerate(spec.factors):
        if f.input not in model.input_names:
            problems.append(
                Problem(
                    source,
                    f"factors.{i}.input",
                    f"unknown input; allowed: {list(model.input_names)}",
                    f.input,
                )
            )
            continue
        var = model.variable(f.input)
        for k, v in enumerate(f.values):
            if not var.lower <= v <= var.upper:
                problems.append(
                    Problem(
                        source,
                        f"factors.{i}.values.{k}",
                        f"outside the bounds of input {f.input}; allowed: "
                        f"[{var.lower:g}, {var.upper:g}]",
                        v,
                    )
                )
    for key in ("temperature", "progress"):
        name = getattr(spec.cqas, key)
        if name not in named:
            problems.append(
                Problem(source, f"cqas.{key}", f"unknown name; allowed: {sorted(named)}", name)
            )
    cqa_names = (f"max_{spec.cqas.temperature}", "drying_time", f"final_{spec.cqas.progress}")
    params = model.parameter_set.with_values(base.true_plant.parameters).values()
    limits: dict[str, tuple[float | None, float | None]] = {}
    for key, lim in spec.limits.items():
        if key not in cqa_names:
            problems.append(
                Problem(source, f"limits.{key}", f"unknown CQA; allowed: {list(cqa_names)}", key)
            )
            continue
        lo, p1 = _bound(lim.lower, f"limits.{key}.lower", params, source)
        hi, p2 = _bound(lim.upper, f"limits.{key}.upper", params, source)
        problems += p1 + p2
        if lo is not None and hi is not None and lo > hi:
            problems.append(
                Problem(source, f"limits.{key}", f"lower {lo:g} is above upper {hi:g}", [lo, hi])
            )
        limits[key] = (lo, hi)
    if problems:
        raise ConfigError(problems)

    name = spec.name or path.stem
    fx, fy = spec.factors
    points: list[Point] = []
    for i, vx in enumerate(fx.values):
        for j, vy in enumerate(fy.values):
            data = copy.deepcopy(base_raw)
            pid = f"p{i:02d}-{j:02d}"
            data["name"] = f"{name}-{pid}"
            data["description"] = f"design space {name}: {fx.name} = {vx:g}, {fy.name} = {vy:g}"
            data["plant"] = str(plant_path)
            if spec.duration is not None:
                data["duration"] = spec.duration
            if not spec.noise:
                data.setdefault("true_plant", {})
                data["true_plant"] = dict(data["true_plant"] or {}) | {"noise_std": {}}
            table = data["recipe"]["table"]
            problems += _apply(table, fx, vx, f"factors.0.values.{i}", source)
            problems += _apply(table, fy, vy, f"factors.1.values.{j}", source)
            where = f"{source} (point {pid}: {fx.name}={vx:g}, {fy.name}={vy:g})"
            try:
                sc = parse(ScenarioConfig, data, where)
            except ConfigError as exc:
                problems += list(exc.problems)
                continue
            problems += check_scenario(sc, model, where)
            points.append(Point(pid, i, j, {fx.name: vx, fy.name: vy}, data))
    if problems:
        raise ConfigError(_unique(problems))
    return DesignSpace(path, name, spec, sc_path, tuple(points), limits)


def _unique(problems: list[Problem]) -> list[Problem]:
    seen: list[Problem] = []
    for p in problems:
        if p not in seen:
            seen.append(p)
    return seen


# ---------------------------------------------------------------------- one point (worker)
def _series(rows: list[dict[str, Any]], name: str) -> list[tuple[float, float]]:
    out = []
    for row in rows:
        for prefix in ("x.", "z.", "e.", "y.", "u."):
            value = row.get(prefix + name)
            if isinstance(value, int | float) and math.isfinite(value):
                out.append((float(row["t"]), float(value)))
                break
    return out


def point_cqas(
    rows: list[dict[str, Any]], temperature: str, progress: str, complete_at: float
) -> dict[str, Any]:
    """The CQAs of one run's rows (plain data)."""
    temp = _series(rows, temperature)
    prog = _series(rows, progress)
    end = float(rows[-1]["t"]) if rows else math.nan
    done = next((t for t, v in prog if v >= complete_at - EPS), None)
    return {
        f"max_{temperature}": max((v for _, v in temp), default=math.nan),
        "drying_time": done if done is not None else end,
        f"final_{progress}": prog[-1][1] if prog else math.nan,
        "finished": done is not None,
        "run_end": end,
    }


def run_point(job: dict[str, Any]) -> dict[str, Any]:
    """Worker: write the point's scenario, run it offline, return its CQAs (plain data)."""
    from hil.simulate import run_scenario

    started = time.perf_counter()
    result: dict[str, Any] = {"id": job["id"], "status": "ok", "error": None}
    try:
        path = Path(job["scenario_file"])
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(yaml.safe_dump(job["scenario"], sort_keys=False), encoding="utf-8")
        run = asyncio.run(run_scenario(path))
        cqa = job["cqas"]
        result |= point_cqas(run.rows, cqa["temperature"], cqa["progress"], cqa["complete_at"])
    except Exception as exc:  # one bad point must not sink the sweep
        result |= {
            "status": "error",
            "error": f"{type(exc).__name__}: {exc}",
            "traceback": traceback.format_exc(limit=5),
        }
    result["wall_time_s"] = time.perf_counter() - started
    return result


# ---------------------------------------------------------------------- executors
def _run_pool(
    jobs: list[dict[str, Any]], workers: int, on_result: Callable[[dict[str, Any]], None]
) -> None:
    ctx = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(max_workers=workers, mp_context=ctx) as pool:
        futures: dict[Future[dict[str, Any]], str] = {
            pool.submit(run_point, job): job["id"] for job in jobs
        }
        remaining = set(futures)
        while remaining:
            done, remaining = wait(remaining, return_when=FIRST_COMPLETED)
            for fut in done:
                try:
                    on_result(fut.result())
                except Exception as exc:  # e.g. a worker lost (BrokenProcessPool)
                    on_result(_lost(futures[fut], exc))


def _run_dask(
    jobs: list[dict[str, Any]], workers: int, on_result: Callable[[dict[str, Any]], None]
) -> None:
    import uuid

    from distributed import Client, LocalCluster, as_completed

    with (
        LocalCluster(
            n_workers=workers,
            threads_per_worker=1,
            processes=True,
            host="127.0.0.1",
            dashboard_address=None,
            silence_logs=logging.ERROR,
        ) as cluster,
        Client(cluster) as client,
    ):
        run = uuid.uuid4().hex[:8]
        futures = {
            client.submit(run_point, job, key=f"ds-{job['id']}-{run}", pure=False): job["id"]
            for job in jobs
        }
        for fut in as_completed(list(futures)):
            try:
                on_result(fut.result())
            except Exception as exc:  # KilledWorker, ...
                on_result(_lost(futures[fut], exc))


def _lost(pid: str, exc: BaseException) -> dict[str, Any]:
    return {
        "id": pid,
        "status": "error",
        "error": f"{type(exc).__name__}: {exc}",
        "wall_time_s": 0.0,
    }


@contextlib.contextmanager
def _progress(enabled: bool, total: int, console: Console) -> Iterator[Callable[[], None]]:
    with Progress(
        TextColumn("[bold]design space"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=console,
        disable=not enabled,
    ) as bar:
        task = bar.add_task("points", total=total)
        yield lambda: bar.update(task, advance=1)


# ---------------------------------------------------------------------- judging
def judge(
    cqas: dict[str, Any], limits: dict[str, tuple[float | None, float | None]]
) -> tuple[bool, list[str]]:
    """Acceptable or not, and why not (one reason per limit broken)."""
    if cqas.get("status", "ok") != "ok":
        return False, [f"run failed: {cqas.get('error')}"]
    reasons = []
    for name, (lo, hi) in limits.items():
        value = cqas.get(name)
        if not isinstance(value, int | float) or not math.isfinite(value):
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
    results: dict[str, dict[str, Any]] = {}
    t0 = time.perf_counter()
    with _progress(progress, len(jobs), console) as advance:

        def on_result(result: dict[str, Any]) -> None:
            results[result["id"]] = result
            advance()

        if executor == "dask":
            _run_dask(jobs, workers, on_result)
        else:
            _run_pool(jobs, workers, on_result)
    outcome = Outcome(space, out, executor, workers, wall_time_s=time.perf_counter() - t0)
    for p in space.points:
        r = results.get(p.id) or _lost(p.id, RuntimeError("no result"))
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
        "csv": write_csv(outcome, out / "design_space.csv"),
        "json": write_json(outcome, out / "design_space.json"),
        "png": write_plot(outcome, out / "design_space.png"),
    }
    return outcome


# ---------------------------------------------------------------------- outputs
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


def _fmt(v: Any) -> str:
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
            text = f"{_fmt(r[temp])} / {_fmt(r['drying_time'])}"
            if r["status"] != "ok":
                text = "error"
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
        f"{_fmt(best['drying_time'])}, {temp} {_fmt(best[temp])}"
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
