"""Faults of the HIL simulator: sensors, actuators, communications and equipment degradation.

A :class:`FaultSet` holds the faults of one run: those scheduled in the scenario
(:class:`~hil.faultspec.FaultSpec`, ``faults:``) and those injected at runtime. The rig asks
it, at the current time ``t``, what each fault does to

* the measured outputs (:meth:`FaultSet.measurements`),
* the inputs the plant really receives (:meth:`FaultSet.actuators`),
* the true plant's parameters (:meth:`FaultSet.parameters`), and
* the servers (:meth:`FaultSet.comms`).

Units. Every time (``t``, ``now``, ``FaultSpec.start``/``duration``, ``dt``, the time
constant of an actuator lag) is in the plant model's time unit (h for the CSTR, the
bioreactor and the freeze dryer; s for the crystallizer). Magnitudes are in the target's own
unit (a sensor bias in the output's unit, a saturation in the input's unit), except
``comm_latency``, whose magnitude is in seconds of wall-clock time. A ``sensor_drift`` rate is
in output unit per time unit; a ``parameter_drift`` rate is relative per time unit
(``-0.01`` in a model in hours is -1 %/h).

A fault is active on ``[start, start + duration)`` (``duration`` None: to the end of the run),
as :meth:`FaultSpec.active` says. Every activation and deactivation, runtime injection and
clear is reported to ``on_event`` as a :class:`FaultEvent`, so the rig can log and audit it.

Batches. A rig that repeats its batch (``serve --repeat``) starts a new set for each batch from
the scenario's schedule and moves into it, with :meth:`FaultSet.carry_into`, every runtime fault
that still acts (pending, active, or a ``parameter_drift`` whose degradation stays), its times
re-based on the new batch's time axis: a fault active when the batch ended has a start <= 0
(it began before this batch did) and keeps its remaining duration, its drift and any held
value. Each one is reported as a ``"carry"`` event; a scheduled fault still active at the end
gets an ``"end"`` event saying the batch restarted (the schedule starts again).

Targets. A sensor fault targets a measured output, an actuator fault an input, a
``parameter_drift`` a parameter of the true plant. ``comm_latency``, ``comm_drop`` and
``comm_restart`` act on the whole server: their target is ``"*"``. ``comm_bad_status`` targets
one tag of the site's tag map, or a wildcard pattern (:func:`fnmatch.fnmatchcase`: ``"*"``
every tag, ``"product_temp_*"``, ``"*_sp"``...) that :class:`FaultSet` expands against the
site's real tag names, so ``CommState.bad_tags`` only ever holds real tags.

Validation against the site and the mode the rig runs in is :mod:`hil.faultcheck`; the
schema of one fault is :mod:`hil.faultspec`.

Pure logic: no I/O, no clock, no asyncio. The only randomness is ``sensor_noise``, drawn from
the caller's seeded generator, so the same seed and the same sequence of calls give the same
results. A target that is absent from the mapping a method is given is left alone. Time
should not decrease from one call to the next: transitions are reported once and never undone.
"""

from __future__ import annotations

import fnmatch
import math
from collections.abc import Callable, Collection, Iterable, Mapping
from dataclasses import dataclass
from enum import IntEnum
from typing import Literal

import numpy as np

from controller.errors import unknown_name
from hil.faultspec import FaultKind, FaultSpec, expand_tags, is_pattern

__all__ = ["CommState", "FaultAction", "FaultEvent", "FaultSet", "FaultSource"]

FaultAction = Literal["start", "end", "inject", "clear", "carry"]
FaultSource = Literal["schedule", "runtime"]


@dataclass(frozen=True)
class FaultEvent:
    """One thing that happened to a fault, for the run's log and audit trail.

    ``t`` is in the model's time unit: the fault's own start (``"start"``) or end (``"end"``)
    time, or the time of the request (``"inject"``, ``"clear"``); ``"carry"``: 0, the start
    of the new batch a runtime fault was carried into (:meth:`FaultSet.carry_into`).
    """

    t: float
    kind: FaultKind
    target: str
    action: FaultAction
    source: FaultSource
    detail: str = ""


@dataclass(frozen=True)
class CommState:
    """What the communication faults do to the servers at one instant.

    * ``latency_s``: seconds added to every answer (the sum of the active ``comm_latency``
      magnitudes, whatever their target);
    * ``bad_tags``: tags whose reads answer Modbus exception 04 / OPC UA Bad (the targets of
      the active ``comm_bad_status`` faults, wildcard patterns expanded: real tag names only);
    * ``servers_down``: a ``comm_restart`` fault is active (the servers are stopped);
    * ``drop_now``: a ``comm_drop`` fault has started since the previous :meth:`FaultSet.comms`
      call; every client connection is to be dropped now. Reported once per fault.
    """

    latency_s: float = 0.0
    bad_tags: frozenset[str] = frozenset()
    servers_down: bool = False
    drop_now: bool = False


class _Phase(IntEnum):
    PENDING = 0
    ACTIVE = 1
    ENDED = 2


class _Fault:
    """A fault with its run-time state (mutable, private to :class:`FaultSet`)."""

    __slots__ = ("drop_reported", "held", "lag_y", "phase", "source", "spec")

    def __init__(self, spec: FaultSpec, source: FaultSource) -> None:
        self.spec = spec
        self.source: FaultSource = source
        self.phase = _Phase.PENDING
        self.held: float | None = None  # stuck sensor / actuator: the frozen value
        self.lag_y: float | None = None  # actuator lag: the actuator's position
        self.drop_reported = False  # comm_drop: the edge has been reported

    @property
    def end(self) -> float:
        """End of the active window [time unit]; ``inf`` when the fault has no duration."""
        d = self.spec.duration
        return math.inf if d is None else self.spec.start + d

    def phase_at(self, t: float) -> _Phase:
        if t < self.spec.start:
            return _Phase.PENDING
        return _Phase.ACTIVE if t < self.end else _Phase.ENDED


def _target_matches(held: str, target: str) -> bool:
    """Whether a clear request's ``target`` names a fault held on ``held``: the same text, or a
    wildcard pattern that matches it."""
    return held == target or (is_pattern(target) and fnmatch.fnmatchcase(held, target))


def _describe(spec: FaultSpec) -> str:
    parts = [f"start={spec.start:g}"]
    parts.append("duration=until end" if spec.duration is None else f"duration={spec.duration:g}")
    if spec.magnitude:
        parts.append(f"magnitude={spec.magnitude:g}")
    if spec.rate:
        parts.append(f"rate={spec.rate:g}")
    if spec.description:
        parts.append(spec.description)
    return ", ".join(parts)


class FaultSet:
    """The scheduled and runtime faults of one run, and what they do at a given time.

    ``faults`` are the scenario's scheduled faults (absolute times); ``rng`` is a generator
    seeded by the caller (used only by ``sensor_noise``); ``on_event`` receives every
    :class:`FaultEvent`; ``tags`` are the site's tag names, against which ``comm_bad_status``
    targets are expanded. With ``tags``, a ``comm_bad_status`` target (name or pattern) that
    matches no tag raises ValueError. Without them, a wildcard raises ValueError: it could not
    be expanded, and a literal ``"*"`` matches no tag on any server.
    """

    def __init__(
        self,
        faults: Iterable[FaultSpec],
        rng: np.random.Generator,
        *,
        on_event: Callable[[FaultEvent], None] | None = None,
        tags: Collection[str] | None = None,
    ) -> None:
        self._rng = rng
        self._on_event = on_event
        self._tags: tuple[str, ...] | None = None if tags is None else tuple(tags)
        self._faults: list[_Fault] = [_Fault(spec, "schedule") for spec in faults]
        for f in self._faults:
            self._bad_tags_of(f.spec)
        self._last_t = 0.0
        self._last_applied: dict[str, float] = {}

    # ------------------------------------------------------------------ bookkeeping
    @property
    def faults(self) -> tuple[FaultSpec, ...]:
        """Every fault still held, scheduled and runtime, with absolute start times."""
        return tuple(f.spec for f in self._faults)

    def _emit(self, t: float, f: _Fault, action: FaultAction, detail: str) -> None:
        if self._on_event is not None:
            self._on_event(FaultEvent(t, f.spec.kind, f.spec.target, action, f.source, detail))

    def _step_fault(self, f: _Fault, t: float) -> None:
        new = f.phase_at(t)
        if new <= f.phase:
            return
        if f.phase is _Phase.PENDING:
            self._emit(f.spec.start, f, "start", f"seen at t={t:g}; {_describe(f.spec)}")
        if new is _Phase.ENDED:
            self._emit(f.end, f, "end", f"seen at t={t:g}")
        f.phase = new

    def _advance(self, t: float) -> None:
        """Report the transitions up to ``t`` (each one once, in the order of the faults)."""
        self._last_t = max(self._last_t, t)
        for f in self._faults:
            self._step_fault(f, t)

    def _active(self, t: float, prefix: str) -> list[_Fault]:
        return [f for f in self._faults if f.spec.kind.startswith(prefix) and f.spec.active(t)]

    def inject(self, spec: FaultSpec, now: float) -> FaultSpec:
        """Add a fault at runtime; returns it as held, with its absolute start time.

        Rule: the start of a runtime fault is relative to ``now`` [time unit]: it becomes
        active at ``now + spec.start`` (``spec.start`` 0: at once) and lasts ``spec.duration``.
        Reported as an ``"inject"`` event (source ``"runtime"``) at ``now``, followed by its
        ``"start"`` event as soon as it is active (at once when ``spec.start`` is 0).
        """
        self._bad_tags_of(spec)
        absolute = spec.model_copy(update={"start": now + spec.start})
        f = _Fault(absolute, "runtime")
        self._faults.append(f)
        self._emit(now, f, "inject", _describe(absolute))
        self._last_t = max(self._last_t, now)
        self._step_fault(f, now)
        return absolute

    def clear(
        self,
        kind: FaultKind | None = None,
        target: str | None = None,
        *,
        now: float | None = None,
    ) -> list[FaultSpec]:
        """Remove every fault (scheduled or runtime, pending, active or ended) that matches.

        ``kind`` and ``target`` narrow the match (None matches all). ``target`` matches a held
        fault whose target is that very text, or, when it is a wildcard pattern
        (:func:`~hil.faultspec.is_pattern`), whose target the pattern matches
        (:func:`fnmatch.fnmatchcase`: ``"T*"`` matches ``Tbot``; ``"*"`` every target). A
        cleared fault stops at once and entirely, as if repaired: a cleared ``parameter_drift``
        no longer degrades the parameter (its nominal value is back). Each removal is reported
        as a ``"clear"`` event at ``now`` [time unit] (default: the latest time the set has
        seen). Returns the removed faults (empty: nothing matched, nothing changed).
        """
        t = self._last_t if now is None else now
        removed: list[FaultSpec] = []
        kept: list[_Fault] = []
        for f in self._faults:
            if (kind is None or f.spec.kind == kind) and (
                target is None or _target_matches(f.spec.target, target)
            ):
                self._emit(t, f, "clear", _describe(f.spec))
                removed.append(f.spec)
            else:
                kept.append(f)
        self._faults = kept
        return removed

    def carry_into(self, new: FaultSet, t_end: float, *, batch: int) -> list[FaultSpec]:
        """Move the runtime faults that still act at ``t_end`` (the end of batch ``batch``, on
        this set's time axis) into ``new``, the set of the next batch, whose time 0 is
        ``t_end``; returns them as ``new`` holds them.

        Still acting: pending, active (a ``comm_drop`` only until it has dropped), or a
        ``parameter_drift`` (its degradation stays after its end). Times are re-based
        (``start - t_end``: a fault active at ``t_end`` starts at or before 0 and ends when it
        would have); held values (a stuck sensor or actuator, a lag's position) go with them.
        Each is reported as a ``"carry"`` event of ``new`` at 0. A scheduled fault still
        active at ``t_end`` gets an ``"end"`` event here, at ``t_end``: the next batch's
        schedule starts again. Runtime faults that ended before ``t_end`` stay behind (their
        ``"end"`` event has been reported).
        """
        self._advance(t_end)
        carried: list[FaultSpec] = []
        for f in self._faults:
            if f.source == "schedule":
                dropped = f.spec.kind == "comm_drop" and f.drop_reported
                if f.phase is _Phase.ACTIVE and not dropped:
                    why = f"batch {batch} ended (repeat): the schedule starts again"
                    self._emit(t_end, f, "end", why)
                    f.phase = _Phase.ENDED
                continue
            ended = f.phase is _Phase.ENDED or (f.spec.kind == "comm_drop" and f.drop_reported)
            if ended and f.spec.kind != "parameter_drift":
                continue
            # model_copy: a start < 0 (before the batch began) is this set's own bookkeeping
            spec = f.spec.model_copy(update={"start": f.spec.start - t_end})
            g = _Fault(spec, "runtime")
            g.phase, g.held, g.lag_y, g.drop_reported = f.phase, f.held, f.lag_y, f.drop_reported
            new._faults.append(g)
            until = "until cleared" if spec.duration is None else f"until t={g.end:g}"
            why = f"carried from batch {batch} (batch restart): start={spec.start:g}, {until}"
            new._emit(0.0, g, "carry", why)
            carried.append(spec)
        for name, value in self._last_applied.items():  # what the plant was receiving
            new._last_applied.setdefault(name, value)
        return carried

    def pending(self) -> list[FaultSpec]:
        """The faults not yet active as of the latest time the set has seen (their start is
        later): at the end of a batch, the ones that never acted."""
        return [f.spec for f in self._faults if f.phase is _Phase.PENDING]

    def active(self, t: float) -> list[FaultSpec]:
        """The faults active at ``t`` [time unit], in the order they were added."""
        self._advance(t)
        return [f.spec for f in self._faults if f.spec.active(t)]

    # ------------------------------------------------------------------ sensors
    def measurements(
        self, t: float, values: Mapping[str, float]
    ) -> tuple[dict[str, float], set[str]]:
        """What the sensors show at ``t``: ``(values, bad)``, never mutating ``values``.

        On each targeted output, in output units:

        * ``sensor_bias``: ``+ magnitude``;
        * ``sensor_drift``: ``+ rate * (t - start)``;
        * ``sensor_noise``: ``+ N(0, magnitude)`` (standard deviation ``magnitude``);
        * ``sensor_stuck``: the value shown at the fault's first call after it became active
          (with the other sensor faults of that moment applied), then held; while it is stuck
          the other faults do not move it. With a ``magnitude`` it flickers: at each call the
          held value or, at random (one in two), the held value + ``magnitude`` (a stuck
          transmitter whose last digit still toggles between two codes);
        * ``sensor_dropout``: the name goes into ``bad`` (bad quality); the value is left as
          the other faults make it.

        When the fault ends the sensor reads true again.
        """
        self._advance(t)
        out = dict(values)
        bad: set[str] = set()
        stuck: list[_Fault] = []
        for f in self._active(t, "sensor_"):
            name, kind = f.spec.target, f.spec.kind
            if name not in out:
                continue
            if kind == "sensor_bias":
                out[name] += f.spec.magnitude
            elif kind == "sensor_drift":
                out[name] += f.spec.rate * (t - f.spec.start)
            elif kind == "sensor_noise":
                out[name] += float(self._rng.normal(0.0, f.spec.magnitude))
            elif kind == "sensor_stuck":
                stuck.append(f)
            elif kind == "sensor_dropout":
                bad.add(name)
        for f in stuck:
            if f.held is None:
                f.held = out[f.spec.target]
            flicker = f.spec.magnitude != 0.0 and bool(self._rng.integers(2))
            out[f.spec.target] = f.held + f.spec.magnitude if flicker else f.held
        return out, bad

    # ------------------------------------------------------------------ actuators
    def actuators(self, t: float, requested: Mapping[str, float], dt: float) -> dict[str, float]:
        """What the plant really receives at ``t`` for the step ``dt`` [time unit].

        ``requested`` are the inputs the PLC applies (input units); it is never mutated. On
        each targeted input, in this order:

        * ``actuator_lag``: a first-order lag of time constant ``magnitude`` [time unit]. Its
          position starts at the requested value at the fault's first call after it became
          active; at each later call it moves towards the current request by
          ``y += (u - y) * (1 - exp(-dt / magnitude))``, ``dt`` being the time since the
          previous call (the plant step);
        * ``actuator_saturation``: ``min(value, magnitude)``: capped from above at
          ``magnitude``, whatever the sign (e.g. the CSTR's feed ``F`` with magnitude 20 1/h
          cannot exceed 20 1/h). Caution for inputs that act in the negative direction: on the
          cooling duty ``Q_dot`` (<= 0) a magnitude of -3000 kJ/h forces at least 3000 kJ/h of
          cooling; it does not limit the cooling;
        * ``actuator_stuck``: held at the value the plant was receiving when the fault started
          (the output of the previous call; the request at the first call if there was none).

        When the fault ends the plant receives the request again.
        """
        self._advance(t)
        out = dict(requested)
        active = self._active(t, "actuator_")
        for f in active:
            name = f.spec.target
            if f.spec.kind != "actuator_lag" or name not in out:
                continue
            u = out[name]
            if f.lag_y is None:
                f.lag_y = u
            else:
                f.lag_y += (u - f.lag_y) * (1.0 - math.exp(-dt / f.spec.magnitude))
            out[name] = f.lag_y
        for f in active:
            name = f.spec.target
            if f.spec.kind == "actuator_saturation" and name in out:
                out[name] = min(out[name], f.spec.magnitude)
        for f in active:
            name = f.spec.target
            if f.spec.kind == "actuator_stuck" and name in out:
                if f.held is None:
                    f.held = self._last_applied.get(name, out[name])
                out[name] = f.held
        self._last_applied.update(out)
        return out

    def acts_on_inputs(self, t: float) -> bool:
        """Whether an actuator fault is active at ``t`` [time unit]: the plant then receives,
        over the whole step, the value :meth:`actuators` gives (a saturated, lagged or stuck
        input), never the shape of the request inside the step (a recipe ramp through a cap)."""
        return bool(self._active(t, "actuator_"))

    # ------------------------------------------------------------------ equipment
    def parameters(self, t: float, nominal: Mapping[str, float]) -> dict[str, float]:
        """The true plant's parameters at ``t`` under equipment degradation.

        ``nominal`` are the undegraded values (the scenario's true plant, captured once at
        the start of the run, not the previous result: drifts would compound). A
        ``parameter_drift`` fault gives ``value * (1 + rate * (t - start))`` on its target,
        ``rate`` being relative per time unit. Degradation does not heal: after the fault's
        end the parameter stays at the value it reached then (``t`` is capped at the end).
        Several drifts on one parameter add their relative changes. The prescribed value is
        given as is, never floored or clipped: past -100 % it changes sign, and a value outside
        the parameter's physical domain is the true plant's to refuse (a plant fault:
        :meth:`hil.plant_runner.PlantRunner.set_parameters` raises ``PlantDomainError`` and the
        plant stops), never silently made to fit. Returns a new dict with every name of
        ``nominal``; ``nominal`` is never mutated.
        """
        self._advance(t)
        out = dict(nominal)
        relative: dict[str, float] = {}
        for f in self._faults:
            spec = f.spec
            if spec.kind != "parameter_drift" or spec.target not in out or t < spec.start:
                continue
            elapsed = min(t, f.end) - spec.start
            relative[spec.target] = relative.get(spec.target, 0.0) + spec.rate * elapsed
        for name, change in relative.items():
            out[name] = nominal[name] * (1.0 + change)
        return out

    # ------------------------------------------------------------------ communications
    def _bad_tags_of(self, spec: FaultSpec) -> tuple[str, ...]:
        """The real tags a ``comm_bad_status`` fault makes bad (ValueError if none)."""
        if spec.kind != "comm_bad_status":
            return ()
        if self._tags is None:
            if is_pattern(spec.target):
                raise ValueError(
                    f"comm_bad_status target {spec.target!r} is a wildcard: the fault set needs "
                    "the site's tag names to expand it (tags=...)"
                )
            return (spec.target,)
        matched = expand_tags(spec.target, self._tags)
        if not matched:
            raise ValueError(unknown_name("tag", spec.target, self._tags))
        return matched

    def comms(self, t: float) -> CommState:
        """The communication faults at ``t`` (see :class:`CommState`).

        ``drop_now`` is an edge: true at the first call at or after a ``comm_drop`` fault's
        start, false afterwards for that fault.
        """
        self._advance(t)
        latency = 0.0
        bad: set[str] = set()
        down = False
        drop = False
        for f in self._faults:
            spec = f.spec
            if spec.kind == "comm_drop":
                if t >= spec.start and not f.drop_reported:
                    f.drop_reported = True
                    drop = True
                continue
            if not spec.active(t):
                continue
            if spec.kind == "comm_latency":
                latency += spec.magnitude
            elif spec.kind == "comm_bad_status":
                bad.update(self._bad_tags_of(spec))
            elif spec.kind == "comm_restart":
                down = True
        return CommState(latency, frozenset(bad), down, drop)
