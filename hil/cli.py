"""``pharmatwin-hil``: simulation, HIL and campaign commands (thin: parse argv, asyncio.run).

Examples::

    pharmatwin-hil simulate configs/scenarios/bioreactor-mpc.yaml
    pharmatwin-hil simulate configs/scenarios/lyophilizer-nominal-recipe.yaml --out runs/lyo
    pharmatwin-hil simulate configs/scenarios/cstr-mpc.yaml --max-steps 20 --no-plot
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.table import Table

from controller.errors import ConfigError, PharmaTwinError
from hil import min_time
from hil.kpis import Kpis, compute_kpis
from hil.reports import write_kpis, write_parquet, write_plot
from hil.simulate import run_scenario

if TYPE_CHECKING:
    from hil.tuning.evaluate import ExecutorSettings

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
  pharmatwin-hil campaign run configs/campaigns/smoke.yaml --mode hil --out runs/smoke-hil
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
            _own_examples(sub, here)


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="pharmatwin-hil",
        description="PharmaTwin simulation and hardware-in-the-loop tools.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    from controller.runtime.cli import VersionAction

    p.add_argument("--version", action=VersionAction)
    sub = p.add_subparsers(dest="command", required=True)
    sim = sub.add_parser(
        "simulate",
        help="run a scenario's closed (or open) loop offline, as fast as it can",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sim.add_argument("scenario", type=Path, help="configs/scenarios/<name>.yaml")
    sim.add_argument("--out", type=Path, default=None, help="output folder (runs/<scenario>)")
    sim.add_argument("--max-steps", type=int, default=None, help="stop after N samples")
    sim.add_argument("--no-plot", action="store_true", help="skip the PNG plot")
    sim.add_argument("--quiet", action="store_true", help="no progress bar")
    srv = sub.add_parser(
        "serve",
        help="serve a site's true plant and virtual PLC over Modbus TCP and/or OPC UA",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    srv.add_argument("site", type=Path, help="configs/sites/<name>.yaml (with a 'hil' section)")
    srv.add_argument("--rate", type=float, default=1.0, help="process time per wall time")
    srv.add_argument(
        "--protocol",
        choices=["modbus", "opcua", "both"],
        default=None,
        help="which servers to run (default: the site's connection protocol)",
    )
    srv.add_argument("--host", default="127.0.0.1", help="bind address (loopback by default)")
    srv.add_argument("--allow-remote", action="store_true", help="allow a non-loopback --host")
    srv.add_argument(
        "--modbus-port", type=int, default=None, help="Modbus TCP port (default: the site's)"
    )
    srv.add_argument(
        "--opcua-port", type=int, default=None, help="OPC UA port (default: the site's)"
    )
    srv.add_argument("--duration", type=float, default=None, help="stop after S process s")
    end = srv.add_mutually_exclusive_group()
    end.add_argument(
        "--until-batch-end",
        action="store_true",
        help="exit when the batch ends (default: the plant holds its final state and the "
        "servers go on until Ctrl-C)",
    )
    end.add_argument(
        "--repeat", action="store_true", help="start the batch again each time it ends"
    )
    srv.add_argument(
        "--ui",
        default=None,
        metavar="HOST:PORT",
        help="a read-only web page of the rig (true plant, PLC, faults), e.g. 127.0.0.1:8081",
    )
    srv.add_argument(
        "--wait-for-controller",
        action="store_true",
        help="hold the HIL clock at 0 until a client's first write (the controller's first "
        "cycle), so its start-up does not eat into the batch",
    )
    srv.add_argument("--state-dir", type=Path, default=None, help="certificates, logs, state")
    srv.add_argument(
        "--modbus-tls",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="Modbus/TCP Security: TLS with client certificates issued by the site's "
        "hil.ca_certificate (default: on when the site's connection has modbus.tls)",
    )
    srv.add_argument(
        "--wrong-unit",
        choices=["gateway", "silent"],
        default="gateway",
        help="answer a Modbus request for a unit id the tag map does not have with "
        "exception 0B, as a gateway does (default), or not at all",
    )
    _log_flags(srv)
    flt = sub.add_parser(
        "fault",
        help="inject, clear or inspect faults of a running 'serve'",
        epilog=EPILOG,
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
    clr.add_argument("--target", default=None, help="clear only faults on this target")
    camp = sub.add_parser(
        "campaign",
        help="HIL test campaigns: a scenario matrix judged against acceptance criteria",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    csub = camp.add_subparsers(dest="campaign_command", required=True)
    crun = csub.add_parser("run", help="run a campaign (skips cases already done)")
    crun.add_argument("campaign", type=Path, help="configs/campaigns/<name>.yaml")
    crun.add_argument(
        "--out", type=Path, default=None, help="results folder (runs/campaigns/<name>-<mode>)"
    )
    where = crun.add_mutually_exclusive_group()
    where.add_argument("--workers", type=int, default=None, help="worker processes (default 1)")
    where.add_argument(
        "--dask-scheduler", default=None, help="run on an existing Dask cluster (tcp://HOST:PORT)"
    )
    crun.add_argument(
        "--executor",
        choices=("process", "dask"),
        default=None,
        help="local process pool (default) or Dask (a LocalCluster of --workers)",
    )
    crun.add_argument("--mode", choices=("fast", "hil"), default=None, help="default: the file's")
    crun.add_argument("--rate", type=float, default=None, help="hil mode: process s per wall s")
    crun.add_argument("--force", action="store_true", help="rerun cases already done")
    crun.add_argument("--quiet", action="store_true", help="no progress bar")
    crep = csub.add_parser("report", help="write the HTML, JUnit XML and summary.json again")
    crep.add_argument("results", type=Path, help="a campaign's results folder")
    tune = sub.add_parser(
        "tune",
        help="tune a controller config offline with Optuna over a scenario set (resumable)",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    tune.add_argument("tuning", type=Path, help="configs/tuning/<name>.yaml")
    tune.add_argument("--trials", type=int, default=None, help="the study's total trials")
    tune.add_argument("--out", type=Path, default=None, help="results (runs/tuning/<name>)")
    cmp_ = sub.add_parser(
        "compare",
        help="run two controller configs on the same scenarios and show them side by side",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    cmp_.add_argument("config_a", type=Path, help="a controller config (e.g. the shipped one)")
    cmp_.add_argument("config_b", type=Path, help="another controller config (e.g. the tuned one)")
    cmp_.add_argument(
        "--scenarios",
        type=Path,
        nargs="+",
        required=True,
        help="campaign files or tuning files (their scenario set)",
    )
    cmp_.add_argument("--out", type=Path, default=Path("runs") / "compare", help="results")
    for sp in (tune, cmp_):
        where = sp.add_mutually_exclusive_group()
        where.add_argument("--workers", type=int, default=None, help="worker processes (1)")
        where.add_argument("--dask-scheduler", default=None, help="an existing Dask cluster")
        sp.add_argument(
            "--executor",
            choices=("process", "dask"),
            default=None,
            help="local process pool (default) or Dask",
        )
    ds = sub.add_parser(
        "design-space",
        help="sweep two recipe knobs, judge each point's CQAs, plot the acceptable region",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    ds.add_argument("design_space", type=Path, help="configs/design-space/<name>.yaml")
    ds.add_argument("--workers", type=int, default=1, help="worker processes (default 1)")
    ds.add_argument(
        "--executor",
        choices=("process", "dask"),
        default="process",
        help="local process pool (default) or a Dask LocalCluster of --workers on 127.0.0.1",
    )
    ds.add_argument("--out", type=Path, default=None, help="results (runs/design-space/<name>)")
    ds.add_argument("--quiet", action="store_true", help="no progress bar")
    ds.add_argument(
        "--monte-carlo",
        type=int,
        default=0,
        metavar="N",
        help="N draws of the uncertain parameters at every point: the probability map",
    )
    ds.add_argument(
        "--probability",
        type=float,
        default=0.95,
        help="with --monte-carlo: the probability whose contour bounds the design space (0.95)",
    )
    chk = sub.add_parser(
        "check-config",
        help="check config files of every kind, the HIL's (campaign, tuning, design space) too",
    )
    chk.add_argument(
        "files", type=Path, nargs="+", help="config files of any kind the project ships"
    )
    min_time.add_parser(sub)
    _pki_parser(sub)
    return p


def kpi_table(kpis: Kpis) -> Table:
    table = Table(title=f"KPIs: {kpis.scenario}", show_lines=False)
    table.add_column("KPI")
    table.add_column("value", justify="right")
    for key, value in kpis.as_dict().items():
        if value is None:
            text = "-"
        elif isinstance(value, float):
            text = "-" if not math.isfinite(value) else f"{value:.6g}"
        else:
            text = str(value)
        table.add_row(key, text)
    return table


async def _simulate(args: argparse.Namespace, console: Console) -> int:
    scenario: Path = args.scenario
    with Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        TextColumn("{task.fields[sim]}"),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        console=console,
        disable=args.quiet,
    ) as progress:
        task = progress.add_task(scenario.stem, total=None, sim="loading")

        def tick(t: float, duration: float) -> None:
            progress.update(task, completed=t, total=duration, sim=f"t = {t:.4g} of {duration:g}")

        run = await run_scenario(scenario, max_steps=args.max_steps, on_tick=tick)
        progress.update(task, sim=f"t = {run.rows[-1]['t']:.4g} {run.model.time_unit}")
    kpis = compute_kpis(run)
    out: Path = args.out or Path("runs") / run.scenario.name
    console.print(kpi_table(kpis))
    files = [write_parquet(run, out / "trajectory.parquet"), write_kpis(kpis, out / "kpis.json")]
    if not args.no_plot:
        files.append(write_plot(run, out / "trajectory.png"))
    console.print("wrote " + ", ".join(str(f) for f in files))
    if run.plant_fault is not None:
        console.print(f"[red]plant fault:[/] {run.plant_fault.describe()}", highlight=False)
        return 1
    return 0


def _log_flags(parser: argparse.ArgumentParser) -> None:
    """``--log-level``, ``--log-file``, ``--log-format`` (runtime.logsetup), as on run."""
    from controller.runtime.logsetup import LOG_FORMATS, LOG_LEVELS

    parser.add_argument(
        "--log-level",
        choices=LOG_LEVELS,
        default="warning",
        help="the least severe record shown on the terminal and in --log-file (default: "
        "warning: serve announces itself; the state folder's <site>.log keeps every INFO)",
    )
    parser.add_argument(
        "--log-file",
        type=Path,
        default=None,
        metavar="FILE",
        help="also log to FILE (appended); the libraries' warnings go here, not to the "
        "terminal (the state folder's <site>.log is written as well)",
    )
    parser.add_argument(
        "--log-format",
        choices=LOG_FORMATS,
        default="text",
        help="text, or json: one object per line with time, level, logger, message, extras",
    )


async def _serve(args: argparse.Namespace, console: Console) -> int:
    from controller.runtime.logsetup import setup_logging
    from hil.serve import ServeOptions, serve

    opts = ServeOptions(
        rate=args.rate,
        protocol=args.protocol,
        host=args.host,
        allow_remote=args.allow_remote,
        modbus_port=args.modbus_port,
        opcua_port=args.opcua_port,
        duration=args.duration,
        state_dir=args.state_dir,
        modbus_tls=args.modbus_tls,
        wrong_unit=args.wrong_unit,
        at_batch_end="exit" if args.until_batch_end else "repeat" if args.repeat else "hold",
        wait_for_controller=args.wait_for_controller,
        ui=args.ui,
    )
    logs = None
    try:
        logs = setup_logging(args.log_level, args.log_file, args.log_format)
        await serve(args.site, opts, announce=lambda text: console.print(text, highlight=False))
    except PharmaTwinError as exc:  # one line per problem, never wrapped
        problems = exc.problems if isinstance(exc, ConfigError) else (exc,)
        for problem in problems:
            text = f"[red]error:[/red] {escape(str(problem))}"
            console.print(text, highlight=False, soft_wrap=True)
        return 2
    finally:
        if logs is not None:
            logs.close()
    return 0


def _fault_request(args: argparse.Namespace) -> dict[str, Any]:
    """The admin request for ``args``, checked first against the site file (names, units,
    limits); the serving rig checks it again, with its true plant and its servers."""
    from controller.runtime.site import load_site
    from hil.faults import FaultTargets, check_clear, check_fault, parse_fault

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
    from hil.faults import FaultRefusedError
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
        title = f"{len(cleared)} fault(s) cleared" if cleared else "no held fault matched"
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


def _campaign(args: argparse.Namespace, console: Console) -> int:
    from hil.campaign.report import write_reports

    if args.campaign_command == "report":
        paths = write_reports(args.results)
        console.print(f"wrote {paths.html}, {paths.junit}, {paths.summary}")
        return 0
    from hil.campaign.execute import RunSettings, run_campaign
    from hil.campaign.spec import load_campaign

    campaign = load_campaign(args.campaign)
    mode = args.mode or campaign.spec.mode
    executor: Literal["process", "dask"] = args.executor or (
        "dask" if args.dask_scheduler else "process"
    )
    if args.dask_scheduler and executor != "dask":
        console.print("[red]error:[/red] --dask-scheduler needs --executor dask (or none)")
        return 2
    settings = RunSettings(
        out=args.out or Path("runs") / "campaigns" / f"{campaign.name}-{mode}",
        mode=mode,
        executor=executor,
        workers=args.workers or 1,
        scheduler=args.dask_scheduler,
        force=args.force,
        progress=not args.quiet,
        rate=args.rate,
    )
    outcome = run_campaign(campaign, settings, console)
    paths = write_reports(settings.out)
    table = Table(title=f"campaign {campaign.name} ({mode}, {settings.executor})")
    for col in ("passed", "failed", "errored", "skipped (done before)", "wall time"):
        table.add_column(col, justify="right")
    table.add_row(
        str(outcome.count("passed")),
        str(outcome.count("failed")),
        str(outcome.count("error")),
        str(len(outcome.skipped)),
        f"{outcome.wall_time_s:.1f} s",
    )
    console.print(table)
    console.print(f"report: {paths.html}\njunit: {paths.junit}\nsummary: {paths.summary}")
    return 0 if outcome.passed else 1


def _executor_settings(args: argparse.Namespace) -> ExecutorSettings | None:
    from hil.tuning.evaluate import ExecutorSettings

    executor: Literal["process", "dask"] = args.executor or (
        "dask" if args.dask_scheduler else "process"
    )
    if args.dask_scheduler and executor != "dask":
        return None
    return ExecutorSettings(executor, args.workers or 1, args.dask_scheduler)


def _tune(args: argparse.Namespace, console: Console) -> int:
    from hil.tuning.search import TuneSettings, tune
    from hil.tuning.spec import load_tuning

    executor = _executor_settings(args)
    if executor is None:
        console.print("[red]error:[/red] --dask-scheduler needs --executor dask (or none)")
        return 2
    tuning = load_tuning(args.tuning)
    out = args.out or Path("runs") / "tuning" / tuning.name
    outcome = tune(tuning, TuneSettings(out, args.trials, executor), console)
    console.print(
        f"{len(outcome.study.trials)} trials in {out / 'study.db'} ({outcome.trials_run} run "
        f"now, {outcome.wall_time_s:.1f} s)"
    )
    for key, path in outcome.files.items():
        console.print(f"{key}: {path}", highlight=False)
    return 0 if outcome.best is not None else 1


def _compare(args: argparse.Namespace, console: Console) -> int:
    from hil.tuning.compare import compare

    executor = _executor_settings(args)
    if executor is None:
        console.print("[red]error:[/red] --dask-scheduler needs --executor dask (or none)")
        return 2
    result = compare(args.config_a, args.config_b, args.scenarios, args.out, executor, console)
    console.print(f"report: {result.html}\nkpis: {result.json}", highlight=False)
    return 0


def _design_space(args: argparse.Namespace, console: Console) -> int:
    from hil.design_space import load_design_space, run_design_space, summary_tables

    space = load_design_space(args.design_space)
    out = args.out or Path("runs") / "design-space" / space.name
    if args.monte_carlo:
        return _probabilistic_design_space(args, space, out, console)
    outcome = run_design_space(
        space,
        out,
        executor=args.executor,
        workers=args.workers,
        progress=not args.quiet,
        console=console,
    )
    for table in summary_tables(outcome):
        console.print(table)
    for key, path in outcome.files.items():
        console.print(f"{key}: {path}", highlight=False)
    return 0 if outcome.acceptable and not outcome.errors else 1


def _probabilistic_design_space(
    args: argparse.Namespace, space: Any, out: Path, console: Console
) -> int:
    from hil.design_space_mc import probability_table, run_probabilistic

    if args.monte_carlo < 1 or not 0.0 < args.probability < 1.0:
        console.print(
            f"[red]error:[/] --monte-carlo must be at least 1 (got {args.monte_carlo}) and "
            f"--probability strictly between 0 and 1 (got {args.probability})",
            highlight=False,
        )
        return 2
    outcome = run_probabilistic(
        space,
        out,
        args.monte_carlo,
        level=args.probability,
        executor=args.executor,
        workers=args.workers,
        progress=not args.quiet,
        console=console,
    )
    console.print(probability_table(outcome))
    console.print(
        f"{len(outcome.inside)}/{len(outcome.rows)} points meet every limit with probability "
        f">= {args.probability:g} ({outcome.wall_time_s:.1f} s)",
        highlight=False,
    )
    if outcome.errors:
        first = next(r["first_error"] for r in outcome.rows if r["first_error"])
        console.print(
            f"[red]{outcome.errors} run(s) failed[/] and count as not acceptable; first: {first}",
            highlight=False,
        )
    for key, path in outcome.files.items():
        console.print(f"{key}: {path}", highlight=False)
    return 0 if outcome.inside and not outcome.errors else 1


def _check_config(files: Sequence[Path], console: Console) -> int:
    """``pharmatwin check-config`` with the HIL tools' own kinds of file added."""
    from controller.runtime.cli import CHECKERS, check_config
    from hil.campaign.spec import load_campaign
    from hil.design_space import load_design_space
    from hil.tuning.spec import load_tuning

    hil_kinds = {
        "campaign": load_campaign,
        "tuning": load_tuning,
        "design space": load_design_space,
    }
    return check_config(files, console, {**CHECKERS, **hil_kinds}, "pharmatwin-hil")


PKI_EPILOG = """examples:
  pharmatwin-hil pki issue-client uaexpert --uri urn:my-pc:UnifiedAutomation:UaExpert
  pharmatwin-hil pki issue-client uaread --uri urn:freeopcua:client --out runs/pki
  pharmatwin-hil pki issue-client node-opcua --uri urn:my-pc:NodeOPCUA-Client --dns my-pc
  pharmatwin-hil pki revoke runs/pki/uaexpert.der

Test-bench credentials for the loopback HIL only: never use them for a plant.
"""


def _pki_parser(sub: Any) -> None:
    """``pki``: issue or revoke client certificates of the test-bench CA (hil.servers.certs)."""
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
    issue.add_argument("--uri", required=True, help="the client's OPC UA application URI")
    issue.add_argument("--out", type=Path, default=Path("runs") / "pki", help="(runs/pki)")
    issue.add_argument("--dns", action="append", default=None, help="SAN DNS name (localhost)")
    issue.add_argument("--ip", action="append", default=None, help="SAN IP address (127.0.0.1)")
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
        if args.command == "simulate":
            return asyncio.run(_simulate(args, console))
        if args.command == "serve":
            return asyncio.run(_serve(args, console))
        if args.command == "fault":
            return asyncio.run(_fault(args, console))
        if args.command == "campaign":
            return _campaign(args, console)
        if args.command == "tune":
            return _tune(args, console)
        if args.command == "compare":
            return _compare(args, console)
        if args.command == "design-space":
            return _design_space(args, console)
        if args.command == "check-config":
            return _check_config(args.files, console)
        if args.command == "min-time":
            return min_time.command(args, console)
        if args.command == "pki":
            from hil.servers.certs import command as pki_command

            return pki_command(args, console)
    except PharmaTwinError as exc:
        console.print(f"[red]error:[/red] {exc}", markup=True, highlight=False)
        return 2
    return 2


if __name__ == "__main__":
    sys.exit(main())
