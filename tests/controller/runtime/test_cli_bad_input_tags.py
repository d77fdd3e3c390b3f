"""``tags read --interval/--count`` are checked before any PLC is contacted: exit 2, naming
the flag, the value and what is allowed."""

from __future__ import annotations

from pathlib import Path

import pytest

from controller.runtime.cli import main as cli_main

ROOT = Path(__file__).resolve().parents[3]
SITE = ROOT / "configs" / "sites" / "cstr-modbus.yaml"


@pytest.mark.parametrize(
    ("flags", "named"),
    [
        (["--interval", "-5"], ["--interval", "-5.0", "positive finite number of seconds"]),
        (["--interval", "0"], ["--interval", "0.0", "positive finite number of seconds"]),
        (["--interval", "inf"], ["--interval", "inf", "positive finite number of seconds"]),
        (["--interval", "nan"], ["--interval", "nan", "positive finite number of seconds"]),
        (["--count", "-1"], ["--count", "-1", "1 or more"]),
        (["--count", "0"], ["--count", "0", "1 or more"]),
    ],
)
def test_bad_watch_flags_exit_2_before_connecting(
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    flags: list[str],
    named: list[str],
) -> None:
    monkeypatch.setenv("COLUMNS", "200")
    rc = cli_main(["tags", "read", str(SITE), "--watch", *flags])
    out = capsys.readouterr()
    text = " ".join((out.out + out.err).split())
    assert rc == 2, text
    assert "Traceback" not in text
    for word in named:
        assert word in text, (word, text)
