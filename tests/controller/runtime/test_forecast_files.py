"""The forecast's files and the ``pharmatwin forecast`` command.

:mod:`controller.runtime.forecast_files` (plan and recipe files, the historian a forecast
starts from, the plans of a site), :mod:`controller.runtime.forecast_report` (JSON and plot),
the site's ``forecast`` section as :func:`~controller.runtime.site.load_site` checks it, and
the CLI end to end: against a closed loop on the HIL rig (true plant, virtual PLC, stepped
clock) the ``mpc`` plan's drying end at 1.5 h was 3.64 h, the rig's 3.66 h (resolution
0.02 h); max Tbot -7.94 against the rig's -7.43 degC. The forecast's computing is tested in
tests/controller/twin/test_forecast.py.
"""

from __future__ import annotations

import asyncio
import functools
import json
import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest
import yaml

from controller.configfile import read_yaml, resolve
from controller.errors import ConfigError
from controller.runtime.cli import main
from controller.runtime.forecast_files import default_plans, load_plan, start_from_historian
from controller.runtime.forecast_report import plot_forecast, write_json
from controller.runtime.historian import SqliteHistorian
from controller.runtime.historian_records import CycleRecord, Measurement
from controller.runtime.historian_run import run_info
from controller.runtime.site import Site, load_site
from controller.runtime.supervisor import Mode
from controller.runtime.wiring import RunOptions, run_site
from controller.twin.forecast import forecast
from controller.twin.forecast_spec import ForecastError, ForecastSetup, ForecastStart
from hil.campaign.drive import DrivenClock, settle  # settle: the campaign driver's own step
from hil.rig import HilRig
from hil.servers.memory import MemoryPlcServer
from hil.site import hil_section

ROOT = Path(__file__).resolve().parents[3]
SITES = ROOT / "configs" / "sites"
LYO = SITES / "lyophilizer-modbus.yaml"
pytestmark = pytest.mark.timeout(120)


@functools.cache
def lyo_site() -> Site:
    return load_site(LYO)


def write_plan(path: Path, body: Mapping[str, Any]) -> Path:
    path.write_text(yaml.safe_dump(dict(body), sort_keys=False), encoding="utf-8")
    return path


# ---------------------------------------------------------------------- (e) historian
def record(cycle: int, t: float, **kw: Any) -> CycleRecord:
    return CycleRecord("run-1", cycle, t, "2026-01-01T00:00:00+00:00", "SHADOW", **kw)


def good(v: float, t: float) -> Measurement:
    return Measurement(v, "good", t)


def write_history(path: Path, site: Site, cycles: list[CycleRecord], run_id: str = "run-1") -> None:
    with SqliteHistorian(path) as hist:
        hist.start_run(run_info(site.name, "shadow", [site.path], site.model, run_id=run_id))
        for c in cycles:
            hist.record(c)


def lyo_measurements(t: float, tsh: float, pch: float) -> dict[str, Measurement]:
    return {
        "shelf_temp_pv": good(tsh, t),
        "chamber_pressure_pv": good(pch, t),
        "product_temp_bottom": good(-20.0, t),
        "shelf_temp_sp": good(tsh + 1.0, t),  # what the PLC was last told, not what it does
        "chamber_pressure_sp": good(pch, t),
    }


def test_start_from_historian_takes_the_newest_estimate(tmp_path: Path) -> None:
    site = lyo_site()
    db = tmp_path / "history.db"
    est = {"Lck": 0.31, "KC": 2.6e-4, "R0": 1.45}
    write_history(
        db,
        site,
        [
            record(
                0,
                12240.0,
                estimates={**est, "Lck": 0.30},
                measurements=lyo_measurements(12240.0, 19.0, 0.15),
            ),
            record(1, 12600.0, estimates=est, measurements=lyo_measurements(12600.0, 20.0, 0.15)),
            record(2, 12960.0, measurements=lyo_measurements(12960.0, 21.0, 0.15)),  # no estimate
        ],
    )
    start = start_from_historian(site.model, site.tags, db)
    assert start.t == pytest.approx(3.5)  # 12600 s of process time
    assert start.states == {"Lck": 0.31}
    assert start.parameters["KC"] == 2.6e-4 and start.parameters["R0"] == 1.45
    assert start.parameters["T_crit"] == site.model.parameters["T_crit"]  # not estimated
    assert start.inputs == {"Tsh": 20.0, "Pch": 0.15}  # the PV tags


def test_start_from_historian_prefers_the_setpoints_written_in_that_cycle(tmp_path: Path) -> None:
    site = lyo_site()
    db = tmp_path / "history.db"
    meas = lyo_measurements(5400.0, 49.0, 0.3)
    meas["chamber_pressure_pv"] = Measurement(math.nan, "bad", 5400.0)
    write_history(
        db,
        site,
        [
            record(
                15,
                5400.0,
                estimates={"Lck": 0.16, "KC": 2.5e-4, "R0": 1.55},
                measurements=meas,
                setpoints={"shelf_temp_sp": 55.0},
                wrote=True,
            )
        ],
    )
    start = start_from_historian(site.model, site.tags, db, "run-1")
    assert start.t == pytest.approx(1.5)
    assert start.inputs == {"Tsh": 55.0, "Pch": 0.3}  # written; the bad PV falls back to its SP


def test_start_from_historian_errors_name_the_file_and_what_is_missing(tmp_path: Path) -> None:
    site = lyo_site()
    db = tmp_path / "history.db"
    with pytest.raises(ForecastError, match="historian file not found"):
        start_from_historian(site.model, site.tags, tmp_path / "none.db")
    assert not (tmp_path / "none.db").exists()  # never created by a read
    write_history(db, site, [record(0, 0.0, measurements=lyo_measurements(0.0, -35.0, 0.15))])
    with pytest.raises(ForecastError) as info:
        start_from_historian(site.model, site.tags, db)
    (problem,) = info.value.problems
    assert problem.file == str(db) and problem.location == "runs.run-1.cycles"
    assert "no cycle with an estimate" in problem.message
    with pytest.raises(ForecastError, match="unknown run") as info:
        start_from_historian(site.model, site.tags, db, "run-9")
    assert info.value.problems[0].value == "run-9"
    bio = load_site(SITES / "bioreactor-modbus.yaml")
    with pytest.raises(ForecastError, match="another model") as info:
        start_from_historian(bio.model, bio.tags, db)
    assert info.value.problems[0].value == "lyophilizer"


# ---------------------------------------------------------------------- (f) the CLI end to end
async def closed_loop_with_forecast(
    site: Site, db: Path, out: Path, at: float
) -> tuple[int, float, float]:
    """The edge runtime in closed loop on the HIL rig (true plant, virtual PLC, in-memory PLC
    image, stepped clock); at ``at`` h, ``pharmatwin forecast`` on its historian while it
    runs; then on to the end of drying. Returns (exit code, rig's drying end, max Tbot)."""
    clock = DrivenClock()
    server = MemoryPlcServer(site.tags, clock)
    rig = HilRig(site, clock, [server])
    opts = RunOptions(mode=Mode.CLOSED_LOOP, audit_path=db.with_name("audit.db"), historian_path=db)
    stop = asyncio.Event()
    await server.start()
    task = asyncio.ensure_future(run_site(site, opts, port=server.port(), clock=clock, stop=stop))
    scan_s, k, max_tbot = rig.timebase.seconds(rig.plant_step), 0, -math.inf

    async def drive(until: float) -> None:
        nonlocal k, max_tbot
        while True:
            await rig.scan()
            await settle(clock, task)
            max_tbot = max(max_tbot, rig.truth.outputs["Tbot"])
            if rig.plant.t >= until - 1e-9 or rig.plant.finished():
                return
            k += 1
            clock.advance_to(k * scan_s)

    try:
        await drive(at)
        argv = ["forecast", str(site.path), "--historian", str(db), "--out", str(out)]
        code = await asyncio.to_thread(main, argv)
        max_tbot = -math.inf
        await drive(10.0)
    finally:
        stop.set()
        await settle(clock, task)
        await task
        await server.close()
    return code, rig.plant.t, max_tbot


def test_cli_forecasts_a_running_closed_loop_from_its_historian(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    site = lyo_site()
    db, out = tmp_path / "history.db", tmp_path / "forecast"
    code, rig_end, rig_max_tbot = asyncio.run(closed_loop_with_forecast(site, db, out, 1.5))
    text = capsys.readouterr().out
    assert code == 0, text
    for word in ("drying_end_time", "max_Tbot", "mpc (mpc)", "recipe (recipe)", "forecast.json"):
        assert word in text
    data = json.loads((out / "forecast.json").read_text(encoding="utf-8"))
    assert (out / "forecast.png").stat().st_size > 10_000
    assert data["start"]["t"] == pytest.approx(1.5)
    with SqliteHistorian(db) as hist:
        newest = [c for c in hist.cycles() if c.t <= 5400.0 and c.estimates][-1]
    assert data["start"]["states"]["Lck"] == pytest.approx(newest.estimates["Lck"])
    plans = {p["name"]: p for p in data["plans"]}
    assert list(plans) == ["mpc", "recipe"]
    mpc = plans["mpc"]
    assert mpc["finished"] and mpc["failed"] is None
    # The twin kept in control: its forecast against what the rig then did.
    assert abs(mpc["cqas"]["drying_end_time"] - rig_end) <= 0.2
    assert abs(mpc["cqas"]["max_Tbot"] - rig_max_tbot) <= 1.0
    assert plans["recipe"]["cqas"]["drying_end_time"] > rig_end + 1.0


def test_cli_plan_file_and_outputs(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    site = lyo_site()
    db = tmp_path / "history.db"
    est = {"Lck": 0.35, "KC": 2.6e-4, "R0": 1.5}
    write_history(
        db,
        site,
        [record(0, 12600.0, estimates=est, measurements=lyo_measurements(12600.0, 20.0, 0.15))],
    )
    plan = write_plan(
        tmp_path / "plan.yaml", {"name": "cool", "table": [{"t": 0.0, "inputs": {"Tsh": 0.0}}]}
    )
    out = tmp_path / "out"
    argv = ["forecast", str(LYO), "--historian", str(db), "--plan", str(plan), "--out", str(out)]
    assert main(argv) == 0
    text = capsys.readouterr().out
    assert "cool (table)" in text and "t = 3.5 h" in text
    data = json.loads((out / "forecast.json").read_text(encoding="utf-8"))
    assert [p["name"] for p in data["plans"]] == ["mpc", "recipe", "cool"]
    cool = data["plans"][2]
    assert cool["time_base"] == "now" and set(cool["inputs"]["Tsh"]) == {0.0}
    assert set(cool["inputs"]["Pch"]) == {0.15}
    assert len(cool["t"]) == len(cool["expressions"]["Tbot"]) == len(cool["states"]["Lck"])
    assert data["table"][2]["drying_end_time"] > data["table"][1]["drying_end_time"]


def test_cli_without_a_historian_says_how_to_give_one(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.chdir(tmp_path)
    assert main(["forecast", str(LYO)]) == 2
    text = capsys.readouterr().out
    assert "pharmatwin-history.db" in text and "--historian" in text


# ---------------------------------------------------------------------- (g) bad input
def test_bad_plan_files_name_the_file_key_and_value(tmp_path: Path) -> None:
    model = lyo_site().model
    cases = {
        "unknown-input": (
            {
                "name": "x",
                "table": [{"t": 0, "inputs": {"Tsh": 0}}, {"t": 1, "inputs": {"Tshelf": 1}}],
            },
            "table.1.inputs.Tshelf",
            "Tshelf",
        ),
        "unknown-key": (
            {"name": "x", "timebase": "now", "table": [{"t": 0, "inputs": {"Tsh": 0}}]},
            "timebase",
            "now",
        ),
        "bad-base": (
            {"name": "x", "time_base": "later", "table": [{"t": 0, "inputs": {"Tsh": 0}}]},
            "time_base",
            "later",
        ),
    }
    for stem, (body, key, bad) in cases.items():
        path = write_plan(tmp_path / f"{stem}.yaml", body)
        with pytest.raises(ForecastError) as info:
            load_plan(path, model)
        problems = {p.location: p for p in info.value.problems}
        assert key in problems, (stem, info.value.problems)
        assert problems[key].file == str(path) and problems[key].value == bad
    late = write_plan(
        tmp_path / "late.yaml", {"name": "x", "table": [{"t": 1, "inputs": {"Tsh": 0}}]}
    )
    with pytest.raises(ForecastError, match="must start at t: 0"):
        load_plan(late, model)


def test_cli_rejects_a_bad_plan_with_exit_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    site = lyo_site()
    db = tmp_path / "history.db"
    write_history(
        db,
        site,
        [record(0, 0.0, estimates={"Lck": 0.0}, measurements=lyo_measurements(0.0, -35.0, 0.15))],
    )
    plan = write_plan(
        tmp_path / "plan.yaml", {"name": "x", "table": [{"t": 0, "inputs": {"Psh": 1}}]}
    )
    assert main(["forecast", str(LYO), "--historian", str(db), "--plan", str(plan)]) == 2
    text = capsys.readouterr().out
    assert str(plan) in text and "table.0.inputs.Psh" in text


def site_file(tmp_path: Path, forecast_section: Mapping[str, Any]) -> Path:
    """The lyophilizer Modbus site with another forecast section (references made absolute)."""
    raw = read_yaml(LYO)
    for key in ("plant", "controller", "tags"):
        raw[key] = str(resolve(LYO, raw[key]))
    raw["hil"]["scenario"] = str(resolve(LYO, raw["hil"]["scenario"]))
    raw["forecast"] = dict(forecast_section)
    path = tmp_path / "site.yaml"
    path.write_text(yaml.safe_dump(raw, sort_keys=False), encoding="utf-8")
    return path


def test_site_forecast_section_is_checked_against_the_model(tmp_path: Path) -> None:
    path = site_file(
        tmp_path,
        {
            "local_recipe": str(tmp_path / "missing.yaml"),
            "max_duration": 30.0,
            "cqas": [
                {"name": "end", "expression": "end_time"},
                {"name": "hot", "expression": "Tproduct", "at": "max"},
            ],
        },
    )
    with pytest.raises(ConfigError) as info:
        load_site(path)
    problems = {p.location: p for p in info.value.problems}
    assert problems["forecast.cqas.1.expression"].value == "Tproduct"
    assert problems["forecast.cqas.1.expression"].file == str(path)
    assert "Tbot" in problems["forecast.cqas.1.expression"].message  # what is allowed
    assert "forecast.local_recipe" not in problems  # a site copied elsewhere still loads
    site = load_site(site_file(tmp_path, {"local_recipe": "../nowhere.yaml", "max_duration": 3.0}))
    with pytest.raises(ForecastError) as err:
        default_plans(site.model, site.forecast, site.path)
    (problem,) = err.value.problems
    assert (problem.file, problem.location, problem.value) == (
        str(site.path),
        "forecast.local_recipe",
        "../nowhere.yaml",
    )
    for section, where, what in (
        ({"max_duration": 30.0, "at": 1}, "forecast.at", "unknown key"),
        ({"batch_duration": 40.0, "max_duration": 30.0}, "forecast", "above max_duration"),
        (
            {"max_duration": 30.0, "cqas": [{"name": "status", "expression": "Tbot"}]},
            "forecast",
            "taken by the forecast table",
        ),
    ):
        with pytest.raises(ConfigError) as info:
            load_site(site_file(tmp_path, section))
        (problem,) = info.value.problems
        assert problem.location == where and what in problem.message


def test_a_local_recipe_that_misses_an_input_is_named(tmp_path: Path) -> None:
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(
        "interpolation: linear\ntable:\n  - {t: 0, inputs: {Tsh: -35}}\n", encoding="utf-8"
    )
    path = site_file(tmp_path, {"local_recipe": str(recipe), "max_duration": 30.0})
    with pytest.raises(ConfigError) as info:
        load_site(path)
    (problem,) = info.value.problems
    assert (problem.file, problem.location, problem.value) == (
        str(recipe),
        "table.0.inputs",
        ["Tsh"],
    )


def test_a_local_recipe_value_outside_its_physical_range_is_named(tmp_path: Path) -> None:
    """A bare recipe file (the PLC's local recipe of a forecast) with Tsh -135 degC (the
    shelf reaches -45..120) loaded, and the forecast clipped it without a word."""
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(
        "interpolation: linear\ntable:\n  - {t: 0, inputs: {Tsh: -135, Pch: 0.1}}\n",
        encoding="utf-8",
    )
    path = site_file(tmp_path, {"local_recipe": str(recipe), "max_duration": 30.0})
    with pytest.raises(ConfigError) as info:
        load_site(path)
    (problem,) = info.value.problems
    assert (problem.file, problem.location, problem.value) == (
        str(recipe),
        "table.0.inputs.Tsh",
        -135,
    )
    assert "physical (actuator) range [-45, 120] degC" in problem.message


# ---------------------------------------------------------------------- shipped sites
@pytest.mark.parametrize("path", sorted(SITES.glob("*.yaml")), ids=lambda p: p.stem)
def test_every_shipped_site_has_a_forecast_with_its_local_recipe(path: Path) -> None:
    site = load_site(path)
    assert site.forecast is not None and site.forecast.cqas
    hil = hil_section(site)
    assert hil is not None and site.forecast.local_recipe is not None
    assert site.file(site.forecast.local_recipe).resolve() == site.file(hil.scenario).resolve()
    plans = default_plans(site.model, site.forecast, site.path)
    assert [p.name for p in plans] == ["mpc", "recipe"]


def test_json_and_plot_of_a_short_forecast(tmp_path: Path) -> None:
    site = load_site(SITES / "cstr-modbus.yaml")
    m = site.model
    start = ForecastStart(0.25, m.initial_state, {}, m.nominal_inputs)
    (recipe,) = [p for p in default_plans(m, site.forecast, site.path) if p.kind == "recipe"]
    setup = ForecastSetup(m, site.controller, site.forecast, site.name, str(site.path))
    fc = forecast(setup, start, [recipe])
    (pf,) = fc.plans
    assert pf.end_time == pytest.approx(start.t + 0.5)  # continuous: the horizon from now
    data = json.loads(write_json(fc, tmp_path / "f.json").read_text(encoding="utf-8"))
    assert data["table"][0]["final_C_b"] == pytest.approx(pf.cqas["final_C_b"])
    assert data["time_unit"] == "h" and data["site"] == "cstr-modbus"
    png = plot_forecast(fc, tmp_path / "f.png")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
