"""What the per-process memos of built controller pieces share: a small LRU dictionary and
the data a plant model instance is made of.

Building a controller's CasADi pieces (the estimator's filter, :mod:`controller.core.ekf_memo`;
the MPC's transcribed problem, :mod:`controller.core.ocp_memo`) costs tens of milliseconds
per build, and every case of a Monte Carlo campaign builds the same controller again. The
memos key a build by *everything it is made of*, before building it, so that a different
configuration can never get another's pieces. Pure: memory only, no I/O.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Any, Generic, TypeVar

from plant_models import PlantModel, is_shipped

__all__ = ["Lru", "model_data"]

K = TypeVar("K")
V = TypeVar("V")


class Lru(Generic[K, V]):
    """A small dictionary that forgets its least recently used entry past ``size``."""

    def __init__(self, size: int) -> None:
        self.size, self.data = size, OrderedDict[K, V]()

    def get(self, key: K) -> V | None:
        value = self.data.get(key)
        if value is not None:
            self.data.move_to_end(key)
        return value

    def put(self, key: K, value: V) -> None:
        self.data[key] = value
        self.data.move_to_end(key)
        while len(self.data) > self.size:
            self.data.popitem(last=False)


def model_data(model: PlantModel) -> dict[str, Any]:
    """Everything ``model`` is made of, as plain data: its class (by name and identity in
    this process), ``smooth``, every variable (bounds and scale after the plant file's
    overrides), every parameter (value, unit, range), the initial state, algebraic guesses
    and nominal inputs. A shipped model (:func:`plant_models.is_shipped`) is made of these
    alone: its class takes nothing else. Any other model's equations are added, serialized
    (a plugin's class may keep more than its parameter data)."""
    cls = type(model)
    ps = model.parameter_set
    data = {
        "class": f"{cls.__module__}.{cls.__qualname__}#{id(cls)}",
        "name": model.name,
        "smooth": bool(model.smooth),
        "variables": [repr(v) for v in model.all_variables.values()],
        "parameters": [repr(p) for p in ps.parameters.values()],
        "initial_state": repr(sorted(ps.initial_state.items())),
        "initial_algebraic": repr(sorted(ps.initial_algebraic.items())),
        "nominal_inputs": repr(sorted(ps.nominal_inputs.items())),
        "bounds": repr(sorted(ps.bounds.items())),
    }
    if not is_shipped(model):
        data["function"] = model.function.serialize()
    return data
