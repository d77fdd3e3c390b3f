"""``pharmatwin run`` settles its start-up heap for the run (controller.runtime.cli_run)."""

from __future__ import annotations

import gc
import weakref
from collections.abc import Iterator
from pathlib import Path

import pytest

from controller.runtime import cli_run
from controller.runtime.cli import main as cli_main
from controller.runtime.cli_run import settle_heap


class _Node:
    """A reference cycle's member."""

    def __init__(self) -> None:
        self.other: _Node | None = None


def _garbage_cycle() -> list[bool]:
    """A reference cycle nobody refers to; the flag turns True when it is collected."""
    a, b = _Node(), _Node()
    a.other, b.other = b, a
    freed = [False]
    weakref.finalize(a, freed.__setitem__, 0, True)
    return freed


@pytest.fixture
def unfrozen() -> Iterator[None]:
    """Whatever a test freezes goes back to the collector afterwards."""
    try:
        yield
    finally:
        gc.unfreeze()
        gc.collect()


def test_freezing_without_collecting_first_would_leak_garbage(unfrozen: None) -> None:
    """The failure settle_heap guards against: frozen garbage is never collected."""
    freed = _garbage_cycle()
    gc.freeze()
    gc.collect()
    assert freed == [False]  # leaked while frozen
    gc.unfreeze()
    gc.collect()
    assert freed == [True]


def test_settle_heap_collects_the_garbage_then_freezes_what_lives(unfrozen: None) -> None:
    freed = _garbage_cycle()
    live = _Node()
    tracked = len(gc.get_objects())
    assert tracked > 10_000  # the interpreter, pytest and our imports: a full pass walks them
    frozen = settle_heap()
    assert freed == [True]  # collected, not frozen
    assert frozen == gc.get_freeze_count() and frozen > 10_000
    assert not any(o is live for o in gc.get_objects())  # out of the collector's passes
    assert len(gc.get_objects()) < tracked // 10


def test_run_gives_the_heap_back_when_the_run_ends(
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    unfrozen: None,
) -> None:
    """The run settles the heap before it starts, and a failed run (here: no such site)
    leaves nothing frozen behind in the caller."""
    settled: list[int] = []

    def settle() -> int:
        settled.append(settle_heap())
        return settled[-1]

    monkeypatch.setattr(cli_run, "settle_heap", settle)
    code = cli_main(["run", str(tmp_path / "none.yaml"), "--mode", "shadow", "--quiet"])
    assert code == 2, capsys.readouterr().out
    assert len(settled) == 1 and settled[0] > 10_000
    assert gc.get_freeze_count() == 0
