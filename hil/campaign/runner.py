"""One campaign case, run to its end in a worker: its files, the run, the verdicts.

Workers get a case as plain data (:meth:`~hil.campaign.cases.Case.to_json`) and build
everything themselves (do-mpc objects cannot be pickled). :func:`run_case` writes the case's
``site.yaml`` and ``scenario.yaml`` (the exact files run, :func:`write_case_files`), runs them
(:func:`hil.campaign.drive.execute`: rig, runtime, recording), and the case's directory
receives ``audit.db`` (every write, audited before it was sent), ``history.db`` (the runtime's
historian; in fast mode never fsynced, see :data:`hil.campaign.drive.HISTORIAN_SYNCHRONOUS`),
``trajectory.parquet`` (one row per PLC scan), ``cycles.parquet`` (one row per controller
cycle), and last
``result.json`` (status, KPIs, verdicts, and ``faults``: every fault event of the rig, with its
time): a case with a ``result.json`` is done. A case whose scheduled fault never became active
before the batch ended (:func:`hil.campaign.recorder.never_active`: it started after the
batch's natural end) is an error, never a pass: it did not test what it says. Its audit
trail was made durable (checkpointed, fsynced) when the run closed it, before ``result.json``
was written; in fast mode its commits before that are not fsynced (see
:data:`hil.campaign.drive.AUDIT_SYNCHRONOUS`), and a case that dies first has no
``result.json`` and runs again, from a folder cleared of its audit trail and historian.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import time
import traceback
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
import yaml

from controller.configfile import read_yaml, resolve
from controller.core.jit import shared_solvers
from controller.jsonfile import write_json
from hil.campaign.cases import Case
from hil.campaign.checks import Criterion
from hil.campaign.criteria import Recording, judge_all
from hil.campaign.drive import LOOPBACK, execute
from hil.campaign.evidence_audit import run_audit_key
from hil.campaign.recorder import kpis, never_active, recording_table
from hil.campaign.results import utc_now
from hil.net import free_port

log = logging.getLogger("pharmatwin.hil.campaign")

#: test hook: "<case id>:<marker file>" makes the worker running that case die once (the
#: marker says it did); "<case id>:always" makes every worker running it die
CHAOS_ENV = "PHARMATWIN_CHAOS_KILL_ONCE"

#: what an attempt that did not finish leaves behind, removed before the case runs again: its
#: audit trail (and anchor) and its historian, so a case's files hold one run
STALE_FILES = (
    "audit.db",
    "audit.db-wal",
    "audit.db-shm",
    "audit.db.anchor",
    "history.db",
    "history.db-wal",
    "history.db-shm",
)
_DUMPER: Any = getattr(yaml, "CSafeDumper", yaml.SafeDumper)


def _absolute(base: Path, ref: str | None) -> str | None:
    return None if ref is None else str(resolve(base, ref))


def write_case_files(
    case: Case,
    case_dir: Path,
    site_path: Path,
    controller_path: Path | None,
    mode: str,
) -> Path:
    """Write the case's ``scenario.yaml`` and ``site.yaml`` (absolute references); return
    the site file. In hil mode the site listens on a free loopback port."""
    case_dir.mkdir(parents=True, exist_ok=True)
    scenario = case_dir / "scenario.yaml"
    scenario.write_text(_dump(case.scenario), encoding="utf-8")
    raw = read_yaml(site_path)
    _site_references(raw, site_path, controller_path, scenario, case_dir)
    conn = raw["connection"]
    conn["host"] = LOOPBACK
    if mode == "hil":
        conn["port"] = free_port()
    out = case_dir / "site.yaml"
    out.write_text(_dump(raw), encoding="utf-8")
    return out


def _dump(data: dict[str, Any]) -> str:
    """``data`` as YAML, keys in their order (libyaml's emitter when there: the same text as
    ``yaml.safe_dump``, about 4x faster)."""
    return yaml.dump(data, Dumper=_DUMPER, sort_keys=False, allow_unicode=False)


def _site_references(
    raw: dict[str, Any],
    site_path: Path,
    controller_path: Path | None,
    scenario: Path,
    case_dir: Path,
) -> None:
    """Make every file the site file ``raw`` names absolute (in place), point its HIL section
    at the case's scenario and state directory, and at ``controller_path`` if given."""
    for key in ("plant", "controller", "tags"):
        raw[key] = _absolute(site_path, raw[key])
    if controller_path is not None:
        raw["controller"] = str(controller_path.resolve())
    raw["name"] = f"{raw['name']}"
    hil = raw["hil"]
    hil["scenario"] = str(scenario.resolve())
    hil["state_dir"] = str((case_dir / "hil-state").resolve())
    for key in ("ca_certificate", "ca_private_key"):
        if hil.get(key):
            hil[key] = _absolute(site_path, hil[key])
    security = raw["connection"].get("opcua", {}).get("security", {})
    for key in ("certificate", "private_key"):
        if security.get(key):
            security[key] = _absolute(site_path, security[key])
    if security.get("trust_list"):
        security["trust_list"] = [_absolute(site_path, p) for p in security["trust_list"]]
    forecast = raw.get("forecast") or {}
    if forecast.get("local_recipe"):
        forecast["local_recipe"] = _absolute(site_path, forecast["local_recipe"])


class CampaignKeyError(RuntimeError):
    """A worker signs audit trails with another key than the campaign records."""


class PlantFaultError(RuntimeError):
    """The case's true plant left its validity domain: its verdicts would judge fiction."""


def _chaos(case: Case) -> None:
    spec = os.environ.get(CHAOS_ENV, "")
    if not spec:
        return
    case_id, _, marker = spec.partition(":")
    if case_id == case.id and marker == "always":
        os._exit(17)
    if case_id == case.id and marker and not Path(marker).exists():
        Path(marker).write_text(f"killed worker pid {os.getpid()} running {case.id}\n")
        os._exit(17)  # a worker lost mid-run: no cleanup, no answer


def run_case(job: dict[str, Any]) -> dict[str, Any]:
    """Run one case (the unit of work sent to a worker); write and return its result.

    ``job``: ``case`` (:meth:`Case.to_json`), ``criteria`` (the campaign's criteria as
    dicts), ``out`` (the campaign's results directory), ``site``, ``controller`` (paths or
    None), ``mode`` and ``rate``. Attempts are counted in the case's ``attempts`` file, so a
    case rerun after its worker was lost says so, whichever executor reran it.
    """
    case = Case.from_json(job["case"])
    criteria = [Criterion.model_validate(c) for c in job["criteria"]]
    criteria = [c for c in criteria if c.id in case.criteria]
    case_dir = Path(job["out"]) / "cases" / case.id
    attempt = _start(case, case_dir, job["mode"], job.get("configuration"))
    started, t0, cpu0 = utc_now(), time.perf_counter(), time.process_time()
    result: dict[str, Any] = {"id": case.id, "attempts": attempt}
    if case.draw is not None:
        result["draw"] = case.draw  # a Monte Carlo case: its seed and drawn parameters
    # one case at a time in this thread, each with its own controller: the controllers of
    # the worker's cases share the solvers they load (controller.core.jit.shared_solvers)
    with _case_log(case_dir / "run.log"), shared_solvers():
        try:
            _chaos(case)
            _same_key(job)
            _run_and_judge(job, case, case_dir, criteria, result)
        except (
            Exception
        ) as exc:  # a case that cannot run is an error, never a crash of the campaign
            log.exception("case %s errored", case.id)
            result |= {
                "status": "error",
                "error": f"{type(exc).__name__}: {exc}",
                "traceback": traceback.format_exc(limit=20),
                "kpis": {},
                "verdicts": [],
            }
    result |= {
        "started": started,
        "ended": utc_now(),
        "wall_time_s": time.perf_counter() - t0,
        "cpu_time_s": time.process_time() - cpu0,  # the worker process's, all its threads
    }
    write_json(case_dir / "result.json", result)
    return result


def _same_key(job: dict[str, Any]) -> None:
    """Raise unless this worker signs audit trails with the key the campaign records (a
    worker of an existing Dask cluster has its own environment: its unsigned trails were
    then reported as replaced)."""
    if "audit_key" not in job:
        return
    mine, theirs = run_audit_key(), job["audit_key"]
    if mine != theirs:
        raise CampaignKeyError(
            f"this worker signs audit trails with {_key(mine)} ($PHARMATWIN_AUDIT_KEY in its "
            f"environment), the campaign with {_key(theirs)} (campaign.json's audit_key): give "
            "every worker the campaign's key file, or none to all"
        )


def _key(key_id: str | None) -> str:
    return f"key {key_id}" if key_id else "no key"


def run_cases(jobs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Several cases in turn (:func:`run_case` each): one task of a Dask worker, so that the
    scheduler, the worker and the client handle a task per few cases, not per case. When the
    scheduler runs the task again after its worker was lost, a case that already finished in
    this campaign run is not run again: its result is read back (:func:`finished_result`)."""
    return [finished_result(job) or run_case(job) for job in jobs]


def finished_result(job: dict[str, Any]) -> dict[str, Any] | None:
    """The result of ``job``'s case if it finished in this campaign run, else None.

    The campaign removes a case's ``attempts`` file before it submits the case; a run
    removes ``result.json`` first (:func:`_start`), then counts the attempt, and writes
    ``result.json`` (atomically) last. Both files there: the case finished in this run."""
    case_dir = Path(job["out"]) / "cases" / job["case"]["id"]
    if not (case_dir / "attempts").exists():
        return None
    try:
        result = json.loads((case_dir / "result.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return result if isinstance(result, dict) and result.get("id") == job["case"]["id"] else None


def started(job: dict[str, Any]) -> bool:
    """``job``'s case was started in this campaign run (its ``attempts`` file is there)."""
    return (Path(job["out"]) / "cases" / job["case"]["id"] / "attempts").exists()


def _start(case: Case, case_dir: Path, mode: str, config: str | None = None) -> int:
    """Clear the case's previous result, audit trail and historian, write ``spec.json``, count
    the attempt."""
    case_dir.mkdir(parents=True, exist_ok=True)
    (case_dir / "result.json").unlink(missing_ok=True)
    for stale in STALE_FILES:
        (case_dir / stale).unlink(missing_ok=True)
    spec = case.to_json() | {"mode": mode, "digest": case.digest, "configuration": config}
    (case_dir / "spec.json").write_text(json.dumps(spec, indent=2), encoding="utf-8")
    counter = case_dir / "attempts"  # cleared by the campaign before it submits the case
    attempt = int(counter.read_text() or 0) + 1 if counter.exists() else 1
    counter.write_text(str(attempt))
    return attempt


@contextmanager
def _case_log(path: Path) -> Iterator[None]:
    """Send the ``pharmatwin`` loggers to the case's ``run.log`` (only there) meanwhile."""
    handler = logging.FileHandler(path, mode="w", encoding="utf-8")
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger("pharmatwin")
    root.addHandler(handler)
    root.setLevel(logging.INFO)
    propagate, root.propagate = root.propagate, False
    try:
        yield
    finally:
        root.removeHandler(handler)
        root.propagate = propagate
        handler.close()


def _run_and_judge(
    job: dict[str, Any],
    case: Case,
    case_dir: Path,
    criteria: list[Criterion],
    result: dict[str, Any],
) -> None:
    """Run the case's files, save the recording and judge it, into ``result``.

    Raises PlantFaultError when the true plant left its validity domain, RuntimeError when the
    controller never completed a cycle (nothing to judge in either case). A scheduled fault
    that never became active makes the case "error" (its verdicts and KPIs kept as evidence)."""
    controller = Path(job["controller"]) if job.get("controller") else None
    site_file = write_case_files(case, case_dir, Path(job["site"]), controller, job["mode"])
    rec, counters = asyncio.run(execute(site_file, case, case_dir, job["mode"], float(job["rate"])))
    _save(rec, case_dir)
    result["faults"] = rec.faults
    if rec.events:
        result["events"] = rec.events
    plant_faults = [e for e in rec.events if e["kind"] == "plant.validity"]
    if plant_faults:
        raise PlantFaultError(plant_faults[0]["detail"])
    if not rec.cycles:
        raise RuntimeError("the controller never completed a cycle (see run.log): nothing to judge")
    verdicts = judge_all(criteria, rec)
    inactive = never_active(rec)
    for sentence in inactive:
        log.error("case %s: %s", case.id, sentence)
    status = "passed" if all(v.passed for v in verdicts) else "failed"
    result |= {
        "status": "error" if inactive else status,
        "error": "; ".join(inactive) or None,
        "kpis": kpis(rec, case.scenario),
        "counters": counters,
        "verdicts": [v.to_json() for v in verdicts],
    }


def _save(rec: Recording, case_dir: Path) -> None:
    """The trajectory and the cycles as Parquet, and the plant's events (if any) as JSON."""
    unit = rec.time_unit
    pq.write_table(recording_table(rec.rows, unit, rec.units), case_dir / "trajectory.parquet")
    pq.write_table(recording_table(rec.cycles, unit, rec.units), case_dir / "cycles.parquet")
    if rec.events:
        write_json(case_dir / "events.json", rec.events)
