"""``pharmatwin-hil campaign``, ``tune``, ``compare``, ``design-space`` and ``check-config``.

The batch commands: a campaign's scenario matrix judged against its criteria
(:mod:`hil.campaign`), offline tuning and side-by-side comparison of controller configs
(:mod:`hil.tuning`), the design space of two recipe knobs (:mod:`hil.design_space`, with
``--monte-carlo`` :mod:`hil.design_space_mc`), and ``check-config`` of every kind of file
(the controller's kinds through :func:`controller.runtime.cli_config.check_config`, and the
HIL's).
"""

from __future__ import annotations

import argparse
import functools
import math
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from rich.console import Console
from rich.markup import escape
from rich.table import Table

if TYPE_CHECKING:
    from controller.runtime.site import Site
    from hil.design_space_mc import ProbabilisticOutcome
    from hil.scenario import ScenarioConfig
    from hil.tuning.evaluate import ExecutorSettings


def add_parsers(sub: Any, epilog: str) -> None:
    """The ``campaign``, ``tune``, ``compare``, ``design-space`` and ``check-config`` commands."""
    _campaign_parser(sub, epilog)
    _tuning_parsers(sub, epilog)
    _design_space_parser(sub, epilog)
    _check_config_parser(sub)


def _campaign_parser(sub: Any, epilog: str) -> None:
    """``campaign run|report``."""
    camp = sub.add_parser(
        "campaign",
        help="HIL test campaigns: a scenario matrix judged against acceptance criteria",
        epilog=epilog,
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


def _tuning_parsers(sub: Any, epilog: str) -> None:
    """``tune`` and ``compare``."""
    tune = sub.add_parser(
        "tune",
        help="tune a controller config offline with Optuna over a scenario set (resumable)",
        epilog=epilog,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    tune.add_argument("tuning", type=Path, help="configs/tuning/<name>.yaml")
    tune.add_argument("--trials", type=int, default=None, help="the study's total trials")
    tune.add_argument("--out", type=Path, default=None, help="results (runs/tuning/<name>)")
    cmp_ = sub.add_parser(
        "compare",
        help="run two controller configs on the same scenarios and show them side by side",
        epilog=epilog,
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


def _design_space_parser(sub: Any, epilog: str) -> None:
    """``design-space`` (with ``--monte-carlo``)."""
    ds = sub.add_parser(
        "design-space",
        help="sweep two recipe knobs, judge each point's CQAs, plot the acceptable region",
        epilog=epilog,
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
        default=None,
        metavar="N",
        help="N draws of the uncertain parameters at every point: the probability map",
    )
    ds.add_argument(
        "--probability",
        type=float,
        default=None,
        help="with --monte-carlo: the probability whose contour bounds the design space; a "
        "point is inside when its 95 %% interval lies at or above it (0.95)",
    )


def _check_config_parser(sub: Any) -> None:
    """``check-config FILE...``."""
    chk = sub.add_parser(
        "check-config",
        help="check config files of every kind, the HIL's (campaign, tuning, design space) too",
    )
    chk.add_argument(
        "files", type=Path, nargs="+", help="config files of any kind the project ships"
    )


#: errored cases whose error the campaign's summary prints (the rest are in summary.json)
ERRORS_SHOWN = 3


def errored_lines(results: Iterable[Mapping[str, Any]], summary: Path) -> list[str]:
    """Why cases errored: the first :data:`ERRORS_SHOWN`, one line each, then how many more."""
    errored = [r for r in results if r.get("status") == "error"]
    lines = [f"errored {r.get('id')}: {r.get('error')}" for r in errored[:ERRORS_SHOWN]]
    if len(errored) > ERRORS_SHOWN:
        lines.append(f"... and {len(errored) - ERRORS_SHOWN} more errored case(s): see {summary}")
    return lines


#: the files a campaign's results folder gets from ``write_reports``
REPORT_FILES = ("report.html", "junit.xml", "summary.json")


def outputs_refused(
    console: Console, flag: str, out: Path, *, default: bool = False, files: Sequence[str] = ()
) -> bool:
    """Print why ``out`` (given by ``flag``) or its ``files`` cannot be written; True if so.

    Checked before any work, so a bad output path costs no simulation.
    """
    from controller.outpaths import file_problem, out_problem
    from hil.cli_serve import refuse_output

    problem = out_problem(out, default=default, flag=flag)
    if problem is not None:
        return refuse_output(console, [problem])
    return refuse_output(console, [file_problem(out / name, flag) for name in files])


def campaign_command(args: argparse.Namespace, console: Console) -> int:
    from hil.campaign.report import write_reports

    if args.campaign_command == "report":
        # a RESULTS that is no folder is named by write_reports (what to give instead)
        if args.results.is_dir() and outputs_refused(
            console, "RESULTS", args.results, files=REPORT_FILES
        ):
            return 2
        paths = write_reports(args.results)
        console.print(
            f"verdict: {paths.verdict}; wrote {paths.html}, {paths.junit}, {paths.summary}"
        )
        return 0 if paths.verdict == "passed" else 1  # as the reports say (run's exit code too)
    from hil.campaign.execute import RunSettings, run_campaign
    from hil.campaign.spec import load_campaign

    if args.rate is not None and not (math.isfinite(args.rate) and args.rate > 0):
        console.print(
            f"[red]error:[/] command line: --rate {args.rate:g}: must be a positive number of "
            "process seconds per wall second",
            highlight=False,
        )
        return 2
    # its faults checked in that mode, its rate against the virtual PLC's scan
    campaign = load_campaign(args.campaign, mode=args.mode, rate=args.rate)
    mode = args.mode or campaign.spec.mode
    executor: Literal["process", "dask"] = args.executor or (
        "dask" if args.dask_scheduler else "process"
    )
    if args.dask_scheduler and executor != "dask":
        console.print("[red]error:[/red] --dask-scheduler needs --executor dask (or none)")
        return 2
    out = args.out or Path("runs") / "campaigns" / f"{campaign.name}-{mode}"
    files = ("campaign.json", *REPORT_FILES)
    if outputs_refused(console, "--out", out, default=args.out is None, files=files):
        return 2
    settings = RunSettings(
        out=out,
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
    for line in errored_lines(outcome.results.values(), paths.summary):
        console.print(line, highlight=False, markup=False)
    console.print(f"report: {paths.html}\njunit: {paths.junit}\nsummary: {paths.summary}")
    for line in report_disagreements(settings.out, outcome.results):
        console.print(line, highlight=False, markup=False)
    console.print(f"verdict: {paths.verdict}", highlight=False)
    return 0 if outcome.passed and paths.verdict == "passed" else 1  # as the reports say


def report_disagreements(out: Path, results: dict[str, dict[str, Any]]) -> list[str]:
    """The cases the report judges otherwise than their workers did (the evidence missing
    or not verifying, a verdict missing): the table above shows the workers' statuses, and a
    run that printed "passed 2" then exited 1 said nothing of why."""
    from hil.campaign.results import load_results

    return [
        f"{case.id}: the report says {case.status}: {case.error}"
        for case in load_results(out).cases
        if case.id in results and results[case.id].get("status") != case.status
    ]


def _executor_settings(args: argparse.Namespace) -> ExecutorSettings | None:
    from hil.tuning.evaluate import ExecutorSettings

    executor: Literal["process", "dask"] = args.executor or (
        "dask" if args.dask_scheduler else "process"
    )
    if args.dask_scheduler and executor != "dask":
        return None
    return ExecutorSettings(executor, args.workers or 1, args.dask_scheduler)


def tune_command(args: argparse.Namespace, console: Console) -> int:
    from hil.tuning.search import TuneSettings, tune
    from hil.tuning.spec import load_tuning

    executor = _executor_settings(args)
    if executor is None:
        console.print("[red]error:[/red] --dask-scheduler needs --executor dask (or none)")
        return 2
    tuning = load_tuning(args.tuning)
    out = args.out or Path("runs") / "tuning" / tuning.name
    if outputs_refused(console, "--out", out, default=args.out is None):
        return 2
    outcome = tune(tuning, TuneSettings(out, args.trials, executor), console)
    console.print(
        f"{len(outcome.study.trials)} trials in {out / 'study.db'} ({outcome.trials_run} run "
        f"now, {outcome.wall_time_s:.1f} s)"
    )
    for key, path in outcome.files.items():
        console.print(f"{key}: {path}", highlight=False)
    return 0 if outcome.best is not None else 1


def compare_command(args: argparse.Namespace, console: Console) -> int:
    from hil.tuning.compare import compare

    executor = _executor_settings(args)
    if executor is None:
        console.print("[red]error:[/red] --dask-scheduler needs --executor dask (or none)")
        return 2
    if outputs_refused(console, "--out", args.out):
        return 2
    result = compare(args.config_a, args.config_b, args.scenarios, args.out, executor, console)
    for side, why in result.errored.items():
        name = args.config_a if side == "A" else args.config_b
        cases = [{"id": c, "status": "error", "error": e} for c, e in why.items()]
        for line in errored_lines(cases, result.json):
            console.print(f"{side} ({name}): {line}", highlight=False, markup=False)
    console.print(f"report: {result.html}\nkpis: {result.json}", highlight=False)
    # a config whose cases errored has no KPIs to compare: not a comparison
    return 1 if any(result.errored.values()) else 0


def design_space_command(args: argparse.Namespace, console: Console) -> int:
    from hil.design_space import FILES as DETERMINISTIC_FILES
    from hil.design_space import run_design_space, summary_tables
    from hil.design_space_mc import FILES as MONTE_CARLO_FILES
    from hil.design_space_spec import load_design_space

    space = load_design_space(args.design_space)
    out = args.out or Path("runs") / "design-space" / space.name
    files = (DETERMINISTIC_FILES if args.monte_carlo is None else MONTE_CARLO_FILES).values()
    if outputs_refused(console, "--out", out, default=args.out is None, files=tuple(files)):
        return 2
    if args.monte_carlo is not None:
        return _probabilistic_design_space(args, space, out, console)
    if args.probability is not None:
        console.print(
            f"[red]error:[/] command line: --probability {args.probability:g}: applies to "
            "--monte-carlo N runs only (the deterministic design space has no probability)",
            highlight=False,
        )
        return 2
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
    from hil.campaign.schema import MAX_DRAWS
    from hil.design_space_mc import probability_table, run_probabilistic

    level = 0.95 if args.probability is None else args.probability
    wrong = []
    if not 1 <= args.monte_carlo <= MAX_DRAWS:
        wrong.append(
            f"--monte-carlo {args.monte_carlo}: allowed: 1 to {MAX_DRAWS} draws a point "
            "(as a campaign's Monte Carlo)"
        )
    if not 0.0 < level < 1.0:  # NaN too
        wrong.append(f"--probability {level:g}: must lie strictly between 0 and 1")
    for text in wrong:
        console.print(f"[red]error:[/] command line: {text}", highlight=False, soft_wrap=True)
    if wrong:
        return 2
    outcome = run_probabilistic(
        space,
        out,
        args.monte_carlo,
        level=level,
        executor=args.executor,
        workers=args.workers,
        progress=not args.quiet,
        console=console,
    )
    console.print(probability_table(outcome))
    for line in probabilistic_summary(outcome):
        console.print(line, highlight=False, markup=False)
    if outcome.errors:
        first = next(r["first_error"] for r in outcome.rows if r["first_error"])
        console.print(
            f"[red]{outcome.errors} run(s) failed[/] and count as not acceptable; first: "
            f"{escape(str(first))}",
            highlight=False,
        )
    for key, path in outcome.files.items():
        console.print(f"{key}: {path}", highlight=False)
    return 0 if outcome.inside and not outcome.errors else 1


def probabilistic_summary(outcome: ProbabilisticOutcome) -> list[str]:
    """What a probabilistic design space showed, in plain lines (see
    :mod:`hil.design_space_mc` for the verdicts)."""
    from hil.design_space_mc import min_draws

    pct, n = f"{outcome.level:.10g}", outcome.n
    lines = [
        f"{len(outcome.inside)}/{len(outcome.rows)} points meet every limit with probability "
        f">= {pct}, shown by their 95 % interval ({n} draws a point, "
        f"{outcome.wall_time_s:.1f} s); {len(outcome.undecided)} undecided (the interval "
        f"straddles {pct}: more draws tell); {len(outcome.estimated_inside)} with an "
        f"estimate >= {pct}",
        f"contour: {outcome.contour}",
    ]
    need = min_draws(outcome.level)
    exact = not outcome.draws or not outcome.draws[0]
    if n < need and not exact:
        lines.append(
            f"with {n} draws no point can be shown inside at {pct}: a point whose every draw "
            f"is acceptable is shown inside from {need} draws on"
        )
    if exact:
        lines.append(
            "no uncertain parameter (uncertainty.parameters: []): every draw is the same run, "
            "every probability 0 or 1 and each verdict the deterministic design space's"
        )
    if outcome.overridden:
        given = ", ".join(f"{k} = {v:g}" for k, v in outcome.overridden.items())
        lines.append(f"drawn over their ranges instead of the scenario's true plant: {given}")
    return lines


def check_config_command(args: argparse.Namespace, console: Console) -> int:
    """``check-config``: 0 when every file is checked and ok (see check_config)."""
    return check_config(args.files, console)


def check_config(files: Sequence[Path], console: Console) -> int:
    """``pharmatwin check-config`` with the HIL tools' own kinds of file added."""
    from controller.runtime.cli_config import CHECKERS, Checker, check_config, check_site_file
    from hil.campaign.spec import load_campaign
    from hil.design_space_spec import load_design_space
    from hil.tuning.spec import load_tuning

    hil_kinds: dict[str, Checker] = {
        # with its 'hil:' section, which pharmatwin does not check, and its scenario's faults
        "site": functools.partial(check_site_file, load=_hil_site_with_faults),
        "scenario": _scenario_with_faults,
        "campaign": load_campaign,
        "tuning": load_tuning,
        "design space": load_design_space,
    }
    return check_config(files, console, {**CHECKERS, **hil_kinds}, "pharmatwin-hil")


def _hil_site_with_faults(path: Path) -> Site:
    """A site file as the HIL bench loads it, with its scenario's scheduled faults checked as
    the serving rig checks them (:func:`hil.faultcheck.check_scheduled`: targets, units,
    magnitudes, the controller's sample time, and a start before the scenario's end); what
    only the rig knows (its plant step, servers, true parameters) is left to it."""
    from hil.faultcheck import FaultTargets, check_scheduled
    from hil.site import hil_section, load_hil_site_and_scenario

    site, scenario = load_hil_site_and_scenario(path)
    section = hil_section(site)
    if scenario is not None and section is not None and scenario.faults:
        source = str(site.file(section.scenario))
        targets = FaultTargets.for_site(site)
        check_scheduled(scenario.faults, targets, source, run_end=scenario.duration)
    return site


def _scenario_with_faults(path: Path) -> ScenarioConfig:
    """A scenario file, and no scheduled fault starting at or after its end (it would never
    act); its faults' effects on a site are checked with the site file."""
    from controller.configfile import resolve
    from controller.errors import ConfigError
    from controller.plantfile import build_model
    from hil.faultcheck import late_fault_problems
    from hil.scenario import load_scenario

    sc = load_scenario(path)
    if any(f.start >= sc.duration for f in sc.faults):
        unit = build_model(resolve(path, sc.plant)).time_unit
        problems = late_fault_problems(sc.faults, sc.duration, unit, str(path))
        raise ConfigError(problems)
    return sc
