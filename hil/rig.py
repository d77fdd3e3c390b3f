"""The HIL rig: true plant + virtual PLC + Modbus/OPC UA servers, on one clock.

Every PLC scan (``scan_period_s`` of wall time) the rig

1. integrates the true plant up to the clock's process time, in steps of ``plant_step``
   (model time unit), with the inputs the PLC applied (after actuator faults) and the
   parameters of the moment (after degradation faults);
2. measures (seeded noise, then sensor faults), scans the virtual PLC, and
3. publishes the PLC image to every server (bad-quality tags from dropouts and comm faults),
   and applies communication faults (latency, dropped connections, restarts).

Controller writes reach the PLC through the servers' write hook, synchronously.
"""

from __future__ import annotations

import asyncio
import bisect
import contextlib
import logging
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from controller.binding import Binding
from controller.clock import Clock
from controller.configfile import resolve
from controller.core.recipe import RecipePlayer
from controller.plantfile import build_model
from controller.runtime.site import Site
from controller.timebase import TimeBase
from hil.faultcheck import FaultTargets, check_fault, check_scheduled
from hil.faults import FaultEvent, FaultSet
from hil.faultspec import FaultSpec
from hil.plant_ahead import lookahead_for
from hil.plant_runner import PlantDomainError, PlantFault, PlantRunner, PlantState
from hil.scenario import ScenarioConfig, load_scenario
from hil.servers.base import PlcServer
from hil.site import hil_section
from hil.vplc import PlcEvent, VirtualPlc

log = logging.getLogger("pharmatwin.hil.rig")

AtBatchEnd = Literal["exit", "hold", "repeat"]


@dataclass
class RigLog:
    plc_events: list[PlcEvent] = field(default_factory=list)
    fault_events: list[FaultEvent] = field(default_factory=list)
    #: the true plant left its validity domain (it stops there: the equations no longer hold)
    plant_faults: list[PlantFault] = field(default_factory=list)


class _RecipeStart:
    """``RecipePlayer.inputs_at``, looked up once per table row for a ``previous`` recipe (its
    inputs hold from one row's time to the next): the rig asks at every plant step."""

    def __init__(self, player: RecipePlayer) -> None:
        self._player = player
        held = player.recipe.interpolation == "previous"
        self._times = [float(r.t) for r in player.recipe.table] if held else []
        self._lo, self._hi = math.inf, -math.inf  # the rows' span of ``_inputs``: none yet
        self._inputs: dict[str, float] = {}

    def inputs_at(self, t: float) -> dict[str, float]:
        """What ``inputs_at(t)`` returns (not to be changed: kept for the next call)."""
        if not self._times:
            return self._player.inputs_at(t)
        if not self._lo <= t < self._hi:
            times = self._times
            i = max(bisect.bisect_right(times, t) - 1, 0)  # inputs_at's row
            self._lo = times[i] if i > 0 else -math.inf
            self._hi = times[i + 1] if i + 1 < len(times) else math.inf
            self._inputs = self._player.inputs_at(t)
        return self._inputs


class HilRig:
    """Runs one site's plant and PLC against its servers until stopped."""

    def __init__(
        self,
        site: Site,
        clock: Clock,
        servers: list[PlcServer],
        *,
        on_scan: Callable[[HilRig], None] | None = None,
        scenario: ScenarioConfig | None = None,
        lookahead: bool = False,
    ) -> None:
        """``scenario``: the site's scenario, already loaded and checked
        (:func:`~hil.site.load_hil_site_and_scenario`); default: loaded here. ``lookahead``:
        the true plant integrates held inputs a controller sample ahead (:mod:`hil.plant_ahead`:
        the same equations to the same tolerances, not bit for bit the step-by-step numbers);
        campaigns' fast mode uses it."""
        self._lookahead = lookahead
        hil = hil_section(site)
        if hil is None:
            raise ValueError(f"site {site.name!r} has no 'hil' section to serve")
        self.site = site
        self.hil = hil
        self.clock = clock
        self.servers = servers
        self.log = RigLog()
        #: called at the end of every scan (a campaign records its trajectory there)
        self.on_scan = on_scan
        if scenario is None:
            scenario = load_scenario(site.file(self.hil.scenario))
        self.scenario: ScenarioConfig = scenario
        scen_path = site.file(self.hil.scenario)
        base = build_model(resolve(scen_path, self.scenario.plant))
        self.model = type(base)(base.parameter_set.with_values(self.scenario.true_plant.parameters))
        #: the plant's time unit <-> the clock's seconds
        self.timebase = TimeBase.of(self.model)
        # the true plant moves in finer steps than the controller samples (default: 1/5)
        self.plant_step = self.hil.plant_step or site.controller.sample_time / 5
        tp = self.scenario.true_plant
        self.plant = self._new_plant()
        #: what the rig does when the batch ends (the model's natural end, or the scenario's
        #: duration): ``exit`` (run() returns), ``hold`` (the plant holds its final state while
        #: the PLC and the servers go on) or ``repeat`` (a new batch from the initial state)
        self.at_batch_end: AtBatchEnd = "exit"
        self.batches = 1
        self._t0_s = 0.0  # process time at which the current batch started
        self._held_since: float | None = None
        import numpy as np

        #: what faults may target on this site, and the kinds these servers cannot carry out
        self.fault_targets = FaultTargets.of(
            self.model,
            site.tags,
            plant_step=self.plant_step,
            sample_time=site.controller.sample_time,
            servers=servers,
        )
        # a fault that starts when the run is over would never act: refused with the others
        check_scheduled(
            self.scenario.faults,
            self.fault_targets,
            str(scen_path),
            run_end=self.scenario.duration,
        )
        self.faults = FaultSet(
            self.scenario.faults,
            np.random.default_rng(tp.seed + 1),
            on_event=self._fault_event,
            tags=self.fault_targets.tags,
        )
        recipe = (
            RecipePlayer(self.scenario.recipe, self.model.input_names)
            if self.scenario.recipe is not None
            else None
        )
        self._recipe = recipe
        self._recipe_start = _RecipeStart(recipe) if recipe is not None else None
        working = recipe.inputs_at(0.0) if recipe is not None else self.model.nominal_inputs
        working = {**working, **self.scenario.initial_inputs}
        self.vplc = VirtualPlc(
            site.tags,
            self.hil.plc,
            self.model.input_names,
            working,
            local_recipe=recipe.inputs_at if recipe is not None else None,
            on_event=self.log.plc_events.append,
            now=clock.now,
            rate_window_s=self.timebase.seconds(site.controller.sample_time),
        )
        self._applied = dict(working)
        self._nominal_params = self.model.parameters
        self._servers_down = False
        self._readings = Binding.of(site.tags, self.model).reading_tags()
        self._measurements: dict[str, float] = {}
        self._truth: PlantState = self.plant.true_state()
        self._bad: set[str] = set()
        for server in servers:
            server.write_hook = self.vplc.on_write
            if hasattr(server, "write_check"):
                server.write_check = self.vplc.check_write

    def _new_plant(self) -> PlantRunner:
        tp = self.scenario.true_plant
        ahead = lookahead_for(self.site.controller.sample_time, self.plant_step)
        return PlantRunner(
            self.model,
            self.plant_step,
            initial_state=tp.initial_state,
            noise_std=tp.noise_std,
            disturbances=tp.disturbances,
            seed=tp.seed,
            initial_inputs=self.scenario.initial_inputs,
            lookahead=ahead if self._lookahead else 1,
        )

    @property
    def batch_over(self) -> bool:
        """The batch has ended: the model's natural end, or the scenario's duration."""
        ended = self.scenario.stop_when_finished and self.plant.finished()
        return ended or self.plant.t >= self.scenario.duration - 1e-9

    def _restart_batch(self, now: float) -> None:
        """``repeat``: a new batch from the initial state, its time starting now.

        The scenario's schedule starts again; the runtime faults that still act (injected
        "until cleared", or not yet over) go on in the new batch, their times re-based
        (:meth:`FaultSet.carry_into`: a ``"carry"`` event each, in the log and the HIL log
        file), as an operator who injected them expects: a new batch does not repair them.
        """
        import numpy as np

        t_end = self.plant.t
        self.plant = self._new_plant()
        faults = FaultSet(
            self.scenario.faults,
            np.random.default_rng(self.scenario.true_plant.seed + self.batches + 1),
            on_event=self._fault_event,
            tags=self.fault_targets.tags,
        )
        carried = self.faults.carry_into(faults, t_end, batch=self.batches)
        self.faults = faults
        self._t0_s = now
        self._held_since = None
        self.batches += 1
        self._measurements = {}
        log.info(
            "batch %d starts at process time %g s (--repeat); %d runtime fault(s) carried over",
            self.batches,
            now,
            len(carried),
        )

    def _warn_never_active(self) -> None:
        """Log every fault that was still to start when the batch ended: it never acted."""
        end = self.plant.finished_at if self.plant.finished_at is not None else self.plant.t
        unit = self.model.time_unit
        for spec in self.faults.pending():
            log.warning(
                "fault %s on %s scheduled at t=%g %s never became active: the batch ended at "
                "t=%g %s",
                spec.kind,
                spec.target,
                spec.start,
                unit,
                end,
                unit,
            )

    def _fault_event(self, ev: FaultEvent) -> None:
        self.log.fault_events.append(ev)
        log.info("fault %s %s %s at t=%g: %s", ev.action, ev.kind, ev.target, ev.t, ev.detail)

    @property
    def t_model(self) -> float:
        return self.plant.t

    @property
    def scan_t(self) -> float:
        """The last scan's process time on the batch's model-time axis (the plant's time
        ``t_model`` is up to one plant step earlier: it moves in whole steps)."""
        return self.timebase.model_time(self.vplc.scan_time - self._t0_s)

    @property
    def truth(self) -> PlantState:
        """The true plant as of the last scan (evaluated once per scan)."""
        return self._truth

    @property
    def applied(self) -> dict[str, float]:
        """The setpoints the PLC applies now (before actuator faults)."""
        return dict(self._applied)

    @property
    def measured(self) -> tuple[dict[str, float], set[str]]:
        """The latest measurements (after sensor faults) and the outputs of bad quality."""
        return dict(self._measurements), set(self._bad)

    def inject(self, spec: FaultSpec) -> FaultSpec:
        """Inject a fault at runtime (logged as a runtime injection); returns it as held.

        A fault that could not act on this site or these servers raises
        :class:`~hil.faults.FaultRefusedError` (:func:`~hil.faults.check_fault`); nothing is held.
        """
        return self.faults.inject(check_fault(spec, self.fault_targets), self.plant.t)

    # ------------------------------------------------------------------ one scan
    @property
    def plant_fault(self) -> PlantFault | None:
        """The validity-domain excursion that stopped the true plant, if any."""
        return self.plant.fault

    def _advance_plant(self, now: float) -> None:
        target = self.timebase.model_time(now - self._t0_s)
        while self.plant.fault is None and self.plant.t + self.plant_step <= target + 1e-12:
            if self.at_batch_end == "hold" and self.batch_over:
                if self._held_since is None:
                    self._held_since = self.plant.t
                    log.info(
                        "the batch ended at t=%g %s: the plant holds its final state",
                        self.plant.t,
                        self.model.time_unit,
                    )
                self.plant.hold_step()
                self._measurements = {}
                continue
            params = self.faults.parameters(self.plant.t, self._nominal_params)
            actual = self.faults.actuators(self.plant.t, self._applied, self.plant_step)
            try:  # a drift out of a parameter's physical domain is a plant fault too
                if params != self.plant.parameters:
                    self.plant.set_parameters(params)
                self.plant.advance(actual, segments=self._recipe_segments(actual))
            except PlantDomainError as exc:
                self.log.plant_faults.append(exc.fault)
                log.error("plant fault: %s", exc.fault.describe())
            self._measurements = {}  # a new sample is due

    def _recipe_segments(self, actual: Mapping[str, float]) -> list[Any] | None:
        """The PLC's local recipe over the plant step, when that is what the plant gets.

        A ramp of the PLC's own recipe stays a ramp inside the step; anything else (the MPC's
        setpoints, an actuator fault) is held over the step, as the PLC holds it."""
        if self._recipe is None or self._recipe_start is None:
            return None
        if self.faults.acts_on_inputs(self.plant.t):
            return None
        t = self.plant.t
        start = self._recipe_start.inputs_at(t)
        if any(abs(start[n] - v) > 1e-9 * max(1.0, abs(v)) for n, v in actual.items()):
            return None
        return list(self._recipe.segments(t, t + self.plant_step))

    def _measure(self) -> tuple[dict[str, float], set[str], dict[str, float]]:
        truth = self._truth = self.plant.true_state()
        if not self._measurements:
            noisy = self.plant.measure()
            self._measurements, self._bad = self.faults.measurements(self.plant.t, noisy)
        plant_view = {**truth.states, **truth.expressions, **self._measurements}
        return self._measurements, self._bad, plant_view

    async def scan(self) -> None:
        now = self.clock.now()
        self._advance_plant(now)
        measured, bad, plant_view = self._measure()
        self._applied = self.vplc.scan(now, self.plant.t, plant_view)
        image = self.vplc.image(measured, bad, self._applied)
        await self._communications(image, bad)
        if self.on_scan is not None:
            self.on_scan(self)

    async def _communications(self, image: Mapping[str, float], bad: set[str]) -> None:
        comm = self.faults.comms(self.plant.t)
        if comm.servers_down != self._servers_down:
            self._servers_down = comm.servers_down
            for server in self.servers:
                await (server.stop() if comm.servers_down else server.start())
        if self._servers_down:
            return
        readings = self._readings
        bad_tags = {readings[v] for v in bad if v in readings} if bad else set()
        # no comms fault and none held: the servers' empty bad_tags stay as they are (the
        # setter checks every name against the tag map: not a cost to pay every scan)
        comm_bad = {t: "communication fault" for t in comm.bad_tags}
        for server in self.servers:
            server.latency = comm.latency_s
            if comm_bad or server.bad_tags:
                server.bad_tags = comm_bad
            if comm.drop_now:
                await server.drop_connections()
            await server.publish(image, bad=bad_tags)

    async def run(self, stop: asyncio.Event, duration_s: float | None = None) -> None:
        """Scan until ``stop`` is set (or ``duration_s`` of process time has passed)."""
        period = self.hil.plc.scan_period_s
        loop = asyncio.get_running_loop()
        next_scan = loop.time()
        while not stop.is_set():
            await self.scan()
            if duration_s is not None and self.clock.now() >= duration_s:
                break
            if self.plant.fault is not None:
                log.error("the true plant stopped: %s", self.plant.fault.describe())
                break
            if self.batch_over and self.at_batch_end == "exit":
                log.info("the batch ended at t=%g %s", self.plant.t, self.model.time_unit)
                self._warn_never_active()
                break
            if self.batch_over and self.at_batch_end == "repeat":
                self._warn_never_active()
                self._restart_batch(self.clock.now())
            next_scan += period
            delay = next_scan - loop.time()
            if delay < 0:  # overrun: skip the missed scans, never run two at once
                next_scan = loop.time()
                delay = 0.0
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), timeout=max(delay, 0.0) or 1e-3)

    def summary(self) -> dict[str, Any]:
        return {
            "t_model": self.plant.t,
            "batches": self.batches,
            "held_since": self._held_since,
            "time_unit": self.model.time_unit,
            "mode": self.vplc.mode.value,
            "scans": self.vplc.scan_count,
            "applied": dict(self._applied),
            "alarm": self.vplc.alarm,
            "plc_events": len(self.log.plc_events),
            "fault_events": len(self.log.fault_events),
            "plant_fault": self.plant.fault.describe() if self.plant.fault else None,
            "finite": all(math.isfinite(v) for v in self._applied.values()),
            "recent_plc_events": [
                {"t": e.t, "what": e.what, "detail": e.detail} for e in self.log.plc_events[-20:]
            ],
            "active_faults": [f.model_dump() for f in self.faults.active(self.plant.t)],
        }
