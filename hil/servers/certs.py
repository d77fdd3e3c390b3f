"""The HIL OPC UA server's application instance certificate, made on first start.

:func:`ensure_server_certificate` writes a self-signed certificate (DER) and its private key
(PEM, PKCS#8, mode 0600) into a state folder, and reuses them on every later start, so the
clients' trust lists stay valid. The certificate follows OPC UA Part 6 §6.2.2: RSA 2048 with
SHA-256, the application URI as SubjectAltName URI plus the host names and IP addresses it
serves under, and the key usages Basic256Sha256 needs. A pair is made anew only if a file is
missing, the certificate does not carry ``application_uri`` or it is out of date (logged).
"""

from __future__ import annotations

import ipaddress
import logging
import os
import socket
from datetime import UTC, datetime, timedelta
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

log = logging.getLogger(__name__)

CERTIFICATE_FILE = "server-cert.der"
KEY_FILE = "server-key.pem"
VALID_FOR = timedelta(days=5 * 365)


def ensure_server_certificate(folder: Path, application_uri: str, host: str) -> tuple[Path, Path]:
    """The (certificate, private key) paths in ``folder``, made on the first call.

    ``host`` is the address the server binds; it goes into the SubjectAltName with
    ``localhost``, this machine's name and 127.0.0.1.
    """
    cert_path, key_path = folder / CERTIFICATE_FILE, folder / KEY_FILE
    why = _unusable(cert_path, key_path, application_uri)
    if why is None:
        return cert_path, key_path
    log.info("making a new OPC UA server certificate in %s: %s", folder, why)
    folder.mkdir(parents=True, exist_ok=True)
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    cert = _self_signed(key, application_uri, host)
    _write(key_path, _key_pem(key), mode=0o600)
    _write(cert_path, cert.public_bytes(serialization.Encoding.DER), mode=0o644)
    return cert_path, key_path


def _unusable(cert_path: Path, key_path: Path, application_uri: str) -> str | None:
    """Why the stored pair cannot be reused, or None if it can."""
    if not cert_path.is_file() or not key_path.is_file():
        return "none stored yet"
    try:
        cert = x509.load_der_x509_certificate(cert_path.read_bytes())
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except (ValueError, x509.ExtensionNotFound) as exc:
        return f"the stored one cannot be read ({exc})"
    uris = san.get_values_for_type(x509.UniformResourceIdentifier)
    if application_uri not in uris:
        return f"the stored one is for {uris}, not {application_uri!r}"
    if cert.not_valid_after_utc <= datetime.now(UTC) + timedelta(days=1):
        return f"the stored one expires {cert.not_valid_after_utc:%Y-%m-%d}"
    return None


def _self_signed(key: rsa.RSAPrivateKey, application_uri: str, host: str) -> x509.Certificate:
    name = x509.Name(
        [
            x509.NameAttribute(NameOID.COMMON_NAME, "PharmaTwin HIL PLC"),
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "PharmaTwin"),
        ]
    )
    now = datetime.now(UTC)
    usages = x509.KeyUsage(
        digital_signature=True,
        content_commitment=True,
        key_encipherment=True,
        data_encipherment=True,
        key_agreement=False,
        key_cert_sign=True,  # self-signed: it signs itself
        crl_sign=False,
        encipher_only=False,
        decipher_only=False,
    )
    extended = x509.ExtendedKeyUsage(
        [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]
    )
    return (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(minutes=5))
        .not_valid_after(now + VALID_FOR)
        .add_extension(x509.SubjectAlternativeName(_alt_names(application_uri, host)), False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(usages, critical=True)
        .add_extension(extended, critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), False)
        .sign(key, hashes.SHA256())
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


def _key_pem(key: rsa.RSAPrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def _write(path: Path, data: bytes, mode: int) -> None:
    """Write atomically (a temporary file renamed), so a crash never leaves half a file."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
    os.replace(tmp, path)
