"""Where an operator-side endpoint (the web view, the metrics) listens, checked at the edge.

Loopback by default. Another address needs ``--allow-remote`` *and* TLS (a certificate and
its key): anything else is refused with one sentence naming the flag and the value.
"""

from __future__ import annotations

import ipaddress
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from controller.errors import ConfigError, Problem


@dataclass(frozen=True)
class Bind:
    host: str
    port: int
    tls_cert: Path | None = None
    tls_key: Path | None = None

    @property
    def url(self) -> str:
        scheme = "https" if self.tls_cert else "http"
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{scheme}://{host}:{self.port}"


@dataclass
class ThreadedServer:
    """A uvicorn server running in its own daemon thread (see :func:`start_in_thread`)."""

    bind: Bind
    server: Any
    thread: threading.Thread
    port: int  # the bound port (``bind.port`` 0 picks a free one)

    @property
    def url(self) -> str:
        return f"{self.bind.url.rsplit(':', 1)[0]}:{self.port}"

    @property
    def exiting(self) -> bool:
        """Shutting down: long-lived responses (event streams) end now."""
        return bool(self.server.should_exit)

    def close(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=10.0)


def start_in_thread(app: Any, bind: Bind, name: str) -> ThreadedServer:
    """Serve ``app`` with uvicorn in a daemon thread.

    Returns once it listens; raises ConfigError naming ``--ui`` if it cannot listen there
    within 15 s."""
    import asyncio

    import uvicorn

    config = uvicorn.Config(
        app,
        host=bind.host,
        port=bind.port,
        log_level="warning",
        lifespan="off",
        access_log=False,
        timeout_graceful_shutdown=2,
        ssl_certfile=str(bind.tls_cert) if bind.tls_cert else None,
        ssl_keyfile=str(bind.tls_key) if bind.tls_key else None,
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(target=lambda: asyncio.run(server.serve()), name=name, daemon=True)
    thread.start()
    deadline = time.monotonic() + 15.0
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            why = "cannot listen there"
            raise ConfigError([Problem("command line", "--ui", why, f"{bind.host}:{bind.port}")])
        time.sleep(0.005)
    return ThreadedServer(bind, server, thread, int(server.servers[0].sockets[0].getsockname()[1]))


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def parse_bind(
    flag: str,
    text: str,
    *,
    allow_remote: bool = False,
    tls_cert: Path | None = None,
    tls_key: Path | None = None,
) -> Bind:
    """``HOST:PORT`` checked; raises ConfigError (CLI exit 2) naming ``flag`` and ``text``."""
    host, sep, port_text = text.rpartition(":")
    host = host.strip("[]")
    if not sep or not host or not port_text.isdigit() or not 0 <= int(port_text) <= 65535:
        raise ConfigError(
            [Problem("command line", flag, "allowed: HOST:PORT, e.g. 127.0.0.1:8080", text)]
        )
    if (tls_cert is None) != (tls_key is None):
        msg = "--tls-cert and --tls-key go together"
        raise ConfigError([Problem("command line", "--tls-cert/--tls-key", msg, text)])
    for name, path in (("--tls-cert", tls_cert), ("--tls-key", tls_key)):
        if path is not None and not path.is_file():
            raise ConfigError([Problem("command line", name, "no such file", str(path))])
    if not is_loopback(host):
        if not allow_remote:
            msg = f"{host} is not a loopback address; serving other machines needs --allow-remote"
            raise ConfigError([Problem("command line", flag, msg + " and TLS", text)])
        if tls_cert is None:
            msg = "a non-loopback address needs TLS: give --tls-cert and --tls-key"
            raise ConfigError([Problem("command line", flag, msg, text)])
    return Bind(host, int(port_text), tls_cert, tls_key)
