"""`pharmatwin-hil serve --ui`: the rig's read-only page, from the running serve process.

A real `serve` subprocess on free loopback ports, its page read over HTTP and in headless
Chromium: the true plant's values update, the PLC's mode is shown, and nothing on the page
can change the rig (no write routes). A non-loopback address without TLS is refused.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
from playwright.async_api import async_playwright

from hil.cli import main as hil_main
from hil.net import free_port

ROOT = Path(__file__).resolve().parents[2]
SITE = ROOT / "configs" / "sites" / "lyophilizer-modbus.yaml"
CHROMIUM = "/usr/bin/chromium"
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
        "--disable-component-update", "--disable-sync", "--no-first-run"]  # fmt: skip
pytestmark = pytest.mark.timeout(120)


def _serve(tmp_path: Path, ui_port: int) -> subprocess.Popen[str]:
    argv = [sys.executable, "-m", "hil.cli", "serve", str(SITE), "--rate", "600",
            "--modbus-port", str(free_port()), "--state-dir", str(tmp_path),
            "--ui", f"127.0.0.1:{ui_port}"]  # fmt: skip
    return subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def _wait_for_state(tmp_path: Path, proc: subprocess.Popen[str]) -> dict[str, object]:
    state_file = tmp_path / "lyophilizer-modbus.json"
    deadline = time.monotonic() + 60
    while not state_file.exists():
        assert proc.poll() is None, proc.stdout.read() if proc.stdout else ""
        assert time.monotonic() < deadline, "serve did not start"
        time.sleep(0.05)
    return dict(json.loads(state_file.read_text()))


@pytest.mark.slow
@pytest.mark.serial
async def test_the_rig_page_shows_the_true_plant_live_and_is_read_only(tmp_path: Path) -> None:
    proc = _serve(tmp_path, free_port())
    try:
        url = str(_wait_for_state(tmp_path, proc)["ui"])
        async with httpx.AsyncClient(base_url=url) as c:
            first = (await c.get("/api/state")).json()
            assert first["meta"]["site"] == "lyophilizer-modbus"
            assert first["meta"]["series"]["Tbot"] == "degC"
            assert first["status"]["plc_mode"] in ("local", "active", "requested", "fallback")
            # read-only: there is no route that changes anything
            assert (await c.post("/api/state")).status_code == 405
            assert (await c.post("/api/fault", json={})).status_code == 404
        assert Path(CHROMIUM).is_file(), f"{CHROMIUM} is missing: apt-get install -y chromium"
        async with async_playwright() as pw:
            browser = await pw.chromium.launch(executable_path=CHROMIUM, args=ARGS)
            try:
                page = await browser.new_page()
                await page.goto(url + "/")
                await page.wait_for_function(
                    "document.getElementById('plot-Tbot')?.data?.[0]?.x?.length > 2",
                    timeout=20000,
                )
                n0 = await page.evaluate("document.getElementById('plot-Tbot').data[0].x.length")
                await page.wait_for_function(  # values update without a reload (SSE)
                    f"document.getElementById('plot-Tbot').data[0].x.length > {n0}",
                    timeout=20000,
                )
                ytitle = await page.evaluate(
                    "document.getElementById('plot-Tbot').layout.yaxis.title.text"
                )
                assert ytitle == "[degC]"
                assert "PLC mode" in (await page.text_content("#status") or "")
            finally:
                await browser.close()
    finally:
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=60) == 0


def test_a_remote_page_without_tls_is_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code = hil_main(["serve", str(SITE), "--state-dir", str(tmp_path), "--modbus-port",
                     str(free_port()), "--ui", "0.0.0.0:8081", "--host", "127.0.0.1"])  # fmt: skip
    assert code == 2
    assert "--ui" in capsys.readouterr().out
