"""Tests of the estimators: the extended Kalman filter (controller.core.ekf), full-state
feedback (controller.core.full_state) and the one estimator step (controller.core.estimate).

Convergence under plant-model mismatch is checked against a "true" plant: the same model class
with other parameter values, simulated with the exact (non-smooth) equations and seeded
Gaussian measurement noise, while the filter runs on the controller's (smooth) copy at nominal
parameters. Each closed run is simulated once per module.

Also: full-state feedback, the factory, the one step every kind takes, and the compiled
filter's library built by a handed-in builder (none without one). The compiled prediction is
tested in test_ekf_prediction.py, bad data and the innovation gate in test_ekf_bad_data.py.
"""

from __future__ import annotations

import logging
import math
from pathlib import Path

import numpy as np
import pytest
from estimation_runs import LYO_INPUTS, LYO_STEPS, PLANTS, Run, controller, simulate, true_plant

from controller.core.ekf import ExtendedKalmanFilter
from controller.core.estimate import Estimator
from controller.core.estimator import make_estimator
from controller.core.full_state import FullStateFeedback
from controller.core.mhe import MovingHorizonEstimator
from controller.errors import EstimatorError
from controller.plantfile import build_model
from controller.runtime.solver_cache import LibraryCache
from plant_models import Role

# ---------------------------------------------------------------------------------------------
# Bioreactor: S_in and Y_x
# ---------------------------------------------------------------------------------------------
BIO_TRUTH = {"S_in": 190.0, "Y_x": 0.45}
BIO_STEPS = 75


@pytest.fixture(scope="module")
def bioreactor_run() -> Run:
    cfg, model = controller("bioreactor")
    ekf = ExtendedKalmanFilter(model, cfg.estimator, cfg.sample_time)
    plant = true_plant("bioreactor", BIO_TRUTH)
    noise = cfg.estimator.measurement_noise_std
    return simulate(plant, ekf, cfg.sample_time, {"u": 0.05}, BIO_STEPS, noise, seed=7)


def test_bioreactor_states_track_the_true_plant(bioreactor_run: Run) -> None:
    run = bioreactor_run
    for k in range(BIO_STEPS - 20, BIO_STEPS + 1):
        truth = run.states[k]
        assert abs(run.error(k, "X")) <= 0.02 * truth["X"], k
        assert abs(run.error(k, "P")) <= 0.03 * truth["P"], k
        assert abs(run.error(k, "V")) <= 0.005 * truth["V"], k
        assert abs(run.error(k, "S")) <= 0.05, k


def test_bioreactor_parameters_move_toward_the_truth(bioreactor_run: Run) -> None:
    first, last = bioreactor_run.estimates[0], bioreactor_run.estimates[-1]
    assert first.parameters["S_in"] == pytest.approx(200.0, abs=0.5)
    assert first.parameters["Y_x"] == pytest.approx(0.5, abs=1e-3)
    # the initial errors are 10 g/L and 0.05; over 30 seeds the final ones were <= 3.8, 0.0091
    assert abs(last.parameters["S_in"] - BIO_TRUTH["S_in"]) <= 10.0 / 2
    assert abs(last.parameters["Y_x"] - BIO_TRUTH["Y_x"]) <= 0.05 / 4
    assert last.parameter_std["S_in"] < 10.0
    assert last.parameter_std["Y_x"] < 0.05
    assert 180.0 <= last.parameters["S_in"] <= 220.0
    assert 0.3 <= last.parameters["Y_x"] <= 0.5
    fixed = {k: v for k, v in last.parameters.items() if k not in BIO_TRUTH}
    model = build_model(PLANTS / "bioreactor.yaml")
    assert fixed == {k: v for k, v in model.parameters.items() if k not in BIO_TRUTH}


def test_bioreactor_estimate_is_well_formed(bioreactor_run: Run) -> None:
    est = bioreactor_run.estimates[-1]
    assert set(est.states) == set(est.state_std) == {"X", "S", "P", "V"}
    assert set(est.parameter_std) == {"S_in", "Y_x"}
    assert set(est.innovation) == {"X_meas", "S_meas", "P_meas", "V_meas"}
    assert est.algebraic == {}
    values = [*est.state_std.values(), *est.parameter_std.values(), *est.innovation.values()]
    assert all(math.isfinite(v) for v in values)
    assert all(v > 0 for v in [*est.state_std.values(), *est.parameter_std.values()])


# ---------------------------------------------------------------------------------------------
# CSTR: jacket fouling (Kw)
# ---------------------------------------------------------------------------------------------
KW_TRUE = 0.85 * 4032.0
CSTR_STEPS = 40


@pytest.fixture(scope="module")
def cstr_run() -> Run:
    cfg, model = controller("cstr")
    ekf = ExtendedKalmanFilter(model, cfg.estimator, cfg.sample_time)
    plant = true_plant("cstr", {"Kw": KW_TRUE})
    noise = cfg.estimator.measurement_noise_std
    return simulate(plant, ekf, cfg.sample_time, plant.nominal_inputs, CSTR_STEPS, noise, seed=3)


def test_cstr_kw_moves_toward_the_fouled_value(cstr_run: Run) -> None:
    assert cstr_run.estimates[0].parameters["Kw"] == pytest.approx(4032.0, rel=0.01)
    for est in cstr_run.estimates[20:]:  # 0.1 h
        assert abs(est.parameters["Kw"] - KW_TRUE) <= 0.04 * KW_TRUE  # from 17.6% off
        assert est.parameters["C_A0"] == pytest.approx(5.1, abs=0.05)  # no mismatch there
    assert abs(cstr_run.estimates[-1].parameters["Kw"] - KW_TRUE) <= 0.02 * KW_TRUE
    for k in range(20, CSTR_STEPS + 1):
        assert abs(cstr_run.error(k, "T_R")) <= 0.2, k
        assert abs(cstr_run.error(k, "C_b")) <= 0.02, k


# ---------------------------------------------------------------------------------------------
# Lyophilizer (DAE, only Tbot measured): the sublimation front
# ---------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def lyophilizer_run() -> Run:
    """State estimation alone (no parameter states): from a wrong front, the EKF finds it."""
    cfg, model = controller("lyophilizer")
    spec = cfg.estimator.model_copy(
        update={"parameters": (), "process_noise_std": {"Lck": 0.002}, "initial_std": {"Lck": 0.01}}
    )
    ekf = ExtendedKalmanFilter(model, spec, cfg.sample_time, initial_state={"Lck": 0.3})
    plant = build_model(PLANTS / "lyophilizer.yaml")
    noise = cfg.estimator.measurement_noise_std
    return simulate(plant, ekf, cfg.sample_time, LYO_INPUTS, LYO_STEPS, noise, seed=11)


def test_lyophilizer_lck_tracks_the_true_front(lyophilizer_run: Run) -> None:
    run = lyophilizer_run
    assert run.states[0]["Lck"] == 0.0
    assert abs(run.error(0, "Lck")) > 0.1  # one noisy Tbot cannot pin it down at once
    for k in range(10, LYO_STEPS + 1):
        assert abs(run.error(k, "Lck")) <= 0.01, k
        assert run.estimates[k].algebraic["Tsub"] == pytest.approx(
            run.algebraic[k]["Tsub"], abs=0.5
        )
    assert run.states[-1]["Lck"] > 0.15  # the front really moved meanwhile
    assert set(run.estimates[-1].innovation) == {"Tbot"}
    assert run.estimates[-1].parameter_std == {}


@pytest.mark.parametrize("name", ["bioreactor", "crystallizer", "cstr", "lyophilizer"])
def test_every_controller_config_follows_its_own_plant(name: str) -> None:
    """No mismatch, no noise: every configured filter stays on the true trajectory."""
    cfg, model = controller(name)
    ekf = make_estimator(model, cfg.estimator, cfg.sample_time)
    assert isinstance(ekf, ExtendedKalmanFilter)
    plant = build_model(PLANTS / f"{name}.yaml")
    silent = dict.fromkeys(plant.output_names, 0.0)
    run = simulate(plant, ekf, cfg.sample_time, plant.nominal_inputs, 5, silent, seed=0)
    for k, est in enumerate(run.estimates):
        for state in model.state_names:
            tol = 1e-3 * model.variable(state).scale
            assert abs(run.error(k, state)) <= tol, (k, state)
        assert set(est.algebraic) == set(model.algebraic_names)


# ---------------------------------------------------------------------------------------------
# Full-state feedback and the factory
# ---------------------------------------------------------------------------------------------
def test_full_state_feedback_returns_the_given_states_and_nominal_parameters() -> None:
    model = build_model(PLANTS / "bioreactor.yaml")
    fsf = FullStateFeedback(model)
    states = {"X": 1.5, "S": 0.2, "P": 0.1, "V": 121.0}
    est = fsf.update({"u": 0.02}, {}, states)
    assert est.states == states
    assert est.parameters == model.parameters
    assert est.state_std == dict.fromkeys(states, 0.0)
    assert est.parameter_std == {}
    assert est.innovation == {}
    assert est.algebraic == {}
    assert fsf.estimate is est


def test_full_state_feedback_solves_the_algebraics_of_a_dae() -> None:
    model = build_model(PLANTS / "lyophilizer.yaml")
    fsf = FullStateFeedback(model, initial_parameters={"KC": 3.0e-4})
    est = fsf.update(LYO_INPUTS, {}, {"Lck": 0.2})
    assert est.parameters["KC"] == 3.0e-4
    z = model.vector(Role.ALGEBRAIC, est.algebraic)
    p = model.parameter_vector(est.parameters)
    u = model.vector(Role.INPUT, LYO_INPUTS)
    alg = np.asarray(model.function([0.2], z, u, p)[1]).ravel()
    assert np.all(np.abs(alg) < 1e-6)


def test_make_estimator_follows_the_spec_kind() -> None:
    cfg, model = controller("cstr")
    assert isinstance(make_estimator(model, cfg.estimator, cfg.sample_time), ExtendedKalmanFilter)
    spec = cfg.estimator.model_copy(update={"kind": "full_state"})
    assert isinstance(make_estimator(model, spec, cfg.sample_time), FullStateFeedback)


# ---------------------------------------------------------------------------------------------
# One step for every estimator, and the compiled filter's builder
# ---------------------------------------------------------------------------------------------
BIO_Y = {"X_meas": 1.0, "S_meas": 0.5, "P_meas": 0.0, "V_meas": 120.0}
BIO_STATES = {"X": 1.0, "S": 0.5, "P": 0.0, "V": 120.0}


@pytest.mark.parametrize("kind", ["full_state", "ekf", "mhe"])
def test_every_estimator_takes_the_one_step(kind: str) -> None:
    """The pipeline's one call, ``update(u, y, states, exclude=...)``, for every kind."""
    cfg, model = controller("bioreactor")
    spec = cfg.estimator.model_copy(update={"kind": kind, "horizon": 2})
    estimator: Estimator = make_estimator(model, spec, cfg.sample_time)
    first = estimator.update(None, BIO_Y, BIO_STATES, exclude=())
    assert first.ok and estimator.estimate == first
    for _ in range(4):  # the MHE's window (horizon + 1 samples) fills and is solved
        est = estimator.update({"u": 0.0}, BIO_Y, BIO_STATES, exclude=("S_meas",))
        assert est.ok, est.reason
        assert "S_meas" not in est.innovation
    assert set(est.states) == set(model.state_names)
    if kind == "full_state":
        assert est.states == BIO_STATES
    else:
        assert set(est.innovation) == {"X_meas", "P_meas", "V_meas"}
    if isinstance(estimator, MovingHorizonEstimator):
        assert estimator.solves >= 1


def test_full_state_feedback_names_the_missing_states() -> None:
    cfg, model = controller("bioreactor")
    fsf = make_estimator(model, cfg.estimator.model_copy(update={"kind": "full_state"}), 1.0)
    before = fsf.estimate
    with pytest.raises(EstimatorError, match=r"missing state\(s\) \['X', 'S', 'P', 'V'\]"):
        fsf.update(None, BIO_Y)
    with pytest.raises(EstimatorError, match=r"missing state\(s\) \['V'\]"):
        fsf.update(None, BIO_Y, {"X": 1.0, "S": 0.5, "P": 0.0})
    assert fsf.estimate is before


class CountingBuilder:
    """A :class:`controller.core.jit.LibraryBuilder` that records the code it is asked to
    build and builds it with the runtime's cache (or raises OSError when ``broken``)."""

    def __init__(self, *, broken: bool = False) -> None:
        self.codes: list[str] = []
        self.broken = broken

    def library(self, code: str) -> Path:
        self.codes.append(code)
        if self.broken:
            raise OSError("no C compiler here")
        return LibraryCache().library(code)


def test_the_compiled_filter_asks_the_handed_in_builder_for_its_library() -> None:
    cfg, model = controller("cstr")
    builder = CountingBuilder()
    compiled = ExtendedKalmanFilter(model, cfg.estimator, cfg.sample_time, compile=builder)
    assert len(builder.codes) == 1 and "cstr_ekf_step" in builder.codes[0]
    assert compiled.library is not None and Path(compiled.library).exists()
    plain = ExtendedKalmanFilter(model, cfg.estimator, cfg.sample_time)
    assert plain.library is None  # no builder: the same functions, uncompiled
    off = cfg.estimator.model_copy(update={"jit": False})
    assert ExtendedKalmanFilter(model, off, cfg.sample_time, compile=builder).library is None
    assert len(builder.codes) == 1  # jit off: the builder is not asked
    y = {"C_a_meas": 0.9, "C_b_meas": 0.5, "T_R_meas": 134.0, "T_K_meas": 130.0}
    for u in (None, model.nominal_inputs, model.nominal_inputs):
        a, b = compiled.update(u, y), plain.update(u, y)
        assert a.ok and b.ok, (a.reason, b.reason)
        for name in model.state_names:
            assert a.states[name] == pytest.approx(b.states[name], rel=1e-9, abs=1e-12)


def test_a_builder_that_fails_leaves_the_filters_uncompiled_and_says_so(
    caplog: pytest.LogCaptureFixture,
) -> None:
    cfg, model = controller("bioreactor")
    spec = cfg.estimator.model_copy(update={"kind": "mhe", "horizon": 2})
    builder = CountingBuilder(broken=True)
    with caplog.at_level(logging.WARNING):
        mhe = make_estimator(model, spec, cfg.sample_time, compile=builder)
    assert isinstance(mhe, MovingHorizonEstimator)
    assert len(builder.codes) == 2  # the filter's library, then the window solver's
    assert mhe.library is None and mhe.mhe_library is None
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 2 and all("no C compiler here" in w for w in warnings)
    assert mhe.update(None, BIO_Y).ok
