"""Build the port a site asks for. Protocol libraries are imported only here, on demand,
so the computing core never loads pymodbus or asyncua."""

from __future__ import annotations

from controller.clock import Clock
from controller.ports.base import Port
from controller.runtime.site import Site


def make_port(site: Site, clock: Clock) -> Port:
    """A Modbus or OPC UA port for ``site`` (not yet connected: use ``async with``)."""
    conn = site.connection
    if conn.protocol == "modbus":
        from controller.ports.modbus import ModbusPort

        return ModbusPort(site.tags, conn, clock, base_dir=site.path.parent)
    from controller.ports.opcua import OpcUaPort

    return OpcUaPort(site.tags, conn, clock, password=site.password(), base_dir=site.path.parent)
