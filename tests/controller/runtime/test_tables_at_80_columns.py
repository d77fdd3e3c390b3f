"""Tables printed into a pipe or a log, where rich lays them out for 80 columns.

``tags read`` cut the names of tags to "chamber_pressure_…" and "write_refusal_fun…", the
names ``tags write`` must be given; ``describe`` cut roles and descriptions to "algebra…",
"paramet…" (seen by a newcomer piping them). Into a pipe they are now laid out for
:data:`PIPE_WIDTH` columns; a terminal still lays them out for its own width, and
``describe`` in a terminal too narrow for its table prints one block per variable.
"""

from __future__ import annotations

import io
from pathlib import Path

from rich.console import Console

from controller.plantfile import build_model
from controller.ports.base import Quality, Snapshot, TagValue
from controller.runtime.cli_common import PIPE_WIDTH, print_table
from controller.runtime.cli_config import describe
from controller.runtime.commissioning import snapshot_table
from controller.runtime.site import load_site

ROOT = Path(__file__).resolve().parents[3]


def _pipe() -> tuple[Console, io.StringIO]:
    """A console as rich makes one into a pipe: not a terminal, 80 columns."""
    buf = io.StringIO()
    return Console(file=buf, width=80), buf


def test_tags_read_prints_every_tag_name_whole_into_a_pipe() -> None:
    site = load_site(ROOT / "configs" / "sites" / "lyophilizer-modbus.yaml")
    good = TagValue(0.15, Quality.GOOD, 0.0, 0.0)
    snap = Snapshot(dict.fromkeys(site.tags.tags, good), 0.0)
    console, buf = _pipe()
    print_table(console, snapshot_table(site, snap))
    text = buf.getvalue()
    assert "…" not in text
    lines = text.splitlines()
    for name in site.tags.tags:
        assert any(f" {name} " in line for line in lines), name
    assert 80 < max(len(line) for line in lines) <= PIPE_WIDTH


def test_describe_prints_names_and_roles_whole_into_a_pipe() -> None:
    path = ROOT / "configs" / "plants" / "lyophilizer.yaml"
    console, buf = _pipe()
    assert describe(path, console) == 0
    text = buf.getvalue()
    assert "…" not in text
    model = build_model(path)
    lines = text.splitlines()
    for v in model.all_variables.values():
        assert any(f" {v.name} " in line and v.role.value in line for line in lines), v.name
    for name in model.parameter_set.parameters:
        assert any(f" {name} " in line and "parameter" in line for line in lines), name


def _terminal(width: int) -> tuple[Console, io.StringIO]:
    buf = io.StringIO()
    return Console(file=buf, width=width, force_terminal=True, color_system=None), buf


def test_describe_in_an_80_column_terminal_cuts_no_name() -> None:
    """In an 80-column terminal the 7-column table cut names to "rho_sol…" and roles to
    "paramet…"; it now prints one block per variable, nothing cut."""
    path = ROOT / "configs" / "plants" / "lyophilizer.yaml"
    console, buf = _terminal(80)
    assert describe(path, console) == 0
    text = buf.getvalue()
    assert "…" not in text
    lines = text.splitlines()
    assert max(len(line) for line in lines) <= 80
    model = build_model(path)
    for v in model.all_variables.values():
        head = f"{v.name}  {v.role.value}, {v.unit}"
        at = lines.index(head)
        lo, hi = f"{v.lower:g}", f"{v.upper:g}"
        assert lines[at + 1].strip().startswith(f"valid [{lo}, {hi}]; operating limits "), v.name
        assert lines[at + 2].strip() == v.description
    params = model.parameter_set.parameters
    for name, p in params.items():
        at = lines.index(f"{name}  parameter, {p.unit}")
        assert lines[at + 2].strip() == f"{p.value:g}: {p.description}"
    # a declared plausible range is shown; an undeclared one is said to be undeclared
    assert lines[lines.index("KC  parameter, cal/s/K/cm^2") + 1].strip() == (
        "plausible [0.00015, 0.0004]"
    )
    assert lines[lines.index("rho_ice  parameter, g/mL") + 1].strip() == (
        "no plausible range declared"
    )


def test_describe_in_a_wide_terminal_is_a_table_with_every_cell_whole() -> None:
    path = ROOT / "configs" / "plants" / "lyophilizer.yaml"
    console, buf = _terminal(200)
    assert describe(path, console) == 0
    text = buf.getvalue()
    assert "…" not in text and "┃ name" in text
    model = build_model(path)
    for name in model.parameter_set.parameters:
        assert any(f"│ {name} " in line and "parameter" in line for line in text.splitlines())
    # no range declared: "-", not "plausible [-inf, inf]" (which reads as "anything goes")
    assert "[-inf, inf]" not in text
