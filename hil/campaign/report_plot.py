"""The trajectory figure of a campaign case: a PNG of its inputs and the variables judged.

One panel per input (applied and written setpoint) and per plant variable the checks name;
periods where the PLC was in fallback are shaded red, local control grey. Long trajectories
are reduced to a min/max envelope so no excursion disappears from the picture.
"""

from __future__ import annotations

import io
import json
import math
import re
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.parquet as pq

__all__ = ["plot_png"]

MAX_PANELS = 8
MODE_BANDS = {"fallback": ("tab:red", 0.18), "local": ("0.5", 0.12)}  # plc.mode: colour, alpha
PLOTTED = ("x.", "z.", "e.", "y.", "u.", "sp.")
VARIABLES = ("x.", "z.", "e.", "y.")


def plot_png(trajectory: Path, checks: Iterable[str], title: str) -> bytes:
    """A PNG: one panel per input (applied u, written sp), per x./e./y. variable named in
    ``checks`` (else the first few states/expressions); PLC fallback periods shaded red and
    local-control periods grey.
    Raises OSError or pyarrow errors when the file cannot be read."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    schema = pq.read_schema(trajectory)
    panels = _panels(schema.names, checks)
    if not panels:
        raise ValueError("no u.*, x.*, e.* or y.* columns to plot")
    t, cols = _read_columns(trajectory, schema.names, panels)
    modes = cols["plc.mode"].to_pylist() if "plc.mode" in cols else []
    bands = {mode: _mode_spans(t, modes, mode) for mode in MODE_BANDS}
    meta = schema.metadata or {}
    ncols = 2 if len(panels) > 1 else 1
    nrows = max(1, math.ceil(len(panels) / ncols))
    fig, axes = plt.subplots(nrows, ncols, figsize=(4.6 * ncols, 1.9 * nrows + 0.6), squeeze=False)
    try:
        units = _units(meta)
        for ax, name in zip(axes.flat, panels, strict=False):
            _draw_panel(ax, t, cols, name, bands)
            ax.set_ylabel(
                f"[{units[name]}]" if units.get(name) else "(unit not recorded)", fontsize=7
            )
        for ax in list(axes.flat)[len(panels) :]:
            ax.set_visible(False)
        unit = meta.get(b"time_unit", b"").decode(errors="replace")
        fig.supxlabel(f"time [{unit}]" if unit else "time", fontsize=8)
        fig.suptitle(title, fontsize=9)
        fig.tight_layout()
        buf = io.BytesIO()
        fig.savefig(buf, format="png", dpi=72)
    finally:
        plt.close(fig)
    return buf.getvalue()


def _read_columns(
    trajectory: Path, names: Sequence[str], panels: Sequence[str]
) -> tuple[np.ndarray, dict[str, Any]]:
    """The time axis (scan index if ``t`` is absent) and the columns the panels need."""
    wanted = [
        c
        for c in names
        if c in ("t", "plc.mode") or (c.startswith(PLOTTED) and c.split(".", 1)[1] in panels)
    ]
    table = pq.read_table(trajectory, columns=wanted)
    cols = {name: table.column(name) for name in table.column_names}
    t = _floats(cols.get("t")) if "t" in cols else np.arange(table.num_rows, dtype=float)
    return t, cols


def _units(meta: dict[bytes, bytes]) -> Any:
    """Each model name's unit from the table metadata, as recorded (empty if unreadable)."""
    try:
        return json.loads(meta.get(b"units", b"{}").decode())
    except ValueError:
        return {}


def _panels(columns: Sequence[str], checks: Iterable[str]) -> list[str]:
    """Variable names to plot: every input, then the variables the checks name (else the first
    three states/expressions), at most MAX_PANELS."""
    inputs = [c[2:] for c in columns if c.startswith("u.")]
    variables = {c.split(".", 1)[1] for c in columns if c.startswith(VARIABLES)}
    named: list[str] = []
    for token in re.findall(r"[A-Za-z_][A-Za-z0-9_]*", " ".join(checks)):
        if token in variables and token not in inputs and token not in named:
            named.append(token)
    if not named:
        named = [c.split(".", 1)[1] for c in columns if c.startswith(("x.", "z.", "e."))][:3]
    return [*inputs, *named][:MAX_PANELS]


def _floats(column: Any) -> np.ndarray:
    try:
        return np.asarray(column.to_numpy(), dtype=float)
    except (TypeError, ValueError):
        return np.full(len(column), np.nan)


def _envelope(t: np.ndarray, y: np.ndarray, buckets: int = 1000) -> tuple[np.ndarray, np.ndarray]:
    """At most ``2 * buckets + 2`` points keeping each bucket's minimum and maximum in time
    order, so a long trajectory plots fast and no excursion disappears from the picture."""
    n = len(y)
    if n <= 2 * buckets + 2:
        return t, y
    size = -(-n // buckets)
    padded = np.full(buckets * size, np.nan)
    padded[:n] = y
    rows = padded.reshape(buckets, size)
    offsets = np.arange(buckets) * size
    lows = offsets + np.argmin(np.where(np.isnan(rows), np.inf, rows), axis=1)
    highs = offsets + np.argmax(np.where(np.isnan(rows), -np.inf, rows), axis=1)
    index = np.unique(
        np.concatenate(([0, n - 1], np.minimum(lows, n - 1), np.minimum(highs, n - 1)))
    )
    return t[index], y[index]


def _mode_spans(t: np.ndarray, modes: Sequence[Any], mode: str) -> list[tuple[float, float]]:
    """(start, end) times of each run of scans where ``plc.mode`` was ``mode``; a run ends at
    the first scan in another mode (or at the last scan)."""
    spans = []
    mask = np.array([m == mode for m in modes], dtype=bool)
    edges = np.flatnonzero(np.diff(np.concatenate(([0], mask.astype(int), [0]))))
    for start, stop in zip(edges[::2], edges[1::2], strict=True):
        spans.append((float(t[start]), float(t[min(stop, len(t) - 1)])))
    return spans


def _draw_panel(
    ax: Any, t: np.ndarray, cols: dict[str, Any], name: str, bands: dict[str, list[Any]]
) -> None:
    styles: list[tuple[str, str, dict[str, Any]]] = [  # column prefix, label, plot() kwargs
        ("x.", "true", {"color": "tab:blue"}),
        ("z.", "algebraic", {"color": "tab:cyan"}),
        ("e.", "expression", {"color": "tab:purple"}),
        ("y.", "measured", {"color": "0.55", "lw": 0.8}),
        ("u.", "applied", {"color": "tab:green", "drawstyle": "steps-post"}),
        ("sp.", "written sp", {"color": "tab:orange", "ls": "--", "drawstyle": "steps-post"}),
    ]
    for prefix, label, kwargs in styles:
        if prefix + name in cols:
            ax.plot(*_envelope(t, _floats(cols[prefix + name])), label=label, **kwargs)
    for mode, spans in bands.items():
        color, alpha = MODE_BANDS[mode]
        for i, (start, end) in enumerate(spans):
            band = f"PLC {mode}" if i == 0 else None
            ax.axvspan(start, end, color=color, alpha=alpha, lw=0, label=band)
    kind = "input: applied and written setpoint" if "u." + name in cols else "plant variable"
    ax.set_title(f"{name} ({kind})", fontsize=8)
    ax.tick_params(labelsize=7)
    ax.grid(alpha=0.3)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=6, loc="best")
