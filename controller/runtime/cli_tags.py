"""``pharmatwin tags read|write`` and ``pharmatwin history export``: commissioning commands.

The commands themselves are in :mod:`controller.runtime.commissioning`; this module parses
their arguments and calls them.
"""

from __future__ import annotations

import argparse
import asyncio
import math
from pathlib import Path

from rich.console import Console

from controller.errors import ConfigError, Problem
from controller.runtime.cli_common import AUDIT_DB_HELP, SITE_HELP, SubParsers, examples


def add_tags_parser(sub: SubParsers) -> None:
    """The ``tags read`` and ``tags write`` subcommands."""
    t = sub.add_parser(
        "tags",
        help="read or write PLC tags of a site (commissioning)",
        **examples(
            "pharmatwin tags read configs/sites/bioreactor-modbus.yaml",
            "pharmatwin tags write configs/sites/bioreactor-modbus.yaml feed_rate_sp=0.05 "
            '--reason "step test"',
        ),
    )
    tsub = t.add_subparsers(dest="tags_command", required=True)
    tr = tsub.add_parser(
        "read",
        help="one read of every readable tag, as a table",
        **examples(
            "pharmatwin tags read configs/sites/bioreactor-modbus.yaml",
            "pharmatwin tags read configs/sites/lyophilizer-opcua.yaml --watch --interval 2",
            "pharmatwin tags read configs/sites/cstr-modbus.yaml --watch --count 10",
        ),
    )
    tr.add_argument("site", type=Path, help=SITE_HELP)
    tr.add_argument("--watch", action="store_true", help="refresh until Ctrl-C")
    tr.add_argument("--interval", type=float, default=1.0, help="seconds between refreshes")
    tr.add_argument("--count", type=int, default=None, help="stop after N refreshes")
    tw = tsub.add_parser(
        "write",
        help="check limits, write, read back, audit and report",
        **examples(
            "pharmatwin tags write configs/sites/bioreactor-modbus.yaml feed_rate_sp=0.05 "
            '--reason "step test"',
            "pharmatwin tags write configs/sites/lyophilizer-opcua.yaml shelf_temp_sp=-30 "
            '--reason "OQ-12" --user jdoe --audit /var/lib/pharmatwin/audit.db',
        ),
    )
    tw.add_argument("site", type=Path, help=SITE_HELP)
    tw.add_argument(
        "assignments", nargs="+", metavar="TAG=VALUE", help="setpoint tags and engineering values"
    )
    tw.add_argument("--reason", required=True, help="why (goes into the audit trail)")
    tw.add_argument("--user", default=None, help="who (default: the login name)")
    tw.add_argument("--audit", type=Path, default=Path("pharmatwin-audit.db"), help=AUDIT_DB_HELP)


def add_history_parser(sub: SubParsers) -> None:
    """The ``history export`` subcommand."""
    h = sub.add_parser(
        "history",
        help="the process historian",
        **examples("pharmatwin history export pharmatwin-history.db --parquet history.parquet"),
    )
    hsub = h.add_subparsers(dest="history_command", required=True)
    he = hsub.add_parser(
        "export",
        help="export a historian database to Parquet",
        **examples(
            "pharmatwin history export pharmatwin-history.db --parquet history.parquet",
            "pharmatwin history export pharmatwin-history.db --parquet one.parquet --run 3f2a9c",
        ),
    )
    he.add_argument("db", type=Path, help="the historian database (pharmatwin run --historian)")
    he.add_argument(
        "--parquet", type=Path, required=True, metavar="FILE", help="the Parquet file to write"
    )
    he.add_argument("--run", default=None, metavar="RUN_ID", help="one run (default: all)")


def tags_command(args: argparse.Namespace, console: Console) -> int:
    """``pharmatwin tags read|write``: 0 done (a --watch stopped with Ctrl-C too), 1 a write
    was refused."""
    from controller.runtime import commissioning

    if args.tags_command == "read":
        check_watch(args.interval, args.count)
        try:
            return asyncio.run(
                commissioning.tags_read(args.site, console, args.watch, args.interval, args.count)
            )
        except KeyboardInterrupt:  # Ctrl-C is how a --watch is stopped: not an error
            console.print("stopped", highlight=False)
            return 0
    return asyncio.run(
        commissioning.tags_write(
            args.site, args.assignments, args.reason, args.user, args.audit, console
        )
    )


def check_watch(interval: float, count: int | None) -> None:
    """``--interval`` and ``--count`` of ``tags read``, checked before connecting: ConfigError
    (CLI exit 2) naming every bad one."""
    problems = []
    if not (math.isfinite(interval) and interval > 0):
        message = "allowed: a positive finite number of seconds"
        problems.append(Problem("command line", "--interval", message, interval))
    if count is not None and count < 1:
        problems.append(Problem("command line", "--count", "allowed: 1 or more", count))
    if problems:
        raise ConfigError(problems)


def history_command(args: argparse.Namespace, console: Console) -> int:
    """``pharmatwin history export``."""
    from controller.runtime import commissioning

    return commissioning.history_export(args.db, args.parquet, args.run, console)
