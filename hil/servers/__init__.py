"""The HIL servers: the PLC's Modbus TCP and OPC UA faces, built from a tag map.

Both share one interface for the virtual PLC (``publish``, ``value``, ``write_hook``) and
for communication faults (``latency``, ``bad_tags``, ``drop_connections``, ``stop``/``start``);
see :mod:`hil.servers.modbus` and :mod:`hil.servers.opcua`.

The servers are imported when first named (``from hil.servers import ModbusPlcServer``):
a fast-mode campaign worker, whose PLC is the in-memory image (:mod:`hil.servers.memory`),
never loads pymodbus or asyncua (~0.25 s of its start).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from hil.servers.modbus import ModbusPlcServer, modbus_server_for_site
    from hil.servers.opcua import OpcUaPlcServer, opcua_server_for_site
    from hil.servers.opcua_security import ServerSecurity

__all__ = [
    "ModbusPlcServer",
    "OpcUaPlcServer",
    "ServerSecurity",
    "modbus_server_for_site",
    "opcua_server_for_site",
]

_WHERE = {
    "ModbusPlcServer": "hil.servers.modbus",
    "modbus_server_for_site": "hil.servers.modbus",
    "OpcUaPlcServer": "hil.servers.opcua",
    "opcua_server_for_site": "hil.servers.opcua",
    "ServerSecurity": "hil.servers.opcua_security",
}


def __getattr__(name: str) -> Any:
    module = _WHERE.get(name)
    if module is None:
        raise AttributeError(f"module 'hil.servers' has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)


def __dir__() -> list[str]:
    return sorted([*globals(), *_WHERE])
