"""An operator's release or request of control: when the supervisor refuses it, and its audit.

The supervisor (:meth:`controller.runtime.supervisor.Supervisor.release_control` and
``request_control``) carries out the transition; this module says whether it may
(:func:`refusal`) and writes the audit record of every action, carried out or refused
(:func:`record`), which raises :class:`ControlRefused` after a refusal.
"""

from __future__ import annotations

import logging
from typing import Literal

from controller.errors import PharmaTwinError
from controller.runtime.audit import AuditTrail
from controller.runtime.cycle import Mode, State

__all__ = ["Action", "ControlRefused", "record", "refusal"]

log = logging.getLogger("pharmatwin.supervisor")

Action = Literal["release", "request"]


class ControlRefused(PharmaTwinError):
    """An operator's request or release of control the supervisor will not carry out."""


def refusal(mode: Mode, state: State, action: Action, already: tuple[State, ...]) -> str:
    """Why ``action`` is refused in ``mode`` and ``state`` (``already``: the states in which
    there is nothing to do); "" when it may be carried out."""
    if mode is Mode.SHADOW:
        return f"shadow mode: the MPC never has control to {action}"
    if state in (State.INIT, State.STOPPED):
        return f"state {state.value}: no control to {action}"
    if state in already:
        return f"state {state.value}: nothing to {action}"
    return ""


def record(
    audit: AuditTrail,
    target: str,
    action: Action,
    user: str,
    reason: str,
    old: State,
    why: str,
    detail: dict[str, str],
) -> None:
    """The audit record (``operator.<action>``) of an operator's action on ``target`` (the
    site); raises :class:`ControlRefused` after a refusal (``why`` not empty)."""
    new = State.RELEASED if action == "release" else State.REQUESTING
    audit.record(
        f"operator.{action}",
        target,
        reason=reason,
        old_value=old.value,
        new_value=f"refused: {why}" if why else new.value,
        actor=user,
        detail=detail,
    )
    if why:
        log.warning("operator %s's %s refused: %s", user, action, why)
        raise ControlRefused(why)
