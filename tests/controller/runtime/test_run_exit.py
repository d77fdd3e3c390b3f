"""``pharmatwin run --mode closed-loop`` that never got control fails, and says why (issue 16).

Against a real HIL on loopback: the CSTR's true plant and virtual PLC behind the Modbus
server, in a thread of its own, with ``pharmatwin run`` driven through its argv in the test's
thread. The PLC's interlock is set from the first scan, so it never grants
``mpc_permissive``: before, the run went on with every write refused and exited 0. The same
bench without the interlock engages and exits 0, so the verdict is not a blanket failure.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
import yaml

from controller.clock import ScaledClock
from controller.runtime.cli import main as cli_main
from controller.runtime.site import load_site
from hil.net import free_port
from hil.rig import HilRig
from hil.servers.modbus import modbus_server_for_site

ROOT = Path(__file__).resolve().parents[3]
SITES = ROOT / "configs" / "sites"
RATE = 120.0  # the CSTR samples every 18 s: 0.15 s of wall time per cycle
pytestmark = pytest.mark.timeout(120)


def _site(tmp_path: Path, port: int, *, interlocked: bool) -> Path:
    """The CSTR Modbus site on ``port``; ``interlocked``: its runaway interlock always trips."""
    data: dict[str, Any] = yaml.safe_load((SITES / "cstr-modbus.yaml").read_text())
    for key in ("plant", "controller", "tags"):
        data[key] = str((SITES / data[key]).resolve())
    data["hil"]["scenario"] = str((SITES / data["hil"]["scenario"]).resolve())
    data["forecast"]["local_recipe"] = str((SITES / data["forecast"]["local_recipe"]).resolve())
    data["connection"]["port"] = port
    if interlocked:  # the reactor is always above 20 degC: the interlock holds from the start
        data["hil"]["plc"]["interlocks"][0]["above"] = 20.0
        data["hil"]["plc"]["interlocks"][0]["release"] = 15.0  # on the safe side of 20
    path = tmp_path / "site.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


@contextmanager
def hil_bench(site_path: Path) -> Iterator[HilRig]:
    """The site's true plant and virtual PLC behind its Modbus server, in a thread of its own
    (the CLI runs its own event loop); yields once the PLC has published its first scan."""
    site = load_site(site_path)
    scanned = threading.Event()
    failed: list[BaseException] = []
    ready: dict[str, Any] = {}

    async def serve() -> None:
        server = modbus_server_for_site(site)
        await server.start()
        rig = HilRig(site, ScaledClock(RATE), [server], on_scan=lambda _rig: scanned.set())
        stop = asyncio.Event()
        ready.update(loop=asyncio.get_running_loop(), stop=stop, rig=rig)
        try:
            await rig.run(stop)
        finally:
            await server.close()

    def main() -> None:
        try:
            asyncio.run(serve())
        except BaseException as exc:  # handed to the test's thread
            failed.append(exc)
            scanned.set()

    thread = threading.Thread(target=main, name="hil-bench", daemon=True)
    thread.start()
    try:
        assert scanned.wait(30), "the HIL never scanned"
        if failed:
            raise failed[0]
        yield ready["rig"]
    finally:
        if "loop" in ready:
            ready["loop"].call_soon_threadsafe(ready["stop"].set)
        thread.join(30)
    if failed:
        raise failed[0]


def _run(site: Path, tmp_path: Path, cycles: int) -> list[str]:
    return [
        "run",
        str(site),
        "--mode",
        "closed-loop",
        "--rate",
        str(RATE),
        "--cycles",
        str(cycles),
        "--audit",
        str(tmp_path / "audit.db"),
        "--historian",
        str(tmp_path / "history.db"),
    ]


def test_a_closed_loop_run_the_plc_never_permits_fails_and_says_why(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    site = _site(tmp_path, free_port(), interlocked=True)
    with hil_bench(site) as rig:
        code = cli_main(_run(site, tmp_path, cycles=6))
        assert not any(e.what == "active" for e in rig.log.plc_events)  # it really never engaged
    out = capsys.readouterr().out
    assert code == 1, out
    assert "closed loop: the MPC had control in 0 of 6 cycles\n" in out
    assert out.rstrip().endswith(
        "FAILED the MPC never got control in 6 cycles: the PLC never granted mpc_permissive "
        "(interlock_active was set)"
    )


def test_a_closed_loop_run_that_engages_exits_0(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    site = _site(tmp_path, free_port(), interlocked=False)
    with hil_bench(site) as rig:
        code = cli_main(_run(site, tmp_path, cycles=6))
        assert any(e.what == "active" for e in rig.log.plc_events)
    out = capsys.readouterr().out
    assert code == 0, out
    assert "FAILED" not in out
    assert "closed loop: the MPC had control in " in out


def test_a_run_that_never_reads_the_plc_fails(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    port = free_port()  # nothing listens here
    site = _site(tmp_path, port, interlocked=False)
    data = yaml.safe_load(site.read_text())
    data["connection"].update(timeout_s=0.05, backoff={"initial_s": 0.01, "max_s": 0.02})
    site.write_text(yaml.safe_dump(data, sort_keys=False))
    code = cli_main(_run(site, tmp_path, cycles=2))
    out = capsys.readouterr().out
    assert code == 1, out
    assert (
        f"FAILED no read of the PLC at modbus+tcp://127.0.0.1:{port} succeeded in 2 cycles" in out
    )


@pytest.mark.parametrize(
    ("argv", "words"),
    [
        (["--rate", "0"], "--rate: must be a positive finite number (got 0.0)"),
        (["--rate", "nan"], "--rate: must be a positive finite number (got nan)"),
        (["--cycles", "0"], "--cycles: must be 1 or more (got 0)"),
    ],
)
def test_run_options_that_cannot_be_honoured_exit_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], argv: list[str], words: str
) -> None:
    site = SITES / "cstr-modbus.yaml"
    audit = str(tmp_path / "a.db")
    assert cli_main(["run", str(site), "--mode", "shadow", "--audit", audit, *argv]) == 2
    out = capsys.readouterr().out
    assert f"command line: {words}" in out and "Traceback" not in out
    assert not (tmp_path / "a.db").exists()  # refused before anything was opened


def test_closed_loop_on_a_shadow_only_site_exits_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    site = _site(tmp_path, free_port(), interlocked=False)
    data = yaml.safe_load(site.read_text())
    data["runtime"] = {"shadow_only": True}
    site.write_text(yaml.safe_dump(data, sort_keys=False))
    assert cli_main(_run(site, tmp_path, cycles=1)) == 2
    out = capsys.readouterr().out
    assert "runtime.shadow_only: this site is shadow-only (no PLC contract): run it with " in out
