"""Prometheus metrics of a run (``pharmatwin run --metrics 127.0.0.1:9108``).

Histograms are observed in the sink (two observations a cycle); the supervisor's counters,
its state and the drift statistics are read at scrape time by a collector, in the exporter's
thread, so a scrape costs the control loop nothing.

Metrics: ``pharmatwin_cycle_duration_seconds`` (from the cycle's scheduled start to its end,
on the runtime's clock), ``pharmatwin_solve_seconds``, ``pharmatwin_holds_total`` (cycles
the safety layer held), ``pharmatwin_state{state}`` (1 for the current one),
``pharmatwin_<counter>_total`` for every supervisor counter (cycles, writes, fallbacks,
stale_data, bad_data, read_failures, drift_alarms, ...) and ``pharmatwin_drift{statistic}``.

Liveness: the state and the counters keep their last values when the loop stops cycling, and
the state stays SHADOW while no read reaches the PLC; these gauges say so, on the sink's wall
clock (``now``: unix seconds, injected in tests):

* ``pharmatwin_last_cycle_timestamp_seconds``: when the newest cycle completed;
* ``pharmatwin_last_good_read_timestamp_seconds``: when the newest cycle whose read of the PLC
  returned values (of any quality) completed;
* ``pharmatwin_plc_read_ok``: 1 if the newest cycle's read returned values, 0 if it failed;
* ``pharmatwin_stalled``: 1 if no cycle has completed for longer than the operator view
  allows, as of the scrape, by the view's own rule
  (:func:`controller.runtime.liveness.liveness`).

The first three are absent until there is something to say (no cycle yet, no read that
worked yet); ``pharmatwin_stalled`` is 0 before the first cycle, as on the operator page.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry, Counter, Histogram, start_http_server
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from controller.runtime.liveness import cycle_period_s, liveness
from controller.runtime.ui.bind import Bind, check_tls, listen_error

if TYPE_CHECKING:
    from controller.runtime.supervisor import CycleView, Supervisor

_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)


class _SupervisorCollector(Collector):
    def __init__(self, now: Callable[[], float]) -> None:
        self.sup: Supervisor | None = None
        self.monitor: dict[str, float] = {}
        self.now = now
        self.last_cycle_at: float | None = None  # ``now()`` when the newest cycle completed
        self.last_good_read_at: float | None = None  # ... the newest whose PLC read worked
        self.read_ok: bool | None = None  # the newest cycle's read of the PLC worked
        self.period_s = 1.0  # wall seconds between cycles (the stall rule's), once started

    def cycle(self, sup: Supervisor, view: CycleView) -> None:
        at = self.now()
        self.read_ok = view.snapshot is not None  # only a failed read leaves a cycle none
        if self.read_ok:
            self.last_good_read_at = at
        self.last_cycle_at = at

    def collect(self) -> Iterator[CounterMetricFamily | GaugeMetricFamily]:
        sup = self.sup
        if sup is None:
            return
        yield from self._liveness()
        for name, value in vars(sup.counters).items():
            if name == "bad_in_a_row":
                yield GaugeMetricFamily(
                    "pharmatwin_bad_in_a_row", "consecutive cycles with bad data", value=value
                )
                continue
            yield CounterMetricFamily(f"pharmatwin_{name}", f"supervisor counter {name}", value)
        from controller.runtime.supervisor import State

        state = GaugeMetricFamily(
            "pharmatwin_state", "the supervisor's state (1: current)", labels=["state"]
        )
        for s in State:
            state.add_metric([s.value], 1.0 if sup.state is s else 0.0)
        yield state
        drift = GaugeMetricFamily(
            "pharmatwin_drift", "drift chart statistics of the twin", labels=["statistic"]
        )
        for key, value in list(self.monitor.items()):
            if key.startswith("chart.") and math.isfinite(value):
                drift.add_metric([key.removeprefix("chart.")], value)
        yield drift

    def _liveness(self) -> Iterator[GaugeMetricFamily]:
        """The liveness gauges (see the module docstring), ``stalled`` as of now."""
        for name, at, what in (
            ("pharmatwin_last_cycle_timestamp_seconds", self.last_cycle_at, "a cycle"),
            (
                "pharmatwin_last_good_read_timestamp_seconds",
                self.last_good_read_at,
                "a cycle whose read of the PLC returned values",
            ),
        ):
            if at is not None:
                yield GaugeMetricFamily(
                    name, f"unix time (s) at which {what} last completed", value=at
                )
        if self.read_ok is not None:
            yield GaugeMetricFamily(
                "pharmatwin_plc_read_ok",
                "1 if the newest cycle's read of the PLC returned values (of any quality),"
                " 0 if it failed (no connection, timeout, refused)",
                value=1.0 if self.read_ok else 0.0,
            )
        live = liveness(self.last_cycle_at, self.now(), self.period_s)  # the view's rule
        yield GaugeMetricFamily(
            "pharmatwin_stalled",
            f"1 if no cycle has completed for more than {live['stale_after_s']:g} s"
            " (the operator view's stall limit), as of this scrape; 0 otherwise and before"
            " the first cycle",
            value=1.0 if live["stalled"] else 0.0,
        )


class MetricsSink:
    """The runtime sink that exports Prometheus metrics over HTTP on ``bind``."""

    def __init__(
        self,
        bind: Bind,
        registry: CollectorRegistry | None = None,
        *,
        now: Callable[[], float] = time.time,
    ) -> None:
        """``now``: the wall clock (unix seconds) of the liveness gauges."""
        self.bind = bind
        self.registry = registry or CollectorRegistry()
        self.cycle_time = Histogram(
            "pharmatwin_cycle_duration_seconds",
            "from the cycle's scheduled start to its end, on the runtime's clock",
            buckets=_BUCKETS,
            registry=self.registry,
        )
        self.solve_time = Histogram(
            "pharmatwin_solve_seconds",
            "wall time of each MPC solve",
            buckets=_BUCKETS,
            registry=self.registry,
        )
        self.holds = Counter(
            "pharmatwin_holds", "cycles the safety layer held", registry=self.registry
        )
        self.collector = _SupervisorCollector(now)
        self.registry.register(self.collector)
        self.port = bind.port
        self._server: object | None = None

    def start(self, sup: Supervisor, stop: asyncio.Event) -> None:
        """Listen on ``bind``; raises ListenError naming ``--metrics`` (port in use, ...) or
        ``--tls-cert``/``--tls-key`` (not a certificate and its key)."""
        self.collector.sup = sup
        check_tls(self.bind)
        try:
            server, _thread = start_http_server(
                self.bind.port,
                addr=self.bind.host,
                registry=self.registry,
                certfile=str(self.bind.tls_cert) if self.bind.tls_cert else None,
                keyfile=str(self.bind.tls_key) if self.bind.tls_key else None,
            )
        except OSError as exc:
            raise listen_error("--metrics", self.bind, exc) from exc
        self._server = server
        self.port = int(server.server_address[1])
        self.collector.period_s = cycle_period_s(sup)  # no cycle before it: not stalled

    def cycle(self, sup: Supervisor, view: CycleView) -> None:
        self.cycle_time.observe(max(0.0, sup.clock.now() - view.t))
        d = view.decision
        if d is not None and math.isfinite(d.solve_time_s):
            self.solve_time.observe(d.solve_time_s)
        if view.outcome is not None and view.outcome.held:
            self.holds.inc()
        if view.monitor:
            self.collector.monitor = view.monitor
        self.collector.cycle(sup, view)

    def close(self) -> None:
        server = self._server
        if server is not None:
            server.shutdown()  # type: ignore[attr-defined]
            server.server_close()  # type: ignore[attr-defined]
