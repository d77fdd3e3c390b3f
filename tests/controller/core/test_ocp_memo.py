"""The fast MPC's problem is transcribed once per process and configuration
(controller.core.ocp_memo): a second controller of the same configuration transcribes
nothing, has its own copy of the problem's arrays (a minimum-time controller moves its own
bounds in place: shown first with the copies left out) and decides as the first one did; a
configuration or model that differs gets a problem of its own.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from controller.config import ControllerConfig
from controller.controllerfile import load_controller
from controller.core import ocp_memo
from controller.core.fast_mpc import FastController
from controller.core.policy import build_policy
from plant_models import PlantModel

ROOT = Path(__file__).resolve().parents[3]
LYO = ROOT / "configs" / "controllers" / "lyophilizer-min-time.yaml"


@pytest.fixture(autouse=True)
def fresh_memo() -> Iterator[None]:
    ocp_memo.clear()
    yield
    ocp_memo.clear()


@pytest.fixture
def transcriptions(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """The horizon of every transcription."""
    seen: list[int] = []
    real = ocp_memo.transcribe

    def counting(config: ControllerConfig, *args: Any) -> Any:
        seen.append(config.horizon)
        return real(config, *args)

    monkeypatch.setattr(ocp_memo, "transcribe", counting)
    return seen


def lyophilizer(horizon: int = 5) -> tuple[ControllerConfig, PlantModel]:
    """The freeze dryer's minimum-time controller on a short horizon (uncompiled)."""
    cfg, model = load_controller(LYO)
    return cfg.model_copy(update={"horizon": horizon}), model


def fast(cfg: ControllerConfig, model: PlantModel) -> FastController:
    mpc = build_policy(cfg, model)
    assert isinstance(mpc, FastController) and mpc.ocp.t_end_idx is not None
    return mpc


def first_step(mpc: FastController, model: PlantModel) -> tuple[list[float], float, int]:
    d = mpc.step(0.0, model.initial_state, u_prev=model.nominal_inputs)
    assert d.ok, d.return_status
    return list(d.inputs.values()), d.objective, d.iterations


def test_a_second_controller_transcribes_nothing_and_decides_alike(
    transcriptions: list[int],
) -> None:
    cfg, model = lyophilizer()
    alone = first_step(fast(cfg, model), model)
    ocp_memo.clear()
    a = fast(cfg, model)
    _, model2 = lyophilizer()  # another case: a new model of the same file
    b = fast(cfg, model2)
    assert transcriptions == [5, 5]  # the one alone, then a; b from the memo
    assert a.ocp.lbx is not b.ocp.lbx and np.array_equal(a.ocp.lbx, b.ocp.lbx)
    assert first_step(a, model) == alone
    for k in range(1, 3):  # a runs on, moving its own time-to-end bounds
        a.step(k * cfg.sample_time, model.initial_state, u_prev=model.nominal_inputs)
    assert first_step(b, model2) == alone  # b starts as a did, whatever a did since


def test_a_controller_never_moves_anothers_bounds(monkeypatch: pytest.MonkeyPatch) -> None:
    cfg, model = lyophilizer()
    # The hazard: without copies, b's steps move the bounds of a's problem.
    monkeypatch.setattr(ocp_memo, "fresh", lambda ocp: ocp)
    a, b = fast(cfg, model), fast(cfg, model)
    before = a.ocp.lbx.copy()
    b.step(0.0, model.initial_state, u_prev=model.nominal_inputs)
    assert not np.array_equal(a.ocp.lbx, before)
    monkeypatch.undo()
    ocp_memo.clear()
    a, b = fast(cfg, model), fast(cfg, model)
    before = a.ocp.lbx.copy()
    b.step(0.0, model.initial_state, u_prev=model.nominal_inputs)
    assert np.array_equal(a.ocp.lbx, before)


def test_the_key_sees_the_config_and_the_model() -> None:
    cfg, model = lyophilizer()

    def key(c: ControllerConfig = cfg, m: PlantModel = model) -> str:
        return ocp_memo.controller_key(fast(c, m), c.solver.integrator_steps)

    base = key()
    _, again = lyophilizer()
    assert key(m=again) == base  # the same files: the same problem
    ps = model.parameter_set
    kp = ps.parameters["KP"].value
    other = {
        "horizon": key(c=cfg.model_copy(update={"horizon": 6})),
        "sample_time": key(c=cfg.model_copy(update={"sample_time": 0.2})),
        "parameter": key(m=type(model)(ps.with_values({"KP": 0.9 * kp}), smooth=model.smooth)),
        "smooth": key(m=type(model)(ps, smooth=not model.smooth)),
    }
    assert base not in other.values() and len(set(other.values())) == len(other)
