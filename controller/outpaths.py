"""Paths checked before any work: a folder or a file a command is told to write, a file it reads.

A command that writes its results (a campaign, a tuning, a forecast, a simulation) checks its
output path first, so that a bad one is one clear error up front, never a traceback after
minutes of solves. Messages read ``FLAG: must be ... (got PATH: why)``. A file a command reads
that exists but is not a file (a directory) is named for what it is, with what is allowed
(:func:`input_file_problem`), never reported as "not found".
"""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["file_problem", "input_file_problem", "out_problem"]


def out_problem(out: Path, *, default: bool = False, flag: str = "--out") -> str | None:
    """Why ``out`` cannot be the output folder (``FLAG: ...``), or None when it can.

    It may exist as a directory or not exist yet; its nearest existing ancestor must then be
    a writable directory (so the folder can be made).
    """
    got = f"{out} (the default)" if default else str(out)
    allowed = f"{flag}: must be a directory or not exist yet"
    if out.exists() and not out.is_dir():
        return f"{allowed} (got {got}: it is {_kind(out)})"
    return _ancestor_problem(out, got, flag, allowed)


def file_problem(path: Path, flag: str) -> str | None:
    """Why ``path`` cannot be the output file ``flag`` names, or None when it can.

    It may be a file or not exist yet; its folder is made when missing, so its nearest
    existing ancestor must be a writable directory.
    """
    allowed = f"{flag}: must be a file or not exist yet"
    if path.exists() and not path.is_file():
        return f"{allowed} (got {path}: it is {_kind(path)})"
    return _ancestor_problem(path, str(path), flag, allowed)


def input_file_problem(path: Path, allowed: str) -> str | None:
    """Why ``path``, a file a command reads, cannot be read: ``"is a directory, not a file;
    allowed: ALLOWED"`` (the caller names the path, e.g. as a Problem's file); None when it is
    a file or does not exist (the caller says a missing file in its own words)."""
    if not path.exists() or path.is_file():
        return None
    kind = "a directory" if path.is_dir() else "not a regular file"
    return f"is {kind}, not a file; allowed: {allowed}"


def _ancestor_problem(path: Path, got: str, flag: str, allowed: str) -> str | None:
    """Why ``path``'s nearest existing ancestor cannot hold it, or None when it can."""
    existing = path if path.is_dir() else path.parent
    while not existing.exists() and existing.parent != existing:
        existing = existing.parent
    if not existing.is_dir():
        return f"{allowed} (got {got}: {existing} is {_kind(existing)})"
    if not os.access(existing, os.W_OK | os.X_OK):
        return f"{flag}: must be a folder that can be written (got {got}: {existing} is not)"
    return None


def _kind(path: Path) -> str:
    if path.is_dir():
        return "a directory"
    return "a file" if path.is_file() else "not a directory"
