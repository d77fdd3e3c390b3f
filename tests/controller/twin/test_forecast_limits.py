"""The what-if forecast judges its CQAs and never corrects the model's truth.

Seen by a reviewer: a plan of Tsh 120 degC / Pch 0.05 Torr forecast a margin to collapse of
-0.5 degC (the product collapses) with the status ``ok``; a hotter one took the product past
0 degC (meltback, where the model's equations no longer hold) and was ``ok`` too, its states
clipped into their bounds after every step. A CQA with limits is now judged (status
``outside limits``), and a plan that leaves the model's validity domain fails there.
"""

from __future__ import annotations

import math

import pytest
from test_forecast import batch, recipe_plan, setup_of

from controller.config import Recipe, RecipeRow
from controller.twin.forecast import forecast
from controller.twin.forecast_spec import ForecastCqa, ForecastStart, Plan

pytestmark = pytest.mark.timeout(120)


def _start() -> ForecastStart:
    b = batch("lyophilizer")
    return ForecastStart(3.5, {"Lck": 0.35}, b.true.parameters, {"Tsh": 20.0, "Pch": 0.12})


def _table(name: str, tsh: float, pch: float) -> Plan:
    return Plan(name, "table", Recipe(table=(RecipeRow(t=0.0, inputs={"Tsh": tsh, "Pch": pch}),)))


def test_a_plan_that_collapses_the_product_is_outside_limits() -> None:
    b = batch("lyophilizer")
    hot, recipe = forecast(
        setup_of(b.site), _start(), [_table("hot", 120.0, 0.05), recipe_plan(b)]
    ).plans
    assert hot.failed is None and hot.finished
    margin = hot.cqas["min_margin_to_collapse"]
    assert margin < 0.0  # the situation: the product passes T_crit
    assert hot.status == f"outside limits: min_margin_to_collapse {margin:.7g} not >= 0"
    assert hot.outside == (f"min_margin_to_collapse {margin:.7g} not >= 0",)
    # the check could pass: the site's own recipe keeps its margin
    assert recipe.cqas["min_margin_to_collapse"] > 0.0 and recipe.status == "ok"


def test_a_plan_past_meltback_fails_where_the_equations_stop_holding() -> None:
    b = batch("lyophilizer")
    (pf,) = forecast(setup_of(b.site), _start(), [_table("meltback", 120.0, 0.3)]).plans
    assert pf.failed is not None and not pf.finished
    assert "left its validity domain" in pf.failed and "Tbot" in pf.failed
    assert "meltback" in pf.failed and "nothing is corrected" in pf.failed
    assert all(math.isnan(v) for v in pf.cqas.values())
    assert pf.status.startswith("failed: t=3.")
    # what was simulated stayed inside the domain: nothing beyond it is shown as a result
    assert max(pf.expressions["Tbot"]) <= 1e-6


def test_cqa_limits_are_judged_at_both_ends_and_undetermined_values_are_not_within() -> None:
    both = ForecastCqa(name="c", expression="x", lower=1.0, upper=2.0)
    assert both.outside(1.5) is None
    assert both.outside(0.5) == "c 0.5 not in [1, 2]"
    assert both.outside(2.5) == "c 2.5 not in [1, 2]"
    assert both.outside(math.nan) == "c cannot be told (nan), limit in [1, 2]"
    # as many digits as tell a value from its limit (a review: "3.75 not <= 3.75")
    assert ForecastCqa(name="b", expression="X", upper=3.75).outside(3.7500001) == (
        "b 3.7500001 not <= 3.75"
    )
    assert ForecastCqa(name="b", expression="X", upper=1234567.5).outside(1234568.0) == (
        "b 1234568 not <= 1234567.5"
    )
    both_close = ForecastCqa(name="b", expression="X", lower=1.25, upper=1.2500001)
    assert both_close.outside(-0.0) == "b -0 not in [1.25, 1.2500001]"
    free = ForecastCqa(name="c", expression="x")
    assert free.outside(math.nan) is None and free.limits() == "not judged"
    with pytest.raises(ValueError, match="lower 3 is above upper 2"):
        ForecastCqa(name="c", expression="x", lower=3.0, upper=2.0)


@pytest.mark.parametrize("name", ["lyophilizer", "bioreactor", "crystallizer", "cstr"])
def test_the_shipped_sites_own_plans_are_within_their_limits(name: str) -> None:
    """The check could fail the other way: the bioreactor's MPC plan rides on its soft
    constraint X <= 3.7 (3.700011), which the site had as the CQA's limit, so every forecast
    of the shipped site said "outside limits"; the limit is the OQ's 3.75 (the interlock)."""
    from test_forecast import true_mid_start

    b = batch(name)
    start = true_mid_start(name)
    plans = [recipe_plan(b)] + ([Plan("mpc", "mpc")] if name == "bioreactor" else [])
    for pf in forecast(setup_of(b.site), start, plans).plans:
        assert pf.status == "ok", (pf.plan.name, pf.status, pf.cqas)
