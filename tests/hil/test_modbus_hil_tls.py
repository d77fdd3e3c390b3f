"""``pharmatwin-hil serve`` speaking Modbus/TCP Security, against the controller's own TLS port
and against plain TLS clients: mutual authentication with the test-bench CA, refusals logged.

A fresh bench PKI is made for the test (:func:`hil.servers.pki.make_test_pki`); the site is
the shipped lyophilizer-modbus one, copied with the CA in its ``hil`` section and
``connection.modbus.tls`` naming the client's DER files, as the bench PKI ships them.
"""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml
from pymodbus.client import AsyncModbusTlsClient
from pymodbus.exceptions import ModbusException

from controller.clock import SteppedClock
from controller.errors import ConfigError
from controller.ports.base import WriteStatus
from controller.ports.modbus import ModbusPort
from controller.runtime.site import Site, load_site
from hil.net import LOOPBACK, free_port
from hil.serve import ServeOptions, serve
from hil.servers.pki import make_test_pki

ROOT = Path(__file__).resolve().parents[2]
SITES = ROOT / "configs" / "sites"
pytestmark = pytest.mark.timeout(90)


def site_copy(folder: Path, name: str, **changes: Any) -> Path:
    """``configs/sites/<name>.yaml`` in ``folder`` with its paths made absolute; ``changes``
    are merged into the top-level sections (``connection``, ``hil``)."""
    data = yaml.safe_load((SITES / f"{name}.yaml").read_text())
    for key in ("plant", "controller", "tags"):
        data[key] = str((SITES / data[key]).resolve())
    data["hil"]["scenario"] = str((SITES / data["hil"]["scenario"]).resolve())
    if "forecast" in data:
        recipe = data["forecast"]["local_recipe"]
        data["forecast"]["local_recipe"] = str((SITES / recipe).resolve())
    for section, values in changes.items():
        data[section] = {**data[section], **values}
    path = folder / f"{name}.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


@dataclass
class TlsRig:
    site: Site
    port: int
    pki: dict[str, Path]
    log: Path
    task: asyncio.Task[Any]


@pytest.fixture
async def tls_rig(tmp_path: Path) -> AsyncIterator[TlsRig]:
    pki = make_test_pki(tmp_path / "pki")
    port = free_port()
    hil = {
        "ca_certificate": str(pki["ca_certificate"]),
        "ca_private_key": str(pki["ca_private_key"]),
    }
    hil["state_dir"] = str(tmp_path / "state")
    tls = {
        "ca_file": str(pki["ca_certificate"]),
        "cert_file": str(pki["client_certificate"]),
        "key_file": str(pki["client_private_key"]),
    }
    connection = {"port": port, "modbus": {"tls": tls}}
    path = site_copy(tmp_path, "lyophilizer-modbus", hil=hil, connection=connection)
    state = tmp_path / "state"
    announced = asyncio.Event()
    opts = ServeOptions(rate=60.0, state_dir=state)  # TLS: from the site's connection
    task = asyncio.create_task(serve(path, opts, announce=lambda _: announced.set()))
    waiter = asyncio.ensure_future(announced.wait())
    await asyncio.wait([task, waiter], timeout=60, return_when=asyncio.FIRST_COMPLETED)
    waiter.cancel()
    if task.done():
        task.result()  # raises what stopped it
    assert announced.is_set(), "serve did not start within 60 s"
    yield TlsRig(load_site(path), port, pki, state / "lyophilizer-modbus.log", task)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task


def client_context(pki: dict[str, Path], certificate: bool) -> ssl.SSLContext:
    ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH)
    ctx.load_verify_locations(cadata=pki["ca_certificate"].read_bytes())
    if certificate:
        pem = ssl.DER_cert_to_PEM_cert(pki["client_certificate"].read_bytes())
        chain = pki["client_certificate"].with_suffix(".pem")
        chain.write_text(pem)
        ctx.load_cert_chain(chain, pki["client_private_key"])
    return ctx


async def test_the_controllers_tls_port_talks_to_the_tls_serving_hil(tls_rig: TlsRig) -> None:
    site = tls_rig.site
    assert site.connection.modbus.tls is not None
    async with ModbusPort(site.tags, site.connection, SteppedClock(0.0)) as port:
        snap = await port.read(["plc_scan_counter", "mpc_permissive", "shelf_temp_pv"])
        assert snap.bad(list(snap.values)) == []
        assert snap["mpc_permissive"].value == 1.0
        report = await port.write({"mpc_heartbeat": 7})
        assert report.results["mpc_heartbeat"].status is WriteStatus.OK
        refused = (await port.write({"shelf_temp_sp": -34.0})).results["shelf_temp_sp"]
        assert refused.status is WriteStatus.REJECTED  # not active: the PLC says no, over TLS
    text = tls_rig.log.read_text()
    assert "connected to 127.0.0.1:" in text
    assert "over TLS as CN=PharmaTwin controller (test bench), O=PharmaTwin" in text
    assert "refused a write of shelf_temp_sp = -34.0" in text


async def _modbus_over_tls(rig: TlsRig, ctx: ssl.SSLContext) -> bytes:
    """Open TLS, send one Modbus read (plc_scan_counter), return what came back."""
    reader, writer = await asyncio.open_connection(LOOPBACK, rig.port, ssl=ctx)
    try:
        writer.write(bytes.fromhex("0001 0000 0006 01 04 0015 0001"))
        await writer.drain()
        try:
            return await asyncio.wait_for(reader.read(100), 10)
        except (ssl.SSLError, ConnectionError) as exc:  # the server's alert
            return f"refused: {exc}".encode()
    finally:
        writer.close()


async def test_a_client_without_a_certificate_is_refused_and_logged(tls_rig: TlsRig) -> None:
    answer = await _modbus_over_tls(tls_rig, client_context(tls_rig.pki, certificate=False))
    assert answer == b"" or answer.startswith(b"refused: ")  # closed, or a TLS alert
    with_cert = await _modbus_over_tls(tls_rig, client_context(tls_rig.pki, certificate=True))
    assert with_cert[:2] == b"\x00\x01" and with_cert[7] == 4  # the same request, answered
    text = tls_rig.log.read_text()
    assert "refused a Modbus/TLS client during the handshake" in text
    assert "peer did not return a certificate" in text


async def test_a_certificate_of_another_ca_is_refused(tls_rig: TlsRig, tmp_path: Path) -> None:
    other = make_test_pki(tmp_path / "other-pki")
    ctx = client_context(tls_rig.pki, certificate=False)
    pem = ssl.DER_cert_to_PEM_cert(other["client_certificate"].read_bytes())
    (tmp_path / "other.pem").write_text(pem)
    ctx.load_cert_chain(tmp_path / "other.pem", other["client_private_key"])
    answer = await _modbus_over_tls(tls_rig, ctx)
    assert answer.startswith(b"refused: ") or answer == b""
    assert "its certificate was rejected: unable to get local issuer certificate" in (
        tls_rig.log.read_text()
    )


async def test_a_plain_modbus_client_gets_nothing_from_the_tls_server(tls_rig: TlsRig) -> None:
    reader, writer = await asyncio.open_connection(LOOPBACK, tls_rig.port)
    try:
        writer.write(bytes.fromhex("0001 0000 0006 01 04 0015 0001"))
        await writer.drain()
        answer = await asyncio.wait_for(reader.read(100), 10)
    finally:
        writer.close()
    assert answer[:2] != b"\x00\x01"  # a TLS alert or nothing, never a Modbus answer
    assert "refused a Modbus/TLS client during the handshake" in tls_rig.log.read_text()


@pytest.mark.slow
@pytest.mark.serial
async def test_pymodbus_tls_client_without_a_certificate_cannot_read(tls_rig: TlsRig) -> None:
    client = AsyncModbusTlsClient(
        LOOPBACK,
        port=tls_rig.port,
        sslctx=client_context(tls_rig.pki, certificate=False),
        retries=0,
        reconnect_delay=0,
        timeout=5,
    )
    try:
        await client.connect()  # TLS 1.3: the client's side of the handshake may complete
        try:
            answered = not (await client.read_input_registers(21, count=1)).isError()
        except ModbusException:
            answered = False
    finally:
        client.close()
    assert not answered


async def test_modbus_tls_needs_the_sites_ca(tmp_path: Path) -> None:
    path = site_copy(tmp_path, "lyophilizer-modbus", hil={"state_dir": str(tmp_path / "s")})
    opts = ServeOptions(rate=60.0, modbus_tls=True, modbus_port=free_port())
    with pytest.raises(ConfigError, match=r"hil\.ca_certificate: Modbus/TCP Security needs"):
        await serve(path, opts, announce=lambda _: None)
