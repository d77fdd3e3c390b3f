"""The benchmark suite of issue 7 (``make bench``): run every module, merge, print one table.

    python bench/run.py                 # every module, full size
    python bench/run.py --only B2,B3    # some of them
    python bench/run.py --quick         # small sizes, to check that everything runs

Each module ``bench/<name>.py`` has ``run(quick: bool = False) -> dict`` returning
``{"name": "B2", "title": ..., "rows": [{"case", "metric", "value", "unit", "target",
"met"}, ...], "raw": {...}}`` and a ``__main__`` that prints its own table. This runner runs
each module in a child process of its own (so one module's memory, threads or crash cannot
touch the next one's figures), reports a module whose file is missing as "not present", and a
module that raises, returns a malformed result or dies as an error row; it goes on with the
others and exits 1 at the end if any errored.

``bench/results.json`` is merged, not overwritten: a module run now replaces that module's
entry, the others keep theirs, each with the environment it was measured in (machine, Python,
library versions, git commit, UTC date). It is a local artefact (ignored by git): figures
belong to the machine that measured them.

The helpers here (:func:`latency_stats`, :func:`row`, :func:`markdown_table`) are shared by
the modules, which import them as ``from run import ...`` (``bench/`` is on ``sys.path``
when a module runs as a script or under this runner).
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import importlib
import json
import math
import os
import platform
import signal
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from types import ModuleType
from typing import Any

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
RESULTS = BENCH / "results.json"
MODULES = [
    "b1_nmpc",
    "b2_cycle",
    "b3_simulation",
    "b4_campaign",
    "b5_memory",
    "b6_step",
    "b8_startup",
]
LIBRARIES = ("casadi", "do-mpc", "numpy", "scipy", "pymodbus", "asyncua", "pydantic", "dask")
COLUMNS = ("benchmark", "case", "metric", "value", "unit", "target", "met")
ROW_KEYS = ("case", "metric", "value", "unit", "target", "met")
SCHEMA = 1

Row = dict[str, Any]
Result = dict[str, Any]


# ---------------------------------------------------------------------- helpers for modules
def latency_stats(samples: Sequence[float] | Any) -> dict[str, float]:
    """Median, p95, p99, max and count of a sample (same unit in as out)."""
    import numpy as np

    a = np.asarray(samples, dtype=float)
    if a.size == 0:
        raise ValueError("latency_stats: no samples")
    return {
        "n": int(a.size),
        "median": float(np.median(a)),
        "p95": float(np.percentile(a, 95)),
        "p99": float(np.percentile(a, 99)),
        "max": float(a.max()),
    }


def row(
    case: str,
    metric: str,
    value: float | int | str,
    unit: str = "",
    target: str = "",
    met: bool | None = None,
) -> Row:
    """One table row, in the modules' interface."""
    return {
        "case": case,
        "metric": metric,
        "value": value,
        "unit": unit,
        "target": target,
        "met": met,
    }


def case_failed(case: str, exc: BaseException) -> tuple[Row, dict[str, str]]:
    """A case of a module that raised: its error row, and what to keep in ``raw``.

    The module goes on with its other cases and sets ``"status": "error"`` in its result,
    which the runner counts as an errored module.
    """
    what = f"{type(exc).__name__}: {exc}"
    return row(case, "status", f"error: {what}", met=False), {
        "error": what,
        "traceback": traceback.format_exc(),
    }


def format_value(value: Any) -> str:
    if isinstance(value, bool):
        return str(value)
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if not math.isfinite(value):
            return str(value)
        if value == 0.0:
            return "0"
        if abs(value) >= 1000:
            return f"{value:,.0f}"
        return f"{value:.3g}" if abs(value) < 1 else f"{value:.4g}"
    return str(value)


def _met(met: Any) -> str:
    return {True: "yes", False: "**NO**"}.get(met, "—") if isinstance(met, bool) else "—"


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def markdown_table(results: Iterable[Mapping[str, Any]]) -> str:
    """One markdown table of every row of every module result, in order."""
    lines = ["| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    for result in results:
        for r in result.get("rows", []):
            cells = [
                str(result.get("name", "?")),
                str(r.get("case", "")),
                str(r.get("metric", "")),
                format_value(r.get("value", "")),
                str(r.get("unit", "")),
                str(r.get("target", "")),
                _met(r.get("met")),
            ]
            lines.append("| " + " | ".join(_cell(c) for c in cells) + " |")
    return "\n".join(lines)


# ---------------------------------------------------------------------- module results
def label(module: str) -> str:
    """``b2_cycle`` -> ``B2``."""
    return module.split("_", 1)[0].upper()


def not_present(module: str) -> Result:
    return {
        "name": label(module),
        "title": module,
        "status": "not present",
        "rows": [row("—", "status", f"not present (bench/{module}.py missing)")],
        "raw": {},
    }


def error_result(module: str, what: str, detail: str = "") -> Result:
    return {
        "name": label(module),
        "title": module,
        "status": "error",
        "rows": [row("—", "status", f"error: {what}", met=False)],
        "raw": {"error": what, "detail": detail},
    }


def problems_with(result: Any) -> list[str]:
    """What is wrong with a module's result (empty when it follows the interface)."""
    if not isinstance(result, Mapping):
        return [f"run() returned {type(result).__name__}, not a dict"]
    problems = [f"missing key {k!r}" for k in ("name", "title", "rows", "raw") if k not in result]
    rows = result.get("rows", [])
    if not isinstance(rows, list):
        return [*problems, "'rows' is not a list"]
    for i, r in enumerate(rows):
        if not isinstance(r, Mapping):
            problems.append(f"row {i} is not a dict")
            continue
        problems += [f"row {i} has no {k!r}" for k in ROW_KEYS if k not in r]
        if "met" in r and r["met"] is not None and not isinstance(r["met"], bool):
            problems.append(f"row {i}: 'met' is {r['met']!r}, not a bool or None")
    try:
        json.dumps(result)
    except (TypeError, ValueError) as exc:
        problems.append(f"not JSON-serialisable: {exc}")
    return problems


def collect(module: str, quick: bool, loaded: ModuleType | None = None) -> Result:
    """Run one module in this process; never raises (errors become an error result)."""
    if loaded is None:
        if not (BENCH / f"{module}.py").exists():
            return not_present(module)
        _bench_on_path()
        try:
            loaded = importlib.import_module(module)
        except Exception as exc:
            return error_result(module, f"import failed: {exc!r}", traceback.format_exc())
    started = time.perf_counter()
    try:
        result = loaded.run(quick=quick)
    except Exception as exc:
        return error_result(module, f"{type(exc).__name__}: {exc}", traceback.format_exc())
    problems = problems_with(result)
    if problems:
        return error_result(module, "malformed result: " + "; ".join(problems))
    out = dict(result)
    out.setdefault("status", "ok")
    out["elapsed_s"] = round(time.perf_counter() - started, 2)
    out["quick"] = quick
    return out


def collect_isolated(module: str, quick: bool) -> Result:
    """Run one module in a child Python process (its output goes to our terminal)."""
    if not (BENCH / f"{module}.py").exists():
        return not_present(module)
    with tempfile.TemporaryDirectory(prefix="pharmatwin-bench-") as tmp:
        out = Path(tmp) / "result.json"
        cmd = [sys.executable, str(Path(__file__).resolve()), "--child", module, "--out", str(out)]
        proc = subprocess.run([*cmd, *(["--quick"] if quick else [])], cwd=ROOT, check=False)
        if out.exists():
            result: Result = json.loads(out.read_text())
            return result
    return error_result(module, f"the child process died (exit code {proc.returncode})")


def _bench_on_path() -> None:
    if str(BENCH) not in sys.path:
        sys.path.insert(0, str(BENCH))


# ---------------------------------------------------------------------- the environment
def git_commit(root: Path = ROOT) -> str | None:
    """The commit checked out, read from ``.git`` itself (no git command is run)."""
    git = root / ".git"
    if git.is_file():  # a worktree: "gitdir: <path>"
        text = git.read_text().strip()
        git = (root / text.removeprefix("gitdir:").strip()).resolve()
    try:
        head = (git / "HEAD").read_text().strip()
    except OSError:
        return None
    if not head.startswith("ref:"):
        return head or None
    ref = head.removeprefix("ref:").strip()
    for base in (git, _common_dir(git)):
        with contextlib.suppress(OSError):
            return (base / ref).read_text().strip()
        with contextlib.suppress(OSError):
            for line in (base / "packed-refs").read_text().splitlines():
                if line.endswith(" " + ref):
                    return line.split(" ", 1)[0]
    return None


def _common_dir(git: Path) -> Path:
    try:
        return (git / (git / "commondir").read_text().strip()).resolve()
    except OSError:
        return git


def _proc_field(path: str, key: str) -> str | None:
    with contextlib.suppress(OSError):
        for line in Path(path).read_text().splitlines():
            if line.startswith(key):
                return line.split(":", 1)[1].strip()
    return None


def interpreter() -> str:
    """The Python that runs the figures: version, executable and how libpython is linked.

    A build whose executable loads ``libpython3.x.so`` (``--enable-shared``, pyenv's default
    here) runs the interpreter through position-independent calls; a distribution's
    ``/usr/bin/python3.x`` has it built into the executable: on this machine Debian's ran
    B6's step 7-10 % faster than pyenv's (README.md, "The interpreter")."""
    shared = False
    with contextlib.suppress(OSError):
        shared = "libpython" in Path("/proc/self/maps").read_text()
    linked = "shared libpython" if shared else "libpython built into the executable"
    exe = os.path.realpath(sys.executable)
    return f"{platform.python_implementation()} {platform.python_version()} ({exe}, {linked})"


def environment() -> dict[str, Any]:
    """Machine, Python, library versions, git commit and UTC date of this run."""
    from importlib import metadata

    libraries = {}
    for name in LIBRARIES:
        try:
            libraries[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            libraries[name] = "not installed"
    return {
        "date_utc": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "machine": {
            "platform": platform.platform(),
            "arch": platform.machine(),
            "cpu": _proc_field("/proc/cpuinfo", "model name") or platform.processor(),
            "cores": os.cpu_count(),
            "memory": _proc_field("/proc/meminfo", "MemTotal"),
            "load_average_1m": os.getloadavg()[0] if hasattr(os, "getloadavg") else None,
        },
        "python": interpreter(),
        "libraries": libraries,
        "git_commit": git_commit(),
    }


def merge(
    previous: Mapping[str, Any] | None, results: Sequence[Result], env: Mapping[str, Any]
) -> dict[str, Any]:
    """The new results.json: ``previous`` with each of ``results`` replacing its module's entry.

    Entries of modules not run now stay as they were (with their own environment). A file in
    another layout (e.g. the old ``port_cycle`` one) is replaced.
    """
    kept = dict(previous.get("benchmarks", {})) if previous and "schema" in previous else {}
    for result in results:
        kept[result["name"]] = {**result, "environment": dict(env)}
    order = sorted(kept, key=lambda n: (n[:1], int(n[1:]) if n[1:].isdigit() else math.inf, n))
    return {
        "schema": SCHEMA,
        "updated_utc": env.get("date_utc"),
        "environment": dict(env),
        "benchmarks": {name: kept[name] for name in order},
    }


def write_results(
    results: Sequence[Result], env: Mapping[str, Any], path: Path = RESULTS
) -> dict[str, Any]:
    previous = None
    if path.exists():
        with contextlib.suppress(ValueError, OSError):
            previous = json.loads(path.read_text())
    merged = merge(previous, results, env)
    path.write_text(json.dumps(merged, indent=2, default=str) + "\n")
    return merged


def select(only: str | None, modules: Sequence[str] = MODULES) -> list[str]:
    """Modules named by ``--only`` (``B2,B3`` or module names), in suite order."""
    if not only:
        return list(modules)
    wanted = [w.strip() for w in only.split(",") if w.strip()]
    known = {m.lower(): m for m in modules} | {label(m).lower(): m for m in modules}
    unknown = [w for w in wanted if w.lower() not in known]
    if unknown:
        names = ", ".join(f"{label(m)} ({m})" for m in modules)
        raise SystemExit(f"--only: unknown benchmark(s) {unknown}; known: {names}")
    picked = {known[w.lower()] for w in wanted}
    chosen = [m for m in modules if m in picked]
    return chosen


# ---------------------------------------------------------------------- command line
def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--only", help="comma-separated benchmarks, e.g. B2,B3")
    ap.add_argument("--quick", action="store_true", help="small sizes (a smoke run)")
    ap.add_argument("--in-process", action="store_true", help="no child processes (debugging)")
    ap.add_argument("--no-write", action="store_true", help="do not touch bench/results.json")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    ap.add_argument("--out", type=Path, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child:  # one module, in a child process of ours
        # SIGTERM unwinds (temporary folders are removed) instead of killing outright
        signal.signal(signal.SIGTERM, lambda *_: sys.exit(128 + signal.SIGTERM))
        result = collect(args.child, args.quick)
        args.out.write_text(json.dumps(result, default=str))
        return 0
    env = environment()
    results = []
    for module in select(args.only):
        print(f"== {label(module)} ({module}) ==", flush=True)
        run_one = collect if args.in_process else collect_isolated
        result = run_one(module, args.quick)
        print(f"== {label(module)}: {result.get('status')} ==", flush=True)
        results.append(result)
    if not args.no_write:
        write_results(results, env)
    print()
    print(f"{env['machine']['cpu']}, {env['machine']['cores']} cores; {env['python']}; "
          f"commit {(env['git_commit'] or 'unknown')[:12]}; {env['date_utc']}"
          + ("; --quick" if args.quick else ""))  # fmt: skip
    print()
    print(markdown_table(results))
    errored = [r["name"] for r in results if r.get("status") == "error"]
    if errored:
        print(f"\nerrors in {', '.join(errored)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
