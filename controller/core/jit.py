"""What the core needs to run compiled code: a builder of shared libraries, handed in.

The core never compiles, writes files or reads the environment. A caller that wants a
compiled solver or filter passes an object with ``library(code) -> Path`` (the runtime's
:class:`controller.runtime.solver_cache.LibraryCache` is one); the core generates the C code
with CasADi, asks the builder for the library and loads it. Without a builder the core
evaluates the same CasADi functions uncompiled (a ``solver.jit`` or estimator ``jit``
config then runs uncompiled: same results, slower).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Protocol

import casadi as ca

__all__ = ["LibraryBuilder", "compiled_nlpsol", "nlp_code"]


class LibraryBuilder(Protocol):
    """Builds (or finds cached) a shared library from C source.

    ``library`` raises OSError when it cannot build one (the runtime's cache turns a failed
    or timed-out compiler run into one); the core then falls back to the uncompiled
    functions and logs why.
    """

    def library(self, code: str) -> Path: ...


def nlp_code(solver: ca.Function) -> str:
    """C code of every function the nlpsol ``solver`` evaluates (its oracle and derivatives)."""
    gen = ca.CodeGenerator("nlp.c")
    gen.add(solver.oracle())
    for name in solver.get_function():
        gen.add(solver.get_function(name))
    return str(gen.dump())


def compiled_nlpsol(
    builder: LibraryBuilder, name: str, plugin: str, plain: ca.Function, opts: dict[str, Any]
) -> tuple[ca.Function, Path]:
    """The nlpsol ``plain`` loaded from the library ``builder`` builds of its code, and that
    library's path. ``opts`` are the solver's options without code-shaping ones (such as a
    custom ``hess_lag``: the library holds every function under its standard name).

    Raises what ``builder.library`` raises, or RuntimeError when CasADi cannot load it.
    """
    path = builder.library(nlp_code(plain))
    return ca.nlpsol(name, plugin, str(path), opts), path
