"""Users and roles of the HIL OPC UA server.

Users are only the configured username/password pairs (:class:`PasswordUsers`; asyncua's
default accepts anyone), anonymous only if allowed; refused logins are logged. With roles
(user -> roles), a user without the role a tag needs (:func:`required_role`) may not write it:
publications need ``twin``, acknowledgements ``operator``, every other writable tag
``engineer``. :func:`check_roles` refuses role names that are not :data:`ROLES`.
"""

from __future__ import annotations

import logging
from collections.abc import Collection, Mapping
from typing import Any, get_args

from asyncua.crypto.permission_rules import User, UserRole
from asyncua.server.internal_server import InternalServer
from asyncua.server.user_managers import UserManager

from controller.errors import unknown_name
from controller.tags import Tag
from hil.site import ServerRole

log = logging.getLogger("pharmatwin.hil.opcua")  # the OPC UA server's log, which serve keeps

ROLES: tuple[ServerRole, ...] = get_args(ServerRole)
#: Tags an operator may write (acknowledgements), besides those ending in ``_ack``.
OPERATOR_TAGS = frozenset({"operator_reset"})
VIEWER: tuple[ServerRole, ...] = ("viewer",)

ADMIN = User(role=UserRole.Admin)


def required_role(name: str, tag: Tag) -> ServerRole | None:
    """The role a user needs to write tag ``name`` (None: nobody may, it is read-only).

    Publications: ``twin``; acknowledgements (``operator_reset``, ``*_ack``): ``operator``;
    every other writable tag (``mpc_request``, ``mpc_heartbeat``, setpoints, advisory tags):
    ``engineer``.
    """
    if not tag.writable:
        return None
    if tag.publishes is not None:
        return "twin"
    if name in OPERATOR_TAGS or name.endswith(("_ack", "_acknowledge")):
        return "operator"
    return "engineer"


def check_roles(roles: Mapping[str, Collection[str]] | None) -> None:
    """ValueError naming the first role of ``roles`` (user -> roles) that is not :data:`ROLES`."""
    unknown = sorted({r for rs in (roles or {}).values() for r in rs} - set(ROLES))
    if unknown:
        raise ValueError(unknown_name("role", unknown[0], ROLES))


class PasswordUsers(UserManager):
    """Only the configured username/password pairs; anonymous only if allowed; logged."""

    def __init__(self, users: Mapping[str, str], allow_anonymous: bool) -> None:
        self.users, self.allow_anonymous = dict(users), allow_anonymous

    def get_user(
        self,
        iserver: InternalServer,
        username: str | None = None,
        password: str | None = None,
        certificate: Any = None,
    ) -> User | None:
        if username is None:
            if self.allow_anonymous:
                return User(role=UserRole.User)
            log.warning("refused an anonymous login: anonymous logins are not allowed")
            return None
        if username in self.users and self.users[username] == password:
            return User(role=UserRole.User, name=username)
        why = "wrong password" if username in self.users else "unknown user"
        log.warning("refused the login of user %r: %s", username, why)
        return None
