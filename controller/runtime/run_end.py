"""How a run ends (:meth:`Supervisor.run <controller.runtime.supervisor.Supervisor.run>` and
``shutdown``): the cause of a run that a failure aborted, and the stop's steps after it.

A run that ends by an exception is *aborted*: its stop's cause says so and why (``aborted:
cannot append to the audit trail ...: database is locked``), in the ``mode.change`` and
``run.stop`` records, never "run complete". The failure may be the audit trail itself: then
the stop's records cannot be written either. Each step of the stop is still tried, one that
fails is logged (what was not recorded, and why) and the run raises its own failure, not the
stop's (:class:`StopSteps`).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from controller.runtime.audit_chain import AuditError

__all__ = ["StopSteps", "abort_cause"]

log = logging.getLogger("pharmatwin.supervisor")


def abort_cause(failure: BaseException, cycle: int) -> str:
    """The stop's cause of a run ``failure`` aborted in ``cycle`` (logged, as an error)."""
    if isinstance(failure, asyncio.CancelledError):  # a campaign's controller loss
        why = "cancelled"
    elif isinstance(failure, KeyboardInterrupt):
        why = "interrupted"
    else:
        why = str(failure) or type(failure).__name__
    log.error("run aborted in cycle %d: %s", cycle, why)
    return f"aborted: {why}"


class StopSteps:
    """The steps of a run's stop. Without a ``failure`` a step that fails raises (the stop
    of a run that went well must be recorded, or the run fails); after one (the run was
    aborted) a step that fails is logged and the next is tried: the run raises ``failure``."""

    def __init__(self, cause: str, failure: BaseException | None) -> None:
        self.cause, self.failure = cause, failure

    def __call__(self, what: str, step: Callable[..., object], *args: Any, **kw: Any) -> None:
        if self.failure is None:
            step(*args, **kw)
            return
        try:
            step(*args, **kw)
        except Exception as exc:
            self._failed(what, exc)

    async def wait(self, what: str, step: Awaitable[object]) -> None:
        """An awaited step (a write to the PLC, audited first)."""
        if self.failure is None:
            await step
            return
        try:
            await step
        except Exception as exc:
            self._failed(what, exc)

    def _failed(self, what: str, exc: Exception) -> None:
        if isinstance(exc, AuditError):
            log.error("%s (%s) was not recorded: %s", what, self.cause, exc)
        else:
            log.error("%s (%s) failed: %s", what, self.cause, exc, exc_info=exc)
