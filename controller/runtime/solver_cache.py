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
cache the first pass is the build. -O2 stays: -O1 compiles in 2/3 of the time but made the
CSTR's fast step ~8 % slower (B1's tightest model), -O0 in 1/5 of the time but solves 2-3x
slower.
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
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TypeVar

import casadi as ca

from controller.core.jit import LibraryBuilder

__all__ = [
    "COMPILE_FLAGS",
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
    at once: :meth:`compile_all`).
    """

    def __init__(
        self,
        directory: Path | None = None,
        compiler: str = "gcc",
        flags: tuple[str, ...] = COMPILE_FLAGS,
    ) -> None:
        self.directory = directory if directory is not None else default_cache_dir()
        self.compiler = compiler
        self.flags = flags
        self.compiled = 0
        self._lock = threading.Lock()

    def path_for(self, code: str) -> Path:
        """Where the library of C ``code`` is (or will be) in the cache."""
        head = f"casadi {ca.CasadiMeta.version()} {self.compiler} {' '.join(self.flags)}\n"
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
        failed: dict[Path, OSError] = {}
        for path, future in done.items():
            exc = future.exception()
            if isinstance(exc, OSError):
                failed[path] = exc
            elif exc is not None:
                raise exc
        return failed

    def _compile(self, code: str, path: Path) -> None:
        """Compile ``code`` into ``path`` (a temporary file moved into place)."""
        if shutil.which(self.compiler) is None:
            raise OSError(f"C compiler {self.compiler!r} not found on PATH")
        self.directory.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=self.directory) as tmp:
            src, lib = Path(tmp) / "nlp.c", Path(tmp) / "nlp.so"
            src.write_text(code, encoding="utf-8")
            cmd = [self.compiler, *self.flags, "-fPIC", "-shared", str(src), "-o", str(lib)]
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


# ---------------------------------------------------------------------- two-pass build
class LibraryDeferred(OSError):
    """A library not in the cache yet, its code kept for :func:`build_compiled`. The core
    takes it as a failed build and builds that piece uncompiled (the first pass only)."""


class _Deferring:
    """The first pass's builder: cached libraries as they are; every miss collected."""

    def __init__(self, cache: LibraryCache) -> None:
        self.cache = cache
        self.codes: dict[Path, str] = {}

    def library(self, code: str) -> Path:
        path = self.cache.path_for(code)
        if path.exists():
            return path
        self.codes[path] = code
        raise LibraryDeferred(f"{path.name} is compiled after this pass")


class _Compiled:
    """The second pass's builder: the cache, except that a library whose build failed in
    :meth:`LibraryCache.compile_all` raises that failure again (no second compiler run)."""

    def __init__(self, cache: LibraryCache, failed: dict[Path, OSError]) -> None:
        self.cache, self.failed = cache, failed

    def library(self, code: str) -> Path:
        exc = self.failed.get(self.cache.path_for(code))
        if exc is not None:
            raise exc
        return self.cache.library(code)


def build_compiled(build: Callable[[LibraryBuilder], T], cache: LibraryCache | None = None) -> T:
    """``build(builder)`` with every library it needs compiled in parallel beforehand.

    ``build`` takes a :class:`controller.core.jit.LibraryBuilder` and builds the objects
    that use it (e.g. a policy and an estimator). A first pass runs it with a builder that
    returns cached libraries and collects the code of the missing ones; when none is
    missing, that pass's result is returned (the usual start, nothing done twice). Otherwise
    the compiler runs on every missing library at once (:meth:`LibraryCache.compile_all`)
    and ``build`` runs again, loading them. The first pass's log records under
    ``controller`` (the core's "built uncompiled" warnings among them) are held back, and
    emitted only when that pass is the one kept; a build that failed is reported by the
    second pass as the core reports it (it falls back to the uncompiled function).
    """
    cache = cache or LibraryCache()
    deferring = _Deferring(cache)
    with _held_back("controller") as held:
        first = build(deferring)
    if not deferring.codes:
        held.pass_on()
        return first
    started = time.perf_counter()
    failed = cache.compile_all(deferring.codes.values())
    log.info(
        "compiled %d solver librar%s in %.1f s, up to %d at once, into %s",
        len(deferring.codes) - len(failed),
        "y" if len(deferring.codes) - len(failed) == 1 else "ies",
        time.perf_counter() - started,
        min(len(deferring.codes), 2 * available_cpus()),
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
