"""Prometheus metrics of a running twin, scraped over HTTP on a free loopback port."""

from __future__ import annotations

from pathlib import Path

import httpx
from prometheus_client.parser import text_string_to_metric_families
from test_ui_api import running_twin

from controller.runtime.metrics import MetricsSink
from controller.runtime.ui import parse_bind


def _samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    out = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


async def test_scrape_counts_cycles_solves_state_and_drift(tmp_path: Path) -> None:
    sink = MetricsSink(parse_bind("--metrics", "127.0.0.1:0"))
    async with running_twin(tmp_path, extra=(sink,), cycles=4) as twin:
        assert twin.sup is not None
        async with httpx.AsyncClient() as client:
            resp = await client.get(f"http://127.0.0.1:{sink.port}/metrics")
        assert resp.status_code == 200
        got = _samples(resp.text)
        cycles = got[("pharmatwin_cycles_total", ())]
        assert cycles >= 4
        assert got[("pharmatwin_cycle_duration_seconds_count", ())] >= 4
        assert got[("pharmatwin_solve_seconds_count", ())] >= 1
        assert got[("pharmatwin_solve_seconds_sum", ())] > 0
        state = twin.sup.state.value
        assert got[("pharmatwin_state", (("state", state),))] == 1.0
        assert sum(v for (n, _), v in got.items() if n == "pharmatwin_state") == 1.0
        for name in ("holds", "fallbacks", "stale_data", "bad_data", "writes"):
            assert (f"pharmatwin_{name}_total", ()) in got, name
        assert got[("pharmatwin_writes_total", ())] >= 1
        assert "# HELP pharmatwin_drift drift chart statistics" in resp.text
        # the drift charts warm up for 0.15 h (30 cycles): give the collector a cycle's
        # figures as the twin reports them (NaN until a chart has a value)
        sink.collector.monitor = {"chart.cusum:Kw:high": 1.5, "chart.ewma:T_R": float("nan")}
        async with httpx.AsyncClient() as client:
            again = _samples((await client.get(f"http://127.0.0.1:{sink.port}/metrics")).text)
        assert again[("pharmatwin_drift", (("statistic", "cusum:Kw:high"),))] == 1.5
        assert ("pharmatwin_drift", (("statistic", "ewma:T_R"),)) not in again
    # closed with the run: the port no longer answers
    async with httpx.AsyncClient() as client:
        try:
            await client.get(f"http://127.0.0.1:{sink.port}/metrics", timeout=2)
            closed = False
        except httpx.ConnectError:
            closed = True
    assert closed
