"""The filter's functions are built once per process and configuration (controller.core.ekf_memo).

A second filter of the same configuration builds nothing (no symbolic functions, no code, no
check against CVODES/IDAS) and shares no state with the first; a configuration that differs
(sample time, RK4 steps, estimated parameters, a parameter value, a scale) never gets
another's functions. The hazard is shown first with a key blind to the configuration.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from estimation_runs import controller

from controller.core import ekf_memo, ekf_model
from controller.core.ekf import ExtendedKalmanFilter
from controller.core.ekf_model import AugmentedState
from controller.errors import EstimatorError
from controller.runtime.solver_cache import LibraryCache

#: one noisy-looking sequence of measurements of the freeze dryer's product temperature
LYO_Y = [{"Tbot": -33.0 + 0.4 * k + 0.2 * (-1) ** k} for k in range(6)]


@pytest.fixture(autouse=True)
def fresh_memo() -> Iterator[None]:
    ekf_memo.clear()
    yield
    ekf_memo.clear()


@pytest.fixture
def builds(monkeypatch: pytest.MonkeyPatch) -> list[float]:
    """The sample time of every symbolic build of the filter's functions."""
    seen: list[float] = []
    real = ekf_model.filter_functions

    def counting(aug: AugmentedState, spec: object, dt: float) -> object:
        seen.append(dt)
        return real(aug, spec, dt)  # type: ignore[arg-type]

    monkeypatch.setattr(ekf_memo, "filter_functions", counting)
    return seen


def run(ekf: ExtendedKalmanFilter, steps: int = len(LYO_Y)) -> list[np.ndarray]:
    """The estimated states, parameters and their spreads after each of ``steps`` updates
    (the shelf held at -20 degC), with 1 for an ``ok`` estimate (0 for a gated one)."""
    u = {"Tsh": -20.0, "Pch": 0.1}
    out = []
    for k in range(steps):
        est = ekf.update(None if k == 0 else u, LYO_Y[k])
        values = [*est.states.values(), *est.parameters.values(), *est.state_std.values()]
        out.append(np.array([*values, *est.parameter_std.values(), float(est.ok)]))
    return out


def test_a_second_filter_builds_nothing_and_shares_no_state(builds: list[float]) -> None:
    cfg, model = controller("lyophilizer")
    first = ExtendedKalmanFilter(model, cfg.estimator, cfg.sample_time)
    alone = run(first)
    _, model2 = controller("lyophilizer")  # another case: a new model of the same file
    second = ExtendedKalmanFilter(model2, cfg.estimator, cfg.sample_time)
    assert builds == [cfg.sample_time]  # the second came from the memo
    run(first, 3)  # the first runs on; the second starts where the first started
    again = run(second)
    for a, b in zip(alone, again, strict=True):
        assert np.array_equal(a, b)  # exactly the same numbers, whatever ran before


def test_a_different_configuration_never_gets_anothers_functions(
    builds: list[float], monkeypatch: pytest.MonkeyPatch
) -> None:
    cfg, model = controller("lyophilizer")
    slow = cfg.sample_time * 2
    truth = run(ExtendedKalmanFilter(model, cfg.estimator, slow))  # built alone
    ekf_memo.clear()
    # The hazard: with a key blind to the sample time, the second filter predicts over the
    # first one's sample and estimates other numbers.
    monkeypatch.setattr(ekf_memo, "filter_key", lambda aug, spec, dt: aug.model.name)
    ExtendedKalmanFilter(model, cfg.estimator, cfg.sample_time)
    blind = run(ExtendedKalmanFilter(model, cfg.estimator, slow))
    assert not np.allclose(blind[-1], truth[-1], rtol=1e-6)
    monkeypatch.undo()
    ekf_memo.clear()
    # The real key: each configuration its own functions and its own numbers.
    ExtendedKalmanFilter(model, cfg.estimator, cfg.sample_time)
    again = run(ExtendedKalmanFilter(model, cfg.estimator, slow))
    assert all(np.array_equal(a, b) for a, b in zip(truth, again, strict=True))


def test_the_key_sees_every_part_of_the_configuration() -> None:
    cfg, model = controller("lyophilizer")
    spec, dt = cfg.estimator, cfg.sample_time

    def key(**changes: object) -> str:
        m = changes.pop("model", model)
        s = spec.model_copy(update=changes) if changes else spec
        return ekf_memo.filter_key(AugmentedState.of(m, s), s, dt)  # type: ignore[arg-type]

    base = key()
    _, again = controller("lyophilizer")
    assert key(model=again) == base  # the same file: the same key
    other = {
        "steps": key(integrator_steps=spec.integrator_steps + 1),
        "estimated": key(parameters=("KC",)),
        "noise": key(default_relative_std=0.02),
        "kp": key(
            model=type(model)(model.parameter_set.with_values({"KP": 0.9 * model.parameters["KP"]}))
        ),
        "smooth": key(model=type(model)(model.parameter_set, smooth=not model.smooth)),
        "dt": ekf_memo.filter_key(AugmentedState.of(model, spec), spec, dt * 2),
    }
    assert base not in other.values() and len(set(other.values())) == len(other)


def test_a_refused_prediction_is_refused_every_time(builds: list[float]) -> None:
    cfg, model = controller("cstr")  # one RK4 step is too few for 0.05 h
    spec = cfg.estimator.model_copy(update={"integrator_steps": 1})
    for _ in range(2):  # a failed check is never remembered as passed
        with pytest.raises(EstimatorError, match="integrator_steps = 1 is too few"):
            ExtendedKalmanFilter(model, spec, 0.05)
    assert builds == [0.05]  # built once, checked (and refused) twice


def test_compiled_functions_are_kept_per_library(builds: list[float], tmp_path: Path) -> None:
    cfg, model = controller("lyophilizer")
    cache = LibraryCache(tmp_path / "a")
    first = ExtendedKalmanFilter(model, cfg.estimator, cfg.sample_time, compile=cache)
    generated = cache.generated
    second = ExtendedKalmanFilter(model, cfg.estimator, cfg.sample_time, compile=cache)
    assert first.library is not None and second.library == first.library
    assert cache.generated == generated == 1 and cache.compiled == 1 and builds == [cfg.sample_time]
    # another cache folder is another library: its own code, compiled there, not the memo's
    other = LibraryCache(tmp_path / "b")
    third = ExtendedKalmanFilter(model, cfg.estimator, cfg.sample_time, compile=other)
    assert third.library is not None and Path(third.library).parent == tmp_path / "b"
    assert other.compiled == 1
    plain = run(ExtendedKalmanFilter(model, cfg.estimator, cfg.sample_time))
    for est in (run(second), run(third)):
        for a, b in zip(plain, est, strict=True):
            np.testing.assert_allclose(a, b, rtol=1e-9, atol=1e-12)
