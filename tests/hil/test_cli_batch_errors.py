"""The batch commands refuse what cannot run, up front and in one line, and say why a case
errored: ``campaign run`` with a rate that is no rate, a Dask scheduler address that is
malformed or has no scheduler behind it (an error naming it, not a traceback after Dask's
wait), and the first errored cases' reasons on the terminal (not only in summary.json)."""

from __future__ import annotations

import socket
from pathlib import Path

import dask
import distributed  # noqa: F401  (its config defaults, before a test sets one of them)
import pytest

from hil.cli import main as hil_main
from hil.cli_batch import ERRORS_SHOWN, errored_lines

ROOT = Path(__file__).resolve().parents[2]
SMOKE = ROOT / "configs" / "campaigns" / "lyophilizer-smoke.yaml"


@pytest.mark.parametrize("rate", ["0", "-5", "nan", "inf"])
def test_campaign_run_refuses_a_rate_that_is_no_rate(
    rate: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ["campaign", "run", str(SMOKE), "--mode", "hil", "--rate", rate]
    assert hil_main([*argv, "--out", str(tmp_path / "out"), "--quiet"]) == 2
    text = capsys.readouterr().out
    assert f"--rate {float(rate):g}: must be a positive number" in text
    assert "Traceback" not in text and not (tmp_path / "out").exists()  # nothing ran


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.mark.parametrize("address", ["notaurl", "tcp://127.0.0.1:{port}"])
def test_a_dask_scheduler_that_is_not_there_is_a_clear_error(
    address: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    address = address.format(port=_free_port())  # nothing listens there
    argv = ["campaign", "run", str(SMOKE), "--executor", "dask", "--dask-scheduler", address]
    with dask.config.set({"distributed.comm.timeouts.connect": "1s"}):
        code = hil_main([*argv, "--out", str(tmp_path / "out"), "--quiet"])
    text = capsys.readouterr().out
    assert code == 2 and "Traceback" not in text
    assert f"--dask-scheduler {address}: no Dask scheduler reached there" in " ".join(text.split())


def test_the_first_errored_cases_say_why() -> None:
    results = [{"id": "c0", "status": "passed"}] + [
        {"id": f"c{k}", "status": "error", "error": f"ValueError: case {k} broke"}
        for k in range(1, ERRORS_SHOWN + 3)
    ]
    lines = errored_lines(results, Path("runs/x/summary.json"))
    assert lines[0] == "errored c1: ValueError: case 1 broke"
    assert len(lines) == ERRORS_SHOWN + 1
    assert lines[-1] == "... and 2 more errored case(s): see runs/x/summary.json"
    assert errored_lines(results[:1], Path("s.json")) == []


def test_campaign_report_of_a_campaign_file_says_what_to_give(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert hil_main(["campaign", "report", str(SMOKE)]) == 2
    text = " ".join(capsys.readouterr().out.split())
    assert f"{SMOKE}: is a file; give a campaign's results directory" in text
    assert hil_main(["campaign", "report", str(tmp_path / "none")]) == 2
    assert "no such results directory" in capsys.readouterr().out
