"""What the core needs to run compiled code: a builder of shared libraries, handed in.

The core never compiles, writes files or reads the environment. A caller that wants a
compiled solver or filter passes an object with ``library(code) -> Path`` (the runtime's
:class:`controller.runtime.solver_cache.LibraryCache` is one); the core generates the C code
with CasADi, asks the builder for the library and loads it. Without a builder the core
evaluates the same CasADi functions uncompiled.
"""

from __future__ import annotations

from pathlib import Path
from typing import Protocol

__all__ = ["LibraryBuilder"]


class LibraryBuilder(Protocol):
    """Builds (or finds cached) a shared library from C source.

    ``library`` raises OSError or ``subprocess.SubprocessError`` when it cannot build one;
    the core then falls back to the uncompiled functions and logs why.
    """

    def library(self, code: str) -> Path: ...
