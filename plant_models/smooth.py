"""Smooth stand-ins for non-smooth terms, for gradient-based optimizers.

The "true plant" uses the exact form (``smooth=False``); the optimizer's copy of the same
model uses the smooth one, as MODELS.md asks for the crystallizer's supersaturation.
"""

from __future__ import annotations

from typing import Any

import casadi as ca


def positive_part(value: Any, *, smooth: bool, eps: float) -> Any:
    """max(value, 0); smooth: 0.5 * (value + sqrt(value^2 + eps^2)), within eps/2 of it."""
    if smooth:
        return 0.5 * (value + ca.sqrt(value**2 + eps**2))
    return ca.fmax(value, 0)
