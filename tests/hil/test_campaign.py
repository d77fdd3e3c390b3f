"""HIL test campaigns: the matrix, the criteria, both modes, the process pool and Dask, worker
loss, resume, reproducibility and the reports of a real (short) campaign.

Every run here is real: the HIL rig (true plant, virtual PLC, faults), the edge runtime
(supervisor, EKF, do-mpc MPC, safety, audit trail) and, in hil mode, pymodbus on 127.0.0.1.
"""

from __future__ import annotations

import json
import math
import os
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any, get_args

import pyarrow.parquet as pq
import pytest
import yaml

from controller.errors import ConfigError
from controller.runtime.audit import AuditTrail
from controller.timebase import TimeBase
from hil.campaign.checks import Criterion
from hil.campaign.criteria import Recording, judge
from hil.campaign.execute import RunSettings, run_campaign
from hil.campaign.report import write_reports
from hil.campaign.runner import CHAOS_ENV, run_case
from hil.campaign.spec import Campaign, load_campaign
from hil.cli import main as hil_main
from hil.faultspec import FaultKind

ROOT = Path(__file__).resolve().parents[2]
CAMPAIGNS = ROOT / "configs" / "campaigns"
SMOKE = CAMPAIGNS / "lyophilizer-smoke.yaml"


def _job(campaign: Campaign, index: int, out: Path, mode: str = "fast") -> dict[str, Any]:
    return {
        "case": campaign.cases[index].to_json(),
        "criteria": [c.model_dump(mode="json") for c in campaign.spec.criteria],
        "out": str(out),
        "site": str(campaign.site_path),
        "controller": str(campaign.controller_path) if campaign.controller_path else None,
        "mode": mode,
        "rate": campaign.spec.hil.rate,
    }


def _statuses(out: Path) -> dict[str, str]:
    return {
        p.parent.name: json.loads(p.read_text())["status"]
        for p in sorted((out / "cases").glob("*/result.json"))
    }


def _nan_safe(columns: dict[str, list[Any]]) -> dict[str, list[Any]]:
    """NaN != NaN: compare NaNs as a marker, everything else bit for bit."""
    return {
        k: ["NaN" if isinstance(v, float) and math.isnan(v) else v for v in values]
        for k, values in columns.items()
    }


def _kpis(out: Path) -> dict[str, Any]:
    return {
        p.parent.name: json.loads(p.read_text())["kpis"]
        for p in sorted((out / "cases").glob("*/result.json"))
    }


@pytest.fixture(scope="module")
def smoke() -> Campaign:
    return load_campaign(SMOKE)


@pytest.fixture(scope="module")
def fast_run(smoke: Campaign, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The smoke campaign, fast mode, on a local pool of 2 worker processes."""
    out = tmp_path_factory.mktemp("smoke-fast")
    run_campaign(smoke, RunSettings(out=out, workers=2, progress=False))
    write_reports(out)
    return out


# ---------------------------------------------------------------------- the files
@pytest.mark.parametrize("path", sorted(CAMPAIGNS.glob("*.yaml")), ids=lambda p: p.stem)
def test_every_campaign_file_loads(path: Path) -> None:
    campaign = load_campaign(path)
    assert campaign.cases
    ids = [c.id for c in campaign.cases]
    assert len(set(ids)) == len(ids)
    for case in campaign.cases:
        assert case.scenario["true_plant"]["seed"] == case.seed
        assert Path(case.scenario["plant"]).is_absolute()


@pytest.mark.parametrize("name", ["lyophilizer-oq", "bioreactor-oq"])
def test_oq_campaigns_cover_nominal_mismatch_edges_every_fault_and_loss(name: str) -> None:
    campaign = load_campaign(CAMPAIGNS / f"{name}.yaml")
    assert len(campaign.cases) >= 24
    kinds = {f["kind"] for c in campaign.cases for f in c.scenario.get("faults", [])}
    assert kinds == set(get_args(FaultKind))  # every fault type of the HIL simulator
    assert any(c.controller_loss_at is not None for c in campaign.cases)
    assert any(set(c.factors.values()) <= {"none", "site", "nominal"} for c in campaign.cases)
    # mismatch at the edges of the plausible ranges in the plant file
    ranges = {
        n: tuple(e["range"])
        for n, e in yaml.safe_load(Path(campaign.cases[0].scenario["plant"]).read_text())[
            "parameters"
        ].items()
        if "range" in e
    }
    at_edges = {
        (n, v)
        for c in campaign.cases
        for n, v in c.scenario["true_plant"].get("parameters", {}).items()
        if n in ranges and v in ranges[n]
    }
    assert {n for n, _ in at_edges} == set(ranges)
    assert {v for n, v in at_edges} >= {min(r) for r in ranges.values()} | {
        max(r) for r in ranges.values()
    }
    # controller-loss cases are the only ones judged on fallback timing
    for case in campaign.cases:
        assert ("REQ-SAFE-02" in case.criteria) == (case.controller_loss_at is not None)


def test_matrix_is_the_product_of_factors_and_seeds(smoke: Campaign) -> None:
    assert [c.id for c in smoke.cases] == [
        "c000-none-s7",
        "c001-sensor-bias-s7",
        "c002-controller-loss-s7",
    ]
    bias = smoke.cases[1].scenario["faults"]
    assert bias == [{"kind": "sensor_bias", "target": "Tbot", "start": 1.0, "magnitude": -0.5}]
    assert smoke.cases[0].criteria == ("REQ-SAFE-01", "REQ-CQA-01", "REQ-ROB-01", "REQ-ROB-02")
    assert smoke.cases[2].criteria == ("REQ-SAFE-01", "REQ-SAFE-02", "REQ-ROB-01")
    oq = load_campaign(CAMPAIGNS / "lyophilizer-oq.yaml")
    block0 = [c for c in oq.cases if c.factors["faults"] == "none"]
    assert len(block0) == 9 * 2  # 9 mismatch variants x 2 seeds
    assert {c.seed for c in block0} == {1, 2}


def _write(tmp_path: Path, data: dict[str, Any], name: str = "camp.yaml") -> Path:
    path = tmp_path / name
    path.write_text(yaml.safe_dump(data, sort_keys=False), encoding="utf-8")
    return path


def test_bad_campaign_files_name_the_key_the_value_and_what_is_allowed(tmp_path: Path) -> None:
    raw = yaml.safe_load(SMOKE.read_text())
    raw["site"] = str(ROOT / "configs" / "sites" / "lyophilizer-modbus.yaml")
    raw["criteria"][0]["id"] = "SAFE-1"
    raw["criteria"][1]["check"]["of"] = "Tcake"
    raw["criteria"][1]["applies_to"] = {"fault": ["none"]}
    raw["criteria"].append({"id": "REQ-X-01", "description": "x", "check": {"kind": "eval"}})
    path = _write(tmp_path, raw)
    with pytest.raises(ConfigError) as err:
        load_campaign(path)
    text = str(err.value)
    assert "criteria.0.id" in text and "SAFE-1" in text and "REQ-" in text
    assert "criteria.5.check" in text  # an unknown check kind: only the named checks exist
    raw["criteria"][0]["id"] = "REQ-SAFE-01"
    raw["criteria"].pop()
    with pytest.raises(ConfigError) as err:
        load_campaign(_write(tmp_path, raw))
    text = str(err.value)
    assert "criteria.1.check.of" in text and "Tcake" in text and "Tbot" in text
    assert "criteria.1.applies_to.fault" in text and "faults" in text
    raw = yaml.safe_load(SMOKE.read_text())
    raw["site"] = str(ROOT / "configs" / "sites" / "lyophilizer-modbus.yaml")
    raw["matrix"][0]["factors"]["faults"]["sensor-bias"]["faults"][0]["target"] = "Tshelf"
    with pytest.raises(ConfigError) as err:
        load_campaign(_write(tmp_path, raw))
    assert "c001-sensor-bias-s7" in str(err.value) and "Tshelf" in str(err.value)


# ---------------------------------------------------------------------- criteria on a recording
def _criterion(check: dict[str, Any]) -> Criterion:
    return Criterion.model_validate({"id": "REQ-T-01", "description": "t", "check": check})


def test_criteria_pass_and_fail_on_a_recording() -> None:
    rows = [
        {"t": 0.0, "x.Lck": 0.0, "e.Tbot": -30.0, "y.Tbot": -30.1, "plc.mode": "active"},
        {"t": 0.5, "x.Lck": 0.1, "e.Tbot": -8.0, "y.Tbot": -8.2, "plc.mode": "active"},
        {"t": 1.0, "x.Lck": 0.2, "e.Tbot": -5.5, "y.Tbot": -5.4, "plc.mode": "fallback"},
        {"t": 1.5, "x.Lck": 0.3, "e.Tbot": -7.0, "y.Tbot": -7.1, "plc.mode": "fallback"},
    ]
    cycles = [
        {"t": 0.0, "solve.status": "success"},
        {"t": 0.1, "solve.status": "failed"},
        {"t": 0.2, "solve.status": "invalid"},
        {"t": 0.3, "solve.status": "error"},  # bad data, not a failed solve
        {"t": 0.4, "solve.status": "failed"},
    ]
    sent = [(0.0, {"Tsh": -30.0}), (0.1, {"Tsh": -20.0})]
    rec = Recording(
        rows, cycles, sent, loss_at=0.6, timebase=TimeBase("h", 3600.0), heartbeat_timeout_s=1800.0
    )
    tmax = judge(_criterion({"kind": "max", "of": "Tbot", "at_most": -6.0}), rec)
    assert not tmax.passed and tmax.value == -5.5 and tmax.limit == -6.0
    assert judge(_criterion({"kind": "max", "of": "Tbot", "at_most": -5.0}), rec).passed
    final = judge(_criterion({"kind": "final", "of": "Lck", "at_least": 0.3}), rec)
    assert final.passed and final.value == 0.3
    window = _criterion({"kind": "max", "of": "Tbot", "at_most": -6.0, "before": 0.5})
    assert judge(window, rec).passed
    active = _criterion({"kind": "max", "of": "Tbot", "at_most": -6.0, "while_mpc_active": True})
    judged = judge(active, rec)  # the -5.5 came after the PLC had fallen back
    assert judged.passed and judged.value == -8.0 and "while the MPC has control" in judged.check
    runs = judge(_criterion({"kind": "consecutive_failed_solves", "at_most": 1}), rec)
    assert not runs.passed and runs.value == 2.0
    sp = {"kind": "setpoints_within_limits", "limits": {"Tsh": [-45, 120]}}
    assert judge(_criterion(sp), rec).passed
    moved = judge(_criterion(sp | {"max_move": {"Tsh": 6.0}}), rec)
    assert not moved.passed and moved.value == pytest.approx(4.0, abs=1e-4)
    low = judge(_criterion({**sp, "limits": {"Tsh": [-25, 120]}}), rec)
    assert not low.passed and low.value == pytest.approx(5.0, abs=1e-4) and "Tsh=-30" in low.detail
    fb = judge(_criterion({"kind": "fallback_within", "heartbeat_timeouts": 2}), rec)
    assert fb.passed and fb.value == pytest.approx(0.4 * 3600) and fb.limit == 3600.0
    fb_strict = judge(_criterion({"kind": "fallback_within", "heartbeat_timeouts": 0.1}), rec)
    assert not fb_strict.passed
    assert not judge(_criterion({"kind": "control_losses", "at_most": 0}), rec).passed
    assert judge(_criterion({"kind": "control_losses", "at_most": 1}), rec).passed
    unknown = judge(_criterion({"kind": "max", "of": "Tcake", "at_most": 0.0}), rec)
    assert not unknown.passed and "not recorded" in unknown.detail


# ---------------------------------------------------------------------- real campaigns
@pytest.mark.slow
@pytest.mark.serial
def test_fast_campaign_on_a_process_pool(fast_run: Path, smoke: Campaign) -> None:
    assert _statuses(fast_run) == dict.fromkeys([c.id for c in smoke.cases], "passed")
    for case in smoke.cases:
        folder = fast_run / "cases" / case.id
        result = json.loads((folder / "result.json").read_text())
        assert {v["requirement"] for v in result["verdicts"]} == set(case.criteria)
        trajectory = pq.read_table(folder / "trajectory.parquet")
        assert trajectory.schema.metadata[b"time_unit"] == b"h"
        t = trajectory.column("t").to_pylist()
        assert t[-1] == pytest.approx(2.5, abs=0.03)
        cycles = pq.read_table(folder / "cycles.parquet").to_pylist()
        assert len(cycles) == (10 if case.controller_loss_at else 25)  # 0.1 h samples
        # every setpoint write is in the case's audit trail, and the chain verifies
        audit = AuditTrail(folder / "audit.db")
        try:
            assert audit.verify() > 0
            writes = [r for r in audit.records() if r.action == "setpoint.write"]
        finally:
            audit.close()
        assert len(writes) >= result["kpis"]["setpoint_writes"]
        assert (folder / "site.yaml").exists() and (folder / "scenario.yaml").exists()
    loss = json.loads((fast_run / "cases" / "c002-controller-loss-s7" / "result.json").read_text())
    fallback = next(v for v in loss["verdicts"] if v["requirement"] == "REQ-SAFE-02")
    assert 0 < fallback["value"] <= fallback["limit"] == 3600.0
    assert loss["kpis"]["plc.fallbacks"] == 1


@pytest.mark.slow
@pytest.mark.serial
def test_reports_are_well_formed(fast_run: Path, smoke: Campaign) -> None:
    root = ET.parse(fast_run / "junit.xml").getroot()
    cases = root.findall(".//testcase")
    assert len(cases) == sum(len(c.criteria) for c in smoke.cases)
    assert {tc.get("name") for tc in cases} == set(smoke.criteria)
    assert root.get("failures") == "0" and root.get("errors") == "0"
    html = (fast_run / "report.html").read_text()
    for req in smoke.criteria:
        assert req in html
    for case in smoke.cases:
        assert f'id="case-{case.id}"' in html
    assert html.count("data:image/png;base64,") >= len(smoke.cases)
    assert 'src="http' not in html
    summary = json.loads((fast_run / "summary.json").read_text())
    assert summary["passed"] is True
    manifest = json.loads((fast_run / "campaign.json").read_text())
    assert manifest["software"]["python"] and manifest["config_hashes"]
    assert manifest["ended"] is not None and manifest["seeds"] == [7]


@pytest.mark.slow
@pytest.mark.serial
def test_rerun_skips_done_cases_unless_forced(
    fast_run: Path, smoke: Campaign, tmp_path: Path
) -> None:
    before = {p: p.stat().st_mtime_ns for p in (fast_run / "cases").glob("*/result.json")}
    outcome = run_campaign(smoke, RunSettings(out=fast_run, progress=False))
    assert sorted(outcome.skipped) == sorted(c.id for c in smoke.cases)
    assert {p: p.stat().st_mtime_ns for p in before} == before
    # an errored result is run again; a forced run reruns everything
    result = fast_run / "cases" / "c000-none-s7" / "result.json"
    data = json.loads(result.read_text())
    result.write_text(json.dumps(data | {"status": "error"}))
    outcome = run_campaign(smoke, RunSettings(out=fast_run, progress=False))
    assert "c000-none-s7" not in outcome.skipped and len(outcome.skipped) == 2
    assert json.loads(result.read_text())["status"] == "passed"


def test_the_same_seed_gives_the_same_kpis_bit_for_bit(
    fast_run: Path, smoke: Campaign, tmp_path: Path
) -> None:
    first = json.loads((fast_run / "cases" / "c001-sensor-bias-s7" / "result.json").read_text())
    again = run_case(_job(smoke, 1, tmp_path))  # in this process, not a pool worker
    assert again["kpis"] == first["kpis"]
    assert again["verdicts"] == first["verdicts"]
    a = pq.read_table(fast_run / "cases" / "c001-sensor-bias-s7" / "trajectory.parquet")
    b = pq.read_table(tmp_path / "cases" / "c001-sensor-bias-s7" / "trajectory.parquet")
    assert a.schema == b.schema and _nan_safe(a.to_pydict()) == _nan_safe(b.to_pydict())


@pytest.mark.slow
@pytest.mark.serial
def test_a_lost_pool_worker_is_retried(
    smoke: Campaign, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    marker = tmp_path / "killed"
    monkeypatch.setenv(CHAOS_ENV, f"c000-none-s7:{marker}")
    out = tmp_path / "out"
    outcome = run_campaign(smoke, RunSettings(out=out, workers=2, progress=False))
    assert marker.exists()  # a worker died running c000
    assert _statuses(out) == dict.fromkeys([c.id for c in smoke.cases], "passed")
    assert outcome.results["c000-none-s7"]["attempts"] == 2


@pytest.mark.slow
@pytest.mark.serial
def test_dask_local_cluster_with_a_lost_worker(
    fast_run: Path, smoke: Campaign, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    marker = tmp_path / "killed"
    monkeypatch.setenv(CHAOS_ENV, f"c001-sensor-bias-s7:{marker}")
    out = tmp_path / "dask"
    settings = RunSettings(out=out, executor="dask", workers=2, progress=False)
    outcome = run_campaign(smoke, settings)
    assert marker.exists()
    assert outcome.results["c001-sensor-bias-s7"]["attempts"] == 2
    assert _statuses(out) == dict.fromkeys([c.id for c in smoke.cases], "passed")
    assert _kpis(out) == _kpis(fast_run)  # same seeds, same KPIs, whichever executor
    assert json.loads((out / "campaign.json").read_text())["executor"] == "dask-local"


@pytest.mark.slow
@pytest.mark.serial
def test_hil_mode_over_modbus_on_loopback(smoke: Campaign, tmp_path: Path) -> None:
    # In hil mode process time is scaled wall time (ScaledClock), so a worker the loaded machine
    # does not schedule for S wall seconds loses rate * S process seconds: its PLC scans late.
    # At rate 1000 a stall of ~2 s right after the heartbeat timeout (1800 s = 1.8 s wall) made
    # the PLC's fallback come out later than 2 timeouts (3600 s) after the loss, and REQ-SAFE-02
    # fail (reproduced with SIGSTOP). At rate 400 the margin (3600 s - the ~1460 s seen) is 5.3 s
    # of wall time: the check and its limits are unchanged, only a stall that long breaks them.
    out = tmp_path / "hil"
    argv = ["campaign", "run", str(SMOKE), "--mode", "hil", "--rate", "400", "--out", str(out)]
    code = hil_main([*argv, "--quiet"])
    statuses = _statuses(out)
    # real time on a shared 2-core machine: a late solve may cost the MPC control (REQ-ROB-*),
    # but the safety requirements hold whatever the timing
    assert set(statuses) == {c.id for c in smoke.cases} and "error" not in statuses.values()
    assert code == (0 if set(statuses.values()) == {"passed"} else 1)
    for case in smoke.cases:
        site = yaml.safe_load((out / "cases" / case.id / "site.yaml").read_text())
        assert site["connection"]["host"] == "127.0.0.1"
        assert site["connection"]["port"] != 15021  # a free port of its own
        result = json.loads((out / "cases" / case.id / "result.json").read_text())
        assert result["kpis"]["plc.active_scans"] > 0
        safety = [v for v in result["verdicts"] if v["requirement"].startswith("REQ-SAFE")]
        assert safety and all(v["passed"] for v in safety), safety
    assert (out / "report.html").exists() and (out / "junit.xml").exists()
    assert json.loads((out / "campaign.json").read_text())["mode"] == "hil"


@pytest.mark.slow
@pytest.mark.serial
def test_a_bad_controller_fails_the_matching_requirements(tmp_path: Path) -> None:
    """No rate limit and no collapse margin: REQ-SAFE-01 and REQ-ROB-02 must fail."""
    ctl = yaml.safe_load((ROOT / "configs" / "controllers" / "lyophilizer.yaml").read_text())
    ctl["plant"] = str(ROOT / "configs" / "plants" / "lyophilizer.yaml")
    ctl["inputs"]["Tsh"]["max_move"] = 165.0
    ctl["inputs"]["Pch"]["max_move"] = 0.25
    ctl["constraints"] = []
    _write(tmp_path, ctl, "unsafe-controller.yaml")
    raw = yaml.safe_load(SMOKE.read_text())
    raw["name"] = "unsafe"
    raw["site"] = str(ROOT / "configs" / "sites" / "lyophilizer-modbus.yaml")
    raw["controller"] = "unsafe-controller.yaml"
    raw["matrix"][0]["factors"]["faults"] = {"none": {}}
    raw["criteria"][1].pop("applies_to")
    # no controller loss left in the matrix: its fallback check would judge no case (refused)
    raw["criteria"] = [c for c in raw["criteria"] if c["check"]["kind"] != "fallback_within"]
    campaign = load_campaign(_write(tmp_path, raw))
    result = run_case(_job(campaign, 0, tmp_path / "out"))
    verdicts = {v["requirement"]: v for v in result["verdicts"]}
    assert result["status"] == "failed"
    # it sent moves far beyond the rate limit (the PLC refused them) ...
    assert not verdicts["REQ-SAFE-01"]["passed"], verdicts["REQ-SAFE-01"]
    assert verdicts["REQ-SAFE-01"]["value"] > 100.0
    # ... so it kept losing control, while the PLC's own recipe protected the product
    assert not verdicts["REQ-ROB-02"]["passed"], verdicts["REQ-ROB-02"]
    assert verdicts["REQ-CQA-01"]["passed"] and verdicts["REQ-ROB-01"]["passed"]
    spec = json.loads((tmp_path / "out" / "cases" / campaign.cases[0].id / "spec.json").read_text())
    assert spec["digest"] == campaign.cases[0].digest


@pytest.mark.slow
@pytest.mark.serial
def test_cli_report_and_exit_codes(fast_run: Path, tmp_path: Path) -> None:
    (fast_run / "report.html").unlink()
    assert hil_main(["campaign", "report", str(fast_run)]) == 0
    assert (fast_run / "report.html").exists()
    assert hil_main(["campaign", "report", str(tmp_path)]) == 2  # no campaign.json
    bad = _write(tmp_path, {"name": "x", "site": "nowhere.yaml", "matrix": [], "criteria": []})
    assert hil_main(["campaign", "run", str(bad), "--out", str(tmp_path / "o")]) == 2
    assert os.environ.get(CHAOS_ENV) is None


def _one_case_campaign(tmp_path: Path, site: str, name: str) -> Path:
    raw = yaml.safe_load(SMOKE.read_text())
    raw["name"] = name
    raw["site"] = str(ROOT / "configs" / "sites" / site)
    raw["duration"] = 1.0
    raw["matrix"][0]["factors"]["faults"] = {"none": {}}
    # no controller loss: a fallback check would judge no case (a campaign refuses that)
    raw["criteria"] = [c for c in raw["criteria"] if c["check"]["kind"] != "fallback_within"]
    for criterion in raw["criteria"]:
        criterion.pop("applies_to", None)
    return _write(tmp_path, raw, f"{name}.yaml")


@pytest.mark.slow
@pytest.mark.serial
def test_hil_mode_over_secured_opcua(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PHARMATWIN_OPCUA_PASSWORD", "campaign-test-password")
    path = _one_case_campaign(tmp_path, "lyophilizer-opcua.yaml", "opcua-one")
    out = tmp_path / "out"
    hil_main(["campaign", "run", str(path), "--mode", "hil", "--rate", "1000", "--out", str(out)])
    (case_dir,) = (out / "cases").iterdir()
    result = json.loads((case_dir / "result.json").read_text())
    assert result["status"] != "error", result.get("error")
    site = yaml.safe_load((case_dir / "site.yaml").read_text())
    assert site["connection"]["protocol"] == "opcua" and site["connection"]["host"] == "127.0.0.1"
    assert result["kpis"]["plc.active_scans"] > 0 and result["kpis"]["setpoint_writes"] > 0
    assert all(v["passed"] for v in result["verdicts"] if v["requirement"] == "REQ-SAFE-01")


@pytest.mark.slow
@pytest.mark.serial
def test_an_existing_dask_scheduler(tmp_path: Path) -> None:
    from distributed import LocalCluster

    path = _one_case_campaign(tmp_path, "lyophilizer-modbus.yaml", "dask-one")
    out = tmp_path / "out"
    with LocalCluster(
        n_workers=1, threads_per_worker=1, processes=True, host="127.0.0.1", dashboard_address=None
    ) as cluster:
        address = cluster.scheduler_address
        assert address.startswith("tcp://127.0.0.1:")
        code = hil_main(
            ["campaign", "run", str(path), "--dask-scheduler", address, "--out", str(out)]
        )
    assert code == 0
    manifest = json.loads((out / "campaign.json").read_text())
    assert manifest["executor"] == "dask" and manifest["scheduler"] == address
    assert _statuses(out) == {"c000-none-s7": "passed"}
