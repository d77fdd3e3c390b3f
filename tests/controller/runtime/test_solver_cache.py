"""The runtime's solver-library cache: where it lives, how a failed build is reported, and a
first start's libraries compiled all at once (with a stand-in compiler: no gcc minutes).

The compiled-and-reused path (a fast controller's libraries built once and loaded again) is
tested with the controller in tests/controller/core/test_fast_mpc.py.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from controller.runtime.solver_cache import LibraryCache, build_compiled, default_cache_dir


def test_cache_folder_is_the_environments_else_the_users(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PHARMATWIN_CACHE", str(tmp_path / "cache"))
    assert default_cache_dir() == tmp_path / "cache"
    assert LibraryCache().directory == tmp_path / "cache"
    monkeypatch.delenv("PHARMATWIN_CACHE")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert default_cache_dir() == tmp_path / "home" / ".cache" / "pharmatwin"


def test_a_missing_compiler_is_an_os_error(tmp_path: Path) -> None:
    cache = LibraryCache(tmp_path, compiler="no-such-cc-for-pharmatwin")
    with pytest.raises(OSError, match="no-such-cc-for-pharmatwin"):
        cache.library("int f(void) { return 1; }\n")
    assert cache.compiled == 0


def test_a_failed_compiler_run_is_an_os_error_and_leaves_nothing(tmp_path: Path) -> None:
    cache = LibraryCache(tmp_path, compiler="false")
    with pytest.raises(OSError, match=r"false failed \(1\)"):
        cache.library("int f(void) { return 1; }\n")
    assert cache.compiled == 0 and list(tmp_path.iterdir()) == []


def test_a_library_is_compiled_once_and_then_found(tmp_path: Path) -> None:
    cache = LibraryCache(tmp_path)
    code = "int pharmatwin_one(void) { return 1; }\n"
    first = cache.library(code)
    assert first.exists() and first.parent == tmp_path and cache.compiled == 1
    again = LibraryCache(tmp_path)
    assert again.library(code) == first and again.compiled == 0
    assert sorted(tmp_path.iterdir()) == [first]  # no temporary left behind


# ---------------------------------------------------------------------- parallel first start
CORE = logging.getLogger("controller.core.fake_for_solver_cache_tests")


def fake_compiler(tmp_path: Path, seconds: float = 0.6, status: int = 0) -> tuple[str, Path]:
    """A compiler that takes ``seconds``, logs each run and writes its ``-o`` file (exit 0) or
    fails with ``status``: the compiler runs of a test without gcc's minutes."""
    runs = tmp_path / "runs.log"
    script = tmp_path / "fake-cc"
    script.write_text(
        "#!/bin/sh\n"
        f"echo run >> '{runs}'\n"
        f"sleep {seconds}\n"
        f"echo end >> '{runs}'\n"
        f"[ {status} -ne 0 ] && exit {status}\n"
        'while [ $# -gt 0 ]; do [ "$1" = "-o" ] && touch "$2"; shift; done\n'
        "exit 0\n"
    )
    script.chmod(0o755)
    return str(script), runs


def like_the_core(codes: list[str], calls: list[str]) -> Callable[..., list[Path | None]]:
    """A build that asks its builder for one library per code, as the core does: a failed
    build is logged as a warning and that piece runs uncompiled (None)."""

    def build(builder: Any) -> list[Path | None]:
        calls.append(type(builder).__name__)
        out: list[Path | None] = []
        for code in codes:
            try:
                out.append(builder.library(code))
            except OSError as exc:
                CORE.warning("built uncompiled: %s", exc)
                out.append(None)
        return out

    return build


CODES = [f"int pharmatwin_f{i}(void) {{ return {i}; }}\n" for i in range(3)]


def test_compile_all_runs_the_compiler_on_every_missing_library_at_once(tmp_path: Path) -> None:
    cc, runs = fake_compiler(tmp_path)
    cache = LibraryCache(tmp_path / "cache", compiler=cc)
    assert cache.compile_all([*CODES, CODES[0]]) == {}  # a code asked twice is built once
    assert cache.compiled == 3 and runs.read_text().count("run") == 3
    # at once: every run started before the first one ended (each sleeps 0.6 s)
    assert runs.read_text().split() == ["run"] * 3 + ["end"] * 3
    assert cache.cached() == {cache.path_for(c) for c in CODES}
    assert cache.compile_all(CODES) == {} and cache.compiled == 3  # all cached: no run


def test_a_first_start_builds_twice_and_compiles_in_between(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    cc, runs = fake_compiler(tmp_path, seconds=0.1)
    caplog.set_level(logging.INFO)
    calls: list[str] = []
    cache = LibraryCache(tmp_path / "cache", compiler=cc)
    built = build_compiled(like_the_core(CODES, calls), cache)
    assert built == [cache.path_for(c) for c in CODES] and cache.compiled == 3
    assert calls == ["_Deferring", "_Compiled"]
    # the first pass's "built uncompiled" warnings are not shown: that pass was thrown away
    assert "built uncompiled" not in caplog.text
    assert "compiled 3 solver libraries" in caplog.text
    # a warm start: one pass, no compiler run, its own warnings shown once
    caplog.clear()
    calls.clear()
    again = LibraryCache(tmp_path / "cache", compiler=cc)

    def with_a_warning(builder: Any) -> list[Path | None]:
        CORE.warning("a genuine warning of the build")
        return like_the_core(CODES, calls)(builder)

    assert build_compiled(with_a_warning, again) == built
    assert calls == ["_Deferring"] and again.compiled == 0
    assert caplog.text.count("a genuine warning of the build") == 1
    assert runs.read_text().count("run") == 3


def test_a_keyed_first_start_generates_each_code_once_and_compiles_during_the_pass(
    tmp_path: Path,
) -> None:
    cc, runs = fake_compiler(tmp_path, seconds=0.1)
    cache = LibraryCache(tmp_path / "cache", compiler=cc)
    made: list[str] = []
    seen_running: list[bool] = []

    def build(builder: Any) -> list[Path | None]:
        out: list[Path | None] = []
        for i, code in enumerate(CODES):

            def generate(code: str = code) -> str:
                made.append(code)
                return code

            try:
                out.append(builder.keyed_library(f"{tmp_path} problem {i}", generate))
            except OSError:
                out.append(None)
        if not seen_running:  # the first pass: its compiler runs start before it ends
            for _ in range(500):
                if runs.exists() and "run" in runs.read_text():
                    break
                threading.Event().wait(0.01)
            seen_running.append(runs.exists() and "run" in runs.read_text())
        return out

    built = build_compiled(build, cache)
    assert built == [cache.path_for(c) for c in CODES] and cache.compiled == 3
    assert made == CODES and seen_running == [True]  # no code generated in the second pass
    assert build_compiled(build, LibraryCache(tmp_path / "cache", compiler=cc)) == built
    assert made == CODES  # nor in a later build in this process


def test_a_failed_parallel_build_is_reported_once_and_not_rerun(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    cc, runs = fake_compiler(tmp_path, seconds=0.0, status=1)
    calls: list[str] = []
    cache = LibraryCache(tmp_path / "cache", compiler=cc)
    with caplog.at_level(logging.WARNING):
        built = build_compiled(like_the_core(CODES[:2], calls), cache)
    assert built == [None, None] and calls == ["_Deferring", "_Compiled"]
    assert runs.read_text().count("run") == 2  # once per library, not again in the 2nd pass
    failures = [r.getMessage() for r in caplog.records if "built uncompiled" in r.getMessage()]
    assert len(failures) == 2 and all("fake-cc failed (1)" in m for m in failures)


def test_a_build_that_raises_keeps_its_log(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    def broken(builder: Any) -> None:
        CORE.warning("what went before the failure")
        raise ValueError("bad config")

    with caplog.at_level(logging.WARNING), pytest.raises(ValueError, match="bad config"):
        build_compiled(broken, LibraryCache(tmp_path))
    assert "what went before the failure" in caplog.text
    assert logging.getLogger("controller").propagate  # restored
