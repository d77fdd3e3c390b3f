"""The MPC refuses parameters that are not finite numbers, itself, on both backends.

Before, ``set_parameters(Kw=nan)`` stored the NaN: every later solve failed on it
(``Invalid_Number_Detected``) until a caller happened to pass every parameter again, and a
``step(params={Kw: inf})`` kept the inf for the steps after it. The runtime's EKF already
refuses a non-finite estimate; this is the MPC's own guard, whoever calls it.
"""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from controller.core.mpc import SolveStatus
from controller.core.policy import build_policy
from controller.errors import SolverError
from controller.runtime.site import load_site
from controller.runtime.solver_cache import LibraryCache

ROOT = Path(__file__).resolve().parents[3]
CSTR = ROOT / "configs" / "sites" / "cstr-modbus.yaml"


@pytest.fixture(scope="module", params=["fast", "do-mpc"])
def mpc(request: pytest.FixtureRequest) -> object:
    site = load_site(CSTR)
    cfg = site.controller
    solver = cfg.solver.model_copy(update={"backend": request.param})
    cfg = cfg.model_copy(update={"solver": solver})
    mpc = build_policy(cfg, site.model, compile=LibraryCache(), source=str(CSTR))
    assert (
        type(mpc).__name__ == {"fast": "FastController", "do-mpc": "DoMpcController"}[request.param]
    )
    return mpc


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
def test_set_parameters_refuses_a_non_finite_value_and_keeps_the_old_ones(
    mpc: object, bad: float
) -> None:
    site = load_site(CSTR)
    name = site.model.parameter_names[0]
    before = dict(mpc._params)  # type: ignore[attr-defined]
    with pytest.raises(SolverError, match=f"parameters must be finite numbers; got .*'{name}'"):
        mpc.set_parameters({name: bad})  # type: ignore[attr-defined]
    assert mpc._params == before  # type: ignore[attr-defined]


def test_a_step_with_a_non_finite_parameter_is_invalid_and_leaves_nothing_behind(
    mpc: object,
) -> None:
    site = load_site(CSTR)
    model = site.model
    name = model.parameter_names[0]
    hold = model.nominal_inputs
    mpc.reset(hold)  # type: ignore[attr-defined]
    params = {**model.parameters, name: math.inf}
    bad = mpc.step(0.0, model.initial_state, params, u_prev=hold)  # type: ignore[attr-defined]
    assert bad.status is SolveStatus.INVALID and not bad.ok
    assert bad.inputs == {}  # nothing to write
    assert name in bad.return_status and "inf" in bad.return_status
    good = mpc.step(0.0, model.initial_state, None, u_prev=hold)  # type: ignore[attr-defined]
    assert good.ok, good  # the inf was not kept for the next step
    assert all(math.isfinite(v) for v in good.inputs.values())
