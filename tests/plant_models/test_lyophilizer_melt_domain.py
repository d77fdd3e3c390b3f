"""The freeze dryer's validity domain bounds the vial-bottom temperature (Tbot <= 0 degC):
the frozen layer is ice down to the bottom, its warmest point. An output or expression bound
is declared in ``PlantModel.expression_domain`` and reported by ``validity_violations``.
Failed on the code whose domain bounded Tsub alone (no ``expressions`` to check)."""

from __future__ import annotations

import math
from collections.abc import Mapping
from pathlib import Path
from typing import ClassVar

import pytest

from controller.plantfile import build_model
from plant_models.check import check_model
from plant_models.errors import ModelError

PLANTS = Path(__file__).resolve().parents[2] / "configs" / "plants"


def test_the_lyophilizer_bounds_tbot_at_zero() -> None:
    model = build_model(PLANTS / "lyophilizer.yaml")
    assert model.expression_domain["Tbot"][:2] == (-math.inf, 0.0)
    state, alg = {"Lck": 0.3}, {"Tsub": -3.0}
    assert model.validity_violations(state, alg, expressions={"Tbot": -0.5}) == []
    (v,) = model.validity_violations(state, alg, expressions={"Tbot": 0.4})
    assert (v.name, v.value, v.upper, v.unit) == ("Tbot", 0.4, 0.0, "degC")
    assert "meltback" in v.describe() and "above 0 degC" in v.describe()
    (nan,) = model.validity_violations(state, alg, expressions={"Tbot": math.nan})
    assert nan.name == "Tbot"


def test_inputs_are_reported_against_their_actuator_range() -> None:
    model = build_model(PLANTS / "lyophilizer.yaml")
    found = model.validity_violations({}, inputs={"Tsh": -80.0, "Pch": 0.15})
    assert [(v.name, v.lower, v.upper) for v in found] == [("Tsh", -45.0, 120.0)]
    assert "actuator's physical range" in found[0].describe()


def test_check_model_accepts_the_declared_expression_domain() -> None:
    check_model(build_model(PLANTS / "lyophilizer.yaml"))


def test_check_model_refuses_a_bound_on_an_unknown_expression() -> None:
    base = build_model(PLANTS / "lyophilizer.yaml")

    class Misnamed(type(base)):  # type: ignore[misc]
        expression_domain: ClassVar[Mapping[str, tuple[float, float, str]]] = {
            "Tbottom": (-math.inf, 0.0, "a typo")
        }

    with pytest.raises(ModelError, match="expression_domain names 'Tbottom'"):
        check_model(Misnamed(base.parameter_set))
