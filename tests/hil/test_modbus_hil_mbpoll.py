"""Interoperability with an independent Modbus stack: mbpoll (libmodbus, the Debian package;
``.ci/run`` installs it) against the HIL Modbus server, as an automation engineer would use it.

What the tag-map headers say is checked here: mbpoll reads a float32 ABCD tag with ``-B``, its
default 32-bit order is CDAB; a refused write gets a Modbus exception and the reason is in the
PLC's diagnostic registers; an unmapped register is exception 02; a wrong unit id gets the
gateway's answer.
"""

from __future__ import annotations

import asyncio
import re
import shutil
import struct
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from controller.runtime.commissioning import REFUSAL_TAGS, RefusalCode
from controller.runtime.site import load_site
from controller.tags import ModbusSpec, load_tag_map
from hil.servers.modbus import ModbusPlcServer
from hil.site import hil_section
from hil.vplc import VirtualPlc

ROOT = Path(__file__).resolve().parents[2]
SITE = load_site(ROOT / "configs" / "sites" / "lyophilizer-modbus.yaml")
BIOREACTOR = load_tag_map(ROOT / "configs" / "tags" / "bioreactor.yaml")
pytestmark = pytest.mark.timeout(60)


def _spec(tag: str, tags: object = None) -> ModbusSpec:
    spec = (BIOREACTOR if tags == "bioreactor" else SITE.tags).tags[tag].modbus
    assert spec is not None
    return spec


async def mbpoll(port: int, *args: str, write: tuple[str, ...] = ()) -> tuple[int, str]:
    """Run mbpoll once against 127.0.0.1:``port`` with 0-based addresses, reading, or writing
    ``write``; (exit code, output)."""
    exe = shutil.which("mbpoll")
    assert exe is not None, "mbpoll is not installed: apt-get install -y mbpoll (.ci/run does)"
    proc = await asyncio.create_subprocess_exec(
        exe, "-m", "tcp", "-p", str(port), "-0", "-1", "-o", "2", *args, "127.0.0.1",
        *(("--", *write) if write else ()),
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
    )  # fmt: skip
    out, _ = await asyncio.wait_for(proc.communicate(), 30)
    assert proc.returncode is not None
    return proc.returncode, out.decode()


def values(output: str) -> dict[int, float]:
    """mbpoll's ``[address]: value`` lines."""
    return {int(a): float(v) for a, v in re.findall(r"^\[(\d+)\]:\s+(\S+)$", output, re.M)}


@pytest.fixture
async def lyophilizer() -> AsyncIterator[ModbusPlcServer]:
    """The lyophilizer's PLC: the virtual PLC's write checks behind the Modbus server."""
    hil = hil_section(SITE)
    assert hil is not None
    plc = VirtualPlc(SITE.tags, hil.plc, ("Tsh", "Pch"), {"Tsh": -35.0, "Pch": 0.15})
    async with ModbusPlcServer(SITE.tags) as server:
        server.write_hook, server.write_check = plc.on_write, plc.check_write
        applied = plc.scan(0.0, 0.0, {"Tbot": -30.0})
        await server.publish(plc.image({"Tbot": -30.0}, set(), applied))
        yield server


async def test_mbpoll_reads_a_float32_abcd_tag_with_B(lyophilizer: ModbusPlcServer) -> None:
    lyophilizer.set_value("shelf_temp_pv", -31.4159)
    lyophilizer.set_value("chamber_pressure_pv", 0.1234)
    spec = _spec("shelf_temp_pv")
    assert (spec.order.value, spec.type.value) == ("ABCD", "float32")
    assert _spec("chamber_pressure_pv").protocol_address == spec.protocol_address + 2
    code, out = await mbpoll(
        lyophilizer.port, "-B", "-t", "3:float", "-r", str(spec.protocol_address), "-c", "2"
    )
    assert code == 0, out
    assert values(out) == {
        spec.protocol_address: pytest.approx(-31.4159, rel=1e-6),
        spec.protocol_address + 2: pytest.approx(0.1234, rel=1e-6),
    }
    # without -B mbpoll takes the words in CDAB order: the same registers read as garbage
    code, out = await mbpoll(lyophilizer.port, "-t", "3:float", "-r", str(spec.protocol_address))
    assert code == 0, out
    wrong = values(out)[spec.protocol_address]
    swapped = struct.unpack(">f", struct.pack(">f", -31.4159)[2:] + struct.pack(">f", -31.4159)[:2])
    assert wrong == pytest.approx(swapped[0], rel=1e-5) and abs(wrong + 31.4159) > 1


async def test_mbpoll_reads_a_cdab_tag_by_default() -> None:
    spec = _spec("product_titer", "bioreactor")
    assert spec.order.value == "CDAB"
    async with ModbusPlcServer(BIOREACTOR) as server:
        server.set_value("product_titer", 2.718)
        code, out = await mbpoll(server.port, "-t", "3:float", "-r", str(spec.protocol_address))
    assert code == 0, out
    assert values(out) == {spec.protocol_address: pytest.approx(2.718, rel=1e-6)}


async def test_mbpoll_sees_the_refusal_and_reads_its_reason(lyophilizer: ModbusPlcServer) -> None:
    sp = _spec("shelf_temp_sp").protocol_address
    code, out = await mbpoll(lyophilizer.port, "-B", "-t", "4:float", "-r", str(sp), write=("-34",))
    assert code != 0 and "Illegal data value" in out, out  # exception 03: not active
    first = _spec(REFUSAL_TAGS[0]).protocol_address
    code, out = await mbpoll(lyophilizer.port, "-t", "3", "-r", str(first), "-c", "4")
    assert code == 0, out
    assert values(out) == {
        first: RefusalCode.NOT_ACTIVE,
        first + 1: 16,  # write multiple registers
        first + 2: sp,
        first + 3: 1,
    }


async def test_mbpoll_unmapped_register_and_wrong_unit(lyophilizer: ModbusPlcServer) -> None:
    code, out = await mbpoll(lyophilizer.port, "-t", "4", "-r", "5", write=("1234",))
    assert code != 0 and "Illegal data address" in out, out
    assert lyophilizer.get_registers(_spec("shelf_temp_sp").table, 5, 1) == [0]
    code, out = await mbpoll(lyophilizer.port, "-a", "7", "-t", "3", "-r", "0")
    assert code != 0 and "Target device failed to respond" in out, out  # exception 0B
