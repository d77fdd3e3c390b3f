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
  pharmatwin-hil serve configs/sites/lyophilizer-modbus.yaml --rate 600
  pharmatwin-hil serve configs/sites/bioreactor-opcua.yaml --protocol both --modbus-port 15020
  pharmatwin-hil fault configs/sites/lyophilizer-modbus.yaml inject sensor_bias Tbot --magnitude 2
  pharmatwin-hil fault configs/sites/lyophilizer-modbus.yaml status
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
    srv = sub.add_parser(
        "serve",
        help="serve a site's true plant and virtual PLC over Modbus TCP and/or OPC UA",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    srv.add_argument("site", type=Path, help="configs/sites/<name>.yaml (with a 'hil' section)")
    srv.add_argument("--rate", type=float, default=1.0, help="process time per wall time")
    srv.add_argument("--protocol", choices=["modbus", "opcua", "both"], default=None)
    srv.add_argument("--host", default="127.0.0.1", help="bind address (loopback by default)")
    srv.add_argument("--allow-remote", action="store_true", help="allow a non-loopback --host")
    srv.add_argument("--modbus-port", type=int, default=None)
    srv.add_argument("--opcua-port", type=int, default=None)
    srv.add_argument("--duration", type=float, default=None, help="stop after S process s")
    srv.add_argument("--state-dir", type=Path, default=None, help="certificates, logs, state")
    flt = sub.add_parser(
        "fault",
        help="inject, clear or inspect faults of a running 'serve'",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    flt.add_argument("site", type=Path)
    flt.add_argument("--state-dir", type=Path, default=None)
    fsub = flt.add_subparsers(dest="fault_command", required=True)
    inj = fsub.add_parser("inject", help="inject one fault now")
    inj.add_argument("kind", help="e.g. sensor_bias, actuator_stuck, comm_latency, parameter_drift")
    inj.add_argument("target", help="model output/input/parameter, or a tag for comm faults")
    inj.add_argument("--magnitude", type=float, default=0.0)
    inj.add_argument("--rate", type=float, default=0.0)
    inj.add_argument("--duration", type=float, default=None, help="model time units")
    fsub.add_parser("status", help="the rig's state")
    clr = fsub.add_parser("clear", help="remove faults")
    clr.add_argument("--kind", default=None)
    clr.add_argument("--target", default=None)
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


async def _serve(args: argparse.Namespace, console: Console) -> int:
    from hil.serve import ServeOptions, serve

    opts = ServeOptions(
        rate=args.rate,
        protocol=args.protocol,
        host=args.host,
        allow_remote=args.allow_remote,
        modbus_port=args.modbus_port,
        opcua_port=args.opcua_port,
        duration=args.duration,
        state_dir=args.state_dir,
    )
    await serve(args.site, opts, announce=lambda text: console.print(text, highlight=False))
    return 0


async def _fault(args: argparse.Namespace, console: Console) -> int:
    from hil.serve import admin_request

    request: dict[str, object]
    if args.fault_command == "inject":
        fault = {"kind": args.kind, "target": args.target, "start": 0.0}
        fault |= {"magnitude": args.magnitude, "rate": args.rate, "duration": args.duration}
        request = {"cmd": "inject", "fault": fault}
    elif args.fault_command == "clear":
        request = {"cmd": "clear", "kind": args.kind, "target": args.target}
    else:
        request = {"cmd": "status"}
    answer = await admin_request(args.site, request, args.state_dir)
    console.print_json(data=answer)
    return 0 if answer.get("ok") else 1


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    console = Console()
    try:
        if args.command == "simulate":
            return asyncio.run(_simulate(args, console))
        if args.command == "serve":
            return asyncio.run(_serve(args, console))
        if args.command == "fault":
            return asyncio.run(_fault(args, console))
    except PharmaTwinError as exc:
        console.print(f"[red]error:[/red] {exc}", markup=True, highlight=False)
        return 2
    return 2


if __name__ == "__main__":
    sys.exit(main())
