"""The true plant's look-ahead (:mod:`hil.plant_ahead`): held inputs integrated several steps
at once give the exact equations' numbers to the integrator's tolerance, and nothing that the
plant must find at its own step is taken from a window: the batch's natural end, a validity
domain excursion, new inputs or parameters."""

from __future__ import annotations

import asyncio
from pathlib import Path
from types import SimpleNamespace
from typing import cast

import numpy as np
import pytest

from controller.clock import SteppedClock
from controller.errors import ScenarioError
from controller.plantfile import build_model
from controller.runtime.site import load_site
from hil.campaign import drive
from hil.campaign.cases import Case
from hil.plant_ahead import lookahead_for
from hil.plant_runner import PlantDomainError, PlantRunner
from hil.rig import HilRig
from hil.servers.memory import MemoryPlcServer

PLANTS = Path(__file__).resolve().parents[2] / "configs" / "plants"
HELD = {"Tsh": 10.0, "Pch": 0.15}


def _pair(lookahead: int = 5, dt: float = 0.05) -> tuple[PlantRunner, PlantRunner]:
    model = build_model(PLANTS / "lyophilizer.yaml")
    return PlantRunner(model, dt), PlantRunner(model, dt, lookahead=lookahead)


def _states(plant: PlantRunner) -> np.ndarray:
    truth = plant.true_state()
    return np.array([*truth.states.values(), *truth.algebraic.values()])


def test_the_lookahead_is_the_scans_per_controller_sample() -> None:
    assert lookahead_for(1.0, 0.2) == 5 and lookahead_for(0.1, 0.1 / 5) == 5
    assert lookahead_for(1.0, 1.0) == 1 and lookahead_for(1.0, 0.3) == 1
    assert lookahead_for(1.0, 0.0) == 1
    with pytest.raises(ScenarioError, match="lookahead must be an integer >= 1, got 0"):
        PlantRunner(build_model(PLANTS / "lyophilizer.yaml"), 0.05, lookahead=0)


def test_held_inputs_come_from_windows_with_the_exact_equations_numbers() -> None:
    single, ahead = _pair()
    for _ in range(20):
        single.advance(HELD)
        ahead.advance(HELD)
        assert ahead.t == single.t
        np.testing.assert_allclose(_states(ahead), _states(single), rtol=1e-6, atol=1e-9)
    assert ahead.ahead.opened >= 3 and ahead.ahead.taken >= 15


def test_inputs_that_change_every_step_open_no_window() -> None:
    """A PLC interlock chattering: a window at each step would be thrown away unused."""
    single, ahead = _pair()
    for k in range(12):
        inputs = {"Tsh": 10.0 if k % 2 else -20.0, "Pch": 0.15}
        single.advance(inputs)
        ahead.advance(inputs)
        assert _states(ahead).tobytes() == _states(single).tobytes()  # every step on its own
    assert ahead.ahead.opened == 0


def test_new_parameters_are_never_taken_from_an_older_window() -> None:
    single, ahead = _pair()
    for plant in (single, ahead):
        plant.advance(HELD)
        plant.advance(HELD)
    assert ahead.ahead.opened == 1
    r0 = ahead.parameters["R0"]
    for plant in (single, ahead):
        plant.set_parameters({"R0": 3 * r0})
        plant.advance(HELD)
    assert ahead.ahead.opened == 2  # the step after the change started a new window
    np.testing.assert_allclose(_states(ahead), _states(single), rtol=1e-6, atol=1e-9)


def test_the_batch_end_is_located_inside_its_step_as_without_the_lookahead() -> None:
    single, ahead = _pair(dt=0.25)
    for _ in range(400):
        if single.finished_at is not None and ahead.finished_at is not None:
            break
        for plant in (single, ahead):
            if plant.finished_at is None:
                plant.advance({"Tsh": 20.0, "Pch": 0.1})
    assert single.finished_at is not None and ahead.finished_at is not None
    assert ahead.ahead.taken > 0
    # not a step's end: the end was located inside the step (a window state was not taken)
    assert ahead.finished_at % 0.25 > 1e-6
    assert ahead.finished_at == pytest.approx(single.finished_at, rel=1e-6)
    assert ahead.end_state is not None
    margin = ahead.model.finish_margin(ahead.end_state.states, ahead.parameters)
    assert margin is not None and abs(margin) < 1e-6


def test_a_domain_excursion_is_reported_at_its_own_step_as_without_the_lookahead() -> None:
    single, ahead = _pair()
    faults = []
    for plant in (single, ahead):
        with pytest.raises(PlantDomainError) as info:
            for _ in range(100):
                plant.advance({"Tsh": 120.0, "Pch": 0.5})
        faults.append(info.value.fault)
    assert ahead.ahead.taken > 0
    (a,), (b,) = faults[0].violations, faults[1].violations
    assert faults[0].t == faults[1].t and a.name == b.name == "Tbot"  # meltback at the bottom
    assert ahead.true_state().outputs["Tbot"] == b.value > 0.0  # kept as it was


# ---------------------------------------------------------------------------------------------
# The rig: campaigns' fast mode looks ahead, the rig that serves a PLC in real time does not
# ---------------------------------------------------------------------------------------------
SITE = Path(__file__).resolve().parents[2] / "configs" / "sites" / "lyophilizer-modbus.yaml"


def _rig(**kwargs: object) -> HilRig:
    site = load_site(SITE)
    clock = SteppedClock()
    return HilRig(site, clock, [MemoryPlcServer(site.tags, clock)], **kwargs)  # type: ignore[arg-type]


def test_the_rig_looks_ahead_one_controller_sample_only_when_asked() -> None:
    ahead = _rig(lookahead=True).plant.ahead
    assert ahead.grid is not None and ahead.steps == 5  # 5 scans per 0.1 h sample
    assert _rig().plant.ahead.grid is None


class _Built(Exception):
    """Raised by the spy once the rig's arguments are seen (the case goes no further)."""


@pytest.mark.parametrize(("mode", "expected"), [("fast", True), ("hil", False)])
def test_a_fast_mode_case_asks_for_it_and_a_hil_mode_case_does_not(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, mode: str, expected: bool
) -> None:
    """The campaign's case driver builds its rig with ``lookahead`` in fast mode only (a spy
    records the argument and stops the case there, before any server starts)."""
    asked: list[bool] = []

    def spy(*args: object, lookahead: bool = False, **kwargs: object) -> HilRig:
        asked.append(lookahead)
        raise _Built

    monkeypatch.setattr(drive, "HilRig", spy)
    case = cast(Case, SimpleNamespace(controller_loss_at=None))
    with pytest.raises(_Built):
        asyncio.run(drive.execute(SITE, case, tmp_path, mode, 1.0))
    assert asked == [expected]
