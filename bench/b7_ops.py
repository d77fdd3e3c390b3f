"""B7: what the operator side costs the B2 cycle (the web view and the Prometheus metrics).

The B2 memory-port cycle (``bench/b2_cycle.py``: the CSTR site in closed loop, RUNNING under
the virtual PLC, solve excluded) is timed in alternating blocks: without sinks, and with the
operator view (served by uvicorn on a free loopback port, one browser-like client reading
its Server-Sent Events the whole time) and the metrics exporter (scraped between blocks) as
the runtime's sinks. The figure is the difference of the medians, in ms per cycle; target
<= 0.5 ms.

    python bench/b7_ops.py [--cycles 300] [--blocks 4]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import tempfile
import threading
import time
from pathlib import Path

import httpx
from b2_runtime import FixedDecision, precomputed_decision, runtime_for, site_for, working_setpoints

from controller.runtime.metrics import MetricsSink
from controller.runtime.ui import OperatorView, parse_bind


def _listen(url: str, stop: threading.Event, got: list[int]) -> None:
    """A client of the page's event stream, in its own thread (as a browser would be)."""
    with httpx.Client(timeout=None) as client, client.stream("GET", url + "/api/events") as r:
        for line in r.iter_lines():
            if line.startswith("data: "):
                got.append(len(line))
            if stop.is_set():
                return


async def measure(cycles: int, blocks: int) -> dict[str, float]:
    decision = precomputed_decision(site_for("memory"), working_setpoints("memory"))
    with tempfile.TemporaryDirectory(prefix="pharmatwin-b7-") as tmp_name:
        async with runtime_for("memory", Path(tmp_name), FixedDecision(decision)) as rt:
            sup = rt.supervisor
            plain = sup.historian
            assert plain is not None
            view = OperatorView(parse_bind("--ui", "127.0.0.1:0"))
            metrics = MetricsSink(parse_bind("--metrics", "127.0.0.1:0"))
            stop = asyncio.Event()
            view.start(sup, stop)
            metrics.start(sup, stop)

            def with_sinks(s: object, v: object) -> None:
                plain(s, v)  # type: ignore[arg-type]
                view.cycle(s, v)  # type: ignore[arg-type]
                metrics.cycle(s, v)  # type: ignore[arg-type]

            done, pushed = threading.Event(), []
            listener = threading.Thread(target=_listen, args=(view.url, done, pushed))
            listener.start()
            times: dict[str, list[float]] = {"without": [], "with": []}
            k = 0
            for _ in range(20):  # warm-up
                await rt.cycle(k)
                k += 1
            for block in range(2 * blocks):
                kind = "with" if block % 2 else "without"
                sup.historian = with_sinks if kind == "with" else plain
                for _ in range(cycles):
                    elapsed, _view = await rt.cycle(k)
                    times[kind].append(elapsed * 1e3)
                    k += 1
                httpx.get(f"http://127.0.0.1:{metrics.port}/metrics")
                await asyncio.sleep(0.3)  # let the UI thread push what it has
            done.set()
            time.sleep(0.5)
            view.close()
            metrics.close()
            listener.join(timeout=5)
    a, b = statistics.median(times["without"]), statistics.median(times["with"])
    return {
        "median_without_ms": a,
        "median_with_ms": b,
        "cost_ms": b - a,
        "cycles_each": float(len(times["with"])),
        "events_pushed": float(len(pushed)),
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--cycles", type=int, default=300, help="cycles per block")
    p.add_argument("--blocks", type=int, default=4, help="blocks of each kind, alternating")
    args = p.parse_args()
    result = asyncio.run(measure(args.cycles, args.blocks))
    for key, value in result.items():
        print(f"{key}: {value:.4g}")


if __name__ == "__main__":
    main()
