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
import asyncio
import math
import sys
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from controller import filekinds
from controller.config import (
    build_model,
    load_controller,
    load_scenario,
    read_yaml,
)
from controller.errors import ConfigError, PharmaTwinError, Problem
from controller.runtime.site import load_site
from controller.tags import load_tag_map

if TYPE_CHECKING:
    from controller.runtime.wiring import RunResult
    from controller.twin.forecast import Forecast

EPILOG = """examples:
  pharmatwin check-config configs/sites/bioreactor-modbus.yaml configs/scenarios/cstr-mpc.yaml
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

AUDIT_EPILOG = """examples:
  pharmatwin audit keygen /etc/pharmatwin/audit.key     # once; keep it out of the DB folder
  export PHARMATWIN_AUDIT_KEY=/etc/pharmatwin/audit.key   # the runtime signs anchors with it
  pharmatwin audit verify pharmatwin-audit.db --key /etc/pharmatwin/audit.key
"""

#: The historian ``pharmatwin run`` writes unless told otherwise (``--historian``).
DEFAULT_HISTORIAN = Path("pharmatwin-history.db")

PLAN_HELP = """a YAML plan: name, time_base (now: t = 0 is the forecast start; batch: batch
time), interpolation (linear|previous) and table rows {t, inputs}; inputs it does not name
hold their current value"""


#: What checks each kind of file the controller reads (the HIL tools add their own kinds).
Checker = Callable[[Path], object]
CHECKERS: dict[str, Checker] = {
    "site": load_site,
    "tag map": load_tag_map,
    "plant": build_model,
    "controller": load_controller,
    "scenario": load_scenario,
}


def check_config(
    paths: Sequence[Path],
    console: Console,
    checkers: Mapping[str, Checker] = CHECKERS,
    tool: str = "pharmatwin",
) -> int:
    """Check each file as the kind it is (and every file it names); print every problem.

    0: every file checked and ok; 1: a file has problems, or is of a kind ``checkers`` does
    not cover (it is named, with the command that checks it): never "ok" without a check.
    """
    counts = {"ok": 0, "failed": 0, "not checked": 0}
    for path in paths:
        outcome = _check_one(path, console, checkers, tool)
        counts[outcome] += 1
    if len(paths) > 1:
        summary = ", ".join(f"{n} {what}" for what, n in counts.items() if n)
        console.print(f"{len(paths)} files: {summary}", highlight=False)
    return 0 if counts["ok"] == len(paths) else 1


def _check_one(path: Path, console: Console, checkers: Mapping[str, Checker], tool: str) -> str:
    name = escape(str(path))
    try:
        data = read_yaml(path)
        kind = filekinds.detect(data)
        if kind is None:
            raise ConfigError([_unknown_kind(path, data)])
        checker = checkers.get(kind.name)
        if checker is None:
            console.print(
                f"[yellow]not checked[/yellow] {name}: this is a {kind.name} file; "
                f"{tool} cannot check it: run `{escape(kind.checker.replace('FILE', str(path)))}`",
                highlight=False,
                soft_wrap=True,
            )
            return "not checked"
        checker(path)
    except ConfigError as exc:
        console.print(f"[red]FAIL[/red] {name}", highlight=False)
        for p in exc.problems:
            console.print(f"  - {p}", highlight=False, markup=False, soft_wrap=True)
        return "failed"
    except PharmaTwinError as exc:
        message = f"[red]FAIL[/red] {name}: {escape(str(exc))}"
        console.print(message, highlight=False, soft_wrap=True)
        return "failed"
    console.print(f"[green]ok[/green]   {name} ({kind.name})", highlight=False)
    return "ok"


def _unknown_kind(path: Path, data: Mapping[str, object]) -> Problem:
    kinds = "; ".join(
        f"{k.name} ({', '.join(sorted(k.signature)) or 'tags: a mapping'})" for k in filekinds.KINDS
    )
    return Problem(
        str(path),
        "",
        f"cannot tell which kind of config file this is from its top-level keys "
        f"{sorted(data)}; each kind has one of these keys: {kinds}",
    )


def describe(path: Path, console: Console) -> int:
    """Print a plant model's variables with units, bounds and roles, and its parameters."""
    model = build_model(path)
    table = Table(title=f"{model.name}: {model.description} (time in {model.time_unit})")
    # valid: where the equations hold (a true state outside is a plant fault); operating: what
    # the process must respect (constraints and checks; for a parameter, its plausible range)
    for col in ("name", "role", "unit", "valid from", "valid to", "operating", "description"):
        table.add_column(col)
    for v in model.all_variables.values():
        lo, hi = v.operating
        op = "-" if not (math.isfinite(lo) or math.isfinite(hi)) else f"[{lo:g}, {hi:g}]"
        table.add_row(
            v.name, v.role.value, v.unit, f"{v.lower:g}", f"{v.upper:g}", op, v.description
        )
    for p in model.parameter_set.parameters.values():
        table.add_row(
            p.name,
            "parameter",
            p.unit,
            "-",
            "-",
            f"plausible [{p.lower:g}, {p.upper:g}]",
            f"{p.value:g}: {p.description}",
        )
    console.print(table)
    return 0


def forecast_command(
    site_path: Path,
    plan: Path | None,
    historian: Path | None,
    run_id: str | None,
    out: Path,
    console: Console,
) -> int:
    """Forecast the batch from a runtime's historian; print the CQAs, write JSON and a plot."""
    from controller.errors import Problem
    from controller.twin import forecast as fc

    site = load_site(site_path)
    if historian is None:
        if not DEFAULT_HISTORIAN.is_file():
            raise fc.ForecastError(
                [
                    Problem(
                        str(DEFAULT_HISTORIAN),
                        "--historian",
                        "no historian here; give --historian DB (the file of a running "
                        "`pharmatwin run SITE --historian DB`)",
                        str(DEFAULT_HISTORIAN.resolve()),
                    )
                ]
            )
        historian = DEFAULT_HISTORIAN
    start = fc.start_from_historian(site, historian, run_id)
    plans = fc.default_plans(site, plan)
    result = fc.forecast(site, start, plans)
    unit = result.time_unit
    inputs = ", ".join(f"{k}={v:.4g}" for k, v in start.inputs.items())
    console.print(
        f"{site.name}: forecast from t = {start.t:.4g} {unit} (inputs {inputs}) from {historian}",
        highlight=False,
        markup=False,
    )
    console.print(_forecast_table(result))
    for row in result.table():
        for text in (row["status"] if row["status"] != "ok" else "", row["notes"]):
            if text:
                console.print(f"  {row['plan']}: {text}", highlight=False, markup=False)
    json_path = fc.write_json(result, out / "forecast.json")
    m = site.model
    names = (*m.all_variables, *m.expression_names)
    png_path = fc.plot_forecast(result, out / "forecast.png", {n: m.unit_of(n) for n in names})
    console.print(f"wrote {json_path} and {png_path}", highlight=False, markup=False)
    return 0


def _forecast_table(result: Forecast) -> Table:
    """One column per plan, one row per CQA, then the batch end, finished and status."""
    unit = result.time_unit
    rows = result.table()
    table = Table(title=f"{result.site}: predicted CQAs per plan")
    table.add_column("CQA")
    for row in rows:
        table.add_column(f"{row['plan']} ({row['kind']})", justify="right")
    for c in result.cqas:
        what = f"{c.at} of {c.expression}" if c.expression != "end_time" else f"batch end [{unit}]"
        table.add_row(escape(f"{c.name} ({what})"), *(f"{row[c.name]:.5g}" for row in rows))
    table.add_row(escape(f"forecast end [{unit}]"), *(f"{row['end_time']:.5g}" for row in rows))
    table.add_row("batch finished", *("yes" if row["finished"] else "no" for row in rows))
    table.add_row(
        "status", *(row["status"] if row["status"] == "ok" else "[red]failed[/red]" for row in rows)
    )
    return table


class VersionAction(argparse.Action):
    """``--version``: the installed package version and the git commit (looked up when asked)."""

    def __init__(self, option_strings: Sequence[str], dest: str = argparse.SUPPRESS, **kw: object):
        super().__init__(
            option_strings,
            dest,
            nargs=0,
            default=argparse.SUPPRESS,
            help="print the version (and git commit, if known) and exit",
        )

    def __call__(
        self,
        parser: argparse.ArgumentParser,
        namespace: argparse.Namespace,
        values: object,
        option_string: str | None = None,
    ) -> None:
        sys.stdout.write(version_text(parser.prog) + "\n")
        parser.exit()


def version_text(prog: str) -> str:
    """``prog 0.1.0 (git 1a2b3c4d5e6f)``; the commit is left out when git cannot tell."""
    from controller.runtime.audit import software_version
    from controller.runtime.historian import git_commit

    version = software_version().removeprefix("pharmatwin ")
    commit = git_commit()
    return f"{prog} {version}" + (f" (git {commit[:12]})" if commit else "")


def examples(*lines: str) -> dict[str, Any]:
    """A subcommand's own examples, as ``add_parser`` keywords (raw epilog, kept as written)."""
    return {
        "epilog": "examples:\n" + "\n".join(f"  {line}" for line in lines),
        "formatter_class": argparse.RawDescriptionHelpFormatter,
    }


SITE_HELP = "configs/sites/<name>.yaml"
AUDIT_DB_HELP = "the audit database (default: pharmatwin-audit.db)"


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="pharmatwin",
        description="PharmaTwin edge and commissioning commands.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--version", action=VersionAction)
    sub = p.add_subparsers(dest="command", required=True)
    c = sub.add_parser(
        "check-config",
        help="validate config files and print every problem",
        description="Check each file as the kind it is (site, tag map, plant, controller, "
        "scenario: told apart by their keys), with every file it names. Campaign, tuning and "
        "design-space files are the HIL tools': `pharmatwin-hil check-config` checks them (and "
        "every other kind). Exit 0: every file ok; 1: a problem, or a file not checked here.",
        **examples(
            "pharmatwin check-config configs/sites/bioreactor-modbus.yaml",
            "pharmatwin check-config configs/sites/*.yaml configs/scenarios/cstr-mpc.yaml",
        ),
    )
    c.add_argument("files", type=Path, nargs="+", help="config files of any kind the runtime reads")
    d = sub.add_parser(
        "describe",
        help="show a plant model's variables and parameters",
        **examples(
            "pharmatwin describe configs/plants/lyophilizer.yaml",
            "pharmatwin describe configs/plants/bioreactor.yaml",
        ),
    )
    d.add_argument("plant", type=Path, help="configs/plants/<name>.yaml")
    _tags_parser(sub)
    _run_parser(sub)
    _audit_parser(sub)
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
    _forecast_parser(sub)
    return p


def _tags_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
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


def _run_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
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


def _audit_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    a = sub.add_parser(
        "audit",
        help="the audit trail",
        **examples(
            "pharmatwin audit verify pharmatwin-audit.db",
            "pharmatwin audit export pharmatwin-audit.db --last 20",
        ),
    )
    asub = a.add_subparsers(dest="audit_command", required=True)
    av = asub.add_parser(
        "verify",
        help="check the hash chain and its signed anchors (read-only)",
        description="Recompute the hash chain of an audit database and check it against every "
        "anchor in DB.anchor (a deleted tail or a recomputed chain fails). The database is "
        "opened read-only. Exit 0: verified; 1: it does not verify; 2: it cannot be checked.",
        epilog=AUDIT_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    av.add_argument("db", type=Path, help="the audit database")
    av.add_argument(
        "--key",
        type=Path,
        default=None,
        metavar="FILE",
        help="the anchor key file (default: the file $PHARMATWIN_AUDIT_KEY names)",
    )
    av.add_argument("--anchor", type=Path, default=None, metavar="FILE", help="default: DB.anchor")
    ak = asub.add_parser(
        "keygen",
        help="write a new anchor key file (mode 600) for signing audit anchors",
        epilog=AUDIT_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    ak.add_argument(
        "key", type=Path, metavar="FILE", help="where the new key goes (never replaced)"
    )
    ae = asub.add_parser(
        "export",
        help="export the audit trail: a table, CSV or JSON",
        description="Print or write the audit trail, oldest first. The table fits 100 columns "
        "(who, action, target, old -> new, why; the detail JSON is in csv/json). Filters "
        "combine: --since, then --action, then --last.",
        **examples(
            "pharmatwin audit export pharmatwin-audit.db --last 20",
            "pharmatwin audit export pharmatwin-audit.db --action setpoint.write "
            "--since 2026-11-02T08:00",
            "pharmatwin audit export pharmatwin-audit.db --action 'mode.*' --since 2026-11-02",
            "pharmatwin audit export pharmatwin-audit.db --format csv --out audit.csv",
        ),
    )
    ae.add_argument("db", type=Path, help="the audit database (opened read-only)")
    ae.add_argument(
        "--format",
        dest="fmt",
        choices=("table", "csv", "json"),
        default="table",
        help="table (default, for reading), or csv/json of every field (for archiving)",
    )
    ae.add_argument("--out", type=Path, default=None, help="write to FILE (default: stdout)")
    ae.add_argument(
        "--since",
        default=None,
        metavar="UTC",
        help="records at or after this UTC time: 2026-11-02, 2026-11-02T08:00[:00]",
    )
    ae.add_argument(
        "--action",
        action="append",
        default=None,
        metavar="ACTION",
        help="only this action (repeatable; shell-style * allowed, e.g. 'mode.*')",
    )
    ae.add_argument(
        "--last", type=int, default=None, metavar="N", help="only the newest N records (N >= 1)"
    )


def _forecast_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    f = sub.add_parser(
        "forecast",
        help="what-if: predict the batch to its end from the live estimate, per plan",
        description="Read the newest estimate from a runtime's historian (shadow or closed "
        "loop; the PLC is never touched), predict the batch to its end under the site's MPC, "
        "the PLC's local recipe and an optional plan, print the predicted CQAs and write "
        "forecast.json and forecast.png.",
        **examples(
            "pharmatwin forecast configs/sites/lyophilizer-modbus.yaml "
            "--historian pharmatwin-history.db",
            "pharmatwin forecast configs/sites/lyophilizer-modbus.yaml --plan cooler-shelf.yaml "
            "--out runs/fc",
        ),
    )
    f.add_argument("site", type=Path, help="configs/sites/<name>.yaml (with a 'forecast' section)")
    f.add_argument("--plan", type=Path, default=None, metavar="FILE", help=PLAN_HELP)
    f.add_argument(
        "--historian",
        type=Path,
        default=None,
        metavar="DB",
        help=f"the runtime's historian (default: {DEFAULT_HISTORIAN} if it exists)",
    )
    f.add_argument("--run-id", default=None, help="one run of the historian (default: newest)")
    f.add_argument(
        "--out",
        type=Path,
        default=Path("runs/forecast"),
        metavar="DIR",
        help="where forecast.json and forecast.png go (default: runs/forecast)",
    )


def audit_verify(db: Path, key: Path | None, anchor: Path | None, console: Console) -> int:
    """``audit verify``: 0 verified, 1 it does not verify, 2 it cannot be checked."""
    from controller.runtime.audit import AuditError, AuditMismatch, resolve_key, verify_file

    try:
        report = verify_file(db, key=resolve_key(key), anchor_file=anchor)
    except AuditMismatch as exc:
        console.print(f"[red]FAILED[/red] {escape(str(exc))}", highlight=False, soft_wrap=True)
        return 1
    except AuditError as exc:
        console.print(f"[red]error:[/red] {escape(str(exc))}", highlight=False, soft_wrap=True)
        return 2
    for warning in report.warnings:
        console.print(f"[yellow]warning[/yellow] {escape(warning)}", soft_wrap=True)
    console.print(f"[green]ok[/green] {escape(report.summary())}", highlight=False, soft_wrap=True)
    return 0


def audit_keygen(path: Path, console: Console) -> int:
    from controller.runtime.audit import KEY_ENV, AuditError, create_key

    try:
        key = create_key(path)
    except AuditError as exc:
        console.print(f"[red]error:[/red] {escape(str(exc))}", highlight=False, soft_wrap=True)
        return 2
    console.print(
        f"wrote a new anchor key to {escape(str(path))} (key {key.key_id}, mode 600); keep it "
        f"away from the database folder and point ${KEY_ENV} (or --key) at it",
        highlight=False,
        soft_wrap=True,
    )
    return 0


def run_command(args: argparse.Namespace, console: Console) -> int:
    """``pharmatwin run``: logs, the live status table, the run, its summary table and verdict.

    0: the run did what its mode promises; 1: it did not (the verdict says why)."""
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
        result = asyncio.run(run_runtime(args.site, opts))
    finally:
        logs.close()
    console.print(run_summary(result, args))
    console.print(result.engagement.summary(), highlight=False)
    if result.verdict is not None:
        console.print(
            f"[red]FAILED[/red] {escape(result.verdict)}", highlight=False, soft_wrap=True
        )
        return 1
    return 0


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


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    console = Console()
    try:
        if args.command == "check-config":
            return check_config(args.files, console)
        if args.command == "describe":
            return describe(args.plant, console)
        if args.command == "tags":
            from controller.runtime import commissioning

            if args.tags_command == "read":
                try:
                    return asyncio.run(
                        commissioning.tags_read(
                            args.site, console, args.watch, args.interval, args.count
                        )
                    )
                except KeyboardInterrupt:  # Ctrl-C is how a --watch is stopped: not an error
                    console.print("stopped", highlight=False)
                    return 0
            return asyncio.run(
                commissioning.tags_write(
                    args.site, args.assignments, args.reason, args.user, args.audit, console
                )
            )
        if args.command == "run":
            return run_command(args, console)
        if args.command == "audit":
            from controller.runtime import commissioning

            if args.audit_command == "verify":
                return audit_verify(args.db, args.key, args.anchor, console)
            if args.audit_command == "keygen":
                return audit_keygen(args.key, console)
            selection = commissioning.AuditSelection.parse(args.since, args.action, args.last)
            return commissioning.audit_export(args.db, console, args.fmt, args.out, selection)
        if args.command == "history":
            from controller.runtime import commissioning

            return commissioning.history_export(args.db, args.parquet, args.run, console)
        if args.command == "forecast":
            return forecast_command(
                args.site, args.plan, args.historian, args.run_id, args.out, console
            )
    except PharmaTwinError as exc:
        console.print(f"[red]error:[/red] {exc}", highlight=False)
        return 2
    return 2


if __name__ == "__main__":
    sys.exit(main())
