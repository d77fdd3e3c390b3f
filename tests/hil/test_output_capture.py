"""A worker's output goes to its log, what C prints included (IPOPT, CasADi, SUNDIALS print
through C's stdio, under ``sys.stdout``: only file descriptors catch them). Run in a process
of its own, as a worker is (pytest's own capture replaces ``sys.stdout``)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

SCRIPT = """
import ctypes, os, sys
from pathlib import Path
from hil.output_capture import output_to
libc = ctypes.CDLL(None)
with output_to(Path(sys.argv[1]), "--- p00-d000\\n"):
    libc.printf(b"The linesearch algorithm failed with too small a step.\\n")
    os.write(2, b"IDACalcIC returned IDA_LINESEARCH_FAIL\\n")
    print("from Python")
    sys.stderr.write("warning from Python\\n")
print("after the block")
"""


def test_output_to_catches_what_c_prints(tmp_path: Path) -> None:
    log = tmp_path / "runs" / "p00-d000" / "run.log"
    done = subprocess.run(
        [sys.executable, "-c", SCRIPT, str(log)], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout == "after the block\n" and done.stderr == ""
    text = log.read_text()
    assert text.startswith("--- p00-d000\n")
    for line in ("The linesearch algorithm failed", "IDA_LINESEARCH_FAIL", "from Python",
                 "warning from Python"):  # fmt: skip
        assert line in text
