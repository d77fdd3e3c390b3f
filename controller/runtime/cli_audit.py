"""``pharmatwin audit verify|keygen|export``: check, key and export the audit trail.

``verify`` exits 0 verified, 1 the trail does not verify, 2 it cannot be checked.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from rich.console import Console
from rich.markup import escape

from controller.runtime.cli_common import SubParsers, examples

AUDIT_EPILOG = """examples:
  pharmatwin audit keygen /etc/pharmatwin/audit.key     # once; keep it out of the DB folder
  export PHARMATWIN_AUDIT_KEY=/etc/pharmatwin/audit.key   # the runtime signs anchors with it
  pharmatwin audit verify pharmatwin-audit.db --key /etc/pharmatwin/audit.key
"""


def add_parser(sub: SubParsers) -> None:
    """The ``audit verify``, ``audit keygen`` and ``audit export`` subcommands."""
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


def audit_verify(db: Path, key: Path | None, anchor: Path | None, console: Console) -> int:
    """``audit verify``: 0 verified, 1 it does not verify, 2 it cannot be checked."""
    from controller.runtime.audit_chain import AuditError, AuditMismatch
    from controller.runtime.audit_keys import resolve_key
    from controller.runtime.audit_verify import verify_file

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
    from controller.runtime.audit_chain import AuditError
    from controller.runtime.audit_keys import KEY_ENV, create_key

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


def audit_command(args: argparse.Namespace, console: Console) -> int:
    """``pharmatwin audit ...``: dispatch to verify, keygen or export."""
    from controller.runtime import audit_export

    if args.audit_command == "verify":
        return audit_verify(args.db, args.key, args.anchor, console)
    if args.audit_command == "keygen":
        return audit_keygen(args.key, console)
    selection = audit_export.AuditSelection.parse(args.since, args.action, args.last)
    return audit_export.audit_export(args.db, console, args.fmt, args.out, selection)
