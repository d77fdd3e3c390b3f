"""Modbus/TCP Security for the HIL Modbus server: its TLS context, from a site's bench CA.

:func:`site_tls_context` makes (on first use) and reuses the server's certificate, signed by
the site's test-bench CA, and requires client certificates that CA issued;
:func:`tls_server_context` builds the context from files. A client refused during the TLS
handshake is logged (logger ``hil.servers.modbus``, WARNING) with the TLS reason, which
asyncio itself drops.
"""

from __future__ import annotations

import logging
import ssl
from pathlib import Path
from typing import TYPE_CHECKING

from cryptography.hazmat.primitives.serialization import Encoding

from controller.errors import ConfigError, Problem
from hil.servers.certs import CertificateAuthority, ensure_server_certificate
from hil.site import hil_section

if TYPE_CHECKING:
    from controller.runtime.site import Site

log = logging.getLogger("hil.servers.modbus")  # the Modbus server's log, which serve keeps


def site_tls_context(site: Site, folder: Path, host: str) -> ssl.SSLContext:
    """Modbus/TCP Security for ``site``'s HIL: the server's TLS context, from the site's test
    bench CA (``hil.ca_certificate`` / ``hil.ca_private_key``).

    The server certificate (application URI ``urn:pharmatwin:hil:<site>:modbus``, the host
    names and addresses it serves under) is made on the first call in ``folder``, signed by
    the CA, and reused after (:func:`~hil.servers.certs.ensure_server_certificate`); clients
    must present a certificate the CA issued. ConfigError naming the site file and key if the
    site has no CA or it cannot be used.
    """
    hil = hil_section(site)
    if hil is None or hil.ca_certificate is None or hil.ca_private_key is None:
        why = (
            "Modbus/TCP Security needs the site's test-bench CA (hil.ca_certificate and "
            "hil.ca_private_key): it signs the server certificate and issues the clients'"
        )
        raise ConfigError([Problem(str(site.path), "hil.ca_certificate", why, None)])
    try:
        ca = CertificateAuthority.load(site.file(hil.ca_certificate), site.file(hil.ca_private_key))
    except ValueError as exc:
        raise ConfigError(
            [Problem(str(site.path), "hil.ca_certificate", str(exc), hil.ca_certificate)]
        ) from exc
    uri = f"urn:pharmatwin:hil:{site.name}:modbus"
    certificate, key = ensure_server_certificate(folder, uri, host, ca)
    pem = folder / "server-cert.pem"  # what ssl loads; the DER beside it is the one kept
    pem.write_text(ssl.DER_cert_to_PEM_cert(certificate.read_bytes()))
    return tls_server_context(pem, key, ca.certificate.public_bytes(Encoding.DER))


def tls_server_context(certificate: Path, key: Path, client_ca: bytes) -> ssl.SSLContext:
    """A Modbus/TCP Security server context: TLS 1.2 or later, the server's ``certificate``
    (PEM) and ``key``, and a client certificate issued by ``client_ca`` (DER) required.
    A client refused during the handshake is logged (WARNING) with the TLS reason."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.load_cert_chain(str(certificate), str(key))
    ctx.load_verify_locations(cadata=client_ca)
    ctx.verify_mode = ssl.CERT_REQUIRED  # mutual authentication, as the spec asks
    ctx.sslobject_class = _LoggedHandshake
    return ctx


class _LoggedHandshake(ssl.SSLObject):
    """asyncio's TLS object with the handshake's failure logged: asyncio itself drops it."""

    def do_handshake(self) -> None:
        try:
            super().do_handshake()
        except (ssl.SSLWantReadError, ssl.SSLWantWriteError):
            raise
        except ssl.SSLError as exc:
            log.warning("refused a Modbus/TLS client during the handshake: %s", _tls_reason(exc))
            raise


def _tls_reason(exc: ssl.SSLError) -> str:
    """``its certificate was rejected: certificate has expired``, ``peer did not return a
    certificate``, ``wrong version number`` (not TLS at all)..."""
    if isinstance(exc, ssl.SSLCertVerificationError) and exc.verify_message:
        return f"its certificate was rejected: {exc.verify_message}"
    return exc.reason.lower().replace("_", " ") if exc.reason else str(exc)
