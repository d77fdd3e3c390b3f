"""The in-memory port: a tag table shared by a "PLC side" and the controller, no network.

The offline digital model (``pharmatwin-hil simulate``) and the tests use it, so the offline
loop goes through the same :class:`~controller.ports.base.Port` interface as the networked
one. The PLC side (the plant runner) calls :meth:`TagTable.publish`; the controller side reads
and writes through :class:`MemoryPort`. Writes to tags that are not writable are refused
before anything changes.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field

from controller.clock import Clock
from controller.errors import PortConnectError, PortError
from controller.ports.base import (
    Port,
    Quality,
    Snapshot,
    TagValue,
    WriteReport,
    WriteResult,
    WriteStatus,
    flag_all,
)
from controller.tags import TagMap


@dataclass
class TagTable:
    """The PLC's tag table: current values, quality, source times and writable limits."""

    values: dict[str, TagValue] = field(default_factory=dict)
    writable: dict[str, tuple[float, float]] = field(default_factory=dict)
    #: The PLC side's own acceptance check (a returned reason refuses the write; nothing
    #: changes), then its hook, called for every accepted value, as the HIL servers do.
    write_check: Callable[[str, float], str | None] | None = None
    write_hook: Callable[[str, float], str | None] | None = None

    def publish(
        self, now: float, values: Mapping[str, float], quality: Quality = Quality.GOOD
    ) -> None:
        """The PLC side updates tag values (e.g. new measurements) at process time ``now``."""
        for tag, v in values.items():
            self.values[tag] = TagValue(float(v), quality, now, now)

    def allow_writes(self, tag: str, lower: float = -math.inf, upper: float = math.inf) -> None:
        """Make ``tag`` writable within [lower, upper] (the PLC's own range check)."""
        self.writable[tag] = (lower, upper)

    def current(self, tag: str) -> float:
        return self.values[tag].value


class MemoryPort(Port):
    """A :class:`Port` onto a :class:`TagTable`."""

    def __init__(self, table: TagTable, clock: Clock, tags: TagMap | None = None) -> None:
        self.table = table
        self.clock = clock
        self._open = False
        #: with a tag map, reads are flagged as every port flags them (not finite: BAD;
        #: outside the engineering limits: UNCERTAIN)
        self.tags = tags

    async def connect(self) -> None:
        self._open = True

    async def close(self) -> None:
        self._open = False

    def _require_open(self) -> None:
        if not self._open:
            raise PortConnectError("memory port is not open; use 'async with MemoryPort(...)'")

    async def read(self, tags: Iterable[str]) -> Snapshot:
        self._require_open()
        now = self.clock.now()
        names = list(tags)
        unknown = [t for t in names if t not in self.table.values]
        if unknown:
            raise PortError(f"unknown tag(s) {unknown}; the table has {sorted(self.table.values)}")
        values = {
            t: TagValue(v.value, v.quality, v.source_time, now, v.detail)
            for t in names
            for v in (self.table.values[t],)
        }
        if self.tags is not None:
            values = flag_all(values, self.tags.tags)
        return Snapshot(values, now)

    async def write(self, values: Mapping[str, float]) -> WriteReport:
        """Validate every value first; if any is refused, nothing changes (others NOT_SENT)."""
        self._require_open()
        now = self.clock.now()
        refused = {tag: why for tag, v in values.items() if (why := self._refusal(tag, v))}
        results: dict[str, WriteResult] = {}
        for tag, requested in values.items():
            if tag in refused:
                current = self.table.values.get(tag)
                readback = current.value if current is not None else None
                results[tag] = WriteResult(
                    tag, requested, WriteStatus.REJECTED, readback, refused[tag]
                )
            elif refused:
                results[tag] = WriteResult(
                    tag, requested, WriteStatus.NOT_SENT, None, "not sent: another tag was refused"
                )
            else:
                hook = self.table.write_hook
                if hook is not None and (reason := hook(tag, float(requested))):
                    current = self.table.values.get(tag)
                    readback = current.value if current is not None else None
                    results[tag] = WriteResult(
                        tag, requested, WriteStatus.REJECTED, readback, reason
                    )
                    continue
                self.table.values[tag] = TagValue(float(requested), Quality.GOOD, now, now)
                readback = self.table.values[tag].value
                status = WriteStatus.OK if readback == requested else WriteStatus.MISMATCH
                results[tag] = WriteResult(tag, requested, status, readback)
        return WriteReport(results, now)

    def _refusal(self, tag: str, requested: float) -> str:
        limits = self.table.writable.get(tag)
        if limits is None:
            known = "read-only" if tag in self.table.values else "unknown"
            return f"tag {tag!r} is not writable ({known})"
        lo, hi = limits
        if not (math.isfinite(requested) and lo <= requested <= hi):
            return f"{tag}={requested} outside the allowed range [{lo}, {hi}]"
        check = self.table.write_check
        if check is not None and (why := check(tag, float(requested))):
            return why
        return ""


def table_from_tag_map(tags: TagMap, initial: Mapping[str, float] | None = None) -> TagTable:
    """A tag table laid out from a tag map: every tag present, writable ones with limits."""
    table = TagTable()
    for name, tag in tags.tags.items():
        lo, hi = tag.limits if tag.limits is not None else (-math.inf, math.inf)
        if tag.writable:
            table.allow_writes(name, lo, hi)
        start = (initial or {}).get(name, min(max(0.0, lo), hi))
        table.values[name] = TagValue(float(start), Quality.GOOD, 0.0, 0.0)
    return table
