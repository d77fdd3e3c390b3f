"""A campaign case's audit trail as evidence: checked with the key the campaign ran with.

:func:`run_audit_key` is the id of the anchor key a campaign run signs its cases' trails with
(``$PHARMATWIN_AUDIT_KEY`` when the run starts; None: unsigned), recorded in ``campaign.json``
as ``audit_key``. :func:`audit_problem` verifies one case's ``audit.db``
(:func:`~controller.runtime.audit_verify.verify_file`): against that record, so that a signed
trail swapped for an unsigned one (or its signatures stripped) does not verify, and with the
key the trail was signed with, which ``$PHARMATWIN_AUDIT_KEY`` must name when the report is
written (a key set in the reporter's shell does not make an unsigned trail "altered"). A
manifest written before ``audit_key`` was recorded is checked as its anchors say.
"""

from __future__ import annotations

from pathlib import Path

from controller.runtime.audit_anchors import anchor_path_for, read_anchors
from controller.runtime.audit_chain import AuditError, AuditMismatch
from controller.runtime.audit_keys import resolve_key
from controller.runtime.audit_verify import verify_file

__all__ = ["NOT_RECORDED", "audit_problem", "run_audit_key"]

#: a manifest without ``audit_key`` (a run before it was recorded)
NOT_RECORDED = object()


def run_audit_key() -> str | None:
    """The id of the key this process signs audit anchors with (None: unsigned). Raises
    AuditError for a ``$PHARMATWIN_AUDIT_KEY`` that names no usable key."""
    key = resolve_key(None)
    return key.key_id if key is not None else None


def audit_problem(db: Path, ran_with: object = NOT_RECORDED) -> str | None:
    """Why the case's audit trail does not verify or cannot be checked (None: it verifies).
    ``ran_with``: the key id ``campaign.json`` records (None: the run signed nothing)."""
    try:
        anchors, _ = read_anchors(anchor_path_for(db))
    except AuditError as exc:
        return _failed(db, exc)
    signed = sorted({a.key_id for a in anchors if a.key_id})
    if ran_with is not NOT_RECORDED and signed != ([ran_with] if ran_with else []):
        run = f"signed with key {ran_with}" if ran_with else "unsigned"
        now = f"signed with key {', '.join(signed)}" if signed else "unsigned"
        return (
            f"{db} does not verify: the campaign ran {run} (campaign.json's audit_key) and "
            f"its anchors are {now}: the trail was replaced or its signatures changed, or an "
            "earlier run with another key made it and this run did not redo it (run the case "
            "again)"
        )
    try:
        key = resolve_key(None) if signed else None
    except AuditError as exc:
        return _failed(db, exc)
    if signed and (key is None or key.key_id not in signed):
        have = f"key {key.key_id}" if key is not None else "no key"
        return (
            f"{db} cannot be verified: its anchors are signed with key {', '.join(signed)} and "
            f"this report has {have}; give that key in $PHARMATWIN_AUDIT_KEY"
        )
    try:
        verify_file(db, key=key)
    except AuditError as exc:
        return _failed(db, exc)
    return None


def _failed(db: Path, exc: AuditError) -> str:
    """A trail that does not verify (AuditMismatch), or that cannot be checked."""
    if isinstance(exc, AuditMismatch):
        return f"{db} does not verify (altered, cut or rewritten): {exc}"
    return f"{db} cannot be verified: {exc}"
