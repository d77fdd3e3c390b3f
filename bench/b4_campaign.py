"""B4: campaign throughput: the 1000-case Monte Carlo OQ on 1 and 2 workers, pool and Dask.

Runs ``configs/campaigns/lyophilizer-mc.yaml`` (1000 draws of the freeze dryer's uncertain
parameters over their plausible ranges, each with its seed; the OQ's criteria that apply
without faults) in fast mode four times, side by side in one run: on the local process pool
and on a Dask LocalCluster, each with 1 and with 2 workers, every time into a fresh results
folder (nothing skipped). Wall time is the whole :func:`hil.campaign.execute.run_campaign`
call, start-up of the pool or cluster included; the reports are not part of it. Every case's
evidence is then counted (``spec.json`` with its draw, ``audit.db`` durable (its WAL
checkpointed: nothing left in an ``audit.db-wal``) and verifying, ``trajectory.parquet``,
``cycles.parquet``, ``run.log``, ``result.json`` with its verdicts): a run whose evidence is
incomplete fails its row.

Targets (issue 19): the 1000 cases in at most 90 s on each executor with 2 workers, and a
scaling efficiency ``throughput(2) / (2 * throughput(1))`` of at least 85 % on both. Only the
full campaign is judged against them: ``--quick`` runs the first 8 cases, prints the same
rows with the 1000-case time extrapolated (its overhead, plus 1000 cases at its mean case
time over the workers), and judges nothing. The machine, its load average and the Python are
printed with the table.

    python bench/b4_campaign.py [--quick] [--cases N]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import tempfile
import time
from pathlib import Path
from typing import Any, Literal

from run import ROOT, interpreter, markdown_table, row

from controller.runtime.audit_chain import AuditError
from controller.runtime.audit_verify import verify_file
from hil.campaign.execute import RunSettings, run_campaign
from hil.campaign.spec import Campaign, load_campaign

CAMPAIGN = ROOT / "configs" / "campaigns" / "lyophilizer-mc.yaml"
FULL_CASES = 1000
QUICK_CASES = 8
TARGET_WALL_S = 90.0
TARGET_EFFICIENCY = 0.85
EVIDENCE = ("spec.json", "audit.db", "trajectory.parquet", "cycles.parquet", "run.log")
Executor = Literal["process", "dask"]


def machine() -> dict[str, Any]:
    """The machine the figures belong to: platform, CPUs, CPU model, load average."""
    model = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {
        "platform": platform.platform(),
        "cpu_count": os.cpu_count(),
        "cpu_model": model or platform.processor(),
        "load_average": os.getloadavg(),
    }


def evidence_complete(out: Path, campaign: Campaign) -> int:
    """How many cases left their full evidence: every file, their draw and their verdicts."""
    n = 0
    for case in campaign.cases:
        folder = out / "cases" / case.id
        try:
            spec = json.loads((folder / "spec.json").read_text(encoding="utf-8"))
            result = json.loads((folder / "result.json").read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue
        files = all((folder / name).is_file() for name in EVIDENCE)
        drawn = spec.get("draw") == case.draw and result.get("draw") == case.draw
        judged = result.get("status") in ("passed", "failed") and bool(result.get("verdicts"))
        n += files and drawn and judged and audit_durable(folder / "audit.db")
    return n


def audit_durable(db: Path) -> bool:
    """The case's audit trail is wholly in its database file (no WAL content left: it was
    checkpointed before ``result.json``) and verifies against its anchors."""
    wal = db.with_name(db.name + "-wal")
    if wal.exists() and wal.stat().st_size > 0:
        return False
    try:
        return verify_file(db).records > 0
    except AuditError:
        return False


def _once(executor: Executor, workers: int, campaign: Campaign) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="b4-") as tmp:
        settings = RunSettings(
            out=Path(tmp), executor=executor, workers=workers, force=True, progress=False
        )
        t0 = time.perf_counter()
        outcome = run_campaign(campaign, settings)
        wall = time.perf_counter() - t0
        complete = evidence_complete(Path(tmp), campaign)
    n = len(outcome.results)
    case_times = sorted(r.get("wall_time_s", 0.0) for r in outcome.results.values())
    cpu_times = sorted(r.get("cpu_time_s", 0.0) for r in outcome.results.values())
    busy = sum(case_times) / workers  # the cases' own time, spread over the workers
    return {
        "executor": executor,
        "workers": workers,
        "cases": n,
        "wall_s": wall,
        "per_minute": 60.0 * n / wall,
        "passed": outcome.count("passed"),
        "failed": outcome.count("failed"),
        "errored": outcome.count("error"),
        "evidence_complete": complete,
        "case_wall_median_s": case_times[len(case_times) // 2] if case_times else None,
        "case_wall_mean_s": sum(case_times) / n if n else None,
        "case_cpu_median_s": cpu_times[len(cpu_times) // 2] if cpu_times else None,
        "overhead_s": wall - busy,  # start-up of the executor, warm-up, idle workers
        "load_average_after": os.getloadavg()[0],
    }


def _name(executor: str) -> str:
    return "local pool" if executor == "process" else "Dask LocalCluster"


def _run_rows(r: dict[str, Any], stem: str, judged: bool) -> list[dict[str, Any]]:
    w = r["workers"]
    case = f"{stem} ({r['cases']} cases), {_name(r['executor'])}, {w} worker{'s' * (w > 1)}"
    rows = [
        row(case, "wall time", r["wall_s"], "s"),
        row(case, "throughput", r["per_minute"], "scenarios/min"),
        row(case, "median case wall time (in its worker)", r["case_wall_median_s"] or 0.0, "s"),
        row(case, "median case CPU time (its worker process)", r["case_cpu_median_s"] or 0.0, "s"),
        row(case, "overhead (wall - case time / workers)", r["overhead_s"], "s"),
        row(case, "passed / failed / errored", f"{r['passed']} / {r['failed']} / {r['errored']}"),
        row(
            case,
            "cases with full evidence",
            r["evidence_complete"],
            f"of {r['cases']}",
            "all",
            r["evidence_complete"] == r["cases"],
        ),
    ]
    if w == 2:  # extrapolated: this run's overhead + 1000 cases at its mean case time
        projected = r["overhead_s"] + FULL_CASES * (r["case_wall_mean_s"] or 0.0) / w
        target = f"<= {TARGET_WALL_S:g} s for {FULL_CASES} cases"
        if judged:
            rows.append(row(case, "wall time, the target", r["wall_s"], "s", target,
                            r["wall_s"] <= TARGET_WALL_S))  # fmt: skip
        else:
            rows.append(row(case, f"{FULL_CASES} cases extrapolated (not judged)",
                            projected, "s", target, None))  # fmt: skip
    return rows


def run(quick: bool = False, cases: int | None = None) -> dict[str, Any]:
    full = load_campaign(CAMPAIGN)
    n = cases or (QUICK_CASES if quick else FULL_CASES)
    campaign = dataclasses.replace(full, cases=full.cases[:n])
    judged = len(campaign.cases) == len(full.cases) == FULL_CASES  # the whole campaign only
    before = machine()
    runs = {(ex, w): _once(ex, w, campaign) for ex in ("process", "dask") for w in (1, 2)}
    after = machine()
    where = f"{before['platform']}, {before['cpu_count']} CPUs ({before['cpu_model']})"
    load = f"load average {before['load_average'][0]:.2f} before, "
    load += f"{after['load_average'][0]:.2f} after"
    rows = [row("machine", "platform, CPUs", where), row("machine", "load", load)]
    rows.append(row("machine", "Python", interpreter()))
    for r in runs.values():
        rows += _run_rows(r, CAMPAIGN.stem, judged)
    for ex in ("process", "dask"):
        eff = runs[(ex, 2)]["per_minute"] / (2.0 * runs[(ex, 1)]["per_minute"])
        target = f">= {100 * TARGET_EFFICIENCY:.0f} %"
        if not judged:
            target += f" at {FULL_CASES} cases (not judged)"
        met = eff >= TARGET_EFFICIENCY if judged else None
        case = f"{_name(ex)}, 1 -> 2 workers ({len(campaign.cases)} cases)"
        rows.append(row(case, "scaling efficiency", 100.0 * eff, "%", target, met))
    return {
        "name": "B4",
        "title": "Campaign throughput (Monte Carlo OQ)",
        "rows": rows,
        "raw": {
            "campaign": str(CAMPAIGN.relative_to(ROOT)),
            "cases": len(campaign.cases),
            "judged": judged,
            "machine_before": before,
            "machine_after": after,
            **{f"{ex}-{w}": r for (ex, w), r in runs.items()},
        },
    }


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help=f"first {QUICK_CASES} cases only")
    parser.add_argument("--cases", type=int, default=None, help="the first N cases (not judged)")
    args = parser.parse_args()
    print(markdown_table([run(quick=args.quick, cases=args.cases)]))
