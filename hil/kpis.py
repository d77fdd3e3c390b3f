"""Key performance indicators of a finished run, computed from the true-plant trajectory.

The objective is re-evaluated on what the plant really did (not on the MPC's predictions):
economic terms at the end and/or summed per sample, tracking terms as weighted squared error
per sample. Constraint violations are counted on the true trajectory against the controller's
constraints, its state bounds, the scenario's checks and the input limits.

Honesty rules: every figure comes from the true plant (never from the noisy measurements the
controller saw); event times are exact or interpolated between samples, never rounded up to
the next sample (the end of primary drying is located inside the plant's step; a limit's first
crossing is interpolated); final CQAs are taken at the event that ends the run. An open-loop
run has no solver, so its table shows no solver rows. A plant that left its validity domain
is reported as such: its KPIs describe a run that stopped there. What the loop could not
vouch for is counted, never folded into a success: the fast path's fallbacks to IPOPT
(``solver_fallbacks``: the solve succeeded, at many times the cost), the estimator's failures
and the measurements its innovation gate rejected (those cycles held). A true value that is
not a number (NaN) is never read as "no violation": a check with one in its run is
*undetermined* (its count and worst are NaN, ``violation.<check>.not_a_number`` says how
many), and so are the totals, the objective terms over such a series and a CQA's range, as
the campaign criteria judge NaN in a true-plant column (:mod:`hil.campaign.criteria`).
An infinite value is a value: it is judged.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from hil.simulate import ScenarioRun

_TOL = 1e-6


@dataclass(frozen=True)
class Violation:
    what: str
    #: samples over the limit; NaN when undetermined (a true value in the run is NaN)
    count: float
    #: the largest excess; NaN when undetermined
    worst: float
    #: when the true trajectory first crossed the limit (interpolated between samples);
    #: None when it never did, or when undetermined
    first_at: float | None = None
    #: samples whose true value is not a number: the check cannot say they were inside
    not_a_number: int = 0
    #: samples over the limit, and the worst excess, among those that are numbers
    known_count: int = 0
    known_worst: float = 0.0

    @property
    def determined(self) -> bool:
        return self.not_a_number == 0


@dataclass(frozen=True)
class Kpis:
    scenario: str
    steps: int
    simulated_time: float
    time_unit: str
    finished_at: float | None
    objective: float
    objective_terms: dict[str, float]
    violations: tuple[Violation, ...]
    solve_time_median_ms: float
    solve_time_p95_ms: float
    failed_solves: int
    longest_failed_run: int
    safety_interventions: int
    cqas: dict[str, float]
    wall_time_s: float
    extra: dict[str, Any] = field(default_factory=dict)
    #: the largest and smallest true value of each CQA over the run (up to its end event)
    cqa_range: dict[str, tuple[float, float]] = field(default_factory=dict)
    open_loop: bool = False
    #: the true plant left its validity domain: what, where and when (None if it never did)
    plant_fault: str | None = None
    #: cycles in which the fast path's SQP did not converge and IPOPT solved instead
    solver_fallbacks: int = 0
    #: cycles in which the estimator failed (the loop held: no setpoint from that estimate)
    estimator_failures: int = 0
    #: measurements the estimator's innovation gate kept out of its correction
    innovation_rejections: int = 0

    #: samples of each CQA whose true value is not a number (only those with any)
    cqa_not_a_number: dict[str, int] = field(default_factory=dict)

    @property
    def undetermined(self) -> tuple[Violation, ...]:
        """The checks with a true value that is not a number in their run."""
        return tuple(v for v in self.violations if not v.determined)

    @property
    def violation_count(self) -> float:
        """Samples over a limit, summed over the checks; NaN when any check is undetermined."""
        if self.undetermined:
            return math.nan
        return sum(v.known_count for v in self.violations)

    @property
    def worst_violation(self) -> float:
        """The largest excess over all checks; NaN when any check is undetermined."""
        if self.undetermined:
            return math.nan
        return max((v.known_worst for v in self.violations), default=0.0)

    def as_dict(self) -> dict[str, Any]:
        u = self.time_unit
        solver = {
            "solve_time_median_ms": self.solve_time_median_ms,
            "solve_time_p95_ms": self.solve_time_p95_ms,
            "failed_solves": self.failed_solves,
            "longest_failed_run": self.longest_failed_run,
            "solver_fallbacks": self.solver_fallbacks,
        }
        return {
            "scenario": self.scenario,
            "plant_fault": self.plant_fault,
            "steps": self.steps,
            f"simulated_time_{u}": self.simulated_time,
            f"finished_at_{u}": self.finished_at,
            "objective": self.objective,
            **{f"objective.{k}": v for k, v in self.objective_terms.items()},
            "constraint_violations": self.violation_count,
            "worst_violation": self.worst_violation,
            "undetermined_checks": len(self.undetermined),
            **{f"violation.{v.what}": _describe(v, u) for v in self.violations},
            **{f"violation.{v.what}.not_a_number": v.not_a_number for v in self.undetermined},
            **({} if self.open_loop else solver),
            "estimator_failures": self.estimator_failures,
            "innovation_rejections": self.innovation_rejections,
            "safety_interventions": self.safety_interventions,
            **{f"cqa.{k}": v for k, v in self.cqas.items()},
            **{f"cqa.{k}.max": hi for k, (_, hi) in self.cqa_range.items()},
            **{f"cqa.{k}.min": lo for k, (lo, _) in self.cqa_range.items()},
            **{f"cqa.{k}.not_a_number": n for k, n in self.cqa_not_a_number.items()},
            "wall_time_s": self.wall_time_s,
        }


def _describe(v: Violation, unit: str) -> str:
    if not v.determined:
        return (
            f"undetermined: {v.not_a_number} true values are not a number "
            f"({v.known_count} over the limit among the others, worst {v.known_worst:.4g})"
        )
    text = f"{v.known_count} (worst {v.known_worst:.4g})"
    if v.first_at is not None:
        text += f", first at {v.first_at:.6g} {unit}"
    return text


def _series(run: ScenarioRun, name: str, rows: list[dict[str, Any]]) -> np.ndarray:
    """A variable's true values (states, inputs, algebraics, expressions, true outputs)."""
    for prefix in ("x.", "u.", "z.", "e.", "o."):
        key = prefix + name
        if any(key in r for r in rows):
            return np.array([float(r.get(key, math.nan)) for r in rows])
    return np.full(len(rows), math.nan)


def iae(run: ScenarioRun, name: str, setpoint: float) -> float:
    """The integral of the absolute error of ``name``'s true value from ``setpoint`` over the
    run, in the variable's unit times the model's time unit (trapezoids between the rows, as
    a tuning's ``stat: iae``); NaN when a value is not a number. It was the sum of the
    sampled errors, a number ``1 / sample_time`` times the integral under the same name."""
    err = np.abs(_series(run, name, run.rows) - setpoint)
    t = np.array([float(r["t"]) for r in run.rows])
    return float(np.sum(0.5 * (err[1:] + err[:-1]) * np.diff(t))) if len(t) > 1 else 0.0


def _violations(run: ScenarioRun, rows: list[dict[str, Any]]) -> list[Violation]:
    checks: list[tuple[str, str, float | None, float | None]] = []
    for c in run.constraints:
        kind = "soft" if c.soft else "hard"
        checks.append((f"{c.expression} ({kind})", c.expression, c.lower, c.upper))
    for c in run.scenario.checks:
        checks.append((f"{c.expression} (check)", c.expression, c.lower, c.upper))
    bounded = set()
    if run.controller is not None:
        for name, (lo, hi) in run.controller.state_bounds.items():
            checks.append((f"{name} bound", name, lo, hi))
            bounded.add(name)
    # the model's own operating limits (X <= 3.7 g/L) are judged on the true, unclipped
    # trajectory too, where the controller config does not bound that state itself
    for name in run.model.state_names:
        v = run.model.variable(name)
        lo_op, hi_op = v.operating
        if name not in bounded and (math.isfinite(lo_op) or math.isfinite(hi_op)):
            lo_c = lo_op if math.isfinite(lo_op) else None
            hi_c = hi_op if math.isfinite(hi_op) else None
            checks.append((f"{name} operating limit", name, lo_c, hi_c))
    for name, lim in run.limits.items():
        checks.append((f"{name} limit", name, lim.lower, lim.upper))
    times = np.array([float(r["t"]) for r in rows])
    out = []
    for label, name, lo, hi in checks:
        values = _series(run, name, rows)
        excess = np.zeros_like(values)
        if hi is not None:
            excess = np.maximum(excess, values - hi)
        if lo is not None:
            excess = np.maximum(excess, lo - values)
        missing = int(np.sum(np.isnan(values)))  # an infinite value is a value: judged
        scale = max(abs(hi or 0.0), abs(lo or 0.0), 1.0)
        over = excess > _TOL * scale  # False where NaN: counted apart, never as inside
        count = int(np.sum(over))
        worst = float(np.nanmax(excess, initial=0.0)) if missing < len(excess) else 0.0
        if missing:
            out.append(Violation(label, math.nan, math.nan, None, missing, count, worst))
            continue
        first = _first_crossing(times, values, lo, hi, over) if count else None
        out.append(Violation(label, count, worst, first, 0, count, worst))
    return out


def _first_crossing(
    times: np.ndarray, values: np.ndarray, lo: float | None, hi: float | None, over: np.ndarray
) -> float:
    """The time the trajectory first crossed its limit, interpolated between two samples."""
    k = int(np.argmax(over))
    if k == 0:
        return float(times[0])
    limit = hi if hi is not None and values[k] > hi else lo
    a, b = float(values[k - 1]), float(values[k])
    if limit is None or not math.isfinite(a) or a == b:
        return float(times[k])
    w = min(max((limit - a) / (b - a), 0.0), 1.0)
    return float(times[k - 1] + w * (times[k] - times[k - 1]))


def compute_kpis(run: ScenarioRun) -> Kpis:
    rows = [r for r in run.rows if r.get("solve.status") != "end"]
    final = run.rows[-1]
    terms: dict[str, float] = {}
    if run.controller is not None:
        obj = run.controller.objective
        for e in obj.economic:
            sign = -1.0 if e.sense == "maximize" else 1.0
            series = _series(run, e.expression, run.rows)
            if e.where in ("terminal", "both"):
                terms[f"{e.sense} {e.expression} (end)"] = float(series[-1])
            value = 0.0
            if e.where in ("stage", "both"):
                value += sign * e.weight * float(np.sum(series[1:]))  # NaN stays NaN
            if e.where in ("terminal", "both"):
                value += sign * e.weight * float(series[-1])
            terms[f"{e.sense} {e.expression} (cost)"] = value
        for tr in obj.tracking:
            series = _series(run, tr.variable, run.rows)[1:]
            scale = run.model.all_variables.get(tr.variable)
            err = (series - tr.setpoint) / (scale.scale if scale else 1.0)
            terms[f"track {tr.variable} (cost)"] = float(tr.weight * np.sum(err**2))
            terms[f"track {tr.variable} IAE"] = iae(run, tr.variable, tr.setpoint)
    objective = (
        float(sum(v for k, v in terms.items() if k.endswith("(cost)"))) if terms else math.nan
    )
    times = np.array([r["solve.time_s"] for r in rows if r.get("solve.status") != "end"]) * 1e3
    solved = times[times > 0]
    failed = [r.get("solve.status") != "success" for r in rows]
    longest = run_len = 0
    for f in failed:
        run_len = run_len + 1 if f else 0
        longest = max(longest, run_len)
    # CQAs at the event that ended the run (the last row is the true state at that instant:
    # the exact end of primary drying, or the batch's end), and their range over the run
    cqas = {name: float(_series(run, name, run.rows)[-1]) for name in run.scenario.cqas}
    # a range over a run with a value that is not a number is undetermined (NaN, NaN)
    ranges, cqa_nan = {}, {}
    for name in run.scenario.cqas:
        series = _series(run, name, run.rows)
        missing = int(np.sum(np.isnan(series)))
        if missing:
            cqa_nan[name] = missing
        ranges[name] = (
            (math.nan, math.nan) if missing else (float(np.min(series)), float(np.max(series)))
        )
    return Kpis(
        scenario=run.scenario.name,
        steps=len(rows),
        simulated_time=float(final["t"]),
        time_unit=run.model.time_unit,
        finished_at=run.finished_at,
        objective=objective,
        objective_terms=terms,
        violations=tuple(_violations(run, run.rows)),
        solve_time_median_ms=float(np.median(solved)) if solved.size else 0.0,
        solve_time_p95_ms=float(np.percentile(solved, 95)) if solved.size else 0.0,
        failed_solves=int(sum(failed)),
        longest_failed_run=longest,
        safety_interventions=int(sum(r.get("safety.interventions", 0) for r in rows)),
        cqas=cqas,
        wall_time_s=run.wall_time_s,
        cqa_range=ranges,
        cqa_not_a_number=cqa_nan,
        open_loop=run.controller is None,
        plant_fault=run.plant_fault.describe() if run.plant_fault is not None else None,
        solver_fallbacks=int(sum(bool(r.get("solve.fallback", False)) for r in rows)),
        estimator_failures=int(sum(bool(r.get("estimator.failed", False)) for r in rows)),
        innovation_rejections=int(sum(int(r.get("estimator.rejected", 0)) for r in rows)),
    )
