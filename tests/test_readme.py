"""README.md is tested (issue 20): its commands are read from the file at run time, then checked.

Every fenced code block of README.md is read when the tests run, so a new section is covered
the day it lands. A block is shell commands (no language, ``bash``, ``sh``, ``shell``,
``console``) or a snippet that is not commands (``yaml``, ``js``, ..., or lines that all look
like YAML keys), which is skipped; a block in any other language fails as one to classify. In
a command block, backslash continuations are joined, ``# comments`` dropped, ``VAR=value cmd``
prefixes kept as the command's environment, ``export`` lines and bare assignments kept for
later ``$VAR`` expansions (and ``export`` for the environment of the workflow), redirections
set aside and ``&&``/``;``/``|`` split commands. ``.venv/bin/X`` is the command ``X``.

Then:

- every ``pharmatwin`` and ``pharmatwin-hil`` command is parsed (not executed) by the CLIs' own
  argparse parsers: a usage error is something the README shows that the CLI no longer takes;
- every repository path a command names (``configs/...``, ``tests/...``, ``bench/...``) exists;
- every command is in one of two tables: :data:`PARSED_ONLY` (too costly, privileged or a
  template with placeholders; each with its reason, and checked statically as far as it can
  be) or :data:`RUN` (run end to end in a scratch folder, shortened only with options the
  README or the CLI's own help shows, against live HIL servers on free loopback ports where it
  talks to a PLC). Anything else fails with "classify this README command".

The scratch folder mirrors ``configs/`` with symlinks, except ``configs/sites/`` and
``configs/pki/``, which are copies: a served site gets a free port (and only the port
differs), and nothing run here can write the repository's CA or CRL. The README's commands run
as written from the scratch folder, and what they write lands there; an absolute path under
/etc or /var moves into it, and a served site's loopback address in an argument follows the
site to its free port.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager, redirect_stderr, redirect_stdout
from dataclasses import dataclass, field
from fnmatch import fnmatchcase
from glob import glob
from pathlib import Path
from typing import IO

import pyarrow.parquet as pq
import pytest
import yaml

from controller.runtime.site import load_site
from hil.net import free_port
from hil.serve import state_dir

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
BIN = Path(sys.executable).parent
#: Top-level folders whose paths a README command may name as inputs (``runs/`` is output).
REPO_DIRS = ("configs", "tests", "bench", "plant_models", "controller", "hil")
#: Absolute places the README writes to (a key under /etc, logs under /var): moved into scratch.
OUTSIDE = ("/etc/", "/var/")
#: Words the README uses as placeholders a reader fills in: a command with one is a template.
PLACEHOLDERS = ("SITE", "NAME", "APPLICATION-URI", "FILE", "DB", "HOST:PORT", "RUN_ID")
CYCLES = 3  # `pharmatwin run` without --cycles/--duration: stop after this many cycles
MAX_STEPS = 5  # `pharmatwin-hil simulate` without --max-steps
CYCLE_WALL_S = 1.0  # a served site the README gives no --rate: one controller cycle a second
POLL_S = 0.05
TIMEOUT_S = 60.0  # one command
PASSWORD = "correct horse battery"  # typed twice into `python -m controller.runtime.users`
pytestmark = pytest.mark.timeout(240)

COMMAND_LANGS = frozenset({"", "bash", "sh", "shell", "console", "zsh"})
#: Blocks that are not commands: config and code snippets, and text figures (README.md's layout,
#: checked by tests/test_readme_layout.py).
SNIPPET_LANGS = frozenset(
    {"yaml", "yml", "json", "toml", "ini", "cfg", "conf", "python", "py", "js", "javascript"}
    | {"text"}
)
_YAMLISH = re.compile(r"""^\s*(#.*|-(\s.*)?|[\w.$"'-]+\s*:(\s.*)?)$""")
_ASSIGNMENT = re.compile(r"^([A-Za-z_][A-Za-z0-9_]*)=(.*)$", re.S)
_VARIABLE = re.compile(r"\$(?:\{([A-Za-z_][A-Za-z0-9_]*)\}|([A-Za-z_][A-Za-z0-9_]*))")
_LOOPBACK = re.compile(r"(127\.0\.0\.1|localhost):(\d+)")


# ------------------------------------------------------------------------- reading the README
@dataclass(frozen=True)
class Block:
    line: int  # the opening fence
    lang: str
    lines: tuple[tuple[int, str], ...]


@dataclass(frozen=True)
class Word:
    text: str
    glob: bool = False  # an unquoted * ? or [: the shell would expand it
    op: str = ""  # "&&", "||", ";", "|", or a redirection (">", "2>", "2>&1", ...)
    assignment: bool = False  # NAME=... with the name unquoted


@dataclass(frozen=True)
class Command:
    """One simple command of a README block."""

    line: int
    text: str  # the logical line it came from, as written
    argv: tuple[str, ...]
    globs: frozenset[int] = frozenset()  # argv indexes the shell would expand
    env: tuple[tuple[str, str], ...] = ()
    redirects: tuple[str, ...] = ()

    @property
    def where(self) -> str:
        return f"README.md:{self.line}: `{self.text}`"

    def option(self, flag: str) -> str | None:
        """The value of ``flag`` (``--flag V`` or ``--flag=V``), None when absent."""
        return option(self.argv, flag)

    def options(self, flag: str) -> list[str]:
        return [self.argv[i + 1] for i, a in enumerate(self.argv[:-1]) if a == flag]


class ShellSyntaxError(ValueError):
    """Shell syntax this reader does not follow (command substitution, subshells, unset $X)."""


def option(argv: Sequence[str], flag: str) -> str | None:
    for i, arg in enumerate(argv):
        if arg == flag and i + 1 < len(argv):
            return argv[i + 1]
        if arg.startswith(flag + "="):
            return arg.split("=", 1)[1]
    return None


def fenced_blocks(text: str) -> list[Block]:
    blocks: list[Block] = []
    opening: tuple[int, str, str] | None = None
    body: list[tuple[int, str]] = []
    for number, line in enumerate(text.splitlines(), start=1):
        if opening is None:
            match = re.match(r"^\s*(`{3,}|~{3,})\s*([\w+-]*)", line)
            if match:
                opening, body = (number, match.group(1), match.group(2).lower()), []
            continue
        fence = line.strip()
        if fence and set(fence) == {opening[1][0]} and len(fence) >= len(opening[1]):
            blocks.append(Block(opening[0], opening[2], tuple(body)))
            opening = None
            continue
        body.append((number, line))
    if opening is not None:
        blocks.append(Block(opening[0], opening[2], tuple(body)))
    return blocks


def _expand_variables(text: str, variables: Mapping[str, str], line: str) -> str:
    def value(match: re.Match[str]) -> str:
        name = match.group(1) or match.group(2)
        if name not in variables:
            raise ShellSyntaxError(f"${name} is not set by an earlier README line in {line!r}")
        return variables[name]

    if re.search(r"\$[({]?[^A-Za-z_{]|\$\(", text):
        raise ShellSyntaxError(f"a '$' expansion this reader does not follow in {line!r}")
    return _VARIABLE.sub(value, text)


def words(text: str, variables: Mapping[str, str] | None = None) -> list[Word]:
    """Shell words of one logical line, up to an unquoted ``#`` that starts a word; ``$NAME``
    and ``${NAME}`` expand from ``variables`` (unquoted or in double quotes)."""
    variables = variables or {}
    out: list[Word] = []
    buf: list[str] = []
    started = globbed = False
    assignment: bool | None = None  # decided at the first '=' or quote of a word

    def flush() -> None:
        nonlocal buf, started, globbed, assignment
        if started:
            out.append(Word("".join(buf), glob=globbed, assignment=bool(assignment)))
        buf, started, globbed, assignment = [], False, False, None

    def unquoted_end(start: int) -> int:
        """The end of the unquoted run from ``start`` (``${NAME}`` kept whole)."""
        j = start
        while j < len(text) and text[j] not in " \t'\"\\;|&<>`(){}":
            if text.startswith("${", j):
                close = text.find("}", j)
                if close < 0:
                    raise ShellSyntaxError(f"unclosed ${{ in {text!r}")
                j = close + 1
            else:
                j += 1
        return max(j, start + 1)

    i = 0
    while i < len(text):
        c = text[i]
        if c in " \t":
            flush()
            i += 1
        elif c == "#" and not started:
            break
        elif c == "'":
            end = text.find("'", i + 1)
            if end < 0:
                raise ShellSyntaxError(f"unclosed ' in {text!r}")
            buf.append(text[i + 1 : end])
            assignment = bool(assignment)
            started, i = True, end + 1
        elif c == '"':
            end = i + 1
            chunk: list[str] = []
            while end < len(text) and text[end] != '"':
                if text[end] == "`":
                    raise ShellSyntaxError(f"a command substitution in {text!r}")
                if text[end] == "\\" and end + 1 < len(text) and text[end + 1] in '"\\$':
                    end += 1
                chunk.append(text[end])
                end += 1
            if end >= len(text):
                raise ShellSyntaxError(f'unclosed " in {text!r}')
            buf.append(_expand_variables("".join(chunk), variables, text))
            assignment = bool(assignment)
            started, i = True, end + 1
        elif c == "\\":
            buf.append(text[i + 1 : i + 2])
            started, i = True, i + 2
        elif c in "`(){}":
            raise ShellSyntaxError(f"{c!r} (substitution, subshell or brace) in {text!r}")
        elif c in ";|&":
            flush()
            op = text[i : i + 2] if text[i : i + 2] in ("&&", "||") else c
            if op == "&":
                raise ShellSyntaxError(f"a background '&' in {text!r}")
            out.append(Word(op, op=op))
            i += len(op)
        elif c in "<>":
            fd = "".join(buf) if started and "".join(buf).isdigit() else ""
            if not fd:
                flush()
            buf, started, globbed, assignment = [], False, False, None
            redirection = re.match(r"[<>]{1,2}(&\d+)?", text[i:])
            assert redirection is not None
            out.append(Word(fd + redirection.group(0), op=fd + redirection.group(0)))
            i += len(redirection.group(0))
        else:
            end = unquoted_end(i)
            raw = text[i:end]
            if assignment is None and "=" in raw:
                assignment = bool(re.match(r"^[A-Za-z_][A-Za-z0-9_]*=", "".join(buf) + raw))
            globbed = globbed or any(ch in raw for ch in "*?[")
            buf.append(_expand_variables(raw, variables, text))
            started, i = True, end
    flush()
    return out


def _logical_lines(block: Block) -> Iterator[tuple[int, str]]:
    pending, start = "", 0
    for number, raw in block.lines:
        line = raw.rstrip()
        if block.lang == "console" and not pending:
            if not line.lstrip().startswith("$ "):
                continue  # output, not a command
            line = line.lstrip()[2:]
        if not pending:
            start = number
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        yield start, (pending + line).strip()
        pending = ""
    if pending:
        yield start, pending.strip()


def _display(logical: str) -> str:
    """The logical line without its comment, spaces collapsed (for messages)."""
    return " ".join(re.split(r"(?:^|\s)#", logical, maxsplit=1)[0].split())


def _commands(line: int, text: str, ws: list[Word], variables: dict[str, str]) -> list[Command]:
    commands: list[Command] = []
    part: list[Word] = []
    for w in [*ws, Word(";", op=";")]:
        if w.op not in ("&&", "||", ";", "|"):
            part.append(w)
            continue
        command = _command(line, text, part) if part else None
        part = []
        if command is None:
            continue
        if not command.argv:  # NAME=value alone: a shell variable
            variables.update(command.env)
            continue
        if command.argv[0] == "export":
            variables.update(_assignments(command.argv[1:]))
        commands.append(command)
    return commands


def _assignments(args: Sequence[str]) -> dict[str, str]:
    """``NAME=value`` arguments (of ``export``) as a mapping."""
    pairs = (a.partition("=") for a in args if "=" in a)
    return {name: value for name, _, value in pairs}


def _command(line: int, text: str, part: list[Word]) -> Command:
    env: list[tuple[str, str]] = []
    argv: list[str] = []
    globs: set[int] = set()
    redirects: list[str] = []
    target = False
    for w in part:
        if target:
            redirects[-1] += " " + w.text
            target = False
        elif w.op:
            redirects.append(w.op)
            target = "&" not in w.op
        elif not argv and w.assignment:
            name, value = w.text.split("=", 1)
            env.append((name, value))
        else:
            if w.glob:
                globs.add(len(argv))
            argv.append(w.text)
    if argv and argv[0].startswith(".venv/bin/"):
        argv[0] = argv[0].removeprefix(".venv/bin/")
    return Command(line, text, tuple(argv), frozenset(globs), tuple(env), tuple(redirects))


def read_readme(text: str) -> tuple[list[Command], list[Block], list[str]]:
    """The README's commands, its snippet blocks, and what could not be read."""
    commands: list[Command] = []
    snippets: list[Block] = []
    problems: list[str] = []
    variables: dict[str, str] = {}
    for block in fenced_blocks(text):
        lines = [s for _, s in block.lines if s.strip()]
        if block.lang in SNIPPET_LANGS or (
            not block.lang and lines and all(_YAMLISH.match(s) for s in lines)
        ):
            snippets.append(block)
            continue
        if block.lang not in COMMAND_LANGS:
            problems.append(
                f"README.md:{block.line}: a ```{block.lang} block: classify this README code "
                "block (COMMAND_LANGS or SNIPPET_LANGS in tests/test_readme.py)"
            )
            continue
        for number, logical in _logical_lines(block):
            try:
                ws = words(logical, variables)
            except ShellSyntaxError as exc:
                problems.append(f"README.md:{number}: cannot read this shell line: {exc}")
                continue
            commands += _commands(number, _display(logical), ws, variables)
    return commands, snippets, problems


# ----------------------------------------------------------------------------- classifying
@dataclass(frozen=True)
class Rule:
    """README commands whose argv starts with ``pattern`` (fnmatch per word); ``template``:
    instead, commands with a placeholder word (:data:`PLACEHOLDERS`) anywhere."""

    pattern: tuple[str, ...]
    why: str
    template: bool = False

    def matches(self, argv: Sequence[str]) -> bool:
        if self.template:
            return any(p in re.split(r"[/.=]", a) or p == a for a in argv for p in PLACEHOLDERS)
        return len(argv) >= len(self.pattern) and all(
            fnmatchcase(a, p) for a, p in zip(argv, self.pattern, strict=False)
        )


#: README commands only parsed, never run here, and why (checked before RUN). Each is still
#: checked statically: CLI commands by the CLI's parser, and the config files they name by
#: `pharmatwin-hil check-config`; make targets against the Makefile; scripts by their own
#: argparse (patched to stop after parsing); systemd commands against configs/deploy/; podman
#: runs by the CLI's parser on the image's ENTRYPOINT plus the README's arguments.
PARSED_ONLY: tuple[Rule, ...] = (
    Rule((), "a template: a placeholder (SITE, NAME, ...) stands where a reader fills in", True),
    Rule(("make", "demo"), "a whole 150 h bioreactor batch in closed loop: beyond this budget"),
    Rule(("make", "test"), "the whole suite, which contains this file"),
    Rule(("make", "check"), "ruff and mypy over the whole tree: minutes, and others' files"),
    Rule(("make", "bench"), "every benchmark: B5 alone takes 8 to 11 minutes (README)"),
    Rule(("python*", "bench/*.py"), "a benchmark: measures for minutes on a quiet machine"),
    Rule(("sudo",), "needs root and systemd on the edge PC"),
    Rule(("journalctl",), "needs systemd and the installed unit"),
    Rule(("podman",), "needs podman and a registry to pull the base image (no network here)"),
    Rule(
        ("pharmatwin-hil", "campaign", "run"),
        "whole campaigns, up to 32 cases of MPC runs (tests/hil/test_campaign.py runs a smoke one)",
    ),
    Rule(("pharmatwin-hil", "campaign", "report"), "needs the results of a whole campaign"),
    Rule(("pharmatwin-hil", "tune"), "an Optuna study of many campaign runs (test_tuning.py)"),
    Rule(("pharmatwin-hil", "compare"), "needs the tuned config that `tune` writes"),
    Rule(
        ("pharmatwin-hil", "design-space"),
        "30 grid points, x 80 draws with --monte-carlo (158 s here, README); test_design_space*",
    ),
)

#: README commands run end to end in the scratch folder (first match wins), and how.
RUN: dict[str, Rule] = {
    "export": Rule(("export", "*=*"), "set for every later command of the workflow"),
    "keygen": Rule(
        ("pharmatwin", "audit", "keygen"),
        "first, into the scratch folder (/etc/... -> <scratch>/etc/...), so every trail the "
        "workflow writes is signed with it",
    ),
    "users": Rule(
        ("python*", "-m", "controller.runtime.users"),
        "the password twice on stdin (no terminal); its hash, from stdout, goes into the "
        "README's users.yaml snippet, written with mode 0600 where a run's --users says (a "
        "stdout redirection of the README line is not followed: the hash is what it is for)",
    ),
    "pki": Rule(("pharmatwin-hil", "pki", "issue-client"), "as shown (into scratch runs/pki)"),
    "openssl": Rule(("openssl",), "as shown, on the certificate `pki issue-client` made"),
    "check-config": Rule(("pharmatwin*", "check-config"), "as shown (globs expanded)"),
    "describe": Rule(("pharmatwin", "describe"), "as shown"),
    "simulate": Rule(
        ("pharmatwin-hil", "simulate"),
        f"as shown when it gives --max-steps, else with --max-steps {MAX_STEPS} --no-plot",
    ),
    "serve": Rule(
        ("pharmatwin-hil", "serve"),
        "as shown (--rate: the README's, else one controller cycle a wall second), on a free "
        "loopback port (--modbus-port/--opcua-port, the same port in the scratch copy of the "
        "site) with the site's own --state-dir; its clients run against it, then SIGINT must "
        "stop it with exit 0",
    ),
    "tags": Rule(
        ("pharmatwin", "tags"),
        "against its site's serve; --watch gets --count 2; a write may be refused (exit 1) "
        "only with the reason: the PLC takes setpoints only while the MPC is active",
    ),
    "fault": Rule(
        ("pharmatwin-hil", "fault"),
        "against its site's serve, in README order; status and clear must list what was held",
    ),
    "run": Rule(
        ("pharmatwin", "run"),
        f"against its site's serve at the serve's --rate; --cycles {CYCLES}, or with --ui/"
        "--metrics (free ports) until the page, /api/state and the metrics show 2 cycles, "
        "then SIGINT; exit 0 either way",
    ),
    "opcua-tools": Rule(
        ("python*", "-c", "*asyncua.tools*"),
        "against the serve of the site whose loopback port its URL names",
    ),
    "history": Rule(("pharmatwin", "history"), "on the historian the runs wrote"),
    "audit": Rule(
        ("pharmatwin", "audit"),
        "on the trail the tags write and the runs wrote (a key is set, so an unsigned anchor "
        "would fail verify); exports are checked against their filters",
    ),
}


def parsed_only(command: Command) -> Rule | None:
    return next((r for r in PARSED_ONLY if r.matches(command.argv)), None)


def run_step(command: Command) -> str | None:
    if parsed_only(command) is not None:
        return None
    return next((name for name, rule in RUN.items() if rule.matches(command.argv)), None)


def classification_problems(commands: Sequence[Command]) -> list[str]:
    return [
        f"{c.where}: classify this README command: add it to RUN (and run it) or to "
        "PARSED_ONLY (with the reason) in tests/test_readme.py"
        for c in commands
        if parsed_only(c) is None and run_step(c) is None
    ]


def expand(command: Command, cwd: Path) -> list[str]:
    """argv as the shell would pass it from ``cwd`` (unquoted globs expanded, sorted)."""
    argv: list[str] = []
    for i, arg in enumerate(command.argv):
        matches = sorted(glob(arg, root_dir=cwd)) if i in command.globs else []
        argv += matches or [arg]
    return argv


PARSERS: dict[str, str] = {"pharmatwin": "controller.runtime.cli", "pharmatwin-hil": "hil.cli"}


def parse_problem(argv: Sequence[str], where: str) -> str | None:
    """What the CLI's own parser says of ``argv`` (program first); None when it accepts it."""
    module = __import__(PARSERS[argv[0]], fromlist=["_parser"])
    make: Callable[[], argparse.ArgumentParser] = module._parser
    err = io.StringIO()
    try:
        with redirect_stderr(err), redirect_stdout(io.StringIO()):
            make().parse_args(list(argv[1:]))
    except SystemExit as exc:
        said = [line for line in err.getvalue().splitlines() if line.strip()]
        return f"{where}: {argv[0]} does not accept it (exit {exc.code}): " + (
            said[-1] if said else "no message"
        )
    return None


def cli_problems(commands: Sequence[Command]) -> list[str]:
    """Every pharmatwin/pharmatwin-hil command through its CLI's own parser (no execution)."""
    found = (parse_problem(expand(c, ROOT), c.where) for c in commands if c.argv[0] in PARSERS)
    return [p for p in found if p is not None]


def path_problems(commands: Sequence[Command]) -> list[str]:
    """Repository paths the commands name that do not exist."""
    problems = []
    for c in commands:
        for i, arg in enumerate(c.argv[1:], start=1):
            value = arg.split("=", 1)[1] if arg.startswith("-") and "=" in arg else arg
            if "/" not in value or value.split("/", 1)[0] not in REPO_DIRS:
                continue
            found = glob(value, root_dir=ROOT) if i in c.globs else [value]
            if not found or not all((ROOT / f).exists() for f in found):
                problems.append(f"{c.where}: no such file in the repository: {value}")
    return problems


# ------------------------------------------------------------------------- the scratch folder
@dataclass
class Result:
    command: Command
    argv: list[str]
    code: int
    out: str
    err: str

    def report(self) -> str:
        return (
            f"{self.command.where} (ran: {' '.join(self.argv)}) exited {self.code}\n"
            f"--- stdout\n{self.out[-3000:]}\n--- stderr\n{self.err[-3000:]}"
        )


@dataclass
class Scratch:
    root: Path
    env: dict[str, str] = field(default_factory=dict)  # from the README's `export` lines
    ports: dict[int, int] = field(default_factory=dict)  # a served site's port -> its free one
    #: the environment the README gives the serve of the site being served (a password the
    #: server checks): its clients run with it too, as they would from the same shell
    session: dict[str, str] = field(default_factory=dict)

    def local(self, arg: str) -> str:
        """/etc/... and /var/... moved into the scratch folder; a served site's loopback
        address moved to its free port."""
        if arg.startswith(OUTSIDE):
            return str(self.root / arg.lstrip("/"))
        return _LOOPBACK.sub(
            lambda m: f"{m.group(1)}:{self.ports.get(int(m.group(2)), int(m.group(2)))}", arg
        )

    def argv(self, command: Command, argv: Sequence[str] | None = None) -> list[str]:
        expanded = expand(command, self.root) if argv is None else list(argv)
        program = expanded[0]
        if fnmatchcase(program, "python*"):
            exe = sys.executable
        elif program in PARSERS:
            exe = str(BIN / program)
            assert (BIN / program).is_file(), (
                f"{command.where}: the console script {program} is not installed in {BIN} "
                "(pip install -e .)"
            )
        else:
            found = shutil.which(program)
            assert found, f"{command.where}: {program} is not installed on this machine"
            exe = found
        return [exe, *(self.local(a) for a in expanded[1:])]

    def environ(self, command: Command) -> dict[str, str]:
        own = {k: self.local(v) for k, v in command.env}
        return {**os.environ, **self.env, **self.session, **own}

    def popen(
        self, command: Command, argv: Sequence[str], stdout: IO[str], stderr: IO[str] | int
    ) -> subprocess.Popen[str]:
        return subprocess.Popen(
            self.argv(command, argv),
            cwd=self.root,
            env=self.environ(command),
            stdin=subprocess.DEVNULL,
            stdout=stdout,
            stderr=stderr,
            text=True,
        )

    def run(
        self, command: Command, argv: Sequence[str] | None = None, stdin: str | None = None
    ) -> Result:
        full = self.argv(command, argv)
        try:
            done = subprocess.run(
                full,
                cwd=self.root,
                env=self.environ(command),
                input=stdin,
                stdin=None if stdin is not None else subprocess.DEVNULL,
                capture_output=True,
                text=True,
                timeout=TIMEOUT_S,
                start_new_session=True,  # no controlling terminal: getpass reads stdin
            )
        except subprocess.TimeoutExpired as exc:
            pytest.fail(f"{command.where}: no exit within {TIMEOUT_S:g} s (ran: {full}): {exc}")
        return Result(command, full, done.returncode, done.stdout, done.stderr)

    def ok(self, command: Command, argv: Sequence[str] | None = None) -> Result:
        result = self.run(command, argv)
        assert result.code == 0, result.report()
        return result


@pytest.fixture
def scratch(tmp_path: Path) -> Scratch:
    configs = tmp_path / "configs"
    configs.mkdir()
    for entry in sorted((ROOT / "configs").iterdir()):
        if entry.name in ("sites", "pki"):
            shutil.copytree(entry, configs / entry.name)
        else:
            (configs / entry.name).symlink_to(entry)
    return Scratch(tmp_path)


@pytest.fixture(scope="module")
def readme() -> tuple[list[Command], list[Block], list[str]]:
    return read_readme(README.read_text(encoding="utf-8"))


def steps(commands: Sequence[Command], *names: str) -> list[Command]:
    """The README's commands of these RUN steps, in README order."""
    return [c for c in commands if run_step(c) in names]


def with_option(argv: Sequence[str], flag: str, value: str | None = None) -> list[str]:
    """``argv`` with ``flag`` (and ``value``) set: replaced where given, appended otherwise."""
    out = list(argv)
    for i, arg in enumerate(out):
        if arg == flag:
            if value is not None:
                out[i + 1] = value
            return out
        if arg.startswith(flag + "="):
            out[i] = f"{flag}={value}"
            return out
    return [*out, flag] + ([value] if value is not None else [])


# ---------------------------------------------------------------------- reading and parsing
def test_the_readme_reader_follows_the_shell() -> None:
    text = "\n".join(
        [
            "```",
            "pharmatwin run configs/sites/cstr-modbus.yaml --mode shadow \\",
            '    --ui 127.0.0.1:8080 --reason "step test"   # a comment',
            "# a comment line",
            "PASSWORD=secret pharmatwin-hil fault S inject comm_latency '*' --magnitude 0.2",
            "export KEY=/etc/k  # the runtime reads it",
            "python -m controller.runtime.users > /dev/null 2>&1",
            "sudo a && sudo b; check-config configs/*.yaml",
            "SEC=x,$KEY",
            ".venv/bin/python -c 'print(1)' -u \"opc.tcp://u:$KEY@h\" --security=$SEC",
            "```",
            "```",
            "users:",
            "  olga: {roles: [operator]}",
            "```",
            "```js",
            "console.log(1)",
            "```",
        ]
    )
    commands, snippets, problems = read_readme(text)
    assert problems == []
    assert [b.line for b in snippets] == [12, 16]
    run, fault, export, users, a, b, check, tool = commands
    assert (run.line, run.argv[-2:]) == (2, ("--reason", "step test"))
    assert "--ui" in run.argv and "#" not in run.text
    assert fault.env == (("PASSWORD", "secret"),) and fault.argv[5] == "*"
    assert 5 not in fault.globs  # quoted: the shell passes it as is
    assert export.argv == ("export", "KEY=/etc/k")
    assert users.argv == ("python", "-m", "controller.runtime.users")
    assert users.redirects == ("> /dev/null", "2>&1")
    assert (a.argv, b.argv, check.globs) == (("sudo", "a"), ("sudo", "b"), frozenset({1}))
    assert tool.argv == (
        "python",
        "-c",
        "print(1)",
        "-u",
        "opc.tcp://u:/etc/k@h",
        "--security=x,/etc/k",
    )
    _, _, refused = read_readme("```\npharmatwin run $SITE\n```\n```rust\nout\n```\n")
    assert [p.split(":")[1] for p in refused] == ["2", "4"]


def test_what_the_readme_test_catches() -> None:
    """An unclassified command, an option the CLI does not take, a missing file, and what the
    static checks of parse-only commands look at all fail, each with its README line (the
    guard against commands slipping through unchecked)."""
    text = "\n".join(
        [
            "```",
            "pharmatwin run configs/sites/cstr-modbus.yaml --mode turbo",
            "frobnicate --all",
            "pharmatwin describe configs/plants/no-such-plant.yaml",
            "pharmatwin run SITE --mode shadow",
            "make frobnicate",
            "journalctl -u pharmatwin-other -f",
            "python bench/run.py --quick --bogus",
            "podman build -f configs/deploy/Containerfile.runtime -t rt .",
            "podman run --rm -v ./configs:/c:ro rt /c/sites/gone.yaml --mode fast",
            "```",
        ]
    )
    commands, _, _ = read_readme(text)
    assert [p for c in commands[4:] for p in static_problems(c, commands)] == [
        "README.md:6: `make frobnicate`: the Makefile has no target 'frobnicate'",
        "README.md:7: `journalctl -u pharmatwin-other -f`: no unit 'pharmatwin-other' in "
        "configs/deploy/ (shipped: ['pharmatwin'])",
        "README.md:8: `python bench/run.py --quick --bogus`: its parser refuses it: run.py: "
        "error: unrecognized arguments: --bogus",
        f"README.md:10: `podman run --rm -v ./configs:/c:ro rt /c/sites/gone.yaml --mode fast`: "
        f"/c/sites/gone.yaml is {ROOT}/configs/sites/gone.yaml, which does not exist",
        "README.md:10: `podman run --rm -v ./configs:/c:ro rt /c/sites/gone.yaml --mode fast`: "
        "pharmatwin does not accept it (exit 2): pharmatwin run: error: argument --mode: "
        "invalid choice: 'fast' (choose from 'shadow', 'closed-loop')",
    ]
    assert [p.split(": classify")[0] for p in classification_problems(commands)] == [
        "README.md:3: `frobnicate --all`",
        "README.md:6: `make frobnicate`",  # only the make targets PARSED_ONLY names
    ]
    assert classification_problems(commands)[0].endswith(
        ": classify this README command: add it to RUN (and run it) or to PARSED_ONLY (with the "
        "reason) in tests/test_readme.py"
    )
    assert parsed_only(commands[3]) is PARSED_ONLY[0]  # a template: parsed, never run
    (bad_option,) = cli_problems(commands)
    assert bad_option.startswith("README.md:2: ") and "invalid choice: 'turbo'" in bad_option
    assert path_problems(commands) == [
        "README.md:4: `pharmatwin describe configs/plants/no-such-plant.yaml`: no such file in "
        "the repository: configs/plants/no-such-plant.yaml"
    ]


def test_every_readme_command_is_classified(
    readme: tuple[list[Command], list[Block], list[str]],
) -> None:
    commands, _, problems = readme
    assert len(commands) > 20, "README.md has fewer command lines than it did: is it read?"
    assert problems + classification_problems(commands) == []


def test_every_readme_cli_command_is_accepted_by_its_parser(
    readme: tuple[list[Command], list[Block], list[str]],
) -> None:
    commands, _, _ = readme
    assert sum(c.argv[0] in PARSERS for c in commands) > 20
    assert cli_problems(commands) == []


def test_every_repository_path_in_the_readme_exists(
    readme: tuple[list[Command], list[Block], list[str]],
) -> None:
    assert path_problems(readme[0]) == []


# ---------------------------------------------------------------- parsed only: static checks
_PARSE_ONLY_RUNNER = """
import argparse, os, runpy, sys
class Parsed(Exception):
    pass
original = argparse.ArgumentParser.parse_args
def parse_args(self, args=None, namespace=None):
    raise Parsed(original(self, args, namespace))
argparse.ArgumentParser.parse_args = parse_args
sys.argv = sys.argv[1:]
sys.path[0] = os.path.dirname(os.path.abspath(sys.argv[0]))  # as when the script is run
try:
    runpy.run_path(sys.argv[0], run_name="__main__")
except Parsed:
    sys.exit(0)
sys.exit(f"{sys.argv[0]} ended without parsing its arguments")
"""
_PODMAN_VALUED = frozenset(
    {"-v", "--volume", "-e", "--env", "-p", "--publish", "--name", "--network", "-u", "--user"}
)


def _units(argv: Sequence[str]) -> list[str]:
    """The systemd units a systemctl/journalctl command names."""
    if argv[0] == "journalctl":
        return [argv[i + 1] for i, a in enumerate(argv[:-1]) if a in ("-u", "--unit")]
    verbs = ("enable", "disable", "start", "stop", "restart", "status", "reload")
    return [a for a in argv[2:] if not a.startswith("-")] if argv[1] in verbs else []


def _entrypoint(containerfile: Path) -> list[str]:
    text = containerfile.read_text().replace("\\\n", " ")
    found = re.search(r"(?m)^ENTRYPOINT\s+(\[.*\])\s*$", text)
    assert found, f"{containerfile}: no ENTRYPOINT [...]"
    return [str(a) for a in json.loads(found.group(1))]


def _podman_problems(command: Command, commands: Sequence[Command]) -> list[str]:
    """`podman build`: its -f file (paths test); `podman run`: the image's ENTRYPOINT plus the
    README's arguments through the CLI's parser, the mounted files it names present."""
    if command.argv[1] != "run":
        return []
    built = {c.option("-t"): c.option("-f") for c in commands if c.argv[:2] == ("podman", "build")}
    rest, mounts, i = list(command.argv[2:]), [], 0
    while rest[i].startswith("-"):
        if rest[i] in ("-v", "--volume"):
            mounts.append(rest[i + 1].split(":")[:2])
        i += 2 if rest[i] in _PODMAN_VALUED else 1
    image, args = rest[i], rest[i + 1 :]
    if built.get(image) is None:
        return [f"{command.where}: no `podman build -t {image} -f ...` in README.md"]
    problems = []
    for arg in args:
        for host, inside in mounts:
            if arg.startswith(inside + "/") and host.startswith("./"):
                local = ROOT / host / arg.removeprefix(inside + "/")
                if not local.exists():
                    problems.append(f"{command.where}: {arg} is {local}, which does not exist")
    argv = _entrypoint(ROOT / str(built[image])) + args
    said = parse_problem(argv, command.where) if argv[0] in PARSERS else "not a PharmaTwin CLI"
    return problems + ([said] if said else [])


def static_problems(command: Command, commands: Sequence[Command]) -> list[str]:
    argv = list(command.argv[1:] if command.argv[0] == "sudo" else command.argv)
    where = command.where
    if argv[0] == "make":
        rules = (ROOT / "Makefile").read_text()
        return [
            f"{where}: the Makefile has no target {t!r}"
            for t in argv[1:]
            if not re.search(rf"(?m)^{re.escape(t)}\s*:", rules)
        ]
    if argv[0] in ("systemctl", "journalctl"):
        shipped = {p.stem for p in (ROOT / "configs" / "deploy").glob("*.service")}
        return [
            f"{where}: no unit {u!r} in configs/deploy/ (shipped: {sorted(shipped)})"
            for u in _units(argv)
            if u.removesuffix(".service") not in shipped
        ]
    if argv[0] == "podman":
        return _podman_problems(command, commands)
    if argv[0] in ("cp", "mkdir", "install") or argv[0] in PARSERS:
        return []  # paths and CLI parsing: the tests above; config files: below
    if fnmatchcase(argv[0], "python*") and argv[1].endswith(".py"):
        done = subprocess.run(
            [sys.executable, "-c", _PARSE_ONLY_RUNNER, *argv[1:]],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=TIMEOUT_S,
        )
        said = done.stderr.strip().splitlines()[-1:] or ["no message"]
        return [] if done.returncode == 0 else [f"{where}: its parser refuses it: {said[0]}"]
    return [f"{where}: no static check for this parse-only command in tests/test_readme.py"]


@pytest.mark.slow
@pytest.mark.serial
def test_parse_only_commands_are_checked_statically(
    readme: tuple[list[Command], list[Block], list[str]],
) -> None:
    commands = readme[0]
    only = [c for c in commands if parsed_only(c) is not None]
    assert [p for c in only for p in static_problems(c, commands)] == []
    named = {
        f
        for c in only
        if c.argv[0] in PARSERS
        for f in expand(c, ROOT)[1:]
        if fnmatchcase(f, "configs/*.y*ml") and (ROOT / f).is_file()
    }
    if named:  # valid files of their kind, though the commands that take them are not run
        done = subprocess.run(
            [str(BIN / "pharmatwin-hil"), "check-config", *sorted(named)],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=TIMEOUT_S,
        )
        assert done.returncode == 0, f"the files parse-only commands name:\n{done.stdout}"


# ------------------------------------------------------------------------ run: offline commands
def _written(result: Result) -> list[str]:
    """The files a `simulate` says it wrote (its `wrote a, b, c` line)."""
    lines = [line for line in result.out.splitlines() if line.startswith("wrote ")]
    assert lines, result.report()
    return lines[-1].removeprefix("wrote ").split(", ")


@pytest.mark.slow
@pytest.mark.serial
def test_readme_offline_commands_run(
    scratch: Scratch, readme: tuple[list[Command], list[Block], list[str]]
) -> None:
    commands = readme[0]
    for c in steps(commands, "check-config"):
        scratch.ok(c)
    for c in steps(commands, "describe"):
        result = scratch.ok(c)
        assert "parameter" in result.out, result.report()
    for c in steps(commands, "simulate"):
        argv = expand(c, scratch.root)
        if c.option("--max-steps") is None:
            argv = with_option(with_option(argv, "--max-steps", str(MAX_STEPS)), "--no-plot")
        files = _written(scratch.ok(c, argv))
        names = {Path(f).name for f in files}
        assert names >= {"trajectory.parquet", "kpis.json"}, f"{c.where}: wrote {files}"
        assert ("trajectory.png" in names) is ("--no-plot" not in argv), f"{c.where}: {files}"
        out = c.option("--out")
        for f in files:
            assert (scratch.root / f).stat().st_size > 0, f"{c.where}: {f} is empty"
            assert out is None or Path(f).parent == Path(out), f"{c.where}: {f} not in {out}"
        kpis = next(f for f in files if Path(f).name == "kpis.json")
        assert json.loads((scratch.root / kpis).read_text()), f"{c.where}: {kpis} is empty"


# ------------------------------------------------------------------ run: the live HIL workflow
@dataclass
class Hil:
    site: str  # configs/sites/<name>.yaml, relative to the scratch folder
    rate: float


def _move_port(path: Path, port: int) -> int:
    """Give the scratch copy of a site file ``port`` (nothing else changes); the old port."""
    text = path.read_text()
    before = yaml.safe_load(text)
    old = int(before["connection"]["port"])
    moved, n = re.subn(rf"(?m)^(\s+port:\s*){old}\b", rf"\g<1>{port}", text)
    assert n == 1, f"{path}: expected one 'port: {old}' line, found {n}"
    before["connection"]["port"] = port
    assert yaml.safe_load(moved) == before, f"{path}: more than the port changed"
    path.write_text(moved)
    return old


def _site_ports(scratch: Scratch) -> dict[int, str]:
    """Each shipped site's loopback port -> its site file (relative to the scratch folder)."""
    ports = {}
    for path in sorted((scratch.root / "configs" / "sites").glob("*.yaml")):
        port = yaml.safe_load(path.read_text())["connection"]["port"]
        ports[int(port)] = str(path.relative_to(scratch.root))
    return ports


def site_of(command: Command, by_port: Mapping[int, str]) -> str | None:
    """The site file a command talks to: one it names, else the one whose loopback port an
    argument names (an OPC UA URL)."""
    named = [a for a in command.argv if fnmatchcase(a, "configs/sites/*.y*ml")]
    if named:
        return named[0]
    for arg in command.argv:
        for match in _LOOPBACK.finditer(arg):
            if int(match.group(2)) in by_port:
                return by_port[int(match.group(2))]
    return None


@contextmanager
def served(scratch: Scratch, site_file: str, readme_serve: Command | None) -> Iterator[Hil]:
    """``pharmatwin-hil serve`` of one site in a process of its own, on a free port; stopped
    with SIGINT at the end, which must exit 0."""
    path = scratch.root / site_file
    site = load_site(path)  # the port is not read here; `_move_port` sets it below
    rate = site.controller.sample_time * site.model.seconds_per_unit / CYCLE_WALL_S
    if readme_serve is None:
        argv = ["pharmatwin-hil", "serve", site_file]
        command = Command(0, f"(no README serve; ran {' '.join(argv)})", tuple(argv))
    else:
        command, argv = readme_serve, expand(readme_serve, scratch.root)
    rate = float(command.option("--rate") or rate)
    argv = with_option(argv, "--rate", f"{rate:g}")
    protocol = command.option("--protocol") or site.connection.protocol
    ports = {p: free_port() for p in (["modbus", "opcua"] if protocol == "both" else [protocol])}
    assert site.connection.protocol in ports, f"{command.where}: its clients could not reach it"
    old = _move_port(path, ports[site.connection.protocol])
    scratch.ports[old] = ports[site.connection.protocol]
    for proto, port in ports.items():
        argv = with_option(argv, f"--{proto}-port", str(port))
    folder = state_dir(site)  # the site's own: `fault` finds the rig there
    argv = with_option(argv, "--state-dir", str(folder))
    log = scratch.root / f"serve-{site.name}.out"
    with log.open("w") as sink:
        process = scratch.popen(command, argv, stdout=sink, stderr=subprocess.STDOUT)
    announced = folder / f"{site.name}.json"
    scratch.session = {k: scratch.local(v) for k, v in command.env}
    try:
        deadline = time.monotonic() + TIMEOUT_S
        while not announced.exists() and process.poll() is None:
            assert time.monotonic() < deadline, f"{command.where}: not serving in {TIMEOUT_S} s"
            time.sleep(POLL_S)
        assert process.poll() is None, f"{command.where}: exited {process.returncode}\n" + (
            log.read_text()
        )
        yield Hil(site_file, rate)
        process.send_signal(signal.SIGINT)
        code = process.wait(timeout=TIMEOUT_S)
        assert code == 0, f"{command.where}: SIGINT gave exit {code}\n{log.read_text()}"
        assert not announced.exists(), f"{command.where}: left {announced} behind"
    finally:
        scratch.session = {}
        if process.poll() is None:
            process.kill()
            process.wait(timeout=TIMEOUT_S)


def _tags(scratch: Scratch, c: Command) -> None:
    argv = expand(c, scratch.root)
    if c.argv[2] == "write":
        result = scratch.run(c, argv)
        why = re.search(r"not active|only while the MPC is active", result.out)
        assert result.code == 0 or (result.code == 1 and why), result.report()
        return
    if "--watch" in argv and c.option("--count") is None:
        argv = with_option(argv, "--count", "2")
    result = scratch.ok(c, argv)
    if c.argv[2] == "read":
        assert re.search(r"\bgood\b", result.out), result.report()


def _names(text: str, kind: str, target: str) -> bool:
    """Whether a line of ``text`` names both (as words of a table row)."""
    return any({kind, target} <= set(re.split(r"[\s│┃|,]+", line)) for line in text.splitlines())


def _fault(scratch: Scratch, c: Command, held: list[tuple[str, str]]) -> None:
    """inject: the fault is shown as injected and held (unless it has a --duration);
    status and clear: every held fault is listed (active, or cleared)."""
    result = scratch.ok(c)
    action = next((a for a in c.argv[3:] if a in ("inject", "status", "clear")), None)
    assert action is not None, f"{c.where}: a fault command this test does not know"
    if action == "inject":
        at = c.argv.index("inject")
        kind, target = c.argv[at + 1 : at + 3]
        assert kind in result.out and target in result.out, result.report()
        if c.option("--duration") is None:
            held.append((kind, target))
        return
    for kind, target in held:
        assert _names(result.out, kind, target), f"{kind} {target} missing: {result.report()}"
    if action == "clear":
        held.clear()


def _get(url: str) -> str:
    with urllib.request.urlopen(url, timeout=2) as answer:
        return str(answer.read().decode())


def _cycles(ui: str | None, metrics: str | None) -> int:
    """Cycles the run has shown on each of its endpoints (the least); 0 until they answer."""
    seen = []
    try:
        if ui is not None:
            seen.append(int(json.loads(_get(f"http://{ui}/api/state"))["seq"]))
        if metrics is not None:
            found = re.search(r"(?m)^pharmatwin_cycles_total (\S+)", _get(f"http://{metrics}/"))
            seen.append(int(float(found.group(1))) if found else 0)
    except OSError:
        return 0
    return min(seen)


def _run(scratch: Scratch, c: Command, hil: Hil) -> None:
    argv = expand(c, scratch.root)
    if c.option("--rate") is None:
        argv = with_option(argv, "--rate", f"{hil.rate:g}")
    if c.option("--ui") is None and c.option("--metrics") is None:
        if c.option("--cycles") is None and c.option("--duration") is None:
            argv = with_option(argv, "--cycles", str(CYCLES))
        result = scratch.ok(c, argv)
        assert "FAILED" not in result.out, result.report()
        return
    for flag in ("--ui", "--metrics"):
        if (value := c.option(flag)) is not None:
            argv = with_option(argv, flag, f"{value.rsplit(':', 1)[0]}:{free_port()}")
    ui, metrics = option(argv, "--ui"), option(argv, "--metrics")
    out, err = scratch.root / "run-ui.out", scratch.root / "run-ui.err"
    with out.open("w") as o, err.open("w") as e:
        process = scratch.popen(c, argv, stdout=o, stderr=e)
    try:
        deadline = time.monotonic() + TIMEOUT_S
        while _cycles(ui, metrics) < 2:
            assert process.poll() is None, f"{c.where}: exited {process.returncode}\n" + (
                out.read_text() + err.read_text()
            )
            assert time.monotonic() < deadline, f"{c.where}: 2 cycles not shown in {TIMEOUT_S} s"
            time.sleep(POLL_S)
        if ui is not None:
            assert "<html" in _get(f"http://{ui}/").lower(), f"{c.where}: no operator page"
        process.send_signal(signal.SIGINT)
        code = process.wait(timeout=TIMEOUT_S)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(timeout=TIMEOUT_S)
    said = out.read_text()
    assert code == 0 and "FAILED" not in said, f"{c.where}: exit {code}\n{said}\n{err.read_text()}"


def _opcua_tool(scratch: Scratch, c: Command) -> None:
    result = scratch.ok(c)
    assert result.out.strip(), result.report()
    assert "Traceback" not in result.err, result.report()


def _users_file(scratch: Scratch, commands: Sequence[Command], snippets: Sequence[Block]) -> None:
    """Run `python -m controller.runtime.users` as a user would, and write the users file each run
    command names from the README's own snippet, with the hash it printed."""
    hashes = []  # normally one
    for c in steps(commands, "users"):
        result = scratch.run(c, stdin=f"{PASSWORD}\n{PASSWORD}\n")
        assert result.code == 0 and result.out.startswith("scrypt$"), result.report()
        hashes.append(result.out.strip())
    parsed = [
        yaml.safe_load("\n".join(line for _, line in b.lines))
        for b in snippets
        if b.lang in ("", "yaml", "yml") and any(line.startswith("users:") for _, line in b.lines)
    ]
    users = next((s for s in parsed if isinstance(s, dict) and "users" in s), None)
    for c in commands:
        target = c.option("--users") if run_step(c) == "run" else None
        if target is None:
            continue
        assert users is not None, f"{c.where}: no users.yaml snippet in README.md to build it from"
        assert hashes, (
            f"{c.where}: no `python -m controller.runtime.users` in README.md to make a hash"
        )
        filled = {"users": {n: {**u, "password": hashes[-1]} for n, u in users["users"].items()}}
        path = scratch.root / target
        path.write_text(yaml.safe_dump(filled))
        path.chmod(0o600)


def _setup(scratch: Scratch, commands: Sequence[Command], snippets: Sequence[Block]) -> None:
    """The key, the environment, client certificates (README order), then the users file."""
    for c in steps(commands, "export", "keygen", "pki", "openssl"):
        if c.argv[0] == "export":
            scratch.env.update({k: scratch.local(v) for k, v in _assignments(c.argv[1:]).items()})
        elif c.argv[:3] == ("pharmatwin", "audit", "keygen"):
            key = Path(scratch.local(c.argv[-1]))
            key.parent.mkdir(parents=True, exist_ok=True)  # an admin's `install -d`
            scratch.ok(c)
            assert key.stat().st_mode & 0o777 == 0o600, f"{c.where}: {oct(key.stat().st_mode)}"
        else:
            scratch.ok(c)
    _users_file(scratch, commands, snippets)


def _audit(scratch: Scratch, c: Command) -> None:
    result = scratch.ok(c)
    if c.argv[2] != "export":
        return
    out = c.option("--out")
    text = (scratch.root / out).read_text() if out else result.out
    fmt = c.option("--format") or "table"
    patterns, last = c.options("--action"), c.option("--last")
    if fmt == "table":
        if not patterns and c.option("--since") is None and last is None:
            assert "run.stop" in text and "mode.change" in text, result.report()
        return
    rows = list(csv.DictReader(io.StringIO(text))) if fmt == "csv" else json.loads(text)
    actions = [row["action"] for row in rows]
    if patterns:
        assert all(any(fnmatchcase(a, p) for p in patterns) for a in actions), actions
    assert last is None or len(rows) <= int(last), f"{c.where}: {len(rows)} rows"
    if not patterns and c.option("--since") is None:
        assert {"run.stop", "mode.change"} <= set(actions), f"{c.where}: {sorted(set(actions))}"


@pytest.mark.slow
@pytest.mark.serial
def test_readme_live_hil_workflow(
    scratch: Scratch, readme: tuple[list[Command], list[Block], list[str]]
) -> None:
    """Set-up (key, environment, certificates, users file), each served site with its
    clients (tags, faults, runs, OPC UA tools), then the historian and audit trail they wrote."""
    commands, snippets, _ = readme
    _setup(scratch, commands, snippets)
    by_port = _site_ports(scratch)
    live = steps(commands, "serve", "tags", "fault", "run", "opcua-tools")
    lost = [c.where for c in live if site_of(c, by_port) is None]
    assert not lost, f"no site file for: {lost}"
    for site_file in dict.fromkeys(str(site_of(c, by_port)) for c in live):
        mine = [c for c in live if site_of(c, by_port) == site_file]
        clients = [c for c in mine if run_step(c) != "serve"]
        serves: list[Command | None] = [c for c in mine if run_step(c) == "serve"]
        for readme_serve in serves or [None]:
            held: list[tuple[str, str]] = []
            with served(scratch, site_file, readme_serve) as hil:
                for c in clients:
                    step = run_step(c)
                    if step == "tags":
                        _tags(scratch, c)
                    elif step == "fault":
                        _fault(scratch, c, held)
                    elif step == "run":
                        _run(scratch, c, hil)
                    else:
                        _opcua_tool(scratch, c)
            clients = []  # a second serve of the same site: served and stopped only
    for c in steps(commands, "history"):
        scratch.ok(c)
        parquet = scratch.root / str(c.option("--parquet"))
        assert pq.read_table(parquet).num_rows > 0, f"{c.where}: {parquet} has no rows"
    for c in steps(commands, "audit"):
        _audit(scratch, c)
