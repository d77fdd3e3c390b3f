"""Commissioning commands behind ``pharmatwin tags ...`` and ``pharmatwin history export``.

``tags read`` prints every readable tag (value, unit, quality, age). ``tags write`` checks the
tag's direction and limits, writes an audit record *before* sending, writes, reads back, and
audits the result; a write the PLC refuses is explained in words from the PLC's last-refusal
diagnostic tags (:data:`REFUSAL_TAGS`) when the tag map declares them. Nothing here runs a
control loop. (``pharmatwin audit export`` is :mod:`controller.runtime.audit_export`.)
"""

from __future__ import annotations

import asyncio
import dataclasses
import getpass
from collections.abc import Mapping, Sequence
from enum import IntEnum
from pathlib import Path

from rich.console import Console
from rich.live import Live
from rich.markup import escape
from rich.table import Table

from controller.clock import RealClock
from controller.errors import ConfigError, PortError, Problem
from controller.outpaths import file_problem, input_file_problem
from controller.ports.base import Port, Quality, Snapshot, WriteReport, WriteStatus
from controller.ports.writecheck import WriteCheck
from controller.runtime.audit import AuditTrail
from controller.runtime.audit_chain import file_hash
from controller.runtime.cli_common import HISTORIAN_FILE, print_table
from controller.runtime.historian import SqliteHistorian
from controller.runtime.historian_export import export_parquet
from controller.runtime.historian_records import HistorianError
from controller.runtime.site import Site, load_site, port_for_site

_QUALITY_STYLE = {Quality.GOOD: "green", Quality.UNCERTAIN: "yellow", Quality.BAD: "red"}


def snapshot_table(site: Site, snap: Snapshot) -> Table:
    table = Table(title=escape(f"{site.name}: {site.connection.url}"))
    for col in ("tag", "value", "unit", "quality", "age [s]", "description"):
        table.add_column(col, justify="right" if col in ("value", "age [s]") else "left")
    for name, tv in snap.values.items():
        tag = site.tags.tags[name]
        style = _QUALITY_STYLE[tv.quality]
        quality = tv.quality.value + (f" ({tv.detail})" if tv.detail else "")
        table.add_row(  # the PLC's and the tag map's texts as text, never markup
            name,
            f"{tv.value:.6g}",
            escape(tag.unit),
            f"[{style}]{escape(quality)}[/{style}]",
            f"{tv.age(snap.read_time):.1f}",
            escape(tag.description),
        )
    return table


async def tags_read(
    site_path: Path, console: Console, watch: bool, interval: float, count: int | None
) -> int:
    site = load_site(site_path)
    clock = RealClock()
    names = [n for n, t in site.tags.tags.items() if t.readable]
    async with port_for_site(site, clock) as port:
        snap = await port.read(names)
        if not watch:
            print_table(console, snapshot_table(site, snap))
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
    """``TAG=VALUE`` pairs -> values; every problem at once, as ConfigError.

    Each value goes through the ports' own write check (:class:`WriteCheck`: unknown tag,
    read-only, not a finite number, outside the tag limits), in the ports' words.
    """
    check = WriteCheck.of_tags(site.tags.tags)
    values: dict[str, float] = {}
    problems: list[Problem] = []
    for i, text in enumerate(assignments):
        name, sep, raw = text.partition("=")
        value = _number_or_text(raw)
        why = check.refusal(name, value) if sep else "expected TAG=VALUE"
        if why:
            problems.append(Problem("command line", f"argument {i + 1}", why, text))
        else:
            values[name] = float(value)
    if problems:
        raise ConfigError(problems)
    return values


def _number_or_text(raw: str) -> float | str:
    """``raw`` as a number if it reads as one, else the text itself (for the message)."""
    try:
        return float(raw)
    except ValueError:
        return raw


class RefusalCode(IntEnum):
    """Why the PLC refused the last client write: the value of its ``write_refusal_code`` tag.

    A Modbus write refusal is a bare exception code (03 illegal data value, 02 illegal data
    address); a PLC that declares the :data:`REFUSAL_TAGS` in its tag map keeps the reason of
    the last refusal there (input registers; the HIL's PLC does). ``write_refusal_count``
    counts refusals (wrapping at 65536), so a reader tells a new refusal from an old one.
    """

    NONE = 0
    NOT_ACTIVE = 1
    RATE_LIMIT = 2
    OUTSIDE_LIMITS = 3
    INTERLOCK = 4
    UNMAPPED = 5
    OTHER = 6


#: The PLC's last-refusal diagnostic tags: code, function code and 0-based address of the
#: refused register (the first register of the refused tag), and the count of refusals.
REFUSAL_TAGS = (
    "write_refusal_code",
    "write_refusal_function",
    "write_refusal_address",
    "write_refusal_count",
)

REFUSAL_WORDS = {
    RefusalCode.NONE: "no refusal recorded",
    RefusalCode.NOT_ACTIVE: (
        "not active: the PLC takes remote setpoints only while the MPC is active (request "
        "control with mpc_request and wait for mpc_active)"
    ),
    RefusalCode.RATE_LIMIT: (
        "over the rate limit: the move from the PLC's working setpoint is faster than the "
        "tag's max_rate allows"
    ),
    RefusalCode.OUTSIDE_LIMITS: "outside limits: the value is outside the PLC's range for the tag",
    RefusalCode.INTERLOCK: "interlock: a PLC interlock is active and overrides the setpoints",
    RefusalCode.UNMAPPED: "unmapped address: no tag of the PLC's map lives at that register",
    RefusalCode.OTHER: "refused for a reason the PLC gives only in its log",
}

#: Write function code -> the Modbus table it writes.
_WRITE_TABLES = {5: "coil", 15: "coil", 6: "holding", 16: "holding", 23: "holding"}


def refusal_words(code: float) -> str:
    """The words for a ``write_refusal_code`` value (an unknown code is named as such)."""
    try:
        return REFUSAL_WORDS[RefusalCode(int(code))]
    except ValueError:
        return f"unknown refusal code {code:g}; known: {[int(c) for c in RefusalCode]}"


def _refusal_tags(site: Site) -> tuple[str, ...]:
    """The diagnostic tags, if the site's tag map declares all of them readable."""
    tags = site.tags.tags
    ok = all(name in tags and tags[name].readable for name in REFUSAL_TAGS)
    return REFUSAL_TAGS if ok else ()


async def _read_refusal(port: Port, diag: Sequence[str]) -> dict[str, float] | str:
    """The diagnostic tags' values, or why they cannot be read."""
    try:
        snap = await port.read(diag)
    except PortError as exc:
        return f"the PLC's refusal diagnostics could not be read: {exc}"
    bad = snap.bad(diag)
    if bad:
        return f"the PLC's refusal diagnostics could not be read: {snap[bad[0]].detail}"
    return snap.numbers()


def _explain(
    site: Site, report: WriteReport, seen: dict[str, float] | str, now: dict[str, float] | str
) -> WriteReport:
    """``report`` with the PLC's reason, in words, added to the detail of the refused tag (of
    every refused tag when the PLC's diagnostics name none of them or cannot be read)."""
    rejected = [n for n, r in report.results.items() if r.status is WriteStatus.REJECTED]
    if isinstance(seen, str) or isinstance(now, str):
        why, named = (seen if isinstance(seen, str) else str(now)), []
    elif now["write_refusal_count"] == seen["write_refusal_count"]:
        return report  # the PLC recorded no refusal: the port's own words stand
    else:
        why = _refusal_sentence(site, now)
        named = [n for n in rejected if _names(site, n, now)]
    results = dict(report.results)
    for name in named or rejected:
        res = results[name]
        results[name] = dataclasses.replace(res, detail=f"{res.detail}; {why}".lstrip("; "))
    return WriteReport(results, report.write_time)


def _where(site: Site, function: int, address: int) -> tuple[str, str | None]:
    """The table a write function writes, and the tag starting at ``address`` there."""
    table = _WRITE_TABLES.get(function, f"function {function}")
    for name, tag in site.tags.tags.items():
        spec = tag.modbus
        if spec is not None and spec.table == table and spec.protocol_address == address:
            return table, name
    return table, None


def _refusal_sentence(site: Site, diag: Mapping[str, float]) -> str:
    address = int(diag["write_refusal_address"])
    table, name = _where(site, int(diag["write_refusal_function"]), address)
    at = f"{name} ({table} {address})" if name else f"{table} {address}"
    return f"the PLC refused {at}: {refusal_words(diag['write_refusal_code'])}"


def _names(site: Site, tag: str, diag: Mapping[str, float]) -> bool:
    """Whether the PLC's last refusal is of ``tag``."""
    _, name = _where(site, int(diag["write_refusal_function"]), int(diag["write_refusal_address"]))
    return name == tag


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
        async with port_for_site(site, RealClock()) as port:
            readable = [n for n in values if site.tags.tags[n].readable]
            before = (await port.read(readable)).numbers() if readable else {}
            diag = _refusal_tags(site)
            seen = await _read_refusal(port, diag) if diag else {}
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
            if diag and any(r.status is WriteStatus.REJECTED for r in report.results.values()):
                report = _explain(site, report, seen, await _read_refusal(port, diag))
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
    table = Table(
        title=escape(f"write to {site.name} ({site.connection.url}), audited in {audit_path}")
    )
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
            escape(res.detail),
        )
    print_table(console, table)
    return 0 if report.ok else 1


def history_export(db: Path, parquet: Path, run_id: str | None, console: Console) -> int:
    """Export a historian database to Parquet: one flat row per cycle, RunInfo as metadata."""
    import pyarrow.parquet as pq

    why = input_file_problem(db, HISTORIAN_FILE)
    if why is not None:
        raise HistorianError(f"{db} {why}")
    out_why = file_problem(parquet, "--parquet")
    if out_why is not None:  # before the export, which would fail half-way with a traceback
        raise ConfigError(
            [Problem("command line", "--parquet", out_why.removeprefix("--parquet: "))]
        )
    # read-only: an export never changes the file it reads (it once created the historian's
    # tables in whatever file it was given, an audit trail included, and switched it to WAL)
    with SqliteHistorian(db, read_only=True) as historian:
        stored = historian.runs()
        if not stored:
            raise HistorianError(f"the historian {db} holds no run: nothing to export")
        runs = [r.run_id for r in stored if run_id is None or r.run_id == run_id]
        export_parquet(historian, parquet, run_id)
    rows = pq.read_metadata(parquet).num_rows
    console.print(
        f"wrote {rows} cycles of {len(runs)} run(s) ({', '.join(runs)}) from {db} to {parquet}",
        highlight=False,
    )
    return 0
