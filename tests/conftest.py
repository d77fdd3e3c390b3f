"""Shared fixtures: free loopback ports. Servers bind 127.0.0.1 only."""

from __future__ import annotations

import socket
from collections.abc import Iterator

import pytest

LOOPBACK = "127.0.0.1"


def free_port() -> int:
    """A TCP port that is free on 127.0.0.1 right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((LOOPBACK, 0))
        return int(s.getsockname()[1])


@pytest.fixture
def port_number() -> Iterator[int]:
    yield free_port()


@pytest.fixture(autouse=True)
def wide_terminal(monkeypatch: pytest.MonkeyPatch) -> None:
    """rich wraps at 80 columns under pytest; tests read whole lines."""
    monkeypatch.setenv("COLUMNS", "240")
