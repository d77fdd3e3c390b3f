"""The OPC UA address-space cache: asyncua's standard address space, built once per user.

asyncua builds its standard address space in about 1.4 s per server.
:func:`address_space_shelf` caches it once per user (:func:`default_cache_dir`, whatever
the site file), built in a private folder under a file lock and renamed into place, with a
manifest of hashes that is checked on every use (:func:`cache_problem`): a corrupt cache is
rebuilt.
"""

from __future__ import annotations

import asyncio
import contextlib
import dbm
import fcntl
import hashlib
import importlib
import json
import logging
import os
import shutil
import tempfile
from collections.abc import Iterator
from importlib.metadata import version
from pathlib import Path

from asyncua import Server

log = logging.getLogger("pharmatwin.hil.opcua")  # the OPC UA server's log, which serve keeps

CACHE_ENV = "PHARMATWIN_CACHE_DIR"
_SHELF = "standard_address_space"
_MANIFEST = "manifest.json"


def dbm_backend() -> str:
    """The dbm module a new shelf is written with here: ``dbm.open``'s first importable one,
    in its own order (``sqlite3`` from Python 3.13, then ``gnu``, ``ndbm``, ``dumb``)."""
    names = getattr(dbm, "_names", ["dbm.gnu", "dbm.ndbm", "dbm.dumb"])
    for name in names:
        with contextlib.suppress(ImportError):
            importlib.import_module(name)
            return str(name).removeprefix("dbm.")
    return "dumb"


def default_cache_dir() -> Path:
    """``$PHARMATWIN_CACHE_DIR``, else ``$XDG_CACHE_HOME/pharmatwin``, else ``~/.cache/pharmatwin``:
    the same for every site file, wherever it lives."""
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV])
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg) if xdg else Path.home() / ".cache") / "pharmatwin"


async def address_space_shelf(folder: Path | None = None) -> Path:
    """asyncua's standard address space as a shelf in ``folder`` (default
    :func:`default_cache_dir`), built on first use; returns the path to give asyncua.

    The cache lives in ``<folder>/opcua-address-space-<asyncua version>-<dbm backend>/``: a
    shelf is read with the dbm module that wrote it (:func:`dbm_backend`), which another
    Python may not have (Debian's has ``dbm.ndbm``, a source build without Berkeley DB only
    ``dbm.dumb``), so each backend keeps its own. It is built in a private folder and renamed
    into place under an exclusive lock (``.lock``), so servers starting at once (threads,
    processes) build it once and never see half of it. Its
    manifest holds the files' SHA-256; a cache that does not match is set aside and rebuilt
    (logged). asyncua reuses a shelf only if ``path`` (or ``path.db``) is a file, but the
    dbm.dumb backend writes ``path.dat``/``path.dir``: an empty marker file at ``path`` does.
    """
    base = folder if folder is not None else default_cache_dir()
    final = base / f"opcua-address-space-{version('asyncua')}-{dbm_backend()}"
    why = await asyncio.to_thread(cache_problem, final)
    if why is None:
        return final / _SHELF
    base.mkdir(parents=True, exist_ok=True)
    with await asyncio.to_thread(_locked, base / ".lock"):
        why = await asyncio.to_thread(cache_problem, final)
        if why is not None:
            await _rebuild(base, final, why)
    return final / _SHELF


@contextlib.contextmanager
def _hold(fd: int) -> Iterator[None]:
    try:
        yield
    finally:
        fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)


def _locked(path: Path) -> contextlib.AbstractContextManager[None]:
    """An exclusive flock on ``path`` (blocks until free), released on exit."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    fcntl.flock(fd, fcntl.LOCK_EX)
    return _hold(fd)


def cache_problem(folder: Path) -> str | None:
    """Why the cache in ``folder`` cannot be used (None: it can)."""
    try:
        manifest = json.loads((folder / _MANIFEST).read_text())
        files: dict[str, str] = manifest["files"]
    except FileNotFoundError:
        return "not built yet"
    except (OSError, ValueError, KeyError, TypeError) as exc:
        return f"its manifest is unreadable ({exc})"
    if not (folder / _SHELF).is_file() or not files:
        return "it has no shelf"
    for name, digest in files.items():
        try:
            actual = hashlib.sha256((folder / name).read_bytes()).hexdigest()
        except OSError as exc:
            return f"{name} is unreadable ({exc.strerror or exc})"
        if actual != digest:
            return f"{name} does not match its manifest"
    return None


async def _rebuild(base: Path, final: Path, why: str) -> None:
    log.info("building the OPC UA address-space cache in %s: %s", final, why)
    work = Path(tempfile.mkdtemp(prefix=".building-", dir=base))
    try:
        await Server().iserver.load_standard_address_space(work / _SHELF)
        (work / _SHELF).touch()  # dbm.dumb's marker; with the other backends, the shelf itself
        files = {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(work.iterdir())}
        (work / _MANIFEST).write_text(json.dumps({"asyncua": version("asyncua"), "files": files}))
        if final.exists():
            aside = Path(tempfile.mkdtemp(prefix=".corrupt-", dir=base))
            os.replace(final, aside / final.name)
            shutil.rmtree(aside, ignore_errors=True)
        os.replace(work, final)
    finally:
        shutil.rmtree(work, ignore_errors=True)
