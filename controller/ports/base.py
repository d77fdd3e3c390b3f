"""One small port for every PLC: ``read(tags) -> Snapshot`` and ``write(values) -> WriteReport``.

A port is an async context manager. The supervisor (or the offline loop) is handed a port and
never builds one, as httpx's ``Client(transport=...)`` is handed a transport. Three
implementations share this interface: in-memory (offline and tests), Modbus TCP and OPC UA.

Times are process times in seconds from the one :class:`~controller.clock.Clock`.
Failures raise the :class:`~controller.errors.PortError` tree; a refused write of one tag is a
:class:`WriteResult` with status REJECTED, not an exception.
"""

from __future__ import annotations

import dataclasses
import math
from abc import ABC, abstractmethod
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from types import TracebackType
from typing import TYPE_CHECKING

from controller.errors import PortError

if TYPE_CHECKING:
    from controller.tags import Tag

#: The detail of a value read outside its tag's engineering ``limits``: the PLC's scaling or
#: the map's word order is the usual culprit (a CDAB value read as ABCD, a x0.01 lost).
OUTSIDE_LIMITS = "outside limits: wrong word order or scale?"
#: The detail of a value read as GOOD that is not a finite number (made BAD).
NOT_FINITE = "not a finite number"


class Quality(StrEnum):
    """OPC UA-style data quality of one value."""

    GOOD = "good"
    UNCERTAIN = "uncertain"
    BAD = "bad"


@dataclass(frozen=True)
class TagValue:
    """One value as read: engineering value, quality, source and read timestamps [s]."""

    value: float
    quality: Quality
    source_time: float
    read_time: float
    detail: str = ""  # why the quality is not GOOD (e.g. "Modbus exception 02 at input 100")

    def age(self, now: float) -> float:
        return now - self.source_time


@dataclass(frozen=True)
class Snapshot:
    """Every tag of one read, taken together."""

    values: Mapping[str, TagValue]
    read_time: float

    def __getitem__(self, tag: str) -> TagValue:
        return self.values[tag]

    def numbers(self, tags: Iterable[str] | None = None) -> dict[str, float]:
        names = self.values if tags is None else tags
        return {t: self.values[t].value for t in names}

    def bad(self, tags: Iterable[str]) -> list[str]:
        """Tags that are missing, not GOOD, or not finite."""
        out = []
        for t in tags:
            v = self.values.get(t)
            if v is None or v.quality is not Quality.GOOD or not math.isfinite(v.value):
                out.append(t)
        return out

    def stale(self, max_age: Mapping[str, float], now: float) -> list[str]:
        """Tags whose source timestamp is older than their allowed age [s]."""
        return [
            t
            for t, limit in max_age.items()
            if t in self.values and self.values[t].age(now) > limit
        ]


def flag_implausible(value: TagValue, tag: Tag | None) -> TagValue:
    """Mark what a read cannot vouch for (every port does this to every value it reads):

    * a GOOD value that is not a finite number becomes BAD (``detail`` says so);
    * a GOOD value outside the tag's engineering ``limits`` becomes UNCERTAIN, with the
      detail :data:`OUTSIDE_LIMITS` followed by the value and the limits.

    A value that is already UNCERTAIN or BAD keeps its quality and detail.
    """
    if value.quality is not Quality.GOOD:
        return value
    if not math.isfinite(value.value):
        why = f"{NOT_FINITE} ({value.value!r})"
        return dataclasses.replace(value, quality=Quality.BAD, detail=why)
    limits = tag.limits if tag is not None else None
    if limits is not None and not limits[0] <= value.value <= limits[1]:
        why = f"{OUTSIDE_LIMITS} (read {value.value:.6g}, limits [{limits[0]:g}, {limits[1]:g}])"
        return dataclasses.replace(value, quality=Quality.UNCERTAIN, detail=why)
    return value


def flag_all(values: Mapping[str, TagValue], tags: Mapping[str, Tag]) -> dict[str, TagValue]:
    """:func:`flag_implausible` on every value of one read."""
    return {name: flag_implausible(v, tags.get(name)) for name, v in values.items()}


class WriteStatus(StrEnum):
    OK = "ok"
    REJECTED = "rejected"  # refused by the port (read-only, unknown) or by the PLC (range)
    FAILED = "failed"  # sent, but the write or its read-back did not succeed
    MISMATCH = "mismatch"  # written, but the read-back differs from the request
    NOT_SENT = "not_sent"  # valid, but not sent because another tag of the write was refused


@dataclass(frozen=True)
class WriteResult:
    tag: str
    requested: float
    status: WriteStatus
    readback: float | None = None
    detail: str = ""


@dataclass(frozen=True)
class WriteReport:
    """The status of every tag of one write, with the value read back after it."""

    results: Mapping[str, WriteResult] = field(default_factory=dict)
    write_time: float = 0.0

    @property
    def ok(self) -> bool:
        return all(r.status is WriteStatus.OK for r in self.results.values())

    def failed(self) -> list[WriteResult]:
        return [r for r in self.results.values() if r.status is not WriteStatus.OK]


class Port(ABC):
    """The interface every PLC connection implements."""

    #: :meth:`write_each` sends its groups in fewer requests than one per group (OPC UA): a
    #: caller may then send independent writes together; on other ports it writes them apart,
    #: at their own places in its cycle
    batches_writes: bool = False

    async def __aenter__(self) -> Port:
        await self.connect()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    async def connect(self) -> None:  # noqa: B027 - optional hook
        """Open the connection (raises PortConnectError)."""

    async def close(self) -> None:  # noqa: B027 - optional hook
        """Close the connection; never raises."""

    @abstractmethod
    async def read(self, tags: Iterable[str]) -> Snapshot:
        """Read ``tags`` together; unknown tags raise PortError naming them."""

    @abstractmethod
    async def write(self, values: Mapping[str, float]) -> WriteReport:
        """Write ``values`` and read each back; refused tags are REJECTED before sending."""

    async def write_each(
        self, groups: Sequence[Mapping[str, float]]
    ) -> list[WriteReport | PortError]:
        """Several independent writes: each group checked and reported as one :meth:`write`
        (a refusal in one sends nothing of it and holds no other), in order. Per group, its
        report, or the :class:`PortError` that kept it from being sent or confirmed. A port
        that can send them in fewer requests does (OPC UA: one Write call and one Read of
        the read-backs for all of them); this one writes them one after the other. A tag in
        two groups is a ValueError, nothing sent."""
        disjoint(groups)
        outcomes: list[WriteReport | PortError] = []
        for group in groups:
            try:
                outcomes.append(await self.write(group))
            except PortError as exc:
                outcomes.append(exc)
        return outcomes


def disjoint(groups: Sequence[Mapping[str, float]]) -> None:
    """ValueError if a tag is in two of ``groups`` (independent writes of one request)."""
    seen: set[str] = set()
    for group in groups:
        if twice := sorted(seen & set(group)):
            raise ValueError(f"tags {twice} are in two groups of one write")
        seen |= set(group)
