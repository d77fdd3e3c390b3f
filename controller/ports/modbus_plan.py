"""How the Modbus port groups tags into requests: blocks of registers or bits (pure, no I/O).

A :class:`Block` is one request's run of registers (or bits) of one table of one unit,
0-based. :func:`plan_blocks` groups tags per (unit, table) into runs within a size limit,
merging neighbours separated by at most ``gap`` unused registers (0 for writes: a write must
never touch a register no tag holds). The protocol's limits are here too: at most 125
registers per read (FC 3/4), 123 per write (FC 16) and 121 written by a Read/Write Multiple
Registers request (FC 23), whose read-back part is the written block itself.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from controller.codecs import DataType
from controller.tags import ModbusSpec, Table

MAX_READ_REGISTERS = 125
MAX_READ_BITS = 2000
MAX_WRITE_REGISTERS = 123
MAX_WRITE_BITS = 1968
#: FC 23 (Read/Write Multiple Registers) writes at most 121 registers (0x79) per request
MAX_READ_WRITE_REGISTERS = 121
MAX_GAP = 16

EXCEPTION_NAMES = {
    0x01: "illegal function",
    0x02: "illegal data address",
    0x03: "illegal data value",
    0x04: "server device failure",
    0x05: "acknowledge",
    0x06: "server device busy",
    0x07: "negative acknowledge",
    0x08: "memory parity error",
    0x0A: "gateway path unavailable",
    0x0B: "gateway target device failed to respond",
}
#: Exception 01: the PLC does not implement the request's function code.
ILLEGAL_FUNCTION = 0x01

Member = tuple[str, ModbusSpec]
BlockKey = tuple[int, Table, int, int]


def exception_text(code: int) -> str:
    """``"02 illegal data address"``."""
    return f"Modbus exception {code:02X} {EXCEPTION_NAMES.get(code, 'unknown')}"


@dataclass(frozen=True)
class Block:
    """One request: a run of registers (or bits) of one table of one unit, 0-based."""

    unit_id: int
    table: Table
    start: int
    count: int
    members: tuple[Member, ...]

    @property
    def bits(self) -> bool:
        return self.table in (Table.COIL, Table.DISCRETE)

    @property
    def key(self) -> BlockKey:
        return (self.unit_id, self.table, self.start, self.count)

    def describe(self) -> str:
        names = ", ".join(name for name, _ in self.members)
        end = self.start + self.count - 1
        return f"{self.table} {self.start}..{end} (0-based) of unit {self.unit_id} [{names}]"


def plan_blocks(
    members: Iterable[Member], max_registers: int, max_bits: int, gap: int
) -> list[Block]:
    """Group tags into requests per (unit, table): runs within the size limit and ``gap``."""
    blocks: list[Block] = []
    run: list[Member] = []
    end = 0  # one past the last register of ``run``
    ordered = sorted(members, key=lambda m: (m[1].unit_id, m[1].table, m[1].protocol_address))
    for member in ordered:
        spec = member[1]
        if run and not _joins(run[0][1], end, spec, max_registers, max_bits, gap):
            blocks.append(block_of(run, end))
            run = []
        end = max(end, spec.protocol_address + spec.count) if run else _stop(spec)
        run.append(member)
    return [*blocks, block_of(run, end)] if run else blocks


def _stop(spec: ModbusSpec) -> int:
    return spec.protocol_address + spec.count


def _joins(
    first: ModbusSpec, end: int, spec: ModbusSpec, max_registers: int, max_bits: int, gap: int
) -> bool:
    if (first.unit_id, first.table) != (spec.unit_id, spec.table):
        return False
    limit = max_bits if spec.type is DataType.BOOL else max_registers
    new_end = max(end, _stop(spec))
    return spec.protocol_address - end <= gap and new_end - first.protocol_address <= limit


def block_of(run: list[Member], end: int | None = None) -> Block:
    """The block of ``run`` (tags of one unit and table, in address order)."""
    first = run[0][1]
    stop = end if end is not None else max(_stop(s) for _, s in run)
    return Block(
        first.unit_id,
        first.table,
        first.protocol_address,
        stop - first.protocol_address,
        tuple(run),
    )


def read_plan(members: Iterable[Member]) -> list[Block]:
    """The read requests of ``members``: gaps of up to :data:`MAX_GAP` merged."""
    return plan_blocks(members, MAX_READ_REGISTERS, MAX_READ_BITS, MAX_GAP)


def split_without_gaps(block: Block) -> list[Block]:
    """``block`` as runs without unused registers (a PLC refused its gaps)."""
    return plan_blocks(block.members, MAX_READ_REGISTERS, MAX_READ_BITS, 0)


def write_plan(members: Iterable[Member], read_write: bool) -> list[Block]:
    """The write requests of ``members``: contiguous runs only, at most 121 registers per
    request with FC 23 (``read_write``), else 123."""
    registers = MAX_READ_WRITE_REGISTERS if read_write else MAX_WRITE_REGISTERS
    return plan_blocks(members, registers, MAX_WRITE_BITS, 0)
