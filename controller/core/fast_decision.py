"""The fast MPC's Decision of a solution: reading the solved decision vector.

:class:`DecisionReader` holds what :class:`controller.core.fast_mpc.FastController` computes
once to read a solution on its hot path (names, scales, input limits as Python floats, the
slack indices) and builds the :class:`~controller.core.mpc.Decision`. Pure computing.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import numpy as np

from controller.config import ControllerConfig
from controller.core.fast_solver import input_limits
from controller.core.mpc import ACCEPTED_STATUSES, Decision, SolveStatus
from controller.core.ocp import Transcription
from plant_models import PlantModel, Role


class DecisionReader:
    """Reads a solution of ``ocp`` into a Decision (constants computed once)."""

    def __init__(self, config: ControllerConfig, model: PlantModel, ocp: Transcription) -> None:
        self.ocp = ocp
        self.sample_time = config.sample_time
        self.x_names, self.u_names = model.state_names, model.input_names
        self.xsc, self.usc = model.scales(Role.STATE), model.scales(Role.INPUT)
        self.zsc = model.scales(Role.ALGEBRAIC)
        self.is_dae = model.is_dae
        lo, hi = input_limits(config, model)
        # As Python floats: a check of a few inputs costs less than numpy's calls.
        self.u_limits = list(zip(lo.tolist(), hi.tolist(), strict=True))
        n_steps, n_soft = ocp.eps_idx.shape  # n_soft may be 0: no soft constraints
        eps_all = ocp.scenario_index(ocp.eps_idx).reshape(ocp.n_scenarios * n_steps, n_soft)
        self.eps_idx = ocp.eps_idx if ocp.n_scenarios == 1 else eps_all
        # Every state's, input's and slack's trajectory gathered and scaled in one numpy
        # call each (a trajectory a contiguous row): (nx, N + 1), (nu, N), (n_soft, steps).
        rows = (ocp.x_idx.T, ocp.u_idx.T, self.eps_idx.T)
        self.gather = np.concatenate([r.ravel() for r in rows])
        scales = (self.xsc, self.usc, ocp.eps_scale)
        pairs = zip(scales, rows, strict=True)
        self.scale = np.concatenate([np.repeat(sc, r.shape[1]) for sc, r in pairs])
        self.shapes = [r.shape for r in rows]
        self.ends = np.cumsum([r.size for r in rows]).tolist()

    def __call__(
        self,
        t: float,
        sol: Mapping[str, np.ndarray],
        stats: Mapping[str, Any],
        elapsed: float,
        fallback: str | None,
        note: str = "",
    ) -> tuple[Decision, np.ndarray, np.ndarray | None]:
        """The Decision of a solution, its first move as a vector (input order) and, for a
        successful DAE solve, the first interval's algebraic state (physical; else None).
        ``fallback`` is the SQP's status when IPOPT produced the solution; ``note`` is
        appended to the return status."""
        o = self.ocp
        w = sol["x"]
        vals = w[self.gather] * self.scale
        (x_shape, u_shape, eps_shape), (nxs, nus, _) = self.shapes, self.ends
        xs = vals[:nxs].reshape(x_shape)
        us = vals[nxs:nus].reshape(u_shape)
        u0 = us[:, 0]
        status_text = str(stats.get("return_status", "unknown"))
        u0_list = u0.tolist()
        inputs = dict(zip(self.u_names, u0_list, strict=True))
        # False for NaN too (every comparison with NaN is)
        within = all(lo <= v <= hi for v, (lo, hi) in zip(u0_list, self.u_limits, strict=True))
        status = SolveStatus.SUCCESS
        if not stats.get("success", False) and status_text not in ACCEPTED_STATUSES:
            status = SolveStatus.FAILED
        elif not within:
            status, status_text = (
                SolveStatus.INVALID,
                f"{status_text}; input outside limits {inputs}",
            )
        if fallback is not None:
            status_text = f"{status_text} (IPOPT fallback; SQP: {fallback})"
        status_text += note
        eps = vals[nus:].reshape(eps_shape)  # robust: the largest slack over every scenario
        slack = dict(zip(o.soft_names, eps.max(axis=1).tolist(), strict=True))
        z_first = None
        if self.is_dae and status is SolveStatus.SUCCESS:
            z_first = w[o.z_idx[0, : self.zsc.shape[0]]] * self.zsc
        decision = Decision(
            t=t,
            inputs=inputs,
            status=status,
            return_status=status_text,
            iterations=int(stats.get("iter_count", -1)),
            solve_time_s=elapsed,
            objective=float(sol["f"][0]),
            predicted_states=dict(zip(self.x_names, xs, strict=True)),
            predicted_inputs=dict(zip(self.u_names, us, strict=True)),
            soft_slack=slack,
            fallback=fallback is not None,
            end_time=(
                t + float(w[o.t_end_idx]) * self.sample_time
                if o.t_end_idx is not None
                else math.nan
            ),
        )
        return decision, u0, z_first
