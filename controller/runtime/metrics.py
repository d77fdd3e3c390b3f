"""Prometheus metrics of a run (``pharmatwin run --metrics 127.0.0.1:9108``).

Histograms are observed in the sink (two observations a cycle); the supervisor's counters,
its state and the drift statistics are read at scrape time by a collector, in the exporter's
thread, so a scrape costs the control loop nothing.

Metrics: ``pharmatwin_cycle_duration_seconds`` (from the cycle's scheduled start to its end,
on the runtime's clock), ``pharmatwin_solve_seconds``, ``pharmatwin_holds_total`` (cycles
the safety layer held), ``pharmatwin_state{state}`` (1 for the current one),
``pharmatwin_<counter>_total`` for every supervisor counter (cycles, writes, fallbacks,
stale_data, bad_data, read_failures, drift_alarms, ...) and ``pharmatwin_drift{statistic}``.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Iterator
from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry, Counter, Histogram, start_http_server
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from controller.runtime.ui.bind import Bind, check_tls, listen_error

if TYPE_CHECKING:
    from controller.runtime.supervisor import CycleView, Supervisor

_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)


class _SupervisorCollector(Collector):
    def __init__(self) -> None:
        self.sup: Supervisor | None = None
        self.monitor: dict[str, float] = {}

    def collect(self) -> Iterator[CounterMetricFamily | GaugeMetricFamily]:
        sup = self.sup
        if sup is None:
            return
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


class MetricsSink:
    """The runtime sink that exports Prometheus metrics over HTTP on ``bind``."""

    def __init__(self, bind: Bind, registry: CollectorRegistry | None = None) -> None:
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
        self.collector = _SupervisorCollector()
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

    def cycle(self, sup: Supervisor, view: CycleView) -> None:
        self.cycle_time.observe(max(0.0, sup.clock.now() - view.t))
        d = view.decision
        if d is not None and math.isfinite(d.solve_time_s):
            self.solve_time.observe(d.solve_time_s)
        if view.outcome is not None and view.outcome.held:
            self.holds.inc()
        if view.monitor:
            self.collector.monitor = view.monitor

    def close(self) -> None:
        server = self._server
        if server is not None:
            server.shutdown()  # type: ignore[attr-defined]
            server.server_close()  # type: ignore[attr-defined]
