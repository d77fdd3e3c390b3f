"""``pharmatwin-hil pki issue-client`` never replaces a key or certificate unless told to
(``--force``), and refuses an application URI that is not a URI, in one line with exit 2 and
nothing written. Before: a second issue under the same NAME silently replaced the first key
(a client configured with it could no longer connect), and ``--uri 'my client'`` or
``--uri uaexpert`` made a certificate whose SubjectAltName URI is not a URI (RFC 5280 asks for
one; an OPC UA server checks the client's ApplicationUri against it)."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
from cryptography import x509

from hil.cli import main as hil_main
from hil.servers.certs import load_certificate
from hil.servers.pki import CA_CERTIFICATE_FILE, make_test_pki

pytestmark = pytest.mark.timeout(60)

URI = "urn:bench-pc:UnifiedAutomation:UaExpert"


@pytest.fixture
def ca_dir(tmp_path: Path) -> Path:
    make_test_pki(tmp_path / "pki")
    return tmp_path / "pki"


def _issue(ca_dir: Path, out: Path, uri: str, *extra: str) -> list[str]:
    return ["pki", "issue-client", "uaexpert", "--uri", uri, "--out", str(out),
            "--ca-dir", str(ca_dir), *extra]  # fmt: skip


def _files(folder: Path) -> dict[str, str]:
    if not folder.exists():
        return {}
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in folder.iterdir()}


def _refused(argv: list[str], capsys: pytest.CaptureFixture[str]) -> str:
    assert hil_main(argv) == 2, argv
    out, err = capsys.readouterr()
    assert "Traceback" not in out + err
    assert len(out.strip().splitlines()) == 1, out  # one line, however long
    return out.strip()


def test_a_second_issue_is_refused_unless_forced(
    tmp_path: Path, ca_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "issued"
    assert hil_main(_issue(ca_dir, out, URI)) == 0
    capsys.readouterr()
    first = _files(out)
    assert set(first) == {"uaexpert.der", "uaexpert.key.pem"}
    text = _refused(_issue(ca_dir, out, URI), capsys)
    assert f"{out / 'uaexpert.der'}" in text and f"{out / 'uaexpert.key.pem'}" in text
    assert "refusing to overwrite" in text and "--force" in text
    assert _files(out) == first  # the key a client uses is still there
    assert hil_main(_issue(ca_dir, out, URI, "--force")) == 0
    second = _files(out)
    assert set(second) == set(first)
    assert all(second[name] != first[name] for name in first)  # a new key and certificate
    load_certificate(out / "uaexpert.der").verify_directly_issued_by(
        load_certificate(ca_dir / CA_CERTIFICATE_FILE)
    )


def test_one_existing_file_is_enough_to_refuse(
    tmp_path: Path, ca_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "issued"
    out.mkdir()
    (out / "uaexpert.key.pem").write_bytes(b"a key someone uses")
    text = _refused(_issue(ca_dir, out, URI), capsys)
    assert f"{out / 'uaexpert.key.pem'}" in text and "uaexpert.der" not in text
    assert (out / "uaexpert.key.pem").read_bytes() == b"a key someone uses"
    assert not (out / "uaexpert.der").exists()


def test_a_directory_in_the_way_is_refused_even_with_force(
    tmp_path: Path, ca_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "issued"
    (out / "uaexpert.der").mkdir(parents=True)
    text = _refused(_issue(ca_dir, out, URI, "--force"), capsys)
    assert f"{out / 'uaexpert.der'} is a directory" in text
    assert sorted(p.name for p in out.iterdir()) == ["uaexpert.der"]


@pytest.mark.parametrize(
    ("uri", "why"),
    [
        ("my client", "no scheme"),
        ("uaexpert", "no scheme"),
        ("", "no scheme"),
        ("1urn:x", "no scheme"),
        ("urn:", "nothing after its scheme"),
        ("urn:my pc:UaExpert", "' '"),
        ("urn:my-pc:Ua\u00e9xpert", "'\u00e9'"),
        ("urn:my-pc:%zz", "'%'"),
        ("http://[::1", "Invalid IPv6 URL"),  # allowed characters, not a URI's structure
        ("opc.tcp://127.0.0.1:48x0/client", "Port could not be cast"),
    ],
)
def test_a_uri_that_is_not_one_is_refused(
    tmp_path: Path, ca_dir: Path, capsys: pytest.CaptureFixture[str], uri: str, why: str
) -> None:
    out = tmp_path / "issued"
    text = _refused(_issue(ca_dir, out, uri), capsys)
    assert text.startswith(f"error: --uri {uri!r} is not a valid URI"), text
    assert why in text and "allowed: an absolute URI" in text, text
    assert _files(out) == {}


@pytest.mark.parametrize(
    "uri",
    [URI, "urn:freeopcua:client", "urn:x", "http://my-pc.example/NodeOPCUA-Client",
     "opc.tcp://127.0.0.1:4840/client", "urn:my-pc:Ua%C3%A9xpert"],
)  # fmt: skip
def test_valid_uris_are_issued_and_carried_in_the_certificate(
    tmp_path: Path, ca_dir: Path, capsys: pytest.CaptureFixture[str], uri: str
) -> None:
    out = tmp_path / "issued"
    assert hil_main(_issue(ca_dir, out, uri)) == 0, capsys.readouterr().out
    cert = load_certificate(out / "uaexpert.der")
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.UniformResourceIdentifier) == [uri]


def test_the_output_names_the_uri_as_it_is(
    tmp_path: Path, ca_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Rich turned ``:x:`` and ``:a:`` of a URI into emoji in what it printed (``urn:x:c1``
    became ``urn❌c1``): the operator copies the URI from this line into the client."""
    out = tmp_path / "issued"
    assert hil_main(_issue(ca_dir, out, "urn:x:a:c1")) == 0
    printed = capsys.readouterr().out
    assert "(application URI urn:x:a:c1)" in printed, printed
    text = _refused(_issue(ca_dir, tmp_path / "other", "urn:x:a:%zz"), capsys)
    assert "'urn:x:a:%zz'" in text, text


def test_an_out_folder_that_cannot_be_made_is_one_line(
    tmp_path: Path, ca_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """An ``--out`` that cannot be made (here under /proc, where no folder can be made): a
    FileNotFoundError traceback from mkdir before; one line naming it, exit 2."""
    out = Path("/proc/pharmatwin-no-such-folder/issued")
    text = _refused(_issue(ca_dir, out, URI), capsys)
    assert text.startswith("error: ") and "/proc/pharmatwin-no-such-folder" in text, text
