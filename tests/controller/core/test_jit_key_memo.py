"""``jit.problem_key`` remembered per process: the same digest as computed afresh, computed
once per identical problem, never another problem's digest."""

from __future__ import annotations

from typing import Any

import casadi as ca
import numpy as np
import pytest

from controller.core import jit


def _nlp(scale: float = 1.0) -> dict[str, ca.MX]:
    x, p = ca.MX.sym("x", 2), ca.MX.sym("p")
    return {"x": x, "p": p, "f": scale * ca.sumsqr(x - p), "g": x[0] + x[1]}


@pytest.fixture(autouse=True)
def empty_memo(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(jit, "_KEYS", jit.Lru(32))


def _counting(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    calls: list[int] = []
    real = jit._problem_key

    def counted(*args: Any) -> str | None:
        calls.append(1)
        return real(*args)

    monkeypatch.setattr(jit, "_problem_key", counted)
    return calls


def test_the_same_problem_is_keyed_once_and_as_afresh(monkeypatch: pytest.MonkeyPatch) -> None:
    calls = _counting(monkeypatch)
    nlp, opts = _nlp(), {"max_iter": 3, "tol": 1e-8, "hess": np.eye(2)}
    first = jit.problem_key("sqpmethod", nlp, opts, False)
    assert first == jit._problem_key("sqpmethod", nlp, opts, False) and len(calls) == 2
    assert jit.problem_key("sqpmethod", dict(nlp), dict(opts), False) == first
    assert len(calls) == 2  # remembered: nothing serialized again
    # an equal problem made anew is computed again, to the same digest
    assert jit.problem_key("sqpmethod", _nlp(), opts, False) == first and len(calls) == 3


@pytest.mark.parametrize(
    "change",
    [
        {"max_iter": True},  # True == 1 in Python, not in the generated code
        {"max_iter": 3.0},
        {"tol": 1e-9},
        {"hess": 2 * np.eye(2)},
        {"extra": None},
    ],
    ids=["bool-vs-int", "float-vs-int", "float", "array", "new-key"],
)
def test_a_different_option_is_a_different_key(change: dict[str, Any]) -> None:
    nlp, opts = _nlp(), {"max_iter": 3, "tol": 1e-8, "hess": np.eye(2)}
    base = jit.problem_key("sqpmethod", nlp, opts, False)
    changed = jit.problem_key("sqpmethod", nlp, opts | change, False)
    assert changed != base
    assert changed == jit._problem_key("sqpmethod", nlp, opts | change, False)


def test_functions_in_options_are_keyed_by_what_they_compute() -> None:
    nlp, x = _nlp(), ca.MX.sym("x")
    one = ca.Function("h", [x], [x**2])
    other = ca.Function("h", [x], [x**3])
    a = jit.problem_key("sqpmethod", nlp, {"h": one}, False)
    assert jit.problem_key("sqpmethod", nlp, {"h": one}, False) == a
    assert jit.problem_key("sqpmethod", nlp, {"h": other}, False) != a
    assert jit.problem_key("sqpmethod", nlp, {"h": one}, True) != a  # rarely run
    assert jit.problem_key("ipopt", nlp, {"h": one}, False) != a


def test_a_memo_blind_to_the_options_would_hand_out_another_problems_key(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The hazard the identity covers: the same NLP with other options is another code."""
    nlp = _nlp()
    real = jit._identity

    def blind(value: Any, held: list[object]) -> Any:
        return real(value, held) if "f" in value else ()

    monkeypatch.setattr(jit, "_identity", blind)
    a = jit.problem_key("sqpmethod", nlp, {"max_iter": 3}, False)
    assert jit.problem_key("sqpmethod", nlp, {"max_iter": 4}, False) == a  # wrong: A's key
    monkeypatch.setattr(jit, "_identity", real)
    monkeypatch.setattr(jit, "_KEYS", jit.Lru(32))
    a = jit.problem_key("sqpmethod", nlp, {"max_iter": 3}, False)
    assert jit.problem_key("sqpmethod", nlp, {"max_iter": 4}, False) != a


def test_an_option_that_cannot_be_keyed_gives_no_key() -> None:
    assert jit.problem_key("sqpmethod", _nlp(), {"fn": object()}, False) is None
