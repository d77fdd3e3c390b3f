"""Run metadata: what was running, enough to reproduce a run (21 CFR Part 11, GAMP 5).

:func:`run_info` fills a :class:`~controller.runtime.historian_records.RunInfo` for a run
starting now: software version, git commit, config file hashes, the plant model's version
(:func:`model_version`), Python and library versions.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import functools
import hashlib
import inspect
import json
import platform
import re
import subprocess
import uuid
from collections.abc import Sequence
from importlib import metadata
from pathlib import Path
from typing import TYPE_CHECKING

from controller.runtime.audit_chain import software_version
from controller.runtime.historian_records import HistorianError, RunInfo

if TYPE_CHECKING:
    from plant_models import PlantModel

LIBRARIES = ("casadi", "do-mpc", "numpy", "pymodbus", "asyncua", "pydantic")
_GIT_COMMIT = re.compile(r"[0-9a-f]{40}|[0-9a-f]{64}")


def model_version(model: PlantModel) -> str:
    """SHA-256 over the model's declaration, source, parameter data and options.

    Changes when an equation, a variable, a bound, a unit or a parameter value changes.
    """
    ps = model.parameter_set
    source = _class_source(type(model))
    body = {
        "name": model.name,
        "time_unit": model.time_unit,
        "variables": [dataclasses.asdict(v) for v in model.all_variables.values()],
        "parameters": [dataclasses.asdict(p) for p in ps.parameters.values()],
        "initial_state": dict(ps.initial_state),
        "nominal_inputs": dict(ps.nominal_inputs),
        "initial_algebraic": dict(ps.initial_algebraic),
        "smooth": model.smooth,
        "source": source,
    }
    text = json.dumps(body, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()


@functools.cache
def _class_source(cls: type) -> str:
    """The source of a model class, read once per process (the code this process runs; a
    campaign worker asks for it every case). Empty without source (a frozen build)."""
    try:
        return inspect.getsource(cls)
    except (OSError, TypeError):  # no source (frozen build): the declaration still counts
        return ""


def git_commit(folder: Path | None = None) -> str | None:
    """``git rev-parse HEAD`` in ``folder`` (default: this package's), or None if unknown:
    also for a copy installed inside another project's work tree (a venv in a repo), whose
    HEAD is not this code's. Asked once per folder and process: the commit of the code this
    process loaded."""
    return _git_commit(folder or Path(__file__).resolve().parent)


@functools.lru_cache(maxsize=16)
def _git_commit(where: Path) -> str | None:
    try:
        top, out = _git(where, "rev-parse", "--show-toplevel", "HEAD").decode().splitlines()
    except (OSError, subprocess.SubprocessError, UnicodeDecodeError, ValueError):
        return None
    if not _ours(Path(top), where):
        return None
    return out if _GIT_COMMIT.fullmatch(out) else None


def _ours(root: Path, where: Path) -> bool:
    """``where`` is inside one of :data:`SOURCE_PACKAGES` of the work tree at ``root`` (not a
    copy installed somewhere in another project's tree)."""
    here = where.resolve()
    return any(here.is_relative_to((root / p).resolve()) for p in SOURCE_PACKAGES)


#: the packages whose source a run's results depend on (a campaign's, a tuning's)
SOURCE_PACKAGES = ("controller", "plant_models", "hil")
#: :func:`source_changes` outside a git work tree
NOT_A_WORK_TREE = "not a git work tree (an installed package: its version names the code)"


def source_changes(folder: Path | None = None) -> str | None:
    """Uncommitted changes to the packages' source in ``folder``'s git work tree (default:
    this package's): ``"N file(s) changed since the commit (digest D)"``, D a hash of the
    changes (tracked files' diff, untracked files' contents); None when there are none. The
    commit alone does not name code edited after it: a campaign rerun on edited code reused
    the results of other code. Outside a work tree (an installed package, which its version
    names) it says so; a work tree git cannot read (no git, an error, no answer in 10 s) is
    ``"unknown: ..."`` with a token of this process, so that nothing made now is taken for
    the result of known code. Asked once per folder and process."""
    return _source_changes(folder or Path(__file__).resolve().parent)


def _git(where: Path, *args: str) -> bytes:
    return subprocess.run(
        ["git", *args], cwd=where, capture_output=True, timeout=10, check=True
    ).stdout


@functools.lru_cache(maxsize=16)
def _source_changes(where: Path) -> str | None:
    try:  # git itself says whether this is a work tree (GIT_DIR and worktrees included)
        root = Path(_git(where, "rev-parse", "--show-toplevel").decode().strip())
    except subprocess.CalledProcessError:
        if not any((d / ".git").exists() for d in (where, *where.parents)):
            return NOT_A_WORK_TREE  # git answered: not a repository
        return _unknown("git failed (CalledProcessError)")
    except (OSError, subprocess.SubprocessError, UnicodeDecodeError) as exc:
        if not any((d / ".git").exists() for d in (where, *where.parents)):
            return NOT_A_WORK_TREE  # no git, and no repository either
        return _unknown(_why(exc))
    if not _ours(root, where):  # installed inside another project's work tree
        return NOT_A_WORK_TREE
    try:
        paths = [p for p in SOURCE_PACKAGES if (root / p).is_dir()]
        diff = _git(root, "diff", "HEAD", "--binary", "--", *paths)
        changed = _git(root, "diff", "HEAD", "--name-only", "--", *paths).decode().split()
        others = _git(root, "ls-files", "--others", "--exclude-standard", "--", *paths)
        untracked = sorted(others.decode().split())
    except (OSError, subprocess.SubprocessError, UnicodeDecodeError) as exc:
        return _unknown(_why(exc))
    if not changed and not untracked:
        return None
    h = hashlib.sha256(diff)
    for name in untracked:
        h.update(name.encode())
        try:
            h.update((root / name).read_bytes())
        except OSError:
            h.update(b"<unreadable>")
    n = len(changed) + len(untracked)
    return f"{n} file{'s' * (n != 1)} changed since the commit (digest {h.hexdigest()[:16]})"


def _why(exc: Exception) -> str:
    if isinstance(exc, subprocess.TimeoutExpired):
        return "git did not answer in 10 s"
    return f"git failed ({type(exc).__name__})"


def _unknown(why: str) -> str:
    """A state git could not tell, with a token of this run: nothing made now is reused."""
    return f"unknown: {why}; results made now are not reused (run {uuid.uuid4().hex[:12]})"


def library_versions(names: Sequence[str] = LIBRARIES) -> dict[str, str]:
    """The installed version of each library (or "not installed"), a new dict each call.
    Asked once per list and process (~2.5 ms: every campaign case asked): the libraries this
    process loaded, as :func:`git_commit` is the commit of the code it loaded."""
    return dict(_library_versions(tuple(names)))


@functools.lru_cache(maxsize=16)
def _library_versions(names: tuple[str, ...]) -> tuple[tuple[str, str], ...]:
    return tuple(_installed(names).items())


def _installed(names: Sequence[str]) -> dict[str, str]:
    out = {}
    for name in names:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = "not installed"
    return out


def run_info(
    site_name: str,
    mode: str,
    config_paths: Sequence[Path],
    model: PlantModel,
    *,
    run_id: str | None = None,
) -> RunInfo:
    """Fill a :class:`RunInfo` for a run starting now.

    Raises HistorianError when a config file cannot be read.
    """
    now = dt.datetime.now(dt.UTC)
    hashes: dict[str, str] = {}
    for p in map(Path, config_paths):
        try:
            digest = hashlib.sha256(p.read_bytes()).hexdigest()
        except OSError as exc:
            raise HistorianError(f"cannot hash the config file {p}: {exc}") from exc
        hashes[p.name if p.name not in hashes else str(p)] = digest
    return RunInfo(
        run_id=run_id or f"{now:%Y%m%dT%H%M%SZ}-{uuid.uuid4().hex[:8]}",
        started_utc=now.isoformat(timespec="microseconds"),
        site=site_name,
        mode=mode,
        software_version=software_version(),
        git_commit=git_commit(),
        config_hashes=hashes,
        model=model.name,
        model_version=model_version(model),
        python_version=f"{platform.python_implementation()} {platform.python_version()}",
        library_versions=library_versions(),
    )
