"""Tests of the plant models (plant_models) against their conformance check and MODELS.md.

The integrator tests compare each CasADi model with an *independent* implementation: the
equations of ``../shared/MODELS.md`` written again here in plain numpy/math, with parameter
values read straight from ``configs/plants/<name>.yaml`` (not through the loader) and the
initial states as published in MODELS.md, integrated by scipy with tight tolerances and a
zero-order hold on the inputs.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any, ClassVar

import casadi as ca
import numpy as np
import pytest
import yaml
from scipy.integrate import solve_ivp
from scipy.optimize import brentq

from controller.plantfile import build_model
from plant_models import MODELS, Bioreactor, ModelError, PlantModel, Role
from plant_models.check import check_model

ROOT = Path(__file__).resolve().parents[2]
PLANTS = ROOT / "configs" / "plants"

#: Relative agreement asked of the CasADi integrators (default tolerances) vs. scipy.
REL_TOL = 1e-5
#: scipy's tolerances for the reference solution.
REF_RTOL = 1e-10


def _model(name: str, *, smooth: bool = False) -> PlantModel:
    return build_model(PLANTS / f"{name}.yaml", smooth=smooth)


def _yaml_values(name: str) -> dict[str, float]:
    """Parameter values read directly from the YAML file (independent of the loader)."""
    data = yaml.safe_load((PLANTS / f"{name}.yaml").read_text(encoding="utf-8"))
    return {k: float(v["value"]) for k, v in data["parameters"].items()}


# ---------------------------------------------------------------------------------------------
# Conformance check
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("smooth", [False, True], ids=["exact", "smooth"])
@pytest.mark.parametrize("name", sorted(MODELS))
def test_check_model_passes_for_every_model(name: str, smooth: bool) -> None:
    model = _model(name, smooth=smooth)
    assert isinstance(model, MODELS[name])
    check_model(model)  # raises ModelError on any problem


class _BrokenBioreactor(Bioreactor):
    """Unordered bounds on X (a declaration problem) and a NaN derivative of S (equations)."""

    variables: ClassVar = tuple(
        replace(v, lower=2.0, upper=1.0) if v.name == "X" else v for v in Bioreactor.variables
    )

    def ode(self, x: Any, z: Any, u: Any, p: Any) -> dict[str, Any]:
        rhs = super().ode(x, z, u, p)
        rhs["S"] = rhs["S"] + ca.DM(math.nan)
        return rhs


def test_check_model_lists_every_problem_at_once() -> None:
    model = _BrokenBioreactor(_model("bioreactor").parameter_set)
    with pytest.raises(ModelError) as info:
        check_model(model)
    message = str(info.value)
    assert "'X' has unordered bounds [2.0, 1.0]" in message
    assert "nominal state X=1.0 is outside its bounds" in message
    assert "derivative S is not finite at nominal" in message
    assert "one integrator step from nominal fails" in message
    # a NaN is a finiteness problem, not a (spurious) determinism one: NaN != NaN
    assert "not deterministic" not in message
    # one bullet per problem
    assert message.count("\n  - ") >= 3


# ---------------------------------------------------------------------------------------------
# Published values (MODELS.md) vs. the YAML files
# ---------------------------------------------------------------------------------------------
PUBLISHED: dict[str, dict[str, float]] = {
    "bioreactor": {"mu_m": 0.02, "K_m": 0.05, "K_i": 5.0, "v": 0.004, "Y_p": 1.2, "Y_x": 0.5,
                   "S_in": 200.0},
    "cstr": {"k0_ab": 1.287e12, "k0_ad": 9.043e9, "E_R_ab": 9758.3, "E_R_ad": 8560.0,
             "H_ab": 4.2, "H_bc": -11.0, "H_ad": -41.85, "rho": 0.9342, "Cp": 3.01,
             "Cp_k": 2.0, "A_R": 0.215, "V_R": 10.01, "m_k": 5.0, "Kw": 4032.0, "C_A0": 5.1,
             "T_in": 130.0, "alpha": 1.0, "beta": 1.0},
    "crystallizer": {"cs0": 6.29e-2, "cs1": 2.46e-3, "cs2": -7.14e-6, "cm0": 7.76e-2,
                     "cm1": 2.46e-3, "cm2": -8.10e-6, "rho": 2.66e-12, "kv": 1.5, "kb": 285.0,
                     "b": 1.45, "Eb_R": 7517.0, "kg": 1.44e8, "g": 1.5, "Eg_R": 4859.0},
    "lyophilizer": {"rho_ice": 0.918, "rho_solute": 1.5, "rho_soln": 1.0, "dHs": 678.0,
                    "k_ice": 0.0059, "psub_A": 2.698e10, "psub_B": 6144.96, "Av": 3.8,
                    "Ap": 3.14, "Vfill": 2.0, "cSolid": 0.05, "R0": 1.4, "A1": 16.0, "A2": 0.0,
                    "KC": 2.75e-4, "KP": 8.93e-4, "KD": 0.46, "T_crit": -5.0, "n_vial": 398.0,
                    "a_cap": -0.182, "b_cap": 11.7},
}  # fmt: skip

PUBLISHED_RANGES: dict[str, dict[str, tuple[float, float]]] = {
    "bioreactor": {"Y_x": (0.3, 0.5), "S_in": (180.0, 220.0)},
    "cstr": {"C_A0": (4.5, 5.7), "alpha": (0.95, 1.05), "beta": (0.9, 1.1)},
}

#: Initial states as published in MODELS.md (the reference runs start here).
PUBLISHED_X0: dict[str, dict[str, float]] = {
    "bioreactor": {"X": 1.0, "S": 0.5, "P": 0.0, "V": 120.0},
    "cstr": {"C_a": 0.8, "C_b": 0.5, "T_R": 134.14, "T_K": 130.0},
    "crystallizer": {"C": 0.1743, "mu0": 66.66, "mu1": 1.83e4, "mu2": 5.05e6, "mu3": 1.93e9,
                     "mu0n": 0.867, "mu1n": 0.0, "mu2n": 0.0, "mu3n": 0.0},
    "lyophilizer": {"Lck": 0.0},
}  # fmt: skip


@pytest.mark.parametrize("name", sorted(PUBLISHED))
def test_yaml_values_are_the_published_ones(name: str) -> None:
    values = _yaml_values(name)
    for pname, expected in PUBLISHED[name].items():
        assert values[pname] == pytest.approx(expected, rel=1e-12, abs=0.0), pname
    model = _model(name)
    for pname, (lo, hi) in PUBLISHED_RANGES.get(name, {}).items():
        param = model.parameter_set.parameters[pname]
        assert (param.lower, param.upper) == (lo, hi), pname
    assert model.initial_state == PUBLISHED_X0[name]


# ---------------------------------------------------------------------------------------------
# Independent right-hand sides, straight from MODELS.md (plain numpy / math)
# ---------------------------------------------------------------------------------------------
def bioreactor_rhs(
    x: np.ndarray, u: Sequence[float] | np.ndarray, p: dict[str, float]
) -> np.ndarray:
    X, S, P, V = x
    (feed,) = u
    mu = p["mu_m"] * S / (p["K_m"] + S + S**2 / p["K_i"])
    return np.array(
        [
            mu * X - feed / V * X,
            -mu * X / p["Y_x"] - p["v"] * X / p["Y_p"] + feed / V * (p["S_in"] - S),
            p["v"] * X - feed / V * P,
            feed,
        ]
    )


def cstr_rhs(x: np.ndarray, u: Sequence[float] | np.ndarray, p: dict[str, float]) -> np.ndarray:
    C_a, C_b, T_R, T_K = x
    F, Q_dot = u
    T_abs = T_R + 273.15
    k1 = p["beta"] * p["k0_ab"] * np.exp(-p["E_R_ab"] / T_abs)
    k2 = p["k0_ab"] * np.exp(-p["E_R_ab"] / T_abs)
    k3 = p["k0_ad"] * np.exp(-p["alpha"] * p["E_R_ad"] / T_abs)
    rho_cp = p["rho"] * p["Cp"]
    return np.array(
        [
            F * (p["C_A0"] - C_a) - k1 * C_a - k3 * C_a**2,
            -F * C_b + k1 * C_a - k2 * C_b,
            (k1 * C_a * p["H_ab"] + k2 * C_b * p["H_bc"] + k3 * C_a**2 * p["H_ad"]) / (-rho_cp)
            + F * (p["T_in"] - T_R)
            + p["Kw"] * p["A_R"] * (T_K - T_R) / (rho_cp * p["V_R"]),
            (Q_dot + p["Kw"] * p["A_R"] * (T_R - T_K)) / (p["m_k"] * p["Cp_k"]),
        ]
    )


def crystallizer_rhs(
    x: np.ndarray, u: Sequence[float] | np.ndarray, p: dict[str, float]
) -> np.ndarray:
    C, mu0, mu1, mu2, mu3, mu0n, mu1n, mu2n, mu3n = x
    (T,) = u
    t = T - 273.15
    Cs = p["cs0"] + p["cs1"] * t + p["cs2"] * t**2 + p["dCs"]
    S = max((C - Cs) / Cs, 0.0)
    G = p["kg"] * np.exp(-p["Eg_R"] / T) * S ** p["g"]
    B = p["kb"] * np.exp(-p["Eb_R"] / T) * S ** p["b"] * (mu3 + mu3n)
    return np.array(
        [
            -3 * p["rho"] * p["kv"] * G * (mu2 + mu2n),
            0.0,
            G * mu0,
            2 * G * mu1,
            3 * G * mu2,
            B,
            G * mu0n,
            2 * G * mu1n,
            3 * G * mu2n,
        ]
    )


def _lyo_lpr0(p: dict[str, float]) -> float:
    return (
        p["Vfill"]
        / (p["Ap"] * p["rho_ice"])
        * (p["rho_soln"] - p["cSolid"] * (p["rho_soln"] - p["rho_ice"]) / p["rho_solute"])
    )


def _lyo_terms(Lck: float, Tsub: float, Tsh: float, Pch: float, p: dict[str, float]) -> tuple:
    """(Psub, Rp, Qsub, Qsh, Tbot) of the Pikal model, in MODELS.md's units."""
    Psub = p["psub_A"] * math.exp(-p["psub_B"] / (Tsub + 273.15))
    Kv = p["KC"] + p["KP"] * Pch / (1 + p["KD"] * Pch)
    Rp = p["R0"] + p["A1"] * Lck / (1 + p["A2"] * Lck)
    Qsub = p["dHs"] * (Psub - Pch) * p["Ap"] / Rp / 3600
    Tbot = Tsub + Qsub / (p["Ap"] * p["k_ice"]) * (_lyo_lpr0(p) - Lck)
    Qsh = Kv * p["Av"] * (Tsh - Tbot)
    return Psub, Rp, Qsub, Qsh, Tbot


def lyo_tsub(Lck: float, Tsh: float, Pch: float, p: dict[str, float]) -> float:
    """Solve 0 = Qsub - Qsh for Tsub (monotone increasing in Tsub) by bisection-type brentq."""

    def residual(Tsub: float) -> float:
        _, _, Qsub, Qsh, _ = _lyo_terms(Lck, Tsub, Tsh, Pch, p)
        return Qsub - Qsh

    return float(brentq(residual, -150.0, 50.0, xtol=1e-13, rtol=1e-15, maxiter=200))


def lyo_rhs(x: np.ndarray, u: Sequence[float] | np.ndarray, p: dict[str, float]) -> np.ndarray:
    (Lck,) = x
    Tsh, Pch = u
    Tsub = lyo_tsub(Lck, Tsh, Pch, p)
    Psub, Rp, *_ = _lyo_terms(Lck, Tsub, Tsh, Pch, p)
    dmdt = p["Ap"] / Rp / 1000 * (Psub - Pch) if Psub >= Pch else 0.0  # kg/h per vial
    dLck = (
        dmdt
        * 1000
        / (1 - p["cSolid"] * p["rho_soln"] / p["rho_solute"])
        / (p["Ap"] * p["rho_ice"])
        * (1 - p["cSolid"] * (p["rho_soln"] - p["rho_ice"]) / p["rho_solute"])
    )
    return np.array([dLck])


Rhs = Callable[[np.ndarray, Sequence[float] | np.ndarray, dict[str, float]], np.ndarray]


def reference_run(
    rhs: Rhs,
    x0: np.ndarray,
    inputs: Sequence[Sequence[float]],
    dt: float,
    p: dict[str, float],
    atol: np.ndarray,
    method: str = "LSODA",
) -> np.ndarray:
    """States at every step boundary; inputs held constant over each step (ZOH)."""
    xs = [np.asarray(x0, dtype=float)]
    for u in inputs:
        sol = solve_ivp(
            lambda _t, x, u=u: rhs(x, u, p),
            (0.0, dt),
            xs[-1],
            method=method,
            rtol=REF_RTOL,
            atol=atol,
        )
        assert sol.success, sol.message
        xs.append(sol.y[:, -1])
    return np.array(xs)


def model_run(model: PlantModel, inputs: Sequence[Sequence[float]], dt: float) -> np.ndarray:
    """States at every step boundary from ``model.integrator(dt)`` (ODE models)."""
    step = model.integrator(dt)
    p = model.parameter_vector()
    xs = [model.vector(Role.STATE, model.initial_state)]
    for u in inputs:
        xf, _ = step(xs[-1], np.zeros(0), np.asarray(u, dtype=float), p)
        xs.append(np.asarray(xf, dtype=float).ravel())
    return np.array(xs)


def _crystallizer_inputs() -> list[list[float]]:
    # linear cooling 323.15 -> 303.15 K over 1800 s, held at the start of each 60 s step
    return [[323.15 - 20.0 * (60.0 * k) / 1800.0] for k in range(30)]


#: name -> (rhs, dt, inputs, typical magnitude of each state for scipy's atol)
ODE_CASES: dict[str, tuple[Rhs, float, list[list[float]], list[float]]] = {
    "bioreactor": (bioreactor_rhs, 1.0, [[0.02]] * 150, [1.0, 1.0, 1.0, 100.0]),
    "cstr": (cstr_rhs, 0.005, [[18.83, -4495.7]] * 40, [1.0, 1.0, 100.0, 100.0]),
    "crystallizer": (
        crystallizer_rhs,
        60.0,
        _crystallizer_inputs(),
        [0.1, 1e2, 1e4, 1e7, 1e9, 1e3, 1e5, 1e7, 1e9],
    ),
}


def _relative_error(got: np.ndarray, ref: np.ndarray, floor: np.ndarray) -> np.ndarray:
    """Worst deviation of each state over the run, relative to that state's scale."""
    scale = np.maximum(np.max(np.abs(ref), axis=0), floor)
    return np.max(np.abs(got - ref), axis=0) / scale


@pytest.mark.parametrize("name", sorted(ODE_CASES))
def test_ode_integrator_agrees_with_independent_integration(name: str) -> None:
    rhs, dt, inputs, magnitude = ODE_CASES[name]
    model = _model(name)
    assert list(model.state_names) == list(PUBLISHED_X0[name])
    x0 = np.array(list(PUBLISHED_X0[name].values()))
    ref = reference_run(rhs, x0, inputs, dt, _yaml_values(name), 1e-14 * np.array(magnitude))
    got = model_run(model, inputs, dt)
    assert got.shape == ref.shape
    assert np.all(np.isfinite(got))
    err = _relative_error(got, ref, 1e-12 * np.array(magnitude))
    worst = dict(zip(model.state_names, err.tolist(), strict=True))
    assert np.all(err <= REL_TOL), f"{name}: relative error per state {worst}"
    # the run must actually move every state that the equations move
    moved = np.max(np.abs(ref - ref[0]), axis=0) > 0
    assert moved.sum() >= len(model.state_names) - (1 if name == "crystallizer" else 0)


def test_ode_rhs_agrees_pointwise() -> None:
    """The CasADi right-hand side equals the independent one at a few off-nominal points."""
    rng = np.random.default_rng(0)
    for name, (rhs, _dt, inputs, magnitude) in ODE_CASES.items():
        model = _model(name)
        p = _yaml_values(name)
        x0 = np.array(list(PUBLISHED_X0[name].values()))
        for _ in range(5):
            x = x0 * (1 + 0.1 * rng.standard_normal(x0.size)) + 0.01 * np.array(magnitude)
            u = np.asarray(inputs[rng.integers(len(inputs))], dtype=float)
            ev = model.evaluate(model.as_dict(Role.STATE, x), model.as_dict(Role.INPUT, u))
            got = np.array([ev.xdot[n] for n in model.state_names])
            want = rhs(x, u, p)
            np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-300, err_msg=name)


def _lyo_inputs(hours: float, dt: float) -> list[list[float]]:
    # Pch 0.15 Torr; Tsh from -35 degC at 1 degC/min (60 degC/h) up to +20 degC, then hold;
    # the value at the start of each step is held over the step
    n = round(hours / dt)
    return [[min(-35.0 + 60.0 * k * dt, 20.0), 0.15] for k in range(n)]


def test_lyophilizer_dae_agrees_with_independent_brentq_integration() -> None:
    dt = 0.1
    inputs = _lyo_inputs(3.0, dt)
    p = _yaml_values("lyophilizer")
    x0 = np.array([PUBLISHED_X0["lyophilizer"]["Lck"]])
    ref_L = reference_run(lyo_rhs, x0, inputs, dt, p, np.array([1e-14]))[:, 0]
    # algebraic state and output at the start of each step, with that step's input
    starts = list(zip(ref_L[:-1], inputs, strict=True))
    ref_Tsub = [lyo_tsub(L, Tsh, Pch, p) for L, (Tsh, Pch) in starts]
    ref_Tbot = [
        _lyo_terms(L, T, Tsh, Pch, p)[4]
        for (L, (Tsh, Pch)), T in zip(starts, ref_Tsub, strict=True)
    ]

    model = _model("lyophilizer")
    assert model.is_dae
    step, solve_z = model.integrator(dt), model.algebraic_solver()
    assert solve_z is not None
    pv = model.parameter_vector()
    x = model.vector(Role.STATE, model.initial_state)
    z = model.vector(Role.ALGEBRAIC, model.initial_algebraic)
    got_L, got_Tbot, got_Tsub = [float(x[0])], [], []
    for u in inputs:
        uv = np.asarray(u, dtype=float)
        zc = np.asarray(solve_z(z, x, uv, pv), dtype=float).ravel()
        ev = model.evaluate(
            model.as_dict(Role.STATE, x),
            model.as_dict(Role.INPUT, uv),
            z=model.as_dict(Role.ALGEBRAIC, zc),
        )
        got_Tsub.append(float(zc[0]))
        got_Tbot.append(ev.outputs["Tbot"])
        xf, zf = step(x, zc, uv, pv)
        x, z = np.asarray(xf, dtype=float).ravel(), np.asarray(zf, dtype=float).ravel()
        got_L.append(float(x[0]))

    # the run dries a real fraction of the cake but stays in primary drying
    assert 0.2 < ref_L[-1] < _lyo_lpr0(p)
    L_err = np.max(np.abs(np.array(got_L) - ref_L)) / np.max(ref_L)
    assert L_err <= REL_TOL, f"Lck relative error {L_err:.3g}"
    # temperatures in degC: compare on a 10 degC scale (the model's scale for them)
    Tbot_err = np.max(np.abs(np.array(got_Tbot) - ref_Tbot)) / 10.0
    Tsub_err = np.max(np.abs(np.array(got_Tsub) - ref_Tsub)) / 10.0
    assert Tbot_err <= REL_TOL, f"Tbot relative error {Tbot_err:.3g}"
    assert Tsub_err <= REL_TOL, f"Tsub relative error {Tsub_err:.3g}"


# ---------------------------------------------------------------------------------------------
# do-mpc
# ---------------------------------------------------------------------------------------------
def _names(struct: Any) -> list[str]:
    return [k for k in struct.keys() if k != "default"]  # noqa: SIM118 (casadi struct)


@pytest.mark.filterwarnings("ignore::UserWarning")
@pytest.mark.parametrize("name", sorted(MODELS))
def test_do_mpc_model_builds_with_declared_names(name: str) -> None:
    model = _model(name, smooth=True)
    m = model.do_mpc_model()
    assert m.flags["setup"]
    assert _names(m.x) == list(model.state_names)
    assert _names(m.u) == list(model.input_names)
    assert _names(m.z) == list(model.algebraic_names)
    assert _names(m.p) == list(model.parameter_names)
    assert set(model.expression_names) <= set(_names(m.aux))
    assert m.n_x == len(model.state_names)
    assert m.n_u == len(model.input_names)


# ---------------------------------------------------------------------------------------------
# ParameterSet, determinism
# ---------------------------------------------------------------------------------------------
def test_with_values_rejects_unknown_parameter_names() -> None:
    ps = _model("bioreactor").parameter_set
    with pytest.raises(ModelError) as info:
        ps.with_values({"S_in": 190.0, "no_such_param": 1.0, "also_bogus": 2.0})
    assert "no_such_param" in str(info.value)
    assert "also_bogus" in str(info.value)
    assert ps.parameters["S_in"].value == 200.0  # the original is untouched


def test_with_values_replaces_known_values_only() -> None:
    ps = _model("bioreactor").parameter_set
    changed = ps.with_values({"S_in": 190.0})
    assert changed.parameters["S_in"].value == 190.0
    assert changed.parameters["S_in"].unit == ps.parameters["S_in"].unit
    assert (changed.parameters["S_in"].lower, changed.parameters["S_in"].upper) == (180.0, 220.0)
    assert ps.parameters["S_in"].value == 200.0
    assert {k: v for k, v in changed.values().items() if k != "S_in"} == {
        k: v for k, v in ps.values().items() if k != "S_in"
    }


def _run_steps(model: PlantModel, n: int) -> np.ndarray:
    step = model.integrator(0.01 if model.time_unit == "h" else 60.0)
    x = model.vector(Role.STATE, model.initial_state)
    z = model.vector(Role.ALGEBRAIC, model.initial_algebraic) if model.is_dae else np.zeros(0)
    u = model.vector(Role.INPUT, model.nominal_inputs)
    if model.name == "bioreactor":
        u = np.array([0.02])
    p = model.parameter_vector()
    out = []
    for _ in range(n):
        xf, zf = step(x, z, u, p)
        x, z = np.asarray(xf, dtype=float).ravel(), np.asarray(zf, dtype=float).ravel()
        out.append(np.concatenate([x, z]))
    return np.array(out)


@pytest.mark.parametrize("name", sorted(MODELS))
def test_integrator_runs_are_bit_identical(name: str) -> None:
    model = _model(name)
    a = _run_steps(model, 10)
    b = _run_steps(model, 10)
    c = _run_steps(_model(name), 10)  # a freshly built model and integrator
    assert np.all(np.isfinite(a))
    assert np.array_equal(a, b)
    assert np.array_equal(a, c)


def test_unknown_names_are_worded_once_with_what_is_known() -> None:
    model = _model("bioreactor")
    with pytest.raises(ModelError) as info:
        model.variable("Xx")
    known = sorted(model.all_variables)
    assert str(info.value) == f"model 'bioreactor': unknown variable 'Xx'; known: {known}"
    with pytest.raises(ModelError) as info:
        model.parameter_set.with_values({"bogus": 1.0})
    assert "unknown parameter(s) ['bogus']; known: [" in str(info.value)
