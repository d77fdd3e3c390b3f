"""``pharmatwin forecast`` never reports a forecast as fine when it is not.

* a cycle whose estimate failed (``Estimate.ok`` False, held states) is never a start: the
  historian stores the estimate's status and reason, the forecast starts from the newest cycle
  whose estimate did not fail and says which newer ones it skipped and why; none: an error
  naming the historian file;
* a forecast from where the batch has ended applies no plan: each is ``not applied`` (no CQA
  attributed to it) and the command exits 1;
* a malformed historian is one error line naming the file, run, cycle, column and value
  (exit 2), never a traceback.

Real SQLite historians in ``tmp_path``, the real CLI (:func:`controller.runtime.cli.main`).
"""

from __future__ import annotations

import json
import math
import sqlite3
from pathlib import Path
from typing import Any

import pytest

from controller.core.estimate import Estimate
from controller.runtime import forecast_files
from controller.runtime.cli import main
from controller.runtime.historian import SqliteHistorian
from controller.runtime.historian_records import CycleRecord, Measurement, cycle_record
from controller.runtime.historian_run import run_info
from controller.runtime.site import Site, load_site
from controller.twin.forecast import forecast
from controller.twin.forecast_spec import ForecastSetup, ForecastStart

ROOT = Path(__file__).resolve().parents[3]
LYO = ROOT / "configs" / "sites" / "lyophilizer-modbus.yaml"
EST = {"Lck": 0.31, "KC": 2.6e-4, "R0": 1.45}
pytestmark = pytest.mark.timeout(120)


def lyo() -> Site:
    return load_site(LYO)


def meas(t: float) -> dict[str, Measurement]:
    return {
        "shelf_temp_pv": Measurement(20.0, "good", t),
        "chamber_pressure_pv": Measurement(0.15, "good", t),
    }


def rec(cycle: int, t: float, state: str = "SHADOW", **kw: Any) -> CycleRecord:
    return CycleRecord(
        "run-1", cycle, t, "2026-01-01T00:00:00+00:00", state, measurements=meas(t), **kw
    )


def write(path: Path, site: Site, cycles: list[CycleRecord]) -> Path:
    with SqliteHistorian(path) as hist:
        hist.start_run(run_info(site.name, "shadow", [site.path], site.model, run_id="run-1"))
        for c in cycles:
            hist.record(c)
    return path


def cli(db: Path, out: Path, capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    code = main(["forecast", str(LYO), "--historian", str(db), "--out", str(out)])
    return code, capsys.readouterr().out


# ---------------------------------------------------------------------- 1. failed estimates
def test_cycle_record_stores_the_estimate_status_and_reason(tmp_path: Path) -> None:
    model = lyo().model
    failed = Estimate(
        states={"Lck": 1.5},
        parameters=model.parameters,
        state_std={"Lck": 0.01},
        parameter_std={},
        innovation={},
        algebraic={},
        ok=False,
        reason="estimate outside the model's domain",
    )
    good = Estimate({"Lck": 0.3}, model.parameters, {"Lck": 0.01}, {}, {}, {})
    records = [
        cycle_record("run-1", 0, t=0.0, state="RUNNING", estimate=good, utc="u"),
        cycle_record("run-1", 1, t=10.0, state="HOLD", estimate=failed, utc="u"),
        cycle_record("run-1", 2, t=20.0, state="HOLD", utc="u"),  # no estimate
    ]
    write(tmp_path / "h.db", lyo(), records)
    with SqliteHistorian(tmp_path / "h.db", read_only=True) as hist:
        back = hist.cycles("run-1")
    assert back == records
    assert [(c.estimate_ok, c.estimate_reason) for c in back] == [
        (True, ""),
        (False, "estimate outside the model's domain"),
        (None, ""),
    ]


def test_forecast_skips_failed_estimates_and_says_so(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    db = write(
        tmp_path / "h.db",
        lyo(),
        [
            rec(0, 3600.0, estimates=EST, estimate_ok=True),
            rec(1, 3960.0, "HOLD", estimates={**EST, "Lck": 1.5}, estimate_ok=False,
                estimate_reason="estimate outside the model's domain"),
            rec(2, 4320.0, "HOLD", estimates={**EST, "Lck": 1.5}, estimate_ok=False,
                estimate_reason="estimate outside the model's domain"),
        ],
    )  # fmt: skip
    before = db.read_bytes()
    code, text = cli(db, tmp_path / "out", capsys)
    assert code == 0, text
    assert db.read_bytes() == before  # read-only: the forecast never changes the historian
    flat = " ".join(text.split())
    assert "starting from cycle 0 at t = 1 h, not from the newest cycle 2 at t = 1.2 h" in flat
    assert "2 with a failed estimate (newest: cycle 2 at t = 1.2 h, state HOLD:" in flat
    assert "estimate outside the model's domain" in flat
    data = json.loads((tmp_path / "out" / "forecast.json").read_text(encoding="utf-8"))
    assert data["start"]["t"] == pytest.approx(1.0)
    assert data["start"]["states"]["Lck"] == pytest.approx(0.31)


def test_only_failed_estimates_is_an_error_naming_the_historian(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    db = write(
        tmp_path / "h.db",
        lyo(),
        [rec(0, 3600.0, "HOLD", estimates={**EST, "Lck": 1.5}, estimate_ok=False,
             estimate_reason="diverged")],
    )  # fmt: skip
    code, text = cli(db, tmp_path / "out", capsys)
    flat = " ".join(text.split())
    assert code == 2, text
    assert f"error: {db}: runs.run-1.cycles: no cycle with a usable estimate" in flat
    assert "diverged" in flat and "Traceback" not in text
    assert not (tmp_path / "out").exists()


def test_a_record_without_the_status_reads_as_unknown_and_is_said(tmp_path: Path) -> None:
    site = lyo()
    db = write(tmp_path / "h.db", site, [rec(0, 3600.0, estimates=EST)])  # as before the field
    with sqlite3.connect(db) as conn:
        (decision,) = conn.execute("SELECT decision FROM cycles").fetchone()
    assert decision == "{}"  # the row of a file written before: no estimate key
    got = forecast_files.read_start(site.model, site.tags, db)
    assert got.record.estimate_ok is None and got.start.states == {"Lck": 0.31}
    assert any("does not say whether this estimate was ok" in n for n in got.notes)


# ---------------------------------------------------------------------- 2. nothing ahead
def test_a_forecast_from_the_batch_end_applies_no_plan() -> None:
    site = lyo()
    m = site.model
    assert site.forecast is not None
    t_end = site.forecast.max_duration
    start = ForecastStart(t_end, {"Lck": 0.31}, {}, dict(m.nominal_inputs))
    setup = ForecastSetup(m, site.controller, site.forecast, site.name, str(site.path))
    plans = forecast_files.default_plans(m, site.forecast, site.path)
    fc = forecast(setup, start, plans)
    for pf in fc.plans:
        assert len(pf.t) == 1 and pf.not_applied is not None and not pf.finished
        assert pf.status.startswith("not applied: nothing left to forecast")
        assert "the batch ended at the start" in pf.status
        assert all(math.isnan(v) for v in pf.cqas.values())
    assert all(row["status"] != "ok" for row in fc.table())


def test_cli_from_the_batch_end_exits_1_and_says_not_applied(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    site = lyo()
    assert site.forecast is not None
    t_end_s = site.forecast.max_duration * 3600.0
    db = write(tmp_path / "h.db", site, [rec(0, t_end_s, estimates=EST, estimate_ok=True)])
    code, text = cli(db, tmp_path / "out", capsys)
    assert code == 1, text
    flat = " ".join(text.split())
    assert "mpc: not applied: nothing left to forecast: the batch ended at the start" in flat
    assert "error: not forecast: mpc (not applied); recipe (not applied)" in flat
    data = json.loads((tmp_path / "out" / "forecast.json").read_text(encoding="utf-8"))
    assert {row["status"].split(":")[0] for row in data["table"]} == {"not applied"}


# ---------------------------------------------------------------------- 3. malformed files
def _corrupt(db: Path, sql: str) -> None:
    with sqlite3.connect(db) as conn:
        conn.execute(sql)


BAD = {
    "not json": (
        "UPDATE cycles SET estimates = '{not json' WHERE cycle = 1",
        "runs.run-1.cycles.1.estimates: not JSON",
    ),
    "a string value": (
        """UPDATE cycles SET estimates = '{"Lck":"abc"}' WHERE cycle = 1""",
        "runs.run-1.cycles.1.estimates.Lck: not a number (got 'abc')",
    ),
    "a list": (
        "UPDATE cycles SET estimates = '[1,2]' WHERE cycle = 1",
        "runs.run-1.cycles.1.estimates: not a JSON object",
    ),
    "a bad measurement": (
        """UPDATE cycles SET measurements = '{"x":5}' WHERE cycle = 1""",
        "runs.run-1.cycles.1.measurements.x: not a [value, quality, source time] triple (got 5)",
    ),
    "a bad run": ("UPDATE runs SET info = '{}'", "runs.?.info: missing field(s) ['run_id',"),
    "a bad estimate status": (
        """UPDATE cycles SET decision = '{"estimate":{"ok":"yes"}}' WHERE cycle = 1""",
        "runs.run-1.cycles.1.decision.estimate: not {ok: bool, reason: str}",
    ),
}


@pytest.mark.parametrize("case", list(BAD))
def test_a_malformed_historian_is_one_error_line_naming_file_key_and_value(
    case: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    db = write(tmp_path / "h.db", lyo(), [rec(0, 3600.0, estimates=EST), rec(1, 3960.0)])
    sql, expected = BAD[case]
    _corrupt(db, sql)
    code, text = cli(db, tmp_path / "out", capsys)
    assert code == 2, text
    assert " ".join(text.split()).startswith(f"error: {db}: {expected}"), text
    assert text.count("error:") == 1 and "Traceback" not in text


def test_a_non_finite_estimate_is_named_under_its_cycle(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    db = write(tmp_path / "h.db", lyo(), [rec(0, 3600.0, estimates={**EST, "Lck": math.nan})])
    code, text = cli(db, tmp_path / "out", capsys)
    assert code == 2, text
    flat = " ".join(text.split())
    assert flat.startswith(f"error: {db}: runs.run-1.cycles.0.estimates.Lck: not a finite number")
    assert "<forecast start>" not in text
