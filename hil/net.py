"""Loopback networking helpers: HIL servers bind 127.0.0.1 unless told otherwise."""

from __future__ import annotations

import socket

LOOPBACK = "127.0.0.1"


def free_port(host: str = LOOPBACK) -> int:
    """A TCP port that is free on ``host`` right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


from controller.runtime.ui.bind import is_loopback  # noqa: E402  (one definition, re-exported)


def check_bind_address(host: str, allow_remote: bool) -> None:
    """Refuse a non-loopback bind address unless ``allow_remote`` (ValueError naming it)."""
    if not allow_remote and not is_loopback(host):
        raise ValueError(
            f"refusing to bind {host!r}: not a loopback address; pass allow_remote=True to "
            "serve other machines"
        )
