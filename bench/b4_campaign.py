"""B4: campaign throughput, scenarios per minute on 1 and on 2 workers, local pool and Dask.

Runs ``configs/campaigns/lyophilizer-oq.yaml`` in fast mode (``--quick``: its first 8 cases)
four times, side by side in one run: on the local process pool and on a Dask LocalCluster,
each with 1 and with 2 workers, every time into a fresh results folder (nothing skipped).
Wall time is the whole :func:`hil.campaign.execute.run_campaign` call, start-up of the pool
or cluster included; the reports are not part of it. Scaling efficiency from 1 to 2 workers is
``throughput(2) / (2 * throughput(1))``. Target: at least 85 %.

    python bench/b4_campaign.py [--quick]
"""

from __future__ import annotations

import argparse
import dataclasses
import tempfile
import time
from pathlib import Path
from typing import Any, Literal

from run import ROOT, markdown_table, row

from hil.campaign.execute import RunSettings, run_campaign
from hil.campaign.spec import load_campaign

CAMPAIGN = ROOT / "configs" / "campaigns" / "lyophilizer-oq.yaml"
QUICK_CASES = 8
TARGET_EFFICIENCY = 0.85


def _once(executor: Literal["process", "dask"], workers: int, quick: bool) -> dict[str, Any]:
    campaign = load_campaign(CAMPAIGN)
    if quick:
        campaign = dataclasses.replace(campaign, cases=campaign.cases[:QUICK_CASES])
    with tempfile.TemporaryDirectory(prefix="b4-") as tmp:
        settings = RunSettings(
            out=Path(tmp), executor=executor, workers=workers, force=True, progress=False
        )
        t0 = time.perf_counter()
        outcome = run_campaign(campaign, settings)
        wall = time.perf_counter() - t0
    n = len(outcome.results)
    case_times = sorted(r.get("wall_time_s", 0.0) for r in outcome.results.values())
    return {
        "executor": executor,
        "workers": workers,
        "cases": n,
        "wall_s": wall,
        "per_minute": 60.0 * n / wall,
        "passed": outcome.count("passed"),
        "failed": outcome.count("failed"),
        "errored": outcome.count("error"),
        "case_wall_median_s": case_times[len(case_times) // 2] if case_times else None,
    }


def run(quick: bool = False) -> dict[str, Any]:
    runs = {(ex, w): _once(ex, w, quick) for ex in ("process", "dask") for w in (1, 2)}
    rows = []
    for (ex, w), r in runs.items():
        name = "local pool" if ex == "process" else "Dask LocalCluster"
        case = f"{CAMPAIGN.stem} ({r['cases']} cases), {name}, {w} worker{'s' * (w > 1)}"
        rows.append(row(case, "wall time", r["wall_s"], "s"))
        rows.append(row(case, "throughput", r["per_minute"], "scenarios/min"))
        if r["errored"]:
            rows.append(row(case, "errored cases", r["errored"], "", "0", False))
    for ex in ("process", "dask"):
        one, two = runs[(ex, 1)], runs[(ex, 2)]
        eff = two["per_minute"] / (2.0 * one["per_minute"])
        name = "local pool" if ex == "process" else "Dask LocalCluster"
        rows.append(
            row(
                f"{name}, 1 -> 2 workers",
                "scaling efficiency",
                100.0 * eff,
                "%",
                f">= {100 * TARGET_EFFICIENCY:.0f} %",
                eff >= TARGET_EFFICIENCY,
            )
        )
    return {
        "name": "B4",
        "title": "Campaign throughput",
        "rows": rows,
        "raw": {f"{ex}-{w}": r for (ex, w), r in runs.items()},
    }


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help=f"first {QUICK_CASES} cases only")
    args = parser.parse_args()
    print(markdown_table([run(quick=args.quick)]))
