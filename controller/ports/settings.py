"""A port's connection settings: where the PLC is and how to talk to it.

The ``connection:`` section of a site file (:mod:`controller.runtime.site`) is a
:class:`Connection`: the protocol, host and port, the request timeout, the reconnect
:class:`Backoff`, and the protocol's own options (Modbus/TCP Security over TLS; the OPC UA
endpoint, security policy, user and subscription). Ports are built from a tag map, a
:class:`Connection` and a clock (:func:`controller.ports.factory.make_port`); nothing here reads
a file. Paths (certificates, trust lists) are as written in the site file, relative to it.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field, model_validator

from controller.configfile import PositiveFinite, Strict

Port = Annotated[int, Field(ge=1, le=65535)]


class Backoff(Strict):
    """Capped exponential backoff between reconnect attempts [s of the port's clock]."""

    initial_s: PositiveFinite = 0.2
    max_s: PositiveFinite = 5.0
    factor: Annotated[float, Field(ge=1.0, le=10.0)] = 2.0

    def delay(self, failures: int) -> float:
        """The wait [s] after ``failures`` (>= 0) failed attempts in a row."""
        return float(min(self.initial_s * self.factor**failures, self.max_s))

    def delays(self) -> list[float]:
        """The first few delays, for documentation and tests."""
        return [self.delay(n) for n in range(8)]


class ModbusTls(Strict):
    """Modbus/TCP Security: TLS with a client certificate."""

    ca_file: str
    cert_file: str
    key_file: str
    server_hostname: str | None = None


class ModbusOptions(Strict):
    tls: ModbusTls | None = None
    #: How a write of holding registers is read back (:mod:`controller.ports.modbus`):
    #: ``auto``, FC 23 (Read/Write Multiple Registers: the write and its read-back in one
    #: request), and FC 16 then FC 3 from the first exception 01 (illegal function) on;
    #: ``fc23``, FC 23 only; ``separate``, FC 16 then FC 3.
    write_readback: Literal["auto", "fc23", "separate"] = "auto"


class OpcUaSecurity(Strict):
    policy: Literal["None", "Basic256Sha256", "Aes128_Sha256_RsaOaep", "Aes256_Sha256_RsaPss"] = (
        "None"
    )
    mode: Literal["None", "Sign", "SignAndEncrypt"] = "None"
    certificate: str | None = None  # client certificate (DER or PEM)
    private_key: str | None = None  # client private key (PEM)
    trust_list: tuple[str, ...] = ()  # server certificates (files) the client trusts

    @model_validator(mode="after")
    def _consistent(self) -> OpcUaSecurity:
        if (self.policy == "None") != (self.mode == "None"):
            raise ValueError(
                "policy None goes with mode None, a secure policy with Sign/SignAndEncrypt"
            )
        if self.policy != "None" and not (self.certificate and self.private_key):
            raise ValueError("a secure policy needs 'certificate' and 'private_key'")
        if self.policy != "None" and not self.trust_list:
            raise ValueError("a secure policy needs a 'trust_list' to check the server certificate")
        return self


class OpcUaOptions(Strict):
    endpoint_path: str = "/pharmatwin/"
    security: OpcUaSecurity = OpcUaSecurity()
    username: str | None = None
    password_env: str | None = None
    subscription: bool = False
    publishing_interval_ms: Annotated[int, Field(ge=10, le=60_000)] = 200

    @model_validator(mode="after")
    def _user(self) -> OpcUaOptions:
        if (self.username is None) != (self.password_env is None):
            raise ValueError("give both 'username' and 'password_env', or neither")
        return self


class Connection(Strict):
    protocol: Literal["modbus", "opcua"]
    host: str = "127.0.0.1"
    port: Port
    timeout_s: PositiveFinite = 1.0
    backoff: Backoff = Backoff()
    modbus: ModbusOptions = ModbusOptions()
    opcua: OpcUaOptions = OpcUaOptions()

    @property
    def url(self) -> str:
        if self.protocol == "opcua":
            return f"opc.tcp://{self.host}:{self.port}{self.opcua.endpoint_path}"
        return f"modbus+tcp://{self.host}:{self.port}"

    def file_refs(self) -> list[tuple[str, str]]:
        """(key path in the site file, path as written) of every file the connection names."""
        refs: list[tuple[str, str]] = []
        tls = self.modbus.tls
        if tls is not None:
            refs += [(f"connection.modbus.tls.{k}", getattr(tls, k)) for k in _TLS_FILES]
        sec = self.opcua.security
        for key in ("certificate", "private_key"):
            ref = getattr(sec, key)
            if ref:
                refs.append((f"connection.opcua.security.{key}", ref))
        trust = enumerate(sec.trust_list)
        return refs + [(f"connection.opcua.security.trust_list.{i}", r) for i, r in trust]


_TLS_FILES = ("ca_file", "cert_file", "key_file")
