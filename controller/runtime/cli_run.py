"""``pharmatwin run``: the edge runtime from the command line, its summary and its verdict.

The process runs one run, for as long as the plant runs: before it starts, its start-up heap is
settled (:func:`settle_heap`), so that the collector's full passes walk only what the run keeps;
it is unfrozen when the run ends.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
from pathlib import Path
from typing import TYPE_CHECKING

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from controller.errors import ConfigError, Problem
from controller.runtime.cli_common import (
    AUDIT_DB_HELP,
    DEFAULT_HISTORIAN,
    SITE_HELP,
    SubParsers,
    examples,
)

if TYPE_CHECKING:
    from controller.runtime.wiring import RunResult


def add_parser(sub: SubParsers) -> None:
    """The ``run`` subcommand."""
    from controller.runtime.logsetup import LOG_FORMATS, LOG_LEVELS

    r = sub.add_parser(
        "run",
        help="the edge runtime: shadow (advisory) or closed loop under the PLC handshake",
        description="Run the supervised loop on a site until stopped (Ctrl-C / SIGTERM) or "
        "--cycles/--duration. A live status table shows on a terminal (not with --quiet); "
        "logs go to stderr and --log-file. Exit 0: the run did what its mode promises; "
        "1: it did not (the summary says why, e.g. the MPC never got control); 2: bad input.",
        **examples(
            "pharmatwin run configs/sites/lyophilizer-modbus.yaml --mode shadow",
            "pharmatwin run configs/sites/bioreactor-modbus.yaml --mode closed-loop --cycles 60",
            "pharmatwin run configs/sites/cstr-opcua.yaml --mode shadow --ui 127.0.0.1:8080 "
            "--metrics 127.0.0.1:9108",
            "pharmatwin run SITE --mode closed-loop --quiet --log-format json "
            "--log-file /var/log/pharmatwin/run.jsonl",
        ),
    )
    r.add_argument("site", type=Path, help=SITE_HELP)
    r.add_argument(
        "--mode",
        choices=["shadow", "closed-loop"],
        required=True,
        help="shadow: recommend only; closed-loop: write setpoints once the PLC grants control",
    )
    r.add_argument("--rate", type=float, default=1.0, help="process/wall time (HIL only)")
    r.add_argument("--cycles", type=int, default=None, help="stop after N cycles")
    r.add_argument("--duration", type=float, default=None, help="stop after S process s")
    r.add_argument("--audit", type=Path, default=Path("pharmatwin-audit.db"), help=AUDIT_DB_HELP)
    r.add_argument(
        "--historian",
        type=Path,
        default=DEFAULT_HISTORIAN,
        help=f"the process historian database (default: {DEFAULT_HISTORIAN})",
    )
    r.add_argument(
        "--ui",
        default=None,
        metavar="HOST:PORT",
        help="serve the operator web view, e.g. 127.0.0.1:8080 (read-only without a login)",
    )
    r.add_argument(
        "--users",
        type=Path,
        default=None,
        metavar="FILE",
        help="operator-view users (mode 0600; hashes from `python -m controller.runtime.users`)",
    )
    r.add_argument(
        "--metrics",
        default=None,
        metavar="HOST:PORT",
        help="Prometheus metrics, e.g. 127.0.0.1:9108",
    )
    r.add_argument(
        "--allow-remote",
        action="store_true",
        help="let --ui/--metrics bind a non-loopback address (needs --tls-cert and --tls-key)",
    )
    r.add_argument("--tls-cert", type=Path, default=None, metavar="FILE", help="PEM certificate")
    r.add_argument("--tls-key", type=Path, default=None, metavar="FILE", help="PEM private key")
    r.add_argument(
        "--log-level",
        choices=LOG_LEVELS,
        default="info",
        help="the least severe record logged (default: info)",
    )
    r.add_argument(
        "--log-file",
        type=Path,
        default=None,
        metavar="FILE",
        help="also log to FILE (appended); the libraries' warnings go here, not to the terminal",
    )
    r.add_argument(
        "--log-format",
        choices=LOG_FORMATS,
        default="text",
        help="text, or json: one object per line with time, level, logger, message, extras",
    )
    r.add_argument(
        "--quiet", action="store_true", help="no live status table (it shows only on a terminal)"
    )


def run_command(args: argparse.Namespace, console: Console) -> int:
    """``pharmatwin run``: logs, the live status table, the run, its summary table and verdict.

    0: the run did what its mode promises; 1: it did not (the verdict says why), a failure
    aborted it once started included; 2 (:class:`PharmaTwinError` raised, ``pharmatwin``
    prints it): bad input, refused before the run started."""
    from controller.runtime.logsetup import setup_logging
    from controller.runtime.supervisor import Mode
    from controller.runtime.ui.bind import Bind, parse_bind
    from controller.runtime.wiring import RunOptions
    from controller.runtime.wiring import run as run_runtime

    def bind(flag: str, text: str | None) -> Bind | None:
        if text is None:
            return None
        return parse_bind(
            flag,
            text,
            allow_remote=args.allow_remote,
            tls_cert=args.tls_cert,
            tls_key=args.tls_key,
        )

    terminal = Console(stderr=True)
    show_status = not args.quiet and terminal.is_terminal
    logs = setup_logging(
        args.log_level, args.log_file, args.log_format, console=terminal if show_status else None
    )
    try:
        if args.users is not None and args.ui is None:  # it was ignored, even a missing file
            why = "is read by the operator view only; allowed: with --ui HOST:PORT, or left out"
            raise ConfigError([Problem("command line", "--users", why, str(args.users))])
        opts = RunOptions(
            mode=Mode(args.mode),
            rate=args.rate,
            cycles=args.cycles,
            duration_s=args.duration,
            audit_path=args.audit,
            historian_path=args.historian,
            ui=bind("--ui", args.ui),
            users_path=args.users,
            metrics=bind("--metrics", args.metrics),
            status=terminal if show_status else None,
        )
        settle_heap()
        result = asyncio.run(run_runtime(args.site, opts))
    finally:
        gc.unfreeze()  # the heap is the collector's again (a caller that goes on: tests)
        logs.close()
    console.print(run_summary(result, args))
    console.print(result.engagement.summary(), highlight=False)
    if result.verdict is not None:
        console.print(
            f"[red]FAILED[/red] {escape(result.verdict)}", highlight=False, soft_wrap=True
        )
        return 1
    return 0


def settle_heap() -> int:
    """Collect the start-up garbage, then move every object still alive (the modules, classes
    and libraries loaded at start-up: about 10^5 objects) out of the cyclic collector's reach;
    returns how many. Without it each full collection of the long-running loop walks them all
    (measured here: a 140-200 ms pause, loaded machine), a stall of the cycle it falls in.

    A frozen object is never collected: only for the span of ONE run (``gc.unfreeze()`` after
    it); never in a process that builds and drops runs meanwhile (campaigns)."""
    gc.collect()
    gc.freeze()
    return gc.get_freeze_count()


#: the counters always shown in the summary (every other one shows when it is not 0)
SUMMARY_COUNTERS = ("cycles", "writes", "fallbacks", "failed_solves", "read_failures")


def run_summary(result: RunResult, args: argparse.Namespace) -> Table:
    """The end of ``pharmatwin run`` as a table a person reads: what ran, what happened."""
    e = result.engagement
    verdict = "[green]did what was asked[/green]"
    if result.verdict is not None:
        verdict = "[red]FAILED[/red]: see below"
    table = Table(title=f"pharmatwin run {escape(str(args.site))}", show_header=False)
    table.add_column("what", style="bold")
    table.add_column("value", overflow="fold")
    table.add_row("mode", e.mode.value)
    table.add_row("PLC", escape(e.where))
    table.add_row("cycles read the PLC", f"{e.reads} of {e.cycles}")
    if e.mode.value == "closed-loop":
        table.add_row("MPC in control", f"{e.in_control} of {e.cycles} cycles")
    else:
        table.add_row("recommendations", f"{e.advised} of {e.cycles} cycles")
    for name, value in vars(result.counters).items():
        if name in SUMMARY_COUNTERS or (value and name != "bad_in_a_row"):
            table.add_row(name.replace("_", " "), str(value))
    if e.last_problem:
        table.add_row("last problem", escape(e.last_problem))
    table.add_row("audit trail", escape(str(args.audit)))
    table.add_row("historian", escape(str(args.historian)))
    if args.log_file is not None:
        table.add_row("log file", escape(str(args.log_file)))
    table.add_row("verdict", verdict)
    return table
