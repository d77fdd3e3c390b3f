"""``pharmatwin``: edge and commissioning commands (thin: parse argv, then call the library).

Examples::

    pharmatwin check-config configs/sites/bioreactor-modbus.yaml
    pharmatwin tags read configs/sites/bioreactor-modbus.yaml --watch
    pharmatwin tags write SITE feed_rate_sp=0.05 --reason "step test"
    pharmatwin audit verify pharmatwin-audit.db
    pharmatwin audit export pharmatwin-audit.db --format json
    pharmatwin history export pharmatwin-history.db --parquet history.parquet
    pharmatwin describe configs/plants/lyophilizer.yaml
    pharmatwin forecast configs/sites/lyophilizer-modbus.yaml --historian pharmatwin-history.db
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence

from rich.console import Console
from rich.markup import escape

from controller.errors import PharmaTwinError
from controller.runtime import cli_audit, cli_config, cli_forecast, cli_run, cli_tags
from controller.runtime.cli_common import VersionAction

EPILOG = """examples:
  pharmatwin check-config configs/sites/bioreactor-modbus.yaml configs/controllers/cstr.yaml
  pharmatwin tags read configs/sites/bioreactor-modbus.yaml
  pharmatwin tags read configs/sites/lyophilizer-opcua.yaml --watch --interval 2
  pharmatwin tags write configs/sites/bioreactor-modbus.yaml feed_rate_sp=0.05 --reason "step test"
  pharmatwin audit verify pharmatwin-audit.db
  pharmatwin audit export pharmatwin-audit.db --format csv --out audit.csv
  pharmatwin history export pharmatwin-history.db --parquet history.parquet
  pharmatwin describe configs/plants/lyophilizer.yaml
  pharmatwin forecast configs/sites/lyophilizer-modbus.yaml --historian pharmatwin-history.db
  pharmatwin forecast configs/sites/lyophilizer-modbus.yaml --plan cooler-shelf.yaml --out runs/fc
"""

#: Each subcommand's function: parsed arguments and the console in, the exit code out.
Command = Callable[[argparse.Namespace, Console], int]
COMMANDS: dict[str, Command] = {
    "check-config": lambda args, console: cli_config.check_config(args.files, console),
    "describe": lambda args, console: cli_config.describe(args.plant, console),
    "tags": cli_tags.tags_command,
    "run": cli_run.run_command,
    "audit": cli_audit.audit_command,
    "history": cli_tags.history_command,
    "forecast": cli_forecast.command,
}


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="pharmatwin",
        description="PharmaTwin edge and commissioning commands.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--version", action=VersionAction)
    sub = p.add_subparsers(dest="command", required=True)
    cli_config.add_parsers(sub)
    cli_tags.add_tags_parser(sub)
    cli_run.add_parser(sub)
    cli_audit.add_parser(sub)
    cli_tags.add_history_parser(sub)
    cli_forecast.add_parser(sub)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    console = Console()
    if args.command != "run":  # run sets up its logging (--log-level, --log-file)
        from controller.runtime.logsetup import quiet_libraries

        quiet_libraries()
    try:
        return COMMANDS[args.command](args, console)
    except PharmaTwinError as exc:
        console.print(f"[red]error:[/red] {escape(str(exc))}", highlight=False, soft_wrap=True)
        return 2


if __name__ == "__main__":
    sys.exit(main())
