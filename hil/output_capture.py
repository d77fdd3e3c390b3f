"""A worker's output to a file: what solvers print from C (IPOPT, CasADi, SUNDIALS) included.

Solvers print through C's stdio, under ``sys.stdout``; only a ``dup2`` of file descriptors 1
and 2 catches that. :func:`output_to` sends both to a file for a block (the tuner's candidate
logs, the design space's per-run logs), so a sweep's terminal shows its progress, not
hundreds of lines of a line search's complaints.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import sys
from collections.abc import Iterator
from pathlib import Path

__all__ = ["output_to"]


def _flush_c_stdio() -> None:
    """Flush C's stdio buffers (IPOPT and CasADi print through them, not through Python)."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None).fflush(None)


@contextlib.contextmanager
def output_to(path: Path, header: str) -> Iterator[None]:
    """Send this process's file descriptors 1 and 2 to ``path`` (appended) for the block.

    Buffers are flushed before and after, so nothing leaks to the terminal late."""
    path.parent.mkdir(parents=True, exist_ok=True)
    sys.stdout.flush()
    sys.stderr.flush()
    _flush_c_stdio()
    target = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    saved = (os.dup(1), os.dup(2))
    try:
        os.write(target, header.encode())
        os.dup2(target, 1)
        os.dup2(target, 2)
        yield
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        _flush_c_stdio()
        os.dup2(saved[0], 1)
        os.dup2(saved[1], 2)
        for fd in (*saved, target):
            os.close(fd)
