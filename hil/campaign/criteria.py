"""Judging a recorded run against the acceptance criteria of a campaign.

Pure functions over the recording: the PLC-scan trajectory (true plant, measurements, the
setpoints the PLC applied, the inputs the plant received, PLC mode), the controller's cycles,
every setpoint it sent and every fault event of the rig. Each criterion gives
a :class:`Verdict` with the value it was judged on and the limit, so a reviewer can see why.

Delays are judged from the process times at which things happened: a row's ``t`` is the true
plant's time, which in hil mode lags the scan by up to a plant step, so the PLC's own scan time
(``plc.t``), the time the controller was actually lost (``lost_at``) and the end of the cycle
that raised an alarm are recorded too. Where only a sampled time is known, a delay is judged on
its upper bound, and the detail gives both bounds.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from controller.timebase import TimeBase
from hil.campaign.checks import (
    ConsecutiveFailedSolves,
    ControlLosses,
    Criterion,
    DriftAlarm,
    Extremum,
    FallbackWithin,
    MaintenanceForecast,
    NoDriftAlarm,
    SetpointsWithinLimits,
    describe_check,
)

#: solve outcomes that count as a failed solve (bad data or a held cycle do not), in a
#: recording made before cycles carried ``solve.failed`` (the runtime's own count)
FAILED = frozenset({"failed", "invalid"})
TOLERANCE = 1e-9


@dataclass(frozen=True)
class Alarm:
    """A drift alarm the twin raised, in a cycle scheduled at ``t`` (its data were read no
    earlier) that had ended by ``raised_by`` (NaN when unknown); both in model time."""

    t: float
    raised_by: float
    key: str
    signal: str
    side: str
    message: str


@dataclass
class Recording:
    """What a case produced, in the plant model's time unit.

    A row's ``t`` is the true plant's time; its scan happened up to ``t_lag`` later (the plant
    step in hil mode, 0 when ``t`` is the scan's time), unless the row says when (``plc.t``).
    """

    rows: list[dict[str, Any]] = field(default_factory=list)  # one per PLC scan
    cycles: list[dict[str, Any]] = field(default_factory=list)  # one per controller cycle
    sent: list[tuple[float, dict[str, float]]] = field(default_factory=list)  # setpoint writes
    loss_at: float | None = None  # when the controller was to be lost (the case's plan)
    lost_at: float | None = None  # when it was lost (no earlier than planned), if recorded
    timebase: TimeBase = field(default_factory=lambda: TimeBase("h", 1.0))  # model time <-> s
    heartbeat_timeout_s: float = math.inf
    t_lag: float = 0.0
    #: drift alarms the twin raised
    alarms: list[Alarm] = field(default_factory=list)
    #: events of the true plant (a validity-domain excursion: variable, value, time)
    events: list[dict[str, Any]] = field(default_factory=list)
    #: the exact time of the batch's natural end (located inside the plant's step), if reached
    finished_at: float | None = None
    #: the unit of every model name (axes and tables are labelled with them)
    units: dict[str, str] = field(default_factory=dict)
    #: the rig's fault events in order (:class:`hil.faults.FaultEvent` as dicts: t, kind,
    #: target, action "start"/"end"/"inject"/"clear"/"carry", source, detail)
    faults: list[dict[str, Any]] = field(default_factory=list)
    #: the scenario's scheduled faults (``FaultSpec`` as dicts), to tell which never acted
    scheduled_faults: list[dict[str, Any]] = field(default_factory=list)

    @property
    def time_unit(self) -> str:
        return self.timebase.unit

    def column(self, name: str) -> np.ndarray:
        return np.array([r.get(name, math.nan) for r in self.rows], dtype=float)

    def find(self, name: str) -> str | None:
        """The trajectory column of a model name (true state, expression, output, input).

        An input's column is ``u.<input>``: the setpoint the PLC applied, before any actuator
        fault. What the plant really received (after actuator faults and disturbances) is
        ``i.<input>``, recorded beside it; :func:`find` never returns it."""
        keys = self.rows[0].keys() if self.rows else ()
        for prefix in ("x.", "e.", "z.", "y.", "u."):
            if prefix + name in keys:
                return prefix + name
        return None


@dataclass(frozen=True)
class Verdict:
    requirement: str
    description: str
    check: str
    passed: bool
    value: float | None
    limit: float | None
    unit: str
    detail: str

    def to_json(self) -> dict[str, Any]:
        d = asdict(self)
        for key in ("value", "limit"):
            v = d[key]
            if v is not None and not math.isfinite(v):
                d[key] = None if math.isnan(v) else (1e308 if v > 0 else -1e308)
        return d


def scan_times(rec: Recording) -> tuple[np.ndarray, np.ndarray]:
    """When each row's scan happened (model time): earliest and latest. Exact where the row
    has the PLC's scan time (``plc.t``); else within ``t_lag`` after the plant's ``t``."""
    t = rec.column("t")
    scan = rec.column("plc.t")
    exact = np.isfinite(scan)
    return np.where(exact, scan, t), np.where(exact, scan, t + rec.t_lag)


def _in_place(
    scans: tuple[np.ndarray, np.ndarray], applied: np.ndarray, t_send: float
) -> list[float]:
    """The PLC's applied setpoint (at each scan: ``applied``) that may have been in place at
    ``t_send``: at the last scan surely before it, and at every scan maybe before it."""
    early, late = scans
    before = np.nonzero(late <= t_send + 1e-9)[0]
    maybe = np.nonzero((early <= t_send + 1e-9) & (late > t_send + 1e-9))[0]
    rows = ([int(before[-1])] if len(before) else []) + [int(i) for i in maybe]
    return [float(applied[i]) for i in rows if math.isfinite(applied[i])]


def _resolution(*values: float) -> float:
    """What a value may lose on its way through a PLC register (float32: ~6e-8 relative)."""
    return 1e-6 * max(1.0, *(abs(v) for v in values))


def _setpoints(check: SetpointsWithinLimits, rec: Recording) -> tuple[float, str]:
    """Worst excess over the limits, and over ``max_move`` from the value in place (the PLC's
    setpoint at the scan before the send, by the scans' process times: :func:`_in_place`) or
    from the previous send one sample earlier; both beyond the register resolution
    (:func:`_resolution`)."""
    worst, detail = 0.0, "every setpoint within its limits"
    last: dict[str, tuple[float, float]] = {}
    dt = rec.cycles[1]["t"] - rec.cycles[0]["t"] if len(rec.cycles) > 1 else math.inf
    scans = scan_times(rec)
    applied = {n: rec.column(f"u.{n}") for n in check.max_move}
    for t, values in rec.sent:
        for name, v in values.items():
            if name in check.limits:
                lo, hi = check.limits[name]
                excess = max(lo - v, v - hi) - _resolution(v) if math.isfinite(v) else math.inf
                if excess > worst:
                    worst, detail = excess, f"{name}={v:g} at t={t:g} outside [{lo:g}, {hi:g}]"
            if name in check.max_move:
                before = [("in place", v0) for v0 in _in_place(scans, applied[name], t)]
                if name in last and t - last[name][0] <= dt * 1.5:
                    before.append(("sent before", last[name][1]))
                for what, v0 in before:
                    excess = abs(v - v0) - check.max_move[name] - _resolution(v, v0)
                    if excess > worst:
                        worst = excess
                        detail = (
                            f"{name} sent {v:g} at t={t:g}, {v - v0:+g} from the value "
                            f"{what} (max_move {check.max_move[name]:g})"
                        )
            last[name] = (t, v)
    if not rec.sent:  # never exercised: nothing says the limits would have held
        return math.nan, "no setpoint was sent: the requirement was not exercised"
    unsent = sorted(set(check.limits) - {n for _, values in rec.sent for n in values})
    if unsent:
        return math.nan, f"{', '.join(unsent)} never sent: its limits were not exercised"
    return worst, detail


def _extremum(check: Extremum, rec: Recording) -> tuple[float, str]:
    """Judged on :meth:`Recording.find`'s column: for an input, ``u.<input>``, the setpoint the
    PLC applied (its value before actuator faults), not ``i.<input>``, what the plant received."""
    col = rec.find(check.of)
    if col is None:
        return math.nan, f"{check.of} was not recorded"
    t = rec.column("t")
    values = rec.column(col)
    window = np.ones(len(values), dtype=bool)
    if check.after is not None:
        window &= t >= check.after
    if check.before is not None:
        window &= t <= check.before
    if check.while_mpc_active:
        window &= np.array([r.get("plc.mode") == "active" for r in rec.rows], dtype=bool)
    missing = window & np.isnan(values)  # an infinite value is a value: it is judged
    if missing.any() and not col.startswith("y."):  # the true plant has no missing values
        return math.nan, f"{int(missing.sum())} values of {col} in the window are not a number"
    keep = window & ~missing
    if not keep.any():
        return math.nan, f"no value of {check.of} in the window"
    v, tv = values[keep], t[keep]
    i = {"max": int(np.argmax(v)), "min": int(np.argmin(v)), "final": len(v) - 1}[check.kind]
    detail = f"{check.kind} {check.of} = {v[i]:g} at t={tv[i]:g}"
    if missing.any():  # a measurement of bad quality is recorded as NaN
        detail += f" ({int(missing.sum())} samples without a good measurement left out)"
    return float(v[i]), detail


def _loss_time(rec: Recording) -> tuple[float, str]:
    """When the controller was lost: as recorded, else the planned time (no later than the
    actual loss, so a delay from it is no shorter than the true one)."""
    if rec.lost_at is not None:
        return rec.lost_at, f"lost at t={rec.lost_at:g}"
    if rec.loss_at is None:
        raise ValueError("no controller loss: it was neither recorded nor planned")
    return rec.loss_at, f"lost at t={rec.loss_at:g} (the planned time; the loss was no earlier)"


def _fallback(check: FallbackWithin, rec: Recording) -> tuple[float, float, str]:
    """Delay from the loss to the PLC scan that fell back, in process seconds; judged on its
    upper bound when the scan's time is known only from the plant's sampled ``t``."""
    limit = check.heartbeat_timeouts * rec.heartbeat_timeout_s
    if not math.isfinite(limit):  # inf <= inf would pass a PLC that never fell back
        return math.nan, limit, "no heartbeat timeout is known for this site's PLC"
    if rec.loss_at is None and rec.lost_at is None:
        return math.nan, limit, "the controller was not lost in this case"
    lost, lost_text = _loss_time(rec)
    early, late = scan_times(rec)
    modes = [r.get("plc.mode") for r in rec.rows]
    at_loss = [m for e, m in zip(early, modes, strict=True) if e <= lost]
    if not at_loss or at_loss[-1] != "active":
        return math.inf, limit, f"the MPC did not have control when lost (PLC {at_loss[-1:]})"
    for e, la, m in zip(early, late, modes, strict=True):
        if e > lost and m == "fallback":
            low, high = rec.timebase.seconds(e - lost), rec.timebase.seconds(la - lost)
            if la == e:
                return high, limit, f"{lost_text}, PLC fell back in its scan at t={e:g}"
            return (
                high,
                limit,
                (
                    f"{lost_text}, PLC fell back between t={e:g} and t={la:g} (the scan's time is "
                    f"known only to the plant's step): delay between {low:.6g} and {high:.6g} s, "
                    "judged on the upper bound"
                ),
            )
    return math.inf, limit, f"{lost_text}; the PLC never fell back"


def _drift_alarm(check: DriftAlarm, rec: Recording) -> tuple[float, str]:
    """Detection delay after ``check.after``, up to the end of the cycle that raised the alarm
    (its upper bound); inf if an alarm came before it (by its cycle's scheduled time, when its
    data were read at the earliest) or none at all."""
    early = [a for a in rec.alarms if a.t < check.after]
    if early:
        a = early[0]
        return math.inf, f"false alarm before the drift began, at t={a.t:g}: {a.message}"
    hits = [
        a
        for a in rec.alarms
        if a.signal == check.signal and (check.side is None or a.side == check.side)
    ]
    if not hits:
        others = ", ".join(sorted({a.key for a in rec.alarms})) or "none"
        return math.inf, f"no drift alarm on {check.signal} (alarms raised: {others})"
    a = hits[0]
    if math.isnan(a.raised_by):
        return math.inf, f"raised in the cycle of t={a.t:g}, ended at an unrecorded time"
    low, high = a.t - check.after, max(a.raised_by, a.t) - check.after
    if high - low <= 1e-9 * max(1.0, abs(high)):  # on time (a stepped clock, for one)
        return high, f"raised at t={a.t:g}: {a.message}"
    return high, (
        f"raised in the cycle of t={a.t:g}, ended by t={a.raised_by:g}: delay between "
        f"{low:.6g} and {high:.6g}, judged on the upper bound: {a.message}"
    )


def true_crossing(rec: Recording, parameter: str, threshold: float) -> float:
    """When the true ``parameter`` crosses ``threshold``: the first scan beyond it, else the
    linear extrapolation of its last two distinct values (inf when it is not moving)."""
    t, p = rec.column("t"), rec.column(f"p.{parameter}")
    keep = np.isfinite(p)
    t, p = t[keep], p[keep]
    if len(p) < 2:
        return math.nan
    start = p[0]
    beyond = np.nonzero((p - threshold) * (start - threshold) <= 0)[0]
    if len(beyond):
        i = int(beyond[0])
        if i == 0:
            return float(t[0])
        frac = (threshold - p[i - 1]) / (p[i] - p[i - 1])
        return float(t[i - 1] + frac * (t[i] - t[i - 1]))
    moving = np.nonzero(np.diff(p))[0]
    if not len(moving):
        return math.inf
    i = int(moving[-1]) + 1
    j = max(int(moving[0]), i - 50)  # a straight line: any two points on it
    slope = (p[i] - p[j]) / (t[i] - t[j])
    ahead = (threshold - p[i]) / slope if slope else math.inf
    return float(t[i] + ahead) if ahead >= 0 else math.inf  # moving away: never


def _maintenance(check: MaintenanceForecast, rec: Recording) -> tuple[float, str]:
    """Fraction of the forecasts from ``after`` on whose interval holds the true crossing."""
    key = f"mon.maintenance.{check.parameter}"
    rows = [c for c in rec.cycles if c["t"] >= check.after and f"{key}.threshold" in c]
    if not rows:
        return math.nan, f"no maintenance forecast of {check.parameter} was recorded"
    threshold = rows[0][f"{key}.threshold"]
    crossing = true_crossing(rec, check.parameter, threshold)
    if not math.isfinite(crossing):
        return math.nan, f"the true {check.parameter} does not cross {threshold:g}"
    issued = [  # approaching: a finite time ahead (not "no trend": inf, nor "crossed": 0)
        c
        for c in rows
        if math.isfinite(tt := c.get(f"{key}.time_to_threshold", math.nan)) and tt > 0
    ]
    if not issued:
        return 0.0, f"no forecast of {check.parameter} reached 'approaching' from t={check.after:g}"
    inside, errors = 0, []
    for c in issued:
        lo, hi = c["t"] + c[f"{key}.low"], c["t"] + c[f"{key}.high"]
        inside += lo <= crossing <= hi
        errors.append(c["t"] + c[f"{key}.time_to_threshold"] - crossing)
    frac = inside / len(issued)
    err = np.abs(np.array(errors))
    return frac, (
        f"true crossing of {threshold:g} at t={crossing:g}; {inside} of {len(issued)} intervals "
        f"contain it; point forecast error median {float(np.median(err)):.3g}, "
        f"max {float(err.max()):.3g} {rec.time_unit}"
    )


CHART = "mon.chart."  # a cycle's drift-chart statistics: NaN while the chart is not running


def charts_watched(rec: Recording) -> tuple[str, str]:
    """(what watched the run, "") when the drift monitor had every one of its charts
    evaluating (every ``mon.chart.*`` statistic finite) in some recorded cycle; else ("", why
    not). Until then the twin withholds ``alarm.active`` ("drift monitor not running yet"):
    its 0, like any other ``mon.*`` figure, says nothing about drift."""
    charts = sorted({k for c in rec.cycles for k in c if k.startswith(CHART)})
    if not charts:
        why = "no drift chart statistic (mon.chart.*) was recorded: no drift chart ran"
        return "", f"{why} in any of the {len(rec.cycles)} controller cycles"

    def running(c: Mapping[str, Any]) -> int:
        return sum(isinstance(v := c.get(k), int | float) and math.isfinite(v) for k in charts)

    counts = [running(c) for c in rec.cycles]
    whole = [c["t"] for c, n in zip(rec.cycles, counts, strict=True) if n == len(charts)]
    if whole:
        return (
            f"every drift chart ({len(charts)}) evaluated from t={whole[0]:g} "
            f"({len(whole)} of {len(rec.cycles)} cycles)",
            "",
        )
    names = ", ".join(k.removeprefix(CHART) for k in charts)
    end = f"t={rec.cycles[-1]['t']:g}" if rec.cycles else "its start"
    return "", (
        f"at most {max(counts)} of {len(charts)} drift charts ({names}) evaluated a sample "
        f"in any of the {len(rec.cycles)} controller cycles (still in warm-up or learning "
        f"the baseline when the run ended at {end}; the drift monitor was not running)"
    )


def failed_solve(cycle: Mapping[str, Any]) -> bool:
    """The cycle's solve did not deliver, as the runtime counted it (``solve.failed``: the
    solver failed or raised, was late or overran); in an older recording, its status."""
    flag = cycle.get("solve.failed")
    if isinstance(flag, bool):
        return flag
    return cycle.get("solve.status") in FAILED


def longest_failed_run(cycles: Sequence[Mapping[str, Any]]) -> int:
    run = best = 0
    for c in cycles:
        run = run + 1 if failed_solve(c) else 0
        best = max(best, run)
    return best


def plc_fallbacks(rows: Sequence[Mapping[str, Any]]) -> int:
    """How many times the PLC went into fallback."""
    count, previous = 0, None
    for r in rows:
        mode = r.get("plc.mode")
        if mode == "fallback" and previous != "fallback":
            count += 1
        previous = mode
    return count


def control_losses(rows: Sequence[Mapping[str, Any]]) -> int:
    """How many times the MPC lost control during the run: the PLC left ``active`` (its own
    fallback, or the controller releasing after bad cycles)."""
    count, previous = 0, None
    for r in rows:
        mode = r.get("plc.mode")
        if previous == "active" and mode != "active":
            count += 1
        previous = mode
    return count


def judge(c: Criterion, rec: Recording) -> Verdict:
    """One criterion against one recording."""
    check = c.check
    unit = ""
    match check:
        case SetpointsWithinLimits():
            value, detail = _setpoints(check, rec)
            limit, passed = 0.0, value <= TOLERANCE
            unit = "excess"
        case Extremum():
            value, detail = _extremum(check, rec)
            if check.at_most is not None:
                limit, passed = check.at_most, value <= check.at_most + TOLERANCE
            else:  # the schema asks for one of the two
                limit = check.at_least if check.at_least is not None else math.nan
                passed = value >= limit - TOLERANCE
            unit = check.unit
        case FallbackWithin():
            value, limit, detail = _fallback(check, rec)
            passed = value <= limit
            unit = "s"
        case ConsecutiveFailedSolves():
            value, limit = float(longest_failed_run(rec.cycles)), float(check.at_most)
            passed, detail = value <= limit, f"longest run of failed solves: {value:g} cycles"
            unit = "cycles"
            if not any("solve.status" in c for c in rec.cycles):  # nothing to count
                value, detail = math.nan, "no controller cycle with a solve was recorded"
        case ControlLosses():
            value, limit = float(control_losses(rec.rows)), float(check.at_most)
            passed = value <= limit
            detail = (
                f"the MPC lost control {value:g} times (PLC fallbacks: {plc_fallbacks(rec.rows)})"
            )
            if not any(r.get("plc.mode") == "active" for r in rec.rows):  # never had it
                value, detail = math.nan, "the MPC never had control (no scan in plc.mode active)"
        case DriftAlarm():
            value, detail = _drift_alarm(check, rec)
            limit, passed = check.within, value <= check.within
            unit = rec.time_unit
        case NoDriftAlarm():
            value, limit = float(len(rec.alarms)), float(check.at_most)
            passed, unit = value <= limit, "alarms"
            raised = "; ".join(f"t={a.t:g}: {a.message}" for a in rec.alarms[:3])
            watched, why = charts_watched(rec)
            detail = "; ".join(t for t in (raised or "no drift alarm", watched) if t)
            if passed and not watched:  # an alarm raised is real; no alarm needs a watcher
                value, detail = math.nan, f"nothing was judged: {why}"
        case MaintenanceForecast():
            value, detail = _maintenance(check, rec)
            limit, passed = check.at_least, value >= check.at_least
            unit = "fraction"
    value = float(value)  # plain floats and bools in the evidence, not numpy scalars
    if math.isnan(value):
        passed = False
    return Verdict(
        c.id, c.description, describe_check(check), bool(passed), value, limit, unit, detail
    )


def judge_all(criteria: Sequence[Criterion], rec: Recording) -> list[Verdict]:
    return [judge(c, rec) for c in criteria]
