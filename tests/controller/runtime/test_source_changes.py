"""Code edited since its commit is named, and a campaign does not reuse results made by other code.

Seen by a reviewer: with a local edit that made every criterion pass, a campaign passed and
recorded only ``git_commit``, nothing saying the tree was modified; a rerun with the real
code then skipped both cases as "already done" and passed, where a fresh run failed both.
"""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any

import pytest

from controller.runtime import historian_run
from hil.campaign.cases import Case
from hil.campaign.results import software_rows
from hil.campaign.resume import case_configuration

changes = historian_run._source_changes.__wrapped__  # uncached: the tree changes in the test


def _git(root: Path, *args: str) -> None:
    subprocess.run(["git", *args], cwd=root, check=True, capture_output=True)


def _repo(tmp_path: Path) -> Path:
    root = tmp_path / "repo"
    (root / "controller").mkdir(parents=True)
    (root / "controller" / "criteria.py").write_text("PASS = False\n", encoding="utf-8")
    (root / "README.md").write_text("readme\n", encoding="utf-8")
    _git(root, "init", "-q")
    _git(root, "add", ".")
    _git(root, "-c", "user.name=t", "-c", "user.email=t@example.invalid", "commit", "-qm", "c")
    return root


def test_edits_to_the_source_are_named_and_told_apart(tmp_path: Path) -> None:
    root = _repo(tmp_path)
    where = root / "controller"
    assert changes(where) is None  # the commit's code
    (root / "README.md").write_text("edited\n", encoding="utf-8")
    assert changes(where) is None  # not the packages' source
    (where / "criteria.py").write_text("PASS = True\n", encoding="utf-8")
    one = changes(where)
    assert one is not None and one.startswith("1 file changed since the commit (digest ")
    (where / "criteria.py").write_text("PASS = 1\n", encoding="utf-8")
    other = changes(where)
    assert other is not None and other != one  # another edit, another digest
    (where / "extra.py").write_text("X = 1\n", encoding="utf-8")  # untracked: counted too
    both = changes(where)
    assert both is not None and both.startswith("2 files changed since the commit")


def test_outside_a_work_tree_it_says_so(tmp_path: Path) -> None:
    assert changes(tmp_path) == historian_run.NOT_A_WORK_TREE


def test_a_work_tree_git_cannot_read_is_unknown_and_never_reused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A review found "none (the commit's code)" for a tree with 3 edited files when git
    was slow or missing: the reuse the check is for came back."""
    root = _repo(tmp_path)
    (root / "controller" / "criteria.py").write_text("PASS = True\n", encoding="utf-8")
    broken = tmp_path / "bin"
    broken.mkdir()
    fake = broken / "git"
    fake.write_text("#!/bin/sh\nexit 1\n", encoding="utf-8")
    fake.chmod(0o755)
    monkeypatch.setenv("PATH", str(broken))
    first, second = changes(root / "controller"), changes(root / "controller")
    assert first is not None and first.startswith("unknown: git failed (CalledProcessError)")
    assert "not reused" in first and first != second  # a token of the run: no match
    clean = {"version": "1", "git_commit": None, "source_changes": None}
    assert _configuration(clean | {"source_changes": first}) != _configuration(clean)


def _configuration(software: dict[str, Any]) -> str:
    info = {"config_hashes": {}, "software": software}
    case = Case("c000", 0, {}, 7, {}, None, ("REQ-1",))
    return case_configuration(info, [{"id": "REQ-1"}], case)


def test_a_rerun_on_edited_code_does_not_reuse_the_results() -> None:
    clean = {"version": "1", "git_commit": "a" * 40, "source_changes": None}
    edited = clean | {"source_changes": "1 file changed since the commit (digest 0123)"}
    assert _configuration(clean) != _configuration(edited)
    older = {k: v for k, v in clean.items() if k != "source_changes"}  # a run before this
    assert _configuration(clean) == _configuration(older)


def test_the_reports_say_what_was_edited() -> None:
    rows = dict(software_rows({"version": "1", "source_changes": None}))
    assert rows["source_changes"] == "none (the commit's code)"
    assert dict(software_rows({"version": "1"}))["source_changes"] == "not recorded"
    edited = dict(software_rows({"source_changes": "2 files changed since the commit (x)"}))
    assert edited["source_changes"] == "2 files changed since the commit (x)"


def test_a_copy_installed_inside_another_projects_work_tree_is_not_that_projects_code(
    tmp_path: Path,
) -> None:
    """A review: the package installed in a venv inside a user's repo reported that repo's
    HEAD as its commit and "none (the commit's code)"."""
    root = _repo(tmp_path)
    installed = root / ".venv" / "lib" / "site-packages" / "hil" / "campaign"
    installed.mkdir(parents=True)
    (root / ".gitignore").write_text(".venv/\n", encoding="utf-8")
    assert changes(installed) == historian_run.NOT_A_WORK_TREE
    assert historian_run._git_commit.__wrapped__(installed) is None
    # the repo's own package folder is its code
    assert historian_run._git_commit.__wrapped__(root / "controller") is not None


def test_a_repo_path_with_a_space_keeps_its_commit(tmp_path: Path) -> None:
    """A review: the commit was lost (None) when the repo's path had a space."""
    root = _repo(tmp_path / "sp ace")
    assert historian_run._git_commit.__wrapped__(root / "controller") is not None


def test_a_work_tree_named_by_git_dir_is_one(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A review: with GIT_DIR/GIT_WORK_TREE (no .git beside the tree) an edit was missed."""
    root = _repo(tmp_path)
    gitdir = tmp_path / "elsewhere.git"
    (root / ".git").rename(gitdir)
    monkeypatch.setenv("GIT_DIR", str(gitdir))
    monkeypatch.setenv("GIT_WORK_TREE", str(root))
    (root / "controller" / "criteria.py").write_text("PASS = True\n", encoding="utf-8")
    found = changes(root / "controller")
    assert found is not None and found.startswith("1 file changed since the commit")
