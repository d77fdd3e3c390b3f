"""The estimator a controller config asks for: :func:`make_estimator`.

The family, one module each: the value and the step interface
(:mod:`controller.core.estimate`), full-state feedback (:mod:`controller.core.full_state`),
the extended Kalman filter (:mod:`controller.core.ekf`, its CasADi functions in
:mod:`controller.core.ekf_model`) and moving-horizon estimation on top of it
(:mod:`controller.core.mhe`). Every one takes the same step,
``update(u_applied, y, states=None, *, exclude=())``.

Pure computing: a caller that wants the filters compiled hands in a
:class:`controller.core.jit.LibraryBuilder` (``compile``); without one they run as
uncompiled CasADi functions (same results, slower).
"""

from __future__ import annotations

from collections.abc import Mapping

from controller.config import EstimatorSpec
from controller.core.ekf import ExtendedKalmanFilter
from controller.core.estimate import Estimator
from controller.core.full_state import FullStateFeedback
from controller.core.jit import LibraryBuilder
from controller.core.mhe import MovingHorizonEstimator
from plant_models import PlantModel

__all__ = ["make_estimator"]


def make_estimator(
    model: PlantModel,
    spec: EstimatorSpec,
    sample_time: float,
    initial_state: Mapping[str, float] | None = None,
    initial_parameters: Mapping[str, float] | None = None,
    *,
    compile: LibraryBuilder | None = None,
) -> Estimator:
    """The estimator ``spec.kind`` asks for: ``full_state`` (:class:`FullStateFeedback`),
    ``mhe`` (:class:`MovingHorizonEstimator`, which is an :class:`ExtendedKalmanFilter`)
    or ``ekf``.

    ``sample_time`` is in the model's time unit. ``compile`` builds the compiled filter's
    libraries (None: uncompiled). Raises EstimatorError for bad arguments (see each kind).
    """
    if spec.kind == "full_state":
        return FullStateFeedback(model, initial_parameters, initial_state)
    if spec.kind == "mhe":
        return MovingHorizonEstimator(
            model, spec, sample_time, initial_state, initial_parameters, compile=compile
        )
    return ExtendedKalmanFilter(
        model, spec, sample_time, initial_state, initial_parameters, compile=compile
    )
