"""B8, start-up: from the runtime's start to the controller's first cycle, compile included.

Issue 19's target: on a fresh machine the first ``make demo`` reaches the controller's first
cycle within 10 s of the runtime's start. Measured on the demo's own path: ``pharmatwin-hil
serve SITE --wait-for-controller`` on loopback (a free port), then ``pharmatwin run SITE
--mode closed-loop`` at the demo's rate for a few cycles, as a process of its own:

* **cold**: ``PHARMATWIN_CACHE`` a fresh empty folder, so every solver library is compiled;
* **warm**: the same folder again, every library found.

The figure is the wall time from the moment the runtime's process is started to the first
cycle the historian records (its ``utc``); the first cycle with an MPC decision is reported
too. Each figure is the median of a few runs (quick: one). A cold run of its own, in a child
process that times each step of the runtime's start in turn (:func:`phases`: imports, site
and models, the control pipeline with its compile, the run records, connecting, the first
cycle), says where the time goes. A cold start is CPU-bound (gcc), so the table gives the
machine's load average: on two CPUs shared with two busy processes the compile takes about
twice as long as on idle ones.

    python bench/b8_startup.py [--quick] [--runs N]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime as dt
import json
import os
import platform
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run as a script from a clean clone
    sys.path.insert(0, str(ROOT))

from run import case_failed, markdown_table, row  # noqa: E402

SITE = ROOT / "configs" / "sites" / "bioreactor-modbus.yaml"
TARGET_S = 10.0
RATE = 3600.0  # the demo's: a 1 h sample per wall second
CYCLES = 3  # enough to see the first MPC decision
FULL_RUNS = 3


# ---------------------------------------------------------------------- the demo's path
def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def site_on_port(site: Path, port: int, folder: Path) -> Path:
    """A copy of ``site`` in ``folder`` with its connection on ``port`` and every file it names
    made absolute (the demo's fixed port may be taken by another run on this machine)."""

    def absolute(value: Any) -> Any:
        if isinstance(value, dict):
            return {k: absolute(v) for k, v in value.items()}
        if isinstance(value, list):
            return [absolute(v) for v in value]
        if isinstance(value, str) and (site.parent / value).is_file():
            return str((site.parent / value).resolve())
        return value

    data = absolute(yaml.safe_load(site.read_text(encoding="utf-8")))
    data["connection"]["port"] = port
    copy = folder / site.name
    copy.write_text(yaml.safe_dump(data, sort_keys=False), encoding="utf-8")
    return copy


def _bin(name: str) -> str:
    return str(Path(sys.executable).with_name(name))


@contextlib.contextmanager
def hil_serving(site: Path, folder: Path) -> Iterator[None]:
    """``pharmatwin-hil serve`` for ``site`` at the demo's rate, its clock held until the
    controller's first cycle (as ``make demo`` starts it); stopped with SIGINT."""
    from hil.demo import wait_for_serving

    state = folder / "hil"
    serve = subprocess.Popen(
        [_bin("pharmatwin-hil"), "serve", str(site), "--rate", str(RATE),
         "--state-dir", str(state), "--wait-for-controller"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    try:
        wait_for_serving(state / f"{yaml.safe_load(site.read_text())['name']}.json", serve)
        yield
    finally:
        serve.send_signal(signal.SIGINT)
        try:
            serve.communicate(timeout=60)
        except subprocess.TimeoutExpired:
            serve.kill()
            serve.communicate()


def _seconds(utc: str) -> float:
    return dt.datetime.fromisoformat(utc).timestamp()


def first_cycle(site: Path, cache: Path, folder: Path) -> dict[str, float]:
    """One ``pharmatwin run`` from its start: seconds to the first cycle the historian records,
    to the first cycle with an MPC decision, and to the process's exit."""
    from controller.runtime.historian import SqliteHistorian

    history, audit = folder / "history.db", folder / "audit.db"
    for f in (*folder.glob("history.db*"), *folder.glob("audit.db*")):
        f.unlink()
    env = {**os.environ, "PHARMATWIN_CACHE": str(cache)}
    started = time.time()
    done = subprocess.run(
        [_bin("pharmatwin"), "run", str(site), "--mode", "closed-loop", "--rate", str(RATE),
         "--cycles", str(CYCLES), "--audit", str(audit), "--historian", str(history), "--quiet",
         "--log-file", str(folder / "run.log")],
        env=env, text=True, capture_output=True, timeout=600, check=False,
    )  # fmt: skip
    ended = time.time()
    hist = SqliteHistorian(history)
    try:
        records = hist.cycles()
    finally:
        hist.close()
    if done.returncode not in (0, 1) or not records:
        raise RuntimeError(f"pharmatwin run exited {done.returncode}: {done.stderr[-2000:]}")
    decided = [r for r in records if r.decision.get("status")]
    return {
        "first_cycle_s": _seconds(records[0].utc) - started,
        "first_decision_s": _seconds(decided[0].utc) - started if decided else float("nan"),
        "exit_s": ended - started,
        "cycles": len(records),
    }


def measure(runs: int) -> dict[str, Any]:
    """``runs`` cold and warm starts (each against a HIL of its own) and one timed cold start."""
    cold: list[dict[str, float]] = []
    warm: list[dict[str, float]] = []
    with tempfile.TemporaryDirectory(prefix="pharmatwin-b8-") as tmp_name:
        tmp = Path(tmp_name)
        for i in range(runs):
            cache = tmp / f"cache{i}"
            for kind in (cold, warm):
                folder = tmp / f"run{i}-{len(kind)}-{'cold' if kind is cold else 'warm'}"
                folder.mkdir()
                site = site_on_port(SITE, free_port(), folder)
                with hil_serving(site, folder):
                    kind.append(first_cycle(site, cache, folder))
        folder = tmp / "phases"
        folder.mkdir()
        site = site_on_port(SITE, free_port(), folder)
        with hil_serving(site, folder):
            split = phases_in_child(site, tmp / "cache-phases", folder)
    return {"cold": cold, "warm": warm, "phases_s": split}


def phases_in_child(site: Path, cache: Path, folder: Path) -> dict[str, Any]:
    """:func:`phases` in a fresh interpreter with an empty cache (imports included)."""
    env = {**os.environ, "PHARMATWIN_CACHE": str(cache)}
    done = subprocess.run(
        [sys.executable, __file__, "--phases", str(site), "--out", str(folder)],
        env=env, text=True, capture_output=True, timeout=600, check=True,
    )  # fmt: skip
    return dict(json.loads(done.stdout.strip().splitlines()[-1]))


# ---------------------------------------------------------------------- where the time goes
def phases(site_path: Path, folder: Path) -> dict[str, Any]:
    """The runtime's start, step by step as :func:`controller.runtime.wiring.run_site` takes
    them, in seconds: imports (what ``pharmatwin`` imports), site and models, the control
    pipeline (of which compiling, its compiler runs and their summed time), the run records
    (audit trail, historian, run info), connecting, the first cycle."""
    t0 = time.perf_counter()
    import controller.runtime.cli  # noqa: F401  (what `pharmatwin` imports before a run)
    from controller.runtime import solver_cache, wiring
    from controller.runtime.site import load_site
    from controller.runtime.supervisor import Mode

    out: dict[str, Any] = {"imports": time.perf_counter() - t0}
    gcc = _timed_compiles(solver_cache.LibraryCache)
    t = time.perf_counter()
    site = load_site(site_path)
    out["site and models"] = time.perf_counter() - t
    t = time.perf_counter()
    pipeline = wiring.build_pipeline(site)
    out["pipeline"] = time.perf_counter() - t
    out["compiler runs"], out["compiler time summed"] = len(gcc["gcc"]), sum(gcc["gcc"])
    out["compiling (wall)"] = sum(gcc["at once"])
    opts = wiring.RunOptions(
        mode=Mode.CLOSED_LOOP,
        rate=RATE,
        cycles=1,
        audit_path=folder / "phases-audit.db",
        historian_path=folder / "phases-history.db",
        sd_notify=False,
    )
    out |= asyncio.run(_first_cycle_phases(wiring, site, opts, pipeline))
    return out


def _timed_compiles(cache_class: Any) -> dict[str, list[float]]:
    """Record the wall time of every compiler run of the runtime's library cache ("gcc") and
    the span from the first run's start to the last one's end ("at once": the runs overlap
    each other and the build's first pass)."""
    times: dict[str, list[float]] = {"gcc": [], "at once": []}
    spans: list[tuple[float, float]] = []
    compile_one = cache_class._compile

    def timed(*args: Any, **kwargs: Any) -> Any:
        t = time.perf_counter()
        try:
            return compile_one(*args, **kwargs)
        finally:
            spans.append((t, time.perf_counter()))
            times["gcc"].append(spans[-1][1] - t)
            times["at once"][:] = [max(e for _, e in spans) - min(s for s, _ in spans)]

    cache_class._compile = timed
    return times


async def _first_cycle_phases(wiring: Any, site: Any, opts: Any, pipeline: Any) -> dict[str, float]:
    marks: dict[str, float] = {"start": time.perf_counter()}
    make_port = wiring.port_for_site

    def port_for_site(site: Any, clock: Any) -> Any:
        port = make_port(site, clock)
        connect = port.connect

        async def timed_connect() -> None:
            marks["connect"] = time.perf_counter()
            await connect()
            marks["connected"] = time.perf_counter()

        port.connect = timed_connect
        return port

    def observer(view: Any) -> None:
        marks.setdefault("first cycle", time.perf_counter())

    wiring.build_pipeline = lambda site, policy=None: pipeline  # built (and timed) already
    wiring.port_for_site = port_for_site
    await wiring.run_site(site, opts, observer=observer)
    return {
        "run records": marks["connect"] - marks["start"],
        "connect": marks["connected"] - marks["connect"],
        "first cycle": marks["first cycle"] - marks["connected"],
    }


# ---------------------------------------------------------------------- table
def summarize(runs: list[dict[str, float]]) -> dict[str, float]:
    """Medians over runs of each figure of :func:`first_cycle`."""
    return {k: statistics.median(r[k] for r in runs) for k in runs[0]}


def breakdown(split: dict[str, Any]) -> str:
    steps = ("imports", "site and models", "pipeline", "run records", "connect", "first cycle")
    text = ", ".join(f"{k} {split[k]:.2f}" for k in steps)
    return (
        f"{text} (pipeline: {split['compiling (wall)']:.2f} compiling, "
        f"{split['compiler runs']} compiler runs at once, {split['compiler time summed']:.2f} "
        "summed)"
    )


def rows_for(m: dict[str, Any]) -> list[dict[str, Any]]:
    out = []
    for kind, what in (("cold", "cold cache (every library compiled)"), ("warm", "warm cache")):
        s = summarize(m[kind])
        n = len(m[kind])
        case = f"{what}, median of {n}" if n > 1 else what
        met = s["first_cycle_s"] <= TARGET_S
        out.append(row(case, "first cycle after start", s["first_cycle_s"], "s", "<= 10 s", met))
        out.append(row(case, "first MPC decision after start", s["first_decision_s"], "s"))
    if "phases_s" in m:
        out.append(row("cold cache, one run", "seconds per phase", breakdown(m["phases_s"]), "s"))
    return out


def run(quick: bool = False, runs: int | None = None) -> dict[str, Any]:
    n = runs or (1 if quick else FULL_RUNS)
    raw: dict[str, Any] = {
        "machine": {"platform": platform.platform(), "cpu_count": os.cpu_count()},
        "site": str(SITE.relative_to(ROOT)),
        "rate": RATE,
        "runs": n,
        "load_average_at_start": os.getloadavg()[0],
    }
    machine = f"{platform.platform()}, {os.cpu_count()} CPUs, load {os.getloadavg()[0]:.2f}"
    rows = [row("machine", "platform, CPUs, load average at start", machine)]
    result: dict[str, Any] = {"name": "B8", "title": "start-up: the first cycle", "raw": raw}
    try:
        m = measure(n)
    except Exception as exc:
        bad, raw["error"] = case_failed("start-up", exc)
        return {**result, "rows": [*rows, bad], "status": "error"}
    raw |= m
    return {**result, "rows": rows + rows_for(m)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--runs", type=int, help="cold and warm starts each (median)")
    ap.add_argument("--phases", type=Path, help=argparse.SUPPRESS)  # the child of phases_in_child
    ap.add_argument("--out", type=Path, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.phases is not None:
        print(json.dumps(phases(args.phases, args.out)))
        return
    print(markdown_table([run(args.quick, args.runs)]))


if __name__ == "__main__":
    main()
