"""The benchmark runner's plumbing (bench/run.py) on fake module results, and B2's memory-port
case run for a few cycles. No timing is asserted: these check shapes, not speeds."""

from __future__ import annotations

import asyncio
import importlib
import json
import sys
import threading
from pathlib import Path
from types import ModuleType, SimpleNamespace
from typing import Any

import pytest

from controller.core.mpc import Decision, SolveStatus

BENCH = Path(__file__).resolve().parents[1] / "bench"
pytestmark = pytest.mark.timeout(120)


@pytest.fixture(scope="module")
def runner() -> ModuleType:
    if str(BENCH) not in sys.path:
        sys.path.insert(0, str(BENCH))
    return importlib.import_module("run")


def fake_result(name: str = "B9", value: Any = 1.25, met: bool | None = True) -> dict[str, Any]:
    return {
        "name": name,
        "title": "a fake benchmark",
        "rows": [
            {
                "case": "case a",
                "metric": "latency p99",
                "value": value,
                "unit": "ms",
                "target": "<= 2 ms",
                "met": met,
            },
            {
                "case": "case b",
                "metric": "note",
                "value": "x|y",
                "unit": "",
                "target": "",
                "met": None,
            },
        ],
        "raw": {"samples": [1.0, 1.5]},
    }


def test_rows_become_one_markdown_table(runner: ModuleType) -> None:
    table = runner.markdown_table([fake_result("B2"), fake_result("B3", value=3, met=False)])
    lines = table.splitlines()
    assert lines[0] == "| benchmark | case | metric | value | unit | target | met |"
    assert lines[1] == "|---|---|---|---|---|---|---|"
    assert len(lines) == 2 + 4
    assert lines[2] == "| B2 | case a | latency p99 | 1.25 | ms | <= 2 ms | yes |"
    assert lines[3] == "| B2 | case b | note | x\\|y |  |  | — |"  # a pipe in a cell is escaped
    assert lines[4] == "| B3 | case a | latency p99 | 3 | ms | <= 2 ms | **NO** |"


def test_results_json_is_merged_per_benchmark(runner: ModuleType, tmp_path: Path) -> None:
    path = tmp_path / "results.json"
    path.write_text(json.dumps({"port_cycle": {"old": "layout"}}))  # the old layout: replaced
    env1 = {"date_utc": "2026-11-01T00:00:00+00:00", "git_commit": "a" * 40}
    runner.write_results([fake_result("B2"), fake_result("B3")], env1, path)
    env2 = {"date_utc": "2026-11-02T00:00:00+00:00", "git_commit": "b" * 40}
    merged = runner.write_results([fake_result("B3", value=9.0)], env2, path)
    assert json.loads(path.read_text()) == merged
    assert "port_cycle" not in merged and merged["schema"] == runner.SCHEMA
    assert list(merged["benchmarks"]) == ["B2", "B3"]
    assert merged["benchmarks"]["B2"]["environment"] == env1  # kept from the first run
    assert merged["benchmarks"]["B3"]["environment"] == env2  # replaced by the second
    assert merged["benchmarks"]["B3"]["rows"][0]["value"] == 9.0
    assert merged["environment"] == env2


def test_environment_names_machine_python_libraries_commit_and_date(runner: ModuleType) -> None:
    env = runner.environment()
    assert {"date_utc", "machine", "python", "libraries", "git_commit"} <= set(env)
    assert env["machine"]["cores"] and env["python"].startswith("CPython 3.")
    assert "casadi" in env["libraries"]
    json.dumps(env)


def test_a_missing_module_is_reported_not_present(runner: ModuleType) -> None:
    result = runner.collect("b8_does_not_exist", quick=True)
    assert result["status"] == "not present" and result["name"] == "B8"
    assert "not present" in runner.markdown_table([result])
    assert runner.collect_isolated("b8_does_not_exist", quick=True)["status"] == "not present"


def test_a_module_that_raises_or_returns_garbage_is_an_error_row(runner: ModuleType) -> None:
    def boom(quick: bool = False) -> dict[str, Any]:
        raise ValueError("solver exploded")

    raising = SimpleNamespace(run=boom)
    result = runner.collect("b7_broken", quick=True, loaded=raising)
    assert result["status"] == "error" and result["name"] == "B7"
    assert "ValueError: solver exploded" in result["rows"][0]["value"]
    assert result["rows"][0]["met"] is False
    assert "solver exploded" in runner.markdown_table([result])

    garbage = SimpleNamespace(run=lambda quick=False: {"name": "B7", "rows": [{"case": "c"}]})
    result = runner.collect("b7_broken", quick=True, loaded=garbage)
    assert result["status"] == "error" and "malformed result" in result["rows"][0]["value"]

    one_case_failed = {**fake_result("B7"), "status": "error"}  # the others still have rows
    result = runner.collect(
        "b7_partial", quick=True, loaded=SimpleNamespace(run=lambda quick=False: one_case_failed)
    )
    assert result["status"] == "error" and len(result["rows"]) == 2

    fine = SimpleNamespace(run=lambda quick=False: fake_result("B7"))
    result = runner.collect("b7_fine", quick=True, loaded=fine)
    assert result["status"] == "ok" and result["quick"] is True


def test_a_failed_case_is_an_error_row_with_its_traceback(runner: ModuleType) -> None:
    try:
        raise RuntimeError("port refused")
    except RuntimeError as exc:
        bad, raw = runner.case_failed("Modbus TCP", exc)
    assert bad["case"] == "Modbus TCP" and bad["met"] is False
    assert bad["value"] == "error: RuntimeError: port refused"
    assert "Traceback" in raw["traceback"]


def test_only_selects_by_label_or_module_name(runner: ModuleType) -> None:
    assert runner.select(None) == runner.MODULES
    assert runner.select("B5,b2") == ["b2_cycle", "b5_memory"]
    assert runner.select("b3_simulation") == ["b3_simulation"]
    with pytest.raises(SystemExit, match="B9") as refused:
        runner.select("B9")
    assert "B1 (b1_nmpc)" in str(refused.value) and "B8 (b8_startup)" in str(refused.value)


def test_b2_memory_port_case_gives_well_formed_rows(runner: ModuleType) -> None:
    b2 = importlib.import_module("b2_cycle")
    site = b2.site_for("memory")
    hold = b2.working_setpoints("memory")
    assert set(hold) == set(site.model.input_names)
    # a decision made here, not by the MPC: no solver build (or compilation) in this test
    decision = Decision(0.0, hold, SolveStatus.SUCCESS, "Solve_Succeeded", 4, 1e-3)
    measured = asyncio.run(b2.measure("memory", 12, 4, decision))
    assert measured["cycle_ms"]["n"] == 12 and measured["running_cycles"] == 12
    rows = b2.rows_for(measured)
    result = {"name": "B2", "title": "t", "rows": rows, "raw": {"memory": measured}}
    assert runner.problems_with(result) == []
    assert {r["metric"] for r in rows} >= {"cycle median", "cycle p99"}
    assert all(isinstance(r["value"], float) for r in rows if r["metric"].startswith("cycle"))
    assert "CPU of the timed loop's thread per cycle, median / p99" in {r["metric"] for r in rows}
    floor = next(r for r in rows if r["metric"].startswith("storage floor"))
    assert floor["met"] is None and floor["target"] == ""  # shown, never judged
    assert measured["storage_floor"]["write_fdatasync_ms"]["n"] == 12


def test_b2_plc_answers_off_the_timed_loop(runner: ModuleType, tmp_path: Path) -> None:
    """Over Modbus the PLC's server handles the controller's writes on a thread of its own,
    not on the thread of the loop that times the cycle (a bench whose server shares that
    loop charges the PLC's work to the controller's cycle)."""
    b2 = importlib.import_module("b2_runtime")
    hold = b2.working_setpoints("modbus")
    decision = Decision(0.0, hold, SolveStatus.SUCCESS, "Solve_Succeeded", 4, 1e-3)

    async def cycles() -> tuple[set[int], int, int]:
        async with b2.runtime_for("modbus", tmp_path, b2.FixedDecision(decision)) as rt:
            (server,) = rt.rig.servers
            hook, handled_on = server.write_hook, set()

            def spy(tag: str, value: float) -> str | None:
                handled_on.add(threading.get_ident())
                return hook(tag, value)

            server.write_hook = spy
            for k in range(4):
                await rt.cycle(k)
            return handled_on, threading.get_ident(), rt.supervisor.counters.writes

    handled_on, timed_loop, writes = asyncio.run(cycles())
    assert writes == 4 and handled_on  # the controller wrote, the PLC's hook heard it
    assert timed_loop not in handled_on


def test_b2_counts_the_requests_the_plc_received_in_each_cycle(
    runner: ModuleType, tmp_path: Path
) -> None:
    """B2's requests per cycle are the ones the PLC's server logged within each timed cycle."""
    b2 = importlib.import_module("b2_runtime")
    hold = b2.working_setpoints("modbus")
    decision = Decision(0.0, hold, SolveStatus.SUCCESS, "Solve_Succeeded", 4, 1e-3)

    async def cycles() -> tuple[list[int], list[int]]:
        async with b2.runtime_for("modbus", tmp_path, b2.FixedDecision(decision)) as rt:
            (server,) = rt.rig.servers
            logged = []
            for k in range(4):
                before = len(server.requests)
                await rt.cycle(k)
                logged.append(len(server.requests) - before)
            return rt.requests, logged

    counted, logged = asyncio.run(cycles())
    assert counted == logged and min(counted) >= 4  # at least one read per table


def test_b2_audit_phase_covers_a_group_sent_to_the_writer_thread(
    runner: ModuleType, tmp_path: Path
) -> None:
    """A supervisor that hands its records to the audit's writer thread (``submit_all``) and
    awaits durability still has that wait in the "audit" phase, not in "other"."""
    from controller.runtime.audit import AuditTrail
    from controller.runtime.audit_chain import AuditEntry

    b2 = importlib.import_module("b2_runtime")
    phases, audit = b2.Phases(), AuditTrail(tmp_path / "audit.db", actor="bench")
    try:
        submit = phases.wrap_submit("audit", audit.submit_all)
        entry = AuditEntry("setpoint.write", "F", "bench", old_value=1.0, new_value=2.0)
        records = asyncio.run(submit([entry]).durable())
    finally:
        audit.close()
    assert len(records) == 1 and list(phases.current) == ["audit"]


def test_b6_table_holds_step_budget_ratio_and_phases(runner: ModuleType) -> None:
    b6 = importlib.import_module("b6_step")
    # two steps of known phase times (seconds): the step medians 10 ms, solve + plant 4 ms
    steps = [
        {"step": 0.010, "solve": 0.001, "decide": 0.0012, "plant": 0.003, "audit": 0.002},
        {"step": 0.010, "solve": 0.001, "decide": 0.0012, "plant": 0.003, "audit": 0.002},
    ]
    m = {"model": "cstr", "site": "x"} | b6.summarize(steps)
    assert m["ratio"] == pytest.approx(2.5)
    assert m["phase_ms"]["decide"]["median"] == pytest.approx(0.2)  # less the solve
    assert m["phase_ms"]["other"]["median"] == pytest.approx(3.8)  # 10 - 1 - 0.2 - 3 - 2
    rows = b6.rows_for(m)
    result = {"name": "B6", "title": "t", "rows": rows, "raw": {"cstr": m}}
    assert runner.problems_with(result) == []
    ratio = next(r for r in rows if r["metric"] == "ratio")
    assert ratio["met"] is False and ratio["target"] == "<= 2"
    phases = next(r for r in rows if r["metric"] == "median per phase")["value"]
    assert "audit 2.000" in phases and "other 3.800" in phases
    assert "b6_step" in runner.MODULES


def test_b6_prints_the_means_that_a_rare_costly_step_moves(runner: ModuleType) -> None:
    """A cost paid once every many steps (a batched commit) leaves the medians: the means
    show it."""
    b6 = importlib.import_module("b6_step")
    plain = {"step": 0.010, "solve": 0.001, "plant": 0.003}
    steps = [plain, plain, {**plain, "step": 0.040}]  # the third commits a batch: 30 ms more
    m = {"model": "cstr", "site": "x"} | b6.summarize(steps)
    assert m["ratio"] == pytest.approx(2.5)  # the median does not see it
    assert m["mean_ms"]["step"] == pytest.approx(20.0)
    assert m["mean_ratio"] == pytest.approx(5.0)
    means = next(r for r in b6.rows_for(m) if r["metric"].startswith("mean step"))
    assert means["value"] == "20.000 / 4.000 (5x)" and means["met"] is None


@pytest.fixture(scope="module")
def b5(runner: ModuleType) -> ModuleType:
    return importlib.import_module("b5_memory")


def _fixed_policy(b5: ModuleType, monkeypatch: pytest.MonkeyPatch) -> None:
    """B5's fixed case with a decision made here: no solver build (or compilation)."""
    b2 = importlib.import_module("b2_runtime")
    hold = b5.plc_setpoints("memory")
    decision = Decision(0.0, hold, SolveStatus.SUCCESS, "Solve_Succeeded", 4, 1e-3)
    monkeypatch.setattr(b5, "policy_for", lambda case, site, hold: b2.FixedDecision(decision))


def test_b5_still_plant_keeps_the_loop_running(
    b5: ModuleType, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The still plant's dithered measurements are never frozen: every cycle writes."""
    _fixed_policy(b5, monkeypatch)
    settle = b5.SETTLE_CYCLES
    m = asyncio.run(b5.measure("fixed", (settle + 10, settle + 40), 5))
    counters = m["counters"]
    assert counters["stale_data"] == counters["bad_data"] == counters["fallbacks"] == 0
    assert counters["writes"] == counters["cycles"] == settle + 40 + b5.TRACE_WARMUP + 5
    assert m["checkpoints"][-1]["policy_steps"] == settle + 40
    rows = b5.rows_for(m, quick=True)
    assert {r["metric"] for r in rows} >= {"RSS growth", "decisions", "of it RssAnon (heap) growth"}
    assert all(r["met"] is None for r in rows)  # not the 10^3 -> 10^5 run: no verdict


def test_b5_fails_loudly_when_the_still_plant_reads_frozen(
    b5: ModuleType, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Without the dither the data trust calls the still plant's transmitters stuck (it
    must, frozen_after is not weakened for the bench), and the bench raises."""
    _fixed_policy(b5, monkeypatch)
    monkeypatch.setattr(b5, "DITHER_OF_NOISE", 0.0)
    settle = b5.SETTLE_CYCLES
    with pytest.raises(RuntimeError, match=r"did not stay RUNNING.*'stale_data': [1-9]"):
        asyncio.run(b5.measure("fixed", (settle + 10,), 5))


def test_b5_dither_beats_the_temperature_encoding_step(b5: ModuleType) -> None:
    """A quarter of the noise std, and larger than an int16 x0.01 step for the temperatures."""
    rig = SimpleNamespace(
        scenario=SimpleNamespace(true_plant=SimpleNamespace(noise_std={"T": 0.05, "C": 0.002}))
    )
    a = b5.dither_amplitudes(rig, {"T": 130.0, "C": 0.8, "quiet": 2.0})
    assert a == pytest.approx({"T": 0.0125, "C": 0.0005, "quiet": 2e-6})
    assert a["T"] > 0.01


def test_b5_keeps_none_of_the_harness_per_cycle_records(b5: ModuleType) -> None:
    """B2's per-cycle CPU record on the harness's Runtime grew B5's RSS by ~9 MB over 10^5
    cycles; B5 measures the runtime, so its cycles leave that record empty."""
    record: list[tuple[float, float | None]] = []

    async def cycle(k: int) -> None:
        record.append((1.0, None))

    phases = SimpleNamespace(close_cycle=lambda timed: None)
    rt = SimpleNamespace(cycle=cycle, cpu_ms=record, phases=phases)
    assert asyncio.run(b5.run_cycles(rt, 7, 50)) == 57
    assert record == []


def test_b8_site_copy_and_table(runner: ModuleType, tmp_path: Path) -> None:
    import yaml

    b8 = importlib.import_module("b8_startup")
    copy = b8.site_on_port(b8.SITE, 15999, tmp_path)
    data = yaml.safe_load(copy.read_text())
    assert data["connection"]["port"] == 15999
    assert Path(data["controller"]).is_absolute() and Path(data["controller"]).is_file()
    assert Path(data["hil"]["scenario"]).is_file()
    # two cold and two warm runs of known times (s), and a phase split
    run_ = {"first_cycle_s": 7.0, "first_decision_s": 7.5, "exit_s": 9.0, "cycles": 3}
    split = {"imports": 0.6, "site and models": 0.03, "pipeline": 6.0, "run records": 0.1}
    split |= {"connect": 0.01, "first cycle": 0.2, "compiling (wall)": 5.0}
    split |= {"compiler runs": 3, "compiler time summed": 9.5}
    m = {
        "cold": [run_, {**run_, "first_cycle_s": 12.0}],
        "warm": [{**run_, "first_cycle_s": 1.0}] * 2,
        "phases_s": split,
    }
    rows = b8.rows_for(m)
    assert runner.problems_with({"name": "B8", "title": "t", "rows": rows, "raw": m}) == []
    cold = next(r for r in rows if r["metric"] == "first cycle after start")
    assert cold["case"] == "cold cache (every library compiled), median of 2"
    assert cold["value"] == pytest.approx(9.5) and cold["met"] is True
    assert cold["target"] == "<= 10 s"
    phases = next(r for r in rows if r["metric"] == "seconds per phase")["value"]
    assert "pipeline 6.00" in phases and "3 compiler runs" in phases
    assert "b8_startup" in runner.MODULES
