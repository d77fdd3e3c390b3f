"""``pharmatwin-hil simulate`` and ``serve``: a scenario offline, a site's rig on the wire.

``simulate`` runs a scenario's loop as fast as it can and writes its trajectory, KPIs and
plot; ``serve`` serves a site's true plant and virtual PLC over Modbus TCP and/or OPC UA
(:mod:`hil.serve`) until Ctrl-C, a duration or the batch's end. Thin: parse, then asyncio.run.
"""

from __future__ import annotations

import argparse
import asyncio
import math
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.table import Table

from controller.errors import ConfigError, PharmaTwinError
from controller.outpaths import out_problem
from hil.kpis import Kpis, compute_kpis
from hil.reports import write_kpis, write_parquet, write_plot
from hil.simulate import run_scenario


def add_parsers(sub: Any, epilog: str) -> None:
    """The ``simulate`` and ``serve`` subcommands."""
    _simulate_parser(sub, epilog)
    _serve_parser(sub, epilog)


def simulate(args: argparse.Namespace, console: Console) -> int:
    """``simulate``: 0 when the run ends without a plant fault, 1 with one, 2 when refused
    (a bad argument, found before simulating; an output that cannot be written)."""
    problem = simulate_argument_problem(args)
    if problem is not None:
        _refuse(console, problem)
        return 2
    return asyncio.run(_simulate(args, console))


def simulate_argument_problem(args: argparse.Namespace) -> str | None:
    """What is wrong with ``simulate``'s arguments, as ``--flag: must be ... (got ...)``.

    ``--max-steps`` must be 1 or more (0 or fewer samples would report an empty run as a
    result); ``--out`` must be a folder that exists or can be made (not a file, nor under
    one). The scenario itself is checked when it is loaded (a ConfigError).
    """
    if args.max_steps is not None and args.max_steps < 1:
        return f"--max-steps: must be 1 or more (got {args.max_steps})"
    if args.out is not None:
        return out_problem(args.out)
    return None


def refuse_output(console: Console, problems: list[str | None]) -> bool:
    """Print each problem found in ``problems`` (None: no problem); True when any was."""
    found = [p for p in problems if p is not None]
    for problem in found:
        _refuse(console, problem)
    return bool(found)


def _refuse(console: Console, problem: str) -> None:
    """One line, as ``hil.cli.main`` words its own refusals (never wrapped)."""
    text = f"[red]error:[/] command line: {escape(problem)}"
    console.print(text, highlight=False, soft_wrap=True)


def serve(args: argparse.Namespace, console: Console) -> int:
    """``serve``: 0 when the servers stop normally, 2 on a problem (one line each)."""
    if args.state_dir is not None and refuse_output(
        console, [out_problem(args.state_dir, flag="--state-dir")]
    ):
        return 2
    return asyncio.run(_serve(args, console))


def _simulate_parser(sub: Any, epilog: str) -> None:
    """``simulate SCENARIO``."""
    sim = sub.add_parser(
        "simulate",
        help="run a scenario's closed (or open) loop offline, as fast as it can",
        epilog=epilog,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sim.add_argument("scenario", type=Path, help="configs/scenarios/<name>.yaml")
    sim.add_argument("--out", type=Path, default=None, help="output folder (runs/<scenario>)")
    sim.add_argument("--max-steps", type=int, default=None, help="stop after N samples")
    sim.add_argument("--no-plot", action="store_true", help="skip the PNG plot")
    sim.add_argument("--quiet", action="store_true", help="no progress bar")


def _serve_parser(sub: Any, epilog: str) -> None:
    """``serve SITE`` with its server, clock and log options."""
    srv = sub.add_parser(
        "serve",
        help="serve a site's true plant and virtual PLC over Modbus TCP and/or OPC UA",
        epilog=epilog,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    srv.add_argument("site", type=Path, help="configs/sites/<name>.yaml (with a 'hil' section)")
    srv.add_argument("--rate", type=float, default=1.0, help="process time per wall time")
    srv.add_argument(
        "--protocol",
        choices=["modbus", "opcua", "both"],
        default=None,
        help="which servers to run (default: the site's connection protocol)",
    )
    srv.add_argument("--host", default="127.0.0.1", help="bind address (loopback by default)")
    srv.add_argument("--allow-remote", action="store_true", help="allow a non-loopback --host")
    srv.add_argument(
        "--modbus-port", type=int, default=None, help="Modbus TCP port (default: the site's)"
    )
    srv.add_argument(
        "--opcua-port", type=int, default=None, help="OPC UA port (default: the site's)"
    )
    srv.add_argument("--duration", type=float, default=None, help="stop after S process s")
    end = srv.add_mutually_exclusive_group()
    end.add_argument(
        "--until-batch-end",
        action="store_true",
        help="exit when the batch ends (default: the plant holds its final state and the "
        "servers go on until Ctrl-C)",
    )
    end.add_argument(
        "--repeat", action="store_true", help="start the batch again each time it ends"
    )
    srv.add_argument(
        "--ui",
        default=None,
        metavar="HOST:PORT",
        help="a read-only web page of the rig (true plant, PLC, faults), e.g. 127.0.0.1:8081",
    )
    srv.add_argument(
        "--wait-for-controller",
        action="store_true",
        help="hold the HIL clock at 0 until a client's first write (the controller's first "
        "cycle), so its start-up does not eat into the batch",
    )
    srv.add_argument("--state-dir", type=Path, default=None, help="certificates, logs, state")
    srv.add_argument(
        "--modbus-tls",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="Modbus/TCP Security: TLS with client certificates issued by the site's "
        "hil.ca_certificate (default: on when the site's connection has modbus.tls)",
    )
    srv.add_argument(
        "--wrong-unit",
        choices=["gateway", "silent"],
        default="gateway",
        help="answer a Modbus request for a unit id the tag map does not have with "
        "exception 0B, as a gateway does (default), or not at all",
    )
    _log_flags(srv)


def kpi_table(kpis: Kpis) -> Table:
    table = Table(title=f"KPIs: {kpis.scenario}", show_lines=False)
    table.add_column("KPI")
    table.add_column("value", justify="right")
    for key, value in kpis.as_dict().items():
        if value is None:
            text = "-"
        elif isinstance(value, float):
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
    problem = out_problem(out, default=args.out is None)  # an explicit --out is checked before
    if problem is not None:
        _refuse(console, problem)
        return 2
    console.print(kpi_table(kpis))
    files = [write_parquet(run, out / "trajectory.parquet"), write_kpis(kpis, out / "kpis.json")]
    if not args.no_plot:
        files.append(write_plot(run, out / "trajectory.png"))
    console.print("wrote " + ", ".join(str(f) for f in files))
    if run.plant_fault is not None:
        console.print(
            f"[red]plant fault:[/] {run.plant_fault.describe()}", highlight=False, soft_wrap=True
        )
        return 1
    return 0


def _log_flags(parser: argparse.ArgumentParser) -> None:
    """``--log-level``, ``--log-file``, ``--log-format`` (runtime.logsetup), as on run."""
    from controller.runtime.logsetup import LOG_FORMATS, LOG_LEVELS

    parser.add_argument(
        "--log-level",
        choices=LOG_LEVELS,
        default="warning",
        help="the least severe record shown on the terminal and in --log-file (default: "
        "warning: serve announces itself; the state folder's <site>.log keeps every INFO)",
    )
    parser.add_argument(
        "--log-file",
        type=Path,
        default=None,
        metavar="FILE",
        help="also log to FILE (appended); the libraries' warnings go here, not to the "
        "terminal (the state folder's <site>.log is written as well)",
    )
    parser.add_argument(
        "--log-format",
        choices=LOG_FORMATS,
        default="text",
        help="text, or json: one object per line with time, level, logger, message, extras",
    )


async def _serve(args: argparse.Namespace, console: Console) -> int:
    from controller.runtime.logsetup import setup_logging
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
        modbus_tls=args.modbus_tls,
        wrong_unit=args.wrong_unit,
        at_batch_end="exit" if args.until_batch_end else "repeat" if args.repeat else "hold",
        wait_for_controller=args.wait_for_controller,
        ui=args.ui,
    )
    logs = None
    try:
        logs = setup_logging(args.log_level, args.log_file, args.log_format)
        await serve(args.site, opts, announce=lambda text: console.print(text, highlight=False))
    except PharmaTwinError as exc:  # one line per problem, never wrapped
        problems = exc.problems if isinstance(exc, ConfigError) else (exc,)
        for problem in problems:
            text = f"[red]error:[/red] {escape(str(problem))}"
            console.print(text, highlight=False, soft_wrap=True)
        return 2
    finally:
        if logs is not None:
            logs.close()
    return 0
