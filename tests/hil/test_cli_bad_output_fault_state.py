"""``fault`` against a state file that no serve answers for, or that serve did not write:
exit code 2 and one line naming the file and what to do, never a traceback (serve killed
with -9 leaves its state file behind)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from hil.cli import main as hil_main

ROOT = Path(__file__).resolve().parents[2]
SITE = ROOT / "configs" / "sites" / "lyophilizer-modbus.yaml"
STATE = "lyophilizer-modbus.json"  # <state-dir>/<site name>.json, as serve writes it


def _fault(state_dir: Path, *command: str) -> list[str]:
    return ["fault", "--state-dir", str(state_dir), str(SITE), *command]


def _said(capsys: pytest.CaptureFixture[str]) -> str:
    out = capsys.readouterr()
    return " ".join((out.out + out.err).split())  # rich may wrap a long line


@pytest.mark.parametrize(
    "command", [("status",), ("inject", "sensor_bias", "Tbot", "--magnitude", "1")]
)
def test_a_stale_state_file_is_named_with_what_to_do(
    command: tuple[str, ...],
    port_number: int,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    state = {"site": "lyophilizer-modbus", "pid": 1, "ports": {}, "admin_port": port_number}
    (tmp_path / STATE).write_text(json.dumps(state), encoding="utf-8")
    assert hil_main(_fault(tmp_path, *command)) == 2
    text = _said(capsys)
    assert f"no serve answers on 127.0.0.1:{port_number}" in text
    assert f"the state file {tmp_path / STATE} is stale" in text
    assert "Traceback" not in text


@pytest.mark.parametrize(
    ("content", "why"),
    [
        (b"{not json", "is not UTF-8 JSON"),
        (b"\xff\xfe\x00", "is not UTF-8 JSON"),
        (b"[1, 2]", "is not a JSON object with 'admin_port'"),
        (b'{"admin_port": "x"}', "is not a JSON object with 'admin_port'"),
    ],
    ids=["bad-json", "not-utf8", "a-list", "port-not-int"],
)
def test_a_state_file_serve_did_not_write_is_refused(
    content: bytes, why: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / STATE).write_bytes(content)
    assert hil_main(_fault(tmp_path, "status")) == 2
    text = _said(capsys)
    assert f"the state file {tmp_path / STATE} {why}" in text
    assert "Traceback" not in text
