"""The HIL Modbus server answers each request as a task of its own loop
(hil.servers.modbus_wire.PlcHandler.handle_later), without pymodbus's thread-safe hop."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Coroutine
from pathlib import Path
from typing import Any

import pytest
from conftest import LOOPBACK
from pymodbus.client import AsyncModbusTcpClient
from pymodbus.exceptions import ModbusIOException
from pymodbus.server import requesthandler

from controller.tags import load_tag_map
from hil.servers import modbus_wire
from hil.servers.modbus import ModbusPlcServer

pytestmark = pytest.mark.timeout(60)
ROOT = Path(__file__).resolve().parents[2]
TAGS = load_tag_map(ROOT / "configs/tags/cstr.yaml")


@pytest.fixture
async def client() -> AsyncIterator[tuple[ModbusPlcServer, AsyncModbusTcpClient]]:
    async with ModbusPlcServer(TAGS) as server:
        await server.publish({"mpc_heartbeat": 7})
        mb = AsyncModbusTcpClient(LOOPBACK, port=server.port, retries=0, reconnect_delay=0)
        await mb.connect()
        yield server, mb
        mb.close()


async def test_requests_are_answered_without_a_thread_safe_hop(
    client: tuple[ModbusPlcServer, AsyncModbusTcpClient], monkeypatch: pytest.MonkeyPatch
) -> None:
    server, mb = client
    hops: list[object] = []

    def hop(coro: Coroutine[Any, Any, Any], loop: asyncio.AbstractEventLoop) -> None:
        hops.append(coro)
        coro.close()

    # pymodbus's own handler hops here (and with this stub would never answer)
    monkeypatch.setattr(requesthandler.asyncio, "run_coroutine_threadsafe", hop)
    address = TAGS.tags["mpc_heartbeat"].modbus
    assert address is not None
    for value in (7, 8, 9):
        if value != 7:
            await server.publish({"mpc_heartbeat": value})
        answer = await mb.read_holding_registers(address.protocol_address, count=1, device_id=1)
        assert not answer.isError() and answer.registers == [value]
    assert hops == [] and not modbus_wire._ANSWERING


async def test_a_failure_to_answer_is_logged_not_lost(
    client: tuple[ModbusPlcServer, AsyncModbusTcpClient],
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    _, mb = client

    async def broken(self: modbus_wire.PlcHandler) -> None:
        raise RuntimeError("the PLC logic crashed")

    monkeypatch.setattr(modbus_wire.PlcHandler, "handle_request", broken)
    mb.ctx.comm_params.timeout_connect = 0.3
    no_answer = pytest.raises(ModbusIOException)  # pymodbus times out
    with caplog.at_level(logging.ERROR, logger="hil.servers.modbus"), no_answer:
        await mb.read_holding_registers(0, count=1, device_id=1)
    assert "answering a request failed" in caplog.text and "the PLC logic crashed" in caplog.text
