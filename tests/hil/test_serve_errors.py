"""``pharmatwin-hil serve`` on bad start-up input: one line naming what is wrong, exit code 2,
no traceback, nothing left running or announced."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from pathlib import Path

import pytest

from hil.cli import main
from hil.net import LOOPBACK

ROOT = Path(__file__).resolve().parents[2]
LYO_MODBUS = ROOT / "configs" / "sites" / "lyophilizer-modbus.yaml"
LYO_OPCUA = ROOT / "configs" / "sites" / "lyophilizer-opcua.yaml"
pytestmark = pytest.mark.timeout(90)


@pytest.fixture
def busy_port() -> Iterator[int]:
    """A port another program listens on."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((LOOPBACK, 0))
        s.listen()
        yield int(s.getsockname()[1])


def run(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, list[str]]:
    code = main(argv)
    out = capsys.readouterr()
    text = out.out + out.err
    assert "Traceback" not in text
    return code, text.splitlines()


def test_a_busy_modbus_port_is_one_line(
    busy_port: int, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ["serve", str(LYO_MODBUS), "--modbus-port", str(busy_port)]
    code, lines = run([*argv, "--state-dir", str(tmp_path), "--rate", "600"], capsys)
    assert code == 2
    assert lines == [
        f"error: cannot serve modbus on 127.0.0.1:{busy_port}: address already in use; is "
        "another server running there? choose another port with --modbus-port"
    ]
    assert not (tmp_path / "lyophilizer-modbus.json").exists()  # never announced


def test_a_second_serve_that_cannot_start_leaves_the_running_ones_state_file(
    busy_port: int, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The state file of the serve already running (``fault`` finds it through it) was
    deleted by a second serve of the same site that failed to start: ``fault status`` then
    said no serve was running."""
    state = tmp_path / "lyophilizer-modbus.json"
    running = '{"site": "lyophilizer-modbus", "admin_port": 1}'
    state.write_text(running, encoding="utf-8")
    argv = ["serve", str(LYO_MODBUS), "--modbus-port", str(busy_port)]
    code, _ = run([*argv, "--state-dir", str(tmp_path), "--rate", "600"], capsys)
    assert code == 2
    assert state.read_text(encoding="utf-8") == running


def test_a_busy_opcua_port_is_one_line(
    busy_port: int,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("PHARMATWIN_OPCUA_PASSWORD", "s3cret")
    argv = ["serve", str(LYO_OPCUA), "--opcua-port", str(busy_port)]
    code, lines = run([*argv, "--state-dir", str(tmp_path)], capsys)
    assert code == 2
    assert len(lines) == 1, lines
    assert lines[0].startswith(f"error: cannot serve opcua on 127.0.0.1:{busy_port}: ")
    assert "address already in use" in lines[0] and "--opcua-port" in lines[0]


@pytest.mark.parametrize("rate", ["0", "-1", "nan", "inf", "-inf"])
def test_a_rate_that_is_not_a_positive_number_is_one_line(
    rate: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ["serve", str(LYO_MODBUS), f"--rate={rate}", "--state-dir", str(tmp_path)]
    code, lines = run(argv, capsys)
    assert code == 2
    assert lines == [
        "error: command line: --rate: must be a finite number > 0 (process seconds per "
        f"wall-clock second) (got {float(rate)!r})"
    ]
    assert not (tmp_path / "lyophilizer-modbus.log").exists()  # refused before anything


def test_every_bad_option_is_named_one_line_each(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ["serve", str(LYO_MODBUS), "--rate", "0", "--duration", "-5", "--modbus-port", "0"]
    code, lines = run([*argv, "--state-dir", str(tmp_path)], capsys)
    assert code == 2
    assert [line.split(": ")[2] for line in lines] == ["--rate", "--duration", "--modbus-port"]


def test_a_site_file_that_is_not_utf8_is_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    site = tmp_path / "latin1.yaml"
    site.write_bytes(LYO_MODBUS.read_bytes().replace(b"Freeze dryer", b"S\xe9choir"))
    code, lines = run(["serve", str(site), "--state-dir", str(tmp_path)], capsys)
    assert code == 2
    assert len(lines) == 1, lines
    assert lines[0].startswith(f"error: {site}:3:")
    assert "not UTF-8 text: byte 0xe9" in lines[0] and "save the file as UTF-8" in lines[0]


def test_a_binary_site_file_is_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    site = tmp_path / "image.yaml"
    site.write_bytes(b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR\x00\x00\x01\x00" + bytes(range(256)))
    code, lines = run(["serve", str(site), "--state-dir", str(tmp_path)], capsys)
    assert code == 2
    assert len(lines) == 1, lines
    assert lines[0].startswith(f"error: {site}")
    assert "binary" in lines[0] or "not UTF-8" in lines[0]


def test_a_missing_site_file_is_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, lines = run(["serve", str(tmp_path / "nowhere.yaml")], capsys)
    assert code == 2
    assert lines == [
        f"error: {tmp_path / 'nowhere.yaml'}: cannot read file: No such file or directory"
    ]


def test_a_site_state_dir_that_is_a_file_is_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # the site's own hil.state_dir (no --state-dir) on a file: serve crashed with a
    # FileExistsError traceback from mkdir
    for kind in ("plants", "controllers", "tags", "scenarios"):
        (tmp_path / kind).symlink_to(ROOT / "configs" / kind)
    (tmp_path / "sites").mkdir()
    (tmp_path / "afile").write_text("not a folder\n")
    text = LYO_MODBUS.read_text(encoding="utf-8")
    assert "\nhil:\n" in text
    site = tmp_path / "sites" / "lyo.yaml"
    site.write_text(text.replace("\nhil:\n", "\nhil:\n  state_dir: ../afile\n", 1))
    code, lines = run(["serve", str(site), "--rate", "600"], capsys)
    assert code == 2
    assert len(lines) == 1 and lines[0].startswith(f"error: {site}:"), lines
    assert "hil.state_dir: must be a directory or not exist yet" in lines[0]
    assert f"{tmp_path / 'afile'}: it is a file" in lines[0]
