"""Shared fixtures: free loopback ports. Servers bind 127.0.0.1 only."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from hil.net import LOOPBACK, free_port

__all__ = ["LOOPBACK", "free_port"]


@pytest.fixture
def port_number() -> Iterator[int]:
    yield free_port()


@pytest.fixture(autouse=True)
def wide_terminal(monkeypatch: pytest.MonkeyPatch) -> None:
    """rich wraps at 80 columns under pytest; tests read whole lines."""
    monkeypatch.setenv("COLUMNS", "240")
