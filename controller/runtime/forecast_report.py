"""The forecast's outputs: its JSON and its plot (the I/O half of :mod:`controller.twin.forecast`).

:func:`write_json` writes :meth:`~controller.twin.forecast.Forecast.to_dict`;
:func:`plot_forecast` draws the inputs and the CQAs' expressions over batch time, one colour
per plan, into a PNG (matplotlib, imported when called).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

from controller.jsonfile import write_json as write_json_file
from controller.twin.forecast import Forecast, PlanForecast
from controller.twin.forecast_spec import END_TIME

__all__ = ["plot_forecast", "write_json"]


def write_json(fc: Forecast, path: Path) -> Path:
    """Write :meth:`Forecast.to_dict` as JSON (non-finite numbers as null)."""
    return write_json_file(Path(path), fc.to_dict())


def _key_expressions(fc: Forecast) -> list[str]:
    """The trajectories worth a panel: the CQAs' expressions (else the states)."""
    names = list(dict.fromkeys(c.expression for c in fc.cqas if c.expression != END_TIME))
    if not names and fc.plans:
        names = list(fc.plans[0].states)
    return names


def _label(pf: PlanForecast) -> str:
    if pf.failed:
        return f"{pf.plan.name}: FAILED"
    if pf.not_applied:
        return f"{pf.plan.name}: NOT APPLIED"
    values = ", ".join(f"{k}={v:.4g}" for k, v in pf.cqas.items())
    return f"{pf.plan.name}: {values}" if values else pf.plan.name


def plot_forecast(fc: Forecast, path: Path, units: Mapping[str, str] | None = None) -> Path:
    """Inputs and key expressions over batch time, one colour per plan, CQAs in the legend.

    ``units`` (name -> unit) labels every y axis. A forecast with nothing ahead (the batch
    has ended, or every plan failed) is drawn as a page that says why, not as empty panels.
    """
    from matplotlib.figure import Figure

    units = units or {}
    inputs = list(fc.plans[0].inputs) if fc.plans else list(fc.start.inputs)
    panels = [*inputs, *_key_expressions(fc)]
    ahead = [pf for pf in fc.plans if len(pf.t) > 1 and not pf.failed]
    if not ahead:
        return _plot_nothing_ahead(fc, Path(path))
    fig = Figure(figsize=(9.0, 2.2 * max(len(panels), 1) + 0.6), layout="constrained")
    axes = fig.subplots(max(len(panels), 1), 1, sharex=True, squeeze=False)[:, 0]
    for i, pf in enumerate(fc.plans):
        color = f"C{i}"
        for ax, name in zip(axes, panels, strict=False):
            series = {**pf.inputs, **pf.states, **pf.expressions}.get(name)
            if series is None or not len(pf.t):
                continue
            step = name in pf.inputs
            ax.plot(
                pf.t,
                series,
                color=color,
                drawstyle="steps-post" if step else "default",
                label=_label(pf),
            )
    for ax, name in zip(axes, panels, strict=False):
        ax.set_ylabel(f"{name} [{units[name]}]" if units.get(name) else name)
        ax.axvline(fc.start.t, color="grey", linestyle=":", linewidth=1)
        ax.grid(True, alpha=0.3)
    axes[-1].set_xlabel(f"batch time [{fc.time_unit}]" if fc.time_unit else "batch time")
    if fc.plans:
        handles, labels = axes[0].get_legend_handles_labels()
        fig.legend(handles, labels, loc="outside lower center", fontsize="small")
    fig.suptitle(f"{fc.site} forecast from t = {fc.start.t:.4g} {fc.time_unit}".strip())
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    return path


def _plot_nothing_ahead(fc: Forecast, path: Path) -> Path:
    """A page saying why there is nothing to draw (never empty panels that look like data)."""
    from matplotlib.figure import Figure

    if not fc.plans:
        why = "no plan was forecast"
    elif all(pf.not_applied for pf in fc.plans):
        why = f"no plan applied: {fc.plans[0].not_applied}"
    elif all(pf.failed for pf in fc.plans):
        why = "every plan failed: " + "; ".join(f"{pf.plan.name}: {pf.failed}" for pf in fc.plans)
    else:
        why = (
            f"the batch has ended: nothing is left to forecast from t = {fc.start.t:.4g} "
            f"{fc.time_unit}".rstrip()
        )
    fig = Figure(figsize=(9.0, 2.0))
    fig.text(0.5, 0.5, f"{fc.site} forecast: {why}", ha="center", va="center", wrap=True)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    return path
