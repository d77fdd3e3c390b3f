"""The audit trail's dedicated writer thread: group commit, durability awaited off the loop.

:meth:`~controller.runtime.audit.AuditTrail.submit_all` hands a group of records to the
trail's :class:`WriterThread` (``record_all`` commits on the caller's thread instead: in the
one-loop control cycle a thread hop measured slower than the commit it would move). Record
groups submitted while a commit is in flight are appended in the *next* transaction together
(group commit: one fsync for all of them); commits from both paths are serialised by the
trail's lock, in chain order. A submission's :class:`Pending` resolves only after the
``COMMIT`` that holds it returned (``synchronous=FULL``: on disk), so a caller that sends a
value to a PLC after ``Pending.result()`` or ``await Pending.durable()`` keeps "audited
before sent"; an asyncio caller waits for the fsync without blocking its event loop.

WAL checkpoints (copying the WAL into the database file, with their own fsyncs) are taken
by a second thread on its own connection (``PRAGMA wal_checkpoint(PASSIVE)``, which never
blocks the writer), not by whichever commit crosses SQLite's auto-checkpoint threshold.

The threads are daemons, started on first use and again in a forked child (a thread does
not survive ``fork``); :meth:`WriterThread.stop` ends one after its queue is empty.
"""

from __future__ import annotations

import asyncio
import os
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

T = TypeVar("T")
G = TypeVar("G")
R = TypeVar("R")


class Pending(Generic[T]):
    """A submitted group's records: :meth:`result` blocks, :meth:`durable` awaits; both
    return only once the group is committed, and raise what the commit raised."""

    def __init__(self, future: Future[T]) -> None:
        self._future = future

    def result(self) -> T:
        return self._future.result()

    async def durable(self) -> T:
        return await asyncio.wrap_future(self._future)

    def done(self) -> bool:
        return self._future.done()


@dataclass
class _Item:
    fn: Callable[..., Any]
    future: Future[Any]
    group: Any = None
    grouped: bool = False
    more: list[_Item] = field(default_factory=list)


class WriterThread:
    """One daemon thread running submitted calls in order; consecutive groups are merged."""

    def __init__(self, name: str) -> None:
        self.name = name
        self._cond = threading.Condition()
        self._items: list[_Item] = []
        self._thread: threading.Thread | None = None
        self._pid = 0
        self._stopping = False

    def call(self, fn: Callable[[], T]) -> T:
        """Run ``fn`` on the thread; its result or its exception."""
        return self.submit_call(fn).result()

    def submit_call(self, fn: Callable[[], T]) -> Future[T]:
        future: Future[T] = Future()
        self._put(_Item(fn, future))
        return future

    def submit_group(self, group: G, commit: Callable[[list[G]], list[R]]) -> Pending[R]:
        """Queue ``group``; ``commit`` receives every group queued meanwhile, in order, and
        returns one result per group (all fail together if it raises)."""
        future: Future[R] = Future()
        self._put(_Item(commit, future, group, grouped=True))
        return Pending(future)

    def stop(self) -> None:
        """End the thread once its queue is empty (idempotent)."""
        with self._cond:
            self._stopping = True
            thread, self._thread = self._thread, None
            self._cond.notify_all()
        if thread is not None and thread is not threading.current_thread():
            thread.join()

    def _put(self, item: _Item) -> None:
        with self._cond:
            if self._stopping:
                raise RuntimeError(f"{self.name}: stopped")
            if self._thread is None or self._pid != os.getpid():  # first use, or forked
                self._pid = os.getpid()
                self._thread = threading.Thread(target=self._run, name=self.name, daemon=True)
                self._thread.start()
            self._items.append(item)
            self._cond.notify()

    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._items and not self._stopping:
                    self._cond.wait()
                if not self._items:
                    return
                items, self._items = self._items, []
            for batch in _batches(items):
                _execute(batch)


def _batches(items: Sequence[_Item]) -> list[_Item]:
    """Consecutive grouped items with the same commit become one item (``more``)."""
    out: list[_Item] = []
    for item in items:
        last = out[-1] if out else None
        if last is not None and item.grouped and last.grouped and item.fn == last.fn:
            last.more.append(item)
        else:
            out.append(item)
    return out


def _execute(item: _Item) -> None:
    members = [item, *item.more]
    try:
        results = item.fn([m.group for m in members]) if item.grouped else [item.fn()]
    except BaseException as exc:  # handed to every waiter; the thread goes on
        for m in members:
            m.future.set_exception(exc)
        return
    for m, r in zip(members, results, strict=True):
        m.future.set_result(r)
