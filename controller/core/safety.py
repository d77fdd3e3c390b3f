"""The pure safety layer: turns an MPC decision into the setpoints that may be written.

Everything here is pure: no I/O, no clocks, no logging, no asyncio. The same inputs always give
the same :class:`SafetyOutcome`, so the layer can be tested exhaustively (see
``tests/controller/core/test_safety.py``) and replayed offline.

Units
-----
Every value (limits, last applied values, proposed values, setpoints) is in the engineering unit
of the manipulated input it belongs to (e.g. kg/h for a feed, K for a jacket temperature). Move
limits (``max_move``, ``max_rise``, ``max_fall``) are in that same unit *per control cycle*: the
layer has no notion of time, one call of :func:`apply_safety` is one cycle.

Invariant
---------
For every ``name, value`` in ``SafetyOutcome.setpoints`` (``lim = limits[name]``,
``prev = last[name]``), evaluated in floating point exactly as written::

    math.isfinite(value)
    lim.lower <= value <= lim.upper
    prev - lim.max_down <= value <= prev + lim.max_up

An input whose value cannot satisfy all three (its last value is outside the limits and the
limits are not reachable within one move, or its last value is unknown) is *omitted* from
``setpoints`` and reported with :attr:`Reason.NO_SAFE_VALUE`: the caller must not write it, so
the PLC keeps whatever it currently has.

Failure behaviour
-----------------
* Solver failure, bad data, stale data or no decision at all (``proposed is None``): the whole
  decision is held, i.e. every input keeps its last value (if that value is within limits).
* A non-finite (nan/inf), non-numeric or missing proposed value holds that one input.
* Proposed names that have no :class:`InputLimit` are never written (there is nothing to check
  them against) and are otherwise ignored.
* :func:`apply_safety` never raises for bad *data*; it raises ``ValueError`` only for
  inconsistent *configuration* (a ``limits`` key that differs from its ``InputLimit.name``).
  :class:`InputLimit` raises ``ValueError`` on construction when its numbers are invalid.
* :class:`SafetyFilter` raises :class:`controller.errors.SafetyOrderError` when ``step`` is called
  before ``reset``, and ``ValueError`` when ``reset`` lacks a limited input or gets a non-finite
  value.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, replace
from enum import StrEnum
from types import MappingProxyType
from typing import SupportsFloat

from controller.core.limits import InputLimit
from controller.errors import SafetyOrderError

__all__ = [
    "InputLimit",
    "Intervention",
    "Reason",
    "SafetyFilter",
    "SafetyOutcome",
    "apply_safety",
]


def _fmt(x: float | None) -> str:
    """Short human formatting of a number for intervention details."""
    if x is None:
        return "none"
    return f"{x:.6g}"


class Reason(StrEnum):
    """Why the safety layer changed (or refused) a proposed value."""

    CLIPPED_TO_LIMIT = "clipped_to_limit"
    CLIPPED_TO_MOVE_LIMIT = "clipped_to_move_limit"
    HELD_SOLVER_FAILED = "held_solver_failed"
    HELD_BAD_DATA = "held_bad_data"
    HELD_STALE_DATA = "held_stale_data"
    HELD_NON_FINITE = "held_non_finite"
    HELD_MISSING = "held_missing"
    NO_SAFE_VALUE = "no_safe_value"


@dataclass(frozen=True)
class Intervention:
    """One change the safety layer made to one input.

    ``proposed`` is what the controller asked for (``None`` if nothing usable was proposed),
    ``applied`` is what goes into the setpoints (``None`` when nothing is written for it),
    ``detail`` is a human sentence explaining the decision.
    """

    name: str
    proposed: float | None
    applied: float | None
    reason: Reason
    detail: str


@dataclass(frozen=True)
class SafetyOutcome:
    """Result of one safety cycle.

    Attributes:
        setpoints: Values to write (read-only). An input absent from it must NOT be written.
        held: True when the whole decision was held (solver failure, bad/stale data, no
            decision).
        interventions: Every change made, one per affected input, in ``limits`` order.
    """

    setpoints: Mapping[str, float]
    held: bool
    interventions: tuple[Intervention, ...]

    @property
    def changed(self) -> bool:
        """True when the safety layer intervened on at least one input."""
        return bool(self.interventions)


def _hold_reason(
    proposed: Mapping[str, float] | None, *, solve_ok: bool, data_ok: bool, data_fresh: bool
) -> tuple[Reason, str] | None:
    """The reason the whole decision is held, or None when it is not."""
    if not solve_ok:
        return Reason.HELD_SOLVER_FAILED, "the solver failed"
    if not data_ok:
        return Reason.HELD_BAD_DATA, "the measured data are bad"
    if not data_fresh:
        return Reason.HELD_STALE_DATA, "the measured data are stale"
    if proposed is None:
        return Reason.HELD_MISSING, "no decision was proposed"
    return None


def _known_last(last: Mapping[str, float], name: str) -> float | None:
    """The last applied value of ``name`` if it is known and finite, else None."""
    prev = _as_float(last.get(name))
    return prev if prev is not None and math.isfinite(prev) else None


def _hold(
    lim: InputLimit,
    prev: float | None,
    proposed: float | None,
    reason: Reason,
    why: str,
) -> tuple[float | None, Intervention]:
    """Keep the last value of one input if it is safe; otherwise write nothing."""
    name = lim.name
    if prev is None:
        return None, Intervention(
            name,
            proposed,
            None,
            Reason.NO_SAFE_VALUE,
            f"{name}: {why} and its last value is unknown; nothing written",
        )
    if not lim.contains(prev):
        return None, Intervention(
            name,
            proposed,
            None,
            Reason.NO_SAFE_VALUE,
            f"{name}: {why} and its last value {_fmt(prev)} is outside limits "
            f"[{_fmt(lim.lower)}, {_fmt(lim.upper)}]; nothing written",
        )
    return prev, Intervention(
        name, proposed, prev, reason, f"{name}: {why}; held at last value {_fmt(prev)}"
    )


def _clip(
    lim: InputLimit, prev: float | None, p: float
) -> tuple[float | None, Intervention | None]:
    """Clip a finite proposal to the limits, then to the move limits around ``prev``."""
    name = lim.name
    up, down = lim.max_up, lim.max_down
    if prev is None:
        if up == math.inf and down == math.inf:
            move_lo, move_hi = -math.inf, math.inf
        else:
            return None, Intervention(
                name,
                p,
                None,
                Reason.NO_SAFE_VALUE,
                f"{name} u={_fmt(p)} cannot be move-limited: last value unknown; nothing written",
            )
    else:
        move_lo, move_hi = prev - down, prev + up
    lo = max(lim.lower, move_lo)
    hi = min(lim.upper, move_hi)
    if lo > hi:
        return None, Intervention(
            name,
            p,
            None,
            Reason.NO_SAFE_VALUE,
            f"{name}: last value {_fmt(prev)} is outside limits "
            f"[{_fmt(lim.lower)}, {_fmt(lim.upper)}] and they are not reachable within one move "
            f"(down {_fmt(down)}, up {_fmt(up)}); nothing written",
        )
    if lim.grid is not None:  # what the PLC will hold, inside [lo, hi] too
        return _on_grid(lim, p, lo, hi, *_clipped(lim, prev, p, lo, hi))
    return _clipped(lim, prev, p, lo, hi)


def _on_grid(
    lim: InputLimit, p: float, lo: float, hi: float, value: float, note: Intervention | None
) -> tuple[float | None, Intervention | None]:
    held = lim.grid(value, lo, hi) if lim.grid is not None else value
    if held is None:
        why = f"{lim.name}: the PLC holds no value within [{_fmt(lo)}, {_fmt(hi)}] (resolution)"
        return None, Intervention(
            lim.name, p, None, Reason.NO_SAFE_VALUE, f"{why}; nothing written"
        )
    return held, None if note is None else replace(note, applied=held)


def _clipped(
    lim: InputLimit, prev: float | None, p: float, lo: float, hi: float
) -> tuple[float, Intervention | None]:
    name, up, down = lim.name, lim.max_up, lim.max_down
    in_limits = min(max(p, lim.lower), lim.upper)
    value = min(max(p, lo), hi)
    if value == p:
        return value, None
    if value == in_limits:
        side = "above upper" if p > lim.upper else "below lower"
        bound = lim.upper if p > lim.upper else lim.lower
        return value, Intervention(
            name,
            p,
            value,
            Reason.CLIPPED_TO_LIMIT,
            f"{name} u={_fmt(p)} {side} limit {_fmt(bound)}; clipped to {_fmt(value)}",
        )
    # value != in_limits only happens when prev is known (unknown prev => infinite moves).
    rising = in_limits > value
    allowed = up if rising else down
    extra = f" (after clipping to limit {_fmt(in_limits)})" if in_limits != p else ""
    return value, Intervention(
        name,
        p,
        value,
        Reason.CLIPPED_TO_MOVE_LIMIT,
        f"{name} u={_fmt(p)}: {'rise' if rising else 'fall'} from last {_fmt(prev)} exceeds "
        f"move limit {_fmt(allowed)} per cycle{extra}; clipped to {_fmt(value)}",
    )


def _as_float(value: object) -> float | None:
    """``float(value)`` or None when the value is not a real number."""
    if type(value) is float:  # the common case, without the protocol check's cost
        return value
    if isinstance(value, bool) or not isinstance(value, SupportsFloat):
        return None
    try:
        return float(value)
    except (TypeError, ValueError, OverflowError):
        return None


def apply_safety(
    limits: Mapping[str, InputLimit],
    last: Mapping[str, float],
    proposed: Mapping[str, float] | None,
    *,
    solve_ok: bool,
    data_ok: bool = True,
    data_fresh: bool = True,
) -> SafetyOutcome:
    """Turn an MPC decision into safe setpoints (pure function).

    Args:
        limits: The limited inputs, keyed by ``InputLimit.name``. Only these are ever written.
        last: The last value applied (written) for each input; the move limits are relative to
            it. A missing or non-finite last value means "unknown".
        proposed: The controller's decision, or None when there is none.
        solve_ok: False when the solver failed (the whole decision is held).
        data_ok: False when the measurements feeding the decision are bad (held).
        data_fresh: False when those measurements are stale (held).

    Returns:
        The setpoints to write and every intervention. See the module docstring for the
        invariant every written value satisfies.

    Raises:
        ValueError: when a ``limits`` key differs from its ``InputLimit.name``.
    """
    setpoints: dict[str, float] = {}
    interventions: list[Intervention] = []
    hold = _hold_reason(proposed, solve_ok=solve_ok, data_ok=data_ok, data_fresh=data_fresh)

    for key, lim in limits.items():
        if key != lim.name:
            raise ValueError(f"limits key {key!r} differs from its InputLimit name {lim.name!r}")
        prev = _known_last(last, key)
        raw: object = None if proposed is None else proposed.get(key)
        p = _as_float(raw) if raw is not None else None

        value: float | None
        note: Intervention | None
        if hold is not None:
            reason, why = hold
            value, note = _hold(lim, prev, p, reason, why)
        elif raw is None:
            value, note = _hold(lim, prev, None, Reason.HELD_MISSING, "no value was proposed")
        elif p is None or not math.isfinite(p):
            shown = _fmt(p) if p is not None else repr(raw)
            value, note = _hold(
                lim, prev, p, Reason.HELD_NON_FINITE, f"proposed u={shown} is not a finite number"
            )
        else:
            value, note = _clip(lim, prev, p)

        if value is not None:
            setpoints[key] = value
        if note is not None:
            interventions.append(note)

    return SafetyOutcome(
        setpoints=MappingProxyType(setpoints),
        held=hold is not None,
        interventions=tuple(interventions),
    )


class SafetyFilter:
    """Stateful wrapper around :func:`apply_safety` that remembers the last applied values.

    Like Gymnasium's ``ClipAction`` + ``OrderEnforcing``: :meth:`reset` must be called first
    (with the PLC's working setpoints, for a bumpless start), then :meth:`step` once per cycle.
    After each step the written values become the new ``last``; an input that was not written
    (``NO_SAFE_VALUE``) keeps its previous ``last``, because the PLC still holds it.

    Raises:
        SafetyOrderError: ``step`` before ``reset``.
        ValueError: bad ``limits`` (key differs from name) or bad ``reset`` values.
    """

    def __init__(self, limits: Mapping[str, InputLimit]) -> None:
        for key, lim in limits.items():
            if key != lim.name:
                raise ValueError(
                    f"limits key {key!r} differs from its InputLimit name {lim.name!r}"
                )
        self._limits: Mapping[str, InputLimit] = MappingProxyType(dict(limits))
        self._last: dict[str, float] | None = None

    @property
    def limits(self) -> Mapping[str, InputLimit]:
        """The limits this filter enforces (read-only)."""
        return self._limits

    @property
    def last(self) -> Mapping[str, float]:
        """Read-only copy of the last applied values (empty before :meth:`reset`)."""
        return MappingProxyType(dict(self._last or {}))

    def reset(self, initial: Mapping[str, float]) -> None:
        """Set the last applied values, e.g. the PLC's working setpoints.

        ``initial`` must hold a finite value for every limited input (extra names are ignored).
        A value outside the limits is accepted: the next steps move it back within one move or
        report ``NO_SAFE_VALUE``.

        Raises:
            ValueError: naming every missing input or non-finite value.
        """
        missing = [name for name in self._limits if name not in initial]
        if missing:
            raise ValueError(
                f"SafetyFilter.reset: initial values missing for input(s) {missing}; "
                "give the current setpoint of every limited input"
            )
        values: dict[str, float] = {}
        bad: list[str] = []
        for name in self._limits:
            value = _as_float(initial[name])
            if value is None or not math.isfinite(value):
                bad.append(f"{name}={initial[name]!r}")
            else:
                values[name] = value
        if bad:
            raise ValueError(
                f"SafetyFilter.reset: initial value(s) {', '.join(bad)} are not allowed; "
                "each must be a finite number"
            )
        self._last = values

    def step(
        self,
        proposed: Mapping[str, float] | None,
        *,
        solve_ok: bool,
        data_ok: bool = True,
        data_fresh: bool = True,
    ) -> SafetyOutcome:
        """Apply :func:`apply_safety` against the remembered values and remember the result.

        Raises:
            SafetyOrderError: when :meth:`reset` has not been called yet.
        """
        if self._last is None:
            raise SafetyOrderError(
                "SafetyFilter.step() called in state 'not reset' (no last applied values known); "
                "call SafetyFilter.reset(initial) with the PLC's working setpoints first"
            )
        outcome = apply_safety(
            self._limits,
            self._last,
            proposed,
            solve_ok=solve_ok,
            data_ok=data_ok,
            data_fresh=data_fresh,
        )
        self._last.update(outcome.setpoints)
        return outcome
