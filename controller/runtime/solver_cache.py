"""The solver-library cache: compiled CasADi code on disk, handed to the core as its builder.

:class:`LibraryCache` is the runtime's :class:`controller.core.jit.LibraryBuilder`: the core
generates C code (:func:`controller.core.jit.nlp_code`) and asks it for a shared library; it
compiles the code with the system C compiler into ``$PHARMATWIN_CACHE`` (default
``~/.cache/pharmatwin``), keyed by the CasADi version, the compiler, its flags and the code's
hash, so each problem is compiled once per machine. The runtime, HIL runs and the benches
construct one and pass it to :func:`controller.core.policy.build_policy` (``compile=``).
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

import casadi as ca

__all__ = ["COMPILE_FLAGS", "LibraryCache", "default_cache_dir"]

#: C compiler flags of the compiled libraries.
COMPILE_FLAGS: tuple[str, ...] = ("-O2",)


def default_cache_dir() -> Path:
    """``$PHARMATWIN_CACHE``, else ``~/.cache/pharmatwin``."""
    env = os.environ.get("PHARMATWIN_CACHE")
    return Path(env) if env else Path.home() / ".cache" / "pharmatwin"


class LibraryCache:
    """Compiled libraries on disk, keyed by the CasADi version and the C code's hash.

    A library is compiled to a temporary file in the cache folder and moved into place with
    ``os.replace``, so two processes compiling the same problem at once both end up loading a
    complete file. ``compiled`` counts the compiler runs of this instance.
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

    def library(self, code: str) -> Path:
        """The shared library built from C ``code``; compiles it on a cache miss.

        Raises OSError when it cannot be built: no compiler, an unwritable folder, or a
        failed or timed-out compiler run (its stderr in the message).
        """
        head = f"casadi {ca.CasadiMeta.version()} {self.compiler} {' '.join(self.flags)}\n"
        key = hashlib.sha256(f"{head}{code}".encode()).hexdigest()[:32]
        path = self.directory / f"nlp_{key}.so"
        if path.exists():
            return path
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
            self.compiled += 1
            os.replace(lib, path)
        return path
