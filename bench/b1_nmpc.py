"""B1, NMPC step time: do-mpc with its own default settings versus the production fast path.

For each model the scenario ``configs/scenarios/<model>-mpc.yaml`` is run in closed loop
twice, side by side in one process: once with the reference and once with the fast path
(:class:`controller.core.fast_mpc.FastController`, with the controller config's ``solver``
section). The reference is a do-mpc MPC of the same problem as the production do-mpc path
(:class:`controller.core.dompc.DoMpcController`): the same model, objective, bounds, hard move
limits, soft constraints, horizon, collocation, variable scaling (the move penalties act on
scaled moves, so the scaling is part of the objective) and initial guess, solved with
do-mpc's own default solver settings: CasADi's IPOPT defaults (only its printing silenced)
and do-mpc's unshifted warm start. Reported: setup time, median and p95 step time, the first
solve, median iterations, failed steps (with their solver statuses in ``raw``), fallbacks and
cold starts of the fast path, the closed-loop objective (re-evaluated on the true plant by
:func:`hil.kpis.compute_kpis`) and the ratios. Step times are the wall time of the whole
``step()`` call of each controller (warm-start shift, solve, reading the solution, building
the Decision), not the solver call alone (that one is in ``raw`` as ``solver_only_median_ms``).

Robust multi-stage rows (case ``bioreactor robust``): the bioreactor scenario run with the
robust controller ``configs/controllers/bioreactor-robust.yaml`` (9 scenarios, n_robust 1)
for :data:`ROBUST_STEPS` samples, by do-mpc with its default settings (its own
``n_robust``/``set_uncertainty_values`` tree) and by the fast path, against the nominal
do-mpc default step median of the bioreactor rows. ``--robust`` runs only these rows (the
nominal do-mpc default then over the same samples).

    python bench/b1_nmpc.py [--quick] [--robust] [--model NAME ...]

``--model`` (repeatable) runs only the named models (the robust rows only with the
bioreactor).
"""

from __future__ import annotations

import asyncio
import sys
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run as a script from a clean clone
    sys.path.insert(0, str(ROOT))

import hil.simulate as simulate  # noqa: E402
from controller.config import ControllerConfig  # noqa: E402
from controller.controllerfile import load_controller  # noqa: E402
from controller.core.dompc import DoMpcController  # noqa: E402
from controller.core.fast_mpc import FastController  # noqa: E402
from controller.core.policy import build_policy  # noqa: E402
from controller.runtime.solver_cache import LibraryCache  # noqa: E402
from hil.kpis import compute_kpis  # noqa: E402
from plant_models import PlantModel  # noqa: E402

MODELS = ("bioreactor", "crystallizer", "cstr", "lyophilizer")
#: Closed-loop samples per model (None: the whole scenario); quick runs take 20.
STEPS: dict[str, int | None] = {
    "bioreactor": None,
    "crystallizer": None,
    "cstr": None,
    "lyophilizer": 100,
}
#: Issue 19: every model's fast step median at most this fraction of the do-mpc default's.
RATIO_TARGET = 0.05
#: Closed-loop samples of the robust rows (a robust do-mpc step costs ~10 nominal ones).
ROBUST_STEPS = 60
ROBUST_CONFIG = ROOT / "configs" / "controllers" / "bioreactor-robust.yaml"
QUIET_IPOPT = {"ipopt.print_level": 0, "ipopt.sb": "yes", "print_time": False}
DEFAULT_SETTINGS = (
    "n_horizon",
    "t_step",
    "n_robust",
    "open_loop",
    "state_discretization",
    "collocation_type",
    "collocation_deg",
    "collocation_ni",
)


class DoMpcDefault(DoMpcController):
    """The reference: the same problem, with do-mpc's own default solver settings."""

    def _configure(self, mpc: Any) -> None:
        settings = self.mpc_settings(self.config)
        for key in DEFAULT_SETTINGS:
            setattr(mpc.settings, key, settings[key])
        mpc.settings.nlpsol_opts = dict(QUIET_IPOPT)
        self._set_scaling(mpc)  # part of the problem: the move penalties act on scaled moves

    def _shift_warm_start(self) -> None:
        """do-mpc starts from the previous solution as it is (no shift)."""


def _run(model: str, steps: int | None, make: Callable[..., Any]) -> dict[str, Any]:
    built: list[Any] = []
    setup: list[float] = []
    calls: list[float] = []  # wall time of each whole step() call: warm start, solve, Decision

    def factory(
        cfg: ControllerConfig, plant: PlantModel, *, compile: Any = None, source: str = "<config>"
    ) -> Any:
        started = time.perf_counter()
        ctl = make(cfg, plant, source)
        setup.append(time.perf_counter() - started)
        built.append(ctl)
        inner = ctl.step

        def timed(*args: Any, **kwargs: Any) -> Any:
            t0 = time.perf_counter()
            decision = inner(*args, **kwargs)
            calls.append(time.perf_counter() - t0)
            return decision

        ctl.step = timed
        return ctl

    original = simulate.build_policy
    simulate.build_policy = factory  # type: ignore[assignment]
    try:
        path = ROOT / "configs" / "scenarios" / f"{model}-mpc.yaml"
        run = asyncio.run(simulate.run_scenario(path, max_steps=steps))
    finally:
        simulate.build_policy = original
    rows = [r for r in run.rows if r.get("solve.status") != "end"]
    solver_only = np.array([r["solve.time_s"] for r in rows]) * 1e3
    times = np.array(calls[: len(rows)]) * 1e3
    kpis = compute_kpis(run)
    failed = Counter(
        str(r.get("solve.return_status", ""))[:80] for r in rows if r["solve.status"] != "success"
    )
    return {
        "setup_s": setup[0],
        "steps": len(rows),
        "step_median_ms": float(np.median(times)),
        "step_p95_ms": float(np.percentile(times, 95)),
        "first_step_ms": float(times[0]),
        "solver_only_median_ms": float(np.median(solver_only)),
        "iterations_median": float(np.median([r["solve.iterations"] for r in rows])),
        "failed_steps": kpis.failed_solves,
        "failed_statuses": dict(failed),
        "fallbacks": int(getattr(built[0], "fallbacks", 0)),
        "fallbacks_kpi": kpis.solver_fallbacks,
        "cold_starts": int(getattr(built[0], "cold_starts", 0)),
        "sqp_retries": int(getattr(built[0], "sqp_retries", 0)),
        "objective": kpis.objective,
        "constraint_points": built[0].config.constraint_points,
    }


def _fast(cfg: ControllerConfig, plant: PlantModel, source: str) -> FastController:
    solver = cfg.solver.model_copy(update={"backend": "fast"})
    fast_cfg = cfg.model_copy(update={"solver": solver})
    ctl = build_policy(fast_cfg, plant, compile=LibraryCache(), source=source)
    assert isinstance(ctl, FastController)
    return ctl


def _rows(model: str, ref: dict[str, Any], fast: dict[str, Any]) -> list[dict[str, Any]]:
    ratio = fast["step_median_ms"] / ref["step_median_ms"]
    rel = abs(fast["objective"] - ref["objective"]) / max(abs(ref["objective"]), 1e-12)
    out: list[dict[str, Any]] = []

    def row(metric: str, value: Any, unit: str = "", target: str = "", met: Any = None) -> None:
        out.append(
            {"case": model, "metric": metric, "value": value, "unit": unit}
            | {"target": target, "met": met}
        )

    row("steps", fast["steps"])
    inner = fast["constraint_points"]
    row("constraint points per interval", f"start + {inner} inner + end", "", "")
    for label, r in (("do-mpc default", ref), ("fast", fast)):
        row(f"{label} setup", round(r["setup_s"], 3), "s")
        row(f"{label} step median", round(r["step_median_ms"], 3), "ms")
        row(f"{label} step p95", round(r["step_p95_ms"], 3), "ms")
        row(f"{label} first step", round(r["first_step_ms"], 3), "ms")
        row(f"{label} iterations (median)", r["iterations_median"])
        row(f"{label} failed steps", r["failed_steps"])
        row(f"{label} objective", round(r["objective"], 6))
    share = 100 * fast["fallbacks_kpi"] / max(1, fast["steps"])
    row("fast fallbacks to IPOPT (KPI solver_fallbacks)", fast["fallbacks_kpi"])
    row("fast fallbacks to IPOPT, share of steps", round(share, 2), "%")
    row("fast cold starts (IPOPT)", fast["cold_starts"])
    row("fast SQP retries with the convexified Hessian", fast.get("sqp_retries", 0))
    first_ok = fast["first_step_ms"] <= ref["first_step_ms"]
    row("first solve fast", round(fast["first_step_ms"], 3), "ms", "<= do-mpc first", first_ok)
    row("fast setup (warm cache)", round(fast["setup_s"], 3), "s", "<= 10 s", fast["setup_s"] <= 10)
    row("step median ratio fast/do-mpc", round(ratio, 4), "x", "<= 0.05", ratio <= RATIO_TARGET)
    row("objective relative difference", round(100 * rel, 4), "%", "<= 0.5 %", rel <= 0.005)
    fewer = fast["failed_steps"] <= ref["failed_steps"]
    row("failed steps fast - do-mpc", fast["failed_steps"] - ref["failed_steps"], "", "<= 0", fewer)
    return out


def _robust(backend: str) -> Callable[..., Any]:
    """A factory of the robust bioreactor controller on ``backend`` (do-mpc: its defaults).

    The scenario's own controller is the nominal bioreactor.yaml; the robust config is the
    same problem (objective, limits, constraints, estimator) plus its ``robust`` section.
    """
    robust_cfg, _ = load_controller(ROBUST_CONFIG)

    def make(cfg: ControllerConfig, plant: PlantModel, source: str) -> Any:
        if backend == "do-mpc":
            return DoMpcDefault(robust_cfg, plant, str(ROBUST_CONFIG))
        return _fast(robust_cfg, plant, str(ROBUST_CONFIG))

    return make


def _robust_rows(
    nominal: dict[str, Any], ref: dict[str, Any], fast: dict[str, Any], steps: int
) -> list[dict[str, Any]]:
    case = f"bioreactor robust ({steps} steps)"
    ratio = fast["step_median_ms"] / nominal["step_median_ms"]
    rel = abs(fast["objective"] - ref["objective"]) / max(abs(ref["objective"]), 1e-12)
    out: list[dict[str, Any]] = []

    def row(metric: str, value: Any, unit: str = "", target: str = "", met: Any = None) -> None:
        out.append(
            {"case": case, "metric": metric, "value": value, "unit": unit}
            | {"target": target, "met": met}
        )

    row("scenarios (n_robust 1)", 9)
    row("do-mpc default nominal step median", round(nominal["step_median_ms"], 3), "ms")
    for label, r in (("do-mpc default robust", ref), ("fast robust", fast)):
        row(f"{label} setup", round(r["setup_s"], 3), "s")
        row(f"{label} step median", round(r["step_median_ms"], 3), "ms")
        row(f"{label} step p95", round(r["step_p95_ms"], 3), "ms")
        row(f"{label} iterations (median)", r["iterations_median"])
        row(f"{label} failed steps", r["failed_steps"])
        row(f"{label} objective", round(r["objective"], 6))
    row("fast robust fallbacks to IPOPT (KPI solver_fallbacks)", fast["fallbacks_kpi"])
    row("fast robust cold starts (IPOPT)", fast["cold_starts"])
    row("step median ratio fast robust/do-mpc nominal", round(ratio, 4), "x", "<= 2", ratio <= 2)
    row("objective relative difference", round(100 * rel, 4), "%", "<= 0.5 %", rel <= 0.005)
    fewer = fast["failed_steps"] <= ref["failed_steps"]
    row("failed steps fast - do-mpc", fast["failed_steps"] - ref["failed_steps"], "", "<= 0", fewer)
    return out


def run_robust(
    quick: bool = False, nominal: dict[str, Any] | None = None
) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """The robust rows; ``nominal`` is the nominal do-mpc default run (measured if None)."""
    steps = 20 if quick else ROBUST_STEPS
    _run("bioreactor", 2, _robust("fast"))  # compile (or load) the library, untimed
    if nominal is None:
        nominal = _run("bioreactor", steps, DoMpcDefault)
    ref = _run("bioreactor", steps, _robust("do-mpc"))
    fast = _run("bioreactor", steps, _robust("fast"))
    raw = {"do-mpc default nominal": nominal, "do-mpc default robust": ref, "fast robust": fast}
    return _robust_rows(nominal, ref, fast, steps), raw


def run(
    quick: bool = False, robust_only: bool = False, models: tuple[str, ...] = MODELS
) -> dict[str, Any]:
    """Run B1 on ``models`` (every one by default), then the robust rows (with the
    bioreactor only); ``quick`` shortens each closed loop to 20 samples; ``robust_only``
    runs the robust rows alone."""
    rows: list[dict[str, Any]] = []
    raw: dict[str, Any] = {}
    ratios = []
    if robust_only:
        rows, raw["bioreactor robust"] = run_robust(quick)
        return {"name": "B1", "title": "NMPC step time", "rows": rows, "raw": raw}
    for model in models:
        steps = 20 if quick else STEPS[model]
        _run(model, 2, _fast)  # compile (or load) the library once, outside the timing
        ref = _run(model, steps, DoMpcDefault)
        fast = _run(model, steps, _fast)
        raw[model] = {"do-mpc default": ref, "fast": fast}
        rows += _rows(model, ref, fast)
        ratios.append(fast["step_median_ms"] / ref["step_median_ms"])
    n_fast = sum(r <= RATIO_TARGET for r in ratios)
    rows.append(
        {
            "case": "all",
            "metric": "models with step ratio <= 0.05",
            "value": n_fast,
            "unit": "",
            "target": f"= {len(ratios)} (every model{'' if models == MODELS else ' run'})",
            "met": n_fast == len(ratios),
        }
    )
    if "bioreactor" in raw:
        nominal = raw["bioreactor"]["do-mpc default"]
        robust_rows, raw["bioreactor robust"] = run_robust(quick, nominal)
        rows += robust_rows
    return {"name": "B1", "title": "NMPC step time", "rows": rows, "raw": raw}


def markdown(result: dict[str, Any]) -> str:
    lines = [
        f"### {result['name']}: {result['title']}",
        "",
        "| case | metric | value | unit | target | met |",
        "|---|---|---|---|---|---|",
    ]
    for r in result["rows"]:
        met = "" if r["met"] is None else ("yes" if r["met"] else "**no**")
        lines.append(
            f"| {r['case']} | {r['metric']} | {r['value']} | {r['unit']} | {r['target']} | {met} |"
        )
    return "\n".join(lines)


if __name__ == "__main__":
    args = sys.argv[1:]
    chosen = tuple(args[i + 1] for i, a in enumerate(args[:-1]) if a == "--model") or MODELS
    unknown = sorted(set(chosen) - set(MODELS))
    if unknown:
        sys.exit(f"b1_nmpc.py: unknown --model {unknown}; allowed: {list(MODELS)}")
    print(markdown(run(quick="--quick" in args, robust_only="--robust" in args, models=chosen)))
