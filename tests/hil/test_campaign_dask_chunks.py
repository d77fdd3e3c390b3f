"""A Dask task runs a few cases in turn (hil.campaign.execute.chunk_size): the scheduler, the
worker and the client then spend their per-task work once per few cases. A lost worker must
not cost the task's other cases anything: a finished case is not run again when the scheduler
reruns its task, and a case that keeps killing workers ends as an error alone, after the
retries it would get in a task of its own, while the cases after it in its task still run."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

import hil.campaign.execute as execute
from hil.campaign.execute import RunSettings, chunk_size, run_campaign
from hil.campaign.runner import CHAOS_ENV
from hil.campaign.spec import load_campaign

ROOT = Path(__file__).resolve().parents[2]
SMOKE = ROOT / "configs" / "campaigns" / "lyophilizer-smoke.yaml"  # 3 cases, retries: 2
FIRST, MIDDLE, LAST = "c000-none-s7", "c001-sensor-bias-s7", "c002-controller-loss-s7"


def test_chunk_size_keeps_enough_tasks_per_worker() -> None:
    assert chunk_size(1000, 2) == 4  # B4: 250 tasks, not 1000
    assert chunk_size(1000, 64) == 1
    assert chunk_size(100, 2) == 2
    assert chunk_size(3, 2) == 1 and chunk_size(0, 2) == 1 and chunk_size(5, 0) == 4


def _results(out: Path) -> dict[str, dict[str, Any]]:
    return {
        p.parent.name: json.loads(p.read_text())
        for p in sorted((out / "cases").glob("*/result.json"))
    }


def _one_chunk(monkeypatch: pytest.MonkeyPatch, size: int) -> None:
    """Tasks of ``size`` cases on one worker."""
    monkeypatch.setattr(execute, "MAX_CHUNK", size)
    monkeypatch.setattr(execute, "CHUNKS_PER_WORKER", 1)


@pytest.mark.slow
@pytest.mark.serial
def test_a_lost_worker_reruns_only_the_case_it_was_running(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    smoke = load_campaign(SMOKE)
    assert [c.id for c in smoke.cases] == [FIRST, MIDDLE, LAST]
    _one_chunk(monkeypatch, 3)  # the three cases in one task
    marker = tmp_path / "killed"
    monkeypatch.setenv(CHAOS_ENV, f"{MIDDLE}:{marker}")
    out = tmp_path / "out"
    settings = RunSettings(out=out, executor="dask", workers=1, progress=False)
    outcome = run_campaign(smoke, settings)
    assert marker.exists()  # the worker died running the middle case
    results = _results(out)
    assert {k: r["status"] for k, r in results.items()} == dict.fromkeys(results, "passed")
    assert {k: r["attempts"] for k, r in results.items()} == {FIRST: 1, MIDDLE: 2, LAST: 1}
    assert outcome.results[MIDDLE]["attempts"] == 2


@pytest.mark.slow
@pytest.mark.serial
@pytest.mark.parametrize("size", [1, 3])
def test_a_case_that_keeps_killing_workers_errors_alone(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, size: int
) -> None:
    smoke = load_campaign(SMOKE)
    _one_chunk(monkeypatch, size)
    monkeypatch.setenv(CHAOS_ENV, f"{MIDDLE}:always")
    out = tmp_path / "out"
    settings = RunSettings(out=out, executor="dask", workers=1, progress=False)
    outcome = run_campaign(smoke, settings)
    results = _results(out)
    assert {k: r["status"] for k, r in results.items()} == {
        FIRST: "passed",
        MIDDLE: "error",
        LAST: "passed",  # after the killer in its task: run in a task of its own
    }
    # the retries a case gets alone (2), whether its task held one case or three
    assert {k: r["attempts"] for k, r in results.items()} == {FIRST: 1, MIDDLE: 3, LAST: 1}
    assert "KilledWorker" in results[MIDDLE]["error"]
    assert outcome.results[MIDDLE]["status"] == "error"
