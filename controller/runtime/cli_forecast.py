"""``pharmatwin forecast``: what-if, from a runtime's historian, to the batch's end.

Exit codes: 0 every plan was forecast; 1 a plan failed (its solver or simulation; shown
failed, with its reason) or was not applied (nothing left to forecast: the batch ended at the
start), the others are still shown; 2 the forecast could not be made (an error naming the
file, key and value).
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import TYPE_CHECKING

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from controller.runtime.cli_common import (
    DEFAULT_HISTORIAN,
    HISTORIAN_FILE,
    SubParsers,
    examples,
)
from controller.runtime.site import load_site

if TYPE_CHECKING:
    from controller.twin.forecast import Forecast

PLAN_HELP = """a YAML plan: name, time_base (now: t = 0 is the forecast start; batch: batch
time), interpolation (linear|previous) and table rows {t, inputs}; inputs it does not name
hold their current value"""


def add_parser(sub: SubParsers) -> None:
    """The ``forecast`` subcommand."""
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
    from controller.outpaths import input_file_problem, out_problem
    from controller.runtime import forecast_files, forecast_report
    from controller.runtime.solver_cache import LibraryCache
    from controller.twin.forecast import forecast
    from controller.twin.forecast_spec import ForecastError, ForecastSetup

    why = out_problem(out)
    if why is not None:  # before any work: the forecast's solves would be lost
        message = why.removeprefix("--out: ")  # the message names the path it got
        raise ForecastError([Problem("command line", "--out", message)])
    site = load_site(site_path)
    if historian is None:
        why = input_file_problem(DEFAULT_HISTORIAN, f"give --historian DB, {HISTORIAN_FILE}")
        if why is not None:
            raise ForecastError([Problem(str(DEFAULT_HISTORIAN), "--historian", why)])
        if not DEFAULT_HISTORIAN.is_file():
            raise ForecastError(
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
    read = forecast_files.read_start(site.model, site.tags, historian, run_id)
    start = read.start
    plans = forecast_files.default_plans(site.model, site.forecast, site.path, plan)
    setup = ForecastSetup(
        site.model, site.controller, site.forecast, site.name, str(site.path), LibraryCache()
    )
    result = forecast(setup, start, plans)
    unit = result.time_unit
    inputs = ", ".join(f"{k}={v:.4g}" for k, v in start.inputs.items())
    console.print(
        f"{site.name}: forecast from t = {start.t:.4g} {unit} (inputs {inputs}) from {historian}",
        highlight=False,
        markup=False,
    )
    for note in read.notes:
        console.print(f"  note: {note}", highlight=False, markup=False)
    console.print(_forecast_table(result))
    for row in result.table():
        for text in (row["status"] if row["status"] != "ok" else "", row["notes"]):
            if text:
                console.print(f"  {row['plan']}: {text}", highlight=False, markup=False)
    json_path = forecast_report.write_json(result, out / "forecast.json")
    m = site.model
    names = (*m.all_variables, *m.expression_names)
    units = {n: m.unit_of(n) for n in names}
    png_path = forecast_report.plot_forecast(result, out / "forecast.png", units)
    console.print(f"wrote {json_path} and {png_path}", highlight=False, markup=False)
    for pf in result.plans:
        if pf.outside:
            console.print(
                f"[red]warning:[/red] plan {escape(pf.plan.name)} predicts CQAs outside their "
                f"limits: {escape('; '.join(pf.outside))}",
                highlight=False,
            )
    bad = {
        pf.plan.name: pf.status.split(":", 1)[0]
        for pf in result.plans
        if pf.failed or pf.not_applied
    }
    if bad:
        what = "; ".join(f"{name} ({status})" for name, status in bad.items())
        console.print(
            f"[red]error:[/red] not forecast: {escape(what)}: see their status above",
            highlight=False,
        )
        return 1
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
        label = f"{c.name} ({what}), {c.limits()}"
        table.add_row(escape(label), *(f"{row[c.name]:.5g}" for row in rows))
    table.add_row(escape(f"forecast end [{unit}]"), *(f"{row['end_time']:.5g}" for row in rows))
    table.add_row("batch finished", *("yes" if row["finished"] else "no" for row in rows))
    table.add_row("status", *(_status_cell(row["status"]) for row in rows))
    return table


def _status_cell(status: str) -> str:
    """``ok``, or the status's first words (``failed``, ``not applied``, ``outside limits``)
    in red."""
    if status == "ok":
        return status
    return f"[red]{escape(status.split(':', 1)[0])}[/red]"


def command(args: argparse.Namespace, console: Console) -> int:
    """``pharmatwin forecast`` from its parsed arguments."""
    return forecast_command(args.site, args.plan, args.historian, args.run_id, args.out, console)
