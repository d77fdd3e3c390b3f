"""The fast SQP's expanded Jacobian (fast_solver.structured_jac_fg, fast_mpc.JAC_FG) and the
deferred code-shaping option that builds it only when code is generated (jit.Deferred).

CasADi's own MX Jacobian of the mapped intervals cost the bioreactor's SQP ~48 us per
evaluation (4 per step), the assembled one ~14 us: the SQP must get the same derivatives.
Building and serializing the expanded function costs ~65 ms: a cached library must not pay it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, NoReturn

import casadi as ca
import numpy as np
import pytest

from controller.controllerfile import load_controller
from controller.core import jit
from controller.core.fast_mpc import JAC_FG, FastController
from controller.core.fast_solver import sqp_options, structured_jac_fg
from plant_models import Role

CONTROLLERS = Path(__file__).resolve().parents[3] / "configs" / "controllers"


def _controller(name: str) -> FastController:
    cfg, model = load_controller(CONTROLLERS / f"{name}.yaml")
    return FastController(cfg, model, name)


def _point(ctl: FastController) -> tuple[np.ndarray, np.ndarray]:
    """The cold guess from the model's initial state, and the NLP parameters there."""
    m = ctl.model
    x0 = m.vector(Role.STATE, m.initial_state)
    p = m.parameter_vector(ctl._params)
    return ctl._cold_guess(x0, p), ctl._parameters(x0, p)


def _called(fn: ca.Function) -> set[str]:
    return {f.name() for f in fn.find_functions()}


@pytest.mark.parametrize("name", ["bioreactor", "lyophilizer", "cstr", "crystallizer"])
def test_the_assembled_derivatives_equal_casadis_own(name: str) -> None:
    ctl = _controller(name)
    w, p = _point(ctl)
    w = w + 0.01 * np.random.default_rng(1).standard_normal(w.shape)  # off the guess
    own = ca.nlpsol("own", "sqpmethod", ctl.ocp.nlp, sqp_options(ctl.config.solver))
    want = own.get_function("nlp_jac_fg")
    got = ctl.sqp.get_function("nlp_jac_fg")  # the SQP's: the assembled one
    assert "stage_jac" in _called(got) and "stage_jac" not in _called(want)
    assert got.sparsity_out(3) == want.sparsity_out(3)
    for a, b in zip(got(w, p), want(w, p), strict=True):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("name", ["bioreactor", "cstr"])
def test_the_assembled_exact_hessian_equals_casadis_own(name: str) -> None:
    ctl = _controller(name)
    assert ctl.config.solver.hessian == "exact"
    w, p = _point(ctl)
    rng = np.random.default_rng(2)
    w = w + 0.01 * rng.standard_normal(w.shape)
    lam_g = rng.standard_normal(ctl.ocp.lbg.shape)  # every row, the scaled ones too
    own = ca.nlpsol("own", "sqpmethod", ctl.ocp.nlp, sqp_options(ctl.config.solver))
    want = own.get_function("nlp_hess_l")
    got = ctl.sqp.get_function("nlp_hess_l")
    assert "stage_hess_l" in _called(got) and "stage_hess_l" not in _called(want)
    assert got.sparsity_out(0) == want.sparsity_out(0)
    a, b = (np.asarray(ca.densify(f(w, p, 0.7, lam_g))) for f in (got, want))
    np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-12 * np.abs(b).max())


def test_a_gauss_newton_sqp_keeps_its_own_hessian() -> None:
    ctl = _controller("lyophilizer")
    assert ctl.ocp.hess_l is not None and "hess_lag" not in ctl._sqp_code()
    got = ctl.sqp.get_function("nlp_hess_l")
    assert "stage_hess_l" not in _called(got) and "stage_hess" in _called(got)


@pytest.mark.parametrize("name", ["bioreactor-robust", "lyophilizer-min-time"])
def test_robust_and_minimum_time_problems_keep_casadis_own(name: str) -> None:
    ctl = _controller(name)
    assert ctl.ocp.jac_fg is None and ctl.ocp.hess_l is None and ctl._sqp_code() == {}
    assert "stage_jac" not in _called(ctl.sqp.get_function("nlp_jac_fg"))


def _boom() -> NoReturn:
    pytest.fail("a deferred option was made for the key")


def test_a_deferred_option_is_keyed_by_its_name_not_made() -> None:
    nlp = _controller("cstr").ocp.nlp
    opts: dict[str, Any] = {"max_iter": 3}
    key = jit.problem_key("sqpmethod", nlp, {**opts, "jac_fg": jit.Deferred(JAC_FG, _boom)}, False)
    other = jit.problem_key("sqpmethod", nlp, {**opts, "jac_fg": jit.Deferred("x", _boom)}, False)
    plain = jit.problem_key("sqpmethod", nlp, opts, False)
    assert key is not None and len({key, other, plain}) == 3


class _Refusing:
    """A builder that cannot build (the solver then runs uncompiled)."""

    def library(self, code: str) -> Path:
        raise OSError("no compiler here")


def test_a_deferred_option_is_made_once_when_the_code_is_needed() -> None:
    ctl = _controller("cstr")
    made: list[ca.Function] = []

    def make() -> ca.Function:
        made.append(structured_jac_fg(ctl.ocp))
        return made[-1]

    extra = {"jac_fg": jit.Deferred(JAC_FG, make)}
    opts = sqp_options(ctl.config.solver)
    solver, path, exc = jit.keyed_nlpsol(_Refusing(), "s", "sqpmethod", ctl.ocp.nlp, opts, extra)
    assert path is None and isinstance(exc, OSError)
    assert len(made) == 1
    assert "stage_jac" in _called(solver.get_function("nlp_jac_fg"))
