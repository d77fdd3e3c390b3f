"""``simulate`` never runs a scenario's faults as if they were not there.

The offline loop has no virtual PLC, servers or fault schedule: a scenario with ``faults:``
gave the very trajectory of the same scenario without them, and exited 0. It is refused now
(one sentence, exit 2) naming the faults and where they do act (``serve``, campaigns).
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest
import yaml

from controller.errors import ScenarioError
from hil.cli import main as hil_main
from hil.simulate import run_scenario

PLANT = Path(__file__).resolve().parents[2] / "configs" / "plants" / "lyophilizer.yaml"
FAULTS = [
    {"kind": "actuator_saturation", "target": "Tsh", "start": 0.0, "magnitude": -30.0},
    {"kind": "parameter_drift", "target": "KC", "start": 0.0, "rate": 5.0},
    {"kind": "sensor_bias", "target": "Tbot", "start": 0.0, "magnitude": 50.0},
]


def _scenario(tmp_path: Path, name: str, **extra: Any) -> Path:
    body = {
        "name": name,
        "plant": str(PLANT),
        "recipe": {
            "interpolation": "linear",
            "table": [
                {"t": 0.0, "inputs": {"Tsh": -35.0, "Pch": 0.15}},
                {"t": 10.0, "inputs": {"Tsh": 20.0, "Pch": 0.15}},
            ],
        },
        "sample_time": 0.1,
        "duration": 10.0,
        "true_plant": {"noise_std": {"Tbot": 0.1}, "seed": 1},
        "checks": [{"expression": "Tbot", "upper": -7.0}],
        "cqas": ["Tbot"],
        **extra,
    }
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(body), encoding="utf-8")
    return path


def test_simulate_refuses_a_scenario_with_faults(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = _scenario(tmp_path, "withfault", faults=FAULTS)
    out = tmp_path / "out"
    argv = ["simulate", str(path), "--max-steps", "2", "--out", str(out), "--no-plot", "--quiet"]
    assert hil_main(argv) == 2
    said = " ".join(capsys.readouterr().out.split())
    assert said.startswith(f"error: {path}: faults: actuator_saturation on Tsh, ")
    assert "parameter_drift on KC" in said and "sensor_bias on Tbot" in said
    assert "pharmatwin-hil serve" in said and "campaign" in said
    assert not (out / "kpis.json").exists()  # no result that looks like a faulted run


def test_run_scenario_refuses_faults_and_runs_without_them(tmp_path: Path) -> None:
    with pytest.raises(ScenarioError, match="simulate cannot apply them"):
        asyncio.run(run_scenario(_scenario(tmp_path, "withfault", faults=FAULTS), max_steps=2))
    run = asyncio.run(run_scenario(_scenario(tmp_path, "nofault"), max_steps=2))
    assert len(run.rows) == 3 and run.plant_fault is None
