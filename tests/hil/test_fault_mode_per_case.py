"""A case's faults are checked at load in the mode the case runs in (its block's, else the
campaign's): a ``comm_latency`` in a fast-mode case is refused when the campaign loads,
naming the file, the case and what is allowed (hil mode), instead of running every other case
and then erroring this one; the same fault in a block with ``mode: hil``, or in a hil-mode
campaign, loads."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from controller.errors import ConfigError
from hil.campaign.spec import load_campaign

ROOT = Path(__file__).resolve().parents[2]
LYO = ROOT / "configs" / "sites" / "lyophilizer-modbus.yaml"
LATENCY = {"kind": "comm_latency", "target": "*", "start": 1.0, "duration": 0.3, "magnitude": 0.1}
pytestmark = pytest.mark.timeout(60)


def _campaign(tmp_path: Path, mode: str, blocks: list[dict[str, Any]]) -> Path:
    raw = {
        "name": "lat",
        "site": str(LYO),
        "duration": 2.5,
        "mode": mode,
        "retries": 0,
        "matrix": blocks,
        "criteria": [
            {
                "id": "REQ-ROB-01",
                "description": "No more than 3 failed solves in a row",
                "check": {"kind": "consecutive_failed_solves", "at_most": 3},
            }
        ],
    }
    path = tmp_path / "lat.yaml"
    path.write_text(yaml.safe_dump(raw), encoding="utf-8")
    return path


def _block(mode: str | None = None) -> dict[str, Any]:
    block: dict[str, Any] = {
        "factors": {"faults": {"none": {}, "latency": {"faults": [LATENCY]}}},
        "seeds": [7],
    }
    return block if mode is None else block | {"mode": mode}


def test_comm_latency_in_a_fast_mode_case_is_refused_at_load(tmp_path: Path) -> None:
    path = _campaign(tmp_path, "fast", [_block()])
    with pytest.raises(ConfigError) as info:
        load_campaign(path)
    (problem,) = info.value.problems
    assert problem.file.startswith(f"{path} (case c") and problem.file.endswith("-latency-s7)")
    assert problem.location == "faults.0" and problem.value == "comm_latency"
    assert problem.message.startswith(
        "a comm_latency fault cannot take effect here: the in-memory PLC of the fast mode"
    ), problem.message
    assert "allowed: mode: hil" in problem.message, problem.message


def test_a_fast_block_in_a_hil_campaign_is_checked_in_fast_mode(tmp_path: Path) -> None:
    path = _campaign(tmp_path, "hil", [_block("fast")])
    with pytest.raises(ConfigError) as info:
        load_campaign(path)
    (problem,) = info.value.problems
    assert "comm_latency fault cannot take effect here: the in-memory PLC" in problem.message


def test_comm_latency_loads_where_its_case_runs_in_hil_mode(tmp_path: Path) -> None:
    hil_block = _campaign(tmp_path, "fast", [_block("hil")])
    cases = load_campaign(hil_block).cases
    assert [c.run_mode("fast") for c in cases] == ["hil", "hil"]
    assert len(load_campaign(_campaign(tmp_path, "hil", [_block()])).cases) == 2


def test_the_mode_the_campaign_is_run_in_overrides_the_files(tmp_path: Path) -> None:
    """``campaign run --mode hil`` on a fast-mode file: its cases run in hil mode."""
    path = _campaign(tmp_path, "fast", [_block()])
    assert len(load_campaign(path, mode="hil").cases) == 2
    with pytest.raises(ConfigError):
        load_campaign(_campaign(tmp_path, "hil", [_block()]), mode="fast")


def test_campaign_run_with_mode_fast_refuses_a_comm_latency_before_any_case_runs(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """``campaign run --mode fast`` on a hil-mode file: the file loads in hil mode, and the
    run's own mode is the one its faults are checked in (the CLI passes it on)."""
    from hil.cli import main as hil_main

    path = _campaign(tmp_path, "hil", [_block()])
    out = tmp_path / "out"
    code = hil_main(["campaign", "run", str(path), "--mode", "fast", "--out", str(out)])
    err = capsys.readouterr()
    assert code == 2, err
    assert "comm_latency fault cannot take effect here" in err.out + err.err
    assert not (out / "cases").exists()  # refused before any case ran
