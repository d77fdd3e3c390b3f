"""``pharmatwin check-config`` and ``pharmatwin describe``: check config files, show a model.

:func:`check_config` checks each file as the kind it is (told apart by its keys, see
:mod:`controller.filekinds`) with the checkers it is handed; ``pharmatwin-hil check-config``
adds the HIL tools' kinds to :data:`CHECKERS`.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

from rich.console import Console
from rich.markup import escape
from rich.table import Table
from rich.text import Text

from controller import filekinds
from controller.configfile import read_yaml, resolve
from controller.core.rk4_check import RK4_STAGE_LIMIT, check_rk4_steps, rk4_steps
from controller.errors import ConfigError, PharmaTwinError, Problem
from controller.outpaths import input_file_problem
from controller.plantfile import build_model
from controller.runtime.cli_common import (
    PIPE_WIDTH,
    RECIPE_FILE,
    SubParsers,
    examples,
    print_table,
)
from controller.runtime.site import Site, load_checked_controller, load_site
from controller.tags import load_tag_map


def check_controller_file(path: Path) -> str:
    """A controller file loaded and its RK4 steps checked (:func:`load_checked_controller`);
    what the RK4 check found, for the "ok" line: how near the limit the steps are."""
    cfg, model = load_checked_controller(path)
    m = check_rk4_steps(cfg, model, str(path))  # remembered: the margin just checked
    if m is None:
        return "do-mpc backend: collocation, no RK4 steps to check"
    steps = rk4_steps(cfg)
    return (
        f"RK4 |h lambda| {m.worst:.3g} of {RK4_STAGE_LIMIT:g} with {steps} "
        f"step{'s' if steps != 1 else ''} per {m.h * steps:g} {model.time_unit}, "
        f"{m.points} points"
    )


def check_site_file(path: Path, load: Callable[[Path], Site] = load_site) -> str | None:
    """A site file as ``load`` (:func:`load_site`, or the HIL tools' own) loads it, and what
    only a later command would find: the forecast's local recipe must exist (``load_site``
    lets a copy of the site without it run; ``pharmatwin forecast`` needs it). The ``hil:``
    section, which :func:`load_site` keeps unchecked, is named on the "ok" line."""
    site = load(path)
    fc = site.forecast
    recipe = fc.local_recipe if fc is not None else None
    found = resolve(path, recipe) if recipe is not None else None
    if found is not None and not found.is_file():
        why = input_file_problem(found, RECIPE_FILE)
        message = "file not found" if why is None else f"{found} {why}"
        raise ConfigError([Problem(str(path), "forecast.local_recipe", message, recipe)])
    if site.hil is not None and load is load_site:
        return "its hil section not checked: run `pharmatwin-hil check-config FILE`"
    return None


#: What checks each kind of file the controller reads (the HIL tools add their own kinds).
#: A checker may return a line of what it found (printed after the kind on the "ok" line).
Checker = Callable[[Path], object]
CHECKERS: dict[str, Checker] = {
    "site": check_site_file,
    "tag map": load_tag_map,
    "plant": build_model,
    "controller": check_controller_file,
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
        found = checker(path)
    except ConfigError as exc:
        console.print(f"[red]FAIL[/red] {name}", highlight=False)
        for p in exc.problems:
            console.print(f"  - {p}", highlight=False, markup=False, soft_wrap=True)
        return "failed"
    except PharmaTwinError as exc:
        message = f"[red]FAIL[/red] {name}: {escape(str(exc))}"
        console.print(message, highlight=False, soft_wrap=True)
        return "failed"
    what = f"{kind.name}; {escape(found)}" if isinstance(found, str) else kind.name
    console.print(f"[green]ok[/green]   {name} ({what})", highlight=False, soft_wrap=True)
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


#: the columns of ``describe``'s table; the last (the description) wraps, the others never
DESCRIBE_COLUMNS = ("name", "role", "unit", "valid from", "valid to", "operating", "description")
#: the fewest columns of a description in the table: a terminal too narrow for it and every
#: other column whole gets one block per variable instead (names are never cut)
DESCRIPTION_MIN = 24


def _span(lo: float, hi: float) -> str:
    """``[lo, hi]``, or "-" when neither end is declared (both infinite)."""
    return "-" if not (math.isfinite(lo) or math.isfinite(hi)) else f"[{lo:g}, {hi:g}]"


def describe_rows(path: Path) -> tuple[str, list[tuple[str, ...]]]:
    """The title and the rows of ``describe`` (:data:`DESCRIBE_COLUMNS`): each variable's
    validity domain (where the equations hold: a true state outside is a plant fault) and
    operating limits (what the process must respect); each parameter's plausible range."""
    model = build_model(path)
    title = f"{model.name}: {model.description} (time in {model.time_unit})"
    rows: list[tuple[str, ...]] = [
        (v.name, v.role.value, v.unit, f"{v.lower:g}", f"{v.upper:g}", _span(*v.operating),
         v.description)
        for v in model.all_variables.values()
    ]  # fmt: skip
    for p in model.parameter_set.parameters.values():
        span = _span(p.lower, p.upper)
        plausible = "-" if span == "-" else f"plausible {span}"
        rows.append((p.name, "parameter", p.unit, "-", "-", plausible,
                     f"{p.value:g}: {p.description}"))  # fmt: skip
    return title, rows


def describe(path: Path, console: Console) -> int:
    """Print a plant model's variables with units, bounds and roles, and its parameters: a
    table, or one block per variable in a terminal too narrow for the table's columns whole."""
    title, rows = describe_rows(path)
    fixed = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(DESCRIBE_COLUMNS[:-1])]
    borders = 3 * len(DESCRIBE_COLUMNS) + 1
    width = console.width if console.is_terminal else max(console.width, PIPE_WIDTH)
    if sum(fixed) + borders + DESCRIPTION_MIN > width:
        _describe_blocks(console, title, rows)
        return 0
    table = Table(title=title)
    for i, col in enumerate(DESCRIBE_COLUMNS):
        last = i == len(DESCRIBE_COLUMNS) - 1
        table.add_column(col, no_wrap=not last, min_width=None if last else fixed[i])
    for r in rows:
        table.add_row(*r)
    print_table(console, table)
    return 0


def _describe_blocks(console: Console, title: str, rows: Sequence[tuple[str, ...]]) -> None:
    """``describe`` for a narrow terminal: per variable its name, role and unit on one line,
    then its ranges and its description, indented (wrapped at words, nothing cut)."""
    console.print(Text(title, style="italic"))
    for name, role, unit, lo, hi, operating, description in rows:
        console.print(Text.assemble((name, "bold"), f"  {role}, {unit}"))
        if role == "parameter":
            ranges = operating if operating != "-" else "no plausible range declared"
        else:
            limits = operating if operating != "-" else "none"
            ranges = f"valid [{lo}, {hi}]; operating limits {limits}"
        console.print(Text(f"    {ranges}"))
        console.print(Text(f"    {description}"))


def add_parsers(sub: SubParsers) -> None:
    """The ``check-config`` and ``describe`` subcommands."""
    c = sub.add_parser(
        "check-config",
        help="validate config files and print every problem",
        description="Check each file as the kind it is (site, tag map, plant, controller: "
        "told apart by their keys), with every file it names. Scenario, campaign, tuning and "
        "design-space files are the HIL tools': `pharmatwin-hil check-config` checks them (and "
        "every other kind). Exit 0: every file ok; 1: a problem, or a file not checked here.",
        **examples(
            "pharmatwin check-config configs/sites/bioreactor-modbus.yaml",
            "pharmatwin check-config configs/sites/*.yaml configs/controllers/cstr.yaml",
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
