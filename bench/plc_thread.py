"""The simulated PLC's own thread and event loop, so that it does not run on the timed loop.

On site the PLC answers from its own CPU. In a bench that runs the HIL server in the
controller's event loop, the server's request handling is charged to the controller's cycle
(and the controller's callbacks wait behind the server's). :class:`PlcThread` gives the rig and
its server a thread and an event loop of their own; the controller's loop hands them work
with :meth:`PlcThread.run` (a thread-safe future awaited without blocking the controller's
loop: no sleeps, no polling), e.g. the rig's scan between two timed cycles.

What stays shared: the process, so the PLC's thread and the controller's compete for the GIL
(on a 2-core machine they do not compete for a core otherwise). The controller's loop waits for
an answer in ``select`` (GIL released), so the PLC's handling of a request is still inside the
timed cycle as the PLC's answer time, as a real PLC's answer time is.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator, Callable, Coroutine
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from types import TracebackType
from typing import Any, TypeVar

T = TypeVar("T")
S = TypeVar("S")
JOIN_TIMEOUT_S = 30.0


class PlcThread:
    """A daemon thread running its own asyncio loop until :meth:`close`."""

    def __init__(self, name: str = "hil-plc") -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self._serve, name=name, daemon=True)

    def _serve(self) -> None:
        asyncio.set_event_loop(self.loop)
        try:
            self.loop.run_forever()
        finally:
            self.loop.run_until_complete(self.loop.shutdown_asyncgens())
            self.loop.close()

    def start(self) -> PlcThread:
        """Start the thread (its loop runs until :meth:`close`); returns ``self``."""
        self.thread.start()
        return self

    async def run(self, coro: Coroutine[Any, Any, T]) -> T:
        """Run ``coro`` on the PLC's loop; await its result from the caller's loop."""
        if not self.thread.is_alive():
            coro.close()
            raise RuntimeError(f"the PLC thread {self.thread.name!r} is not running")
        return await asyncio.wrap_future(asyncio.run_coroutine_threadsafe(coro, self.loop))

    async def __aenter__(self) -> PlcThread:
        return self.start()

    async def __aexit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()

    @asynccontextmanager
    async def serving(self, make: Callable[[], AbstractAsyncContextManager[S]]) -> AsyncIterator[S]:
        """``make()``'s context entered and left on the PLC's loop (a server made there)."""
        made: list[AbstractAsyncContextManager[S]] = []

        async def enter() -> S:
            made.append(make())
            return await made[0].__aenter__()

        entered = await self.run(enter())
        try:
            yield entered
        finally:
            await self.run(made[0].__aexit__(None, None, None))

    async def close(self) -> None:
        """Cancel what is left on the PLC's loop, stop it and join the thread."""
        if self.thread.is_alive():
            await self.run(_cancel_the_rest())
            self.loop.call_soon_threadsafe(self.loop.stop)
            await asyncio.to_thread(self.thread.join, JOIN_TIMEOUT_S)
            if self.thread.is_alive():
                raise RuntimeError(f"the PLC thread did not stop within {JOIN_TIMEOUT_S:g} s")


async def _cancel_the_rest() -> None:
    """Cancel every other task of the running loop and wait for them to finish."""
    me = asyncio.current_task()
    rest = [t for t in asyncio.all_tasks() if t is not me]
    for task in rest:
        task.cancel()
    await asyncio.gather(*rest, return_exceptions=True)
