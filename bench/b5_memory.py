"""B5: memory, the resident set size (RSS) of the runtime from 10^3 to 10^5 control cycles.

The CSTR site (sample time 0.005 h = 18 s of process time, on a stepped clock: no waiting)
runs cycle after cycle through the runtime's per-cycle path, as B2 times it
(:mod:`b2_cycle`): memory port, the supervisor (read, quality, EKF, policy in a worker
thread, safety, heartbeat, audited setpoint writes), the SQLite audit trail and the SQLite
historian (retention ``max_cycles`` = 500, see below), with the HIL rig's virtual PLC and
true plant on the other side of the tag table (the plant integrated in one step per sample
here, to save time; the rig lives in the same process, so its memory counts too).

Two cases, each 10^3 -> 10^5 cycles (checkpoints 10^3, 10^4, 3*10^4, 6*10^4 and 10^5; growth
from the first to the last against the 10 MB target; ``--quick`` runs a few hundred cycles):

* **MPC solve every cycle** (``mpc`` case, issue 19's target): the controller config's MPC
  (its ``solver.backend``) solves every cycle against the moving true plant (one integration
  step per sample), so its history bound (``history_limit``) and its solver's caches are in
  the path. The bench counts the policy's steps and fails unless the MPC decided in at least
  99 % of the cycles.
* **fixed decision**: the policy returns a precomputed MPC decision
  (:class:`b2_runtime.FixedDecision`); everything else on the controller's side is the real
  path, so a growth here is not the solver's. The true plant runs ``SETTLE_CYCLES`` cycles to
  the steady state of the held inputs, then stands still there (the virtual PLC still scans,
  counts and publishes every cycle). Its measurements are the still plant's noise-free
  outputs plus a deterministic dither (``-a, 0, +a`` in turn, ``a`` a quarter of the
  scenario's noise std): a reading repeated exactly scan after scan, or taking two values
  only (the CSTR's analysers: ``frozen_values`` 2 over four reads), is what the runtime's data
  trust calls a stuck transmitter (``frozen_after`` in the tag map), and holds on.

Either case raises (an error row) unless the loop stayed RUNNING: no fallback, no cycle held
on stale or frozen data, a decision and a setpoint write in at least 99 % of the cycles.

The audit trail and the historian are the runtime's own SQLite files, placed on tmpfs
(``/dev/shm``) when there is one: the SQLite calls are the same, but an fsync there costs
nothing, so 10^5 cycles fit in the time (on this machine's disk the audit trail's two
``synchronous=FULL`` commits a cycle took 1.5 to 8 ms, depending on what else used the disk).
Their pages are page cache, not this process's RSS; their sizes are reported separately.
The historian keeps 500 cycles instead of its default 100 000: its retention query
(``_PRUNE`` in ``controller/runtime/historian.py``, run on every insert) steps through
every retained row, so one ``record`` costs about 0.8 ms with 10^3 rows kept, 7 ms with 10^4
and 63 ms with 10^5 (measured here, 1.4 kB rows), and 10^5 cycles at the default would take
over half an hour. The calls are the same; only the number of rows kept on disk differs.

The bench's own per-cycle records are not kept (see :func:`run_cycles`): what grows is the
runtime's. RSS is ``VmRSS`` from ``/proc/self/status`` (kB). At each checkpoint the raw
results also hold RssAnon/RssFile/VmHWM, the Python objects the collector tracks, by type,
the sizes of the audit and historian files and the supervisor's and MPC's in-memory
histories. After the last checkpoint a short window runs under ``tracemalloc`` (so its
overhead touches no RSS figure) and names the source lines whose allocations grew, in bytes
per cycle.

    python bench/b5_memory.py [--quick] [--case fixed|mpc] [--json FILE]
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import gc
import itertools
import json
import os
import tempfile
import time
import tracemalloc
from collections import Counter
from collections.abc import Awaitable, Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from b2_runtime import (
    FixedDecision,
    Runtime,
    filesystem_of,
    precomputed_decision,
    runtime_for,
    site_for,
)
from b2_runtime import working_setpoints as plc_setpoints
from run import case_failed, markdown_table, row

from controller.core.policy import build_policy
from controller.runtime.site import Site
from controller.runtime.solver_cache import LibraryCache
from hil.rig import HilRig

TARGET_MB = 10.0
LABELS = {
    "fixed": "fixed precomputed decision (no solve), full per-cycle path",
    "mpc": "MPC solve every cycle, full per-cycle path",
}
FULL_SIZE = (1_000, 10_000, 30_000, 60_000, 100_000)
FULL = {"fixed": FULL_SIZE, "mpc": FULL_SIZE}
QUICK = {"fixed": (500, 2_000), "mpc": (200, 400)}
TRACE_WINDOW = {"fixed": 500, "mpc": 200}
TRACE_WARMUP = 100
#: fixed case: cycles on the moving plant before it stands still (it settles in about 200)
SETTLE_CYCLES = 300
HISTORIAN_MAX_CYCLES = 500  # the default 100 000 makes every insert O(rows kept): see above
TRACE_FRAMES = 12
DITHER_OF_NOISE = 0.25  # the still plant's dither, as a fraction of the measurement noise std


# ---------------------------------------------------------------------- what we look at
def proc_status() -> dict[str, int]:
    """VmRSS, RssAnon, RssFile, RssShmem and VmHWM of this process [kB]."""
    out = {}
    for line in Path("/proc/self/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "RssAnon", "RssFile", "RssShmem", "VmHWM"):
            out[key] = int(value.split()[0])
    return out


def object_census() -> Counter[str]:
    """Objects the garbage collector tracks, by type name (containers and instances)."""
    gc.collect()
    return Counter(type(o).__name__ for o in gc.get_objects())


def file_sizes(folder: Path) -> dict[str, int]:
    return {p.name: p.stat().st_size for p in sorted(folder.iterdir()) if p.is_file()}


def mpc_history(policy: Any) -> int | None:
    """Steps held in a do-mpc MPC's data history (None when the policy has none)."""
    data = getattr(getattr(policy, "mpc", None), "data", None)
    if data is None:
        return None
    try:
        return int(data["_time"].shape[0])
    except (KeyError, AttributeError, TypeError, IndexError):
        return None


class StepCount:
    """Counts a policy's ``step`` calls: its decisions (MPC solves, in the ``mpc`` case)."""

    def __init__(self, policy: Any) -> None:
        self.calls = 0
        inner = policy.step

        def step(*args: Any, **kwargs: Any) -> Any:
            self.calls += 1
            return inner(*args, **kwargs)

        policy.step = step


def checkpoint(
    rt: Runtime, tmp: Path, cycles: int, wall_s: float, steps: StepCount
) -> dict[str, Any]:
    census = object_census()
    return {
        "cycles": cycles,
        "policy_steps": steps.calls,
        "wall_s": round(wall_s, 2),
        **proc_status(),
        "gc_objects": sum(census.values()),
        "census": dict(census.most_common(40)),
        "files": file_sizes(tmp),
        "supervisor_views": len(rt.supervisor.views),
        "plc_events": len(rt.rig.log.plc_events),
        "mpc_history_steps": mpc_history(rt.policy),
        "counters": dataclasses.asdict(rt.supervisor.counters),
    }


def census_growth(first: dict[str, Any], last: dict[str, Any], top: int = 8) -> dict[str, int]:
    grown = Counter(last["census"])
    grown.subtract(first["census"])
    return {k: v for k, v in grown.most_common(top) if v > 0}


def traced_growth(
    snap0: tracemalloc.Snapshot, snap1: tracemalloc.Snapshot, cycles: int
) -> list[dict[str, Any]]:
    """Allocation sites whose live memory grew over the window, top 8, per cycle.

    ``where`` is the line that allocated; ``via`` the innermost line of the project's code
    (controller/, hil/, plant_models/) on the way to it.
    """
    out = []
    for stat in snap1.compare_to(snap0, "traceback")[:8]:
        if stat.size_diff <= 0:
            continue
        frames = list(reversed(stat.traceback))  # most recent call first
        ours = next((f for f in frames if _ours(f.filename)), None)
        out.append(
            {
                "where": f"{_short(frames[0].filename)}:{frames[0].lineno}",
                "via": f"{_short(ours.filename)}:{ours.lineno}" if ours is not None else "",
                "bytes_per_cycle": round(stat.size_diff / cycles, 1),
                "blocks_per_cycle": round(stat.count_diff / cycles, 3),
                "bytes_total": stat.size_diff,
            }
        )
    return out


def _ours(filename: str) -> bool:
    return any(f"/{p}/" in filename for p in ("controller", "hil", "plant_models"))


def _short(filename: str) -> str:
    for marker in ("site-packages/", "/work/main/", "lib/python3.11/"):
        if marker in filename:
            return filename.split(marker, 1)[1]
    return filename


# ---------------------------------------------------------------------- running
def dither_amplitudes(rig: HilRig, outputs: Mapping[str, float]) -> dict[str, float]:
    """Per measured output, the still plant's dither: a quarter of the scenario's noise std.

    A quarter sigma is well inside the noise the estimator expects, and for the CSTR's
    int16 x0.01 temperatures (noise 0.05 degC, dither 0.0125 degC) it is larger than one
    encoding step, so consecutive reads differ on every port. An output without noise in the
    scenario gets a relative 1e-6 instead.
    """
    noise = rig.scenario.true_plant.noise_std
    return {
        name: noise[name] * DITHER_OF_NOISE if noise.get(name, 0.0) > 0 else 1e-6 * max(1.0, abs(v))
        for name, v in outputs.items()
    }


def still_plant_scan(rig: HilRig) -> Callable[[], Awaitable[None]]:
    """A PLC scan as :meth:`HilRig.scan` does it, with the true plant frozen at its state now:
    the virtual PLC scans, counts and publishes as usual.

    The measurements are the frozen plant's noise-free outputs plus a deterministic dither,
    ``-a, 0, +a`` in turn (``a`` from :func:`dither_amplitudes`), so no two consecutive reads
    are equal and every three take three values: a live transmitter's reading never repeats
    exactly, and the runtime's data trust (rightly) calls one that does, or one flickering
    between two values, a stuck transmitter (``frozen_after``, ``frozen_values``) and holds.
    """
    truth = rig.plant.true_state()
    still = dict(truth.outputs)
    amplitude = dither_amplitudes(rig, still)
    plant_view = {**truth.states, **truth.expressions, **still}
    scans = itertools.count()

    async def scan() -> None:
        step = next(scans) % 3 - 1
        measured = {name: v + step * amplitude[name] for name, v in still.items()}
        applied = rig.vplc.scan(rig.clock.now(), rig.plant.t, plant_view)
        image = rig.vplc.image(measured, set(), applied)
        for server in rig.servers:
            await server.publish(image)

    return scan


def policy_for(case: str, site: Site, hold: dict[str, float]) -> Any:
    if case == "fixed":
        return FixedDecision(precomputed_decision(site, hold))
    mpc = build_policy(site.controller, site.model, compile=LibraryCache(), source=str(site.path))
    mpc.reset(hold)
    return mpc


async def run_cycles(rt: Runtime, k: int, n: int) -> int:
    """Run ``n`` cycles from cycle ``k`` (untimed); returns the next cycle's number.

    The harness's per-cycle CPU-time record (``Runtime.cpu_ms``: B2's instrumentation, not
    the runtime's) is emptied after every cycle: B5 never reads it, and 10^5 of its tuples
    alone held ~9 MB (89 B a cycle, by tracemalloc over 4,000 cycles of the fixed case).
    """
    for _ in range(n):
        await rt.cycle(k)
        rt.phases.close_cycle(False)
        harness_record = getattr(rt, "cpu_ms", None)
        if harness_record is not None:
            harness_record.clear()
        k += 1
    return k


async def measure(case: str, checkpoints: Sequence[int], trace_window: int) -> dict[str, Any]:
    site = site_for("memory")
    policy = policy_for(case, site, plc_setpoints("memory"))
    steps = StepCount(policy)
    points: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="pharmatwin-b5-", dir=storage_dir()) as tmp_name:
        tmp = Path(tmp_name)
        storage = filesystem_of(tmp)
        async with runtime_for(
            "memory", tmp, policy, plant_substeps=1, historian_max_cycles=HISTORIAN_MAX_CYCLES
        ) as rt:
            started = time.perf_counter()
            k = 0
            if case == "fixed":  # settle at the held inputs' steady state, then stand still
                k = await run_cycles(rt, k, SETTLE_CYCLES)
                rt.scan = still_plant_scan(rt.rig)
            for target in checkpoints:
                k = await run_cycles(rt, k, target - k)
                points.append(checkpoint(rt, tmp, k, time.perf_counter() - started, steps))
                print(f"B5 {case}: {k} cycles, VmRSS {points[-1]['VmRSS'] / 1024:.1f} MB",
                      flush=True)  # fmt: skip
                check_running(case, points[-1]["counters"], k, steps.calls)
            k = await run_cycles(rt, k, TRACE_WARMUP)
            tracemalloc.start(TRACE_FRAMES)
            snap0 = tracemalloc.take_snapshot()
            k = await run_cycles(rt, k, trace_window)
            gc.collect()
            snap1 = tracemalloc.take_snapshot()
            tracemalloc.stop()
            traced = traced_growth(snap0, snap1, trace_window)
            counters = dataclasses.asdict(rt.supervisor.counters)
    check_running(case, counters, k, steps.calls)
    first, last = points[0], points[-1]
    growth_kb = last["VmRSS"] - first["VmRSS"]
    span = last["cycles"] - first["cycles"]
    return {
        "case": case,
        "checkpoints": points,
        "rss_growth_mb": growth_kb / 1024,
        "rss_growth_bytes_per_cycle": growth_kb * 1024 / span,
        "rss_anon_growth_mb": (last["RssAnon"] - first["RssAnon"]) / 1024,
        "gc_object_growth": census_growth(first, last),
        "tracemalloc_window_cycles": trace_window,
        "tracemalloc_growth": traced,
        "counters": counters,
        "storage_filesystem": storage,
        "backend": str(getattr(getattr(site.controller, "solver", None), "backend", "do-mpc")),
    }


def check_running(case: str, counters: dict[str, int], cycles: int, steps: int) -> None:
    """Raise unless the loop stayed RUNNING: no fallback, no cycle held on stale or frozen
    data, and a decision (``steps``: MPC solves in the ``mpc`` case) and a setpoint write in
    at least 99 % of the cycles (the estimator may reject a rare measurement at its
    innovation gate and hold that cycle)."""
    least = 0.99 * cycles
    if counters["fallbacks"] or counters["stale_data"] or min(counters["writes"], steps) < least:
        raise RuntimeError(
            f"B5 {case}: the loop did not stay RUNNING over {cycles} cycles ({steps} policy "
            f"steps); counters {counters}"
        )


def storage_dir() -> str | None:
    """``/dev/shm`` when it is a writable tmpfs, else None (the default temporary folder)."""
    shm = Path("/dev/shm")
    ok = shm.is_dir() and os.access(shm, os.W_OK) and filesystem_of(shm).startswith("tmpfs")
    return str(shm) if ok else None


def rows_for(m: dict[str, Any], quick: bool) -> list[dict[str, Any]]:
    pts = m["checkpoints"]
    first, last = pts[0], pts[-1]
    label = LABELS[m["case"]]
    if m["case"] == "mpc":
        label += f" (backend {m['backend']})"
    storage = m["storage_filesystem"].split()[0]
    case = (
        f"{label}, {first['cycles']:,} -> {last['cycles']:,} cycles, SQLite on {storage}, "
        f"historian keeps {HISTORIAN_MAX_CYCLES}"
    )
    official = (first["cycles"], last["cycles"]) == (FULL_SIZE[0], FULL_SIZE[-1])
    target = f"<= {TARGET_MB:g} MB from 10^3 to 10^5" if official else ""
    met = m["rss_growth_mb"] <= TARGET_MB if official else None
    top = m["tracemalloc_growth"][:2]
    where = "; ".join(_site(t) for t in top) or "none"
    return [
        row(case, f"RSS after {first['cycles']:,}", first["VmRSS"] / 1024, "MB"),
        row(case, f"RSS after {last['cycles']:,}", last["VmRSS"] / 1024, "MB"),
        row(case, "RSS growth", m["rss_growth_mb"], "MB", target, met),
        row(case, "RSS growth per cycle", m["rss_growth_bytes_per_cycle"], "B"),
        row(case, "of it RssAnon (heap) growth", m["rss_anon_growth_mb"], "MB"),
        row(case, "MPC solves" if m["case"] == "mpc" else "decisions", last["policy_steps"]),
        row(case, "top traced growth per cycle", where, ""),
    ]


def _site(t: dict[str, Any]) -> str:
    via = f" (via {t['via']})" if t["via"] and t["via"] != t["where"] else ""
    return f"{t['bytes_per_cycle']:g} B at {t['where']}{via}"


def run(quick: bool = False, cases: Sequence[str] = ("fixed", "mpc")) -> dict[str, Any]:
    sizes = QUICK if quick else FULL
    rows: list[dict[str, Any]] = []
    raw: dict[str, Any] = {}
    failed = False
    for case in cases:
        window = TRACE_WINDOW[case] // (5 if quick else 1)
        try:
            m = asyncio.run(measure(case, sizes[case], window))
        except Exception as exc:
            bad, raw[case] = case_failed(LABELS[case], exc)
            rows.append(bad)
            failed = True
            continue
        raw[case] = m
        rows += rows_for(m, quick)
    result = {"name": "B5", "title": "memory (RSS) over control cycles", "rows": rows, "raw": raw}
    return {**result, "status": "error"} if failed else result


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--case", choices=["fixed", "mpc"], action="append")
    ap.add_argument("--json", type=Path, help="also write the whole result (raw figures) here")
    args = ap.parse_args()
    result = run(args.quick, args.case or ("fixed", "mpc"))
    if args.json is not None:
        args.json.write_text(json.dumps(result, indent=1, default=str))
    print(markdown_table([result]))


if __name__ == "__main__":
    main()
