"""A metrics or web endpoint that cannot listen (port in use, files that are not a TLS
certificate and key) is a clear error naming the flag and the reason, not a traceback."""

from __future__ import annotations

import asyncio
import socket
import ssl
from pathlib import Path
from typing import Any, cast

import pytest

from controller.errors import PharmaTwinError
from controller.runtime.metrics import MetricsSink
from controller.runtime.ui.bind import Bind, start_in_thread

PKI = Path(__file__).resolve().parents[3] / "configs" / "pki"


def _busy_port() -> socket.socket:
    return socket.create_server(("127.0.0.1", 0))


def test_metrics_on_a_port_in_use_names_the_flag_and_address() -> None:
    with _busy_port() as busy:
        port = busy.getsockname()[1]
        sink = MetricsSink(Bind("127.0.0.1", port))
        with pytest.raises(PharmaTwinError) as info:
            sink.start(cast(Any, None), asyncio.Event())
    text = str(info.value)
    assert "--metrics" in text and f"127.0.0.1:{port}" in text and "in use" in text, text


def test_ui_on_a_port_in_use_names_the_flag_and_address() -> None:
    with _busy_port() as busy:
        port = busy.getsockname()[1]
        with pytest.raises(PharmaTwinError) as info:
            start_in_thread(cast(Any, None), Bind("127.0.0.1", port), "test-ui")
    text = str(info.value)
    assert "--ui" in text and f"127.0.0.1:{port}" in text and "in use" in text, text


def _not_pem(tmp_path: Path) -> tuple[Path, Path]:
    cert, key = tmp_path / "cert.txt", tmp_path / "key.txt"
    cert.write_text("not a certificate\n")
    key.write_text("not a key\n")
    return cert, key


def test_metrics_with_files_that_are_not_tls_names_tls_cert(tmp_path: Path) -> None:
    cert, key = _not_pem(tmp_path)
    sink = MetricsSink(Bind("127.0.0.1", 0, cert, key))
    with pytest.raises(PharmaTwinError) as info:
        sink.start(cast(Any, None), asyncio.Event())
    text = str(info.value)
    assert "--tls-cert" in text and str(cert) in text and "PEM certificate" in text, text


def test_ui_with_a_key_that_is_not_a_key_names_tls_key(tmp_path: Path) -> None:
    _, key = _not_pem(tmp_path)
    cert = tmp_path / "client.pem"
    cert.write_text(ssl.DER_cert_to_PEM_cert((PKI / "pharmatwin-client.der").read_bytes()))
    with pytest.raises(PharmaTwinError) as info:
        start_in_thread(cast(Any, None), Bind("127.0.0.1", 0, cert, key), "test-ui")
    text = str(info.value)
    assert "--tls-key" in text and str(key) in text and "private key" in text, text
