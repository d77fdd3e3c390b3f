"""systemd's notify protocol: READY=1 at start, WATCHDOG=1 on each healthy cycle.

systemd (``Type=notify``, ``WatchdogSec=``) hands the service ``NOTIFY_SOCKET``: a Unix
datagram socket path, or an abstract one when it starts with ``@``. Without it (not run by
systemd) nothing is sent, and :attr:`WatchdogSink.enabled` says so. A cycle is healthy when
it read the PLC and the supervisor is not stopped; after an unhealthy cycle the watchdog is
not petted, so a runtime that cannot read its PLC for ``WatchdogSec`` is restarted.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from controller.runtime.supervisor import CycleView, Supervisor

log = logging.getLogger("pharmatwin.sdnotify")


def notify_address(value: str) -> str | bytes:
    """The socket address of a ``NOTIFY_SOCKET`` value (``@name`` is the abstract ``\\0name``)."""
    if value.startswith("@"):
        return b"\0" + value[1:].encode()
    return value


class Notifier:
    """Sends sd_notify datagrams to one socket; ``None`` address: not under systemd."""

    def __init__(self, address: str | None) -> None:
        self.address = notify_address(address) if address else None
        self._sock: socket.socket | None = None
        if self.address is not None:
            self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)

    @property
    def enabled(self) -> bool:
        return self._sock is not None

    def send(self, *fields: str) -> bool:
        """Send ``KEY=VALUE`` lines as one datagram; False (logged) when it cannot be sent."""
        if self._sock is None or self.address is None:
            return False
        try:
            self._sock.sendto("\n".join(fields).encode(), self.address)
        except OSError as exc:
            log.warning("sd_notify to %r failed: %s", self.address, exc)
            return False
        return True

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None


class WatchdogSink:
    """The runtime sink for systemd: READY at start, a watchdog pet per healthy cycle."""

    def __init__(self, notifier: Notifier) -> None:
        self.notifier = notifier
        self.pets = 0

    @classmethod
    def from_environment(cls) -> WatchdogSink:
        return cls(Notifier(os.environ.get("NOTIFY_SOCKET")))

    def start(self, sup: Supervisor, stop: asyncio.Event) -> None:
        if self.notifier.enabled:
            self.notifier.send("READY=1", f"STATUS=site {sup.site.name}, {sup.mode.value}")

    def cycle(self, sup: Supervisor, view: CycleView) -> None:
        if not self.notifier.enabled:
            return
        healthy = view.snapshot is not None and view.state.value != "STOPPED"
        if healthy and self.notifier.send("WATCHDOG=1"):
            self.pets += 1

    def close(self) -> None:
        if self.notifier.enabled:
            self.notifier.send("STOPPING=1")
        self.notifier.close()
