"""B6: the closed-loop step budget, per model: the whole fast-mode step against solve + plant.

What one timed step is: one controller sample of a campaign case in ``fast`` mode
(:mod:`hil.campaign.runner`), with the same pieces :func:`hil.campaign.drive.execute` wires:
the site's HIL rig (true plant, virtual PLC) on the in-memory PLC image
(:class:`~hil.servers.memory.MemoryPlcServer`) and a :class:`~hil.campaign.drive.DrivenClock`,
the edge runtime (:func:`controller.runtime.wiring.run_site`: supervisor, EKF, the site's MPC,
safety, the SQLite audit trail committed as a fast-mode case commits it (``synchronous`` of
:data:`hil.campaign.drive.AUDIT_SYNCHRONOUS`, ``--audit-sync`` to measure another: ``FULL``,
every commit fsynced, is the edge runtime's) and the SQLite historian (``synchronous`` of
:data:`hil.campaign.drive.HISTORIAN_SYNCHRONOUS`, committed every
:data:`hil.campaign.drive.HISTORIAN_COMMIT_EVERY` cycles)), the campaign's
:class:`~hil.campaign.recorder.RecordingPort` and :class:`~hil.campaign.recorder.Recorder`. The
driver is the runner's own stepped loop (scan the PLC at each plant step, let the runtime
settle, advance the clock), cut after a number of samples or, as the runner does, at the end
of the batch (the scenario's duration, or its natural end: on its site the freeze dryer's
primary drying is over after some 37 samples, the crystallizer's batch after 30), whichever
comes first: after the end the plant holds and integrates nothing, and the budget would be the
solve alone. A step is the wall time of every
scan and settle from one controller cycle to the next. A run that ends (batch over, plant
fault, runtime gone) with fewer than :data:`MIN_STEPS` timed steps is an error.

The phases are timed by wrapping the calls in this process (the bench runs in a child
process of its own): estimate (``ControlPipeline.estimate``), solve (the MPC's ``step``),
decide (``ControlPipeline.decide`` less the solve: the worker-thread hop), safety
(``ControlPipeline.guard``), audit (``AuditTrail.record_all``), historian
(``SqliteHistorian.record``), plc (the port's read and write, the virtual PLC's scan and the
image's publication), plant (``PlantRunner.advance``: the true plant's integration over the
sample), plant io (the true state and the noisy measurement), recorder (the campaign's
trajectory and cycle rows), and other (the rest: supervisor bookkeeping, the asyncio hops).

Figure: per model, median(step) / median(solve + plant), both medians over the same steps of
the same run. Target <= 2. The means and their ratio are printed too (not the target): work
done once every many steps, such as the historian's batched commit, is in them only. The
machine (platform, CPU count) and the Python (:func:`run.interpreter`) are printed with the table.

    python bench/b6_step.py [--quick] [--model cstr ...] [--samples N] [--audit-sync FULL]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import functools
import os
import platform
import secrets
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from run import ROOT, case_failed, interpreter, latency_stats, markdown_table, row

MODELS = ("lyophilizer", "bioreactor", "crystallizer", "cstr")
SITES = ROOT / "configs" / "sites"
TARGET_RATIO = 2.0
FULL_SAMPLES, QUICK_SAMPLES = 200, 20
WARMUP = 3  # the first steps (compilation caches, the handshake) are left out
MIN_STEPS = 10  # fewer timed steps (a batch that ended early) make no figure
#: phases in print order; "solve" and "plant" make the budget (the denominator)
PHASES = (
    "estimate",
    "solve",
    "decide",
    "safety",
    "audit",
    "historian",
    "plc",
    "plant",
    "plant io",
    "recorder",
)
PASSWORD_ENV = "PHARMATWIN_OPCUA_PASSWORD"


class Timer:
    """Wall time spent in named calls (seconds), summed until :meth:`take` empties it.

    A wrapped call costs two ``perf_counter`` reads and one dict update (some 45 calls a
    step): the wrappers bind the one ``current`` dict, which :meth:`take` copies and clears.
    """

    def __init__(self) -> None:
        self.current: dict[str, float] = {}

    def add(self, name: str, seconds: float) -> None:
        self.current[name] = self.current.get(name, 0.0) + seconds

    def take(self) -> dict[str, float]:
        out = dict(self.current)
        self.current.clear()
        return out

    def patch(self, owner: Any, attr: str, name: str) -> Callable[[], None]:
        """Time every call of ``owner.attr`` (a method or coroutine method) under ``name``;
        returns the undo."""
        fn = getattr(owner, attr)
        current, get, clock = self.current, self.current.get, time.perf_counter
        if asyncio.iscoroutinefunction(fn):

            @functools.wraps(fn)
            async def timed_async(*args: Any, **kwargs: Any) -> Any:
                started = clock()
                try:
                    return await fn(*args, **kwargs)
                finally:
                    current[name] = get(name, 0.0) + (clock() - started)

            setattr(owner, attr, timed_async)
        else:

            @functools.wraps(fn)
            def timed(*args: Any, **kwargs: Any) -> Any:
                started = clock()
                try:
                    return fn(*args, **kwargs)
                finally:
                    current[name] = get(name, 0.0) + (clock() - started)

            setattr(owner, attr, timed)
        return lambda: setattr(owner, attr, fn)


def instrument(timer: Timer) -> list[Callable[[], None]]:
    """Wrap the calls of every phase (class attributes: every instance is timed)."""
    from controller.core.dompc import DoMpcController
    from controller.core.fast_mpc import FastController
    from controller.core.pipeline import ControlPipeline
    from controller.ports.memory import MemoryPort
    from controller.runtime.audit import AuditTrail
    from controller.runtime.historian import SqliteHistorian
    from hil.campaign.recorder import Recorder
    from hil.plant_runner import PlantRunner
    from hil.servers.memory import MemoryPlcServer
    from hil.vplc import VirtualPlc

    wraps = [
        (ControlPipeline, "estimate", "estimate"),
        (ControlPipeline, "decide", "decide"),
        (DoMpcController, "step", "solve"),  # the two MPC backends
        (FastController, "step", "solve"),
        (ControlPipeline, "guard", "safety"),
        (AuditTrail, "record_all", "audit"),
        (SqliteHistorian, "record", "historian"),
        (MemoryPort, "read", "plc"),
        (MemoryPort, "write", "plc"),
        (VirtualPlc, "scan", "plc"),
        (MemoryPlcServer, "publish", "plc"),
        (PlantRunner, "advance", "plant"),
        (PlantRunner, "true_state", "plant io"),
        (PlantRunner, "measure", "plant io"),
        (Recorder, "scan", "recorder"),
        (Recorder, "cycle", "recorder"),
    ]
    return [timer.patch(owner, attr, name) for owner, attr, name in wraps]


async def drive(
    model: str, samples: int, tmp: Path, timer: Timer, audit_sync: str | None = None
) -> list[dict[str, float]]:
    """The campaign runner's fast mode on the model's site for ``samples`` controller
    samples; per step the wall time (``step``) and its phases, seconds. ``audit_sync``: the
    audit trail's ``synchronous`` (default: a fast-mode campaign case's)."""
    from controller.runtime.site import load_site
    from controller.runtime.supervisor import Mode
    from controller.runtime.wiring import RunOptions, run_site
    from hil.campaign.drive import DrivenClock, settle
    from hil.campaign.recorder import Recorder, RecordingPort
    from hil.rig import HilRig
    from hil.servers.memory import MemoryPlcServer

    os.environ.setdefault(PASSWORD_ENV, secrets.token_hex(12))  # loopback test bench only
    site = load_site(SITES / f"{model}-modbus.yaml")
    clock = DrivenClock()
    server = MemoryPlcServer(site.tags, clock)
    recorder = Recorder(site)
    rig = HilRig(site, clock, [server], on_scan=recorder.scan, lookahead=True)  # as drive.execute
    port = RecordingPort(server.port(), site, clock, recorder.rec)
    opts = RunOptions(
        mode=Mode.CLOSED_LOOP,
        rate=1.0,
        audit_path=tmp / "audit.db",
        historian_path=tmp / "history.db",
        audit_synchronous=audit_sync or campaign_audit_sync(),
        historian_synchronous=campaign_historian_sync(),
        historian_commit_every=campaign_historian_commit_every(),
    )
    stop = asyncio.Event()
    await server.start()
    task = asyncio.ensure_future(
        run_site(site, opts, port=port, clock=clock, stop=stop, observer=recorder.cycle)
    )
    scan_s = rig.timebase.seconds(rig.plant_step)
    end = rig.scenario.duration - 1e-9
    steps: list[dict[str, float]] = []
    timer.take()
    k, wall, seen = 0, 0.0, 0
    batch_over = False
    try:
        while len(steps) < samples + WARMUP:
            started = time.perf_counter()
            await rig.scan()
            if rig.plant_fault is not None or task.done():
                break
            if rig.plant.t >= end or (rig.scenario.stop_when_finished and rig.plant.finished()):
                batch_over = True  # hil.campaign.drive stops here too
                break
            await settle(clock, task)
            wall += time.perf_counter() - started
            if len(recorder.rec.cycles) > seen:  # a controller cycle ran: the step ends
                seen = len(recorder.rec.cycles)
                steps.append({"step": wall, **timer.take()})
                wall = 0.0
            k += 1
            clock.advance_to(k * scan_s)
    finally:
        stop.set()
        if not task.done():
            await settle(clock, task)
        with contextlib.suppress(asyncio.CancelledError):
            await task
        await server.close()
    if task.done() and not task.cancelled() and task.exception() is not None:
        raise task.exception()  # type: ignore[misc]
    enough = MIN_STEPS if batch_over else samples  # only the batch's end cuts a run short
    if len(steps) < enough + WARMUP:
        raise RuntimeError(f"{model}: the run ended after {len(steps)} steps")
    return steps[WARMUP:]


def summarize(steps: Sequence[dict[str, float]]) -> dict[str, Any]:
    """Medians (ms) of the step, of each phase (``decide`` less the solve), of solve +
    plant, and their ratio; ``other`` is the step less every timed phase. Also the means of
    the step and of solve + plant, and their ratio."""
    ms = [{k: v * 1e3 for k, v in s.items()} for s in steps]
    for s in ms:
        s["decide"] = s.get("decide", 0.0) - s.get("solve", 0.0)
        s["other"] = s["step"] - sum(s.get(p, 0.0) for p in PHASES)
        s["budget"] = s.get("solve", 0.0) + s.get("plant", 0.0)
    stats = {k: latency_stats([s.get(k, 0.0) for s in ms]) for k in ("step", "budget", "other")}
    phases = {p: latency_stats([s.get(p, 0.0) for s in ms]) for p in PHASES}
    step, budget = stats["step"]["median"], stats["budget"]["median"]
    # the means too: work done once in many steps (the historian's batched commit) is in
    # them and not in the medians
    mean_step = sum(s["step"] for s in ms) / len(ms)
    mean_budget = sum(s["budget"] for s in ms) / len(ms)
    return {
        "steps": len(ms),
        "step_ms": stats["step"],
        "budget_ms": stats["budget"],
        "mean_ms": {"step": mean_step, "budget": mean_budget},
        "mean_ratio": mean_step / mean_budget if mean_budget > 0 else float("inf"),
        "phase_ms": {**phases, "other": stats["other"]},
        "ratio": step / budget if budget > 0 else float("inf"),
        "overhead_ms": step - budget,
    }


def campaign_audit_sync() -> str:
    """The audit trail's ``synchronous`` in a fast-mode campaign case (what B6 times)."""
    from hil.campaign.drive import AUDIT_SYNCHRONOUS

    return AUDIT_SYNCHRONOUS["fast"]


def campaign_historian_sync() -> str:
    """The historian's ``synchronous`` in a fast-mode campaign case."""
    from hil.campaign.drive import HISTORIAN_SYNCHRONOUS

    return HISTORIAN_SYNCHRONOUS["fast"]


def campaign_historian_commit_every() -> int:
    """Cycles per historian commit in a fast-mode campaign case."""
    from hil.campaign.drive import HISTORIAN_COMMIT_EVERY

    return HISTORIAN_COMMIT_EVERY["fast"]


def measure(model: str, samples: int, audit_sync: str | None = None) -> dict[str, Any]:
    timer = Timer()
    undo = instrument(timer)
    try:
        with tempfile.TemporaryDirectory(prefix="pharmatwin-b6-") as tmp:
            steps = asyncio.run(drive(model, samples, Path(tmp), timer, audit_sync))
    finally:
        for u in reversed(undo):
            u()
    site = {"model": model, "site": f"configs/sites/{model}-modbus.yaml"}
    return site | {"audit_synchronous": audit_sync or campaign_audit_sync()} | summarize(steps)


def machine() -> str:
    return f"{platform.platform()}, {os.cpu_count()} CPUs"


def breakdown(m: dict[str, Any]) -> str:
    return ", ".join(f"{n} {s['median']:.3f}" for n, s in m["phase_ms"].items())


def rows_for(m: dict[str, Any]) -> list[dict[str, Any]]:
    audit = f", audit {m['audit_synchronous']}" if "audit_synchronous" in m else ""
    case = f"{m['model']}, fast mode{audit}, {m['steps']} steps"
    ratio = m["ratio"]
    return [
        row(case, "median step (full loop)", m["step_ms"]["median"], "ms"),
        row(case, "median solve + plant step", m["budget_ms"]["median"], "ms"),
        row(case, "ratio", ratio, "x", f"<= {TARGET_RATIO:g}", ratio <= TARGET_RATIO),
        row(case, "median per phase", breakdown(m), "ms"),
        row(
            case,
            "mean step / mean solve + plant, ms (their ratio)",
            f"{m['mean_ms']['step']:.3f} / {m['mean_ms']['budget']:.3f} ({m['mean_ratio']:.3g}x)",
        ),
    ]


def run(
    quick: bool = False,
    models: Sequence[str] = MODELS,
    samples: int | None = None,
    audit_sync: str | None = None,
) -> dict[str, Any]:
    n = samples or (QUICK_SAMPLES if quick else FULL_SAMPLES)
    raw: dict[str, Any] = {
        "machine": {"platform": platform.platform(), "cpu_count": os.cpu_count()},
        "python": interpreter(),
        "samples": n,
        "warmup": WARMUP,
        "load_average_at_start": os.getloadavg()[0],
    }
    rows = [row("machine", "platform, CPUs", machine()), row("machine", "Python", interpreter())]
    failed = False
    for model in models:
        try:
            m = measure(model, n, audit_sync)
        except Exception as exc:
            bad, raw[model] = case_failed(model, exc)
            rows.append(bad)
            failed = True
            continue
        raw[model] = m
        rows += rows_for(m)
    result = {"name": "B6", "title": "closed-loop step budget", "rows": rows, "raw": raw}
    return {**result, "status": "error"} if failed else result


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--model", choices=MODELS, action="append")
    ap.add_argument("--samples", type=int, help="steps timed per model (after the warm-up)")
    ap.add_argument(
        "--audit-sync",
        choices=("FULL", "NORMAL"),
        help="the audit trail's synchronous (default: a fast-mode campaign case's)",
    )
    args = ap.parse_args()
    table = run(args.quick, args.model or MODELS, args.samples, args.audit_sync)
    print(markdown_table([table]))


if __name__ == "__main__":
    main()
