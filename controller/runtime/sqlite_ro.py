"""Read-only SQLite reads that leave a database's folder as they found it.

SQLite's read-only reader (``mode=ro``) of a WAL database makes a ``-wal`` and a ``-shm``
file beside it when there are none, and cannot remove them when it closes: every read of a
closed historian (``pharmatwin history export``, ``pharmatwin forecast``) left two files
beside it. Here, a database with no writer's file beside it is opened ``immutable`` (SQLite
then makes no file); one with a live (or dead) writer's ``-wal`` is read the usual read-only
way, through that ``-wal``: one read at a time (:func:`read_as_is`, the audit trail's readers)
or a connection kept across queries (:class:`AsIsReader`, the historian's).

Errors are ``sqlite3.Error``: the caller words them with its own file and key.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

_T = TypeVar("_T")

#: every table's columns, one row a column
_SCHEMA = (
    "SELECT m.name, c.name FROM sqlite_master AS m, pragma_table_info(m.name) AS c "
    "WHERE m.type = 'table'"
)


def writer_files(db: Path) -> bool:
    """A ``-wal`` (or a rollback ``-journal``) beside ``db``: a writer is running, or died,
    and rows may be in that file rather than in ``db`` itself."""
    return any(db.with_name(db.name + suffix).exists() for suffix in ("-wal", "-journal"))


def file_state(db: Path) -> tuple[object, ...]:
    """What changes when anyone writes ``db``: its writer's files (:func:`writer_files`) and
    the file's identity, size and modification times. A writer that opens the database,
    writes, checkpoints and closes while an immutable read runs leaves no ``-wal`` behind,
    but changes these: the read is then not to be trusted."""
    try:
        st = db.stat()
    except OSError:
        return (writer_files(db),)
    return (writer_files(db), st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)


def connect_read_only(
    db: Path, immutable: bool, *, check_same_thread: bool = True
) -> sqlite3.Connection:
    """``db`` opened read-only (``immutable``: as a file no one writes, no ``-wal``/``-shm``
    made), autocommit, ``query_only``. Raises sqlite3.Error when it cannot be opened."""
    uri = db.resolve().as_uri() + ("?mode=ro&immutable=1" if immutable else "?mode=ro")
    conn = sqlite3.connect(uri, uri=True, isolation_level=None, check_same_thread=check_same_thread)
    try:
        conn.execute("PRAGMA query_only=ON")
    except sqlite3.Error:
        conn.close()
        raise
    return conn


def read_as_is(
    db: Path,
    read: Callable[[sqlite3.Connection], _T],
    connect: Callable[[Path, bool], sqlite3.Connection] = connect_read_only,
) -> _T:
    """``read(conn)`` on ``db`` opened read-only by ``connect(db, immutable)`` and closed
    after, the folder left as it was found.

    Opened ``immutable`` when no writer's file is beside ``db`` (:func:`writer_files`), else
    the usual read-only way, through the writer's ``-wal``. A writer may open the file during
    an immutable read, change it under the read and be gone again (its ``-wal`` checkpointed
    and deleted): when the file or its writer's files changed at all (:func:`file_state`),
    the read is made again the usual way (its result or error is not kept). Raises what
    ``connect`` or ``read`` raise.
    """
    before = file_state(db)
    immutable = not before[0]
    try:
        result = _read_once(db, read, connect, immutable)
    except Exception:
        if not (immutable and file_state(db) != before):
            raise
    else:
        if not (immutable and file_state(db) != before):
            return result
    return _read_once(db, read, connect, False)


def _read_once(
    db: Path,
    read: Callable[[sqlite3.Connection], _T],
    connect: Callable[[Path, bool], sqlite3.Connection],
    immutable: bool,
) -> _T:
    conn = connect(db, immutable)
    try:
        return read(conn)
    finally:
        conn.close()


class AsIsReader:
    """One read-only connection to ``db`` kept across many queries, its folder left as found.

    Opened ``immutable`` when no writer's file is beside ``db`` (:func:`writer_files`),
    else the usual read-only way. A writer may open the file after it was opened immutable,
    change it under a query and be gone again (its ``-wal`` checkpointed and deleted): when
    the file or its writer's files changed at all (:func:`file_state`), the query is made
    again the usual way, and so are all the next ones (the first one's error, if it failed,
    is not kept). ``tables``: each table's name and its column names, read when it opens.
    Raises sqlite3.Error (when it cannot open or read the schema, with nothing left open).
    """

    def __init__(self, db: Path, *, check_same_thread: bool = True) -> None:
        self.db = db
        self._same_thread = check_same_thread
        self._state = file_state(db)
        self.immutable = not self._state[0]
        self.conn = connect_read_only(db, self.immutable, check_same_thread=check_same_thread)
        try:
            rows = self.query(_SCHEMA)
        except sqlite3.Error:
            self.close()
            raise
        self.tables: dict[str, set[str]] = {}
        for table, column in rows:
            self.tables.setdefault(table, set()).add(column)

    def query(self, sql: str, params: tuple[Any, ...] = ()) -> list[Any]:
        """Every row of ``sql``; made again through a writer's ``-wal`` if one appeared."""
        try:
            rows = self.conn.execute(sql, params).fetchall()
        except sqlite3.Error:
            if not self._writer_appeared():
                raise
        else:
            if not self._writer_appeared():
                return rows
        self.conn.close()
        self.immutable = False
        self.conn = connect_read_only(self.db, False, check_same_thread=self._same_thread)
        return self.conn.execute(sql, params).fetchall()

    def _writer_appeared(self) -> bool:
        """Someone wrote the file (or holds it open) since it was opened immutable."""
        return self.immutable and file_state(self.db) != self._state

    def close(self) -> None:
        self.conn.close()
