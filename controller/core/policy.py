"""Building the MPC a controller config asks for: :func:`build_policy`.

``solver.backend`` picks the backend: ``do-mpc`` (the reference,
:class:`~controller.core.dompc.DoMpcController`) or ``fast``
(:class:`~controller.core.fast_mpc.FastController`). A caller that wants the fast path's
solvers compiled (``solver.jit``) hands in a :class:`~controller.core.jit.LibraryBuilder` as
``compile`` (the runtime, the HIL runs and the benches pass
:class:`controller.runtime.solver_cache.LibraryCache`); without one they run uncompiled.
"""

from __future__ import annotations

from controller.config import ControllerConfig
from controller.core.dompc import DoMpcController
from controller.core.fast_mpc import FastController
from controller.core.jit import LibraryBuilder
from controller.core.mpc import ModelPredictiveController
from plant_models import PlantModel

__all__ = ["build_policy"]


def build_policy(
    cfg: ControllerConfig,
    model: PlantModel,
    *,
    compile: LibraryBuilder | None = None,
    source: str = "<config>",
) -> ModelPredictiveController:
    """The MPC of ``cfg`` for ``model``, by ``cfg.solver.backend``.

    ``compile`` builds the fast path's libraries (ignored by do-mpc, which never compiles);
    ``source`` names the config in messages. Raises ConfigError when the config's objective
    cannot be built (e.g. a terminal term that depends on inputs).
    """
    if cfg.solver.backend == "fast":
        return FastController(cfg, model, source, compile=compile)
    return DoMpcController(cfg, model, source)
