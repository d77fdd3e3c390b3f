"""Is an answer the answer to the request the Modbus port sent? (Pure, no I/O, no pymodbus.)

pymodbus hands back the first frame it can decode: it takes a frame with transaction id 0 for
any request, does not compare the answer's function code with the request's, and decodes as
many registers as the frame holds. The port checks every answer here before using it:

- its function code (without the exception bit 0x80) is the one sent: an FC 1 answer to an FC 2
  read is a coil read, not the discrete inputs asked for;
- its transaction id is the request's (never 0: pymodbus numbers TCP requests from 1);
- an answer carrying data (FC 1-4, FC 23) carries the block's count of registers exactly, or
  of bits at least the count and at most the next multiple of 8 (whole bytes: pymodbus unpacks
  the padding bits too);
- a write's answer (FC 15, FC 16) echoes the block's start address and count (an echo of
  another span is the answer to another write).

pymodbus also skips, and waits on past, a frame whose non-zero transaction id or whose unit id
is not the request's: the request would end as a timeout although the PLC answered, wrongly.
The port's receive path checks the MBAP header of every frame first (:func:`frame_mismatch`)
and fails the request at once with :class:`WrongAnswer`.

A Modbus exception answer to the request passes (its callers handle it: tags BAD or REJECTED,
exception 01 to FC 23, exception 02 to a merged block).
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import Any

from controller.ports.modbus_plan import Block, exception_text
from controller.tags import ModbusSpec, Table

#: the function code of a read, per table
READ_FUNCTION = {Table.COIL: 1, Table.DISCRETE: 2, Table.HOLDING: 3, Table.INPUT: 4}
WRITE_COILS = 15
WRITE_REGISTERS = 16
#: Read/Write Multiple Registers: the write, then the block read back, in one request
READ_WRITE_REGISTERS = 23
FUNCTION_NAMES = {
    1: "read coils",
    2: "read discrete inputs",
    3: "read holding registers",
    4: "read input registers",
    5: "write single coil",
    6: "write single register",
    15: "write multiple coils",
    16: "write multiple registers",
    23: "read/write multiple registers",
}
#: the functions whose answer carries the block's values
_CARRY_VALUES = frozenset({*READ_FUNCTION.values(), READ_WRITE_REGISTERS})
EXCEPTION_BIT = 0x80


@dataclass(frozen=True)
class Answer:
    """What the port checks of a decoded answer: its function code (0x80 set for a Modbus
    exception), its transaction id, and how many registers (or bits) it carries."""

    function: int
    transaction_id: int
    values: int
    echo: tuple[int, int] = (-1, -1)  # a write's answer: the start address and count it names


def answer_of(pdu: Any, block: Block) -> Answer:
    """The checked parts of a decoded answer (a pymodbus PDU, read by its attributes)."""
    values = len(pdu.bits if block.bits else pdu.registers)
    echo = (getattr(pdu, "address", -1), getattr(pdu, "count", -1))
    return Answer(pdu.function_code, pdu.transaction_id, values, echo)


def function_text(code: int) -> str:
    """``"FC 2 (read discrete inputs)"``."""
    return f"FC {code} ({FUNCTION_NAMES.get(code, 'unknown')})"


def mismatch(block: Block, function: int, transaction_id: int, answer: Answer) -> str | None:
    """Why ``answer`` is not the answer to the request (``function``, ``transaction_id``) for
    ``block``, in words ("expected ..., got ..."); None when it is."""
    got = answer.function & 0x7F  # an exception answer carries the function | 0x80
    if got != function:
        exception = "a Modbus exception answer to " if answer.function & EXCEPTION_BIT else ""
        return f"expected {function_text(function)}, got {exception}{function_text(got)}"
    if answer.transaction_id != transaction_id:
        return f"expected transaction id {transaction_id}, got {answer.transaction_id}"
    if answer.function & EXCEPTION_BIT:
        return None
    if function in (WRITE_COILS, WRITE_REGISTERS):
        if answer.echo == (block.start, block.count):
            return None
        address, count = answer.echo
        return (
            f"expected the echo of start {block.start}, count {block.count}, "
            f"got start {address}, count {count}"
        )
    if function not in _CARRY_VALUES:
        return None
    low, high = block.count, block.count
    what = "registers"
    if block.bits:
        high, what = -(-block.count // 8) * 8, "bits"  # whole bytes of bits
    if low <= answer.values <= high:
        return None
    expected = f"{low}" if low == high else f"{low} to {high}"
    return f"expected {expected} {what}, got {answer.values}"


#: the MBAP header of a Modbus TCP frame: transaction id, protocol id, length, unit id
MBAP = struct.Struct(">HHHB")


def frame_mismatch(data: bytes, transaction_id: int, unit_id: int) -> str | None:
    """Why the frame at the start of ``data`` (received bytes, MBAP header first) is not the
    answer to the request sent with ``transaction_id`` and ``unit_id``, in words ("expected
    ..., got ..."); None when it may be: its header is not all there yet, its ids are the
    request's, or its transaction id is 0 (pymodbus takes it; :func:`mismatch` refuses it once
    decoded). A request id of 0 (nothing sent; unit id 0: any unit answers) is not compared."""
    if len(data) < MBAP.size:
        return None
    tid, _, _, unit = MBAP.unpack_from(data)
    if tid and transaction_id and tid != transaction_id:
        return f"expected transaction id {transaction_id}, got {tid}"
    if unit_id and unit != unit_id:
        return f"expected unit id {unit_id}, got {unit}"
    return None


class WrongAnswer(Exception):
    """A frame from the PLC that is not the answer to the pending request (another transaction
    or unit id: :func:`frame_mismatch`), seen before pymodbus would skip it."""


class MalformedAnswer(Exception):
    """pymodbus could not decode a frame from the PLC (its reason, and the bytes received)."""


def quote_received(data: bytes, shown: int = 24) -> str:
    """``"received 9 bytes: 00 01 00 00 00 03 01 04 02"`` (at most ``shown`` bytes quoted)."""
    more = " ..." if len(data) > shown else ""
    return f"received {len(data)} bytes: {data[:shown].hex(' ')}{more}"


def refusal(name: str, spec: ModbusSpec, block: Block, exception_code: int, verb: str) -> str:
    """Why the PLC refused a request (its Modbus exception answer), for one tag of its block."""
    where = f"{spec.table} {spec.protocol_address} (0-based) of unit {spec.unit_id}"
    span = f"{block.table} {block.start}..{block.start + block.count - 1}"
    return f"tag {name!r} at {where}: {exception_text(exception_code)} to the {verb} of {span}"
