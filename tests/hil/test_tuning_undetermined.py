"""A tuning objective on a signal with samples that are not numbers is undetermined.

Seen by a reviewer: ``signal_stat`` dropped the non-finite samples, so ``C_b = [0.6, nan,
nan, nan, 0.6]`` scored an IAE of 0 about 0.6 (and a max and mean of 0.6): a trajectory the
statistic never saw scored as perfect. It is NaN now, and the candidate is rejected with
the case, the term and why.
"""

from __future__ import annotations

import math
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from hil.tuning.evaluate import score, signal_stat
from hil.tuning.spec import ObjectiveSpec, Reject, Term


def _trajectory(path: Path, values: list[float]) -> Path:
    t = [0.1 * k for k in range(len(values))]
    pq.write_table(pa.table({"t": t, "x.C_b": values}), path)
    return path


@pytest.mark.parametrize("stat", ["iae", "ise", "mean", "max", "min", "final"])
def test_a_gap_in_the_signal_makes_the_statistic_undetermined(tmp_path: Path, stat: str) -> None:
    path = _trajectory(tmp_path / "t.parquet", [0.6, math.nan, math.nan, math.nan, 0.6])
    assert math.isnan(signal_stat(path, Term(signal="C_b", stat=stat, target=0.6)))


def test_a_whole_signal_still_scores(tmp_path: Path) -> None:
    """The check could pass: the same trajectory without the gap scores its real values."""
    path = _trajectory(tmp_path / "t.parquet", [0.6, 0.7, 0.5, 0.6, 0.6])
    assert signal_stat(path, Term(signal="C_b", stat="max")) == pytest.approx(0.7)
    iae = signal_stat(path, Term(signal="C_b", stat="iae", target=0.6))
    assert iae == pytest.approx(0.1 * (0.05 + 0.1 + 0.05))  # trapezoids of |e| = 0, .1, .1, 0, 0


def test_the_candidate_is_rejected_naming_the_case_and_the_term(tmp_path: Path) -> None:
    case = tmp_path / "cases" / "c000"
    case.mkdir(parents=True)
    _trajectory(case / "trajectory.parquet", [0.6, math.nan, 0.6])
    term = Term(signal="C_b", stat="iae", target=0.6)
    objective = ObjectiveSpec.model_validate({"name": "track", "terms": [term.model_dump()]})
    result = {"id": "c000", "status": "passed", "kpis": {}, "verdicts": []}
    s = score([result], tmp_path, (objective,), Reject())
    assert math.isnan(s.values[0])
    assert "c000: iae(C_b-0.6) undetermined (signal C_b not recorded, or a sample" in s.rejected[0]
