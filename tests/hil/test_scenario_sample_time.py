"""A scenario's sample time too short to count a run's steps is refused at load."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from hil.cli import main as hil_main

CONFIGS = Path(__file__).resolve().parents[2] / "configs"
PLANTS = CONFIGS / "plants"


def test_an_open_loop_scenario_with_a_vanishing_sample_time_is_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Before: ``sample_time: 1.0e-320`` in a scenario without a controller passed the
    loader and ``simulate`` crashed with OverflowError counting its steps."""
    data = yaml.safe_load((CONFIGS / "scenarios" / "lyophilizer-nominal-recipe.yaml").read_text())
    data["plant"] = str(PLANTS / "lyophilizer.yaml")
    data["sample_time"] = 1.0e-320
    path = tmp_path / "scenario.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    code = hil_main(["simulate", str(path), "--out", str(tmp_path / "out")])
    text = "".join(capsys.readouterr())
    assert code == 2, text
    assert "sample_time" in text and "allowed: 1e-06 or more" in text
    assert "Traceback" not in text
