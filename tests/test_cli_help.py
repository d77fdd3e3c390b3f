"""Both CLIs: ``--version``; on ``pharmatwin`` every argument has help and every subcommand
its own examples (an epilog whose lines run that very subcommand)."""

from __future__ import annotations

import argparse
import re
from collections.abc import Iterator

import pytest

from controller.runtime.cli import _parser as controller_parser
from controller.runtime.cli import main as controller_main
from hil.cli import main as hil_main


def _walk(
    parser: argparse.ArgumentParser, path: tuple[str, ...]
) -> Iterator[tuple[tuple[str, ...], argparse.ArgumentParser]]:
    yield path, parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield from _walk(sub, (*path, name))


def _missing_help(parser: argparse.ArgumentParser) -> list[str]:
    missing = []
    for path, p in _walk(parser, ("pharmatwin",)):
        for action in p._actions:
            if isinstance(action, argparse._SubParsersAction):
                helps = {c.dest: c.help for c in action._choices_actions}
                missing += [f"{' '.join(path)} {n}" for n in action.choices if not helps.get(n)]
            elif not action.help or action.help == argparse.SUPPRESS:
                missing.append(f"{' '.join(path)} {action.option_strings or action.dest}")
    return missing


def test_every_argument_of_pharmatwin_has_help() -> None:
    assert _missing_help(controller_parser()) == []


def test_the_walker_finds_an_argument_without_help() -> None:
    p = controller_parser()
    p.add_argument("--undocumented")
    assert _missing_help(p) == ["pharmatwin ['--undocumented']"]


def test_every_subcommand_has_its_own_examples() -> None:
    for path, p in _walk(controller_parser(), ("pharmatwin",)):
        if len(path) == 1:
            continue
        assert p.epilog and p.epilog.startswith("examples:"), path
        lines = [ln.strip() for ln in p.epilog.splitlines()[1:] if ln.startswith("  pharmatwin")]
        assert lines, path
        # its own: an example runs this subcommand (for a group, one of its subcommands)
        assert any(ln.startswith(" ".join(path) + " ") for ln in lines), (path, lines)


@pytest.mark.parametrize(
    ("main", "prog"), [(controller_main, "pharmatwin"), (hil_main, "pharmatwin-hil")]
)
def test_version(main: object, prog: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["--version"])  # type: ignore[operator]
    assert exc.value.code == 0
    out = capsys.readouterr().out
    assert re.fullmatch(rf"{prog} \d+\.\d+\.\d+\S*( \(git [0-9a-f]{{12}}\))?\n", out), out


def test_every_argument_of_pharmatwin_hil_has_help_and_each_subcommand_its_examples() -> None:
    from hil.cli import _examples_of, _own_examples
    from hil.cli import _parser as hil_parser

    parser = hil_parser()
    _own_examples(parser)
    missing = [m.replace("pharmatwin ", "pharmatwin-hil ", 1) for m in _missing_help(parser)]
    assert missing == []
    for path, p in _walk(parser, ()):
        if not path:
            continue
        assert p.epilog and p.epilog.startswith("examples:"), path
        assert _examples_of(path, p.epilog), (path, p.epilog)  # examples of this very command


def test_the_examples_print_one_per_line_and_name_files_that_exist() -> None:
    # `campaign run --help` wrapped its examples into one paragraph, and named a campaign
    # file (configs/campaigns/smoke.yaml) that does not exist
    from pathlib import Path

    from hil.cli import _own_examples
    from hil.cli import _parser as hil_parser

    root = Path(__file__).resolve().parents[1]
    parser = hil_parser()
    _own_examples(parser)
    for path, p in _walk(parser, ()):
        if not path or not p.epilog:
            continue
        shown = p.format_help().split("examples:", 1)[1].splitlines()
        examples = [ln.strip() for ln in shown if ln.strip()]
        assert all(ln.startswith("pharmatwin-hil ") for ln in examples), (path, examples)
        for ln in examples:
            for word in ln.split():
                if word.startswith("configs/"):  # a glob names files that exist too
                    assert list(root.glob(word)), (path, word)
