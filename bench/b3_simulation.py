"""B3: offline simulation speed, simulated hours per wall second, for each model's scenario.

Each ``configs/scenarios/<model>-mpc.yaml`` runs through :func:`hil.simulate.run_scenario`
(true plant, EKF, MPC, safety, memory port on a stepped clock) as configured: the MPC backend
is whatever the controller config's ``solver.backend`` says (``do-mpc`` when it has no
``solver`` key), and is reported per row.

Wall time is the whole ``run_scenario`` call: loading the configs, building the MPC (and, for
a compiled backend, loading or compiling its library) and the loop; the loop alone is in the
raw results. The first run of each scenario is reported on its own ("first run": imports,
caches and compilation are cold or warming); the median and p95 are over the ``repeats`` runs
that follow it, side by side in the same process.

    python bench/b3_simulation.py [--quick] [--model bioreactor]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from run import ROOT, case_failed, latency_stats, markdown_table, row

from controller.configfile import read_yaml, resolve
from controller.controllerfile import load_controller
from controller.timebase import TimeBase
from hil.scenario import load_scenario
from hil.simulate import run_scenario

MODELS = ("lyophilizer", "bioreactor", "crystallizer", "cstr")
SCENARIOS = ROOT / "configs" / "scenarios"
TARGET = {"bioreactor": 30.0}  # the 150 h batch in under 30 s of wall time
FULL_REPEATS, QUICK_REPEATS = 5, 1


def backend_of(scenario: Path) -> str:
    """The MPC backend the scenario's controller config selects, and whether it says so."""
    sc = load_scenario(scenario)
    if sc.controller is None:
        return "none (open loop)"
    path = resolve(scenario, sc.controller)
    cfg, _ = load_controller(path)
    solver = getattr(cfg, "solver", None)
    backend = str(getattr(solver, "backend", "do-mpc"))
    return backend if "solver" in read_yaml(path) else f"{backend} (default)"


def one_run(scenario: Path) -> dict[str, Any]:
    """Run the scenario once; wall times [s], simulated hours, solve statistics."""
    started = time.perf_counter()
    result = asyncio.run(run_scenario(scenario))
    wall = time.perf_counter() - started
    simulated_s = TimeBase.of(result.model).seconds(float(result.rows[-1]["t"]))
    simulated_h = simulated_s / 3600.0
    solves = [r for r in result.rows if "solve.time_s" in r]
    solve_s = [float(r["solve.time_s"]) for r in solves]
    failed = sum(r.get("solve.status") not in ("success", None) for r in solves)
    return {
        "wall_s": wall,
        "loop_s": result.wall_time_s,
        "simulated_h": simulated_h,
        "steps": len(solves),
        "solve_ms_median": float(np.median(solve_s)) * 1e3 if solve_s else None,
        "solve_ms_p95": float(np.percentile(solve_s, 95)) * 1e3 if solve_s else None,
        "failed_solves": int(failed),
    }


def measure(model: str, repeats: int) -> dict[str, Any]:
    scenario = SCENARIOS / f"{model}-mpc.yaml"
    backend = backend_of(scenario)
    first = one_run(scenario)
    runs = [one_run(scenario) for _ in range(repeats)]
    walls = [r["wall_s"] for r in runs]
    return {
        "scenario": str(scenario.relative_to(ROOT)),
        "backend": backend,
        "simulated_h": runs[0]["simulated_h"],
        "first_run": first,
        "runs": runs,
        "wall_s": latency_stats(walls),
        "loop_s": latency_stats([r["loop_s"] for r in runs]),
        "simulated_h_per_wall_s": runs[0]["simulated_h"] / float(np.median(walls)),
    }


def rows_for(model: str, m: dict[str, Any]) -> list[dict[str, Any]]:
    case = f"{model}-mpc, {m['simulated_h']:.3g} h, backend {m['backend']}"
    limit = TARGET.get(model)
    target = f"< {limit:g} s" if limit is not None else ""
    met = m["wall_s"]["median"] < limit if limit is not None else None
    n = m["wall_s"]["n"]
    return [
        row(case, "simulated h per wall s", m["simulated_h_per_wall_s"], "h/s"),
        row(case, f"wall time, median of {n}", m["wall_s"]["median"], "s", target, met),
        row(case, f"wall time, p95 of {n}", m["wall_s"]["p95"], "s"),
        row(case, "wall time, first run", m["first_run"]["wall_s"], "s"),
    ]


def run(quick: bool = False, models: Sequence[str] = MODELS) -> dict[str, Any]:
    repeats = QUICK_REPEATS if quick else FULL_REPEATS
    raw: dict[str, Any] = {"repeats": repeats, "load_average_at_start": os.getloadavg()[0]}
    rows = []
    failed = False
    for model in models:
        try:
            m = measure(model, repeats)
        except Exception as exc:
            bad, raw[model] = case_failed(f"{model}-mpc", exc)
            rows.append(bad)
            failed = True
            continue
        raw[model] = m
        rows += rows_for(model, m)
    result = {"name": "B3", "title": "offline simulation speed", "rows": rows, "raw": raw}
    return {**result, "status": "error"} if failed else result


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--model", choices=MODELS, action="append")
    args = ap.parse_args()
    print(markdown_table([run(args.quick, args.model or MODELS)]))


if __name__ == "__main__":
    main()
