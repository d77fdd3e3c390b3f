"""What an estimator gives and the one step every estimator takes.

:class:`Estimate` is the value an estimator hands the policy, the twin and the records;
:class:`Estimator` is the step interface the control pipeline calls once per cycle,
the same for every kind (:class:`~controller.core.full_state.FullStateFeedback`,
:class:`~controller.core.ekf.ExtendedKalmanFilter`,
:class:`~controller.core.mhe.MovingHorizonEstimator`), so the caller needs no branch on
the kind. :func:`controller.core.estimator.make_estimator` builds the one a config asks for.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np
import numpy.typing as npt

__all__ = ["Estimate", "Estimator", "FloatArray"]

#: Float vectors and matrices of the estimators (scaled or physical, as each says).
FloatArray = npt.NDArray[np.float64]


@dataclass(frozen=True)
class Estimate:
    """One estimate, all in physical units.

    ``parameters`` holds every model parameter (the estimated ones replaced by their
    estimates); ``parameter_std`` only the estimated ones. ``innovation`` is ``y - y_pred``
    per measured output (empty for full-state feedback and before the first correction),
    ``innovation_std`` its predicted standard deviation ``sqrt(diag(H P H' + R))``, so that
    ``innovation / innovation_std`` is a standard normal residual while the model holds;
    both are given for rejected outputs too (excluded ones are left out).
    ``algebraic`` holds consistent algebraic states for DAEs (empty for ODEs).
    ``rejected``: the outputs the innovation gate kept out of this correction.
    ``ok`` is False when the estimator failed this cycle (``reason`` says why): the states
    are then the last good ones, held, and must not be acted on.
    """

    states: Mapping[str, float]
    parameters: Mapping[str, float]
    state_std: Mapping[str, float]
    parameter_std: Mapping[str, float]
    innovation: Mapping[str, float]
    algebraic: Mapping[str, float]
    innovation_std: Mapping[str, float] = field(default_factory=dict)
    rejected: tuple[str, ...] = ()
    ok: bool = True
    reason: str = ""


class Estimator(Protocol):
    """One estimator step per sample, the same call for every kind.

    ``update(u_applied, y, states, exclude=...)``: ``u_applied`` are the inputs that were
    in place over the sample that just ended (None on the first call: nothing to predict
    over), ``y`` the measured outputs by name, ``states`` the measured full state (used by
    full-state feedback, which needs it; ignored by the others), ``exclude`` the outputs
    not to use this cycle (bad quality; their values may then be missing). Returns the new
    estimate, which is not ``ok`` when the estimator failed (see each kind). Raises
    :class:`controller.errors.EstimatorError` for bad arguments only: a missing, unknown
    or non-finite value, named.
    """

    def update(
        self,
        u_applied: Mapping[str, float] | None,
        y: Mapping[str, float],
        states: Mapping[str, float] | None = None,
        *,
        exclude: Collection[str] = (),
    ) -> Estimate: ...

    @property
    def estimate(self) -> Estimate:
        """The current estimate (the prior, before the first ``update``)."""
        ...
