"""B2: one cycle of the edge runtime without the solve, over the memory, Modbus and OPC UA ports.

What one timed cycle is: :meth:`controller.runtime.supervisor.Supervisor.cycle` of the CSTR site in
closed loop, RUNNING under the virtual PLC's handshake, exactly as ``pharmatwin run`` runs it
(:func:`runtime_for` mirrors :func:`controller.runtime.wiring.run_site`): read every readable tag,
check quality and staleness, EKF update, the "solve" (a worker-thread hop to a policy that
returns a precomputed decision, so the solve itself is excluded), safety, the heartbeat write,
one ``setpoint.write`` audit record per input, with the heartbeat's (``heartbeat.write``) and
the soft sensors' (``publication.write``), all in one transaction (SQLite, hash-chained,
``synchronous=FULL``: one fsync per cycle), the setpoint write with read-back, the soft
sensors' write, and the historian record (SQLite, WAL).

The PLC side is the real HIL rig (true plant, virtual PLC, the Modbus server or the secured
OPC UA server, Basic256Sha256 SignAndEncrypt with the test-bench CA in ``configs/pki``) on
127.0.0.1 free ports, on a thread with its own event loop (``bench/plc_thread.py``), as a PLC
answers from its own CPU. So the timed cycle is what the controller's process spends: its own
code, the wire (loopback) and the time the PLC takes to answer each request. The rig scans
*between* cycles on a stepped clock (one controller sample per cycle), handed to its thread
and awaited outside the timed window, so neither the plant's integration nor the PLC's scan
is counted. The two threads share one process, hence the GIL: the server's handling of a
request runs while the controller's loop waits for the answer (its answer time), and any
bookkeeping it does after answering can delay the controller's next step by as much. The
memory case uses the campaigns' fast-mode PLC (``hil.servers.memory``), in the timed loop: a
tag table that the PLC's range check and write hook guard, without a server.

A row counts the requests the PLC's server received per timed cycle: Modbus requests (a
Read/Write Multiple Registers request, FC 23, is one: a write and its read-back), or OPC UA
Read and Write service calls.

Two rows split the cycle's CPU: the CPU time of the timed loop's thread within the cycle (the
controller's code on that thread: not the fsync's wait, not the worker threads), and over
Modbus and OPC UA that of the PLC's thread within the cycle (its answers, and whatever else
its server runs meanwhile: work a real PLC does on its own CPU). Wall time beyond both is
waiting: the disk, the process's other threads, the machine's other load.

The storage floor beside each port's cycle (``bench/storage_floor.py``): a bare pwrite of one
audit-database page plus fdatasync, in the audit's folder, timed right after that port's
cycles (as many samples): what one durable block costs on this disk, the least that "audited
before sent" can cost per cycle. The targets are judged on the whole cycle's p99, floor
included.

The historian prunes by id range, so its cost per record does not grow with the rows it
keeps (it did before: 0.8 ms per record with 10^3 rows, 7 ms with 10^4).

The precomputed decision is one real MPC solve at the plant's initial state (so it carries
the predicted trajectories the historian stores), with its inputs set to the PLC's working
setpoints, which hold the plant at its operating point for as many cycles as asked.

The runtime under test (the wiring, the fixed policy, the phase timers) is in
``bench/b2_runtime.py``.

The estimate phase per model (:func:`estimate_phase`): the same call the runtime's estimate
phase is (``ControlPipeline.estimate``) on each shipped controller's estimator, fed the
noisy outputs of the true plant (the plant file's exact model, simulated beforehand with
cvodes/idas, outside the timed window) under constant inputs, batch after batch for the
batch processes (:data:`ESTIMATE_MODELS`). Target: median <= 0.2 ms.

    python bench/b2_cycle.py [--quick] [--port memory ...] [--estimate-only]
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import tempfile
import time
from collections.abc import Collection, Mapping
from pathlib import Path
from typing import Any

from b2_runtime import (
    FixedDecision,
    PortKind,
    filesystem_of,
    precomputed_decision,
    runtime_for,
    site_for,
    working_setpoints,
)
from run import ROOT, case_failed, latency_stats, markdown_table, row
from storage_floor import describe, page_size
from storage_floor import measure as measure_floor

from controller.controllerfile import load_controller
from controller.core.estimator import make_estimator
from controller.core.mpc import Decision
from controller.core.pipeline import ControlPipeline, input_limits
from controller.plantfile import build_model
from controller.runtime.solver_cache import LibraryCache
from controller.runtime.supervisor import State

TARGETS_MS: dict[PortKind, float] = {"modbus": 2.0, "opcua": 5.0}
CASES: dict[PortKind, str] = {
    "memory": "memory port",
    "modbus": "Modbus TCP",
    "opcua": "OPC UA SignAndEncrypt",
}
FULL = {"cycles": 2000, "warmup": 100}
QUICK = {"cycles": 150, "warmup": 30}
#: The models whose estimate phase is timed: the inputs held meanwhile (else nominal), and
#: the samples of one batch (None: a continuous process). A batch model's plant and
#: estimator start again every batch (outside the timed window): the bioreactor fed for
#: 2000 h leaves every range it was built for (X = 14 g/L) and becomes stiff.
ESTIMATE_MODELS: dict[str, tuple[dict[str, float], int | None]] = {
    "bioreactor": ({"u": 0.05}, 150),
    "crystallizer": ({}, 30),
    "cstr": ({}, None),
    "lyophilizer": ({"Tsh": -10.0, "Pch": 0.1}, 40),
}
ESTIMATE_TARGET_MS = 0.2


# ---------------------------------------------------------------------- measuring
async def measure(kind: PortKind, cycles: int, warmup: int, decision: Decision) -> dict[str, Any]:
    """Time ``cycles`` supervisor cycles on ``kind`` after ``warmup``; figures in ms."""
    with tempfile.TemporaryDirectory(prefix="pharmatwin-b2-") as tmp_name:
        tmp = Path(tmp_name)
        async with runtime_for(kind, tmp, FixedDecision(decision)) as rt:
            times, states, wrote = [], [], 0
            for k in range(warmup + cycles):
                elapsed, view = await rt.cycle(k)
                keep = k >= warmup
                rt.phases.close_cycle(keep)
                if keep:
                    times.append(elapsed * 1e3)
                    states.append(view.state)
                    wrote += any(tag in view.written for tag in rt.supervisor.sp_tags.values())
            c = rt.supervisor.counters
            counters = dataclasses.asdict(c)
            plc_events = [(e.t, e.what, e.detail) for e in rt.rig.log.plc_events]
            fs = filesystem_of(tmp)
            phases = rt.phases.per_cycle
            cpu = rt.cpu_ms[warmup:]
            requests = rt.requests[warmup:] if rt.plc_requests is not None else []
            plc_side = f"thread {rt.plc_thread.name}" if rt.plc_thread else "the timed loop"
        floor = measure_floor(tmp, cycles, page_size(tmp / "audit.db"))
    running = sum(s is State.RUNNING for s in states)
    if running < 0.99 * cycles or wrote < 0.99 * cycles:
        raise RuntimeError(
            f"{kind}: only {running}/{cycles} timed cycles RUNNING and {wrote} with a setpoint "
            f"write; counters {counters}; PLC events {plc_events}"
        )
    names = ["read", "estimate", "safety", "write", "audit", "historian"]
    phase_stats = {n: latency_stats([p.get(n, 0.0) for p in phases]) for n in names}
    other = [t - sum(p.values()) for t, p in zip(times, phases, strict=True)]
    phase_stats["other"] = latency_stats(other)
    plc_cpu = [c[1] for c in cpu if c[1] is not None]
    return {
        "port": kind,
        "cycles": cycles,
        "warmup": warmup,
        "cycle_ms": latency_stats(times),
        "phase_ms": phase_stats,
        "cpu_ms": {
            "timed_loop_thread": latency_stats([c[0] for c in cpu]),
            **({"plc_thread": latency_stats(plc_cpu)} if plc_cpu else {}),
        },
        **({"plc_requests_per_cycle": _counts(requests)} if requests else {}),
        "running_cycles": running,
        "cycles_with_setpoint_write": wrote,
        "counters": counters,
        "plc_events": plc_events,
        "plc_runs_on": plc_side,
        "storage_filesystem": fs,
        "storage_floor": floor,
    }


def _counts(requests: list[int]) -> dict[str, float]:
    """Median, min, max and mean of the PLC requests per cycle."""
    ordered = sorted(requests)
    return {
        "median": float(ordered[len(ordered) // 2]),
        "min": float(ordered[0]),
        "max": float(ordered[-1]),
        "mean": sum(ordered) / len(ordered),
    }


def _breakdown(m: Mapping[str, Any], stat: str = "median") -> str:
    parts = [f"{n} {s[stat]:.2f}" for n, s in m["phase_ms"].items()]
    return " / ".join(parts)


def rows_for(m: Mapping[str, Any]) -> list[dict[str, Any]]:
    kind: PortKind = m["port"]
    case = f"{CASES[kind]} ({m['cycles']} cycles)"
    s = m["cycle_ms"]
    target_ms = TARGETS_MS.get(kind)
    target = f"p99 <= {target_ms:g} ms" if target_ms is not None else ""
    met = s["p99"] <= target_ms if target_ms is not None else None
    return [
        row(case, "cycle median", s["median"], "ms"),
        row(case, "cycle p95", s["p95"], "ms"),
        row(case, "cycle p99", s["p99"], "ms", target, met),
        row(case, "median per phase", _breakdown(m), "ms"),
        row(case, "p99 per phase", _breakdown(m, "p99"), "ms"),
        *_cpu_rows(case, m["cpu_ms"]),
        *_request_rows(case, kind, m.get("plc_requests_per_cycle")),
        row(case, _floor_metric(m["storage_floor"]), describe(m["storage_floor"]), "ms"),
    ]


def _cpu_rows(case: str, cpu: Mapping[str, Mapping[str, float]]) -> list[dict[str, Any]]:
    """CPU time within the timed cycle: the timed loop's thread, the PLC's thread if any."""
    names = {
        "timed_loop_thread": "CPU of the timed loop's thread per cycle, median / p99",
        "plc_thread": "CPU of the PLC's thread within the cycle, median / p99",
    }
    return [
        row(case, names[k], f"{s['median']:.3f} / {s['p99']:.3f}", "ms") for k, s in cpu.items()
    ]


def _request_rows(
    case: str, kind: PortKind, counts: Mapping[str, float] | None
) -> list[dict[str, Any]]:
    """The requests the PLC's server received per timed cycle (none over the memory port)."""
    if counts is None:
        return []
    what = "Modbus requests" if kind == "modbus" else "OPC UA Read and Write calls"
    value = f"{counts['median']:g} / {counts['min']:g} / {counts['max']:g}"
    return [row(case, f"{what} to the PLC per cycle, median / min / max", value)]


def _floor_metric(floor: Mapping[str, Any]) -> str:
    return (
        f"storage floor: write+fdatasync of {floor['block_bytes']} B in the audit's folder "
        f"({floor['samples']} samples), median / p95 / p99"
    )


def _true_outputs(name: str, inputs: Mapping[str, float], n: int) -> list[dict[str, float]]:
    """``n`` noisy samples of the true plant's outputs (cvodes/idas), seeded."""
    import numpy as np

    from plant_models import Role

    cfg, _ = load_controller(ROOT / "configs" / "controllers" / f"{name}.yaml")
    plant = build_model(ROOT / "configs" / "plants" / f"{name}.yaml")
    step, solve_z = plant.integrator(cfg.sample_time), plant.algebraic_solver()
    p, u = plant.parameter_vector(), plant.vector(Role.INPUT, inputs)
    x = plant.vector(Role.STATE, plant.initial_state)
    z = plant.vector(Role.ALGEBRAIC, plant.initial_algebraic)
    spec, rng = cfg.estimator, np.random.default_rng(0)
    std = {
        o: spec.measurement_noise_std.get(o, spec.default_relative_std * plant.variable(o).scale)
        for o in plant.output_names
    }
    out = []
    for k in range(n):
        if k:
            xf, zf = step(x, z, u, p)
            x, z = np.asarray(xf).ravel(), np.asarray(zf).ravel()
        if solve_z is not None:
            z = np.asarray(solve_z(z, x, u, p)).ravel()
        y = np.asarray(plant.function(x, z, u, p)[2]).ravel()
        out.append(
            {
                o: float(v) + rng.normal(0.0, std[o])
                for o, v in zip(plant.output_names, y, strict=True)
            }
        )
    return out


def estimate_phase(name: str, cycles: int, warmup: int) -> dict[str, Any]:
    """Time ``ControlPipeline.estimate`` of model ``name``'s shipped estimator (ms)."""
    cfg, model = load_controller(ROOT / "configs" / "controllers" / f"{name}.yaml")
    held, batch = ESTIMATE_MODELS[name]
    inputs = {**model.nominal_inputs, **held}
    ys = _true_outputs(name, inputs, min(batch or cycles + warmup, cycles + warmup))
    times, problems, rejected, recovered = [], [], 0, 0
    k = 0
    while k < cycles + warmup:
        estimator = make_estimator(model, cfg.estimator, cfg.sample_time, compile=LibraryCache())
        decision = FixedDecision(_no_decision())
        pipeline = ControlPipeline(model, estimator, decision, input_limits(cfg))
        pipeline.start(inputs)
        for y in ys[: cycles + warmup - k]:
            started = time.perf_counter()
            estimate, problem = pipeline.estimate(y)
            elapsed = time.perf_counter() - started
            pipeline.applied(inputs)
            if problem or estimate is None or not estimate.ok:
                why = problem or (estimate.reason if estimate is not None else "no estimate")
                problems.append(f"cycle {k}: {why}")
            elif k >= warmup:
                rejected += len(estimate.rejected)
            if k >= warmup:
                times.append(elapsed * 1e3)
            k += 1
        recovered += getattr(estimator, "recoveries", 0)
    if problems:
        raise RuntimeError(f"{name}: the estimator failed: {problems[:3]}")
    return {
        "model": name,
        "estimator": cfg.estimator.kind,
        "prediction": cfg.estimator.prediction,
        "inputs": inputs,
        "batch_samples": batch,
        "cycles": cycles,
        "warmup": warmup,
        "estimate_ms": latency_stats(times),
        "rejected_measurements": rejected,
        "recovered_predictions": recovered,
    }


def _no_decision() -> Decision:
    from controller.core.mpc import SolveStatus

    return Decision(0.0, {}, SolveStatus.ERROR, "estimate phase only", 0, 0.0)


def estimate_rows(m: Mapping[str, Any]) -> list[dict[str, Any]]:
    what = f"{m['estimator']}, {m['prediction']} prediction, {m['cycles']} cycles"
    case = f"estimate phase, {m['model']} ({what})"
    s = m["estimate_ms"]
    target = f"median <= {ESTIMATE_TARGET_MS:g} ms"
    return [
        row(case, "median", s["median"], "ms", target, s["median"] <= ESTIMATE_TARGET_MS),
        row(case, "p99", s["p99"], "ms"),
        row(case, "measurements rejected by the innovation gate", m["rejected_measurements"]),
        row(case, "predictions recovered by cvodes/idas", m["recovered_predictions"]),
    ]


def port_only_rows(quick: bool) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """The port alone (bench/port_latency.py): read 20 tags + write 4 with read-back."""
    import port_latency

    size = QUICK if quick else FULL
    measured = port_latency.measure(size["cycles"], size["warmup"] // 2)
    rows = []
    for name, s in measured["protocols"].items():
        case = f"port I/O only, {port_latency.LABELS[name]} ({s['n']} cycles)"
        rows.append(row(case, "median", s["median"], "ms"))
        rows.append(row(case, "p99", s["p99"], "ms"))
    return rows, measured


def _port_cases(
    kinds: Collection[PortKind], size: Mapping[str, int], rows: list[dict[str, Any]], raw: dict
) -> bool:
    """The runtime cycle on each port in ``kinds``; rows and raw figures appended. Failed?"""
    decision = precomputed_decision(site_for("memory"), working_setpoints("memory"))
    failed = False
    for kind in kinds:
        try:
            m = asyncio.run(measure(kind, size["cycles"], size["warmup"], decision))
        except Exception as exc:
            bad, raw["measurements"][kind] = case_failed(CASES[kind], exc)
            rows.append(bad)
            failed = True
            continue
        raw["measurements"][kind] = m
        rows += rows_for(m)
    return failed


def run(
    quick: bool = False,
    kinds: Collection[PortKind] = ("memory", "modbus", "opcua"),
    models: Collection[str] = tuple(ESTIMATE_MODELS),
) -> dict:
    """B2 over each port in ``kinds``, the estimate phase of each model in ``models`` (and
    the port-only baseline unless quick or no port is asked for)."""
    size = QUICK if quick else FULL
    rows: list[dict[str, Any]] = []
    raw: dict[str, Any] = {
        "what": (__doc__ or "").split("\n\n")[1],
        "measurements": {},
        "estimate_phase": {},
    }
    failed = False
    for name in models:
        try:
            e = estimate_phase(name, size["cycles"], size["warmup"])
        except Exception as exc:
            bad, raw["estimate_phase"][name] = case_failed(f"estimate phase, {name}", exc)
            rows.append(bad)
            failed = True
            continue
        raw["estimate_phase"][name] = e
        rows += estimate_rows(e)
    if kinds:
        failed = _port_cases(kinds, size, rows, raw) or failed
    if not quick and kinds:
        more, raw["port_only"] = port_only_rows(quick)
        rows += more
    return {
        "name": "B2",
        "title": "one runtime cycle without the solve (CSTR site); estimate phase per model",
        "rows": rows,
        "raw": raw,
        **({"status": "error"} if failed else {}),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--port", choices=["memory", "modbus", "opcua"], action="append")
    ap.add_argument(
        "--estimate-only", action="store_true", help="only the estimate phase of every model"
    )
    args = ap.parse_args()
    every: tuple[PortKind, ...] = ("memory", "modbus", "opcua")
    kinds: tuple[PortKind, ...] = () if args.estimate_only else tuple(args.port or every)
    result = run(args.quick, kinds)
    print(markdown_table([result]))


if __name__ == "__main__":
    main()
