"""Run outputs: the trajectory as Parquet, a PNG with one panel per variable, KPIs as JSON."""

from __future__ import annotations

import math
import textwrap
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from controller.errors import PharmaTwinError
from controller.jsonfile import write_json
from hil.kpis import Kpis
from hil.simulate import ScenarioRun

__all__ = ["OutputError", "write_kpis", "write_parquet", "write_plot"]


class OutputError(PharmaTwinError):
    """A run output cannot be written: its folder cannot be made, or the file cannot be."""


@contextmanager
def _writing(path: Path, cleanup: Callable[[], None] | None = None) -> Iterator[None]:
    """Make ``path``'s folder, then let the caller write ``path``; an :class:`OSError` on the
    way (a parent that is a file, no permission, a full disk, a directory in the file's place)
    becomes one :class:`OutputError` naming the file and the reason, never a traceback."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise OutputError(
            f"cannot write {path}: its folder {path.parent} cannot be made ({_reason(exc)})"
        ) from exc
    try:
        yield
    except OSError as exc:
        if cleanup is not None:
            with suppress(OSError):  # the first problem is the one to report
                cleanup()
        raise OutputError(f"cannot write {path}: {_reason(exc)}") from exc


def _reason(exc: OSError) -> str:
    """``[Errno 17] File exists: 'x'`` as ``File exists: x``: the reason and the path(s)."""
    if exc.strerror is None:
        return str(exc)
    if exc.filename is None:
        return exc.strerror
    if exc.filename2 is not None:  # a rename: from -> to
        return f"{exc.strerror}: {exc.filename} -> {exc.filename2}"
    return f"{exc.strerror}: {exc.filename}"


def write_parquet(run: ScenarioRun, path: Path) -> Path:
    """One row per sample; columns ``t``, ``x.*``, ``y.*``, ``u.*``, ``xhat.*``, ``solve.*``..."""
    columns: list[str] = []
    for row in run.rows:
        columns += [c for c in row if c not in columns]
    data: dict[str, list[Any]] = {c: [row.get(c) for row in run.rows] for c in columns}
    table = pa.Table.from_pydict(data)
    meta = {
        b"scenario": run.scenario.name.encode(),
        b"model": run.model.name.encode(),
        b"time_unit": run.model.time_unit.encode(),
    }
    table = table.replace_schema_metadata(meta)
    with _writing(path):
        pq.write_table(table, path)
    return path


def write_kpis(kpis: Kpis, path: Path) -> Path:
    # write_json writes <name>.tmp and renames it: a failed rename leaves no stray .tmp here
    tmp = path.with_name(path.name + ".tmp")
    with _writing(path, cleanup=lambda: tmp.unlink(missing_ok=True)):
        write_json(path, kpis.as_dict())
    return path


def _bounds(run: ScenarioRun, name: str) -> tuple[float | None, float | None]:
    """Tightest operating bounds of a variable: limits, state bounds, constraints, checks."""
    lows: list[float] = []
    highs: list[float] = []
    if name in run.limits:
        lows.append(run.limits[name].lower)
        highs.append(run.limits[name].upper)
    if run.controller is not None and name in run.controller.state_bounds:
        lo, hi = run.controller.state_bounds[name]
        lows += [lo] if lo is not None else []
        highs += [hi] if hi is not None else []
    for c in (*run.constraints, *run.scenario.checks):
        if c.expression == name:
            lows += [c.lower] if c.lower is not None else []
            highs += [c.upper] if c.upper is not None else []
    return (max(lows) if lows else None), (min(highs) if highs else None)


def write_plot(run: ScenarioRun, path: Path) -> Path:
    """A PNG with one panel per state, measured output and input, with bounds dashed."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    m = run.model
    panels: list[tuple[str, str, str]] = [("x." + n, n, m.variable(n).unit) for n in m.state_names]
    panels += [("y." + n, n, m.variable(n).unit) for n in m.output_names]
    panels += [("u." + n, n, m.variable(n).unit) for n in m.input_names]
    cols = 3 if len(panels) > 4 else 2
    rows_n = math.ceil(len(panels) / cols)
    fig, axes = plt.subplots(rows_n, cols, figsize=(4.2 * cols, 2.6 * rows_n), squeeze=False)
    t = np.array([r["t"] for r in run.rows], dtype=float)
    for ax, (key, name, unit) in zip(axes.flat, panels, strict=False):
        values = np.array([float(r.get(key, math.nan) or math.nan) for r in run.rows])
        if key.startswith("u."):
            ax.step(t, values, where="post", color="tab:green", label="applied")
        else:
            ax.plot(t, values, color="tab:blue", label="true" if key.startswith("x.") else "meas")
        est = np.array([float(r.get("xhat." + name, math.nan) or math.nan) for r in run.rows])
        if key.startswith("x.") and np.isfinite(est).any():
            ax.plot(t, est, "--", color="tab:orange", label="estimate")
        lo, hi = _bounds(run, name)
        for b, side in ((lo, "lower"), (hi, "upper")):
            if b is not None:
                ax.axhline(b, color="tab:red", ls=":", lw=1, label=f"{side} limit {b:g} {unit}")
        ax.set_title(name, fontsize=9)
        ax.set_ylabel(f"[{unit}]", fontsize=8)
        ax.tick_params(labelsize=7)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=6, loc="best")
    for ax in list(axes.flat)[len(panels) :]:
        ax.set_visible(False)
    fig.supxlabel(f"time [{m.time_unit}]", fontsize=9)
    title = f"{run.scenario.name}: {run.scenario.description}"
    fig.suptitle(textwrap.fill(title, width=int(38 * cols)), fontsize=10)
    fig.tight_layout()
    try:
        with _writing(path):
            fig.savefig(path, dpi=90)
    finally:
        plt.close(fig)
    return path
