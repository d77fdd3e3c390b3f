"""An estimate outside the model's validity domain is never ``ok`` (controller.core.ekf).

The freeze dryer's dried cake cannot be thicker than the frozen product was (``Lck <=
Lpr0``): a bound that depends on the parameters, which the static ``Variable`` bounds
(``0 <= Lck <= 5 cm``) do not see. In the Monte Carlo OQ the filter's front estimate ran past
``Lpr0`` while the MPC kept computing setpoints from it (the model's Tbot below its own
sublimation front there). The first tests show the gap; the others that the filter now says
so, keeps the estimate as it is (never corrected to fit) and that the pipeline does not
decide on it.
"""

from __future__ import annotations

from collections.abc import Mapping

import pytest
from estimation_runs import controller

from controller.config import ControllerConfig
from controller.core.ekf import ExtendedKalmanFilter
from controller.core.pipeline import ControlPipeline, input_limits
from plant_models import PlantModel
from plant_models.lyophilizer import Lyophilizer

TBOT = {"Tbot": -30.0}


@pytest.fixture(scope="module")
def lyo() -> tuple[ControllerConfig, PlantModel, float]:
    cfg, model = controller("lyophilizer")
    return cfg, model, float(model.lpr0(model.parameters))


def test_the_static_bounds_alone_accept_a_cake_thicker_than_the_product(
    lyo: tuple[ControllerConfig, PlantModel, float],
) -> None:
    _, model, lpr0 = lyo
    past = {"Lck": lpr0 + 0.1}
    assert model.validity_violations(past) == []  # the gap: 0 <= Lck <= 5 cm holds
    found = model.validity_violations(past, parameters=model.parameters)
    assert [v.name for v in found] == ["Lck"]
    assert found[0].upper == pytest.approx(lpr0)
    assert "Lpr0" in found[0].describe() and f"{lpr0 + 0.1:.6g}" in found[0].describe()
    assert model.validity_violations({"Lck": lpr0 - 0.1}, parameters=model.parameters) == []


def test_the_bound_follows_the_parameters(lyo: tuple[ControllerConfig, PlantModel, float]) -> None:
    _, model, lpr0 = lyo
    fuller = {**model.parameters, "Vfill": 1.5 * model.parameters["Vfill"]}
    thicker = float(model.lpr0(fuller))
    assert thicker > lpr0
    mid = {"Lck": (lpr0 + thicker) / 2}
    assert model.validity_violations(mid, parameters=model.parameters)
    assert model.validity_violations(mid, parameters=fuller) == []


@pytest.mark.parametrize("past", [0.05, 0.5])
def test_an_estimate_past_the_frozen_product_is_not_ok_and_kept(
    lyo: tuple[ControllerConfig, PlantModel, float], past: float
) -> None:
    cfg, model, lpr0 = lyo
    ekf = ExtendedKalmanFilter(
        model, cfg.estimator, cfg.sample_time, initial_state={"Lck": lpr0 + past}
    )
    est = ekf.update(None, TBOT)
    assert not est.ok
    assert "validity domain" in est.reason and "Lck" in est.reason and "Lpr0" in est.reason
    assert est.states["Lck"] > lpr0  # reported as it is, never clipped to fit
    assert ekf.failures == 1


def test_an_estimate_inside_the_domain_stays_ok(
    lyo: tuple[ControllerConfig, PlantModel, float],
) -> None:
    cfg, model, lpr0 = lyo
    ekf = ExtendedKalmanFilter(model, cfg.estimator, cfg.sample_time, initial_state={"Lck": 0.3})
    est = ekf.update(None, TBOT)
    assert est.ok, est.reason
    assert 0.0 < est.states["Lck"] < lpr0


class _Spy:
    """A policy that counts the decisions asked of it (it would propose the working inputs)."""

    def __init__(self) -> None:
        self.asked = 0

    def step(self, t, x_hat, params=None, u_prev=None):  # type: ignore[no-untyped-def]
        self.asked += 1
        raise AssertionError(f"decided on {dict(x_hat)}")

    def reset(self, u_prev) -> None:  # type: ignore[no-untyped-def]
        pass


def test_the_pipeline_holds_instead_of_deciding_on_it(
    lyo: tuple[ControllerConfig, PlantModel, float],
) -> None:
    cfg, model, lpr0 = lyo
    ekf = ExtendedKalmanFilter(
        model, cfg.estimator, cfg.sample_time, initial_state={"Lck": lpr0 + 0.2}
    )
    spy = _Spy()
    pipeline = ControlPipeline(model, ekf, spy, input_limits(cfg))
    pipeline.start({"Tsh": -25.0, "Pch": 0.1})
    result = pipeline.step(0.0, TBOT)
    assert spy.asked == 0
    assert result.estimator_failed and "Lpr0" in result.decision.return_status
    assert not result.decision.ok
    assert result.outcome.held
    assert dict(result.outcome.setpoints) == {"Tsh": -25.0, "Pch": 0.1}  # the last safe ones


class _Loose(Lyophilizer):
    """A model whose parameter-dependent bound is wider than its static one (Lck <= 5 cm)."""

    def state_bounds(self, p: Mapping[str, float]) -> dict[str, tuple[float, float, str]]:
        return {"Lck": (0.0, 10.0, "a looser bound")}


def test_a_parameter_bound_never_widens_the_static_domain(
    lyo: tuple[ControllerConfig, PlantModel, float],
) -> None:
    _, model, _ = lyo
    loose = _Loose(model.parameter_set)
    found = loose.validity_violations({"Lck": 6.0}, parameters=loose.parameters)
    assert [(v.name, v.upper, v.note) for v in found] == [("Lck", 5.0, "")]
    assert "looser" not in found[0].describe()
