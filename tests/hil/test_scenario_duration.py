"""A scenario's duration must be a whole number of samples (one or more), refused at load.

Before: ``simulate`` counted its steps as ``round(duration / sample_time)``, so a duration
shorter than half a sample ran zero steps and reported a perfect run (steps 0, objective 0,
no violation, exit 0), and any other duration was silently rounded (0.0071 h of 0.005 h
samples ran 0.005 h; 0.0076 h ran 0.01 h, past the duration). ``check-config`` said ok.
Every test here failed on that code.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from controller.errors import ConfigError
from hil.cli import main as hil_main
from hil.scenario import load_scenario

ROOT = Path(__file__).resolve().parents[2]
SCENARIOS = ROOT / "configs" / "scenarios"


def _scenario(tmp_path: Path, base: str, **changes: Any) -> Path:
    """A copy of a shipped scenario (its paths absolute) with ``changes``, in ``tmp_path``."""
    data = yaml.safe_load((SCENARIOS / base).read_text())
    for key in ("plant", "controller"):
        if key in data:
            data[key] = str((SCENARIOS / data[key]).resolve())
    data.update(changes)
    path = tmp_path / "scenario.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False), encoding="utf-8")
    return path


def _duration_problem(path: Path) -> str:
    with pytest.raises(ConfigError) as info:
        load_scenario(path)
    (problem,) = info.value.problems
    assert (problem.file, problem.location) == (str(path), "duration")
    return str(problem)


def test_a_closed_loop_duration_shorter_than_one_sample_is_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = _scenario(tmp_path, "cstr-mpc.yaml", duration=0.002)
    text = _duration_problem(path)
    assert "0.002 h" in text and "shorter than one sample" in text
    assert "0.005 h" in text and "cstr.yaml" in text  # the sample time and where it is from
    assert "allowed: a whole number of samples" in text and "0.005 h" in text
    assert hil_main(["check-config", str(path)]) == 1
    out = capsys.readouterr()
    assert "duration" in out.out and "Traceback" not in out.out + out.err
    code = hil_main(["simulate", str(path), "--out", str(tmp_path / "out")])
    out = capsys.readouterr()
    assert code == 2, out
    assert "shorter than one sample" in out.out + out.err
    assert "steps" not in out.out and "Traceback" not in out.out + out.err


def test_an_open_loop_sample_time_longer_than_the_duration_is_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = _scenario(tmp_path, "lyophilizer-nominal-recipe.yaml", sample_time=100)
    text = _duration_problem(path)
    assert "40 h" in text and "shorter than one sample" in text
    assert "sample_time 100 h" in text and "the scenario's sample_time" in text
    assert "allowed: a whole number of samples" in text and "100 h" in text
    code = hil_main(["simulate", str(path), "--out", str(tmp_path / "out")])
    out = capsys.readouterr()
    assert code == 2 and "duration" in out.out + out.err


@pytest.mark.parametrize(
    ("duration", "between"), [(0.0071, "0.005 h or 0.01 h"), (0.0076, "0.005 h or 0.01 h")]
)
def test_a_duration_that_is_not_a_whole_number_of_samples_is_refused(
    tmp_path: Path, duration: float, between: str
) -> None:
    path = _scenario(tmp_path, "cstr-mpc.yaml", duration=duration)
    text = _duration_problem(path)
    assert f"{duration:g} h" in text and "not a whole number of samples" in text
    assert f"nearest: {between}" in text


def test_durations_of_whole_samples_load_within_round_off(tmp_path: Path) -> None:
    # 0.1 h samples: 0.3 h is 2.9999999999999996 samples in floating point
    path = _scenario(tmp_path, "lyophilizer-nominal-recipe.yaml", duration=0.3)
    assert load_scenario(path).duration == 0.3
    path = _scenario(tmp_path, "cstr-mpc.yaml", duration=0.005)
    assert load_scenario(path).duration == 0.005


def test_a_recipe_run_of_whole_samples_runs_exactly_that_many(tmp_path: Path) -> None:
    import asyncio

    from hil.simulate import run_scenario

    path = _scenario(tmp_path, "lyophilizer-nominal-recipe.yaml", duration=0.3)
    run = asyncio.run(run_scenario(path))
    assert [round(r["t"], 9) for r in run.rows] == [0.0, 0.1, 0.2, 0.3]
