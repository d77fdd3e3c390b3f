"""Certificates of the HIL servers: made on first start, reused after, signed by a CA or self.

:func:`ensure_server_certificate` writes the server's application instance certificate (DER)
and its private key (PEM, PKCS#8, mode 0600) into a state folder, and reuses them on every
later start, so the clients' trust stays valid. The certificate follows OPC UA Part 6 §6.2.2:
RSA 2048 with SHA-256, the application URI as SubjectAltName URI plus the host names and IP
addresses it serves under, and the key usages Basic256Sha256 needs. It is self-signed, or,
given a :class:`CertificateAuthority`, signed by that CA (so a client that trusts the CA
trusts a certificate made on the server's first start). A pair is made anew only if a file
is missing, the key does not match, the certificate does not carry ``application_uri``, is
not (or no longer) signed as asked, or is out of date (logged).

The x509 pieces here (:class:`CertificateAuthority`, :func:`leaf_certificate`, the key and
file helpers) also make the test bench's CA, CRL and client certificates
(:mod:`hil.servers.pki`).

Every certificate made here carries what clients check: its application URI and the DNS name
``localhost`` and IP address 127.0.0.1 in its SubjectAltName, and an AuthorityKeyIdentifier
naming the CA, whose certificate the HIL server sends with its own.
"""

from __future__ import annotations

import ipaddress
import logging
import os
import socket
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

log = logging.getLogger("pharmatwin.hil.certs")

CERTIFICATE_FILE = "server-cert.der"
KEY_FILE = "server-key.pem"
VALID_FOR = timedelta(days=5 * 365)


@dataclass(frozen=True)
class CertificateAuthority:
    """A CA certificate and its private key, which signs the server certificates."""

    certificate: x509.Certificate
    key: rsa.RSAPrivateKey

    @classmethod
    def load(cls, certificate: Path, private_key: Path) -> CertificateAuthority:
        """Load a CA pair (certificate DER or PEM, unencrypted RSA key PEM or DER).

        ValueError saying what is wrong: unreadable, not a CA, or a key of another certificate.
        """
        cert = load_certificate(certificate)
        data = read_file(private_key)
        try:
            if data.lstrip().startswith(b"-----BEGIN"):
                key = serialization.load_pem_private_key(data, None)
            else:
                key = serialization.load_der_private_key(data, None)
        except (ValueError, TypeError) as exc:
            raise ValueError(f"{private_key} is not an unencrypted private key: {exc}") from exc
        if not isinstance(key, rsa.RSAPrivateKey):
            raise ValueError(f"{private_key} is not an RSA key")
        if not _is_ca(cert):
            raise ValueError(f"{certificate} is not a CA certificate (basicConstraints ca=false)")
        if not _same_key(cert, key):
            raise ValueError(f"{private_key} is not the key of {certificate}")
        return cls(cert, key)


def load_crl(path: Path, issuer: x509.Certificate | None = None) -> list[x509.RevokedCertificate]:
    """The certificates a CRL file (DER or PEM) revokes; ValueError naming the file if it is
    not a CRL, or (given ``issuer``) not signed by it. A CRL past its nextUpdate is logged."""
    data = read_file(path)
    try:
        if data.lstrip().startswith(b"-----BEGIN"):
            crl = x509.load_pem_x509_crl(data)
        else:
            crl = x509.load_der_x509_crl(data)
    except ValueError as exc:
        raise ValueError(f"{path} is not a PEM or DER certificate revocation list: {exc}") from exc
    if issuer is not None:
        key = issuer.public_key()
        if crl.issuer != issuer.subject or not (
            isinstance(key, rsa.RSAPublicKey) and crl.is_signature_valid(key)
        ):
            raise ValueError(f"{path} is not signed by {issuer.subject.rfc4514_string()}")
    if crl.next_update_utc is not None and crl.next_update_utc < datetime.now(UTC):
        log.warning("the CRL %s is out of date since %s", path, crl.next_update_utc)
    return list(crl)


def load_certificate(path: Path) -> x509.Certificate:
    """A certificate file, DER or PEM; ValueError naming the file if it is neither."""
    data = read_file(path)
    try:
        if data.lstrip().startswith(b"-----BEGIN"):
            return x509.load_pem_x509_certificate(data)
        return x509.load_der_x509_certificate(data)
    except ValueError as exc:
        raise ValueError(f"{path} is not a PEM or DER certificate: {exc}") from exc


def ensure_server_certificate(
    folder: Path, application_uri: str, host: str, ca: CertificateAuthority | None = None
) -> tuple[Path, Path]:
    """The (certificate, private key) paths in ``folder``, made on the first call.

    ``host`` is the address the server binds; it goes into the SubjectAltName with
    ``localhost``, this machine's name and 127.0.0.1. With ``ca`` the certificate is signed by
    it, else self-signed; a stored one signed otherwise is replaced.
    """
    cert_path, key_path = folder / CERTIFICATE_FILE, folder / KEY_FILE
    why = _unusable(cert_path, key_path, application_uri, ca)
    if why is None:
        return cert_path, key_path
    log.info("making a new OPC UA server certificate in %s: %s", folder, why)
    folder.mkdir(parents=True, exist_ok=True)
    key = new_key()
    cert = _server_certificate(key, application_uri, host, ca)
    write_file(key_path, key_pem(key), mode=0o600)
    write_file(cert_path, cert.public_bytes(serialization.Encoding.DER), mode=0o644)
    return cert_path, key_path


def ephemeral_certificate(
    application_uri: str, host: str
) -> tuple[x509.Certificate, rsa.RSAPrivateKey]:
    """A self-signed server certificate and key kept in memory only: what an unsecured bench
    server needs so that clients encrypt their passwords (never stored, never trusted)."""
    key = new_key()
    return _server_certificate(key, application_uri, host, None), key


# ---------------------------------------------------------------------- helpers
def _unusable(
    cert_path: Path, key_path: Path, application_uri: str, ca: CertificateAuthority | None
) -> str | None:
    """Why the stored pair cannot be reused, or None if it can."""
    if not cert_path.is_file() or not key_path.is_file():
        return "none stored yet"
    try:
        cert = x509.load_der_x509_certificate(cert_path.read_bytes())
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        key = serialization.load_pem_private_key(key_path.read_bytes(), None)
    except (ValueError, TypeError, x509.ExtensionNotFound) as exc:
        return f"the stored one cannot be read ({exc})"
    if not _same_key(cert, key):
        return "the stored key is not the certificate's"
    uris = san.get_values_for_type(x509.UniformResourceIdentifier)
    if application_uri not in uris:
        return f"the stored one is for {uris}, not {application_uri!r}"
    if cert.not_valid_after_utc <= datetime.now(UTC) + timedelta(days=1):
        return f"the stored one expires {cert.not_valid_after_utc:%Y-%m-%d}"
    issuer = ca.certificate if ca is not None else cert
    try:
        cert.verify_directly_issued_by(issuer)
    except (ValueError, TypeError, InvalidSignature):
        wanted = f"the CA {issuer.subject.rfc4514_string()}" if ca is not None else "itself"
        return f"the stored one is not signed by {wanted}"
    return None


def _server_certificate(
    key: rsa.RSAPrivateKey, application_uri: str, host: str, ca: CertificateAuthority | None
) -> x509.Certificate:
    name = subject_name("PharmaTwin HIL PLC")
    extended = [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]
    until = datetime.now(UTC) + VALID_FOR
    return leaf_certificate(key, name, _alt_names(application_uri, host), extended, ca, until)


def leaf_certificate(
    key: rsa.RSAPrivateKey,
    name: x509.Name,
    alt_names: list[x509.GeneralName],
    extended: list[x509.ObjectIdentifier],
    ca: CertificateAuthority | None,
    until: datetime,
) -> x509.Certificate:
    """An application instance certificate, signed by ``ca`` or self-signed."""
    now = datetime.now(UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(minutes=5))
        .add_extension(x509.SubjectAlternativeName(alt_names), False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(_usages(cert_sign=ca is None), critical=True)  # self-signed: signs itself
        .add_extension(x509.ExtendedKeyUsage(extended), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), False)
    )
    if ca is None:
        return builder.issuer_name(name).not_valid_after(until).sign(key, hashes.SHA256())
    issuer_key = ca.certificate.public_key()
    if not isinstance(issuer_key, rsa.RSAPublicKey):
        raise ValueError(
            f"the CA's key is {type(issuer_key).__name__}, not RSA: it cannot sign here"
        )
    return (
        builder.issuer_name(ca.certificate.subject)
        .not_valid_after(min(until, ca.certificate.not_valid_after_utc))
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(issuer_key), critical=False
        )
        .sign(ca.key, hashes.SHA256())
    )


def _usages(*, cert_sign: bool) -> x509.KeyUsage:
    """An application certificate's key usages, all four Basic256Sha256 needs (+ keyCertSign)."""
    return x509.KeyUsage(
        digital_signature=True,
        content_commitment=True,
        key_encipherment=True,
        data_encipherment=True,
        key_agreement=False,
        key_cert_sign=cert_sign,
        crl_sign=False,
        encipher_only=False,
        decipher_only=False,
    )


CA_USAGES = x509.KeyUsage(
    digital_signature=True,
    content_commitment=False,
    key_encipherment=False,
    data_encipherment=False,
    key_agreement=False,
    key_cert_sign=True,
    crl_sign=True,
    encipher_only=False,
    decipher_only=False,
)


def subject_name(common_name: str) -> x509.Name:
    return x509.Name(
        [
            x509.NameAttribute(NameOID.COMMON_NAME, common_name),
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "PharmaTwin"),
        ]
    )


def _alt_names(application_uri: str, host: str) -> list[x509.GeneralName]:
    names: list[x509.GeneralName] = [x509.UniformResourceIdentifier(application_uri)]
    dns = {"localhost", socket.gethostname()}
    ips = {ipaddress.ip_address("127.0.0.1")}
    try:
        ips.add(ipaddress.ip_address(host))
    except ValueError:
        dns.add(host)
    names += [x509.DNSName(d) for d in sorted(dns) if d]
    names += [x509.IPAddress(ip) for ip in sorted(ips, key=str)]
    return names


def _is_ca(cert: x509.Certificate) -> bool:
    try:
        return bool(cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca)
    except x509.ExtensionNotFound:
        return False


def _same_key(cert: x509.Certificate, key: object) -> bool:
    if not isinstance(key, rsa.RSAPrivateKey):
        return False
    public = cert.public_key()
    return (
        isinstance(public, rsa.RSAPublicKey)
        and public.public_numbers() == key.public_key().public_numbers()
    )


def new_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


def key_pem(key: rsa.RSAPrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def read_file(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError as exc:
        raise ValueError(f"cannot read {path}: {exc.strerror or exc}") from exc


def write_file(path: Path, data: bytes, mode: int) -> None:
    """Write atomically (a temporary file renamed), so a crash never leaves half a file."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
    os.replace(tmp, path)
