"""The solver-library cache: compiled CasADi code on disk, handed to the core as its builder.

:class:`LibraryCache` is the runtime's :class:`controller.core.jit.LibraryBuilder`: the core
generates C code (:func:`controller.core.jit.nlp_code`) and asks it for a shared library; it
compiles the code with the system C compiler into ``$PHARMATWIN_CACHE`` (default
``~/.cache/pharmatwin``), keyed by the CasADi version, the compiler, its flags and the code's
hash, so each problem is compiled once per machine. The runtime, HIL runs and the benches
construct one and pass it to :func:`controller.core.policy.build_policy` (``compile=``).

The core asks for its libraries one at a time, each loaded before the next is generated, so
a first start compiled them one after the other (the bioreactor's SQP, IPOPT and EKF: ~9 s of
gcc at -O2). :func:`build_compiled` builds a controller twice instead: a first pass finds the
cached libraries and only collects the code of the missing ones (the core builds those pieces
uncompiled, a few tenths of a second), the compiler then runs on all of them at once
(:meth:`LibraryCache.compile_all`), and a second pass loads them from the cache. With a warm
cache the first pass is the build. The first pass starts the compiler on each missing
library as soon as its code is known, and a :class:`controller.core.jit.KeyedLibraryBuilder`
pass finds the libraries of problems this process has seen by their key, without generating
their code again (a second build of the same controller: no code generated).

Flags: the hot path (the SQP, the filters) stays at -O2: -O1 compiles in 2/3 of the time but
made the CSTR's fast step ~8 % slower (B1's tightest model), -O0 in 1/5 of the time but
solves 2-3x slower (the bioreactor's SQP call: 0.21 ms at -O0, 0.07 ms at -O2). The rarely
run IPOPT fallback and cold start (code headed by :data:`controller.core.jit.RARELY_RUN`)
are compiled at -O0: IPOPT's time is its own (MUMPS and the interior point), not the NLP
functions' (the bioreactor's cold IPOPT solve, CPU-time medians: 11.5-12.0 ms at -O0 against
11.5-14.5 ms at -O2, the warm fallback 8.2-8.9 against 8.5-10.1 ms), and its library
compiles in ~1/5 of the time, which takes ~5 s of gcc off a first start.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import shutil
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import ClassVar, TypeVar

import casadi as ca

from controller.core.jit import RARELY_RUN, LibraryBuilder

__all__ = [
    "COMPILE_FLAGS",
    "RARE_FLAGS",
    "LibraryCache",
    "LibraryDeferred",
    "available_cpus",
    "build_compiled",
    "default_cache_dir",
]

log = logging.getLogger(__name__)
T = TypeVar("T")

#: C compiler flags of the compiled libraries.
COMPILE_FLAGS: tuple[str, ...] = ("-O2",)
#: ... and of the rarely run ones (code headed by :data:`controller.core.jit.RARELY_RUN`)
RARE_FLAGS: tuple[str, ...] = ("-O0",)


def available_cpus() -> int:
    """The CPUs this process may run on (at least 1)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not on Linux
        return max(1, os.cpu_count() or 1)


def default_cache_dir() -> Path:
    """``$PHARMATWIN_CACHE``, else ``~/.cache/pharmatwin``."""
    env = os.environ.get("PHARMATWIN_CACHE")
    return Path(env) if env else Path.home() / ".cache" / "pharmatwin"


class LibraryCache:
    """Compiled libraries on disk, keyed by the CasADi version and the C code's hash.

    A library is compiled to a temporary file in the cache folder and moved into place with
    ``os.replace``, so two processes compiling the same problem at once both end up loading a
    complete file. ``compiled`` counts the compiler runs of this instance (several may run
    at once: :meth:`compile_all`). Code headed by :data:`controller.core.jit.RARELY_RUN` (the
    IPOPT fallback and cold start) is compiled with ``rare_flags``.

    :meth:`keyed_library` remembers, for this process, which library each problem key
    (:func:`controller.core.jit.problem_key`) resolved to, per cache folder, compiler and
    flags: a second build of the same problem generates no code.
    """

    #: problem key -> library, per (folder, compiler, flags); shared by every instance
    _resolved: ClassVar[dict[tuple[str, str], Path]] = {}

    def __init__(
        self,
        directory: Path | None = None,
        compiler: str = "gcc",
        flags: tuple[str, ...] = COMPILE_FLAGS,
        rare_flags: tuple[str, ...] = RARE_FLAGS,
    ) -> None:
        self.directory = directory if directory is not None else default_cache_dir()
        self.compiler = compiler
        self.flags = flags
        self.rare_flags = rare_flags
        self.compiled = 0
        self.generated = 0  # codes generated for keyed_library (misses of the process memo)
        self._lock = threading.Lock()

    def flags_for(self, code: str) -> tuple[str, ...]:
        """The compiler flags of ``code``'s library."""
        return self.rare_flags if code.startswith(RARELY_RUN) else self.flags

    def path_for(self, code: str) -> Path:
        """Where the library of C ``code`` is (or will be) in the cache."""
        flags = " ".join(self.flags_for(code))
        head = f"casadi {ca.CasadiMeta.version()} {self.compiler} {flags}\n"
        key = hashlib.sha256(f"{head}{code}".encode()).hexdigest()[:32]
        return self.directory / f"nlp_{key}.so"

    def cached(self) -> set[Path]:
        """Every library in the cache folder now."""
        return set(self.directory.glob("nlp_*.so"))

    def library(self, code: str) -> Path:
        """The shared library built from C ``code``; compiles it on a cache miss.

        Raises OSError when it cannot be built: no compiler, an unwritable folder, or a
        failed or timed-out compiler run (its stderr in the message).
        """
        path = self.path_for(code)
        if not path.exists():
            self._compile(code, path)
        return path

    def keyed_library(self, key: str, code: Callable[[], str]) -> Path:
        """The library of the problem ``key``: :meth:`library` of ``code()``, with ``code``
        called only when this process has not resolved ``key`` to an existing library."""
        known = self.known(key)
        if known is not None and known.exists():
            return known
        return self.library(self.resolve(key, code))

    def known(self, key: str) -> Path | None:
        """The library this process resolved problem ``key`` to (None: not seen yet)."""
        return self._resolved.get((self._identity(), key))

    def resolve(self, key: str, code: Callable[[], str]) -> str:
        """``code()``, remembered as the code of problem ``key``."""
        text = code()
        self.generated += 1
        self._resolved[(self._identity(), key)] = self.path_for(text)
        return text

    def _identity(self) -> str:
        where = os.path.abspath(self.directory)
        return f"{where}\0{self.compiler}\0{self.flags}\0{self.rare_flags}"

    def compile_all(self, codes: Iterable[str], workers: int | None = None) -> dict[Path, OSError]:
        """Build every library of ``codes`` not in the cache yet, ``workers`` compiler runs at
        once (default: all of them, up to two per available CPU: three gcc runs on two CPUs
        ended ~5 % sooner than two at a time), the longest code first. Returns the builds
        that failed, by library path (nothing is raised: each failure is the OSError
        :meth:`library` would raise)."""
        todo = {self.path_for(c): c for c in sorted(codes, key=len, reverse=True)}
        todo = {path: code for path, code in todo.items() if not path.exists()}
        if not todo:
            return {}
        n = workers or min(len(todo), 2 * available_cpus())
        with ThreadPoolExecutor(max_workers=n, thread_name_prefix="pharmatwin-cc") as pool:
            done = {path: pool.submit(self._compile, code, path) for path, code in todo.items()}
        return failures(done)

    def _compile(self, code: str, path: Path) -> None:
        """Compile ``code`` into ``path`` (a temporary file moved into place)."""
        if shutil.which(self.compiler) is None:
            raise OSError(f"C compiler {self.compiler!r} not found on PATH")
        self.directory.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=self.directory) as tmp:
            src, lib = Path(tmp) / "nlp.c", Path(tmp) / "nlp.so"
            src.write_text(code, encoding="utf-8")
            flags = self.flags_for(code)
            cmd = [self.compiler, *flags, "-fPIC", "-shared", str(src), "-o", str(lib)]
            try:
                subprocess.run(cmd, check=True, capture_output=True, timeout=600)
            except subprocess.CalledProcessError as exc:
                why = exc.stderr.decode(errors="replace").strip()[-2000:]
                raise OSError(f"{self.compiler} failed ({exc.returncode}): {why}") from exc
            except subprocess.TimeoutExpired as exc:
                raise OSError(f"{self.compiler} timed out after {exc.timeout} s") from exc
            with self._lock:
                self.compiled += 1
            os.replace(lib, path)


def failures(done: dict[Path, Future[None]]) -> dict[Path, OSError]:
    """The compiler runs of ``done`` (waited for) that failed, by library path; an error
    that is not an OSError is raised."""
    failed: dict[Path, OSError] = {}
    for path, future in done.items():
        exc = future.exception()
        if isinstance(exc, OSError):
            failed[path] = exc
        elif exc is not None:
            raise exc
    return failed


# ---------------------------------------------------------------------- two-pass build
class LibraryDeferred(OSError):
    """A library not in the cache yet, its code kept for :func:`build_compiled`. The core
    takes it as a failed build and builds that piece uncompiled (the first pass only)."""


class _Deferring:
    """The first pass's builder: cached libraries as they are; every miss collected and its
    compiler run started at once in ``pool`` (while the pass goes on)."""

    def __init__(self, cache: LibraryCache, pool: ThreadPoolExecutor) -> None:
        self.cache, self.pool = cache, pool
        self.started: dict[Path, Future[None]] = {}

    def library(self, code: str) -> Path:
        path = self.cache.path_for(code)
        if path.exists():
            return path
        if path not in self.started:
            self.started[path] = self.pool.submit(self.cache._compile, code, path)
        raise LibraryDeferred(f"{path.name} is compiled after this pass")

    def keyed_library(self, key: str, code: Callable[[], str]) -> Path:
        known = self.cache.known(key)
        if known is not None and known.exists():
            return known
        return self.library(self.cache.resolve(key, code))


class _Compiled:
    """The second pass's builder: the cache, except that a library whose build failed in
    the first pass's compiler runs raises that failure again (no second compiler run)."""

    def __init__(self, cache: LibraryCache, failed: dict[Path, OSError]) -> None:
        self.cache, self.failed = cache, failed

    def library(self, code: str) -> Path:
        return self._checked(self.cache.path_for(code)) or self.cache.library(code)

    def keyed_library(self, key: str, code: Callable[[], str]) -> Path:
        known = self.cache.known(key)
        if known is not None and self._checked(known) is not None:
            return known
        return self.library(self.cache.resolve(key, code))

    def _checked(self, path: Path) -> Path | None:
        """``path`` when it exists; raises its first-pass failure; else None."""
        exc = self.failed.get(path)
        if exc is not None:
            raise exc
        return path if path.exists() else None


def build_compiled(build: Callable[[LibraryBuilder], T], cache: LibraryCache | None = None) -> T:
    """``build(builder)`` with every library it needs compiled in parallel beforehand.

    ``build`` takes a :class:`controller.core.jit.LibraryBuilder` and builds the objects
    that use it (e.g. a policy and an estimator). A first pass runs it with a builder that
    returns cached libraries and starts the compiler on each missing one as soon as its code
    is known (up to two runs per available CPU; the pass goes on meanwhile, building those
    pieces uncompiled); when none is missing, that pass's result is returned (the usual
    start, nothing done twice). Otherwise, once every compiler run has ended, ``build`` runs
    again, loading them (a :class:`controller.core.jit.KeyedLibraryBuilder` pass generates
    no code again). The first pass's log records under ``controller`` (the core's "built
    uncompiled" warnings among them) are held back, and emitted only when that pass is the
    one kept; a build that failed is reported by the second pass as the core reports it (it
    falls back to the uncompiled function).
    """
    cache = cache or LibraryCache()
    workers = 2 * available_cpus()
    started = time.perf_counter()
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="pharmatwin-cc") as pool:
        deferring = _Deferring(cache, pool)
        with _held_back("controller") as held:
            first = build(deferring)
        if not deferring.started:
            held.pass_on()
            return first
    failed = failures(deferring.started)
    n = len(deferring.started) - len(failed)
    log.info(
        "compiled %d solver librar%s in %.1f s (from the first pass's start), up to %d at "
        "once, into %s",
        n,
        "y" if n == 1 else "ies",
        time.perf_counter() - started,
        min(len(deferring.started), workers),
        cache.directory,
    )
    return build(_Compiled(cache, failed))


class _Held(logging.Handler):
    """Log records kept aside; :meth:`pass_on` hands them on as if just logged."""

    def __init__(self, logger: logging.Logger) -> None:
        super().__init__(logging.NOTSET)
        self.logger = logger
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)

    def pass_on(self) -> None:
        records, self.records = self.records, []
        for record in records:
            self.logger.handle(record)


@contextlib.contextmanager
def _held_back(name: str) -> Iterator[_Held]:
    """Hold back the records of logger ``name`` and its children in the block (dropped
    unless passed on after it; passed on when the block raises, so a failure keeps its
    context)."""
    logger = logging.getLogger(name)
    held = _Held(logger)
    propagate = logger.propagate
    logger.addHandler(held)
    logger.propagate = False
    failed = True
    try:
        yield held
        failed = False
    finally:
        logger.removeHandler(held)
        logger.propagate = propagate
        if failed:
            held.pass_on()
