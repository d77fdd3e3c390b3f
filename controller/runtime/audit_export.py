"""``pharmatwin audit export``: the audit trail (or a selection of it) as a table, CSV or JSON.

The table is for reading (who, action, target, old -> new, why; laid out for
:data:`AUDIT_TABLE_WIDTH` columns when written to a file). CSV and JSON keep every field exactly
as stored, so an export can be checked against the hash chain. The database is opened
read-only (:func:`controller.runtime.audit_verify.read_records`); nothing is ever created.
"""

from __future__ import annotations

import csv
import dataclasses
import datetime as dt
import fnmatch
import io
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Literal

from rich import box
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from controller.errors import ConfigError, Problem
from controller.runtime.audit_chain import AuditError, AuditRecord
from controller.runtime.audit_verify import read_records
from controller.runtime.cli_common import print_table

AuditFormat = Literal["table", "csv", "json"]


@dataclasses.dataclass(frozen=True)
class AuditSelection:
    """Which records ``audit export`` shows: at or after ``since`` (UTC), of ``actions``
    (shell-style patterns, any of them), then the newest ``last``. Empty: every record."""

    since: dt.datetime | None = None
    actions: tuple[str, ...] = ()
    last: int | None = None

    @classmethod
    def parse(
        cls, since: str | None, actions: Sequence[str] | None, last: int | None
    ) -> AuditSelection:
        """From the command line; ConfigError naming the flag and the bad value."""
        problems = []
        when = None
        if since is not None:
            try:
                when = dt.datetime.fromisoformat(since.strip())
            except ValueError:
                allowed = "allowed: a UTC date or time, e.g. 2026-11-02 or 2026-11-02T08:00:00"
                problems.append(Problem("command line", "--since", f"not a time; {allowed}", since))
            else:
                when = when.replace(tzinfo=dt.UTC) if when.tzinfo is None else when
        if last is not None and last < 1:
            problems.append(Problem("command line", "--last", "must be 1 or more", last))
        if problems:
            raise ConfigError(problems)
        return cls(when, tuple(actions or ()), last)

    def apply(self, records: Sequence[AuditRecord]) -> list[AuditRecord]:
        chosen = [
            r
            for r in records
            if (self.since is None or dt.datetime.fromisoformat(r.ts_utc) >= self.since)
            and (not self.actions or any(fnmatch.fnmatchcase(r.action, a) for a in self.actions))
        ]
        return chosen[-self.last :] if self.last is not None else chosen

    def describe(self) -> str:
        """``since ..., action ..., last N`` (empty when every record is shown)."""
        parts = []
        if self.since is not None:
            parts.append(f"since {self.since.isoformat()}")
        if self.actions:
            parts.append(f"action {' or '.join(self.actions)}")
        if self.last is not None:
            parts.append(f"last {self.last}")
        return ", ".join(parts)


def audit_export(
    db: Path,
    console: Console,
    fmt: AuditFormat = "table",
    out: Path | None = None,
    selection: AuditSelection | None = None,
) -> int:
    """Export the audit trail (or the ``selection`` of it): a rich table (default), or
    CSV/JSON of every field.

    CSV and JSON keep each field exactly as stored (``detail`` is the JSON text the hash
    covers), so an export can be checked against the chain. Written to ``out`` or stdout.
    """
    if not db.is_file():
        raise AuditError(f"no audit database at {db}")
    selection = selection or AuditSelection()
    records = selection.apply(read_records(db))  # read-only: never creates tables
    if fmt == "table":
        return _audit_table(db, records, selection, console, out)
    rows = [dataclasses.asdict(r) for r in records]
    buf = io.StringIO()
    if fmt == "json":
        json.dump(rows, buf, indent=2, ensure_ascii=False)
        buf.write("\n")
    else:
        writer = csv.DictWriter(buf, fieldnames=[f.name for f in dataclasses.fields(AuditRecord)])
        writer.writeheader()
        writer.writerows(rows)
    if out is None:
        sys.stdout.write(buf.getvalue())
        sys.stdout.flush()
    else:
        _write_text(out, buf.getvalue())
        console.print(f"wrote {len(rows)} audit records of {db} to {out} ({fmt})", highlight=False)
    return 0


def _write_text(path: Path, text: str) -> None:
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8", newline="")
    except OSError as exc:
        raise AuditError(f"cannot write the export {path}: {exc}") from exc


#: the width a written table is laid out for (a terminal lays it out for its own width)
AUDIT_TABLE_WIDTH = 100


def _change(old: str | None, new: str | None) -> str:
    if old is None and new is None:
        return ""
    return f"{old if old is not None else '-'} -> {new if new is not None else '-'}"


def audit_table(records: Sequence[AuditRecord], title: str) -> Table:
    """One row per record, words wrapped (never cut): id; UTC time to the second over who;
    action over target; old -> new; why. The detail JSON is left to the csv/json exports."""
    table = Table(
        title=title, box=box.SIMPLE_HEAD, pad_edge=False, title_justify="left", expand=True
    )
    table.add_column("id", justify="right", no_wrap=True)
    table.add_column("UTC / who", overflow="fold", max_width=19)
    table.add_column("action / target", overflow="fold", max_width=24)
    table.add_column("old -> new", overflow="fold", ratio=1)
    table.add_column("why", overflow="fold", ratio=2)
    for r in records:
        when = r.ts_utc[:19].replace("T", " ")
        table.add_row(  # as text: brackets in a reason are the record's, not markup
            str(r.id),
            escape(f"{when}\n{r.actor}"),
            escape(f"{r.action}\n{r.target}"),
            escape(_change(r.old_value, r.new_value)),
            escape(r.reason),
        )
    return table


def _audit_table(
    db: Path,
    records: Sequence[AuditRecord],
    selection: AuditSelection,
    console: Console,
    out: Path | None,
) -> int:
    chosen = selection.describe()
    title = f"audit trail {db}: {len(records)} record{'s' if len(records) != 1 else ''}"
    table = audit_table(records, escape(title + (f" ({chosen})" if chosen else "")))
    if out is None:  # into a pipe or a log as into a file (rich would lay it out for 80)
        print_table(console, table, AUDIT_TABLE_WIDTH)
    else:
        buf = io.StringIO()
        Console(file=buf, width=AUDIT_TABLE_WIDTH).print(table)
        _write_text(out, buf.getvalue())
        console.print(f"wrote the audit trail of {db} to {out} (table)", highlight=False)
    return 0
