"""A SQLite historian's batched commits: one open transaction for many cycles.

:class:`~controller.runtime.historian.SqliteHistorian` with ``commit_every`` > 1 writes its
cycles, events and runs inside one transaction that commits every ``commit_every`` cycles
(and when the historian is flushed or closed). A failure inside the batch never leaves half
of it: the whole batch is rolled back (SQLite itself gives up the transaction on some errors,
a full disk for one) and the error says what was lost with it. Nothing is lost without an
error naming it.
"""

from __future__ import annotations

import contextlib
import sqlite3
from collections.abc import Callable
from pathlib import Path
from typing import Literal, TypeVar

from controller.runtime.historian_records import HistorianError

T = TypeVar("T")
Kind = Literal["cycle", "record"]


def check_commit_every(value: object, where: str) -> int:
    """``value`` as a historian's ``commit_every`` (a whole number of cycles, at least 1);
    HistorianError naming ``where`` and the value otherwise."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise HistorianError(
            f"{where}: commit_every {value!r} is not allowed; allowed: a whole number of "
            "cycles, at least 1"
        )
    return value


class Batch:
    """The open transaction of one connection that commits every ``every`` cycles.

    Not thread-safe by itself: the historian calls it under its lock.
    """

    def __init__(
        self,
        db: sqlite3.Connection,
        path: Path,
        every: int,
        on_lost: Callable[[], None] = lambda: None,
    ) -> None:
        """``on_lost`` is called when a batch is lost (the historian forgets what it knew
        to be stored)."""
        self.db, self.path, self.every, self.on_lost = db, path, every, on_lost
        self.open = False
        #: cycles and other records (events, runs) written since the batch began
        self.cycles = self.records = 0

    @property
    def due(self) -> bool:
        return self.cycles >= self.every

    def write(self, what: str, kind: Kind, statements: Callable[[], T]) -> T:
        """Run ``statements`` (one cycle's or one record's) in the batch, beginning it when
        none is open. Raises HistorianError (``what``: "store a cycle") when they fail; the
        whole batch is then rolled back, and the error counts what went with it."""
        self._check_alive()
        try:
            if not self.open:
                self.db.execute("BEGIN")
                self.open = True
            out = statements()
        except sqlite3.Error as exc:
            raise self._lose(f"cannot {what}", exc) from exc
        if kind == "cycle":
            self.cycles += 1
        else:
            self.records += 1
        return out

    def commit(self) -> None:
        """Commit the open batch (nothing to do when none is open). Raises HistorianError
        when it cannot be committed: the batch is rolled back and the error counts it."""
        self._check_alive()
        if not self.open:
            return
        try:
            self.db.execute("COMMIT")
        except sqlite3.Error as exc:
            raise self._lose("cannot commit the open batch", exc) from exc
        self.open, self.cycles, self.records = False, 0, 0

    def _check_alive(self) -> None:
        """A batch SQLite rolled back on its own (a failure outside :meth:`write`) is an
        error naming what it lost, not a silent restart."""
        if self.open and not self.db.in_transaction:
            raise self._lose("the open batch was rolled back by SQLite", None)

    def _lose(self, what: str, exc: sqlite3.Error | None) -> HistorianError:
        """Roll back what is left of the batch; the error saying what was lost."""
        lost = f"{self.cycles} cycle(s) and {self.records} event(s)/run(s)"
        if self.db.in_transaction:
            with contextlib.suppress(sqlite3.Error):  # the error below says it all
                self.db.execute("ROLLBACK")
        self.open, self.cycles, self.records = False, 0, 0
        self.on_lost()
        why = f": {exc}" if exc is not None else ""
        return HistorianError(
            f"historian {self.path}: {what}{why}; nothing of the open batch is stored: "
            f"{lost} written since its last commit are lost"
        )
