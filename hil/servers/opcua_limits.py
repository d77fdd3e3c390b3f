"""The HIL OPC UA server's OperationLimits: nodes per request, advertised and enforced.

An embedded PLC's OPC UA server takes a limited number of nodes in one request and says so in
``Server/ServerCapabilities/OperationLimits`` (OPC UA Part 5, 6.3.11); a request over a limit
is refused whole with ``BadTooManyOperations``. asyncua advertises 10000 for every limit and
enforces none. With a site's ``hil.opcua_limits`` the HIL server advertises the limits given
there in those nodes (the others keep asyncua's 10000) and refuses, with a logged warning, a
Read, Write, TranslateBrowsePathsToNodeIds or CreateMonitoredItems with more nodes, as such a
PLC does: a client that does not read and heed them fails against it.
"""

from __future__ import annotations

import logging

from asyncua import Server, ua
from asyncua.common.utils import Buffer, ServiceError
from asyncua.ua.ua_binary import struct_from_binary

from controller.ports.opcua_limits import LIMIT_NODES, OperationLimits

log = logging.getLogger("pharmatwin.hil.opcua")


def _request(service: str) -> ua.NodeId:
    return ua.NodeId(ua.Int32(getattr(ua.ObjectIds, f"{service}Request_Encoding_DefaultBinary")))


#: request type -> (its parameters, the field holding its nodes, the limit's name)
_REQUESTS: dict[ua.NodeId, tuple[type, str, str]] = {
    _request("Read"): (ua.ReadParameters, "NodesToRead", "read"),
    _request("Write"): (ua.WriteParameters, "NodesToWrite", "write"),
    _request("TranslateBrowsePathsToNodeIds"): (
        ua.TranslateBrowsePathsToNodeIdsParameters,
        "BrowsePaths",
        "translate",
    ),
    _request("CreateMonitoredItems"): (
        ua.CreateMonitoredItemsParameters,
        "ItemsToCreate",
        "monitored_items",
    ),
}
#: the OPC UA names of the limits, for the log
NAMES = {
    "read": "MaxNodesPerRead",
    "write": "MaxNodesPerWrite",
    "translate": "MaxNodesPerTranslateBrowsePathsToNodeIds",
    "monitored_items": "MaxMonitoredItemsPerCall",
}


async def advertise(server: Server, limits: OperationLimits) -> None:
    """Write the given limits into the server's OperationLimits nodes (UInt32)."""
    for name, ident in LIMIT_NODES.items():
        value = getattr(limits, name)
        if value is not None:
            node = server.get_node(ua.NodeId(ua.Int32(ident)))
            await node.write_value(ua.Variant(value, ua.VariantType.UInt32))


def check(limits: OperationLimits, typeid: ua.NodeId, body: Buffer, peer: str) -> None:
    """Refuse (ServiceError BadTooManyOperations) a request with more nodes than its limit;
    decodes a copy of the body only for a request whose limit is set."""
    known = _REQUESTS.get(typeid)
    if known is None:
        return
    params_type, field, name = known
    limit = getattr(limits, name)
    if limit is None:
        return
    count = len(getattr(struct_from_binary(params_type, body.copy()), field) or ())
    if count > limit:
        log.warning(
            "refused a request of %d nodes from %s: %s is %d (BadTooManyOperations)",
            count,
            peer,
            NAMES[name],
            limit,
        )
        raise ServiceError(ua.StatusCodes.BadTooManyOperations)
