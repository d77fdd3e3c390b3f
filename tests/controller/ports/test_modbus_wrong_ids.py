"""An answer of another transaction (or unit) is a wrong answer, not a timeout.

pymodbus skips a frame whose non-zero transaction id, or whose unit id, is not the pending
request's, and keeps waiting: before, a PLC (or gateway) answering with the wrong id ended as
PortTimeoutError "no answer ... within 0.5 s", when it had answered, wrongly. The port now
sees the frame in its receive path: ProtocolError naming the expected and received id, the
connection dropped (the stream is out of step), and the next read, on a new connection, gets
the PLC's real values. The rogue PLC is the raw asyncio server of
``test_modbus_rogue_answers`` on 127.0.0.1.
"""

from __future__ import annotations

import pytest
from test_modbus_rogue_answers import (
    MEASUREMENTS,
    SETPOINTS,
    TRUE_VALUES,
    Tamper,
    frame,
    honest,
    only,
    rogue_and_port,
)

from controller.errors import ProtocolError
from controller.ports.base import Quality

pytestmark = pytest.mark.timeout(60)


def _once(tamper_id: str, value: int) -> Tamper:
    """Answer the first request with ``tamper_id`` (``tid`` or ``unit``) set to ``value``,
    then honestly."""
    sent = {"done": False}

    def tamper(tid: int, unit: int, request: bytes, answer: bytes) -> bytes:
        if sent["done"]:
            return frame(tid, unit, answer)
        sent["done"] = True
        if tamper_id == "tid":
            return frame(value, unit, answer)
        return frame(tid, value, answer)

    return tamper


async def test_a_read_answered_with_another_transaction_id_is_a_wrong_answer() -> None:
    async with rogue_and_port(only(4, _once("tid", 7))) as (rogue, port):
        with pytest.raises(ProtocolError) as caught:
            await port.read(MEASUREMENTS)
        assert not port.connected  # out of step: dropped
        snapshot = await port.read(MEASUREMENTS)  # a new connection: the real values
    message = str(caught.value)
    assert "expected transaction id 1, got 7" in message, message
    assert "read of input 0..21 (0-based) of unit 1" in message
    assert "connection dropped" in message and "\n" not in message
    assert snapshot.values["conc_a"].value == TRUE_VALUES["conc_a"]
    assert snapshot.values["conc_a"].quality is Quality.GOOD
    assert rogue.requests == [4, 4]


async def test_a_write_answered_with_another_transaction_id_is_a_wrong_answer() -> None:
    async with rogue_and_port(only(23, _once("tid", 300))) as (_, port):
        with pytest.raises(ProtocolError, match="expected transaction id 1, got 300"):
            await port.write(SETPOINTS)
        assert not port.connected


async def test_an_answer_from_another_unit_is_a_wrong_answer() -> None:
    async with rogue_and_port(only(4, _once("unit", 9))) as (_, port):
        with pytest.raises(ProtocolError, match="expected unit id 1, got 9") as caught:
            await port.read(MEASUREMENTS)
        assert not port.connected
    assert "read of input 0..21 (0-based) of unit 1" in str(caught.value)


async def test_honest_answers_with_growing_transaction_ids_still_read() -> None:
    async with rogue_and_port(honest) as (_, port):
        for _ in range(3):  # transaction ids 1, 2, 3 on one connection
            snapshot = await port.read(MEASUREMENTS)
            assert snapshot.values["reactor_temp"].value == TRUE_VALUES["reactor_temp"]
        assert port.connected
