"""One campaign case, run to its end in a worker: the rig, the runtime, the recording, verdicts.

Both modes run the same HIL rig (true plant, virtual PLC, faults) and the same edge runtime
(:func:`controller.runtime.wiring.run_site`: supervisor, estimator, MPC, safety, audit trail) on one
case's files; they differ only in the port and the clock:

* ``fast``: a :class:`~controller.clock.SteppedClock` and the in-memory PLC image
  (:class:`~hil.servers.memory.MemoryPlcServer`). The driver scans the PLC at the plant step,
  lets the supervisor finish whatever is due at that instant, then advances the clock: fully
  deterministic, as fast as the solver allows;
* ``hil``: the site's own protocol (Modbus TCP or OPC UA) on a free loopback port, with the
  rig scanning on a :class:`~controller.clock.ScaledClock`.

Workers get a case as plain data (:meth:`Case.to_json`) and build everything themselves (do-mpc
objects cannot be pickled). The case's directory receives ``site.yaml`` and ``scenario.yaml``
(the exact files run), ``audit.db`` (every write, audited before it was sent),
``trajectory.parquet`` (one row per PLC scan), ``cycles.parquet`` (one row per controller
cycle), and last ``result.json`` (status, KPIs, verdicts): a case with a ``result.json`` is
done.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import math
import os
import time
import traceback
from collections.abc import Iterable, Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import yaml

from controller.clock import Clock, Gate, ScaledClock, SteppedClock
from controller.configfile import read_yaml, resolve
from controller.errors import PortConnectError
from controller.jsonfile import write_json
from controller.ports.base import Port, Snapshot, WriteReport
from controller.runtime.site import Site, port_for_site
from controller.runtime.supervisor import CycleView, Mode
from controller.runtime.wiring import RunOptions, run_site
from hil.campaign.criteria import (
    Recording,
    control_losses,
    judge_all,
    longest_failed_run,
    plc_fallbacks,
)
from hil.campaign.spec import Case, Criterion
from hil.net import free_port
from hil.rig import HilRig
from hil.servers.base import PlcServer
from hil.servers.memory import MemoryPlcServer
from hil.site import hil_section, load_hil_site

log = logging.getLogger("pharmatwin.hil.campaign")

#: test hook: "<case id>:<marker file>" makes the worker running that case die once
CHAOS_ENV = "PHARMATWIN_CHAOS_KILL_ONCE"

LOOPBACK = "127.0.0.1"


def utc_now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


# ---------------------------------------------------------------------- the case's files
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
    scenario.write_text(yaml.safe_dump(case.scenario, sort_keys=False), encoding="utf-8")
    raw = read_yaml(site_path)
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
    conn = raw["connection"]
    security = conn.get("opcua", {}).get("security", {})
    for key in ("certificate", "private_key"):
        if security.get(key):
            security[key] = _absolute(site_path, security[key])
    if security.get("trust_list"):
        security["trust_list"] = [_absolute(site_path, p) for p in security["trust_list"]]
    forecast = raw.get("forecast") or {}
    if forecast.get("local_recipe"):
        forecast["local_recipe"] = _absolute(site_path, forecast["local_recipe"])
    conn["host"] = LOOPBACK
    if mode == "hil":
        conn["port"] = free_port()
    out = case_dir / "site.yaml"
    out.write_text(yaml.safe_dump(raw, sort_keys=False), encoding="utf-8")
    return out


# ---------------------------------------------------------------------- recording
class RecordingPort(Port):
    """Wraps the runtime's port: records every setpoint it is asked to send (before the
    PLC can refuse it), and can be severed, as when the controller's process dies."""

    def __init__(self, inner: Port, site: Site, clock: Clock, rec: Recording) -> None:
        self.inner, self.clock, self.rec = inner, clock, rec
        tm = site.tags
        self.inputs = {tag: i for i in site.model.input_names if (tag := tm.setpoint_tag(i))}
        self.severed = False

    async def connect(self) -> None:
        if self.severed:
            raise PortConnectError("the controller was lost")
        await self.inner.connect()

    async def close(self) -> None:
        await self.inner.close()

    async def read(self, tags: Iterable[str]) -> Snapshot:
        if self.severed:
            raise PortConnectError("the controller was lost")
        return await self.inner.read(tags)

    async def write(self, values: Mapping[str, float]) -> WriteReport:
        if self.severed:
            raise PortConnectError("the controller was lost")
        sent = {self.inputs[t]: float(v) for t, v in values.items() if t in self.inputs}
        if sent:
            self.rec.sent.append((self.clock.now() / self.rec.unit_s, sent))
        return await self.inner.write(values)


class Recorder:
    """Collects the trajectory (every PLC scan) and the cycles (every controller cycle)."""

    def __init__(self, site: Site, unit_s: float) -> None:
        self.rec = Recording(unit_s=unit_s, time_unit=site.model.time_unit)
        m = site.model
        names = (*m.all_variables, *m.expression_names, *m.parameter_names)
        self.rec.units = {n: m.unit_of(n) for n in names if m.unit_of(n)}
        hil = hil_section(site)
        if hil is not None:
            self.rec.heartbeat_timeout_s = hil.plc.heartbeat_timeout
        self.inputs = site.model.input_names
        # true values of what the twin estimates (drift and maintenance are judged on them)
        self.tracked = site.controller.estimator.parameters
        self._last_sent: dict[str, float] = {}

    def scan(self, rig: HilRig) -> None:
        truth = rig.truth
        measured, bad = rig.measured
        row: dict[str, Any] = {"t": truth.t}
        row.update({f"x.{k}": v for k, v in truth.states.items()})
        row.update({f"z.{k}": v for k, v in truth.algebraic.items()})
        row.update({f"e.{k}": v for k, v in truth.expressions.items()})
        row.update({f"y.{k}": (math.nan if k in bad else v) for k, v in measured.items()})
        row.update({f"u.{k}": v for k, v in rig.applied.items()})
        if self.tracked:
            params = rig.plant.parameters
            row.update({f"p.{k}": params[k] for k in self.tracked})
        if self.rec.sent:
            self._last_sent.update(self.rec.sent[-1][1])
        row.update({f"sp.{k}": self._last_sent.get(k, math.nan) for k in self.inputs})
        row["plc.mode"] = rig.vplc.mode.value
        row["plc.alarm"] = bool(rig.vplc.alarm)
        self.rec.rows.append(row)
        self.rec.finished_at = rig.plant.finished_at
        fault = rig.plant_fault
        if fault is not None and not self.rec.events:
            self.rec.events.append({"kind": "plant.validity"} | fault.as_dict())

    def cycle(self, view: CycleView) -> None:
        d = view.decision
        row: dict[str, Any] = {
            "t": view.t / self.rec.unit_s,
            "cycle": view.cycle,
            "state": view.state.value,
            "solve.status": d.status.value if d is not None else "none",
            "solve.return_status": d.return_status if d is not None else "",
            "solve.time_s": d.solve_time_s if d is not None else math.nan,
            "wrote": bool(view.written),
            "problems": "; ".join(view.problems),
        }
        if view.estimate is not None:
            row.update({f"xhat.{k}": v for k, v in view.estimate.states.items()})
            row.update({f"phat.{k}": view.estimate.parameters[k] for k in self.tracked})
        row.update({f"mon.{k}": v for k, v in view.monitor.items()})
        for ev in view.events:
            if ev.kind == "drift.alarm":
                info = ev.detail
                alarm = (row["t"], ev.key, info["signal"], info["side"], ev.message)
                self.rec.alarms.append(alarm)
        if view.outcome is not None:
            row.update({f"cmd.{k}": v for k, v in view.outcome.setpoints.items()})
        self.rec.cycles.append(row)


def _table(
    rows: list[dict[str, Any]], time_unit: str, units: Mapping[str, str] | None = None
) -> pa.Table:
    """The rows as a table; the metadata hold the time unit and each model name's unit (the
    reports label their axes with them)."""
    names: dict[str, None] = {}
    for r in rows:
        names.update(dict.fromkeys(r))
    table = pa.table({n: [r.get(n) for r in rows] for n in names})
    meta = {"time_unit": time_unit, "units": json.dumps(dict(units or {}))}
    return table.replace_schema_metadata(meta)


# ---------------------------------------------------------------------- drivers
class DrivenClock(SteppedClock):
    """A stepped clock that tells its driver when a task parks on it (no polling)."""

    def __init__(self) -> None:
        super().__init__()
        self.parked = asyncio.Event()

    async def sleep_until(self, t: float) -> None:
        if t > self.now():
            self.parked.set()  # the sleeper registers before anything else runs
        await super().sleep_until(t)


async def _settle(clock: DrivenClock, task: asyncio.Task[Any]) -> None:
    """Let the runtime finish all it has to do at this instant (until it sleeps on the clock)."""
    while clock.waiting == 0 and not task.done():
        clock.parked.clear()
        parked = asyncio.ensure_future(clock.parked.wait())
        await asyncio.wait({parked, task}, return_when=asyncio.FIRST_COMPLETED)
        parked.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await parked


async def _lose(task: asyncio.Task[Any], port: RecordingPort) -> None:
    """The controller's process dies: its link goes first, so nothing more reaches the PLC."""
    port.severed = True
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task


async def _drive_stepped(
    rig: HilRig,
    clock: DrivenClock,
    task: asyncio.Task[Any],
    port: RecordingPort,
    loss_at: float | None,
    duration: float,
) -> None:
    scan_s = rig.plant_step * rig.unit_s
    end = duration - 1e-9
    k = 0
    while True:
        await rig.scan()
        if rig.plant_fault is not None:
            return
        if rig.plant.t >= end or (rig.scenario.stop_when_finished and rig.plant.finished()):
            return
        if loss_at is not None and not task.done() and rig.plant.t >= loss_at - 1e-9:
            await _lose(task, port)
        if not task.done():
            await _settle(clock, task)
        elif task.cancelled() is False and task.exception() is not None:
            raise task.exception()  # type: ignore[misc]
        k += 1
        clock.advance_to(k * scan_s)


async def _drive_scaled(
    rig: HilRig,
    clock: Clock,
    task: asyncio.Task[Any],
    port: RecordingPort,
    loss_at: float | None,
    duration: float,
) -> None:
    stop = asyncio.Event()

    async def lose_later() -> None:
        assert loss_at is not None
        await clock.sleep_until(loss_at * rig.unit_s)
        await _lose(task, port)

    loser = asyncio.ensure_future(lose_later()) if loss_at is not None else None
    runner = asyncio.ensure_future(rig.run(stop, duration_s=duration * rig.unit_s))
    try:
        waiting: set[asyncio.Future[Any]] = {runner, task}
        done, _ = await asyncio.wait(waiting, return_when=asyncio.FIRST_COMPLETED)
        if task in done and not task.cancelled() and task.exception() is not None:
            raise task.exception()  # type: ignore[misc]
        if task in done:  # lost: the rig goes on to the end of the run
            await runner
    finally:
        stop.set()
        with contextlib.suppress(asyncio.CancelledError):
            await runner
        if loser is not None:
            loser.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await loser


async def _servers(site: Site, mode: str, clock: Clock, case_dir: Path) -> list[PlcServer]:
    if mode == "fast":
        return [MemoryPlcServer(site.tags, clock)]
    if site.connection.protocol == "modbus":
        from hil.servers.modbus import modbus_server_for_site

        return [modbus_server_for_site(site, port=site.connection.port, host=LOOPBACK)]
    from hil.servers.opcua import opcua_server_for_site

    return [
        await opcua_server_for_site(
            site, port=site.connection.port, host=LOOPBACK, state_dir=case_dir / "hil-state"
        )
    ]


async def _first_cycle(rec: Recording, task: asyncio.Task[Any], timeout_s: float = 60.0) -> None:
    """Wait (wall time) until the runtime has completed a cycle, or has ended."""
    deadline = time.monotonic() + timeout_s
    while not rec.cycles and not task.done() and time.monotonic() < deadline:
        await asyncio.sleep(0.01)


async def execute(
    site_path: Path, case: Case, case_dir: Path, mode: str, rate: float
) -> tuple[Recording, dict[str, Any]]:
    """Run one case's files to the end; return the recording and the runtime's counters."""
    site = load_hil_site(site_path)
    gate = Gate()
    clock: Clock = DrivenClock() if mode == "fast" else ScaledClock(rate, monotonic=gate)
    servers = await _servers(site, mode, clock, case_dir)
    unit_s = site.model.seconds_per_unit
    recorder = Recorder(site, unit_s)
    rig = HilRig(site, clock, servers, on_scan=recorder.scan)
    first = servers[0]
    inner: Port = first.port() if isinstance(first, MemoryPlcServer) else port_for_site(site, clock)
    port = RecordingPort(inner, site, clock, recorder.rec)
    recorder.rec.loss_at = case.controller_loss_at
    opts = RunOptions(
        mode=Mode.CLOSED_LOOP,
        rate=rate if mode == "hil" else 1.0,
        audit_path=case_dir / "audit.db",
        historian_path=case_dir / "history.db",  # cycles and the twin's events, as on site
    )
    stop = asyncio.Event()
    counters: dict[str, Any] = {}
    try:
        for server in servers:
            await server.start()
        if not isinstance(clock, DrivenClock):
            await rig.scan()  # the PLC image at t = 0, for the controller's first read
        task = asyncio.ensure_future(
            run_site(site, opts, port=port, clock=clock, stop=stop, observer=recorder.cycle)
        )
        try:
            if isinstance(clock, DrivenClock):
                await _drive_stepped(
                    rig, clock, task, port, case.controller_loss_at, rig.scenario.duration
                )
            else:
                await _first_cycle(recorder.rec, task)
                gate.open()
                await _drive_scaled(
                    rig, clock, task, port, case.controller_loss_at, rig.scenario.duration
                )
        finally:
            stop.set()
            if not task.done() and isinstance(clock, DrivenClock):
                await _settle(clock, task)
            with contextlib.suppress(asyncio.CancelledError):
                sup = await task
                counters = {k: v for k, v in vars(sup.counters).items()}
    finally:
        for server in servers:
            await server.close()
    return recorder.rec, counters


# ---------------------------------------------------------------------- the worker's entry
def kpis(rec: Recording, scenario: Mapping[str, Any]) -> dict[str, Any]:
    """Deterministic figures of a run (no wall times): the same seed gives the same KPIs."""
    out: dict[str, Any] = {"scans": len(rec.rows), "cycles": len(rec.cycles)}
    if rec.rows:
        last = rec.rows[-1]
        out["t_end"] = last["t"]
        out["finished_at"] = rec.finished_at  # exact (not rounded up to the next scan)
        for name in scenario.get("cqas", ()):
            col = rec.find(name)
            if col is not None:
                out[f"final.{name}"] = last.get(col)
        for chk in scenario.get("checks", ()):
            col = rec.find(chk["expression"])
            if col is not None:
                values = [r[col] for r in rec.rows if math.isfinite(r.get(col, math.nan))]
                if values:
                    out[f"max.{chk['expression']}"] = max(values)
                    out[f"min.{chk['expression']}"] = min(values)
    statuses = [c["solve.status"] for c in rec.cycles]
    out["solves.failed"] = sum(s in ("failed", "invalid") for s in statuses)
    out["solves.longest_failed_run"] = longest_failed_run(rec.cycles)
    out["setpoint_writes"] = len(rec.sent)
    out["plc.fallbacks"] = plc_fallbacks(rec.rows)
    out["mpc.control_losses"] = control_losses(rec.rows)
    out["plc.active_scans"] = sum(r.get("plc.mode") == "active" for r in rec.rows)
    return out


class PlantFaultError(RuntimeError):
    """The case's true plant left its validity domain: its verdicts would judge fiction."""


def _chaos(case: Case) -> None:
    spec = os.environ.get(CHAOS_ENV, "")
    if not spec:
        return
    case_id, _, marker = spec.partition(":")
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
    case_dir.mkdir(parents=True, exist_ok=True)
    (case_dir / "result.json").unlink(missing_ok=True)
    for stale in ("audit.db", "audit.db-wal", "audit.db-shm", "audit.db.anchor"):
        (case_dir / stale).unlink(missing_ok=True)
    spec = case.to_json() | {"mode": job["mode"], "digest": case.digest}
    (case_dir / "spec.json").write_text(json.dumps(spec, indent=2), encoding="utf-8")
    counter = case_dir / "attempts"  # cleared by the campaign before it submits the case
    attempt = int(counter.read_text() or 0) + 1 if counter.exists() else 1
    counter.write_text(str(attempt))
    started, t0 = utc_now(), time.perf_counter()
    result: dict[str, Any] = {"id": case.id, "attempts": attempt}
    handler = logging.FileHandler(case_dir / "run.log", mode="w", encoding="utf-8")
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger("pharmatwin")
    root.addHandler(handler)
    root.setLevel(logging.INFO)
    propagate, root.propagate = root.propagate, False
    try:
        _chaos(case)
        controller = Path(job["controller"]) if job.get("controller") else None
        site_file = write_case_files(case, case_dir, Path(job["site"]), controller, job["mode"])
        rec, counters = asyncio.run(
            execute(site_file, case, case_dir, job["mode"], float(job["rate"]))
        )
        unit = rec.time_unit
        pq.write_table(_table(rec.rows, unit, rec.units), case_dir / "trajectory.parquet")
        pq.write_table(_table(rec.cycles, unit, rec.units), case_dir / "cycles.parquet")
        if rec.events:
            write_json(case_dir / "events.json", rec.events)
            result["events"] = rec.events
        plant_faults = [e for e in rec.events if e["kind"] == "plant.validity"]
        if plant_faults:
            raise PlantFaultError(plant_faults[0]["detail"])
        if not rec.cycles:
            raise RuntimeError(
                "the controller never completed a cycle (see run.log): nothing to judge"
            )
        verdicts = judge_all(criteria, rec)
        result |= {
            "status": "passed" if all(v.passed for v in verdicts) else "failed",
            "error": None,
            "kpis": kpis(rec, case.scenario),
            "counters": counters,
            "verdicts": [v.to_json() for v in verdicts],
        }
    except Exception as exc:  # a case that cannot run is an error, never a crash of the campaign
        log.exception("case %s errored", case.id)
        result |= {
            "status": "error",
            "error": f"{type(exc).__name__}: {exc}",
            "traceback": traceback.format_exc(limit=20),
            "kpis": {},
            "verdicts": [],
        }
    finally:
        root.removeHandler(handler)
        root.propagate = propagate
        handler.close()
    result |= {
        "started": started,
        "ended": utc_now(),
        "wall_time_s": time.perf_counter() - t0,
    }
    write_json(case_dir / "result.json", result)
    return result
