"""The KPI table's "track <variable> IAE" is the time integral of the absolute error, the
quantity a tuning's ``stat: iae`` is (seen by a reviewer: ``simulate cstr-mpc.yaml
--max-steps 30`` reported 0.611447, the sum of the 30 sampled errors, where the integral over
0.15 h was about 0.0031 mol/L h)."""

from __future__ import annotations

import asyncio
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from hil.kpis import compute_kpis
from hil.simulate import run_scenario
from hil.tuning.evaluate import signal_stat
from hil.tuning.spec import Term

ROOT = Path(__file__).resolve().parents[2]


def test_the_iae_kpi_is_the_time_integral_a_tuning_scores(tmp_path: Path) -> None:
    run = asyncio.run(run_scenario(ROOT / "configs" / "scenarios" / "cstr-mpc.yaml", max_steps=30))
    kpi = compute_kpis(run).objective_terms["track C_b IAE"]
    t = np.array([r["t"] for r in run.rows])
    c_b = np.array([r["x.C_b"] for r in run.rows])
    err = np.abs(c_b - 0.6)
    assert kpi == pytest.approx(float(np.sum(0.5 * (err[1:] + err[:-1]) * np.diff(t))), rel=1e-12)
    assert kpi < 0.1 * float(np.sum(err[1:]))  # not the sum of the samples (dt = 0.005 h)
    path = tmp_path / "trajectory.parquet"
    pq.write_table(pa.table({"t": t, "x.C_b": c_b}), path)
    tuned = signal_stat(path, Term(signal="C_b", stat="iae", target=0.6))
    assert kpi == pytest.approx(tuned, rel=1e-12)
