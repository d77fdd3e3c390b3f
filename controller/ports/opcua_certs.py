"""The OPC UA client's certificates: loading them, and checking the server's against the trust list.

Pure file and X.509 work (cryptography), no asyncua: :class:`ClientCredentials` reads the
client certificate and key (PEM or DER, relative to the site's folder) and the trust list, in
the form asyncua loads; :meth:`ClientCredentials.check_server` accepts a server certificate
that is in the trust list, or directly issued by a CA in it, and in date. Every failure is a
:class:`~controller.errors.PortConnectError` naming the file or the server.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization

from controller.errors import PortConnectError
from controller.ports.settings import OpcUaSecurity


@dataclass(frozen=True)
class ClientCredentials:
    """The client certificate (DER) and key (PKCS#8 DER), and the certificates it trusts."""

    certificate: bytes
    key: bytes
    trusted: tuple[x509.Certificate, ...]
    trust_list: tuple[str, ...]  # as written in the site file, for messages
    application_uri: str | None  # the certificate's SubjectAltName URI

    @classmethod
    def load(cls, security: OpcUaSecurity, base: Path) -> ClientCredentials:
        """Read the files ``security`` names (relative to ``base``); PortConnectError naming
        a file that cannot be read or is not a certificate or key."""
        cert = _load_cert(_read(base, security.certificate, "client certificate"))
        key = _load_key(_read(base, security.private_key, "client private key"))
        trusted = tuple(
            _load_cert(_read(base, ref, "trust list certificate")) for ref in security.trust_list
        )
        uris = _san_uris(cert)
        der = cert.public_bytes(serialization.Encoding.DER)
        return cls(der, key, trusted, security.trust_list, uris[0] if uris else None)

    def check_server(self, peer: bytes | None, url: str) -> None:
        """Refuse (PortConnectError) a server certificate (DER) the trust list does not vouch
        for, or none at all."""
        server_cert = x509.load_der_x509_certificate(peer) if peer else None
        if server_cert is None or not _trusted(server_cert, list(self.trusted)):
            subject = server_cert.subject.rfc4514_string() if server_cert else "none"
            raise PortConnectError(
                f"{url}: the server certificate ({subject}) is not trusted: it is not in, "
                f"nor issued by, the trust list {list(self.trust_list)}; refusing to connect"
            )


def _read(base: Path, ref: str | None, what: str) -> tuple[bytes, str]:
    path = base / (ref or "")
    try:
        return path.read_bytes(), f"the {what} {path}"
    except OSError as exc:
        raise PortConnectError(f"cannot read the {what} {path}: {exc}") from exc


def _load_cert(file: tuple[bytes, str]) -> x509.Certificate:
    """A certificate file, PEM or DER (PortConnectError naming the file if neither)."""
    data, what = file
    try:
        if data.lstrip().startswith(b"-----BEGIN"):
            return x509.load_pem_x509_certificate(data)
        return x509.load_der_x509_certificate(data)
    except ValueError as exc:
        raise PortConnectError(f"{what} is not a PEM or DER certificate: {exc}") from exc


def _load_key(file: tuple[bytes, str]) -> bytes:
    """A private key file (PEM or DER) as unencrypted PKCS#8 DER, the form asyncua loads."""
    data, what = file
    pem = data.lstrip().startswith(b"-----BEGIN")
    try:
        load = serialization.load_pem_private_key if pem else serialization.load_der_private_key
        key = load(data, None)
    except (ValueError, TypeError) as exc:
        raise PortConnectError(f"{what} is not an unencrypted PEM or DER key: {exc}") from exc
    return key.private_bytes(
        serialization.Encoding.DER, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def _san_uris(cert: x509.Certificate) -> list[str]:
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName)
    except x509.ExtensionNotFound:
        return []
    return list(san.value.get_values_for_type(x509.UniformResourceIdentifier))


def _trusted(cert: x509.Certificate, trusted: list[x509.Certificate]) -> bool:
    """In the trust list (exactly), or directly issued by a trusted certificate; and in date."""
    now = datetime.now(UTC)
    if not cert.not_valid_before_utc <= now <= cert.not_valid_after_utc:
        return False
    for anchor in trusted:
        if anchor == cert:
            return True
        if _is_ca(anchor):
            with contextlib.suppress(ValueError, TypeError, InvalidSignature):
                cert.verify_directly_issued_by(anchor)
                return True
    return False


def _is_ca(cert: x509.Certificate) -> bool:
    try:
        return bool(cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca)
    except x509.ExtensionNotFound:
        return False
