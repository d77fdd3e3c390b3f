"""``pharmatwin-hil``: simulation, HIL and campaign commands (thin: parse argv, asyncio.run).

Examples::

    pharmatwin-hil simulate configs/scenarios/bioreactor-mpc.yaml
    pharmatwin-hil simulate configs/scenarios/lyophilizer-nominal-recipe.yaml --out runs/lyo
    pharmatwin-hil simulate configs/scenarios/cstr-mpc.yaml --max-steps 20 --no-plot
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.markup import escape

from controller.errors import PharmaTwinError
from controller.outpaths import out_problem
from hil import cli_batch, cli_fault, cli_serve, min_time

EPILOG = """examples:
  pharmatwin-hil simulate configs/scenarios/bioreactor-mpc.yaml
  pharmatwin-hil simulate configs/scenarios/lyophilizer-nominal-recipe.yaml --out runs/lyo
  pharmatwin-hil simulate configs/scenarios/cstr-mpc.yaml --max-steps 20 --no-plot
  pharmatwin-hil serve configs/sites/lyophilizer-modbus.yaml --rate 600
  pharmatwin-hil serve configs/sites/lyophilizer-modbus.yaml --log-format json --log-file hil.log
  pharmatwin-hil serve configs/sites/bioreactor-opcua.yaml --protocol both --modbus-port 15020
  pharmatwin-hil serve configs/sites/lyophilizer-opcua.yaml --protocol both --modbus-tls \
      --modbus-port 15021 --wrong-unit silent
  pharmatwin-hil fault configs/sites/lyophilizer-modbus.yaml inject sensor_bias Tbot --magnitude 2
  pharmatwin-hil fault configs/sites/lyophilizer-modbus.yaml inject sensor_bias Tbot \
      --magnitude 2 --unit degC --duration 0.5
  pharmatwin-hil fault configs/sites/lyophilizer-modbus.yaml inject comm_bad_status '*' --json
  pharmatwin-hil fault configs/sites/lyophilizer-modbus.yaml status
  pharmatwin-hil fault configs/sites/lyophilizer-modbus.yaml clear --kind comm_bad_status
  pharmatwin-hil campaign run configs/campaigns/lyophilizer-oq.yaml --workers 2
  pharmatwin-hil campaign run configs/campaigns/bioreactor-oq.yaml --executor dask --workers 2
  pharmatwin-hil campaign run configs/campaigns/lyophilizer-smoke.yaml --mode hil \
      --out runs/smoke-hil
  pharmatwin-hil campaign report runs/campaigns/lyophilizer-oq-fast
  pharmatwin-hil tune configs/tuning/lyophilizer.yaml --trials 12 --workers 2
  pharmatwin-hil tune configs/tuning/bioreactor.yaml --executor dask --workers 2 --out runs/tune-bio
  pharmatwin-hil compare configs/controllers/lyophilizer.yaml \
      runs/tuning/lyophilizer/lyophilizer-tuned.yaml --scenarios configs/tuning/lyophilizer.yaml
  pharmatwin-hil design-space configs/design-space/lyophilizer.yaml --workers 2
  pharmatwin-hil design-space configs/design-space/lyophilizer.yaml --executor dask --workers 2
  pharmatwin-hil design-space configs/design-space/lyophilizer.yaml --monte-carlo 20 --workers 2
  pharmatwin-hil check-config configs/*/*.yaml
  pharmatwin-hil min-time configs/controllers/lyophilizer-min-time.yaml
  pharmatwin-hil pki issue-client uaexpert --uri urn:my-pc:UnifiedAutomation:UaExpert
"""


def _examples_of(path: Sequence[str], text: str) -> list[str]:
    """The example lines of ``text`` that run the subcommand ``path`` (its words in order)."""
    lines: list[str] = []
    for entry in text.replace("\\\n", " ").splitlines():
        words = entry.split()
        if not words or words[0] != "pharmatwin-hil":
            continue
        it = iter(words[1:])
        if all(any(w == step for w in it) for step in path):
            lines.append("  " + " ".join(words))
    return lines


def _own_examples(parser: argparse.ArgumentParser, path: tuple[str, ...] = ()) -> None:
    """Every subcommand's help ends with its own examples (not the whole tool's list)."""
    for action in parser._actions:
        if not isinstance(action, argparse._SubParsersAction):
            continue
        for name, sub in action.choices.items():
            here = (*path, name)
            own = _examples_of(here, (sub.epilog or "") + "\n" + EPILOG)
            if own:
                sub.epilog = "examples:\n" + "\n".join(dict.fromkeys(own)) + "\n"
                sub.formatter_class = argparse.RawDescriptionHelpFormatter  # one per line
            _own_examples(sub, here)


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="pharmatwin-hil",
        description="PharmaTwin simulation and hardware-in-the-loop tools.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    from controller.runtime.cli_common import VersionAction

    p.add_argument("--version", action=VersionAction)
    sub = p.add_subparsers(dest="command", required=True)
    cli_serve.add_parsers(sub, EPILOG)
    cli_fault.add_parser(sub, EPILOG)
    cli_batch.add_parsers(sub, EPILOG)
    min_time.add_parser(sub)
    _pki_parser(sub)
    return p


PKI_EPILOG = """examples:
  pharmatwin-hil pki issue-client uaexpert --uri urn:my-pc:UnifiedAutomation:UaExpert
  pharmatwin-hil pki issue-client uaread --uri urn:freeopcua:client --out runs/pki
  pharmatwin-hil pki issue-client node-opcua --uri urn:my-pc:NodeOPCUA-Client --dns my-pc
  pharmatwin-hil pki revoke runs/pki/uaexpert.der

Test-bench credentials for the loopback HIL only: never use them for a plant.
"""


def _pki_parser(sub: Any) -> None:
    """``pki``: issue or revoke client certificates of the test-bench CA (hil.servers.pki)."""
    kw: dict[str, Any] = {
        "epilog": PKI_EPILOG,
        "formatter_class": argparse.RawDescriptionHelpFormatter,
    }
    pki = sub.add_parser("pki", help="issue or revoke client certificates of the bench CA", **kw)
    actions = pki.add_subparsers(dest="pki_command", required=True)
    issue = actions.add_parser(
        "issue-client", help="a client certificate (DER) and key (PEM) from the bench CA", **kw
    )
    issue.add_argument("name", help="file name stem and certificate common name")
    issue.add_argument(
        "--uri", required=True, help="the client's OPC UA application URI (urn:HOST:APP)"
    )
    issue.add_argument("--out", type=Path, default=Path("runs") / "pki", help="(runs/pki)")
    issue.add_argument("--dns", action="append", default=None, help="SAN DNS name (localhost)")
    issue.add_argument("--ip", action="append", default=None, help="SAN IP address (127.0.0.1)")
    issue.add_argument(
        "--force", action="store_true", help="replace NAME's key and certificate if they exist"
    )
    rev = actions.add_parser("revoke", help="put a certificate of the CA on its CRL", **kw)
    rev.add_argument("certificate", type=Path, help="the certificate (DER or PEM)")
    for action in (issue, rev):
        action.add_argument("--ca-dir", type=Path, default=Path("configs") / "pki", help="CA")


def main(argv: Sequence[str] | None = None) -> int:
    parser = _parser()
    _own_examples(parser)
    args = parser.parse_args(argv)
    console = Console()
    for flag in ("workers", "trials"):
        value = getattr(args, flag, None)
        if value is not None and value < 1:
            console.print(
                f"[red]error:[/] command line: --{flag}: must be 1 or more (got {value})",
                highlight=False,
            )
            return 2
    try:
        return COMMANDS[args.command](args, console)
    except PharmaTwinError as exc:
        console.print(f"[red]error:[/red] {escape(str(exc))}", highlight=False, soft_wrap=True)
        return 2


def _pki(args: argparse.Namespace, console: Console) -> int:
    from hil.servers.pki import command as pki_command

    if args.pki_command == "issue-client" and cli_serve.refuse_output(
        console, [out_problem(args.out)]
    ):
        return 2
    return pki_command(args, console)


#: What runs each subcommand: (parsed arguments, console) -> exit code.
COMMANDS: dict[str, Callable[[argparse.Namespace, Console], int]] = {
    "simulate": cli_serve.simulate,
    "serve": cli_serve.serve,
    "fault": cli_fault.fault,
    "campaign": cli_batch.campaign_command,
    "tune": cli_batch.tune_command,
    "compare": cli_batch.compare_command,
    "design-space": cli_batch.design_space_command,
    "check-config": cli_batch.check_config_command,
    "min-time": min_time.command,
    "pki": _pki,
}


if __name__ == "__main__":
    sys.exit(main())
