"""PLC ports: one interface (``base.Port``), several implementations."""

from controller.ports.base import (
    Port,
    Quality,
    Snapshot,
    TagValue,
    WriteReport,
    WriteResult,
    WriteStatus,
)

__all__ = [
    "Port",
    "Quality",
    "Snapshot",
    "TagValue",
    "WriteReport",
    "WriteResult",
    "WriteStatus",
]
