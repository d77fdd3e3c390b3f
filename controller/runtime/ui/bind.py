"""Where an operator-side endpoint (the web view, the metrics) listens, checked at the edge.

Loopback by default. Another address needs ``--allow-remote`` *and* TLS (a certificate and
its key): anything else is refused with one sentence naming the flag and the value.
"""

from __future__ import annotations

import ipaddress
import socket
import ssl
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from controller.errors import ConfigError, PharmaTwinError, Problem


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

    Returns once it listens; raises ListenError naming ``--ui`` (port in use, ...) or
    ``--tls-cert``/``--tls-key``, or ConfigError if it does not listen within 15 s."""
    import asyncio

    import uvicorn

    check_tls(bind)
    try:
        family = socket.AF_INET6 if ":" in bind.host else socket.AF_INET
        sock = socket.create_server((bind.host, bind.port), family=family)
    except OSError as exc:
        raise listen_error("--ui", bind, exc) from exc

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
    serve = server.serve(sockets=[sock])
    thread = threading.Thread(target=lambda: asyncio.run(serve), name=name, daemon=True)
    thread.start()
    deadline = time.monotonic() + 15.0
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            sock.close()
            why = "cannot listen there"
            raise ConfigError([Problem("command line", "--ui", why, f"{bind.host}:{bind.port}")])
        time.sleep(0.005)
    return ThreadedServer(bind, server, thread, int(server.servers[0].sockets[0].getsockname()[1]))


class ListenError(PharmaTwinError):
    """An endpoint cannot listen where it was told (a port in use, TLS files that are not a
    certificate and its key); names the flag, the value and the reason (CLI exit 2). Not a
    ConfigError, so that no caller's "cannot listen there" hides the reason."""


def listen_error(flag: str, bind: Bind, exc: OSError) -> ListenError:
    """The error for an endpoint that cannot listen on ``bind`` (port in use, ...)."""
    why = f"cannot listen there: {exc.strerror or exc}; allowed: a free port on this machine"
    return ListenError(f"{flag} {bind.host}:{bind.port}: {why}")


def check_tls(bind: Bind) -> None:
    """Raises ListenError naming ``--tls-cert`` or ``--tls-key`` when they are not a PEM
    certificate and its private key (checked before any server is started)."""
    if bind.tls_cert is None or bind.tls_key is None:
        return
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    cert, key = str(bind.tls_cert), str(bind.tls_key)
    for flag, path, allowed in (
        ("--tls-cert", cert, "a PEM certificate"),
        ("--tls-key", key, "the PEM private key of --tls-cert"),
    ):
        try:
            if flag == "--tls-cert":
                context.load_verify_locations(cert)
            else:
                context.load_cert_chain(cert, key)
        except (OSError, ValueError) as exc:
            why = f"cannot be used ({getattr(exc, 'reason', None) or exc}); allowed: {allowed}"
            raise ListenError(f"{flag} {path}: {why}") from exc


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
