"""What the core needs to run compiled code: a builder of shared libraries, handed in.

The core never compiles, writes files or reads the environment. A caller that wants a
compiled solver or filter passes an object with ``library(code) -> Path`` (the runtime's
:class:`controller.runtime.solver_cache.LibraryCache` is one); the core generates the C code
with CasADi, asks the builder for the library and loads it. Without a builder the core
evaluates the same CasADi functions uncompiled (a ``solver.jit`` or estimator ``jit``
config then runs uncompiled: same results, slower).

Generating the code of an NLP's derivatives costs a tenth of a second per solver, paid
again by every build even when the library is cached. A builder that also has
``keyed_library(key, code)`` (:class:`KeyedLibraryBuilder`) is asked by a digest of the
problem first (:func:`problem_key`: the serialized NLP, the plugin and every option), and
calls ``code()`` only when it has not seen that key: a second build of the same problem in
one process generates nothing.

Code whose first line is :data:`RARELY_RUN` is the code of a solver that rarely runs (the
IPOPT fallback and cold start): a builder may compile it for compile time rather than speed.

Inside :func:`shared_solvers` (a campaign worker's case), a solver loaded from a library is
kept (:func:`loaded_nlpsol`): the next case's controller of the same configuration shares it
instead of loading it again (~0.5-1 ms a solver, four a freeze-dryer controller). Sharing is
opt-in: on an edge PC the web view's what-if forecast builds a second controller of the
site's configuration, and sharing would make the live solve, which has a deadline, wait for
the forecast's solves. CasADi Functions never change, but an nlpsol is not safe to call from
two threads at once (seen: two threads calling one IPOPT solver corrupted its Jacobian's
work memory and crashed the process), and a plain call's ``stats()`` reads a memory of the
solver's, not the call's. So every call of a solver that may be shared, and the reading of
its stats, holds the solver's lock (:func:`exclusive`): each call whole, one at a time.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import threading
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import casadi as ca
import numpy as np

from controller.core.memo import Lru

__all__ = [
    "RARELY_RUN",
    "Deferred",
    "KeyedLibraryBuilder",
    "LibraryBuilder",
    "compiled_nlpsol",
    "exclusive",
    "keyed_nlpsol",
    "loaded_nlpsol",
    "nlp_code",
    "problem_key",
    "resolved",
    "shared_solvers",
    "stateless",
]

#: The first line of the code of a rarely run solver (see the module's docstring).
RARELY_RUN = "/* pharmatwin: rarely run */\n"
#: Bumped whenever :func:`nlp_code` generates differently: part of every problem key.
GENERATOR = "nlp_code 2"


@dataclass(frozen=True)
class Deferred:
    """A code-shaping option computed by ``make()`` only when the code is generated (e.g. an
    expanded derivative, tens of ms to build and to serialize). Keyed by ``name``: its value
    must follow from the NLP and the name alone (rename it when ``make`` changes)."""

    name: str
    make: Callable[[], Any]


def resolved(opts: Mapping[str, Any]) -> dict[str, Any]:
    """``opts`` with every :class:`Deferred` value made."""
    return {k: v.make() if isinstance(v, Deferred) else v for k, v in opts.items()}


class LibraryBuilder(Protocol):
    """Builds (or finds cached) a shared library from C source.

    ``library`` raises OSError when it cannot build one (the runtime's cache turns a failed
    or timed-out compiler run into one); the core then falls back to the uncompiled
    functions and logs why.
    """

    def library(self, code: str) -> Path: ...


@runtime_checkable
class KeyedLibraryBuilder(Protocol):
    """A :class:`LibraryBuilder` that can also find a library by a key of the problem.

    ``keyed_library(key, code)`` returns the library of ``code()``; it calls ``code`` only
    for a key it has not resolved before (the same key always means the same code). Raises
    what ``library`` raises.
    """

    def library(self, code: str) -> Path: ...

    def keyed_library(self, key: str, code: Callable[[], str]) -> Path: ...


def nlp_code(solver: ca.Function, rarely_run: bool = False) -> str:
    """C code of every function the nlpsol ``solver`` evaluates (its oracle and derivatives);
    with ``rarely_run``, headed by :data:`RARELY_RUN`."""
    gen = ca.CodeGenerator("nlp.c")
    gen.add(solver.oracle())
    for name in solver.get_function():
        gen.add(solver.get_function(name))
    return (RARELY_RUN if rarely_run else "") + str(gen.dump())


def compiled_nlpsol(
    builder: LibraryBuilder, name: str, plugin: str, plain: ca.Function, opts: dict[str, Any]
) -> tuple[ca.Function, Path]:
    """The nlpsol ``plain`` loaded from the library ``builder`` builds of its code, and that
    library's path. ``opts`` are the solver's options without code-shaping ones (such as a
    custom ``hess_lag``: the library holds every function under its standard name).

    Raises what ``builder.library`` raises, or RuntimeError when CasADi cannot load it.
    """
    path = builder.library(nlp_code(plain))
    return loaded_nlpsol(name, plugin, path, opts), path


#: :func:`loaded_nlpsol`'s solvers by name, plugin, library and options (each with the CasADi
#: objects its key names by identity)
_LOADED: Lru[tuple[Any, ...], tuple[list[object], ca.Function]] = Lru(64)
_LOADED_LOCK = threading.Lock()
#: the attribute of a shared solver that holds its :func:`exclusive` lock
_EXCLUSIVE = "_pharmatwin_exclusive"


#: whether :func:`loaded_nlpsol` shares solvers now (:func:`shared_solvers`)
_SHARING = threading.local()


@contextlib.contextmanager
def shared_solvers() -> Iterator[None]:
    """Meanwhile (in this thread), controllers built share the solvers they load
    (:func:`loaded_nlpsol`). For a process that runs one case at a time, each with its own
    controller: a campaign worker."""
    before = getattr(_SHARING, "on", False)
    _SHARING.on = True
    try:
        yield
    finally:
        _SHARING.on = before


def loaded_nlpsol(name: str, plugin: str, path: Path, opts: Mapping[str, Any]) -> ca.Function:
    """The nlpsol ``plugin`` named ``name`` loaded from the library ``path`` with ``opts``.
    Inside :func:`shared_solvers`: loaded at the first call with these in this process, the
    same solver after it (outside it, a solver of the caller's own, loaded now).

    The library's name holds its code's digest (the builder's key), so a path names one code.
    A shared solver is called by several controllers: every call, with the reading of its
    stats, holds :func:`exclusive`. Only a solver that keeps nothing from one call to the next
    is shared (:func:`stateless`), a precaution: a controller's result must not depend on
    which other controller of its configuration solved before it. Raises what
    ``ca.nlpsol`` raises."""
    if not getattr(_SHARING, "on", False) or not stateless(plugin, opts):
        return ca.nlpsol(name, plugin, str(path), dict(opts))
    held: list[object] = []
    try:
        key = (name, plugin, str(path), _identity(dict(opts), held))
    except TypeError:
        return ca.nlpsol(name, plugin, str(path), dict(opts))
    with _LOADED_LOCK:
        hit = _LOADED.get(key)
    if hit is not None:
        return hit[1]
    solver = ca.nlpsol(name, plugin, str(path), dict(opts))
    setattr(solver, _EXCLUSIVE, threading.Lock())
    with _LOADED_LOCK:
        _LOADED.put(key, (held, solver))
    return solver


def stateless(plugin: str, opts: Mapping[str, Any]) -> bool:
    """Whether the nlpsol ``plugin`` with ``opts`` starts every call from its arguments alone:
    IPOPT (its warm start is the arguments), and an SQP whose QP solver is qrqp. Not an SQP on
    qpOASES (sqpmethod's default), which can hot-start a QP from its last one: not shared,
    as a precaution (not shown to leak through the separate memories of two buffers)."""
    if plugin == "ipopt":
        return True
    return plugin == "sqpmethod" and opts.get("qpsol") == "qrqp"


def exclusive(solver: ca.Function) -> threading.Lock:
    """The lock to hold around a call of ``solver`` and the reading of its stats, when it may
    be shared (:func:`loaded_nlpsol`); a lock nobody else holds otherwise."""
    lock = getattr(solver, _EXCLUSIVE, None)
    return lock if lock is not None else threading.Lock()


def keyed_nlpsol(
    builder: LibraryBuilder,
    name: str,
    plugin: str,
    nlp: Mapping[str, ca.MX],
    opts: dict[str, Any],
    extra: dict[str, Any] | None = None,
    *,
    rarely_run: bool = False,
) -> tuple[ca.Function, Path | None, Exception | None]:
    """The nlpsol of ``nlp`` (a dict of ``x``, ``p``, ``f``, ``g``) with options ``opts`` and
    code-shaping ``extra`` ones (such as ``hess_lag``), loaded from its compiled library.

    Returns the solver, its library and None; or, when the library cannot be built or
    loaded (OSError, RuntimeError), the uncompiled solver, None and that error (the caller
    logs it). A :class:`KeyedLibraryBuilder` is asked by :func:`problem_key` first, so the
    code (and the uncompiled solver it comes from) is generated only on its first sight.
    """
    made: list[ca.Function] = []

    def plain() -> ca.Function:
        if not made:
            made.append(ca.nlpsol(name, plugin, dict(nlp), {**opts, **resolved(extra or {})}))
        return made[0]

    def code() -> str:
        return nlp_code(plain(), rarely_run)

    try:
        key = problem_key(plugin, nlp, {**opts, **(extra or {})}, rarely_run)
        if key is not None and isinstance(builder, KeyedLibraryBuilder):
            path = builder.keyed_library(key, code)
        else:
            path = builder.library(code())
        return loaded_nlpsol(name, plugin, path, opts), path, None
    except (OSError, RuntimeError) as exc:
        return plain(), None, exc


def problem_key(
    plugin: str, nlp: Mapping[str, ca.MX], opts: Mapping[str, Any], rarely_run: bool
) -> str | None:
    """A digest of everything the code of the nlpsol ``plugin`` of ``nlp`` with ``opts``
    depends on: the generator, CasADi's version, the plugin, the serialized NLP and every
    option (Functions serialized); None when an option's value cannot be written out
    exactly (no key then: the code is generated and hashed).

    Remembered per process (:data:`_KEYS`) by the identity of the NLP's expressions and of
    the options' Functions (held, so their ids cannot be reused; CasADi expressions and
    Functions never change) and the exact value of every other option: a controller built
    again from the memoized transcription (:mod:`controller.core.ocp_memo`) does not
    serialize its NLP again (~3 ms a case)."""
    held: list[object] = []
    try:
        ident = (plugin, rarely_run, _identity(dict(nlp), held), _identity(dict(opts), held))
    except TypeError:
        return None
    hit = _KEYS.get(ident)
    if hit is not None:
        return hit[1]
    key = _problem_key(plugin, nlp, opts, rarely_run)
    _KEYS.put(ident, (held, key))
    return key


#: :func:`problem_key`'s digests by identity, each with the CasADi objects it names
_KEYS: Lru[tuple[Any, ...], tuple[list[object], str | None]] = Lru(32)


def _identity(value: Any, held: list[object]) -> Any:
    """``value`` as a hashable token: CasADi objects by identity (appended to ``held``),
    everything else by type and exact value; TypeError for what :func:`_canonical` refuses."""
    if isinstance(value, ca.Function | ca.MX | ca.SX):
        held.append(value)
        return ("casadi", id(value))
    if isinstance(value, Deferred):
        return ("deferred", value.name)
    if isinstance(value, dict):
        return ("dict", tuple(sorted((str(k), _identity(v, held)) for k, v in value.items())))
    if isinstance(value, list | tuple):
        return ("list", tuple(_identity(v, held) for v in value))
    if isinstance(value, np.ndarray | ca.DM):
        array = np.asarray(value, dtype=float)
        return ("array", array.shape, array.tobytes())
    if isinstance(value, bool | int | str | float) or value is None:
        return (type(value).__name__, value.hex() if isinstance(value, float) else value)
    raise TypeError(f"cannot key an option of type {type(value).__name__}")


def _problem_key(
    plugin: str, nlp: Mapping[str, ca.MX], opts: Mapping[str, Any], rarely_run: bool
) -> str | None:
    try:
        options = json.dumps(_canonical(dict(opts)), sort_keys=True)
    except TypeError:
        return None
    names = [k for k in ("x", "p") if k in nlp]
    outs = [k for k in ("f", "g") if k in nlp]
    fn = ca.Function("nlp", [nlp[k] for k in names], [nlp[k] for k in outs], names, outs)
    head = f"{GENERATOR}\n{ca.CasadiMeta.version()}\n{plugin}\n{rarely_run}\n{options}\n"
    return hashlib.sha256((head + fn.serialize()).encode()).hexdigest()


def _canonical(value: Any) -> Any:
    """``value`` as plain JSON data, exactly; TypeError for anything else."""
    if isinstance(value, ca.Function):
        return {"casadi.Function": value.serialize()}
    if isinstance(value, Deferred):
        return {"deferred": value.name}
    if isinstance(value, dict):
        return {str(k): _canonical(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_canonical(v) for v in value]
    if isinstance(value, np.ndarray | ca.DM):
        return {"array": np.asarray(value, dtype=float).tolist(), "shape": np.shape(value)}
    if isinstance(value, bool | int | str) or value is None:
        return value
    if isinstance(value, float):
        return {"float": value.hex()}
    raise TypeError(f"cannot key an option of type {type(value).__name__}")
