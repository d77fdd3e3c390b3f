"""The systemd notify protocol, with the test playing systemd on a Unix datagram socket."""

from __future__ import annotations

import os
import socket
from pathlib import Path

from test_ui_api import running_twin

from controller.runtime.sdnotify import Notifier, WatchdogSink, notify_address


def _received(sock: socket.socket) -> list[str]:
    out = []
    while True:
        try:
            out.append(sock.recv(4096).decode())
        except BlockingIOError:
            return out


async def test_ready_then_a_watchdog_pet_per_healthy_cycle(tmp_path: Path) -> None:
    path = str(tmp_path / "notify.sock")
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as systemd:
        systemd.bind(path)
        systemd.setblocking(False)
        sink = WatchdogSink(Notifier(path))
        async with running_twin(tmp_path, extra=(sink,), cycles=3) as twin:
            assert twin.sup is not None
            cycles = twin.sup.counters.cycles
        got = _received(systemd)
    assert got[0].startswith("READY=1\nSTATUS=site cstr-modbus")
    pets = got.count("WATCHDOG=1")
    assert pets == sink.pets and pets >= cycles
    assert got[-1] == "STOPPING=1"


def test_abstract_socket_and_no_socket() -> None:
    name = f"pharmatwin-test-{os.getpid()}"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as systemd:
        systemd.bind(b"\0" + name.encode())
        assert notify_address("@" + name) == b"\0" + name.encode()
        notifier = Notifier("@" + name)
        assert notifier.send("READY=1")
        assert systemd.recv(64) == b"READY=1"
        notifier.close()
    off = Notifier(None)
    assert not off.enabled and not off.send("READY=1")


def test_no_pet_after_a_failed_read(tmp_path: Path) -> None:
    """A cycle that could not read the PLC does not pet the watchdog: systemd restarts a
    runtime that stays blind for WatchdogSec."""
    from controller.runtime.supervisor import CycleView, State

    path = str(tmp_path / "n.sock")
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as systemd:
        systemd.bind(path)
        systemd.setblocking(False)
        sink = WatchdogSink(Notifier(path))
        blind = CycleView(1, 0.0, State.RUNNING, None, problems=["read failed: timeout"])
        sink.cycle(None, blind)  # type: ignore[arg-type]
        assert _received(systemd) == [] and sink.pets == 0
