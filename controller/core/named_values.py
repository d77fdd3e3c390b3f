"""Named physical values at the estimators' API, checked and put in the model's order.

The estimators take mappings keyed by variable name (inputs, measured outputs, states,
parameters) and work on vectors ordered as the model's names. These functions do that
conversion and its checking, for every estimator alike. Each raises
:class:`controller.errors.EstimatorError` naming the missing, unknown or bad value (with
the value); keys a mapping holds beyond the names asked for are ignored.
"""

from __future__ import annotations

import math
from collections.abc import Collection, Mapping
from typing import Any

import numpy as np

from controller.core.estimate import FloatArray
from controller.errors import EstimatorError, unknown_name
from plant_models import PlantModel, Role

__all__ = ["measured", "merged", "value", "vector_of"]


def value(what: str, name: str, raw: Any, model: PlantModel) -> float:
    """``raw`` as a finite float; ``what`` and ``name`` say in the error what it was."""
    try:
        number = float(raw)
    except (TypeError, ValueError) as exc:
        raise EstimatorError(
            f"model {model.name!r}: {what} {name!r} is not a number: {raw!r}"
        ) from exc
    if not math.isfinite(number):
        raise EstimatorError(f"model {model.name!r}: {what} {name!r} is not finite: {number!r}")
    return number


def vector_of(model: PlantModel, role: Role, values: Mapping[str, Any], what: str) -> FloatArray:
    """Order ``values`` as the model's ``role`` names; unknown keys are ignored."""
    names = model.names(role)
    missing = [n for n in names if n not in values]
    if missing:
        raise EstimatorError(
            f"model {model.name!r}: missing {what}(s) {missing}; expected {list(names)}"
        )
    return np.array([value(what, n, values[n], model) for n in names], dtype=float)


def measured(
    model: PlantModel, y: Mapping[str, Any], exclude: Collection[str]
) -> tuple[FloatArray, FloatArray]:
    """The measured outputs (0 where excluded) and the mask of those to use (1/0)."""
    names = model.output_names
    unknown = sorted(set(exclude) - set(names))
    if unknown:
        raise EstimatorError(
            f"model {model.name!r}: cannot exclude "
            + "; ".join(unknown_name("output", n, names) for n in unknown)
        )
    if not exclude:
        return vector_of(model, Role.OUTPUT, y, "measured output"), np.ones(len(names))
    given = {n: y[n] for n in names if n not in exclude and n in y}
    missing = [n for n in names if n not in exclude and n not in y]
    if missing:
        raise EstimatorError(
            f"model {model.name!r}: missing measured output(s) {missing}; "
            f"expected {[n for n in names if n not in exclude]} (excluded: {sorted(exclude)})"
        )
    values = [value("measured output", n, given[n], model) if n in given else 0.0 for n in names]
    return np.array(values, dtype=float), np.array([n not in exclude for n in names], dtype=float)


def merged(
    model: PlantModel, base: Mapping[str, float], given: Mapping[str, float] | None, what: str
) -> dict[str, float]:
    """``base`` with the values ``given`` replacing its own (each checked finite); a name
    ``given`` holds that ``base`` does not is an error."""
    given = given or {}
    unknown = sorted(set(given) - set(base))
    if unknown:
        raise EstimatorError(
            f"model {model.name!r}: " + "; ".join(unknown_name(what, n, base) for n in unknown)
        )
    return {n: value(what, n, given.get(n, v), model) for n, v in base.items()}
