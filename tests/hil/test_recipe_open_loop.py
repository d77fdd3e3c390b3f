"""An open-loop recipe plays as written whatever its bystander estimator does.

Seen by a reviewer: the nominal freeze-dryer recipe on a true plant with a high cake
resistance and a low Kv (each inside the plant file's plausible range) made the bystander EKF
fail 33 times; each failure held the recipe (``safety_interventions`` 66), so from 6.7 h on
the plant kept Tsh 20 degC / Pch 0.15 Torr and the recipe's step to 0 degC / 0.10 Torr at
8.1 h was never applied; the run exited 0. The recipe's inputs do not come from the data or
the estimate: the estimator's failures are still counted, the recipe is not held.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from controller.config import Recipe
from controller.core.recipe import RecipePlayer
from hil.kpis import compute_kpis
from hil.simulate import run_scenario

ROOT = Path(__file__).resolve().parents[2]
TABLE = [
    (0.0, -35.0, 0.15),
    (0.9166667, 20.0, 0.15),
    (8.0, 20.0, 0.15),
    (8.1, 0.0, 0.10),
    (100.0, 0.0, 0.10),
]


def _scenario(tmp_path: Path) -> Path:
    rows = "\n".join(
        f"    - {{t: {t}, inputs: {{Tsh: {tsh}, Pch: {pch}}}}}" for t, tsh, pch in TABLE
    )
    text = f"""name: recipe-with-a-failing-bystander
plant: {ROOT / "configs" / "plants" / "lyophilizer.yaml"}
recipe:
  interpolation: linear
  table:
{rows}
sample_time: 0.1
duration: 40.0
true_plant:
  parameters: {{R0: 3.0, KC: 1.5e-4, A1: 30.0}}
  noise_std: {{Tbot: 0.1}}
  seed: 1
cqas: [percent_dried]
"""
    path = tmp_path / "scenario.yaml"
    path.write_text(text, encoding="utf-8")
    return path


def test_a_failing_estimator_does_not_hold_an_open_loop_recipe(tmp_path: Path) -> None:
    path = _scenario(tmp_path)
    run = asyncio.run(run_scenario(path))
    kpis = compute_kpis(run)
    assert kpis.estimator_failures > 0  # the situation: the bystander fails
    assert kpis.safety_interventions == 0
    recipe = Recipe.model_validate(
        {"interpolation": "linear",
         "table": [{"t": t, "inputs": {"Tsh": a, "Pch": b}} for t, a, b in TABLE]}
    )  # fmt: skip
    player = RecipePlayer(recipe, ("Tsh", "Pch"))
    steps = [r for r in run.rows if r.get("solve.status") != "end"]
    assert steps[-1]["t"] > 8.5  # the run reached the recipe's last step
    for r in steps:
        want = player.inputs_at(r["t"])
        assert r["u.Tsh"] == pytest.approx(want["Tsh"], abs=1e-9), r["t"]
        assert r["u.Pch"] == pytest.approx(want["Pch"], abs=1e-9), r["t"]
    late = [r for r in steps if r["t"] >= 8.1 - 1e-9]
    assert late and all(r["u.Tsh"] == pytest.approx(0.0, abs=1e-9) for r in late)
