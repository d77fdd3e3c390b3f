"""Build the port a connection asks for, from (tag map, connection, clock).

Protocol libraries are imported only here, on demand, so the computing core never loads
pymodbus or asyncua. A site file's port is built by :func:`controller.runtime.site.port_for_site`,
which hands in the site's password and folder.
"""

from __future__ import annotations

from pathlib import Path

from controller.clock import Clock
from controller.ports.base import Port
from controller.ports.settings import Connection
from controller.tags import TagMap


def make_port(
    tags: TagMap,
    connection: Connection,
    clock: Clock,
    *,
    password: str | None = None,
    base_dir: Path | None = None,
) -> Port:
    """A Modbus or OPC UA port (not yet connected: use ``async with``).

    ``password``: the OPC UA user's (``connection.opcua.username``); ``base_dir``: the folder
    relative certificate paths of ``connection`` are relative to.
    """
    if connection.protocol == "modbus":
        from controller.ports.modbus import ModbusPort

        return ModbusPort(tags, connection, clock, base_dir=base_dir)
    from controller.ports.opcua import OpcUaPort

    return OpcUaPort(tags, connection, clock, password=password, base_dir=base_dir)
