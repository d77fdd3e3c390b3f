"""What a campaign case records: every setpoint sent, every PLC scan, every controller cycle.

:class:`RecordingPort` wraps the runtime's port and notes each setpoint the controller asks to
send (before the PLC can refuse it); it can be severed, as when the controller's process dies.
:class:`Recorder` is the rig's scan hook and the supervisor's cycle observer: it fills one
:class:`~hil.campaign.criteria.Recording` (trajectory rows, cycles, drift alarms, plant events).
:func:`recording_table` turns rows into a Parquet-ready table and :func:`kpis` condenses a
recording into the deterministic figures of ``result.json``. Times are in the model's unit.

A row's ``t`` is the true plant's time; ``plc.t`` is the process time of the PLC scan (later by
up to one plant step in hil mode). A cycle's ``t`` is its scheduled time; ``t_done`` is when it
had ended (the runtime's clock, when the recorder has it): delays are judged on those.

Inputs have two columns: ``u.<input>`` is the setpoint the PLC applies (before actuator
faults), ``i.<input>`` what the true plant received (``rig.truth.inputs``: after actuator
faults and disturbances, at the end of its last step, ``t``). The rig's fault events go into
``Recording.faults`` as they happen; :func:`never_active` names the scheduled faults that never
acted before the batch ended, and a planned controller loss that never happened
(:func:`loss_never_happened`): the case is then an error, not a pass.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import pyarrow as pa

from controller.binding import Binding
from controller.clock import Clock
from controller.errors import PortConnectError, PortError
from controller.ports.base import Port, Snapshot, WriteReport
from controller.runtime.site import Site
from controller.runtime.supervisor import CycleView
from controller.timebase import TimeBase
from hil.campaign.criteria import (
    Alarm,
    Recording,
    control_losses,
    failed_solve,
    longest_failed_run,
    plc_fallbacks,
)
from hil.faults import FaultEvent
from hil.rig import HilRig
from hil.site import hil_section


class RecordingPort(Port):
    """Wraps the runtime's port: records every setpoint it is asked to send (before the
    PLC can refuse it), and can be severed, as when the controller's process dies."""

    def __init__(self, inner: Port, site: Site, clock: Clock, rec: Recording) -> None:
        self.inner, self.clock, self.rec = inner, clock, rec
        setpoints = Binding.of(site.tags, site.model).setpoint_tags()
        self.inputs = {tag: i for i, tag in setpoints.items()}
        self.severed = False
        self.batches_writes = inner.batches_writes  # the runtime batches as it would without us

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
        self._note(values)
        return await self.inner.write(values)

    async def write_each(
        self, groups: Sequence[Mapping[str, float]]
    ) -> list[WriteReport | PortError]:
        if self.severed:
            return [PortConnectError("the controller was lost") for _ in groups]
        for group in groups:
            self._note(group)
        return await self.inner.write_each(groups)

    def _note(self, values: Mapping[str, float]) -> None:
        """The setpoints among ``values``, as asked (before the PLC can refuse them)."""
        sent = {self.inputs[t]: float(v) for t, v in values.items() if t in self.inputs}
        if sent:
            self.rec.sent.append((self.rec.timebase.model_time(self.clock.now()), sent))


class _Columns(dict[str, str]):
    """Name -> ``prefix + name``, each made once (a recording row is built at every scan)."""

    def __init__(self, prefix: str) -> None:
        super().__init__()
        self.prefix = prefix

    def __missing__(self, name: str) -> str:
        key = self[name] = self.prefix + name
        return key


class Recorder:
    """Collects the trajectory (every PLC scan) and the cycles (every controller cycle)."""

    def __init__(self, site: Site, clock: Clock | None = None) -> None:
        """``clock`` (the runtime's) stamps when each cycle ended; without it that time, and
        so the latest time of a drift alarm, is not known (NaN)."""
        self.rec = Recording(timebase=TimeBase.of(site.model))
        self.clock = clock
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
        # the row keys of the fixed name lists, built once
        self._p_keys = [(f"p.{k}", k) for k in self.tracked]
        self._sp_keys = [(f"sp.{k}", k) for k in self.inputs]
        self._x, self._z, self._e = _Columns("x."), _Columns("z."), _Columns("e.")
        self._y, self._u, self._i = _Columns("y."), _Columns("u."), _Columns("i.")
        self._fault_events = 0  # how many of the rig's fault events are recorded
        self._schedule_seen = False

    def scan(self, rig: HilRig) -> None:
        truth = rig.truth
        measured, bad = rig.measured
        self.rec.t_lag = rig.plant_step
        row: dict[str, Any] = {"t": truth.t, "plc.t": rig.scan_t}
        # every PLC scan (several per controller cycle): the column names come from a cache
        x, z, e, y, u = self._x, self._z, self._e, self._y, self._u
        row.update(zip(map(x.__getitem__, truth.states), truth.states.values(), strict=True))
        row.update(zip(map(z.__getitem__, truth.algebraic), truth.algebraic.values(), strict=True))
        row.update(
            zip(map(e.__getitem__, truth.expressions), truth.expressions.values(), strict=True)
        )
        if bad:
            row.update({y[k]: (math.nan if k in bad else v) for k, v in measured.items()})
        else:
            row.update(zip(map(y.__getitem__, measured), measured.values(), strict=True))
        applied = rig.applied
        row.update(zip(map(u.__getitem__, applied), applied.values(), strict=True))
        received = truth.inputs  # after actuator faults and disturbances
        row.update(zip(map(self._i.__getitem__, received), received.values(), strict=True))
        if self._p_keys:
            params = rig.plant.parameters
            row.update({key: params[k] for key, k in self._p_keys})
        if self.rec.sent:
            self._last_sent.update(self.rec.sent[-1][1])
        last = self._last_sent
        row.update({key: last.get(k, math.nan) for key, k in self._sp_keys})
        row["plc.mode"] = rig.vplc.mode.value
        row["plc.alarm"] = bool(rig.vplc.alarm)
        self.rec.rows.append(row)
        self._faults(rig)
        self.rec.finished_at = rig.plant.finished_at
        fault = rig.plant_fault
        if fault is not None and not self.rec.events:
            self.rec.events.append({"kind": "plant.validity"} | fault.as_dict())

    def _faults(self, rig: HilRig) -> None:
        """The scenario's schedule (once) and the rig's fault events not yet recorded."""
        if not self._schedule_seen:
            self._schedule_seen = True
            scheduled = rig.scenario.faults
            self.rec.scheduled_faults = [f.model_dump(mode="json") for f in scheduled]
        events = rig.log.fault_events
        if len(events) > self._fault_events:
            self.rec.faults += [fault_event(ev) for ev in events[self._fault_events :]]
            self._fault_events = len(events)

    def cycle(self, view: CycleView) -> None:
        d = view.decision
        done = math.nan if self.clock is None else self.rec.timebase.model_time(self.clock.now())
        row: dict[str, Any] = {
            "t": self.rec.timebase.model_time(view.t),
            "t_done": done,
            "cycle": view.cycle,
            "state": view.state.value,
            "solve.status": d.status.value if d is not None else "none",
            "solve.return_status": d.return_status if d is not None else "",
            "solve.time_s": d.solve_time_s if d is not None else math.nan,
            "solve.failed": view.solve_failed,
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
                alarm = Alarm(row["t"], done, ev.key, info["signal"], info["side"], ev.message)
                self.rec.alarms.append(alarm)
        if view.outcome is not None:
            row.update({f"cmd.{k}": v for k, v in view.outcome.setpoints.items()})
        self.rec.cycles.append(row)


def recording_table(
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


def fault_event(ev: FaultEvent) -> dict[str, Any]:
    """A fault event as ``Recording.faults`` and ``result.json`` hold it (``t`` in model time)."""
    return {
        "t": ev.t,
        "kind": ev.kind,
        "target": ev.target,
        "action": ev.action,
        "source": ev.source,
        "detail": ev.detail,
    }


def batch_end(rec: Recording) -> float | None:
    """When the batch ended [time unit]: its natural end if reached, else the last scan's
    plant time (None: nothing recorded)."""
    if rec.finished_at is not None:
        return rec.finished_at
    return float(rec.rows[-1]["t"]) if rec.rows else None


def never_active(rec: Recording) -> list[str]:
    """One sentence per scheduled fault that never became active before the batch ended, and
    one for a planned controller loss that never happened (:func:`loss_never_happened`).

    Active: the rig reported its ``"start"`` and it started before the batch's end
    (:func:`batch_end`); a fault starting at or after it acted on no step of the batch."""
    end = batch_end(rec)
    started: dict[tuple[str, str, float], int] = {}
    for ev in rec.faults:
        if ev["action"] == "start" and ev["source"] == "schedule":
            key = (ev["kind"], ev["target"], float(ev["t"]))
            started[key] = started.get(key, 0) + 1
    unit = rec.time_unit
    out = []
    for f in rec.scheduled_faults:
        key = (f["kind"], f["target"], float(f["start"]))
        if started.get(key, 0) > 0 and end is not None and key[2] < end:
            started[key] -= 1
            continue
        ended = "nothing was recorded" if end is None else f"the batch ended at t={end:g} {unit}"
        out.append(
            f"fault {f['kind']} on {f['target']} scheduled at t={f['start']:g} {unit} never "
            f"became active: {ended}"
        )
    loss = loss_never_happened(rec)
    return [*out, loss] if loss is not None else out


def loss_never_happened(rec: Recording) -> str | None:
    """Why the planned controller loss (``loss_at``) never happened, or None (none was
    planned, or it happened): the runtime was never lost (``lost_at`` is None: the batch
    ended first) or it was lost only at or after the batch's end (:func:`batch_end`)."""
    if rec.loss_at is None:
        return None
    end = batch_end(rec)
    if rec.lost_at is not None and end is not None and rec.lost_at < end:
        return None
    unit = rec.time_unit
    ended = "nothing was recorded" if end is None else f"the batch ended at t={end:g} {unit}"
    return (
        f"controller loss planned at t={rec.loss_at:g} {unit} never happened: {ended} "
        "before the controller was lost"
    )


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
    out["solves.failed"] = sum(failed_solve(c) for c in rec.cycles)
    out["solves.longest_failed_run"] = longest_failed_run(rec.cycles)
    out["setpoint_writes"] = len(rec.sent)
    out["plc.fallbacks"] = plc_fallbacks(rec.rows)
    out["mpc.control_losses"] = control_losses(rec.rows)
    out["plc.active_scans"] = sum(r.get("plc.mode") == "active" for r in rec.rows)
    return out
