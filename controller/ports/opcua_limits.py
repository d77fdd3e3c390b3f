"""An OPC UA server's OperationLimits, and requests cut to fit them (no asyncua here).

A server says in ``Server/ServerCapabilities/OperationLimits`` how many nodes one request may
carry (OPC UA Part 5, 6.3.11): a Read, a Write, a TranslateBrowsePathsToNodeIds, a
CreateMonitoredItems. A request over its limit is refused whole with ``BadTooManyOperations``:
an embedded PLC server with a small limit would refuse every cycle's one Read of all the tags.
The OPC UA port (:mod:`controller.ports.opcua`) reads the limits at every connect and sends a
longer list in consecutive requests of at most the limit each, in order. A limit of 0, a node
the server does not have or will not read, or a value that is not a count means no limit
(Part 5: 0 is "no limit"); a count is never below 1.
"""

from __future__ import annotations

from collections.abc import Awaitable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

__all__ = ["LIMIT_IDS", "LIMIT_NODES", "OperationLimits", "chunks", "first_of"]

#: The limits the port heeds -> the numeric ids (namespace 0) of their Property nodes.
LIMIT_NODES: dict[str, int] = {
    "read": 11705,  # Server_ServerCapabilities_OperationLimits_MaxNodesPerRead
    "write": 11707,  # ..._MaxNodesPerWrite
    "translate": 11712,  # ..._MaxNodesPerTranslateBrowsePathsToNodeIds
    "monitored_items": 11714,  # ..._MaxMonitoredItemsPerCall
}

LIMIT_IDS = tuple(LIMIT_NODES.values())
T = TypeVar("T")


@dataclass(frozen=True)
class OperationLimits:
    """Nodes per request (None: no limit) of Read, Write, TranslateBrowsePathsToNodeIds and
    CreateMonitoredItems."""

    read: int | None = None
    write: int | None = None
    translate: int | None = None
    monitored_items: int | None = None

    @classmethod
    def of(cls, values: Mapping[str, object]) -> OperationLimits:
        """From the values read (by :data:`LIMIT_NODES` name; missing: not read)."""
        return cls(**{name: _count(values.get(name)) for name in LIMIT_NODES})

    @classmethod
    def read_from(cls, data_values: Sequence[Any]) -> OperationLimits:
        """From the DataValues of a Read of :data:`LIMIT_IDS`, in order: a value whose status
        is not Good (the server has no such node) or that is missing is no limit."""
        got: dict[str, object] = {}
        for name, dv in zip(LIMIT_NODES, data_values, strict=False):
            status, variant = getattr(dv, "StatusCode", None), getattr(dv, "Value", None)
            good = status is None or bool(status.is_good())
            got[name] = variant.Value if good and variant is not None else None
        return cls.of(got)

    def describe(self) -> str:
        """``read 4, write 2, ...`` (``none`` when there is no limit at all)."""
        given = [f"{k} {v}" for k in LIMIT_NODES if (v := getattr(self, k)) is not None]
        return ", ".join(given) or "none"


def _count(value: object) -> int | None:
    """A limit as the server gave it (a UInt32; a whole float is taken too): a positive int,
    or None (no limit)."""
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        return None
    return value


def chunks(items: Sequence[T], size: int | None) -> Iterator[Sequence[T]]:
    """``items`` in consecutive slices of at most ``size`` (one slice when ``size`` is None
    or not below ``len(items)``; none for no items)."""
    if size is None or size >= len(items):
        if items:
            yield items
        return
    if size < 1:
        raise ValueError(f"a request limit of {size!r} nodes; allowed: >= 1 or None")
    for start in range(0, len(items), size):
        yield items[start : start + size]


async def first_of(request: Awaitable[Sequence[Any]], refused: type[BaseException]) -> Any:
    """The first result of ``request``; None when it has none or is refused (``refused``)."""
    try:
        got = await request
    except refused:
        return None
    return got[0] if got else None
