"""The test-bench PKI: a CRL, certificates that carry what clients check, and
``pharmatwin-hil pki issue-client`` / ``revoke`` whose certificates connect (or, revoked, do
not) to a real HIL server on loopback."""

from __future__ import annotations

import asyncio
import ipaddress
import shutil
import stat
from pathlib import Path

import pytest
from asyncua import Client, ua
from asyncua.crypto.security_policies import SecurityPolicyBasic256Sha256
from conftest import free_port
from cryptography import x509
from cryptography.x509.oid import ExtendedKeyUsageOID

from controller.errors import ConfigError
from controller.runtime.site import Site, load_site
from hil.cli import main as hil_main
from hil.servers.certs import CertificateAuthority, load_certificate, load_crl
from hil.servers.opcua import opcua_server_for_site
from hil.servers.opcua_cache import address_space_shelf
from hil.servers.pki import (
    CA_CERTIFICATE_FILE,
    CA_KEY_FILE,
    CLIENT_CERTIFICATE_FILE,
    CRL_FILE,
    make_test_pki,
)
from hil.site import hil_section, with_hil

pytestmark = pytest.mark.timeout(60)

ROOT = Path(__file__).resolve().parents[3]
PKI = ROOT / "configs" / "pki"
PASSWORD = "s3cret-pki"
UAEXPERT_URI = "urn:bench-pc:UnifiedAutomation:UaExpert"


@pytest.fixture(scope="module")
def shelf(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return asyncio.run(address_space_shelf(tmp_path_factory.mktemp("pki-shelf")))


def _san(cert: x509.Certificate) -> x509.SubjectAlternativeName:
    return cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value


def test_the_shipped_crl_is_the_cas_in_date_and_empty() -> None:
    ca = CertificateAuthority.load(PKI / CA_CERTIFICATE_FILE, PKI / CA_KEY_FILE)
    assert load_crl(PKI / CRL_FILE, ca.certificate) == []
    crl = x509.load_der_x509_crl((PKI / CRL_FILE).read_bytes())
    assert (
        crl.next_update_utc is not None
        and crl.next_update_utc
        > load_certificate(PKI / CLIENT_CERTIFICATE_FILE).not_valid_before_utc
    )
    assert crl.extensions.get_extension_for_class(x509.CRLNumber).value.crl_number >= 1


def test_a_crl_not_signed_by_the_ca_is_refused(tmp_path: Path) -> None:
    ours = make_test_pki(tmp_path / "ours")
    theirs = make_test_pki(tmp_path / "theirs")
    ca = CertificateAuthority.load(ours["ca_certificate"], ours["ca_private_key"])
    with pytest.raises(ValueError, match="is not signed by"):
        load_crl(theirs["crl"], ca.certificate)
    (tmp_path / "junk.crl").write_bytes(b"not a crl")
    with pytest.raises(ValueError, match=r"junk\.crl is not a PEM or DER certificate revocation"):
        load_crl(tmp_path / "junk.crl")


def _bench(tmp_path: Path) -> Path:
    """A private copy of a fresh bench PKI (the shipped one is never written by tests)."""
    folder = tmp_path / "pki"
    make_test_pki(folder)
    return folder


def _site_on(pki: Path, tmp_path: Path) -> Site:
    """The cstr-opcua site with its CA in ``pki`` (the CRL beside it)."""
    site = load_site(ROOT / "configs/sites/cstr-opcua.yaml")
    section = hil_section(site)
    assert section is not None
    hil = section.model_copy(
        update={
            "ca_certificate": str(pki / CA_CERTIFICATE_FILE),
            "ca_private_key": str(pki / CA_KEY_FILE),
        }
    )
    return with_hil(site, hil)


async def _connect(url: str, server_cert: Path, cert: Path, key: Path, uri: str) -> float:
    client = Client(url, timeout=5)
    client.application_uri = uri
    await client.set_security(
        SecurityPolicyBasic256Sha256,
        str(cert),
        str(key),
        server_certificate=str(server_cert),
        mode=ua.MessageSecurityMode.SignAndEncrypt,
    )
    client.set_user("operator")
    client.set_password(PASSWORD)
    try:
        await client.connect()
        value = await client.get_node("ns=2;s=cstr.reactor_temp").read_value()
        await client.disconnect()
        return float(value)
    finally:
        client.disconnect_socket()


async def test_issue_client_makes_a_certificate_that_connects_and_revoke_shuts_it_out(
    tmp_path: Path,
    shelf: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setenv("PHARMATWIN_OPCUA_PASSWORD", PASSWORD)
    pki, out = _bench(tmp_path), tmp_path / "issued"
    argv = ["pki", "issue-client", "uaexpert", "--uri", UAEXPERT_URI, "--out", str(out)]
    assert hil_main([*argv, "--ca-dir", str(pki)]) == 0
    printed = capsys.readouterr().out
    assert str(out / "uaexpert.der") in printed and UAEXPERT_URI in printed
    cert_file, key_file = out / "uaexpert.der", out / "uaexpert.key.pem"
    cert = load_certificate(cert_file)
    ca = load_certificate(pki / CA_CERTIFICATE_FILE)
    cert.verify_directly_issued_by(ca)
    san = _san(cert)
    assert san.get_values_for_type(x509.UniformResourceIdentifier) == [UAEXPERT_URI]
    assert san.get_values_for_type(x509.DNSName) == ["localhost"]
    assert san.get_values_for_type(x509.IPAddress) == [ipaddress.ip_address("127.0.0.1")]
    eku = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert ExtendedKeyUsageOID.CLIENT_AUTH in eku
    aki = cert.extensions.get_extension_for_class(x509.AuthorityKeyIdentifier).value
    ski = ca.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    assert aki.key_identifier == ski.digest
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600

    site = _site_on(pki, tmp_path)
    state = tmp_path / "state"
    server = await opcua_server_for_site(
        site, free_port(), state_dir=state, shelf=shelf, initial={"reactor_temp": 85.25}
    )
    server_cert = state / site.name / "server-cert.der"
    async with server:
        # The server certificate carries what a client dials and checks.
        served = load_certificate(server_cert)
        assert "localhost" in _san(served).get_values_for_type(x509.DNSName)
        assert ipaddress.ip_address("127.0.0.1") in _san(served).get_values_for_type(x509.IPAddress)
        assert _san(served).get_values_for_type(x509.UniformResourceIdentifier) == [
            f"urn:pharmatwin:hil:{site.name}"
        ]
        assert await _connect(server.url, server_cert, cert_file, key_file, UAEXPERT_URI) == 85.25
        with pytest.raises(ua.UaStatusCodeError, match="BadCertificateUriInvalid"):
            await _connect(server.url, server_cert, cert_file, key_file, "urn:someone-else")

    assert hil_main(["pki", "revoke", str(cert_file), "--ca-dir", str(pki)]) == 0
    assert "lists 1" in capsys.readouterr().out
    assert [r.serial_number for r in load_crl(pki / CRL_FILE)] == [cert.serial_number]
    again = await opcua_server_for_site(site, free_port(), state_dir=state, shelf=shelf)
    async with again:  # the CRL is read when the server starts
        with pytest.raises(ua.UaStatusCodeError, match="BadCertificateRevoked"):
            await _connect(again.url, server_cert, cert_file, key_file, UAEXPERT_URI)
    # Revoking twice lists it once.
    assert hil_main(["pki", "revoke", str(cert_file), "--ca-dir", str(pki)]) == 0
    assert len(load_crl(pki / CRL_FILE)) == 1


def test_pki_bad_input_is_one_line_and_exit_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    pki = _bench(tmp_path)
    stranger = str(make_test_pki(tmp_path / "other")["client_certificate"])
    cases = [
        (
            ["issue-client", "x", "--uri", "urn:x", "--ca-dir", str(tmp_path / "none")],
            "cannot read",
        ),
        (
            ["issue-client", "x", "--uri", "urn:x", "--ip", "300.1.1.1", "--ca-dir", str(pki)],
            "--ip",
        ),
        (["issue-client", "../x", "--uri", "urn:x", "--ca-dir", str(pki)], "plain file name"),
        (["revoke", stranger, "--ca-dir", str(pki)], "is not issued by the CA"),
    ]
    for argv, words in cases:
        assert hil_main(["pki", *argv]) == 2, argv
        out = capsys.readouterr().out
        assert words in out and "Traceback" not in out, (argv, out)
        assert len(out.strip().splitlines()) == 1, out


def test_a_site_whose_crl_is_not_its_cas_is_a_config_error(
    tmp_path: Path, shelf: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PHARMATWIN_OPCUA_PASSWORD", PASSWORD)
    pki = _bench(tmp_path)
    shutil.copy(make_test_pki(tmp_path / "other")["crl"], pki / CRL_FILE)
    with pytest.raises(ConfigError, match="is not signed by"):
        asyncio.run(opcua_server_for_site(_site_on(pki, tmp_path), state_dir=tmp_path, shelf=shelf))


def test_regenerating_writes_a_crl_too(tmp_path: Path) -> None:
    files = make_test_pki(tmp_path)
    assert set(files) == {
        "ca_certificate",
        "ca_private_key",
        "crl",
        "client_certificate",
        "client_private_key",
    }
    ca = CertificateAuthority.load(files["ca_certificate"], files["ca_private_key"])
    assert load_crl(files["crl"], ca.certificate) == []
