"""The limits of one manipulated input, as the safety layer (:mod:`controller.core.safety`)
enforces them."""

from __future__ import annotations

import math
import numbers
from collections.abc import Callable
from dataclasses import dataclass, field

__all__ = ["Grid", "InputLimit"]

#: ``snap(value, lo, hi)``: the value the PLC holds nearest to ``value`` within ``[lo, hi]``,
#: None when it holds none there (made from the setpoint tags by :mod:`controller.ports.wire`)
Grid = Callable[[float, float, float], float | None]


@dataclass(frozen=True)
class InputLimit:
    """Hard limits of one manipulated input (all in the input's engineering unit).

    Attributes:
        name: Input name, as used in the ``limits``/``last``/``proposed`` mappings.
        lower: Lowest value that may ever be written (finite).
        upper: Highest value that may ever be written (finite, ``>= lower``).
        max_move: Largest allowed ``|change|`` per cycle (``> 0``, may be ``math.inf``).
        max_rise: Optional largest allowed increase per cycle (``>= 0``, may be ``math.inf``);
            ``0.0`` means the input must never rise (e.g. a cooling crystallizer).
        max_fall: Optional largest allowed decrease per cycle (``>= 0``, may be ``math.inf``).

    Raises:
        ValueError: on construction, naming the input, the bad value and what is allowed.
    """

    name: str
    lower: float
    upper: float
    max_move: float
    max_rise: float | None = None
    max_fall: float | None = None
    #: the values the PLC can hold (``snap(value, lo, hi)``, see :mod:`controller.ports.wire`)
    grid: Grid | None = field(default=None, compare=False)

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not self.name:
            raise ValueError(f"InputLimit name must be a non-empty string, got {self.name!r}")
        who = f"InputLimit {self.name!r}"
        # Normalise every number to a Python float so the invariant holds exactly in float math.
        lower = _real_or_none(self.lower)
        if lower is None or not math.isfinite(lower):
            raise ValueError(f"{who}: lower={self.lower!r} is not allowed; must be a finite number")
        upper = _real_or_none(self.upper)
        if upper is None or not math.isfinite(upper):
            raise ValueError(f"{who}: upper={self.upper!r} is not allowed; must be a finite number")
        if lower > upper:
            raise ValueError(
                f"{who}: lower={self.lower!r} is above upper={self.upper!r}; lower must be <= upper"
            )
        max_move = _real_or_none(self.max_move)
        if max_move is None or math.isnan(max_move) or max_move <= 0:
            raise ValueError(
                f"{who}: max_move={self.max_move!r} is not allowed; "
                "must be > 0 (math.inf for no move limit)"
            )
        object.__setattr__(self, "lower", lower)
        object.__setattr__(self, "upper", upper)
        object.__setattr__(self, "max_move", max_move)
        for key in ("max_rise", "max_fall"):
            raw = getattr(self, key)
            if raw is None:
                continue
            value = _real_or_none(raw)
            if value is None or math.isnan(value) or value < 0:
                raise ValueError(
                    f"{who}: {key}={raw!r} is not allowed; "
                    "must be None or >= 0 (math.inf for no limit)"
                )
            object.__setattr__(self, key, value)

    @property
    def max_up(self) -> float:
        """Effective largest increase per cycle: ``min(max_move, max_rise)`` (``>= 0``)."""
        if self.max_rise is None:
            return self.max_move
        return min(self.max_move, self.max_rise)

    @property
    def max_down(self) -> float:
        """Effective largest decrease per cycle: ``min(max_move, max_fall)`` (``>= 0``)."""
        if self.max_fall is None:
            return self.max_move
        return min(self.max_move, self.max_fall)

    def contains(self, value: float) -> bool:
        """True when ``value`` is finite and within ``[lower, upper]``."""
        return math.isfinite(value) and self.lower <= value <= self.upper


def _real_or_none(value: object) -> float | None:
    """``float(value)`` for a real number (not bool), None for anything else or on overflow."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        return None
    try:
        return float(value)
    except (OverflowError, ValueError):
        return None
