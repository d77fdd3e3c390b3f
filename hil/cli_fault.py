"""``pharmatwin-hil fault``: inject, clear or inspect the faults of a running ``serve``.

A request is checked first against the site file (names, units, limits:
:mod:`hil.faultcheck`) and refused with exit code 2 and every reason; the serving rig checks
it again, with its true plant and its servers, over its admin channel (:mod:`hil.serve`).
The answer is printed as tables, or as JSON with ``--json``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.markup import escape
from rich.table import Table


def fault(args: argparse.Namespace, console: Console) -> int:
    """``fault``: 0 when the rig did what was asked, 2 when it (or the site file) refused,
    or when a clear matched no held fault (nothing was done)."""
    return asyncio.run(_fault(args, console))


def add_parser(sub: Any, epilog: str) -> None:
    """``fault SITE inject|status|clear``."""
    flt = sub.add_parser(
        "fault",
        help="inject, clear or inspect faults of a running 'serve'",
        epilog=epilog,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    flt.add_argument("site", type=Path, help="the site a running `pharmatwin-hil serve` serves")
    flt.add_argument(
        "--state-dir", type=Path, default=None, help="the state folder serve was given, if any"
    )
    fsub = flt.add_subparsers(dest="fault_command", required=True)
    machine = argparse.ArgumentParser(add_help=False)
    machine.add_argument("--json", action="store_true", help="print the rig's answer as JSON")
    inj = fsub.add_parser(
        "inject",
        parents=[machine],
        help="inject one fault now (checked against the site, refused with exit code 2)",
    )
    inj.add_argument("kind", help="e.g. sensor_bias, actuator_stuck, comm_latency, parameter_drift")
    inj.add_argument(
        "target",
        help="a model output (sensor_*), input (actuator_*) or parameter (parameter_drift); "
        "a tag or a wildcard such as '*' (comm_bad_status); '*' (the other comm_* kinds)",
    )
    inj.add_argument("--magnitude", type=float, default=0.0, help="in the target's unit")
    inj.add_argument("--rate", type=float, default=0.0, help="per model time unit")
    inj.add_argument("--unit", default="", help="the unit of --magnitude/--rate, checked")
    inj.add_argument("--duration", type=float, default=None, help="model time units")
    fsub.add_parser("status", parents=[machine], help="the rig's state and its active faults")
    clr = fsub.add_parser("clear", parents=[machine], help="remove faults (all by default)")
    clr.add_argument("--kind", default=None, help="clear only faults of this kind")
    clr.add_argument(
        "--target",
        default=None,
        help="clear only faults on this target, or on the targets a wildcard pattern matches "
        "('T*', 'product_temp_*'; '*' matches every target); exit code 2 when nothing matched",
    )


def _fault_request(args: argparse.Namespace) -> dict[str, Any]:
    """The admin request for ``args``, checked first against the site file (names, units,
    limits); the serving rig checks it again, with its true plant and its servers."""
    from controller.runtime.site import load_site
    from hil.faultcheck import FaultTargets, check_clear, check_fault, parse_fault

    if args.fault_command == "status":
        return {"cmd": "status"}
    targets = FaultTargets.for_site(load_site(args.site))
    if args.fault_command == "clear":
        check_clear(args.kind, args.target, targets)
        return {"cmd": "clear", "kind": args.kind, "target": args.target}
    fault = {"kind": args.kind, "target": args.target, "start": 0.0, "duration": args.duration}
    fault |= {"magnitude": args.magnitude, "rate": args.rate, "unit": args.unit}
    check_fault(parse_fault(fault), targets)
    return {"cmd": "inject", "fault": fault}


async def _fault(args: argparse.Namespace, console: Console) -> int:
    from hil.faultcheck import FaultRefusedError
    from hil.serve import admin_request

    try:
        request = _fault_request(args)
    except FaultRefusedError as exc:
        answer = exc.answer()
    else:
        answer = await admin_request(args.site, request, args.state_dir)
    if args.json:
        print(json.dumps(answer, indent=2, default=str))
    elif not answer.get("ok"):
        problems = [str(p) for p in answer.get("problems") or [answer.get("error")]]
        for problem in problems:
            console.print(f"[red]error:[/red] {escape(problem)}", highlight=False, soft_wrap=True)
        allowed = answer.get("allowed") or []
        if allowed and not any("allowed: [" in p for p in problems):  # counted, not listed
            console.print(f"allowed: {', '.join(allowed)}", highlight=False, soft_wrap=True)
    else:
        for table in _fault_tables(args.fault_command, answer):
            console.print(table)
    return 0 if answer.get("ok") else 2


def _number(value: object, unit: str | None = None) -> str:
    if value is None:
        return "-"
    text = f"{value:.6g}" if isinstance(value, float) else str(value)
    return f"{text} {unit}" if unit else text


def _faults_table(title: str, faults: list[dict[str, Any]], time_unit: str) -> Table:
    table = Table(title=title)
    for col in ("kind", "target", f"start ({time_unit})", f"duration ({time_unit})"):
        table.add_column(col)
    for col in ("magnitude", "rate", "unit", "description"):
        table.add_column(col)
    for f in faults:
        duration = "until cleared" if f.get("duration") is None else _number(f["duration"])
        table.add_row(
            f["kind"],
            f["target"],
            _number(f["start"]),
            duration,
            _number(f.get("magnitude")) if f.get("magnitude") else "-",
            _number(f.get("rate")) if f.get("rate") else "-",
            f.get("unit") or "-",
            f.get("description") or "",
        )
    return table


def _fault_tables(command: str, answer: dict[str, Any]) -> list[Table]:
    """The rig's answer to ``fault inject|status|clear`` as tables."""
    if command == "inject":
        held, unit = answer["injected"], answer.get("unit")
        table = Table(title="fault injected")
        table.add_column("field")
        table.add_column("value")
        table.add_row("injected at", _number(answer["t_model"], answer["time_unit"]))
        table.add_row("kind", held["kind"])
        table.add_row("target", held["target"])
        if answer.get("tags"):
            table.add_row(f"tags ({len(answer['tags'])})", ", ".join(answer["tags"]))
        table.add_row("start", _number(held["start"], answer["time_unit"]))
        duration = held.get("duration")
        table.add_row(
            "duration",
            "until cleared" if duration is None else _number(duration, answer["time_unit"]),
        )
        if held.get("magnitude"):
            table.add_row("magnitude", _number(held["magnitude"], unit))
        if held.get("rate"):
            table.add_row("rate", _number(held["rate"], unit))
        return [table]
    if command == "clear":
        cleared = answer.get("cleared", [])
        title = f"{len(cleared)} fault(s) cleared"
        return [_faults_table(title, cleared, answer.get("time_unit", ""))]
    status = answer["status"]
    unit = status.get("time_unit", "")
    table = Table(title="rig status")
    table.add_column("field")
    table.add_column("value")
    table.add_row("t", _number(status.get("t_model"), unit))
    for key in ("mode", "scans", "alarm", "plc_events", "fault_events", "plant_fault"):
        if key in status:
            table.add_row(key, _number(status[key]))
    applied = status.get("applied", {})
    table.add_row("applied", ", ".join(f"{k} = {_number(v)}" for k, v in applied.items()))
    active = status.get("active_faults", [])
    title = f"{len(active)} active fault(s)" if active else "no active fault"
    return [table, _faults_table(title, active, unit)]
