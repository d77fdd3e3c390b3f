"""Running a campaign: every case on a local process pool or on Dask, resumable, with progress.

* ``process`` (default): a local :class:`~concurrent.futures.ProcessPoolExecutor` (spawned
  workers). A worker lost mid-run breaks the pool; the pool is made again and the cases that
  had no answer are resubmitted, each at most ``retries`` more times.
* ``dask``: an existing cluster (``scheduler="tcp://HOST:PORT"``) or a Dask ``LocalCluster``
  of ``workers`` single-threaded worker processes on loopback, without Dask's profiler and
  with its monitors slowed (:data:`QUIET_WORKERS`). A lost worker's task is rescheduled by
  the Dask scheduler (``distributed.scheduler.allowed-failures`` = ``retries``); a case that
  keeps killing workers ends as an error (``KilledWorker``). A task runs a few cases in turn
  (:func:`chunk_size`; the scheduler's per-task work is then shared), and a lost task does
  not cost its other cases their retries (see :func:`_run_dask`).

Workers receive each case as plain data and build their controller themselves (do-mpc objects
cannot be pickled); a worker builds a configuration's estimator functions and MPC problem
once and keeps them for its next cases (:mod:`controller.core.ekf_memo`,
:mod:`controller.core.ocp_memo`: keyed by all they are made of, no state shared). A case
whose ``result.json`` says passed or failed for the same case definition (its digest), mode
and configuration (:func:`~hil.campaign.resume.case_configuration`) is skipped on a re-run
unless ``force``. The results directory gets ``campaign.json`` (the manifest: software,
machine, config hashes, the audit key, the hil rate, requirements, cases, start and end), then
the reports."""

from __future__ import annotations

import contextlib
import hashlib
import logging
import multiprocessing
import os
import platform
import socket
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ProcessPoolExecutor, as_completed
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any, Literal

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

from controller.errors import PortConnectError
from controller.jsonfile import write_json
from controller.runtime.historian_run import git_commit, library_versions, source_changes
from hil.campaign.checks import describe_check
from hil.campaign.evidence_audit import run_audit_key
from hil.campaign.results import utc_now
from hil.campaign.resume import case_configuration, previous_result
from hil.campaign.runner import finished_result, run_case, run_cases, started
from hil.campaign.spec import Campaign

log = logging.getLogger("pharmatwin.hil.campaign")

Executor = Literal["process", "dask"]

#: The settings of a LocalCluster's workers (and of their nannies and the scheduler) that
#: leave the cases the CPU. A worker's event loop samples every thread's stack for Dask's
#: profiler every 10 ms, checks its own health every 20 ms, its memory every 100 ms and the
#: system every 500 ms: on a case (one thread of Python and CasADi, ~0.35 s of CPU) that cost
#: ~10 % (1 worker, 20 cases, the case thread's CPU time and the other threads': 0.39 and
#: 0.65 s/20 cases with Dask's defaults, 0.34 and 0.13 with these; the pool 0.34 and 0.06).
#: The memory limit is still enforced, once a second. An existing cluster keeps its own.
QUIET_WORKERS: dict[str, object] = {
    "distributed.worker.profile.enabled": False,
    "distributed.admin.tick.interval": "1s",
    "distributed.admin.system-monitor.interval": "5s",
    "distributed.worker.memory.monitor-interval": "1s",
}
#: the most cases one Dask task runs, and the fewest tasks per worker (see chunk_size)
MAX_CHUNK, CHUNKS_PER_WORKER = 4, 25
EXTRA_LIBRARIES = ("dask", "distributed", "pyarrow", "rich", "pydantic")


@dataclass(frozen=True)
class RunSettings:
    out: Path
    mode: Literal["fast", "hil"] = "fast"
    executor: Executor = "process"
    workers: int = 1
    scheduler: str | None = None  # a running Dask scheduler's address
    force: bool = False
    progress: bool = True
    rate: float | None = None  # HIL mode: process seconds per wall second


@dataclass
class Outcome:
    """What a campaign run did."""

    out: Path
    results: dict[str, dict[str, Any]] = field(default_factory=dict)
    skipped: list[str] = field(default_factory=list)
    wall_time_s: float = 0.0

    def count(self, status: str) -> int:
        return sum(r.get("status") == status for r in self.results.values())

    @property
    def passed(self) -> bool:
        return all(r.get("status") == "passed" for r in self.results.values())


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _relative(path: Path) -> str:
    with contextlib.suppress(ValueError):
        return str(path.resolve().relative_to(Path.cwd().resolve()))
    return str(path)


def software() -> dict[str, Any]:
    try:
        version = metadata.version("pharmatwin")
    except metadata.PackageNotFoundError:
        version = "unknown"
    libs = library_versions()
    for name in EXTRA_LIBRARIES:
        with contextlib.suppress(metadata.PackageNotFoundError):
            libs[name] = metadata.version(name)
    return {
        "version": version,
        "git_commit": git_commit(Path(__file__).resolve().parent),
        "source_changes": source_changes(Path(__file__).resolve().parent),  # None: clean
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "machine": platform.machine(),
        "processor": platform.processor(),
        "cpus": os.cpu_count(),
        "hostname": socket.gethostname(),
        "libraries": libs,
    }


def manifest(campaign: Campaign, settings: RunSettings, started: str) -> dict[str, Any]:
    return {
        "campaign": campaign.name,
        "description": campaign.spec.description,
        "file": _relative(campaign.path),
        "mode": settings.mode,
        "executor": _executor_name(settings),
        "workers": settings.workers,
        "scheduler": settings.scheduler,
        "rate": _rate(campaign, settings) if _hil_cases(campaign, settings) else None,
        "started": started,
        "ended": None,
        "software": software(),
        "audit_key": run_audit_key(),  # the key the cases' trails are signed with (None: none)
        "config_hashes": {_relative(p): sha256(p) for p in campaign.files()},
        "requirements": [
            {"id": c.id, "description": c.description, "check": describe_check(c.check)}
            for c in campaign.spec.criteria
        ],
        "cases": [c.id for c in campaign.cases],
        "seeds": sorted({c.seed for c in campaign.cases}),
    }


def _executor_name(settings: RunSettings) -> str:
    if settings.executor == "process":
        return "process"
    return "dask" if settings.scheduler else "dask-local"


def _rate(campaign: Campaign, settings: RunSettings) -> float:
    return settings.rate if settings.rate is not None else campaign.spec.hil.rate


def _hil_cases(campaign: Campaign, settings: RunSettings) -> bool:
    return any(c.run_mode(settings.mode) == "hil" for c in campaign.cases)


# ---------------------------------------------------------------------- executors
def _attempts(folder: Path) -> int:
    try:
        return int((folder / "attempts").read_text() or 0)
    except (OSError, ValueError):
        return 0


def _error(job: dict[str, Any], why: str) -> dict[str, Any]:
    """The result of a case that got no answer from any worker (also written to disk)."""
    case_id = job["case"]["id"]
    result = {
        "id": case_id,
        "status": "error",
        "error": why,
        "attempts": _attempts(Path(job["out"]) / "cases" / case_id),
        "kpis": {},
        "verdicts": [],
        "wall_time_s": 0.0,
        "started": None,
        "ended": utc_now(),
    }
    folder = Path(job["out"]) / "cases" / case_id
    folder.mkdir(parents=True, exist_ok=True)
    write_json(folder / "result.json", result)
    return result


def _run_pool(
    jobs: list[dict[str, Any]],
    workers: int,
    retries: int,
    on_result: Callable[[dict[str, Any]], None],
) -> None:
    pending = {job["case"]["id"]: job for job in jobs}
    lost: dict[str, int] = dict.fromkeys(pending, 0)
    ctx = multiprocessing.get_context("spawn")
    while pending:
        with ProcessPoolExecutor(max_workers=workers, mp_context=ctx) as pool:
            futures: dict[Future[dict[str, Any]], str] = {
                pool.submit(run_case, job): cid for cid, job in pending.items()
            }
            broken = False
            for fut in as_completed(futures):  # one waiter for all: O(cases), not O(cases^2)
                cid = futures[fut]
                try:
                    result = fut.result()
                except BrokenProcessPool:
                    broken = True
                    continue
                except Exception as exc:  # the worker raised outside run_case's guard
                    result = _error(pending[cid], f"{type(exc).__name__}: {exc}")
                pending.pop(cid)
                on_result(result)
        if broken:
            for cid in list(pending):
                lost[cid] += 1
                if lost[cid] > retries:
                    job = pending.pop(cid)
                    on_result(_error(job, f"worker lost {lost[cid]} times running this case"))
                else:
                    log.warning("a worker was lost; %s is run again (retry %d)", cid, lost[cid])


@contextlib.contextmanager
def dask_client(settings: RunSettings, retries: int) -> Iterator[Any]:
    """A Dask client on ``settings.scheduler``, or on a LocalCluster of ``settings.workers``
    single-threaded worker processes on loopback (with :data:`QUIET_WORKERS`); a lost
    worker's task is rescheduled up to ``retries`` times."""
    with local_dask_client(settings.workers, scheduler=settings.scheduler, retries=retries) as c:
        yield c


@contextlib.contextmanager
def local_dask_client(
    workers: int, *, scheduler: str | None = None, retries: int | None = None
) -> Iterator[Any]:
    """A Dask client on ``scheduler``, or on a LocalCluster of ``workers`` single-threaded
    worker processes on loopback with :data:`QUIET_WORKERS` (campaigns, design spaces,
    tuning); ``retries``: reschedulings of a lost worker's task (None: Dask's default)."""
    import dask
    from distributed import Client, LocalCluster

    with contextlib.ExitStack() as stack:
        config: dict[str, object] = dict(QUIET_WORKERS)
        if retries is not None:
            config["distributed.scheduler.allowed-failures"] = retries
        stack.enter_context(dask.config.set(config))
        if scheduler:
            yield stack.enter_context(_connect(Client, scheduler))
            return
        cluster = stack.enter_context(
            LocalCluster(
                n_workers=workers,
                threads_per_worker=1,
                processes=True,
                host="127.0.0.1",
                dashboard_address=None,
                silence_logs=logging.ERROR,
            )
        )
        yield stack.enter_context(Client(cluster))


def _connect(client: Any, scheduler: str) -> Any:
    """A client of the Dask scheduler at ``scheduler``; a malformed address or one with no
    scheduler answering is a :class:`~controller.errors.PortConnectError` naming it (Dask
    waits its ``distributed.comm.timeouts.connect``, 30 s by default, before giving up)."""
    try:
        return client(scheduler)
    except (OSError, TimeoutError, ValueError, TypeError) as exc:
        why = " ".join(str(exc).split()) or type(exc).__name__
        raise PortConnectError(
            f"--dask-scheduler {scheduler}: no Dask scheduler reached there ({why}); "
            "give the address of a running one, tcp://HOST:PORT (start one with "
            "`dask scheduler --host 127.0.0.1`), or leave the option out for a local cluster"
        ) from exc


def chunk_size(cases: int, workers: int) -> int:
    """Cases per Dask task: up to :data:`MAX_CHUNK`, keeping at least
    :data:`CHUNKS_PER_WORKER` tasks per worker (the last tasks leave a worker idle for at
    most one chunk). A task costs the scheduler, the worker and the client some ms of CPU
    (B4: 4.8 s in the client's process for 1000 cases), taken from the cases' 2 cores."""
    return max(1, min(MAX_CHUNK, cases // max(1, workers * CHUNKS_PER_WORKER)))


def _run_dask(
    jobs: list[dict[str, Any]],
    settings: RunSettings,
    retries: int,
    on_result: Callable[[dict[str, Any]], None],
) -> None:
    """Every job on Dask, a few cases per task (:func:`chunk_size`). A task whose worker was
    lost is run again by the scheduler (``retries`` times), without its finished cases
    (:func:`~hil.campaign.runner.run_cases`); one that still fails gives its finished cases'
    results, an error to the case that was running, and its cases never started go again,
    one task each: so each case gets the retries it would get alone."""
    from distributed import as_completed

    with dask_client(settings, retries) as client:
        run = uuid.uuid4().hex[:8]  # keys unique per run: a cluster may remember old ones
        size = chunk_size(len(jobs), sum(client.nthreads().values()))
        pending = [jobs[i : i + size] for i in range(0, len(jobs), size)]
        why: dict[str, str] = {}
        for round_ in range(retries + 2):  # a round resubmits only cases never started
            if not pending:
                break
            futures = {
                client.submit(
                    run_cases, chunk, key=f"cases-{chunk[0]['case']['id']}-{run}-{round_}",
                    pure=False,
                ): chunk
                for chunk in pending
            }  # fmt: skip
            pending = []
            for fut in as_completed(list(futures)):
                chunk = futures.pop(fut)  # no reference kept: the cluster drops the result
                try:
                    results = fut.result()
                except Exception as exc:  # KilledWorker after too many lost workers, or a crash
                    results, unstarted = _salvage(chunk, f"{type(exc).__name__}: {exc}")
                    pending += [[job] for job in unstarted]
                    why |= {job["case"]["id"]: f"{type(exc).__name__}: {exc}" for job in unstarted}
                for result in results:
                    on_result(result)
        for job in (job for chunk in pending for job in chunk):  # never started, every round
            on_result(_error(job, f"never started: its task failed {retries + 2} times "
                                  f"({why.get(job['case']['id'], 'no answer')})"))  # fmt: skip


def _salvage(
    chunk: list[dict[str, Any]], why: str
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """A failed task's results: its cases that finished, an error for each that was started
    and did not finish (``why``); and its cases never started (to go again: a case queued on
    a worker that another case kept killing counts the deaths too, though it never ran)."""
    results, unstarted = [], []
    for job in chunk:
        done = finished_result(job)
        if done is not None:
            results.append(done)
        elif started(job):
            results.append(_error(job, why))
        else:
            unstarted.append(job)
    return results, unstarted


def tally_progress(console: Console, *, enabled: bool = True) -> Progress:
    """The bar of the campaign runner and the tuner: done of total, a tally, elapsed, ETA."""
    return Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[tally]}"),
        TimeElapsedColumn(),
        TextColumn("ETA"),
        TimeRemainingColumn(),
        console=console,
        disable=not enabled,
        transient=False,
    )


@contextlib.contextmanager
def _progress(enabled: bool, total: int, console: Console) -> Iterator[Callable[[str], None]]:
    counts = {"passed": 0, "failed": 0, "error": 0}
    with tally_progress(console, enabled=enabled) as bar:
        task = bar.add_task("scenarios", total=total, tally="")

        def advance(status: str) -> None:
            counts[status] = counts.get(status, 0) + 1
            tally = (
                f"[green]{counts['passed']} passed[/] [red]{counts['failed']} failed[/] "
                f"[yellow]{counts['error']} errored[/]"
            )
            bar.update(task, advance=1, tally=tally)

        yield advance


def run_campaign(
    campaign: Campaign, settings: RunSettings, console: Console | None = None
) -> Outcome:
    """Run every case not already done; write the manifest, the results and the reports."""
    console = console or Console(stderr=True)
    out = settings.out
    (out / "cases").mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    info = manifest(campaign, settings, utc_now())
    write_json(out / "campaign.json", info)
    outcome = Outcome(out)
    criteria = [c.model_dump(mode="json") for c in campaign.spec.criteria]
    jobs = []
    for case in campaign.cases:
        mode = case.run_mode(settings.mode)
        config = case_configuration(info, criteria, case)
        if not settings.force and (prev := previous_result(out, case, mode, config)):
            outcome.results[case.id] = prev
            outcome.skipped.append(case.id)
            continue
        (out / "cases" / case.id / "attempts").unlink(missing_ok=True)
        jobs.append(
            {
                "case": case.to_json(),
                "criteria": criteria,
                "out": str(out.resolve()),
                "site": str(campaign.site_path.absolute()),
                "controller": str(campaign.controller_path) if campaign.controller_path else None,
                "mode": mode,
                "rate": _rate(campaign, settings),
                "configuration": config,
                "audit_key": info["audit_key"],  # the worker must sign with it (runner)
            }
        )
    if outcome.skipped:
        console.print(
            f"{len(outcome.skipped)} case(s) already done in {out}: skipped (--force reruns them)"
        )
    retries = campaign.spec.retries
    with _progress(settings.progress, len(jobs), console) as advance:

        def on_result(result: dict[str, Any]) -> None:
            outcome.results[result["id"]] = result
            advance(result.get("status", "error"))

        if jobs:
            if settings.executor == "dask":
                _run_dask(jobs, settings, retries, on_result)
            else:
                _run_pool(jobs, max(1, settings.workers), retries, on_result)
    outcome.wall_time_s = time.perf_counter() - t0
    info["ended"] = utc_now()
    info["wall_time_s"] = outcome.wall_time_s
    info["skipped"] = outcome.skipped
    write_json(out / "campaign.json", info)
    return outcome
