"""Shared fixtures: free loopback ports (servers bind 127.0.0.1 only), and a fixed policy."""

from __future__ import annotations

from collections.abc import Iterator, Mapping

import pytest

from controller.core.mpc import Decision, SolveStatus
from hil.net import LOOPBACK, free_port

__all__ = ["LOOPBACK", "FixedPolicy", "free_port"]


class FixedPolicy:
    """Asks for the same inputs every cycle, with no solve: the safety layer limits the
    moves (a far-away target), or the inputs hold (the PLC's own). Records the resets and
    the estimates it was asked with (``seen``)."""

    def __init__(self, target: Mapping[str, float]) -> None:
        self.target = dict(target)
        self.resets: list[dict[str, float]] = []
        self.seen: list[dict[str, float]] = []

    def reset(self, u_prev: Mapping[str, float]) -> None:
        self.resets.append(dict(u_prev))

    def step(
        self,
        t: float,
        x_hat: Mapping[str, float],
        params: Mapping[str, float] | None = None,
        u_prev: Mapping[str, float] | None = None,
    ) -> Decision:
        self.seen.append(dict(x_hat))
        return Decision(t, dict(self.target), SolveStatus.SUCCESS, "Solve_Succeeded", 3, 1e-3)


@pytest.fixture
def port_number() -> Iterator[int]:
    yield free_port()


@pytest.fixture(autouse=True)
def wide_terminal(monkeypatch: pytest.MonkeyPatch) -> None:
    """rich wraps at 80 columns under pytest; tests read whole lines."""
    monkeypatch.setenv("COLUMNS", "240")
