"""The extended Kalman filter's functions, built once per process and configuration.

Building a filter's CasADi functions (:func:`controller.core.ekf_model.filter_functions`:
the RK4 prediction with its Newton solves, their Jacobians, the correction), generating
their C code, loading the compiled library and checking the prediction against CVODES/IDAS
(:func:`controller.core.ekf_model.check_prediction`) costs ~85 ms for the freeze dryer:
more than the control of a whole Monte Carlo campaign case. Every case of a campaign runs
the same controller configuration, so a worker builds all that once and each new filter
gets its own call buffers and its own state on the same immutable functions.

What the functions depend on is keyed *before* they are built (:func:`filter_key`): all the
model instance is made of (:func:`controller.core.memo.model_data`: its class, variables,
parameters, initial state and nominal inputs, which the prediction is checked at), the
augmented state's scaling, the whole estimator spec, the sample time and this module's
generator version. A configuration that differs in any of them gets functions
of its own, never another's. Compiled functions are kept per key *and* per library: a
:class:`~controller.core.jit.KeyedLibraryBuilder` is asked for the key's library every time
(a dictionary lookup when it knows it), so another cache folder or other compiler flags
are another entry, and a builder that cannot build leaves the filter uncompiled as before.
A builder without ``keyed_library`` gets the code generated (from the memo's functions)
every time, as before. Pure: memory only, no I/O.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass

import casadi as ca
import numpy as np

from controller.config import EstimatorSpec
from controller.core.ekf_model import AugmentedState, filter_functions
from controller.core.jit import KeyedLibraryBuilder, LibraryBuilder
from controller.core.memo import Lru, model_data
from controller.core.prediction import c_code, compiled_or_plain, load, uncompiled

__all__ = [
    "FilterBuild",
    "built_filter",
    "clear",
    "filter_key",
    "mark_checked",
    "was_checked",
]

#: Bumped whenever the filter's functions are built differently: part of every key.
GENERATOR = "ekf_memo 1"
#: Configurations remembered per process (the oldest is dropped first).
MEMO_SIZE = 16

#: key -> the filter's functions, uncompiled (by kind: correct, z_solve, predict, step)
_PLAIN: Lru[str, dict[str, ca.Function]] = Lru(MEMO_SIZE)
#: (key, library) -> the same functions loaded from that compiled library
_LOADED: Lru[tuple[str, str], dict[str, ca.Function]] = Lru(MEMO_SIZE)
#: (key, library or "") whose prediction passed :func:`check_prediction`
_CHECKED: Lru[tuple[str, str], bool] = Lru(MEMO_SIZE)


@dataclass(frozen=True)
class FilterBuild:
    """A filter's functions by kind, the key they were built for, and their library (None:
    uncompiled)."""

    key: str
    functions: dict[str, ca.Function]
    library: str | None


def _floats(values: np.ndarray) -> list[str]:
    """Exact text of each value (``float.hex``): 0.1 and 0.1000000000000001 differ."""
    return [float(v).hex() for v in np.asarray(values, dtype=float).ravel()]


def filter_key(aug: AugmentedState, spec: EstimatorSpec, dt: float) -> str:
    """A digest of everything the filter's functions and their check depend on (see the
    module's docstring)."""
    model = aug.model
    data = {
        "generator": GENERATOR,
        "casadi": ca.CasadiMeta.version(),
        "model": model_data(model),
        "estimated": list(aug.estimated),
        "scale": _floats(aug.scale),
        "y_scale": _floats(aug.y_scale),
        "spec": spec.model_dump(mode="json"),
        "dt": float(dt).hex(),
    }
    text = json.dumps(data, sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()


def _plain(aug: AugmentedState, spec: EstimatorSpec, dt: float, key: str) -> dict[str, ca.Function]:
    """The key's uncompiled functions (built at its first sight in this process)."""
    functions = _PLAIN.get(key)
    if functions is None:
        functions = filter_functions(aug, spec, dt)
        _PLAIN.put(key, functions)
    return dict(functions)


def built_filter(
    aug: AugmentedState, spec: EstimatorSpec, dt: float, builder: LibraryBuilder | None
) -> FilterBuild:
    """The filter's functions for ``aug``, ``spec`` and ``dt``, compiled by ``builder`` when
    ``spec.jit`` (as :func:`controller.core.prediction.compiled_or_plain`: a failed build is
    logged and the filter runs uncompiled), from this process's memo when it has them."""
    key = filter_key(aug, spec, dt)
    if not spec.jit or builder is None:
        return FilterBuild(key, _plain(aug, spec, dt, key), None)
    what = f"model {aug.model.name!r} estimator"
    if not isinstance(builder, KeyedLibraryBuilder):
        functions = _plain(aug, spec, dt, key)
        fns, library = compiled_or_plain(list(functions.values()), True, what, builder)
        return FilterBuild(key, dict(zip(functions, fns, strict=True)), library)
    try:
        return _keyed(aug, spec, dt, key, builder)
    except (OSError, RuntimeError) as exc:
        uncompiled(what, exc)
        return FilterBuild(key, _plain(aug, spec, dt, key), None)


def _keyed(
    aug: AugmentedState, spec: EstimatorSpec, dt: float, key: str, builder: KeyedLibraryBuilder
) -> FilterBuild:
    """The key's library from ``builder`` (its code generated only when the builder does not
    know the key) and the functions loaded from it (once per key and library in this
    process). Raises what the builder or the loading raises."""

    def code() -> str:
        return c_code(list(_plain(aug, spec, dt, key).values()))

    library = str(builder.keyed_library(key, code))
    functions = _LOADED.get((key, library))
    if functions is None:
        plain = _plain(aug, spec, dt, key)
        functions = dict(zip(plain, load([f.name() for f in plain.values()], library), strict=True))
        _LOADED.put((key, library), functions)
    return FilterBuild(key, dict(functions), library)


def was_checked(build: FilterBuild) -> bool:
    """Whether ``build``'s prediction already passed its check in this process."""
    return bool(_CHECKED.get((build.key, build.library or "")))


def mark_checked(build: FilterBuild) -> None:
    """Remember that ``build``'s prediction passed its check (only call it after a pass)."""
    _CHECKED.put((build.key, build.library or ""), True)


def clear() -> None:
    """Forget every filter built in this process (tests)."""
    for memo in (_PLAIN, _LOADED, _CHECKED):
        memo.data.clear()
