"""The runtime's solver-library cache: where it lives and how a failed build is reported.

The compiled-and-reused path (a fast controller's libraries built once and loaded again) is
tested with the controller in tests/controller/core/test_fast_mpc.py.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from controller.runtime.solver_cache import LibraryCache, default_cache_dir


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


@pytest.mark.skipif(shutil.which("false") is None, reason="needs the 'false' program")
def test_a_failed_compiler_run_is_an_os_error_and_leaves_nothing(tmp_path: Path) -> None:
    cache = LibraryCache(tmp_path, compiler="false")
    with pytest.raises(OSError, match=r"false failed \(1\)"):
        cache.library("int f(void) { return 1; }\n")
    assert cache.compiled == 0 and list(tmp_path.iterdir()) == []


@pytest.mark.skipif(shutil.which("gcc") is None, reason="needs gcc")
def test_a_library_is_compiled_once_and_then_found(tmp_path: Path) -> None:
    cache = LibraryCache(tmp_path)
    code = "int pharmatwin_one(void) { return 1; }\n"
    first = cache.library(code)
    assert first.exists() and first.parent == tmp_path and cache.compiled == 1
    again = LibraryCache(tmp_path)
    assert again.library(code) == first and again.compiled == 0
    assert sorted(tmp_path.iterdir()) == [first]  # no temporary left behind
