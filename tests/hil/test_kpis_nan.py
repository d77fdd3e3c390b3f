"""A true value that is not a number is never counted as "no violation".

The KPIs used to replace NaN excesses by 0 (``nan_to_num``), sum the objective and IAE past
NaN (``nansum``) and drop a CQA's range when every value was NaN: a check on a true Tbot
that was NaN at every sample reported 0 violations, worst 0. Now such a check is
undetermined (count and worst NaN, the NaN samples counted), and so are the totals, the
objective terms and the CQA's range, as the campaign criteria judge NaN in a true column.
"""

from __future__ import annotations

import asyncio
import json
import math
from pathlib import Path

import pytest
import yaml

from hil.kpis import compute_kpis
from hil.reports import write_kpis
from hil.simulate import ScenarioRun, run_scenario

ROOT = Path(__file__).resolve().parents[2]
CHECK = "Tbot (check)"


def _lyo_run(tmp_path: Path, steps: int = 6) -> ScenarioRun:
    body = {
        "name": "lyo-nan",
        "plant": str(ROOT / "configs" / "plants" / "lyophilizer.yaml"),
        "recipe": {
            "interpolation": "linear",
            "table": [
                {"t": 0.0, "inputs": {"Tsh": -35.0, "Pch": 0.15}},
                {"t": 10.0, "inputs": {"Tsh": 20.0, "Pch": 0.15}},
            ],
        },
        "sample_time": 0.1,
        "duration": 10.0,
        "checks": [{"expression": "Tbot", "upper": -40.0}],  # crossed from the start
        "cqas": ["Tbot"],
    }
    path = tmp_path / "lyo-nan.yaml"
    path.write_text(yaml.safe_dump(body), encoding="utf-8")
    return asyncio.run(run_scenario(path, max_steps=steps))


def test_a_check_whose_true_values_are_all_nan_is_undetermined(tmp_path: Path) -> None:
    run = _lyo_run(tmp_path)
    for row in run.rows:
        row["o.Tbot"] = math.nan
    kpis = compute_kpis(run)
    (v,) = [v for v in kpis.violations if v.what == CHECK]
    assert math.isnan(v.count) and math.isnan(v.worst) and v.first_at is None  # was 0, 0
    assert math.isnan(kpis.violation_count) and math.isnan(kpis.worst_violation)
    assert not v.determined and v.not_a_number == len(run.rows)
    table = kpis.as_dict()
    assert math.isnan(table["constraint_violations"]) and table["undetermined_checks"] == 1
    assert table[f"violation.{CHECK}"].startswith(f"undetermined: {len(run.rows)} ")
    assert table[f"violation.{CHECK}.not_a_number"] == len(run.rows)
    lo, hi = kpis.cqa_range["Tbot"]  # the range is there, and undetermined
    assert math.isnan(lo) and math.isnan(hi)
    assert table["cqa.Tbot.not_a_number"] == len(run.rows)
    saved = json.loads(write_kpis(kpis, tmp_path / "kpis.json").read_text(encoding="utf-8"))
    assert saved["constraint_violations"] is None and saved["undetermined_checks"] == 1


def test_some_nan_samples_keep_what_the_others_show(tmp_path: Path) -> None:
    run = _lyo_run(tmp_path)
    clean = compute_kpis(run)
    (before,) = [v for v in clean.violations if v.what == CHECK]
    assert before.count == len(run.rows) > 0
    for row in run.rows[2:4]:
        row["o.Tbot"] = math.nan
    (v,) = [v for v in compute_kpis(run).violations if v.what == CHECK]
    assert math.isnan(v.count) and v.not_a_number == 2  # was len - 2: the NaN counted inside
    assert v.known_count == len(run.rows) - 2 and v.known_worst > 0
    assert before.determined and clean.as_dict()["undetermined_checks"] == 0
    assert not [k for k in clean.as_dict() if k.endswith(".not_a_number")]


def test_an_objective_over_a_nan_true_value_is_not_a_number() -> None:
    run = asyncio.run(run_scenario(ROOT / "configs" / "scenarios" / "cstr-mpc.yaml", max_steps=3))
    assert math.isfinite(compute_kpis(run).objective)
    run.rows[1]["x.C_b"] = math.nan
    kpis = compute_kpis(run)
    assert math.isnan(kpis.objective)
    assert math.isnan(kpis.objective_terms["track C_b IAE"])
    assert math.isnan(kpis.violation_count)  # the C_b bound is undetermined too
    assert any(v.what == "C_b bound" for v in kpis.undetermined)


@pytest.mark.parametrize("value", [math.inf, -math.inf])
def test_an_infinite_true_value_is_judged_not_undetermined(tmp_path: Path, value: float) -> None:
    run = _lyo_run(tmp_path, steps=2)
    run.rows[0]["o.Tbot"] = value
    (v,) = [v for v in compute_kpis(run).violations if v.what == CHECK]
    assert v.determined  # judged: +inf is over the upper limit, -inf is under it
    assert v.count == len(run.rows) - (value < 0)
    assert v.worst == (math.inf if value > 0 else v.known_worst)
