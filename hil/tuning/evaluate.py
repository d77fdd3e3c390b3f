"""Evaluating controller candidates on a scenario set with the campaign machinery.

A candidate is a controller YAML; each of the campaign's cases is run for it by
:func:`hil.campaign.runner.run_case` (fast mode) on one executor that lives for the whole
tuning run: a local pool of spawned worker processes, or Dask (a ``LocalCluster`` on loopback
or an existing scheduler). The jobs of several candidates are submitted together, so
candidates run in parallel. A case whose worker is lost is run again (``retries`` times);
a case that cannot run ends as an ``error`` result, which rejects its candidate.

:func:`score` turns a candidate's case results into its objective values (lower is better)
and the reasons, if any, for rejecting it.
"""

from __future__ import annotations

import contextlib
import logging
import math
import multiprocessing
import os
import uuid
from concurrent.futures import Future, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any, Literal

import numpy as np
import pyarrow.parquet as pq

from hil.campaign.runner import run_case
from hil.campaign.spec import Campaign
from hil.output_capture import output_to
from hil.tuning.spec import ObjectiveSpec, Reject, Term

log = logging.getLogger("pharmatwin.hil.tuning")

Executor = Literal["process", "dask"]


@dataclass(frozen=True)
class ExecutorSettings:
    executor: Executor = "process"
    workers: int = 1
    scheduler: str | None = None  # a running Dask scheduler's address


def case_jobs(campaign: Campaign, controller: Path, out: Path) -> list[dict[str, Any]]:
    """The :func:`run_case` jobs of every case for one controller config, results in ``out``."""
    criteria = [c.model_dump(mode="json") for c in campaign.spec.criteria]
    return [
        {
            "case": case.to_json(),
            "criteria": criteria,
            "out": str(out.resolve()),
            "site": str(campaign.site_path.resolve()),
            "controller": str(controller.resolve()),
            "mode": "fast",
            "rate": campaign.spec.hil.rate,
        }
        for case in campaign.cases
    ]


#: each candidate folder's log of its cases: the solvers' prints (IPOPT, CasADi, from C) and
#: the workers' own log lines, instead of the terminal
TRIAL_LOG = "trial.log"


def run_case_logged(job: dict[str, Any]) -> dict[str, Any]:
    """:func:`run_case` in a worker, its output in the candidate folder's :data:`TRIAL_LOG`."""
    case = job["case"]["id"]
    with output_to(Path(job["out"]) / TRIAL_LOG, f"--- case {case} (pid {os.getpid()})\n"):
        return run_case(job)


def _lost(job: dict[str, Any], why: str) -> dict[str, Any]:
    return {"id": job["case"]["id"], "status": "error", "error": why, "kpis": {}, "verdicts": []}


class CaseExecutor:
    """Runs :func:`run_case` jobs; a context manager holding the pool or the Dask client."""

    def __init__(self, settings: ExecutorSettings, retries: int = 2) -> None:
        self.settings, self.retries = settings, retries
        self._stack = contextlib.ExitStack()
        self._pool: ProcessPoolExecutor | None = None
        self._client: Any = None

    def __enter__(self) -> CaseExecutor:
        if self.settings.executor == "dask":
            self._client = self._dask_client()
        return self

    def __exit__(
        self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self._pool is not None:
            self._pool.shutdown(cancel_futures=True)
        self._stack.close()

    def _dask_client(self) -> Any:
        """The campaign's Dask client (a quiet LocalCluster, or the given scheduler)."""
        from hil.campaign.execute import local_dask_client

        workers, scheduler = max(1, self.settings.workers), self.settings.scheduler
        client = local_dask_client(workers, scheduler=scheduler, retries=self.retries)
        return self._stack.enter_context(client)

    def run(self, jobs: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """Every job's result, in the order of ``jobs``."""
        if self._client is not None:
            return self._run_dask(jobs)
        return self._run_pool(jobs)

    def _run_dask(self, jobs: list[dict[str, Any]]) -> list[dict[str, Any]]:
        run = uuid.uuid4().hex[:8]
        futures = [
            self._client.submit(run_case_logged, j, key=f"tune-{run}-{i}", pure=False)
            for i, j in enumerate(jobs)
        ]
        results = []
        for job, fut in zip(jobs, futures, strict=True):
            try:
                results.append(fut.result())
            except Exception as exc:  # KilledWorker after too many lost workers, or a crash
                results.append(_lost(job, f"{type(exc).__name__}: {exc}"))
        return results

    def _pool_now(self) -> ProcessPoolExecutor:
        if self._pool is None:
            ctx = multiprocessing.get_context("spawn")
            self._pool = ProcessPoolExecutor(max(1, self.settings.workers), mp_context=ctx)
        return self._pool

    def _run_pool(self, jobs: list[dict[str, Any]]) -> list[dict[str, Any]]:
        results: dict[int, dict[str, Any]] = {}
        for attempt in range(self.retries + 1):
            todo = [i for i in range(len(jobs)) if i not in results]
            if not todo:
                break
            pool = self._pool_now()
            futures: dict[Future[dict[str, Any]], int] = {
                pool.submit(run_case_logged, jobs[i]): i for i in todo
            }
            wait(futures)
            for fut, i in futures.items():
                try:
                    results[i] = fut.result()
                except BrokenProcessPool:
                    continue
                except Exception as exc:
                    results[i] = _lost(jobs[i], f"{type(exc).__name__}: {exc}")
            if len(results) < len(jobs):  # a worker was lost: a fresh pool for the rest
                log.warning("a worker was lost; %d case(s) run again", len(jobs) - len(results))
                pool.shutdown(cancel_futures=True)
                self._pool = None
                if attempt == self.retries:
                    for i in todo:
                        results.setdefault(i, _lost(jobs[i], "worker lost on every attempt"))
        return [results[i] for i in range(len(jobs))]


# ---------------------------------------------------------------------- scoring
@dataclass
class Score:
    """A candidate's objective values (lower is better), KPIs and rejection reasons."""

    values: list[float]
    kpis: dict[str, float]  # mean over the cases
    per_case: dict[str, dict[str, float]]
    rejected: list[str] = field(default_factory=list)


def _column(table: Any, name: str) -> str | None:
    for prefix in ("x.", "e.", "z.", "y.", "u."):
        if prefix + name in table.column_names:
            return prefix + name
    return None


def signal_stat(trajectory: Path, term: Term) -> float:
    """A trajectory statistic of one case: NaN (undetermined) if the signal was not recorded
    or a sample of it is not a finite number (a statistic of the samples left would judge a
    trajectory it never saw: ``[0.6, nan, nan, nan, 0.6]`` scored an IAE of 0 about 0.6)."""
    table = pq.read_table(trajectory)
    col = _column(table, str(term.signal))
    if col is None or table.num_rows == 0:
        return math.nan
    t = np.asarray(table.column("t").to_numpy(zero_copy_only=False), dtype=float)
    y = np.asarray(table.column(col).to_numpy(zero_copy_only=False), dtype=float)
    if not np.isfinite(y).all():
        return math.nan
    if term.stat in ("iae", "ise"):
        err = np.abs(y - term.target) if term.stat == "iae" else (y - term.target) ** 2
        return float(np.sum(0.5 * (err[1:] + err[:-1]) * np.diff(t))) if y.size > 1 else 0.0
    if term.stat == "final":
        return float(y[-1])
    return float({"mean": np.mean(y), "max": np.max(y), "min": np.min(y)}[term.stat])


def _why_nan(term: Term) -> str:
    if term.kpi is not None:
        return f"KPI {term.kpi} missing or not a number"
    return f"signal {term.signal} not recorded, or a sample of it not a finite number"


def term_value(result: dict[str, Any], out: Path, term: Term) -> float:
    if term.kpi is not None:
        v = result.get("kpis", {}).get(term.kpi)
        return float(v) if isinstance(v, int | float) else math.nan
    return signal_stat(out / "cases" / result["id"] / "trajectory.parquet", term)


def _rejections(results: list[dict[str, Any]], reject: Reject) -> list[str]:
    why = []
    for r in results:
        if r.get("status") == "error":
            why.append(f"{r['id']}: errored ({r.get('error')})")
            continue
        for v in r.get("verdicts", []):
            named = reject.requirements == "all" or v["requirement"] in reject.requirements
            if named and not v["passed"]:
                why.append(f"{r['id']}: {v['requirement']} failed ({v.get('detail', '')})")
        for b in reject.kpis:
            value = r.get("kpis", {}).get(b.kpi)
            if not isinstance(value, int | float):
                why.append(f"{r['id']}: KPI {b.kpi} missing")
            elif (b.at_most is not None and value > b.at_most) or (
                b.at_least is not None and value < b.at_least
            ):
                why.append(f"{r['id']}: {b.kpi} = {value:g} out of bounds")
    return why


def score(
    results: list[dict[str, Any]], out: Path, objectives: tuple[ObjectiveSpec, ...], reject: Reject
) -> Score:
    """Objective values (lower is better, aggregated over the cases), mean KPIs, rejections."""
    rejected = _rejections(results, reject)
    per_case: dict[str, dict[str, float]] = {}
    values = []
    for obj in objectives:
        case_values = []
        for r in results:
            total = 0.0
            for term in obj.terms:
                v = term_value(r, out, term) if r.get("status") != "error" else math.nan
                per_case.setdefault(r["id"], {})[term.label] = v
                if math.isnan(v) and r.get("status") != "error":
                    rejected.append(f"{r['id']}: {term.label} undetermined ({_why_nan(term)})")
                total += term.weight * (-v if term.sense == "maximize" else v)
            case_values.append(total)
        agg = max(case_values) if obj.aggregate == "worst" else float(np.mean(case_values))
        if not math.isfinite(agg):
            rejected.append(f"objective {obj.name} is not finite")
        values.append(agg)
    for r in results:
        for k, v in r.get("kpis", {}).items():
            if isinstance(v, int | float) and not isinstance(v, bool):
                per_case.setdefault(r["id"], {}).setdefault(k, float(v))
    keys = sorted({k for d in per_case.values() for k in d})
    kpis = {
        k: float(np.mean([d[k] for d in per_case.values() if k in d and math.isfinite(d[k])]))
        if any(k in d and math.isfinite(d[k]) for d in per_case.values())
        else math.nan
        for k in keys
    }
    return Score(values, kpis, per_case, rejected)
