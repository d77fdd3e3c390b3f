"""B-ports: latency of one PLC cycle (read 20 tags, write 4 with read-back) on loopback.

Runs the real HIL servers (pymodbus, asyncua) and the real ports on 127.0.0.1, for each
protocol in turn, and reports the median and p99 of the cycle time over ``--cycles`` cycles
after a warm-up. The server runs on a thread with its own event loop (``bench/plc_thread.py``),
as a PLC answers from its own CPU, so the time is the port's code, the wire and the server's
answer time (the two threads share the GIL; on a loaded machine it includes waking them).
B2 (``bench/b2_cycle.py``) reports these as its "port I/O only" rows, next to the full
runtime cycle; run alone, this script prints its table and writes no file.

    python bench/port_latency.py --cycles 1000
"""

from __future__ import annotations

import argparse
import asyncio
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
from plc_thread import PlcThread

from controller.clock import RealClock
from controller.ports.base import Port
from controller.ports.modbus import ModbusPort
from controller.ports.opcua import OpcUaPort
from controller.ports.settings import Connection
from controller.tags import TagMap
from hil.net import free_port
from hil.servers.modbus import ModbusPlcServer
from hil.servers.opcua import OpcUaPlcServer
from hil.servers.opcua_cache import address_space_shelf


def tag_map() -> TagMap:
    """20 readable float32 measurements and 4 writable float32 setpoints."""
    tags: dict[str, Any] = {}
    for i in range(20):
        tags[f"pv_{i:02d}"] = {
            "unit": "-",
            "direction": "read",
            "modbus": {"table": "input", "address": 2 * i, "type": "float32"},
            "opcua": {"node_id": f"ns=2;s=bench.pv_{i:02d}", "data_type": "Double"},
        }
    for i in range(4):
        tags[f"sp_{i}"] = {
            "unit": "-",
            "direction": "read_write",
            "limits": [0.0, 100.0],
            "modbus": {"table": "holding", "address": 2 * i, "type": "float32"},
            "opcua": {"node_id": f"ns=2;s=bench.sp_{i}", "data_type": "Double"},
        }
    return TagMap.model_validate({"name": "bench", "tags": tags})


async def cycles(port: Port, tm: TagMap, n: int, warmup: int) -> np.ndarray:
    reads = [k for k, t in tm.tags.items() if t.direction.value == "read"]
    writes = [k for k, t in tm.tags.items() if t.writable]
    times = []
    for k in range(n + warmup):
        started = time.perf_counter()
        await port.read(reads)
        report = await port.write({w: float(k % 100) for w in writes})
        elapsed = time.perf_counter() - started
        if not report.ok:
            raise RuntimeError(f"write failed: {report.failed()}")
        if k >= warmup:
            times.append(elapsed)
    return np.array(times) * 1e3


async def bench_modbus(tm: TagMap, n: int, warmup: int) -> np.ndarray:
    async with PlcThread("plc-modbus") as plc, plc.serving(lambda: ModbusPlcServer(tm)) as server:
        conn = Connection(protocol="modbus", port=server.port, timeout_s=2.0)
        async with ModbusPort(tm, conn, RealClock()) as port:
            return await cycles(port, tm, n, warmup)


async def bench_opcua(tm: TagMap, n: int, warmup: int) -> np.ndarray:
    with tempfile.TemporaryDirectory() as tmp:
        async with PlcThread("plc-opcua") as plc:
            shelf = await plc.run(address_space_shelf(Path(tmp)))
            served = plc.serving(lambda: OpcUaPlcServer(tm, free_port(), shelf=shelf))
            async with served as server:
                conn = Connection(protocol="opcua", port=server.port, timeout_s=2.0)
                async with OpcUaPort(tm, conn, RealClock()) as port:
                    return await cycles(port, tm, n, warmup)


LABELS = {"modbus": "Modbus TCP", "opcua": "OPC UA, no security"}


def measure(n: int = 1000, warmup: int = 50) -> dict[str, Any]:
    """Median, p95, p99 and max of the cycle time [ms] per protocol (``latency_stats``)."""
    from run import latency_stats

    tm = tag_map()
    protocols = {}
    for name, fn in (("modbus", bench_modbus), ("opcua", bench_opcua)):
        protocols[name] = latency_stats(asyncio.run(fn(tm, n, warmup)))
    return {"what": "read 20 tags + write 4 with read-back, loopback", "protocols": protocols}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--cycles", type=int, default=1000)
    ap.add_argument("--warmup", type=int, default=50)
    args = ap.parse_args()
    measured = measure(args.cycles, args.warmup)
    print("| protocol | cycles | median [ms] | p95 [ms] | p99 [ms] | max [ms] |")
    print("|---|---|---|---|---|---|")
    for name, r in measured["protocols"].items():
        print(
            f"| {LABELS[name]} | {r['n']} | {r['median']:.3f} | {r['p95']:.3f} | "
            f"{r['p99']:.3f} | {r['max']:.3f} |"
        )


if __name__ == "__main__":
    main()
