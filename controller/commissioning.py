"""Commissioning commands behind ``pharmatwin tags|audit|history ...``.

``tags read`` prints every readable tag (value, unit, quality, age). ``tags write`` checks the
tag's direction and limits, writes an audit record *before* sending, writes, reads back, and
audits the result. Nothing here runs a control loop.
"""

from __future__ import annotations

import asyncio
import csv
import dataclasses
import getpass
import io
import json
import math
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Literal

from rich.console import Console
from rich.live import Live
from rich.table import Table

from controller.audit import AuditError, AuditRecord, AuditTrail, file_hash, read_records
from controller.clock import RealClock
from controller.errors import ConfigError, Problem
from controller.historian import HistorianError, SqliteHistorian, export_parquet
from controller.ports.base import Quality, Snapshot, WriteStatus
from controller.ports.factory import make_port
from controller.site import Site, load_site

_QUALITY_STYLE = {Quality.GOOD: "green", Quality.UNCERTAIN: "yellow", Quality.BAD: "red"}


def snapshot_table(site: Site, snap: Snapshot) -> Table:
    table = Table(title=f"{site.name}: {site.connection.url}")
    for col in ("tag", "value", "unit", "quality", "age [s]", "description"):
        table.add_column(col, justify="right" if col in ("value", "age [s]") else "left")
    for name, tv in snap.values.items():
        tag = site.tags.tags[name]
        style = _QUALITY_STYLE[tv.quality]
        quality = tv.quality.value + (f" ({tv.detail})" if tv.detail else "")
        table.add_row(
            name,
            f"{tv.value:.6g}",
            tag.unit,
            f"[{style}]{quality}[/{style}]",
            f"{tv.age(snap.read_time):.1f}",
            tag.description,
        )
    return table


async def tags_read(
    site_path: Path, console: Console, watch: bool, interval: float, count: int | None
) -> int:
    site = load_site(site_path)
    clock = RealClock()
    names = [n for n, t in site.tags.tags.items() if t.readable]
    async with make_port(site, clock) as port:
        snap = await port.read(names)
        if not watch:
            console.print(snapshot_table(site, snap))
            return 0
        done = 1
        with Live(snapshot_table(site, snap), console=console, auto_refresh=False) as live:
            while count is None or done < count:
                await asyncio.sleep(interval)
                snap = await port.read(names)
                live.update(snapshot_table(site, snap), refresh=True)
                done += 1
    return 0


def parse_assignments(site: Site, assignments: Sequence[str]) -> dict[str, float]:
    """``TAG=VALUE`` pairs -> values; every problem (unknown, read-only, limits) at once."""
    values: dict[str, float] = {}
    problems: list[Problem] = []
    for i, text in enumerate(assignments):
        name, sep, raw = text.partition("=")
        tag = site.tags.tags.get(name)
        where = f"argument {i + 1}"
        if not sep:
            problems.append(Problem("command line", where, "expected TAG=VALUE", text))
            continue
        if tag is None:
            problems.append(
                Problem(
                    "command line", where, f"unknown tag; known: {sorted(site.tags.tags)}", name
                )
            )
            continue
        if not tag.writable:
            problems.append(Problem("command line", where, f"tag {name} is read-only", name))
            continue
        try:
            value = float(raw)
        except ValueError:
            problems.append(Problem("command line", where, f"{name}: not a number", raw))
            continue
        if not math.isfinite(value) or (
            tag.limits is not None and not tag.limits[0] <= value <= tag.limits[1]
        ):
            allowed = f"[{tag.limits[0]}, {tag.limits[1]}] {tag.unit}" if tag.limits else "finite"
            problems.append(Problem("command line", where, f"{name}: allowed {allowed}", value))
            continue
        values[name] = value
    if problems:
        raise ConfigError(problems)
    return values


async def tags_write(
    site_path: Path,
    assignments: Sequence[str],
    reason: str,
    user: str | None,
    audit_path: Path,
    console: Console,
) -> int:
    site = load_site(site_path)
    values = parse_assignments(site, assignments)
    actor = user or getpass.getuser()
    audit = AuditTrail(audit_path, config_hash=file_hash(site.path), actor=actor)
    try:
        async with make_port(site, RealClock()) as port:
            readable = [n for n in values if site.tags.tags[n].readable]
            before = (await port.read(readable)).numbers() if readable else {}
            for name, value in values.items():
                audit.record(
                    "tag.write.request",
                    name,
                    reason=reason,
                    old_value=before.get(name),
                    new_value=value,
                    detail={"site": site.name, "url": site.connection.url},
                )
            report = await port.write(values)
        for name, res in report.results.items():
            audit.record(
                "tag.write.result",
                name,
                reason=reason,
                old_value=before.get(name),
                new_value=res.readback,
                detail={"status": res.status.value, "detail": res.detail},
            )
    finally:
        audit.close()
    table = Table(title=f"write to {site.name} ({site.connection.url}), audited in {audit_path}")
    for col in ("tag", "before", "requested", "read back", "status", "detail"):
        table.add_column(col)
    for name, res in report.results.items():
        style = "green" if res.status is WriteStatus.OK else "red"
        table.add_row(
            name,
            f"{before[name]:.6g}" if name in before else "-",
            f"{res.requested:.6g}",
            "-" if res.readback is None else f"{res.readback:.6g}",
            f"[{style}]{res.status.value}[/{style}]",
            res.detail,
        )
    console.print(table)
    return 0 if report.ok else 1


AuditFormat = Literal["table", "csv", "json"]


def audit_export(
    db: Path, console: Console, fmt: AuditFormat = "table", out: Path | None = None
) -> int:
    """Export the audit trail: a rich table (default), or CSV/JSON of every field.

    CSV and JSON keep each field exactly as stored (``detail`` is the JSON text the hash
    covers), so an export can be checked against the chain. Written to ``out`` or stdout.
    """
    if not db.is_file():
        raise AuditError(f"no audit database at {db}")
    if fmt == "table":
        return _audit_table(db, console, out)
    rows = [dataclasses.asdict(r) for r in read_records(db)]  # read-only: never creates tables
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


def _audit_table(db: Path, console: Console, out: Path | None) -> int:
    table = Table(title=f"audit trail {db}")
    for col in ("id", "UTC", "who", "action", "target", "old", "new", "why", "detail"):
        table.add_column(col)
    for r in read_records(db):  # read-only: never creates tables
        table.add_row(
            str(r.id),
            r.ts_utc,
            r.actor,
            r.action,
            r.target,
            r.old_value or "",
            r.new_value or "",
            r.reason,
            r.detail,
        )
    if out is None:
        console.print(table)
    else:
        buf = io.StringIO()
        Console(file=buf, width=240).print(table)
        _write_text(out, buf.getvalue())
        console.print(f"wrote the audit trail of {db} to {out} (table)", highlight=False)
    return 0


def history_export(db: Path, parquet: Path, run_id: str | None, console: Console) -> int:
    """Export a historian database to Parquet: one flat row per cycle, RunInfo as metadata."""
    if not db.is_file():
        raise HistorianError(f"no historian database at {db}")
    import pyarrow.parquet as pq

    with SqliteHistorian(db) as historian:
        runs = [r.run_id for r in historian.runs() if run_id is None or r.run_id == run_id]
        export_parquet(historian, parquet, run_id)
    rows = pq.read_metadata(parquet).num_rows
    console.print(
        f"wrote {rows} cycles of {len(runs)} run(s) ({', '.join(runs)}) from {db} to {parquet}",
        highlight=False,
    )
    return 0
