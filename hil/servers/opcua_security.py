"""The HIL OPC UA server's credentials: its certificate and policies, and whom it trusts.

:class:`ServerSecurity` names the server certificate, the policies offered
(:data:`SECURE_POLICIES`, SignAndEncrypt; None only if ``offer_none``), the CA chain sent
with the certificate, and the CAs and revocation lists client certificates are checked
against (:func:`client_validator`). :func:`site_ca` loads a site's test-bench CA and its CRL;
:func:`site_users` the site's users with their passwords from the environment.
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Collection
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from asyncua import ua
from asyncua.common.utils import ServiceError
from asyncua.crypto.truststore import TrustStore
from asyncua.crypto.validator import (
    CertificateValidator,
    CertificateValidatorMethod,
    CertificateValidatorOptions,
)
from cryptography import x509

from controller.errors import ConfigError, Problem
from hil.servers.certs import CertificateAuthority, load_certificate, load_crl
from hil.site import HilSection, hil_section

if TYPE_CHECKING:
    from controller.runtime.site import Site

log = logging.getLogger("pharmatwin.hil.opcua")  # the OPC UA server's log, which serve keeps

#: The secure policies the server offers (SignAndEncrypt), by the names site files use.
SECURE_POLICIES: dict[str, ua.SecurityPolicyType] = {
    "Basic256Sha256": ua.SecurityPolicyType.Basic256Sha256_SignAndEncrypt,
    "Aes128_Sha256_RsaOaep": ua.SecurityPolicyType.Aes128Sha256RsaOaep_SignAndEncrypt,
    "Aes256_Sha256_RsaPss": ua.SecurityPolicyType.Aes256Sha256RsaPss_SignAndEncrypt,
}


@dataclass(frozen=True)
class ServerSecurity:
    """The server's certificate (DER or PEM by suffix) and key, and the policies it offers.

    ``policies``: names of :data:`SECURE_POLICIES`, each offered with SignAndEncrypt.
    ``client_ca``: CA certificates (DER or PEM) a client certificate must be issued by, checked
    at CreateSession (asyncua's TrustStore; also date, application URI, key usages, clientAuth),
    else BadCertificateUntrusted & co; ``crl``: their revocation lists (DER or PEM), a revoked
    certificate answers BadCertificateRevoked. Empty ``client_ca``: any client certificate.
    ``chain``: CA certificates sent after the server's own, so clients can build the chain.
    """

    certificate: Path
    private_key: Path
    application_uri: str
    offer_none: bool = False  # also offer the unsecured endpoint
    client_ca: tuple[Path, ...] = ()
    crl: tuple[Path, ...] = ()
    chain: tuple[Path, ...] = ()
    policies: tuple[str, ...] = tuple(SECURE_POLICIES)


def site_ca(
    site: Site, hil: HilSection
) -> tuple[tuple[Path, ...], CertificateAuthority | None, tuple[Path, ...]]:
    """The site's HIL CA: its certificate file, the loaded pair and its CRL file (if any);
    ConfigError if unusable."""
    if hil.ca_certificate is None or hil.ca_private_key is None:
        return (), None, ()
    cert = site.file(hil.ca_certificate)
    try:
        ca = CertificateAuthority.load(cert, site.file(hil.ca_private_key))
    except ValueError as exc:
        raise ConfigError(
            [Problem(str(site.path), "hil.ca_certificate", str(exc), hil.ca_certificate)]
        ) from exc
    crl = cert.with_suffix(".crl")
    if not crl.is_file():
        log.warning("no CRL %s beside the CA: revocation is not checked", crl)
        return (cert,), ca, ()
    try:
        load_crl(crl, ca.certificate)
    except ValueError as exc:
        raise ConfigError(
            [Problem(str(site.path), "hil.ca_certificate", str(exc), str(crl))]
        ) from exc
    return (cert,), ca, (crl,)


class CaFiles(TrustStore):
    """asyncua's TrustStore over certificate and CRL files (its own loads whole folders)."""

    def __init__(self, files: Collection[Path], crls: Collection[Path]) -> None:
        super().__init__([], [])
        self.files, self.crls = tuple(files), tuple(crls)

    async def load_trust(self) -> None:
        certs = [await asyncio.to_thread(load_certificate, f) for f in self.files]
        self._trust_store = x509.verification.Store(certs)

    async def load_crl(self) -> None:
        revoked: list[x509.RevokedCertificate] = []
        for path in self.crls:
            revoked.extend(await asyncio.to_thread(load_crl, path))
        self._revoked_list = revoked


async def client_validator(
    ca_files: Collection[Path], crls: Collection[Path] = ()
) -> CertificateValidatorMethod:
    """A CreateSession check: the client certificate issued by a CA of ``ca_files``, not
    revoked by ``crls``, in date, for the client's application URI, with the key usages and
    clientAuth; refusals logged."""
    store = CaFiles(ca_files, crls)
    await store.load()
    options = CertificateValidatorOptions.TRUSTED_VALIDATION
    check = CertificateValidator(options | CertificateValidatorOptions.PEER_CLIENT, store)

    async def validate(cert: x509.Certificate, client: ua.ApplicationDescription) -> None:
        try:
            await check(cert, client)
        except ServiceError as exc:
            log.warning(
                "refused the client certificate %s (application %s): %s",
                cert.subject.rfc4514_string(),
                client.ApplicationUri,
                ua.StatusCode(ua.UInt32(exc.code)).name,
            )
            raise

    return validate


def site_users(site: Site, hil: HilSection | None = None) -> dict[str, str]:
    """username -> password for ``hil.users`` (default: the site's ``hil`` section), read from
    the named environment variables."""
    users, problems = {}, []
    hil = hil if hil is not None else hil_section(site)
    for i, user in enumerate(hil.users if hil else ()):
        password = os.environ.get(user.password_env)
        if password is None:
            message = (
                f"the environment variable {user.password_env} is not set; "
                f"it holds the password of user {user.username!r}"
            )
            problems.append(
                Problem(str(site.path), f"hil.users.{i}.password_env", message, user.password_env)
            )
        else:
            users[user.username] = password
    if problems:
        raise ConfigError(problems)
    return users
