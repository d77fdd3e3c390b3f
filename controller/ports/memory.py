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
from controller.ports.writecheck import WriteCheck, WriteRule, refused_report, unreadable
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
        self._check: WriteCheck | None = None  # built at the first write, then kept

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
        table = self.table.values
        if not all(t in table for t in names):  # every tag of the table is readable
            problems = unreadable(dict.fromkeys(table, True), names)
            raise PortError(f"cannot read from the memory port: {'; '.join(problems)}")
        values = {
            t: TagValue(v.value, v.quality, v.source_time, now, v.detail)
            for t in names
            for v in (self.table.values[t],)
        }
        if self.tags is not None:
            values = flag_all(values, self.tags.tags)
        return Snapshot(values, now)

    async def write(self, values: Mapping[str, float]) -> WriteReport:
        """Check every value first (:mod:`~controller.ports.writecheck`, then the PLC side's
        own range and acceptance check); if any is refused, nothing changes (others NOT_SENT)."""
        self._require_open()
        now = self.clock.now()
        refused = self._write_check().refusals(values)
        plc = {t: v for t, v in values.items() if t not in refused}
        refused |= {t: why for t, v in plc.items() if (why := self._plc_refusal(t, v))}
        if refused:
            return refused_report(values, refused, now)
        results: dict[str, WriteResult] = {}
        for tag, requested in values.items():
            hook = self.table.write_hook
            if hook is not None and (reason := hook(tag, float(requested))):
                results[tag] = WriteResult(tag, requested, WriteStatus.REJECTED, None, reason)
                continue
            self.table.values[tag] = TagValue(float(requested), Quality.GOOD, now, now)
            readback = self.table.values[tag].value
            status = WriteStatus.OK if readback == requested else WriteStatus.MISMATCH
            results[tag] = WriteResult(tag, requested, status, readback)
        return WriteReport(results, now)

    def _write_check(self) -> WriteCheck:
        """The tag map's write check; without a map, the table's (its writable tags and their
        ranges: every other tag of the table is read-only). Built once: neither changes."""
        if self._check is None:
            if self.tags is not None:
                self._check = WriteCheck.of_tags(self.tags.tags)
            else:
                rules = {t: WriteRule(False) for t in self.table.values}
                rules |= {t: WriteRule(True, lim) for t, lim in self.table.writable.items()}
                self._check = WriteCheck(rules)
        return self._check

    def _plc_refusal(self, tag: str, requested: float) -> str:
        """The PLC side's own refusal: its write range, then its acceptance check."""
        if tag not in self.table.writable:
            return f"the PLC refused {tag}={requested}: the tag is not writable on the PLC"
        lo, hi = self.table.writable[tag]
        if not lo <= requested <= hi:
            return f"the PLC refused {tag}={requested}: outside its write range [{lo}, {hi}]"
        check = self.table.write_check
        return (check(tag, float(requested)) or "") if check is not None else ""


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
