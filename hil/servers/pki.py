"""The loopback test bench's PKI: its CA, the CA's revocation list and client certificates.

:func:`make_test_pki` makes the bench's CA, its certificate revocation list (CRL,
``hil-test-ca.crl``) and the controller's client certificate (``configs/pki/``; see the README
there). Regenerate them with::

    python -m hil.servers.pki --regenerate configs/pki

:func:`issue_client_certificate` issues another client's certificate from the bench CA (a
UaExpert, ``uaread`` or node-opcua client), :func:`revoke` puts one on the CRL; both from the
command line::

    pharmatwin-hil pki issue-client uaexpert --uri urn:my-pc:UnifiedAutomation:UaExpert
    pharmatwin-hil pki revoke runs/pki/uaexpert.der

The server certificates these clients trust through the CA are :mod:`hil.servers.certs`'.
Test-bench credentials: never use them for a plant.
"""

from __future__ import annotations

import argparse
import ipaddress
import re
import sys
import urllib.parse
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import ExtendedKeyUsageOID

from hil.servers.certs import (
    CA_USAGES,
    CertificateAuthority,
    key_pem,
    leaf_certificate,
    load_certificate,
    load_crl,
    new_key,
    read_file,
    subject_name,
    write_file,
)

#: The test PKI's files (:func:`make_test_pki`) and the controller's application URI.
CA_CERTIFICATE_FILE = "hil-test-ca.der"
CA_KEY_FILE = "hil-test-ca.key.pem"
CLIENT_CERTIFICATE_FILE = "pharmatwin-client.der"
CLIENT_KEY_FILE = "pharmatwin-client.key.pem"
CRL_FILE = "hil-test-ca.crl"
CLIENT_URI = "urn:pharmatwin:controller"
#: A CRL is reissued with this validity (its nextUpdate) whenever it changes.
CRL_VALID_FOR = timedelta(days=5 * 365)
CA_VALID_FOR = timedelta(days=20 * 365)
CLIENT_VALID_FOR = timedelta(days=10 * 365)

#: RFC 3986: a scheme (a letter, then letters, digits, "+", "-", "."), ":", then at least one
#: character a URI may hold as it is (unreserved or reserved) or a %HH escape
_SCHEME = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*:")
_URI_CHAR = re.compile(r"[A-Za-z0-9\-._~:/?#\[\]@!$&'()*+,;=]|%[0-9A-Fa-f]{2}")
_URI_ALLOWED = (
    "allowed: an absolute URI (RFC 3986: a scheme, ':', then no spaces; other characters "
    "%-escaped), e.g. urn:my-pc:UnifiedAutomation:UaExpert; it must be the client's own "
    "ApplicationUri, which the server checks against the certificate"
)


def uri_problem(uri: str) -> str | None:
    """Why ``uri`` cannot be an OPC UA application URI (the SubjectAltName URI of a client
    certificate, which a server checks against the client's ApplicationUri), as one line
    naming ``--uri`` and what is allowed; None when it is an absolute URI (RFC 3986)."""
    scheme = _SCHEME.match(uri)
    why = (
        "it has no scheme, such as urn: or http:"
        if scheme is None
        else _rest_problem(uri[scheme.end() :]) or _structure_problem(uri)
    )
    return None if why is None else f"--uri {uri!r} is not a valid URI ({why}); {_URI_ALLOWED}"


def _rest_problem(rest: str) -> str | None:
    """What is wrong with what follows a URI's scheme, or None."""
    if not rest:
        return "nothing after its scheme"
    at = 0
    while at < len(rest):
        char = _URI_CHAR.match(rest, at)
        if char is None:
            return f"it holds {rest[at]!r}, which a URI may not hold unescaped"
        at = char.end()
    return None


def _structure_problem(uri: str) -> str | None:
    """What RFC 3986's structure refuses in a URI of allowed characters (an unclosed IPv6
    host such as ``http://[::1``, a port that is not a number), or None."""
    try:
        parts = urllib.parse.urlsplit(uri)
        parts.port  # noqa: B018 - parsed here: raises ValueError when it is not a number
    except ValueError as exc:
        return str(exc)
    return None


def make_test_pki(folder: Path) -> dict[str, Path]:
    """Write a new test-bench CA, its empty CRL and the controller's client certificate into
    ``folder``.

    Returns the five files by role (``ca_certificate``, ``ca_private_key``, ``crl``,
    ``client_certificate``, ``client_private_key``). The client certificate is for
    :data:`CLIENT_URI`, on localhost / 127.0.0.1, with the clientAuth usage, signed by the CA.
    Existing files are overwritten; the servers' certificates signed by an older CA are then
    made anew on their next start.
    """
    folder.mkdir(parents=True, exist_ok=True)
    now = datetime.now(UTC)
    ca_key = new_key()
    ca_name = subject_name("PharmaTwin HIL test CA (loopback test bench only)")
    ca_cert = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(minutes=5))
        .not_valid_after(now + CA_VALID_FOR)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(CA_USAGES, critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), False)
        .sign(ca_key, hashes.SHA256())
    )
    ca = CertificateAuthority(ca_cert, ca_key)
    files = {
        "ca_certificate": folder / CA_CERTIFICATE_FILE,
        "ca_private_key": folder / CA_KEY_FILE,
        "crl": folder / CRL_FILE,
        "client_certificate": folder / CLIENT_CERTIFICATE_FILE,
        "client_private_key": folder / CLIENT_KEY_FILE,
    }
    write_file(files["ca_private_key"], key_pem(ca_key), mode=0o600)
    write_file(
        files["ca_certificate"], ca_cert.public_bytes(serialization.Encoding.DER), mode=0o644
    )
    write_file(files["crl"], _crl(ca, []), mode=0o644)
    issue_client_certificate(
        ca,
        CLIENT_URI,
        files["client_certificate"],
        files["client_private_key"],
        common_name="PharmaTwin controller (test bench)",
        replace=True,  # a regeneration replaces the files there (see above)
    )
    return files


def issue_client_certificate(
    ca: CertificateAuthority,
    application_uri: str,
    certificate: Path,
    private_key: Path,
    *,
    common_name: str,
    dns: Sequence[str] = ("localhost",),
    ips: Sequence[str] = ("127.0.0.1",),
    replace: bool = False,
) -> x509.Certificate:
    """Issue an OPC UA client's application instance certificate from ``ca`` (RSA 2048,
    SHA-256, the key usages every secure policy needs, clientAuth, SubjectAltName URI + DNS +
    IP) and write it (DER) and its new key (PEM, PKCS#8, mode 0600). ValueError, before
    anything is written, for an application URI that is not a URI (:func:`uri_problem`), an
    IP address that is not one, and a ``certificate`` or ``private_key`` that exists unless
    ``replace`` (``--force``; a directory is never replaced)."""
    why = uri_problem(application_uri)
    if why is not None:
        raise ValueError(why)
    _check_replace((certificate, private_key), replace)
    names: list[x509.GeneralName] = [x509.UniformResourceIdentifier(application_uri)]
    names += [x509.DNSName(d) for d in dns]
    try:
        names += [x509.IPAddress(ipaddress.ip_address(ip)) for ip in ips]
    except ValueError as exc:
        raise ValueError(f"--ip: {exc}") from exc
    key = new_key()
    until = datetime.now(UTC) + CLIENT_VALID_FOR
    cert = leaf_certificate(
        key, subject_name(common_name), names, [ExtendedKeyUsageOID.CLIENT_AUTH], ca, until
    )
    certificate.parent.mkdir(parents=True, exist_ok=True)
    private_key.parent.mkdir(parents=True, exist_ok=True)
    write_file(private_key, key_pem(key), mode=0o600)
    write_file(certificate, cert.public_bytes(serialization.Encoding.DER), mode=0o644)
    return cert


def _check_replace(paths: Sequence[Path], replace: bool) -> None:
    """ValueError for a directory in the way, or for files that exist unless ``replace``."""
    for path in paths:
        if path.is_dir():
            raise ValueError(f"{path} is a directory; allowed: another NAME or --out")
    existing = [str(p) for p in paths if p.exists()]
    if existing and not replace:
        raise ValueError(
            f"{' and '.join(existing)} already exist{'s' if len(existing) == 1 else ''}: "
            "refusing to overwrite (a client may use that key); allowed: another NAME or "
            "--out, or --force to replace"
        )


def revoke(ca: CertificateAuthority, crl: Path, certificate: x509.Certificate) -> int:
    """Put ``certificate`` (issued by ``ca``) on the CRL file ``crl``, reissued and signed by
    ``ca``; returns how many certificates it revokes. ValueError if ``ca`` did not issue it."""
    try:
        certificate.verify_directly_issued_by(ca.certificate)
    except (ValueError, TypeError, InvalidSignature) as exc:
        raise ValueError(
            f"the certificate {certificate.subject.rfc4514_string()} is not issued by the CA "
            f"{ca.certificate.subject.rfc4514_string()}"
        ) from exc
    revoked = load_crl(crl, ca.certificate) if crl.is_file() else []
    number = _crl_number(crl) + 1 if crl.is_file() else 1
    serials = {r.serial_number: r for r in revoked}
    if certificate.serial_number not in serials:
        serials[certificate.serial_number] = (
            x509.RevokedCertificateBuilder()
            .serial_number(certificate.serial_number)
            .revocation_date(datetime.now(UTC))
            .build()
        )
    write_file(crl, _crl(ca, list(serials.values()), number), mode=0o644)
    return len(serials)


def _crl_number(path: Path) -> int:
    data = read_file(path)
    pem = data.lstrip().startswith(b"-----BEGIN")
    crl = x509.load_pem_x509_crl(data) if pem else x509.load_der_x509_crl(data)
    try:
        return int(crl.extensions.get_extension_for_class(x509.CRLNumber).value.crl_number)
    except x509.ExtensionNotFound:
        return 0


def _crl(
    ca: CertificateAuthority, revoked: list[x509.RevokedCertificate], number: int = 1
) -> bytes:
    """A CRL (DER) of ``revoked``, signed by ``ca``, valid :data:`CRL_VALID_FOR`, numbered."""
    now = datetime.now(UTC)
    issuer_key = ca.certificate.public_key()
    if not isinstance(issuer_key, rsa.RSAPublicKey):  # the bench CA's (make_test_pki)
        subject = ca.certificate.subject.rfc4514_string()
        raise ValueError(f"the CA {subject} has no RSA key; allowed: the bench CA (RSA 2048)")
    builder = (
        x509.CertificateRevocationListBuilder()
        .issuer_name(ca.certificate.subject)
        .last_update(now - timedelta(minutes=5))
        .next_update(min(now + CRL_VALID_FOR, ca.certificate.not_valid_after_utc))
        .add_extension(x509.CRLNumber(number), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(issuer_key), False)
    )
    for entry in revoked:
        builder = builder.add_revoked_certificate(entry)
    return builder.sign(ca.key, hashes.SHA256()).public_bytes(serialization.Encoding.DER)


# ---------------------------------------------------------------------- pharmatwin-hil pki
def command(args: argparse.Namespace, console: Any) -> int:
    """Run ``pharmatwin-hil pki issue-client|revoke`` (the parser is :mod:`hil.cli`'s): 0 done,
    2 for bad input (one line, no traceback)."""
    folder: Path = args.ca_dir
    try:
        ca = CertificateAuthority.load(folder / CA_CERTIFICATE_FILE, folder / CA_KEY_FILE)
        if args.pki_command == "revoke":
            count = revoke(ca, folder / CRL_FILE, load_certificate(args.certificate))
            _say(console, f"revoked {args.certificate}; {folder / CRL_FILE} lists {count}")
            return 0
        stem = args.name
        if not stem or "/" in stem or stem.startswith("."):
            raise ValueError(f"NAME {stem!r}: a plain file name stem, e.g. uaexpert")
        cert, key = args.out / f"{stem}.der", args.out / f"{stem}.key.pem"
        issue_client_certificate(
            ca,
            args.uri,
            cert,
            key,
            common_name=stem,
            dns=args.dns or ["localhost"],
            ips=args.ip or ["127.0.0.1"],
            replace=args.force,
        )
    except ValueError as exc:
        _say(console, f"error: {exc}")
        return 2
    except OSError as exc:  # an --out or CA folder that cannot be read or written
        _say(console, f"error: {exc.filename or args.out}: {exc.strerror or exc}")
        return 2
    _say(console, f"certificate {cert}  (application URI {args.uri})")
    _say(console, f"private key {key}  (mode 0600)")
    _say(console, f"trust the CA {folder / CA_CERTIFICATE_FILE}, CRL {folder / CRL_FILE}")
    return 0


def _say(console: Any, text: str) -> None:
    """One line as it is: no markup, highlighting or emoji codes (``urn:a:b`` is not 🅰)."""
    console.print(text, markup=False, highlight=False, emoji=False, soft_wrap=True)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m hil.servers.pki",
        description="Make the loopback HIL test bench's CA and client certificate "
        "(test-bench credentials: never use them for a plant).",
    )
    parser.add_argument(
        "--regenerate",
        metavar="FOLDER",
        type=Path,
        required=True,
        help="write a new CA and client certificate into FOLDER (e.g. configs/pki), "
        "replacing the files there",
    )
    args = parser.parse_args(argv)
    files = make_test_pki(args.regenerate)
    for role, path in files.items():
        print(f"{role:20} {path}")
    print("HIL servers sign a new certificate with this CA on their next start.")
    print("Client certificates issued by the old CA no longer connect: issue them anew.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
