"""A users file that is not UTF-8 YAML is a ConfigError naming the file, not a traceback."""

from __future__ import annotations

from pathlib import Path

import pytest

from controller.errors import ConfigError
from controller.runtime.users import load_users


def _users_file(tmp_path: Path, raw: bytes) -> Path:
    path = tmp_path / "users.yaml"
    path.write_bytes(raw)
    path.chmod(0o600)
    return path


def test_users_file_not_utf8_names_the_file(tmp_path: Path) -> None:
    path = _users_file(tmp_path, b"users: \xc3\x28\n")
    with pytest.raises(ConfigError) as info:
        load_users(path)
    text = str(info.value)
    assert str(path) in text and "UTF-8" in text, text


def test_users_file_with_a_tab_names_the_line(tmp_path: Path) -> None:
    path = _users_file(tmp_path, b"users:\n\talice: {roles: [operator]}\n")
    with pytest.raises(ConfigError) as info:
        load_users(path)
    assert f"{path}:2:" in str(info.value), str(info.value)
