"""What every ``pharmatwin`` subcommand module shares: help texts, examples, ``--version``.

The HIL tools' CLI (``pharmatwin-hil``) uses :class:`VersionAction` too.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any, TypeAlias

#: The width a table is laid out for in a pipe or a log (rich takes 80 there, and cut the
#: names in ``tags read`` and ``describe``; a terminal lays it out for its own width).
PIPE_WIDTH = 160


def print_table(console: Any, table: Any, width: int | None = None) -> None:
    """Print ``table`` on ``console`` (a rich Console): at the terminal's width; into a pipe
    or a log at ``width`` columns, or at least :data:`PIPE_WIDTH` (``print``'s own
    ``width`` only narrows)."""
    if console.is_terminal:
        console.print(table)
        return
    before = console.width
    console.width = width or max(before, PIPE_WIDTH)
    try:
        console.print(table)
    finally:
        console.width = before


#: The subcommand registry a subcommand module adds its parser to.
SubParsers: TypeAlias = "argparse._SubParsersAction[argparse.ArgumentParser]"

#: The historian ``pharmatwin run`` writes unless told otherwise (``--historian``).
DEFAULT_HISTORIAN = Path("pharmatwin-history.db")
#: What a command that reads a historian is allowed to be given (in its error messages).
HISTORIAN_FILE = "the historian database file of a run (`pharmatwin run SITE --historian DB`)"
#: What a site's ``forecast.local_recipe`` may name (in the error for one that is not a file).
RECIPE_FILE = "a recipe file (a scenario file with a 'recipe:' table, or a bare recipe file)"

SITE_HELP = "configs/sites/<name>.yaml"
AUDIT_DB_HELP = "the audit database (default: pharmatwin-audit.db)"


class VersionAction(argparse.Action):
    """``--version``: the installed package version and the git commit (looked up when asked)."""

    def __init__(self, option_strings: Sequence[str], dest: str = argparse.SUPPRESS, **kw: object):
        super().__init__(
            option_strings,
            dest,
            nargs=0,
            default=argparse.SUPPRESS,
            help="print the version (and git commit, if known) and exit",
        )

    def __call__(
        self,
        parser: argparse.ArgumentParser,
        namespace: argparse.Namespace,
        values: object,
        option_string: str | None = None,
    ) -> None:
        sys.stdout.write(version_text(parser.prog) + "\n")
        parser.exit()


def version_text(prog: str) -> str:
    """``prog 0.1.0 (git 1a2b3c4d5e6f)``; the commit is left out when git cannot tell."""
    from controller.runtime.audit_chain import software_version
    from controller.runtime.historian_run import git_commit

    version = software_version().removeprefix("pharmatwin ")
    commit = git_commit()
    return f"{prog} {version}" + (f" (git {commit[:12]})" if commit else "")


def examples(*lines: str) -> dict[str, Any]:
    """A subcommand's own examples, as ``add_parser`` keywords (raw epilog, kept as written)."""
    return {
        "epilog": "examples:\n" + "\n".join(f"  {line}" for line in lines),
        "formatter_class": argparse.RawDescriptionHelpFormatter,
    }
