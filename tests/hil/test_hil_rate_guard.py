"""A HIL clock too fast for the virtual PLC to serve the controller is refused.

Found by a review of the stuck-analyser rule: the CSTR campaign's hil rate was 600, at which
the virtual PLC (a scan every 0.05 s of wall time) scans every 30 s of process time, longer
than the controller's 18 s sample. The controller read PLC images up to a scan old and its
writes reached the plant up to a scan late: on a healthy plant the estimator rejected the
analysers' readings (15 standard deviations) and the loop held and fell back. The first test
shows that failure at 600 and a clean run at the campaign's rate now (150); the others show the
refusals of the campaign file and the command line's ``--rate``, and ``serve --rate``'s
warning (the rig alone may run fast)."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
import pytest

from controller.errors import ConfigError
from hil.campaign.resume import case_configuration
from hil.campaign.runner import run_case
from hil.campaign.spec import load_campaign
from hil.net import free_port
from hil.serve import ServeOptions, serve

ROOT = Path(__file__).resolve().parents[2]
CAMPAIGN = ROOT / "configs" / "campaigns" / "cstr-drift.yaml"
SITE = ROOT / "configs" / "sites" / "cstr-modbus.yaml"
pytestmark = pytest.mark.timeout(240)


def _healthy_run(tmp: Path, rate: float) -> tuple[list[dict[str, Any]], str]:
    """A healthy CSTR case (no fault, 0.15 h) in hil mode at ``rate``, through run_case
    (which does not check the rate), on a free loopback port."""
    sites = ROOT / "configs" / "sites"
    text = SITE.read_text().replace("port: 15023", f"port: {free_port()}", 1)
    for key in ("plant", "controller", "tags", "scenario", "local_recipe"):
        text = text.replace(f"{key}: ../", f"{key}: {sites.parent}/", 1)
    tmp.mkdir()
    site = tmp / "site.yaml"
    site.write_text(text)
    campaign = load_campaign(CAMPAIGN)
    case = next(c for c in campaign.cases if c.factors["drift"] == "none")
    scenario = {**case.scenario, "duration": 0.15}
    job = {
        "case": {**case.to_json(), "scenario": scenario},
        "criteria": [],
        "out": str(tmp),
        "site": str(site),
        "controller": None,
        "mode": "hil",
        "rate": rate,
    }
    result = run_case(job)
    assert result["status"] in ("passed", "failed"), result.get("error")
    folder = tmp / "cases" / case.id
    return pq.read_table(folder / "cycles.parquet").to_pylist(), (folder / "run.log").read_text()


GATE = "rejected by the estimator's innovation gate"


@pytest.mark.serial  # on the scaled wall clock: a loaded machine adds late cycles of its own
def test_a_plc_scanning_slower_than_the_controller_samples_fails_a_healthy_plant(
    tmp_path: Path,
) -> None:
    """The mechanism, not every symptom: at 600 readings a scan old (up to 30 s) are refused
    by the estimator on a healthy plant and the loop holds; at 150 none is."""
    too_fast, log = _healthy_run(tmp_path / "600", 600.0)
    assert log.count(GATE) >= 2, [r["state"] for r in too_fast]  # 9 in 31 cycles when found
    assert any(r["state"] in ("HOLD", "FALLBACK") for r in too_fast)
    ok, log = _healthy_run(tmp_path / "150", load_campaign(CAMPAIGN).spec.hil.rate)
    assert GATE not in log, [r["state"] for r in ok]
    assert sum(r["state"] == "RUNNING" for r in ok) >= len(ok) // 2


def test_the_campaign_file_rate_is_checked_against_the_plc_scan(tmp_path: Path) -> None:
    assert load_campaign(CAMPAIGN, mode="hil").spec.hil.rate == 150.0
    text = CAMPAIGN.read_text()
    text = re.sub(r"^hil: \{rate: [0-9.]+\}.*$", "hil: {rate: 600.0}", text, count=1, flags=re.M)
    text = text.replace("site: ../sites/", f"site: {SITE.parent}/", 1)
    path = tmp_path / "cstr-drift.yaml"
    path.write_text(text)
    assert load_campaign(path).spec.hil.rate == 600.0  # fast mode: the rate is not used
    with pytest.raises(ConfigError) as err:
        load_campaign(path, mode="hil")
    (problem,) = err.value.problems
    assert (problem.file, problem.location, problem.value) == (str(path), "hil.rate", 600.0)
    assert "scans every 30 s of process time" in problem.message
    assert "more than half of the controller's sample (18 s)" in problem.message
    assert "allowed: a rate of at most 180" in problem.message
    # a file without hil.rate gets the default (1000), and is told so
    path.write_text(re.sub(r"^hil: .*\n", "", text, count=1, flags=re.M))
    with pytest.raises(ConfigError) as err:
        load_campaign(path, mode="hil")
    (problem,) = err.value.problems
    assert problem.location == "hil.rate (not set: the default)" and problem.value == 1000.0
    assert "at 1000 process s per wall s" in str(err.value)


def test_the_command_line_rate_is_checked_too() -> None:
    with pytest.raises(ConfigError) as err:
        load_campaign(CAMPAIGN, mode="hil", rate=600.0)
    (problem,) = err.value.problems
    assert (problem.file, problem.location) == ("command line", "--rate")
    load_campaign(CAMPAIGN, mode="hil", rate=180.0)  # the most allowed


@pytest.mark.serial  # live servers
async def test_serve_warns_of_a_rate_its_plc_cannot_serve_a_controller_at(
    tmp_path: Path,
) -> None:
    """The rig alone may run fast (to a batch's end): serve warns, and says the most."""
    said: list[str] = []
    port = free_port()
    opts = ServeOptions(rate=600.0, state_dir=tmp_path, duration=60.0, modbus_port=port)
    await serve(SITE, opts, announce=lambda *a: said.append(" ".join(map(str, a))))
    warned = [line for line in said if line.startswith("warning: --rate 600:")]
    assert len(warned) == 1 and "allowed: a rate of at most 180" in warned[0], said
    logged = (tmp_path / "cstr-modbus.log").read_text()
    assert "WARNING" in logged and "allowed: a rate of at most 180" in logged
    said.clear()
    await serve(SITE, ServeOptions(rate=150.0, state_dir=tmp_path, duration=60.0, modbus_port=port),
                announce=lambda *a: said.append(" ".join(map(str, a))))  # fmt: skip
    assert said and not any(line.startswith("warning") for line in said), said


def test_the_cli_says_so_without_a_traceback(tmp_path: Path) -> None:
    cli = [sys.executable, "-m", "hil.cli", "campaign", "run", str(CAMPAIGN)]
    args = ["--mode", "hil", "--rate", "600", "--out", str(tmp_path / "out")]
    done = subprocess.run([*cli, *args], capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert done.returncode == 2, done.stdout + done.stderr
    text = " ".join((done.stdout + done.stderr).split())
    assert "--rate" in text and "allowed: a rate of at most 180" in text
    assert "Traceback" not in text


def test_a_rerun_at_another_rate_does_not_reuse_hil_results() -> None:
    """A review: the configuration a finished result is reused for left the rate out, so a
    re-run with another --rate into the same folder kept the results of the old rate."""
    case = load_campaign(CAMPAIGN).cases[0]
    info: dict[str, Any] = {"config_hashes": {}, "software": {}, "mode": "hil", "rate": 150.0}
    at_150 = case_configuration(info, [], case)
    assert case_configuration({**info, "rate": 180.0}, [], case) != at_150
    assert case_configuration(dict(info), [], case) == at_150
    fast = {**info, "mode": "fast", "rate": None}  # fast: no rate, digests as they were
    assert case_configuration(fast, [], case) == case_configuration({**fast, "rate": 9.0}, [], case)


def test_the_demo_refuses_a_rate_the_site_plc_cannot_serve(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A review: the demo (a PASS/FAIL verdict) ran any site at its default rate 3600; the
    CSTR's PLC then scans every 180 s of an 18 s sample."""
    from hil.demo import main as demo

    assert demo(["--site", str(SITE), "--out", str(tmp_path / "demo")]) == 2
    err = " ".join(capsys.readouterr().err.split())
    assert err.startswith("error: command line: --rate: at 3600 process s per wall s")
    assert "allowed: a rate of at most 180" in err
    assert not (tmp_path / "demo").exists()  # refused before anything was made
