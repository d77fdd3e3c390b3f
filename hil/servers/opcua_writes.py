"""The HIL OPC UA server's write checks: which client writes of our tags it refuses, and why.

Writes (every one gets a SourceTimestamp: the client's, else the server's clock), in order:

* a read-only tag answers ``BadNotWritable``;
* roles (see :func:`~hil.servers.opcua_roles.required_role`): a user without the role a tag
  needs gets ``BadUserAccessDenied``. Without roles (an anonymous test bench) every client may
  write every writable tag, except publications when ``publishers`` names who may;
* a value outside the tag's EURange (its ``limits``), publications included, answers
  ``BadOutOfRange``; so does one outside the server's ``set_range``;
* ``write_hook(tag, value)`` (the PLC logic) may refuse with a reason, whose kind
  (:func:`hil.servers.base.refusal_kind`) picks the status: not active ``BadInvalidState``,
  interlock ``BadLocked``, rate limit or outside limits ``BadOutOfRange``.

Every refusal is logged with the user and the reason; :data:`REASONS` collects the
(symbolic id, reason) of each item of the Write being served, for the diagnostic info
(:mod:`hil.servers.opcua_guard`). :class:`PlcAttributes` is asyncua's attribute service with
these checks, and with ``bad_tags`` read as ``BadCommunicationError``.
"""

from __future__ import annotations

import contextvars
import logging
from collections.abc import Mapping
from typing import Protocol

from asyncua import Server, ua
from asyncua.crypto.permission_rules import User, UserRole
from asyncua.server.address_space import AddressSpace, AttributeService

from controller.tags import TagMap
from hil.servers.base import RefusalKind, WriteHook, refusal_kind
from hil.servers.opcua_nodes import (
    ACCESS_DENIED,
    COMMUNICATION,
    NOT_WRITABLE,
    OUT_OF_RANGE,
    communication_error,
    stamped,
    status_code,
    variant_value,
)
from hil.servers.opcua_roles import ADMIN, required_role

log = logging.getLogger("pharmatwin.hil.opcua")  # the OPC UA server's log, which serve keeps

#: The status each kind of PLC refusal answers.
REFUSAL_STATUS = {
    RefusalKind.NOT_ACTIVE: status_code("BadInvalidState"),
    RefusalKind.INTERLOCK: status_code("BadLocked"),
    RefusalKind.RATE_LIMIT: OUT_OF_RANGE,
    RefusalKind.OUTSIDE_LIMITS: OUT_OF_RANGE,
    RefusalKind.OTHER: OUT_OF_RANGE,
}

#: The (symbolic id, reason) of each item of the Write being served, for diagnostic info.
REASONS: contextvars.ContextVar[list[tuple[str, str]] | None] = contextvars.ContextVar(
    "opcua_write_reasons", default=None
)


class WritePlc(Protocol):
    """What the write checks need of the PLC (:class:`hil.servers.opcua.OpcUaPlcServer`)."""

    @property
    def tags(self) -> TagMap: ...
    @property
    def tag_of(self) -> Mapping[ua.NodeId, str]: ...
    @property
    def server(self) -> Server: ...
    @property
    def bad_tags(self) -> Mapping[str, str]: ...
    @property
    def types(self) -> Mapping[str, ua.VariantType]: ...
    @property
    def ranges(self) -> Mapping[ua.NodeId, tuple[float, float]]: ...
    @property
    def write_hook(self) -> WriteHook | None: ...
    def may_write(self, user: User, tag: str) -> bool: ...
    def user_roles(self, user: User) -> frozenset[str] | None: ...
    def failing(self, node_id: ua.NodeId) -> bool: ...


#: (status, symbolic id, reason) of a refused write.
Refused = tuple[ua.StatusCode, str, str]


def refusal(plc: WritePlc, item: ua.WriteValue, user: User) -> Refused | None:
    """(status, symbolic id, reason) refusing a client's Value write, or None to let
    asyncua handle it; every refusal is logged."""
    tag = plc.tag_of.get(item.NodeId)
    who = f"user {user.name!r}" if user.name else "an anonymous user"
    if tag is None:
        return None if user.role == UserRole.Admin else _not_writable(plc, item, who)
    found = _check(plc, tag, item, user)
    if found is not None:
        code, symbol, reason = found
        value = variant_value(item)
        level = logging.WARNING if symbol in ("NotWritable", "RoleRequired") else logging.INFO
        text = f"{reason} ({code.name})"
        log.log(level, "refused a write of %s = %r by %s: %s", tag, value, who, text)
    return found


def _not_writable(plc: WritePlc, item: ua.WriteValue, who: str) -> Refused | None:
    """Any other node: BadNotWritable if its AccessLevel has no CurrentWrite."""
    level = plc.server.iserver.aspace.read_attribute_value(item.NodeId, ua.AttributeIds.AccessLevel)
    if level.Value is None or not isinstance(level.Value.Value, int):
        return None
    if ua.ua_binary.test_bit(level.Value.Value, ua.AccessLevel.CurrentWrite):
        return None
    reason = f"the node {item.NodeId.to_string()} is read-only"
    log.warning("refused a write by %s: %s", who, reason)
    return NOT_WRITABLE, "NotWritable", reason


def _check(plc: WritePlc, tag: str, item: ua.WriteValue, user: User) -> Refused | None:
    spec = plc.tags.tags[tag]
    needed = required_role(tag, spec)
    if needed is None and user.role != UserRole.Admin:
        return NOT_WRITABLE, "NotWritable", f"{tag} is read-only (direction {spec.direction})"
    if needed is not None and not plc.may_write(user, tag):
        roles = plc.user_roles(user)
        has = "no roles" if not roles else "roles " + ", ".join(sorted(roles))
        reason = f"writing {tag} needs the role {needed}; the user has {has}"
        return ACCESS_DENIED, "RoleRequired", reason
    if tag in plc.bad_tags:
        return COMMUNICATION, "CommunicationError", f"{tag}: {plc.bad_tags[tag]}"
    variant = item.Value.Value if item.Value is not None else None
    if variant is None or not isinstance(variant.Value, bool | int | float):
        return None
    if variant.VariantType != plc.types.get(tag):
        return None  # asyncua answers BadTypeMismatch
    value = float(variant.Value)
    if spec.limits is not None and not spec.limits[0] <= value <= spec.limits[1]:
        reason = f"{tag}={value:g} is outside its EURange [{spec.limits[0]}, {spec.limits[1]}]"
        return OUT_OF_RANGE, "OutsideEURange", reason
    limits = plc.ranges.get(item.NodeId)
    if limits is not None and not limits[0] <= value <= limits[1]:
        reason = f"{tag}={value:g} is outside the PLC range [{limits[0]}, {limits[1]}]"
        return OUT_OF_RANGE, "OutsideLimits", reason
    hook = plc.write_hook if spec.writable else None
    why = hook(tag, value) if hook is not None else None
    if why is None:
        return None
    kind = refusal_kind(why)
    return REFUSAL_STATUS[kind], kind.name.title().replace("_", ""), f"{kind}: {why}"


class PlcAttributes(AttributeService):
    """asyncua's attribute service with the PLC's checks on our tags' Value attribute."""

    def __init__(self, aspace: AddressSpace, plc: WritePlc) -> None:
        super().__init__(aspace)
        self.plc = plc

    def read(self, params: ua.ReadParameters) -> list[ua.DataValue]:
        results = super().read(params)
        if self.plc.bad_tags:
            for i, item in enumerate(params.NodesToRead):
                if item.AttributeId == ua.AttributeIds.Value and self.plc.failing(item.NodeId):
                    results[i] = communication_error()
        return results

    async def write(self, params: ua.WriteParameters, user: User = ADMIN) -> list[ua.StatusCode]:
        """The checks item by item; the items they let through go to asyncua in ONE write
        (in request order), each stamped; the statuses come back in request order."""
        results: list[ua.StatusCode | None] = []
        reasons: list[tuple[str, str]] = []
        passed: list[ua.WriteValue] = []
        for item in params.NodesToWrite:
            found = None
            if item.AttributeId == ua.AttributeIds.Value:
                found = refusal(self.plc, item, user)
            if found is not None:
                code, symbol, reason = found
                results.append(code)
                reasons.append((symbol, reason))
                continue
            passed.append(stamped(item))
            results.append(None)
            reasons.append(("", ""))
        if passed:
            done = iter(await super().write(ua.WriteParameters(NodesToWrite=passed), user))
            results = [r if r is not None else next(done) for r in results]
        sink = REASONS.get()
        if sink is not None:
            sink.extend(reasons)
        return [r for r in results if r is not None]
