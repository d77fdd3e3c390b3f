"""The HIL servers: the PLC's Modbus TCP and OPC UA faces, built from a tag map.

Both share one interface for the virtual PLC (``publish``, ``value``, ``write_hook``) and
for communication faults (``latency``, ``bad_tags``, ``drop_connections``, ``stop``/``start``);
see :mod:`hil.servers.modbus` and :mod:`hil.servers.opcua`.
"""

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
