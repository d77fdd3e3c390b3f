"""What every HIL server is to the virtual PLC and the rig: one small abstract base.

``write_hook`` hears every client write (a returned reason refuses it: Modbus exception 03,
OPC UA a status code by :func:`refusal_kind`, with the reason as diagnostic info);
``publish`` sets the PLC's values; ``latency``, ``bad_tags``, ``drop_connections`` and
``stop``/``start`` inject communication faults.

``bad_tags`` takes real tag names only: a name the tag map does not have (a typo, or a
wildcard such as ``"*"`` that was not expanded against the tag map) raises KeyError instead of
silently matching nothing. ``unsupported_faults`` names the fault kinds a server cannot carry
out, with the reason, so the rig refuses them instead of running them as no-ops.

:class:`DelayLine` holds back what a server publishes while it has a ``latency``, so that
clients that are pushed data (OPC UA subscriptions) see the latency as well as those that ask.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from abc import ABC, abstractmethod
from collections import deque
from collections.abc import Awaitable, Callable, Collection, Mapping
from datetime import datetime
from enum import StrEnum
from types import TracebackType
from typing import ClassVar, Self

from controller.clock import Clock
from controller.tags import TagMap

WriteHook = Callable[[str, float], "str | None"]
log = logging.getLogger("hil.servers")


class RefusalKind(StrEnum):
    """Why the PLC refused a client's write, in the words the servers report."""

    NOT_ACTIVE = "not active"
    RATE_LIMIT = "over the rate limit"
    OUTSIDE_LIMITS = "outside limits"
    INTERLOCK = "interlock"
    OTHER = "refused"


def refusal_kind(reason: str) -> RefusalKind:
    """The kind of a write hook's reason, from its words (:mod:`hil.vplc` words them so):
    ``interlock``, then ``rate limit``, then ``outside``, then ``active``; else OTHER."""
    text = reason.lower()
    for word, kind in (
        ("interlock", RefusalKind.INTERLOCK),
        ("rate limit", RefusalKind.RATE_LIMIT),
        ("outside", RefusalKind.OUTSIDE_LIMITS),
        ("active", RefusalKind.NOT_ACTIVE),
    ):
        if word in text:
            return kind
    return RefusalKind.OTHER


class PlcServer(ABC):
    """A PLC's protocol face, built from a tag map; an async context manager."""

    tags: TagMap
    write_hook: WriteHook | None
    latency: float
    #: fault kind -> why this server cannot carry it out (the rig refuses such faults)
    unsupported_faults: ClassVar[Mapping[str, str]] = {}
    _bad_tags: dict[str, str]

    @property
    def bad_tags(self) -> dict[str, str]:
        """Tag -> reason: the tags whose reads (and writes) fail with a communication fault."""
        return self._bad_tags

    @bad_tags.setter
    def bad_tags(self, value: Mapping[str, str]) -> None:
        unknown = sorted(set(value) - set(self.tags.tags))
        if unknown:
            raise KeyError(
                f"bad_tags: unknown tag(s) {unknown} for the map {self.tags.name!r}; a wildcard "
                "must be expanded against the tag map first (hil.faults.expand_tags)"
            )
        self._bad_tags = dict(value)

    @abstractmethod
    async def start(self) -> None:
        """Listen (again, after :meth:`stop`), keeping the values."""

    @abstractmethod
    async def stop(self) -> None:
        """Stop listening and drop every client; a later :meth:`start` resumes."""

    async def close(self) -> None:
        """Release everything for good (default: :meth:`stop`)."""
        await self.stop()

    @abstractmethod
    async def publish(
        self,
        values: Mapping[str, float],
        *,
        bad: Collection[str] = (),
        source_time: datetime | None = None,
    ) -> None:
        """Set the PLC's tag values (engineering units); ``bad`` ones get bad quality."""

    @abstractmethod
    def value(self, tag: str) -> float:
        """The tag's current value as stored."""

    @abstractmethod
    async def drop_connections(self) -> None:
        """Close every client connection now; keep listening."""

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()


class DelayLine:
    """Deliveries held back by a communication latency, made in order on ``clock``.

    :meth:`put` with a latency > 0 delivers ``latency`` seconds of ``clock`` later (a
    background task waits for it); with no latency, at once, unless earlier deliveries are
    still waiting: then right after them, so a value never goes back to an older one. A
    delivery that fails is logged and the line goes on. :meth:`close` drops what waits.
    """

    def __init__(self, clock: Clock) -> None:
        self.clock = clock
        self._queue: deque[tuple[float, Callable[[], Awaitable[None]]]] = deque()
        self._task: asyncio.Task[None] | None = None

    @property
    def waiting(self) -> int:
        """How many deliveries are held back now."""
        return len(self._queue)

    async def put(self, latency: float, deliver: Callable[[], Awaitable[None]]) -> None:
        if latency <= 0 and not self._queue:
            await deliver()
            return
        due = self.clock.now() + max(latency, 0.0)
        if self._queue:
            due = max(due, self._queue[-1][0])
        self._queue.append((due, deliver))
        if self._task is None or self._task.done():
            self._task = asyncio.create_task(self._run())

    async def _run(self) -> None:
        while self._queue:
            due, deliver = self._queue[0]
            await self.clock.sleep_until(due)
            self._queue.popleft()
            try:
                await deliver()
            except Exception:
                log.exception("a delayed publication failed")

    async def close(self) -> None:
        self._queue.clear()
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
