"""``pharmatwin-hil serve`` end to end, with independent protocol clients (plain pymodbus and
asyncua, not our ports): the handshake, the watchdog, the PLC's limits, faults, clean stops."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import re
import signal
import subprocess
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import pytest
from asyncua import Client, ua
from asyncua.crypto.security_policies import SecurityPolicyBasic256Sha256
from pymodbus.client import AsyncModbusTcpClient

import hil.serve
from controller.clock import SteppedClock
from controller.codecs import decode, encode
from controller.tags import load_tag_map
from hil.net import free_port
from hil.serve import ServeOptions, admin_request, serve

ROOT = Path(__file__).resolve().parents[2]
LYO_MODBUS = ROOT / "configs" / "sites" / "lyophilizer-modbus.yaml"
LYO_OPCUA = ROOT / "configs" / "sites" / "lyophilizer-opcua.yaml"
PKI = ROOT / "configs" / "pki"
TAGS = load_tag_map(ROOT / "configs" / "tags" / "lyophilizer.yaml")
RATE = 3600.0  # an hour per second: the 1800 s heartbeat timeout is 0.5 s of wall time
pytestmark = pytest.mark.timeout(120)


class Rig:
    def __init__(self, task: asyncio.Task[object], state_dir: Path, port: int) -> None:
        self.task, self.state_dir, self.port = task, state_dir, port

    async def admin(self, site: Path, request: dict[str, object]) -> dict[str, object]:
        answer: dict[str, object] = await admin_request(site, request, self.state_dir)
        return answer


async def _start(site: Path, tmp: Path, **kw: object) -> Rig:
    port = free_port()
    key = "opcua_port" if "opcua" in site.stem else "modbus_port"
    opts = ServeOptions(rate=RATE, state_dir=tmp, **{key: port}, **kw)  # type: ignore[arg-type]
    task = asyncio.create_task(serve(site, opts, announce=lambda _: None))
    state = tmp / f"{site.stem}.json"
    for _ in range(200):
        if state.exists() or task.done():
            break
        await asyncio.sleep(0.05)
    if task.done():
        task.result()
    return Rig(task, tmp, port)


async def _stop(rig: Rig) -> None:
    rig.task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await rig.task


@pytest.fixture
async def modbus_rig(tmp_path: Path) -> AsyncIterator[Rig]:
    rig = await _start(LYO_MODBUS, tmp_path)
    yield rig
    await _stop(rig)


# --------------------------------------------------------------- a plain Modbus client
class Plc:
    def __init__(self, client: AsyncModbusTcpClient) -> None:
        self.c = client

    async def bit(self, tag: str) -> bool:
        spec = TAGS.tags[tag].modbus
        assert spec is not None
        if spec.table.value == "coil":
            rr = await self.c.read_coils(spec.protocol_address, count=1)
        else:
            rr = await self.c.read_discrete_inputs(spec.protocol_address, count=1)
        assert not rr.isError(), rr
        return bool(rr.bits[0])

    async def value(self, tag: str) -> float:
        spec = TAGS.tags[tag].modbus
        assert spec is not None
        read = self.c.read_holding_registers if spec.writable_table else self.c.read_input_registers
        rr = await read(spec.protocol_address, count=spec.count)
        assert not rr.isError(), rr
        return decode(tag, spec, rr.registers)

    async def write(self, tag: str, value: float) -> int | None:
        """Write; returns the Modbus exception code, or None when accepted."""
        spec = TAGS.tags[tag].modbus
        assert spec is not None
        if spec.table.value == "coil":
            rr = await self.c.write_coil(spec.protocol_address, bool(value))
        else:
            rr = await self.c.write_registers(spec.protocol_address, encode(tag, spec, value))
        return int(rr.exception_code) if rr.isError() else None

    async def until(self, tag: str, want: bool, seconds: float = 60.0) -> None:
        """Wait for a bit (a generous wall-time bound: the rig's scans are paced on it)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + seconds
        while await self.bit(tag) != want:
            if loop.time() > deadline:
                raise AssertionError(f"{tag} did not become {want} within {seconds} s")
            await asyncio.sleep(0.02)


async def _heartbeat(plc: Plc, stop: asyncio.Event) -> None:
    count = 0
    while not stop.is_set():
        count = (count + 1) % 65536
        await plc.write("mpc_heartbeat", count)
        await asyncio.sleep(0.05)


async def test_handshake_limits_watchdog_and_reengagement_over_modbus(modbus_rig: Rig) -> None:
    client = AsyncModbusTcpClient("127.0.0.1", port=modbus_rig.port, timeout=2)
    await client.connect()
    plc = Plc(client)
    try:
        assert await plc.bit("mpc_permissive") and not await plc.bit("mpc_active")
        working = await plc.value("shelf_temp_pv")
        assert await plc.value("shelf_temp_sp") == pytest.approx(working)  # tracking
        assert await plc.write("shelf_temp_sp", working) == 3  # not active: refused
        beat = asyncio.Event()
        hb = asyncio.create_task(_heartbeat(plc, beat))
        assert await plc.write("mpc_request", 1) is None
        await plc.until("mpc_active", True)
        sp = await plc.value("shelf_temp_sp")
        assert await plc.write("shelf_temp_sp", 130.0) == 3  # outside the PLC range
        assert await plc.write("shelf_temp_sp", sp + 60.0) == 3  # faster than the rate limit
        assert await plc.write("shelf_temp_sp", sp + 1.0) is None
        for _ in range(100):
            if await plc.value("shelf_temp_pv") == pytest.approx(sp + 1.0, abs=1e-4):
                break
            await asyncio.sleep(0.02)
        assert await plc.value("shelf_temp_pv") == pytest.approx(sp + 1.0, abs=1e-4)
        # the controller dies: no more heartbeats
        beat.set()
        await hb
        await plc.until("mpc_active", False)
        assert await plc.bit("mpc_fallback_alarm")
        assert await plc.value("shelf_temp_pv") == pytest.approx(sp + 1.0, abs=1e-4)  # held
        status = (await modbus_rig.admin(LYO_MODBUS, {"cmd": "status"}))["status"]
        assert isinstance(status, dict)
        fallback = [e for e in status["recent_plc_events"] if e["what"] == "fallback"]
        found = re.search(r"unchanged for ([\d.]+) s", fallback[-1]["detail"])
        assert found is not None, fallback
        silent = float(found.group(1))
        assert 1800.0 < silent <= 2 * 1800.0  # within two heartbeat timeouts (process time)
        # re-engaging: the request must be cycled and the operator must reset
        beat = asyncio.Event()
        hb = asyncio.create_task(_heartbeat(plc, beat))
        await asyncio.sleep(0.2)
        assert not await plc.bit("mpc_active") and not await plc.bit("mpc_permissive")
        await plc.write("mpc_request", 0)
        await plc.write("mpc_request", 1)
        await asyncio.sleep(0.2)
        assert not await plc.bit("mpc_active")  # operator reset still required
        await plc.write("operator_reset", 1)
        await plc.until("mpc_active", True)
        assert not await plc.bit("mpc_fallback_alarm")
        beat.set()
        await hb
    finally:
        client.close()


async def _eventually(check: Callable[[], Awaitable[bool]], timeout: float = 60.0) -> None:
    """Wait until ``check()`` holds: a generous wall-time bound that only a hang reaches (the
    process time it may take is fixed by the test's clock, not by how busy the machine is)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not await check():
        if loop.time() > deadline:
            raise AssertionError(f"not seen within {timeout} s of wall time")
        await asyncio.sleep(0.02)


@pytest.fixture
async def stepped_rig(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> AsyncIterator[tuple[Rig, SteppedClock]]:
    """A served lyophilizer whose process time moves only when the test advances it: the rig
    still scans on the loop's wall time, but the plant (and every reading) stands still
    between two steps, however slow or late those scans are under load."""
    clock = SteppedClock()
    monkeypatch.setattr(hil.serve, "ScaledClock", lambda rate, monotonic: clock)
    rig = await _start(LYO_MODBUS, tmp_path)
    yield rig, clock
    await _stop(rig)


#: Process time one test step moves the stepped rig on [s]: more than one plant step (the
#: controller's 0.1 h sample / 5), so the next scan takes a new, faulted, measurement.
PLANT_STEPS_S = 0.05 * 3600.0


async def test_faults_change_what_a_client_sees(stepped_rig: tuple[Rig, SteppedClock]) -> None:
    rig, clock = stepped_rig
    client = AsyncModbusTcpClient("127.0.0.1", port=rig.port, timeout=2)
    await client.connect()
    plc = Plc(client)

    async def inject(fault: dict[str, object]) -> None:
        answer = await rig.admin(LYO_MODBUS, {"cmd": "inject", "fault": fault})
        assert answer["ok"], answer
        clock.advance(PLANT_STEPS_S)  # the plant takes its next sample, under the fault

    try:
        before = await plc.value("product_temp_bottom")
        assert await plc.value("measurement_validity") == 1
        await inject({"kind": "sensor_bias", "target": "Tbot", "start": 0.0, "magnitude": 50.0})

        async def biased() -> bool:
            return await plc.value("product_temp_bottom") > before + 40

        await _eventually(biased)
        # the biased reading crosses the collapse limit: the interlock cools the shelf
        await plc.until("interlock_active", True)
        assert await plc.value("shelf_temp_pv") == pytest.approx(-40.0)
        await rig.admin(LYO_MODBUS, {"cmd": "clear", "kind": "sensor_bias"})
        await inject({"kind": "sensor_dropout", "target": "Tbot", "start": 0.0})

        async def invalid() -> bool:
            return await plc.value("measurement_validity") == 0

        await _eventually(invalid)  # Modbus's stand-in for quality
        await inject({"kind": "comm_bad_status", "target": "product_temp_bottom", "start": 0.0})
        spec = TAGS.tags["product_temp_bottom"].modbus
        assert spec is not None

        async def refused() -> bool:
            rr = await client.read_input_registers(spec.protocol_address, count=1)
            return bool(rr.isError() and rr.exception_code == 4)

        await _eventually(refused)
        wrong = await rig.admin(LYO_MODBUS, {"cmd": "inject", "fault": {"kind": "nope"}})
        assert not wrong["ok"] and "kind" in str(wrong["error"])
        status = (await rig.admin(LYO_MODBUS, {"cmd": "status"}))["status"]
        assert isinstance(status, dict)  # the plant ran on the test's clock, and only on it
        assert status["t_model"] == pytest.approx(3 * PLANT_STEPS_S / 3600.0, abs=0.021)
    finally:
        client.close()


async def test_opcua_handshake_and_out_of_range(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PHARMATWIN_OPCUA_PASSWORD", "s3cret")
    rig = await _start(LYO_OPCUA, tmp_path)
    # The site is secured: SignAndEncrypt only, with a client certificate of the test CA; the
    # server's own certificate was made on its first start in the state folder.
    client = Client(f"opc.tcp://127.0.0.1:{rig.port}/pharmatwin/", timeout=5)
    client.application_uri = "urn:pharmatwin:controller"
    await client.set_security(
        SecurityPolicyBasic256Sha256,
        str(PKI / "pharmatwin-client.der"),
        str(PKI / "pharmatwin-client.key.pem"),
        server_certificate=str(tmp_path / "lyophilizer-opcua" / "server-cert.der"),
        mode=ua.MessageSecurityMode.SignAndEncrypt,
    )
    client.set_user("operator")
    client.set_password("s3cret")
    try:
        async with client:
            node = client.get_node
            assert await node("ns=2;s=lyophilizer.mpc_permissive").read_value() is True
            units = await node("ns=2;s=lyophilizer.shelf_temp_sp").get_child("0:EngineeringUnits")
            assert (await units.read_value()).DisplayName.Text == "degC"
            sp = node("ns=2;s=lyophilizer.shelf_temp_sp")
            with pytest.raises(ua.UaStatusCodeError, match="BadInvalidState"):
                await sp.write_value(ua.Variant(-30.0, ua.VariantType.Double))  # not active
            await node("ns=2;s=lyophilizer.mpc_request").write_value(True)
            hb = node("ns=2;s=lyophilizer.mpc_heartbeat")
            for k in range(1, 40):
                await hb.write_value(ua.Variant(k, ua.VariantType.UInt16))
                if await node("ns=2;s=lyophilizer.mpc_active").read_value():
                    break
                await asyncio.sleep(0.05)
            assert await node("ns=2;s=lyophilizer.mpc_active").read_value() is True
            with pytest.raises(ua.UaStatusCodeError, match="BadOutOfRange"):
                await sp.write_value(ua.Variant(500.0, ua.VariantType.Double))
    finally:
        await _stop(rig)


def test_serve_command_stops_cleanly_on_sigint(tmp_path: Path) -> None:
    port = free_port()
    cmd = [
        sys.executable,
        "-m",
        "hil.cli",
        "serve",
        str(LYO_MODBUS),
        "--rate",
        "600",
        "--modbus-port",
        str(port),
        "--state-dir",
        str(tmp_path),
    ]
    env = dict(os.environ, COLUMNS="240")
    proc = subprocess.Popen(
        cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env
    )
    try:
        assert proc.stdout is not None
        # the announcement (log lines on stderr, merged here, may come before it)
        first = ""
        for _ in range(20):
            first = proc.stdout.readline()
            if first.startswith("serving ") or not first:
                break
        assert "serving lyophilizer-modbus" in first and f"127.0.0.1:{port}" in first
        state = json.loads((tmp_path / "lyophilizer-modbus.json").read_text())
        assert state["ports"] == {"modbus": port}
        proc.send_signal(signal.SIGINT)
        out, _ = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, out
    assert "stopped at t=" in out and "log: " in out
    log = (tmp_path / "lyophilizer-modbus.log").read_text()
    assert "serving lyophilizer-modbus" in log
    assert not (tmp_path / "lyophilizer-modbus.json").exists()


def test_serve_refuses_a_non_loopback_address(tmp_path: Path) -> None:
    from hil.cli import main

    argv = ["serve", str(LYO_MODBUS), "--host", "192.0.2.1", "--state-dir", str(tmp_path)]
    assert main(argv) == 2


async def test_a_refused_multi_tag_write_changes_nothing(modbus_rig: Rig) -> None:
    """Tsh in range and Pch out of range in ONE request: exception 03 and Tsh not applied."""
    client = AsyncModbusTcpClient("127.0.0.1", port=modbus_rig.port, timeout=2)
    await client.connect()
    plc = Plc(client)
    try:
        beat = asyncio.Event()
        hb = asyncio.create_task(_heartbeat(plc, beat))
        await plc.write("mpc_request", 1)
        await plc.until("mpc_active", True)
        tsh = await plc.value("shelf_temp_sp")
        t_spec, p_spec = TAGS.tags["shelf_temp_sp"].modbus, TAGS.tags["chamber_pressure_sp"].modbus
        assert t_spec is not None and p_spec is not None
        assert p_spec.protocol_address == t_spec.protocol_address + 2  # contiguous
        regs = encode("shelf_temp_sp", t_spec, tsh + 0.5) + encode(
            "chamber_pressure_sp", p_spec, 0.9
        )
        rr = await client.write_registers(t_spec.protocol_address, regs)
        assert rr.isError() and rr.exception_code == 3
        await asyncio.sleep(0.2)
        assert await plc.value("shelf_temp_pv") == pytest.approx(tsh, abs=1e-4)
        beat.set()
        await hb
    finally:
        client.close()


# --------------------------------------------------- the HIL log and the serve options
class _Heard(logging.Handler):
    """Sets ``event`` when a record containing ``text`` is logged."""

    def __init__(self, text: str) -> None:
        super().__init__()
        self.text, self.event = text, asyncio.Event()

    def emit(self, record: logging.LogRecord) -> None:
        if self.text in record.getMessage():
            self.event.set()


async def _heard(text: str) -> AsyncIterator[_Heard]:
    heard = _Heard(text)
    logger = logging.getLogger("hil.servers.modbus")
    logger.addHandler(heard)
    try:
        yield heard
    finally:
        logger.removeHandler(heard)


async def test_the_hil_log_gets_refusals_connects_and_disconnects(modbus_rig: Rig) -> None:
    async for heard in _heard("disconnected"):
        client = AsyncModbusTcpClient("127.0.0.1", port=modbus_rig.port, timeout=2)
        await client.connect()
        plc = Plc(client)
        assert await plc.write("shelf_temp_sp", -34.0) == 3  # not active
        assert await plc.value("write_refusal_code") == 1  # the reason, for the client
        client.close()
        await asyncio.wait_for(heard.event.wait(), 10)
    text = (modbus_rig.state_dir / "lyophilizer-modbus.log").read_text()
    served = f"127.0.0.1:{modbus_rig.port}"
    assert re.search(rf"INFO hil\.servers\.modbus: 127\.0\.0\.1:\d+ connected to {served}", text)
    assert (
        "WARNING hil.servers.modbus: refused a write of shelf_temp_sp = -34.0: shelf_temp_sp: "
        "remote setpoints are accepted only while the MPC is active (not active; function 16, "
        "unit 1, holding 0)"
    ) in text
    assert re.search(
        rf"INFO hil\.servers\.modbus: 127\.0\.0\.1:\d+ disconnected from {served}", text
    )


async def test_serve_answers_a_wrong_unit_as_told(tmp_path: Path) -> None:
    """``--wrong-unit silent``: a request for unit 7, handled, then one for unit 1 on the same
    connection; the first answer back is unit 1's (TCP keeps the order)."""
    rig = await _start(LYO_MODBUS, tmp_path, wrong_unit="silent")
    read = bytes.fromhex("04 0015 0001")  # read input register 21 (plc_scan_counter)
    try:
        async for heard in _heard("asked unit 7"):
            reader, writer = await asyncio.open_connection("127.0.0.1", rig.port)
            writer.write(bytes.fromhex("0001 0000 0006 07") + read)
            await asyncio.wait_for(heard.event.wait(), 10)
            writer.write(bytes.fromhex("0002 0000 0006 01") + read)
            answer = await asyncio.wait_for(reader.readexactly(9), 10)
            writer.close()
    finally:
        await _stop(rig)
    assert answer[:2] == b"\x00\x02" and answer[6:9] == b"\x01\x04\x02"  # unit 1's answer
    assert "asked unit 7, which is not here (units [1]): no answer" in (
        (tmp_path / "lyophilizer-modbus.log").read_text()
    )
