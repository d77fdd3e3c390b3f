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
from asyncua.common.utils import Buffer, NotEnoughData, ServiceError

from controller.ports.opcua_limits import LIMIT_NODES, OperationLimits
from hil.servers.opcua_nodes import request_type

log = logging.getLogger("pharmatwin.hil.opcua")


#: request type -> (the byte offset of its array of nodes in the request body, after the request
#: header: an Int32 count, -1 for a null array; the limit's name)
_REQUESTS: dict[ua.NodeId, tuple[int, str]] = {
    request_type("Read"): (12, "read"),  # MaxAge (Double), TimestampsToReturn (UInt32), NodesToRead
    request_type("Write"): (0, "write"),  # NodesToWrite
    request_type("TranslateBrowsePathsToNodeIds"): (0, "translate"),  # BrowsePaths
    # SubscriptionId (UInt32), TimestampsToReturn (UInt32), ItemsToCreate
    request_type("CreateMonitoredItems"): (8, "monitored_items"),
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
    """Refuse (ServiceError BadTooManyOperations) a request with more nodes than its limit.
    Reads only the count of its nodes (a body too short for one is left to asyncua's decoding,
    which answers it)."""
    known = _REQUESTS.get(typeid)
    if known is None:
        return
    offset, name = known
    limit = getattr(limits, name)
    if limit is None:
        return
    try:
        head = body.copy().read(offset + 4)
    except NotEnoughData:
        return
    count = int.from_bytes(head[offset:], "little", signed=True)
    if count > limit:
        log.warning(
            "refused a request of %d nodes from %s: %s is %d (BadTooManyOperations)",
            count,
            peer,
            NAMES[name],
            limit,
        )
        raise ServiceError(ua.StatusCodes.BadTooManyOperations)
