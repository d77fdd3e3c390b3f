"""``pharmatwin-hil``: simulation, HIL and campaign commands (thin: parse argv, asyncio.run).

Examples::

    pharmatwin-hil simulate configs/scenarios/bioreactor-mpc.yaml
    pharmatwin-hil simulate configs/scenarios/lyophilizer-nominal-recipe.yaml --out runs/lyo
    pharmatwin-hil simulate configs/scenarios/cstr-mpc.yaml --max-steps 20 --no-plot
"""

from __future__ import annotations

import argparse
import asyncio
import math
import sys
from collections.abc import Sequence
from pathlib import Path

from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.table import Table

from controller.errors import PharmaTwinError
from hil.kpis import Kpis, compute_kpis
from hil.reports import write_kpis, write_parquet, write_plot
from hil.simulate import run_scenario

EPILOG = """examples:
  pharmatwin-hil simulate configs/scenarios/bioreactor-mpc.yaml
  pharmatwin-hil simulate configs/scenarios/lyophilizer-nominal-recipe.yaml --out runs/lyo
  pharmatwin-hil simulate configs/scenarios/cstr-mpc.yaml --max-steps 20 --no-plot
"""


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="pharmatwin-hil",
        description="PharmaTwin simulation and hardware-in-the-loop tools.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = p.add_subparsers(dest="command", required=True)
    sim = sub.add_parser(
        "simulate",
        help="run a scenario's closed (or open) loop offline, as fast as it can",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sim.add_argument("scenario", type=Path, help="configs/scenarios/<name>.yaml")
    sim.add_argument("--out", type=Path, default=None, help="output folder (runs/<scenario>)")
    sim.add_argument("--max-steps", type=int, default=None, help="stop after N samples")
    sim.add_argument("--no-plot", action="store_true", help="skip the PNG plot")
    sim.add_argument("--quiet", action="store_true", help="no progress bar")
    return p


def kpi_table(kpis: Kpis) -> Table:
    table = Table(title=f"KPIs: {kpis.scenario}", show_lines=False)
    table.add_column("KPI")
    table.add_column("value", justify="right")
    for key, value in kpis.as_dict().items():
        if isinstance(value, float):
            text = "-" if not math.isfinite(value) else f"{value:.6g}"
        else:
            text = str(value)
        table.add_row(key, text)
    return table


async def _simulate(args: argparse.Namespace, console: Console) -> int:
    scenario: Path = args.scenario
    with Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        TextColumn("{task.fields[sim]}"),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        console=console,
        disable=args.quiet,
    ) as progress:
        task = progress.add_task(scenario.stem, total=None, sim="loading")

        def tick(t: float, duration: float) -> None:
            progress.update(task, completed=t, total=duration, sim=f"t = {t:.4g} of {duration:g}")

        run = await run_scenario(scenario, max_steps=args.max_steps, on_tick=tick)
        progress.update(task, sim=f"t = {run.rows[-1]['t']:.4g} {run.model.time_unit}")
    kpis = compute_kpis(run)
    out: Path = args.out or Path("runs") / run.scenario.name
    console.print(kpi_table(kpis))
    files = [write_parquet(run, out / "trajectory.parquet"), write_kpis(kpis, out / "kpis.json")]
    if not args.no_plot:
        files.append(write_plot(run, out / "trajectory.png"))
    console.print("wrote " + ", ".join(str(f) for f in files))
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    console = Console()
    try:
        if args.command == "simulate":
            return asyncio.run(_simulate(args, console))
    except PharmaTwinError as exc:
        console.print(f"[red]error:[/red] {exc}", markup=True, highlight=False)
        return 2
    return 2


if __name__ == "__main__":
    sys.exit(main())
