"""The virtual PLC: the PLC's side of the MPC contract, as real PLCs do it.

The PLC keeps authority. It runs the plant under its own local control (the scenario's
recipe, or a hold at the last setpoint after the MPC had control) whenever the MPC is not
active, and accepts remote setpoints only while it is.

Contract tags (names fixed by ``hil.site.CONTRACT_TAGS``):

* ``mpc_request`` (written by the controller) / ``mpc_permissive`` / ``mpc_active`` (PLC);
* ``mpc_heartbeat``: an incrementing counter from the controller. If it has not *changed*
  within ``heartbeat_timeout`` process seconds while active, the PLC drops to local control
  at the last good setpoint, sets ``mpc_fallback_alarm`` and clears ``mpc_active``;
* ``plc_heartbeat`` and ``plc_scan_counter``: incremented every scan (wrap at 65535);
* ``operator_reset``: clears the fallback alarm (the PLC resets the pushbutton bit);
* ``interlock_active``: an interlock of the site forces inputs and drops the MPC;
* ``measurement_validity``: bit i set while measurement tag i (tag-map order) is valid.

After a fallback, re-engaging needs ``mpc_request`` to be cycled (seen False, then True), and,
if ``operator_reset_required``, an operator reset. Remote setpoints are refused (the servers
answer Modbus exception 03 / OPC UA BadOutOfRange) when the MPC is not active, when they are
outside the tag's limits, or when they move faster than ``max_rate`` (per process second,
times ``rate_tolerance``) from the working setpoint. While not active the working setpoints
are published on both the setpoint and the working-setpoint tags (setpoint tracking), so the
controller can start bumplessly.

Pure logic: no I/O, no clock reads. Every method takes the process time ``now`` [s].
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from enum import StrEnum

from controller.binding import Binding
from controller.tags import TagMap
from hil.site import PlcBehaviour

log = logging.getLogger("pharmatwin.hil.vplc")

_WRAP = 65536


class Mode(StrEnum):
    LOCAL = "local"  # the PLC's own control (recipe or hold)
    ACTIVE = "active"  # the MPC writes the setpoints
    FALLBACK = "fallback"  # the PLC dropped the MPC; alarm latched until reset/cycled


@dataclass(frozen=True)
class PlcEvent:
    """Something the PLC did that a person must be able to trace."""

    t: float
    what: str
    detail: str


@dataclass
class _Loop:
    """One manipulated input: its remote-setpoint tag, working-setpoint tag and state."""

    input: str
    sp_tag: str
    pv_tag: str
    limits: tuple[float, float]
    max_rate: float  # per process second; inf when the tag has none
    working: float
    last_remote_time: float = 0.0


@dataclass
class _Contract:
    request: bool = False
    request_seen_low: bool = True
    heartbeat: float = math.nan
    heartbeat_changed_at: float = 0.0
    alarm: bool = False
    alarm_reason: str = ""
    interlock: str = ""
    reset_pending: bool = False
    ever_active: bool = False
    events: list[PlcEvent] = field(default_factory=list)


class VirtualPlc:
    """The PLC logic for one site's tag map and one plant model's inputs."""

    def __init__(
        self,
        tags: TagMap,
        behaviour: PlcBehaviour,
        input_names: tuple[str, ...],
        working: Mapping[str, float],
        *,
        local_recipe: Callable[[float], Mapping[str, float]] | None = None,
        on_event: Callable[[PlcEvent], None] | None = None,
        now: Callable[[], float] | None = None,
        rate_window_s: float = 0.0,
    ) -> None:
        """``now`` gives the process time of a client write (the rig passes its clock);
        without it a write is stamped with the time of the last scan. ``rate_window_s`` is the
        shortest time the rate limit is measured over (the controller's sample time): one
        controller move per sample is judged against a whole sample, whatever the jitter."""
        self.tags = tags
        self.behaviour = behaviour
        self.local_recipe = local_recipe
        self.on_event = on_event
        self.mode = Mode.LOCAL
        self.scan_count = 0
        self._c = _Contract()
        self.binding = Binding.of_inputs(tags, input_names)
        self._loops = {name: self._loop(name, working[name]) for name in input_names}
        self._by_sp = {lp.sp_tag: lp for lp in self._loops.values()}
        self.measurement_tags = self.binding.measurement_tags()[:16]
        self._publishes = self.binding.reading_tags()  # model variable -> tag, every scan
        # bit i of measurement_validity <- the variable of measurement_tags[i] (looked up once)
        self._validity_bits = [
            (1 << i, self.binding.variable_of(tag)) for i, tag in enumerate(self.measurement_tags)
        ]
        self._all_valid = sum(bit for bit, _ in self._validity_bits)
        self._now = 0.0
        self._clock = now
        self._rate_window = rate_window_s
        self._forced: dict[str, float] = {}
        self._held: set[str] = set()  # the interlocks tripped at the last scan

    def _loop(self, name: str, working: float) -> _Loop:
        sp, pv = self.binding.setpoint_tag(name), self.binding.working_setpoint_tag(name)
        if sp is None or pv is None:
            raise ValueError(f"input {name!r} needs a setpoint tag and a working-setpoint tag")
        tag = self.tags.tags[sp]
        limits = tag.limits if tag.limits is not None else (-math.inf, math.inf)
        rate = tag.max_rate if tag.max_rate is not None else math.inf
        return _Loop(name, sp, pv, limits, rate, float(working))

    # ------------------------------------------------------------------ events
    def _event(self, what: str, detail: str) -> None:
        ev = PlcEvent(self._now, what, detail)
        self._c.events.append(ev)
        log.info("PLC t=%.1f s %s: %s", ev.t, what, detail)
        if self.on_event is not None:
            self.on_event(ev)

    @property
    def events(self) -> list[PlcEvent]:
        return list(self._c.events)

    @property
    def active(self) -> bool:
        return self.mode is Mode.ACTIVE

    @property
    def scan_time(self) -> float:
        """The process time [s] of the last scan (what its mode changes happened at)."""
        return self._now

    @property
    def alarm(self) -> bool:
        return self._c.alarm

    # ------------------------------------------------------------------ writes
    def on_write(self, tag: str, value: float) -> str | None:
        """The servers' write hook: None accepts; a reason refuses (exception 03/BadOutOfRange)."""
        now = self._clock() if self._clock is not None else self._now
        loop = self._by_sp.get(tag)
        if loop is not None:
            return self._remote_setpoint(loop, value, now)
        if tag == "mpc_heartbeat":
            if value != self._c.heartbeat:
                self._c.heartbeat = value
                self._c.heartbeat_changed_at = now
        elif tag == "mpc_request":
            self._c.request = bool(value)
            if not value:
                self._c.request_seen_low = True
        elif tag == "operator_reset" and value:
            self._c.reset_pending = True
        return None

    def check_write(self, tag: str, value: float) -> str | None:
        """What :meth:`on_write` would answer, without changing anything."""
        loop = self._by_sp.get(tag)
        if loop is None:
            return None
        now = self._clock() if self._clock is not None else self._now
        return self._refusal(loop, value, now)

    def _refusal(self, loop: _Loop, value: float, now: float) -> str | None:
        if self.mode is not Mode.ACTIVE:
            return f"{loop.sp_tag}: remote setpoints are accepted only while the MPC is active"
        lo, hi = loop.limits
        tol_lo, tol_hi = (1e-6 * max(1.0, abs(b)) if math.isfinite(b) else 0.0 for b in (lo, hi))
        if not (math.isfinite(value) and lo - tol_lo <= value <= hi + tol_hi):
            return f"{loop.sp_tag}={value} outside the PLC range [{lo}, {hi}]"
        value = min(max(value, lo), hi)  # a float32 0.30000001 for a limit of 0.3 is the limit
        dt = max(now - loop.last_remote_time, self._rate_window, 0.0)
        allowed = loop.max_rate * dt * self.behaviour.rate_tolerance
        if abs(value - loop.working) > allowed + 1e-9 * max(1.0, abs(loop.working)):
            return (
                f"{loop.sp_tag}: move {value - loop.working:+.6g} in {dt:.3g} s exceeds the PLC "
                f"rate limit {loop.max_rate:g}/s"
            )
        return None

    def _remote_setpoint(self, loop: _Loop, value: float, now: float) -> str | None:
        reason = self._refusal(loop, value, now)
        if reason is not None:
            return reason
        value = min(max(value, loop.limits[0]), loop.limits[1])
        loop.working = float(value)
        loop.last_remote_time = now
        return None

    # ------------------------------------------------------------------ scan
    def scan(self, now: float, t_model: float, plant: Mapping[str, float]) -> dict[str, float]:
        """One PLC scan at process time ``now``; returns the inputs the plant gets.

        ``plant`` holds true-plant quantities (outputs, states, expressions) for interlocks.
        """
        self._now = now
        self.scan_count += 1
        self._interlocks(plant)
        self._watchdog(now)
        self._operator_reset()
        self._engage(now)
        if self.mode is not Mode.ACTIVE:
            self._local(t_model)
        applied = {name: lp.working for name, lp in self._loops.items()}
        applied.update(self._forced)
        return applied

    def _interlocks(self, plant: Mapping[str, float]) -> None:
        tripped = ""
        forced: dict[str, float] = {}
        held = self._held
        for lock in self.behaviour.interlocks:
            hit = lock.tripped(plant.get(lock.expression, math.nan), lock.name in held)
            if not hit:
                held.discard(lock.name)
                continue
            held.add(lock.name)
            tripped = tripped or lock.name
            forced.update(lock.force)
        if tripped and not self._c.interlock:
            self._event("interlock", f"{tripped} tripped; forcing {forced}")
            if self.mode is Mode.ACTIVE:
                self._fall_back(f"interlock {tripped}")
        elif not tripped and self._c.interlock:
            self._event("interlock cleared", self._c.interlock)
        self._c.interlock = tripped
        self._forced = forced

    def _watchdog(self, now: float) -> None:
        if self.mode is not Mode.ACTIVE:
            return
        silent = now - self._c.heartbeat_changed_at
        if silent > self.behaviour.heartbeat_timeout:
            self._fall_back(
                f"heartbeat unchanged for {silent:.1f} s (timeout "
                f"{self.behaviour.heartbeat_timeout:g} s)"
            )

    def _fall_back(self, reason: str) -> None:
        self.mode = Mode.FALLBACK
        self._c.alarm = True
        self._c.alarm_reason = reason
        self._c.request_seen_low = False
        self._event("fallback", f"{reason}; local control at the last good setpoints")

    def _operator_reset(self) -> None:
        if self._c.reset_pending:
            self._c.reset_pending = False
            if self._c.alarm:
                self._event("operator reset", f"alarm cleared ({self._c.alarm_reason})")
                self._c.alarm = False
                if self.mode is Mode.FALLBACK:
                    self.mode = Mode.LOCAL

    @property
    def permissive(self) -> bool:
        c = self._c
        if c.interlock or not c.request_seen_low:
            return False
        return not (c.alarm and self.behaviour.operator_reset_required)

    def _engage(self, now: float) -> None:
        c = self._c
        if self.mode is Mode.ACTIVE and not c.request:
            self.mode = Mode.LOCAL
            self._event("released", "the MPC released control; local control holds its setpoints")
        elif self.mode is not Mode.ACTIVE and c.request and self.permissive:
            if c.alarm:  # no operator reset required: cycling the request clears it
                self._event("alarm cleared", f"request cycled ({c.alarm_reason})")
                c.alarm = False
            self.mode = Mode.ACTIVE
            c.ever_active = True
            c.heartbeat_changed_at = now
            for lp in self._loops.values():
                lp.last_remote_time = now
            self._event("active", "the MPC has control")

    def _local(self, t_model: float) -> None:
        if self.local_recipe is None or self._c.ever_active:
            return  # hold the working setpoints (bumpless after the MPC had control)
        for name, value in self.local_recipe(t_model).items():
            if name in self._loops:
                self._loops[name].working = float(value)

    # ------------------------------------------------------------------ image
    def image(
        self, measurements: Mapping[str, float], bad: set[str], applied: Mapping[str, float]
    ) -> dict[str, float]:
        """Tag values to publish: measurements, working setpoints and contract status."""
        out: dict[str, float] = {}
        publishes = self._publishes
        for var, value in measurements.items():
            tag = publishes.get(var)
            if tag is not None:
                out[tag] = value
        for name, lp in self._loops.items():
            out[lp.pv_tag] = applied[name]
            if self.mode is not Mode.ACTIVE:
                out[lp.sp_tag] = lp.working  # setpoint tracking for a bumpless start
        validity = self._all_valid
        if bad:
            validity = 0
            for bit, bound in self._validity_bits:
                if bound not in bad:
                    validity |= bit
        out.update(
            {
                "mpc_permissive": float(self.permissive),
                "mpc_active": float(self.mode is Mode.ACTIVE),
                "mpc_fallback_alarm": float(self._c.alarm),
                "interlock_active": float(bool(self._c.interlock)),
                "operator_reset": 0.0,
                "plc_heartbeat": float(self.scan_count % _WRAP),
                "plc_scan_counter": float(self.scan_count % _WRAP),
                "measurement_validity": float(validity),
            }
        )
        return out
