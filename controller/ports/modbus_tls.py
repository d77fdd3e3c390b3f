"""The Modbus port's TLS (Modbus/TCP Security) client context, from a site's certificate files.

The files may be PEM or DER (the test-bench PKI ships DER); relative paths are taken from the
site file's folder. Files that cannot be loaded raise :class:`~controller.errors.PortError`
with ssl's (or the OS's) own reason.
"""

from __future__ import annotations

import ssl
import tempfile
from pathlib import Path

from controller.errors import PortError
from controller.ports.settings import ModbusTls

__all__ = ["pem", "tls_context"]


def tls_context(tls: ModbusTls, base_dir: Path | None) -> ssl.SSLContext:
    """The client's TLS context; certificates in PEM or DER (as the test-bench PKI ships)."""

    def path(ref: str) -> Path:
        p = Path(ref)
        return p if p.is_absolute() or base_dir is None else base_dir / p

    try:
        ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH)
        ctx.load_verify_locations(cadata=pem(path(tls.ca_file)))
        ctx.minimum_version = ssl.TLSVersion.TLSv1_2
        with tempfile.TemporaryDirectory() as folder:  # ssl loads a chain from files only
            chain = Path(folder) / "client.pem"
            chain.write_text(pem(path(tls.cert_file)))
            ctx.load_cert_chain(chain, path(tls.key_file))
    except OSError as exc:  # ssl.SSLError is an OSError
        raise PortError(f"cannot load the Modbus/TLS certificate files: {exc}") from exc
    return ctx


def pem(certificate: Path) -> str:
    """A certificate file's text as PEM (a DER file is converted)."""
    data = certificate.read_bytes()
    if b"-----BEGIN" in data:
        return data.decode("latin-1")
    return ssl.DER_cert_to_PEM_cert(data)
