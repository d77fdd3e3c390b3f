"""``make demo``: the main job, end to end on loopback, with nothing to set up.

1. Start ``pharmatwin-hil serve`` for a site (default: the bioreactor over Modbus TCP on
   127.0.0.1) at a high scaled rate, its clock held until the controller's first cycle.
2. Run ``pharmatwin run SITE --mode closed-loop`` through a whole batch.
3. Stop both cleanly, then print the KPIs, the paths of the historian, the audit trail and
   a PNG plot, and the result of ``pharmatwin audit verify``.
4. End with a verdict: a table of what was shown (the closed loop engaged and kept control,
   the batch completed, the KPIs against the targets, the audit chain intact) and one line,
   PASS or FAIL, with a matching exit code (0 or 1). The time from the runtime's start to
   its first cycle (compile included on a first run: issue 19's <= 10 s) is shown, not
   judged: it measures the machine, not the control.

    python -m hil.demo [--site configs/sites/bioreactor-modbus.yaml] [--rate 3600] [--hours H]

The rate leaves the solver half a wall second per sample (a 1 h sample at 3600 x): a busy
machine does not turn solves late, so the verdict does not depend on the machine's load (a
test runs the demo's path under a busy child process per core). ``--hours`` shortens the
batch (the comparison with the PLC's own recipe is then not judged: it is about the end).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import math
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from controller.binding import Binding
from controller.runtime.historian import SqliteHistorian
from controller.runtime.historian_records import CycleRecord, HistorianError
from controller.runtime.site import Site
from controller.runtime.solver_cache import LibraryCache
from controller.timebase import TimeBase
from hil.site import hil_section, load_hil_site, scan_rate_problem

ROOT = Path(__file__).resolve().parents[1]


def _bin(name: str) -> str:
    return str(Path(sys.executable).with_name(name))


def wait_for_serving(
    path: Path, proc: subprocess.Popen[str], seconds: float = 60.0
) -> dict[str, Any]:
    """The state file `pharmatwin-hil serve` writes once it answers (SystemExit when it exits
    first or does not start within ``seconds``)."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if path.exists():
            return dict(json.loads(path.read_text()))
        if proc.poll() is not None:
            raise SystemExit(
                f"the HIL simulator exited early:\n{proc.stdout.read() if proc.stdout else ''}"
            )
        time.sleep(0.2)
    raise SystemExit(f"the HIL simulator did not start within {seconds:g} s")


def kpis(site: Site, records: list[CycleRecord]) -> dict[str, Any]:
    """Closed-loop KPIs from the historian's cycles."""
    solves = np.array([r.decision.get("solve_time_s", 0.0) for r in records]) * 1e3
    solves = solves[solves > 0]
    statuses = [r.decision.get("status") for r in records if r.decision]
    final = records[-1].measurements if records else {}
    out: dict[str, Any] = {
        "cycles": len(records),
        "cycles_running": sum(r.state == "RUNNING" for r in records),
        "setpoint_writes": sum(bool(r.setpoints) for r in records),
        "solve_time_median_ms": float(np.median(solves)) if solves.size else math.nan,
        "solve_time_p95_ms": float(np.percentile(solves, 95)) if solves.size else math.nan,
        "failed_or_skipped_solves": sum(s != "success" for s in statuses),
        "states_seen": sorted({r.state for r in records}),
    }
    binding = Binding.of(site.tags, site.model)
    for tag, m in final.items():
        if binding.is_output_tag(tag):
            out[f"final {tag} [{site.tags.tags[tag].unit}]"] = m.value
    return out


@dataclass(frozen=True)
class Check:
    """One line of the demo's verdict: what was looked at, what was seen, and the outcome."""

    what: str
    seen: str
    target: str
    passed: bool
    judged: bool = True  # False: shown, but not part of the verdict (and said so)


def recipe_titer(site: Site) -> tuple[str, float] | None:
    """The economic objective's terminal value under the PLC's own recipe (the true plant,
    offline): what the MPC must beat. None when the controller has no terminal economic term."""
    import asyncio

    from hil.scenario import load_scenario
    from hil.simulate import run_scenario

    terms = [e for e in site.controller.objective.economic if e.where in ("terminal", "both")]
    hil = hil_section(site)
    if hil is None or not terms:
        return None
    term = terms[0]
    scenario = site.file(hil.scenario)
    if load_scenario(scenario).controller is not None:
        return None
    run = asyncio.run(run_scenario(scenario))
    final = run.rows[-1]
    for prefix in ("x.", "e.", "o."):
        if prefix + term.expression in final:
            return term.expression, float(final[prefix + term.expression])
    return None


def verdict(
    site: Site,
    records: list[CycleRecord],
    duration_s: float,
    audit_ok: bool,
    audit_text: str,
    reference: tuple[str, float] | None,
    whole: bool = True,
) -> list[Check]:
    """What the demo shows, each judged by a check that could fail."""
    checks: list[Check] = []
    running = [r for r in records if r.state == "RUNNING"]
    binding = Binding.of(site.tags, site.model)
    # cycles that wrote setpoints: a cycle's written tags also hold the PLC handshake's own
    # (the mpc_request flag), which is no setpoint (and is audited as a tag.write.request)
    sp_tags = set(binding.setpoint_tags().values())
    writes = sum(any(tag in sp_tags for tag in r.setpoints) for r in records)
    checks.append(
        Check(
            "closed loop engaged",
            f"{len(running)} RUNNING cycles, {writes} setpoint writes",
            "RUNNING and writing",
            bool(running) and writes > 0,
        )
    )
    if running:
        after = [r for r in records if r.cycle >= running[0].cycle]
        kept = len(running) / len(after)
        checks.append(
            Check(
                "MPC kept control",
                f"{100 * kept:.1f} % of the cycles after engaging",
                ">= 95 %",
                kept >= 0.95,
            )
        )
    timebase = TimeBase.of(site.model)
    dt = timebase.seconds(site.controller.sample_time)
    last = records[-1].t if records else 0.0
    unit = timebase.unit
    checks.append(
        Check(
            "batch completed",
            f"last cycle at {timebase.model_time(last):.4g} {unit}",
            f">= {timebase.model_time(duration_s - 2 * dt):.4g} {unit}",
            last >= duration_s - 2 * dt,
        )
    )
    statuses = [r.decision.get("status") for r in records if r.decision]
    failed = sum(s not in ("success", None) for s in statuses)
    checks.append(
        Check(
            "solves",
            f"{failed} of {len(statuses)} not successful",
            "<= 5 %",
            bool(statuses) and failed <= 0.05 * len(statuses),
        )
    )
    if not whole:
        checks.append(
            Check(
                "final objective against the PLC's own recipe",
                "not judged: a shortened batch (--hours)",
                "the whole batch",
                False,
                judged=False,
            )
        )
    if reference is not None:
        name, ref = reference
        readings = binding.reading_tags()
        tag = readings.get(name) or readings.get(f"{name}_meas")
        final = records[-1].measurements.get(tag) if tag and records else None
        if final is not None:
            checks.append(
                Check(
                    f"final {name} against the PLC's own recipe",
                    f"{final.value:.4g} {site.tags.tags[str(tag)].unit} (measured)",
                    f"> {ref:.4g} (recipe, offline)",
                    final.value > ref,
                )
            )
    for name in binding.measurement_tags():
        output = binding.variable_of(name)
        if output not in binding.outputs:
            continue
        spec = site.tags.tags[name]
        state = output.removesuffix("_meas")
        if state not in site.model.all_variables:
            continue
        hi = site.model.variable(state).operating[1]
        if not math.isfinite(hi):
            continue
        values = [r.measurements[name].value for r in records if name in r.measurements]
        if values:
            # the measurement's noise is part of what is seen: 2 % of the limit allowed over
            peak = max(values)
            checks.append(
                Check(
                    f"{name} within its operating limit",
                    f"max {peak:.4g} {spec.unit} (measured)",
                    f"<= {hi:g} {spec.unit} (+2 %)",
                    peak <= hi * 1.02,
                )
            )
    checks.append(Check("audit chain intact", audit_text, "audit verify ok", audit_ok))
    return checks


def startup(records: list[CycleRecord], started: float, compiled: int) -> Check:
    """How long after the runtime's start (``started``, a UNIX time) its first cycle came,
    with the number of solver libraries it ``compiled`` (issue 19: <= 10 s, compile
    included). Shown, not judged: it depends on the machine and its load, not on control."""
    first = dt.datetime.fromisoformat(records[0].utc).timestamp() - started if records else None
    built = f"{compiled} solver librar{'y' if compiled == 1 else 'ies'} compiled"
    return Check(
        "first cycle after the runtime's start",
        f"{first:.1f} s ({built})" if first is not None else "no cycle recorded",
        "<= 10 s, compile included",
        first is not None and first <= 10.0,
        judged=False,
    )


def print_verdict(checks: list[Check]) -> bool:
    from rich.console import Console
    from rich.table import Table

    table = Table(title="Demo verdict")
    for col in ("check", "seen", "target", "result"):
        table.add_column(col)
    for c in checks:
        result = "[green]pass[/green]" if c.passed else "[red]FAIL[/red]"
        table.add_row(c.what, c.seen, c.target, result if c.judged else "shown, not judged")
    console = Console(width=120)
    console.print(table)
    ok = all(c.passed for c in checks if c.judged)
    failed = [c.what for c in checks if c.judged and not c.passed]
    shown = [c.what for c in checks if not c.judged]
    aside = f" ({'; '.join(shown)}: shown, not judged)" if shown else ""
    console.print(
        f"[bold green]PASS[/bold green]: every judged check above passed{aside}"
        if ok
        else f"[bold red]FAIL[/bold red]: {', '.join(failed)}",
        highlight=False,
    )
    return ok


def plot(site: Site, records: list[CycleRecord], path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    timebase = TimeBase.of(site.model)
    t = np.array([timebase.model_time(r.t) for r in records])
    binding = Binding.of(site.tags, site.model)
    meas = [n for n in site.tags.tags if binding.is_output_tag(n)]
    sps = list(binding.setpoint_tags().values())
    panels = meas + sps
    fig, axes = plt.subplots(len(panels), 1, figsize=(8, 2.0 * len(panels)), sharex=True)
    for ax, tag in zip(np.atleast_1d(axes), panels, strict=True):
        values = [r.measurements[tag].value if tag in r.measurements else math.nan for r in records]
        ax.step(t, values, where="post") if tag in sps else ax.plot(t, values)
        lim = site.tags.tags[tag].limits
        for b in lim or ():
            ax.axhline(b, color="tab:red", ls=":", lw=1)
        ax.set_ylabel(f"{tag}\n[{site.tags.tags[tag].unit}]", fontsize=8)
        ax.grid(alpha=0.3)
    np.atleast_1d(axes)[-1].set_xlabel(f"controller time [{site.model.time_unit}]")
    fig.suptitle(f"{site.name}: closed loop over {site.connection.protocol} against the HIL")
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path


#: wall seconds between two progress lines while the runtime runs the batch
PROGRESS_S = 15.0


def _follow(run: subprocess.Popen[str], history: Path, t0: float) -> tuple[str, str]:
    """Wait for the runtime; every :data:`PROGRESS_S` say how far its historian got (the
    demo was silent for its ~2.5 minutes). Returns its stdout and stderr."""
    try:
        while True:
            try:
                return run.communicate(timeout=PROGRESS_S)
            except subprocess.TimeoutExpired:
                print(f"   {time.monotonic() - t0:.0f} s: {_newest_cycle(history)}", flush=True)
    except BaseException:  # interrupted: the runtime does not outlive the demo
        run.kill()
        run.wait()
        raise


def _newest_cycle(history: Path) -> str:
    """The runtime's newest cycle in its historian, read as it is (nothing written)."""
    try:
        with SqliteHistorian(history, read_only=True) as hist:
            newest = hist.cycles(limit=1)
    except HistorianError as exc:
        return f"no cycle in the historian yet ({exc})"
    if not newest:
        return "no cycle in the historian yet"
    rec = newest[-1]
    return f"cycle {rec.cycle}, supervisor {rec.state}"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--site", type=Path, default=ROOT / "configs/sites/bioreactor-modbus.yaml")
    ap.add_argument("--rate", type=float, default=3600.0, help="process s per wall s (3600)")
    ap.add_argument(
        "--hours", type=float, default=None, help="run this much of the batch (default: all)"
    )
    ap.add_argument("--out", type=Path, default=ROOT / "runs/demo")
    args = ap.parse_args(argv)
    site = load_hil_site(args.site)
    too_fast = scan_rate_problem(
        site, args.rate, site.controller.sample_time, file="command line", location="--rate"
    )
    if too_fast is not None:  # the demo's verdict would judge a plant that is not the site's
        print(f"error: {too_fast.file}: {too_fast.location}: {too_fast.message}", file=sys.stderr)
        return 2
    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)
    for old in ("audit.db", "history.db"):
        for f in out.glob(old + "*"):
            f.unlink()
    audit, history = out / "audit.db", out / "history.db"
    from hil.scenario import load_scenario

    hil = hil_section(site)
    batch = load_scenario(site.file(hil.scenario)).duration if hil else 20.0
    whole = args.hours is None or args.hours >= batch
    duration_s = TimeBase.of(site.model).seconds(
        batch if args.hours is None else min(args.hours, batch)
    )
    env = dict(os.environ)
    print(f"1. pharmatwin-hil serve {args.site} --rate {args.rate:g} (loopback)", flush=True)
    serve = subprocess.Popen(
        [_bin("pharmatwin-hil"), "serve", str(args.site), "--rate", str(args.rate),
         "--state-dir", str(out / "hil"), "--wait-for-controller"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env,
    )  # fmt: skip
    try:
        state = wait_for_serving(out / "hil" / f"{site.name}.json", serve)
        print(f"   serving on {state['ports']}; log: {state['log']}", flush=True)
        print(f"2. pharmatwin run {args.site} --mode closed-loop (a whole batch)", flush=True)
        cache, started = LibraryCache(), time.time()
        libraries = cache.cached()
        run = subprocess.Popen(
            [_bin("pharmatwin"), "run", str(args.site), "--mode", "closed-loop",
             "--rate", str(args.rate), "--duration", str(duration_s),
             "--audit", str(audit), "--historian", str(history)],
            env=env, text=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        )  # fmt: skip
        stdout, stderr = _follow(run, history, time.monotonic())
        print(stdout.strip(), flush=True)
        if run.returncode != 0:
            print(stderr, file=sys.stderr)
            return run.returncode
    finally:
        print("3. stopping the HIL simulator (SIGINT)", flush=True)
        serve.send_signal(signal.SIGINT)
        tail = serve.communicate(timeout=60)[0]
        print("   " + (tail.strip().splitlines() or ["(no output)"])[-1], flush=True)
    hist = SqliteHistorian(history)
    try:
        records = hist.cycles()
    finally:
        hist.close()
    print("\nKPIs")
    for key, value in kpis(site, records).items():
        print(f"  {key:36s} {value:.6g}" if isinstance(value, float) else f"  {key:36s} {value}")
    png = plot(site, records, out / "closed-loop.png")
    print(f"\nhistorian:   {history}\naudit trail: {audit}\nplot:        {png}")
    verify = subprocess.run(
        [_bin("pharmatwin"), "audit", "verify", str(audit)], text=True, capture_output=True
    )
    print("audit verify: " + verify.stdout.strip())
    print()
    reference = recipe_titer(site) if whole else None
    text = (verify.stdout.strip() or verify.stderr.strip()).splitlines()
    checks = verdict(
        site,
        records,
        duration_s,
        verify.returncode == 0,
        text[-1] if text else "",
        reference,
        whole,
    )
    checks.append(startup(records, started, len(cache.cached() - libraries)))
    return 0 if print_verdict(checks) else 1


if __name__ == "__main__":
    sys.exit(main())
