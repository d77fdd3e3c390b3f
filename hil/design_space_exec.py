"""Running a design space's points: one point in a worker, and the executors that run them.

:func:`run_point` writes a point's scenario, runs it offline (:func:`hil.simulate.run_scenario`)
and returns its CQAs as plain data; :func:`run_pool` (a local spawned process pool) and
:func:`run_dask` (a Dask ``LocalCluster`` on 127.0.0.1) run many, reporting each result (or a
lost worker, :func:`lost`) as it comes. A failed point is a result with ``status: error``.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import multiprocessing
import os
import re
import time
import traceback
from collections.abc import Callable, Iterator
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from pathlib import Path
from typing import Any, Literal

import yaml
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from hil.output_capture import output_to

#: Where the points run: a local spawned process pool, or a Dask LocalCluster on 127.0.0.1.
Executor = Literal["process", "dask"]
#: Tolerance of "progress reached complete_at".
EPS = 1e-9


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
    """The CQAs of one run's rows (plain data); ``drying_time`` NaN when drying did not finish
    (its end is not known: ``run_end`` is when the run stopped)."""
    temp = _series(rows, temperature)
    prog = _series(rows, progress)
    end = float(rows[-1]["t"]) if rows else math.nan
    done = next((t for t, v in prog if v >= complete_at - EPS), None)
    return {
        f"max_{temperature}": max((v for _, v in temp), default=math.nan),
        "drying_time": done if done is not None else math.nan,  # not known: it did not finish
        f"final_{progress}": prog[-1][1] if prog else math.nan,
        "finished": done is not None,
        "run_end": end,
    }


#: each run's log beside its scenario.yaml: what its solvers printed (from C too)
RUN_LOG = "run.log"
#: the names of a sweep's run folders: ``points/p00-01`` (deterministic), ``runs/p00-01-d003``
#: (Monte Carlo)
POINT_FOLDER, DRAW_FOLDER = re.compile(r"p\d{2}-\d{2}"), re.compile(r"p\d{2}-\d{2}-d\d{3,}")
#: all a sweep writes in a run folder
RUN_FILES = frozenset({"scenario.yaml", RUN_LOG})


def clear_stale(
    folder: Path, jobs: list[dict[str, Any]], names: re.Pattern[str]
) -> tuple[list[str], list[str]]:
    """Remove the run folders in ``folder`` that an earlier sweep into the same ``--out``
    wrote and this one (``jobs``) did not (more draws or points then): they would read as
    this one's. Only a folder that is exactly one: named as ``names``, not a link, holding
    its ``scenario.yaml`` and nothing but :data:`RUN_FILES`, and removable (this user may
    write in it and in ``folder``). Never raises: the folders it could not tell or remove are
    left. Returns the names removed, and those left that are named as a run folder."""
    keep = {Path(j["scenario_file"]).parent.name for j in jobs}
    removed: list[str] = []
    left: list[str] = []
    try:
        candidates = sorted(d for d in folder.iterdir() if d.name not in keep)
    except OSError:  # no folder, or not one this user may list: nothing to tell
        return removed, left
    writable = os.access(folder, os.W_OK | os.X_OK)
    for d in candidates:
        if not names.fullmatch(d.name):
            continue
        try:
            inside = [] if d.is_symlink() or not d.is_dir() else list(d.iterdir())
            exact = "scenario.yaml" in {f.name for f in inside} and all(
                f.name in RUN_FILES and f.is_file() and not f.is_symlink() for f in inside
            )
            if not (exact and writable and os.access(d, os.W_OK | os.X_OK)):
                left.append(d.name)
                continue
            for f in inside:
                f.unlink()
            d.rmdir()
            removed.append(d.name)
        except OSError:
            left.append(d.name)
    return removed, left


def run_sweep(
    jobs: list[dict[str, Any]],
    executor: Executor,
    workers: int,
    *,
    progress: bool,
    console: Console,
    names: re.Pattern[str],
) -> tuple[dict[str, dict[str, Any]], float]:
    """Run ``jobs`` on ``executor`` (a progress bar on ``console``), then clear the folder of
    their run folders of an earlier sweep's (:func:`clear_stale`, named as ``names``, and said
    so). Returns each job's result by id (a lost one is missing) and the wall time [s]."""
    results: dict[str, dict[str, Any]] = {}
    t0 = time.perf_counter()
    with progress_bar(progress, len(jobs), console) as advance:

        def on_result(result: dict[str, Any]) -> None:
            results[result["id"]] = result
            advance()

        (run_dask if executor == "dask" else run_pool)(jobs, max(1, workers), on_result)
    wall = time.perf_counter() - t0
    if jobs:
        folder = Path(jobs[0]["scenario_file"]).parent.parent
        _say_stale(console, folder, clear_stale(folder, jobs, names))
    return results, wall


def _say_stale(console: Console, folder: Path, stale: tuple[list[str], list[str]]) -> None:
    """One line each for what :func:`clear_stale` removed and what it left, once this
    sweep's runs are all in (the sweep's tables do not count the ones left)."""
    removed, left = stale
    if removed:
        console.print(f"removed {len(removed)} run folder(s) of an earlier sweep in {folder}")
    if left:
        names = ", ".join(left[:5]) + (", ..." if len(left) > 5 else "")
        console.print(
            f"left {len(left)} folder(s) in {folder} named like an earlier sweep's runs but "
            f"not only its files, or not removable ({names}): they are not part of this sweep"
        )


def run_point(job: dict[str, Any]) -> dict[str, Any]:
    """Worker: write the point's scenario, run it offline, return its CQAs (plain data)."""
    from hil.simulate import run_scenario

    started = time.perf_counter()
    result: dict[str, Any] = {"id": job["id"], "status": "ok", "error": None}
    try:
        path = Path(job["scenario_file"])
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(yaml.safe_dump(job["scenario"], sort_keys=False), encoding="utf-8")
        # what the solvers print from C goes to the run's own log, not to the sweep's terminal
        (path.parent / RUN_LOG).unlink(missing_ok=True)  # this run's, not an earlier one's too
        with output_to(path.parent / RUN_LOG, f"--- {job['id']} (pid {os.getpid()})\n"):
            run = asyncio.run(run_scenario(path))
        cqa = job["cqas"]
        result |= point_cqas(run.rows, cqa["temperature"], cqa["progress"], cqa["complete_at"])
        if run.plant_fault is not None:  # the run stopped there: what it reached is no batch
            result["plant_fault"] = run.plant_fault.describe()
    except Exception as exc:  # one bad point must not sink the sweep
        result |= {
            "status": "error",
            "error": f"{type(exc).__name__}: {exc}",
            "traceback": traceback.format_exc(limit=5),
        }
    result["wall_time_s"] = time.perf_counter() - started
    return result


def run_pool(
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
                    on_result(lost(futures[fut], exc))


def run_dask(
    jobs: list[dict[str, Any]], workers: int, on_result: Callable[[dict[str, Any]], None]
) -> None:
    import uuid

    from distributed import as_completed

    from hil.campaign.execute import local_dask_client  # its workers: QUIET_WORKERS

    with local_dask_client(workers) as client:
        run = uuid.uuid4().hex[:8]
        futures = {
            client.submit(run_point, job, key=f"ds-{job['id']}-{run}", pure=False): job["id"]
            for job in jobs
        }
        for fut in as_completed(list(futures)):
            try:
                on_result(fut.result())
            except Exception as exc:  # KilledWorker, ...
                on_result(lost(futures[fut], exc))


def lost(pid: str, exc: BaseException) -> dict[str, Any]:
    return {
        "id": pid,
        "status": "error",
        "error": f"{type(exc).__name__}: {exc}",
        "wall_time_s": 0.0,
    }


@contextlib.contextmanager
def progress_bar(enabled: bool, total: int, console: Console) -> Iterator[Callable[[], None]]:
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
