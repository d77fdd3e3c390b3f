"""The twin is pure: its services and the forecast are built from the model, the config
sections and the tag map, with no site object and no file.

The CSTR's shipped controller config and tag map are read first (test setup, the runtime's
job); then every file operation is made to fail (``open``), and the twin's services and a
forecast are built and run: a twin that read or wrote a file, or needed a site, fails here.
"""

from __future__ import annotations

import builtins
import io
import math
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from controller.config import Recipe, RecipeRow
from controller.controllerfile import load_controller
from controller.core.estimate import Estimate
from controller.tags import load_tag_map
from controller.twin.forecast import forecast
from controller.twin.forecast_spec import (
    ForecastCqa,
    ForecastError,
    ForecastSection,
    ForecastSetup,
    ForecastStart,
    Plan,
)
from controller.twin.services import TwinServices

ROOT = Path(__file__).resolve().parents[3]
CONFIGS = ROOT / "configs"
pytestmark = pytest.mark.timeout(120)


@pytest.fixture
def no_files(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[str]]:
    """Every ``open`` raises (and is recorded) while the test runs."""
    tried: list[str] = []

    def refuse(file: Any, *args: Any, **kwargs: Any) -> Any:
        tried.append(str(file))
        raise AssertionError(f"the twin opened a file: {file}")

    monkeypatch.setattr(builtins, "open", refuse)
    monkeypatch.setattr(io, "open", refuse)
    yield tried


@pytest.fixture(scope="module")
def cstr() -> tuple[Any, Any, Any]:
    cfg, model = load_controller(CONFIGS / "controllers" / "cstr.yaml")
    return cfg, model, load_tag_map(CONFIGS / "tags" / "cstr.yaml")


def estimate(model: Any, kw: float) -> Estimate:
    return Estimate(
        states=model.initial_state,
        parameters={**model.parameters, "Kw": kw},
        state_std={n: 0.01 for n in model.state_names},
        parameter_std={"Kw": 28.0, "C_A0": 0.01},
        innovation={"T_R_meas": 0.01},
        algebraic={},
        innovation_std={"T_R_meas": 0.1},
    )


def test_twin_services_from_model_sections_and_tag_map(
    cstr: tuple[Any, Any, Any], no_files: list[str]
) -> None:
    cfg, model, tags = cstr
    twin = TwinServices(model, tags, cfg.monitoring, cfg.estimator.estimated, source="cstr")
    assert twin.enabled and twin.monitor is not None and twin.publisher is not None
    assert twin.alarm_tag == "drift_alarm_word"
    inputs = model.nominal_inputs
    for k in range(5):
        out = twin.update(0.005 * k, estimate(model, 4032.0), inputs, data_good=True)
    assert out.monitor["alarm.active"] == 0.0  # the historian's count: no alarm is active
    # but no chart has run yet (warm-up): the PLC is not told "no drift"
    why = f"drift monitor not running yet: 0 of {len(cfg.monitoring.charts)} charts evaluated"
    for tag in ("drift_alarm_count", "drift_alarm_word"):
        assert tag not in out.publication.values
        assert out.publication.omitted[tag] == why
    assert math.isnan(out.monitor["maintenance.Kw.time_to_threshold"])  # too few points yet
    kw_tags = [n for n, t in tags.publication_tags().items() if t == "Kw"]
    assert kw_tags and all(out.publication.values[n] == pytest.approx(4032.0) for n in kw_tags)
    none = TwinServices(model, tags.model_copy(update={"tags": {}}), None, ())
    assert not none.enabled
    assert no_files == []


def test_forecast_from_model_sections_without_site_or_files(
    cstr: tuple[Any, Any, Any], no_files: list[str]
) -> None:
    cfg, model, _ = cstr
    section = ForecastSection(
        continuous=True,
        batch_duration=0.05,
        max_duration=0.05,
        cqas=(ForecastCqa(name="final_C_b", expression="C_b"),),
    )
    setup = ForecastSetup(model, cfg, section, name="cstr in memory", source="<test>")
    start = ForecastStart(0.25, model.initial_state, {}, model.nominal_inputs)
    table = Recipe(table=(RecipeRow(t=0.0, inputs={"F": 20.0}),))
    fc = forecast(setup, start, [Plan("mpc", "mpc"), Plan("hold", "table", table, "now")])
    mpc, hold = fc.plans
    assert mpc.failed is None and hold.failed is None, (mpc.notes, hold.failed)
    assert mpc.end_time == pytest.approx(0.30) and hold.end_time == pytest.approx(0.30)
    assert set(hold.inputs["F"]) == {20.0}
    assert set(hold.inputs["Q_dot"]) == {model.nominal_inputs["Q_dot"]}
    assert math.isfinite(mpc.cqas["final_C_b"]) and math.isfinite(hold.cqas["final_C_b"])
    assert fc.site == "cstr in memory" and fc.table()[1]["plan"] == "hold"
    with pytest.raises(ForecastError, match="no forecast section") as info:
        forecast(ForecastSetup(model, cfg, None, source="<test>"), start, [Plan("mpc", "mpc")])
    assert info.value.problems[0].file == "<test>"
    assert no_files == []


class RefusingBuilder:
    """A LibraryBuilder that counts the libraries asked for and can build none."""

    def __init__(self) -> None:
        self.asked = 0

    def library(self, code: str) -> Path:
        self.asked += 1
        raise OSError("no compiler in this test")


def test_the_forecast_hands_its_compiler_to_the_mpc(cstr: tuple[Any, Any, Any]) -> None:
    cfg, model, _ = cstr
    section = ForecastSection(continuous=True, batch_duration=0.01, max_duration=0.01)
    builder = RefusingBuilder()
    setup = ForecastSetup(model, cfg, section, source="<test>", compile=builder)
    start = ForecastStart(0.25, model.initial_state, {}, model.nominal_inputs)
    (mpc,) = forecast(setup, start, [Plan("mpc", "mpc")]).plans
    assert builder.asked >= 1  # asked, refused: the MPC runs uncompiled instead
    assert mpc.failed is None and len(mpc.t) == 3
