"""Site files (``configs/sites/<name>.yaml``): one deployment wired end to end.

A site names the plant model, the controller config, the tag map and the connection
(protocol, host, port, timeouts, backoff, security). :func:`load_site` validates the site and
every file it names, and raises one :class:`~controller.errors.ConfigError` listing every
problem with its file, key path and bad value. Relative paths (configs, certificates, trust
lists) are relative to the site file. Passwords are never stored in the file: the site names
the environment variable that holds it (``password_env``). The optional ``forecast`` section
tells ``pharmatwin forecast`` when the batch ends, which CQAs to report and where the PLC's
local recipe is (:class:`ForecastSection`, :mod:`controller.twin.forecast`).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field, model_validator

from controller.config import (
    ControllerConfig,
    Finite,
    PositiveFinite,
    Strict,
    load_controller,
    parse,
    read_yaml,
    resolve,
)
from controller.errors import ConfigError, Problem, unknown_name
from controller.tags import Direction, TagMap, load_tag_map
from plant_models import PlantModel

Port = Annotated[int, Field(ge=1, le=65535)]


class Backoff(Strict):
    """Capped exponential backoff between reconnect attempts [s]."""

    initial_s: PositiveFinite = 0.2
    max_s: PositiveFinite = 5.0
    factor: Annotated[float, Field(ge=1.0, le=10.0)] = 2.0

    def delays(self) -> list[float]:
        """The first few delays, for documentation and tests."""
        out, d = [], self.initial_s
        for _ in range(8):
            out.append(min(d, self.max_s))
            d *= self.factor
        return out


class ModbusTls(Strict):
    """Modbus/TCP Security: TLS with a client certificate."""

    ca_file: str
    cert_file: str
    key_file: str
    server_hostname: str | None = None


class ModbusOptions(Strict):
    tls: ModbusTls | None = None


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


class Interlock(Strict):
    """A PLC interlock: when a true-plant quantity crosses a limit, inputs are forced."""

    name: str
    expression: str  # a model output, state or named expression of the true plant
    above: Finite | None = None
    below: Finite | None = None
    force: dict[str, Finite]  # model input -> forced value
    description: str = ""

    @model_validator(mode="after")
    def _one_side(self) -> Interlock:
        if (self.above is None) == (self.below is None):
            raise ValueError("give exactly one of 'above' or 'below'")
        return self


class PlcBehaviour(Strict):
    """The virtual PLC's side of the MPC contract (HIL only)."""

    scan_period_s: PositiveFinite = 0.05  # wall-clock seconds between PLC scans
    heartbeat_timeout: PositiveFinite  # process seconds without a heartbeat change
    operator_reset_required: bool = True
    rate_tolerance: Annotated[float, Field(ge=1.0, le=10.0)] = 1.25
    interlocks: tuple[Interlock, ...] = ()


#: What a user of the HIL OPC UA server may do; every role reads. ``viewer``: only reads;
#: ``operator``: acknowledges (``operator_reset``); ``engineer``: takes control (``mpc_request``,
#: ``mpc_heartbeat``) and writes setpoints; ``twin``: writes the publications.
ServerRole = Literal["viewer", "operator", "engineer", "twin"]


class ServerUser(Strict):
    username: str
    password_env: str
    roles: tuple[ServerRole, ...] = ("viewer",)


class HilSection(Strict):
    """How ``pharmatwin-hil serve`` stands in for this site's PLC and plant.

    A deployment ignores this section; it is the test bench's, switchable off by leaving it out.
    """

    scenario: str  # true plant: mismatch, noise, disturbances, faults; its recipe is local control
    plant_step: PositiveFinite | None = None  # model time units; default: controller's / 5
    plc: PlcBehaviour
    users: tuple[ServerUser, ...] = ()
    allow_anonymous: bool = False
    state_dir: str = "../../runs/hil-state"  # server certificate (made on first start), logs
    # A CA (certificate DER/PEM + private key PEM): signs the server certificate made on first
    # start, and client certificates must be issued by it. Neither: self-signed, any client.
    ca_certificate: str | None = None
    ca_private_key: str | None = None

    @model_validator(mode="after")
    def _ca_pair(self) -> HilSection:
        if (self.ca_certificate is None) != (self.ca_private_key is None):
            raise ValueError("give both 'ca_certificate' and 'ca_private_key', or neither")
        return self


class RuntimeSettings(Strict):
    """How the edge runtime (``pharmatwin run``) supervises this site."""

    solve_deadline_fraction: Annotated[float, Field(gt=0, le=1)] = 0.5
    max_bad_cycles: Annotated[int, Field(ge=1, le=1000)] = 3
    reengage: bool = True  # request control again when the PLC permits after a fallback
    service_identity: str = "pharmatwin-service"
    predicted_steps: Annotated[int, Field(ge=0, le=100)] = 5
    advisory_tags: dict[str, str] = Field(default_factory=dict)  # input -> tag (shadow mode)
    #: write the soft sensors (``publish`` tags) in shadow mode too; off: shadow never writes
    #: anything but the advisory tags
    publish_in_shadow: bool = False
    #: this site only ever runs in shadow mode: its tag map needs no PLC contract
    #: (:data:`CLOSED_LOOP_CONTRACT`), and ``pharmatwin run --mode closed-loop`` refuses it
    shadow_only: bool = False


#: Columns of a forecast's table besides the CQAs (:meth:`controller.twin.forecast.Forecast.table`).
FORECAST_COLUMNS = ("plan", "kind", "end_time", "finished", "status", "notes")


class ForecastCqa(Strict):
    """One critical quality attribute of a forecast: an expression's value at the end, or its
    largest or smallest value over the forecast.

    ``expression`` names a state, algebraic state, input or model expression, a derived
    quantity of :mod:`controller.twin.forecast` (e.g. ``fines_ratio``), or ``end_time``: the batch
    time at which the forecast ends (the batch end) in the model's time unit.
    """

    name: str
    expression: str
    at: Literal["end", "max", "min"] = "end"


class ForecastSection(Strict):
    """How ``pharmatwin forecast`` predicts this site's batch (times in the model's unit).

    The batch ends when the model says it is finished (e.g. primary drying complete), or at
    ``batch_duration`` since the batch start, whichever comes first; ``max_duration`` is a
    hard cap. For a ``continuous`` process both durations count from the forecast start (the
    forecast horizon) instead of the batch start. ``local_recipe``: the PLC's local recipe, a
    scenario file with a ``recipe:`` key or a bare recipe file, relative to the site file.
    """

    local_recipe: str | None = None
    batch_duration: PositiveFinite | None = None
    max_duration: PositiveFinite
    continuous: bool = False
    cqas: tuple[ForecastCqa, ...] = ()

    @model_validator(mode="after")
    def _consistent(self) -> ForecastSection:
        if self.batch_duration is not None and self.batch_duration > self.max_duration:
            raise ValueError(
                f"batch_duration {self.batch_duration} is above max_duration {self.max_duration}"
            )
        names = [c.name for c in self.cqas]
        repeated = sorted({n for n in names if names.count(n) > 1})
        if repeated:
            raise ValueError(f"CQA names must be unique; repeated: {repeated}")
        reserved = sorted(set(names) & set(FORECAST_COLUMNS))
        if reserved:
            raise ValueError(f"CQA names {reserved} are taken by the forecast table's columns")
        return self


class SiteFile(Strict):
    name: str
    description: str = ""
    plant: str
    controller: str
    tags: str
    connection: Connection
    runtime: RuntimeSettings = RuntimeSettings()
    hil: HilSection | None = None
    forecast: ForecastSection | None = None


@dataclass(frozen=True)
class Site:
    """A loaded, cross-checked site."""

    path: Path
    name: str
    description: str
    controller: ControllerConfig
    model: PlantModel
    tags: TagMap
    connection: Connection
    hil: HilSection | None = None
    runtime: RuntimeSettings = field(default_factory=RuntimeSettings)
    forecast: ForecastSection | None = None

    def file(self, ref: str) -> Path:
        """A path written in the site file, resolved against it."""
        return resolve(self.path, ref)

    def referenced(self, key: Literal["plant", "controller", "tags"]) -> Path:
        """The file the site file names under ``key``, resolved (read from the site file)."""
        return self.file(str(read_yaml(self.path)[key]))

    def password(self) -> str | None:
        env = self.connection.opcua.password_env
        return os.environ.get(env) if env else None


def load_site(path: Path) -> Site:
    """Load a site file and every file it names; one ConfigError lists every problem."""
    sf = parse(SiteFile, read_yaml(path), str(path))
    problems: list[Problem] = []
    cfg = model = tm = None
    try:
        cfg, model = load_controller(resolve(path, sf.controller))
    except ConfigError as exc:
        problems += exc.problems
    try:
        tm = load_tag_map(resolve(path, sf.tags))
    except ConfigError as exc:
        problems += exc.problems
    if model is not None and cfg is not None:
        plant_path = resolve(path, sf.plant).resolve()
        ctl_plant = resolve(resolve(path, sf.controller), cfg.plant).resolve()
        if plant_path != ctl_plant:
            problems.append(
                Problem(str(path), "plant", f"the controller uses {ctl_plant}", sf.plant)
            )
    if tm is not None:
        problems += _check_tags(sf, tm, model, path)
        problems += contract_problems(sf, tm, path)
    if tm is not None and model is not None and cfg is not None:
        problems += _check_twin(sf, cfg, tm, model, path)
    problems += _check_files(sf, path)
    if sf.hil is not None and model is not None and tm is not None:
        problems += _check_hil(sf.hil, model, tm, path)
    if sf.forecast is not None and model is not None:
        problems += _check_forecast(sf.forecast, model, path)
    if problems:
        raise ConfigError(problems)
    if cfg is None or model is None or tm is None:  # unreachable: problems were raised
        raise ConfigError(problems)
    return Site(
        path,
        sf.name,
        sf.description,
        cfg,
        model,
        tm,
        sf.connection,
        sf.hil,
        sf.runtime,
        sf.forecast,
    )


def _check_twin(
    sf: SiteFile, cfg: ControllerConfig, tm: TagMap, model: PlantModel, path: Path
) -> list[Problem]:
    """Publications valid for the model and the estimated parameters; the alarm tag exists
    and is one the twin may write (a ``publish`` tag, not a setpoint)."""
    from controller.twin.monitoring import check_monitoring
    from controller.twin.publish import check_publications

    estimated = cfg.estimator.estimated
    where = str(resolve(path, sf.controller))
    mon = cfg.monitoring
    # the twin-intelligence values this configuration produces, and nothing else
    extra: set[str] = set()
    if mon is not None:
        extra |= {"alarm.active", "alarm.word"}
        for m in mon.maintenance:
            extra |= {
                f"maintenance.{m.parameter}.{k}" for k in ("time_to_threshold", "low", "high")
            }
    problems = check_publications(tm, model, estimated, extra, str(resolve(path, sf.tags)))
    if mon is not None:
        problems += check_monitoring(mon, model, estimated, where)
    alarm = mon.alarm_tag if mon is not None else None
    if alarm is not None:
        tag = tm.tags.get(alarm)
        if tag is None:
            publish = [n for n, t in tm.tags.items() if t.direction is Direction.PUBLISH]
            message = unknown_name("tag", alarm, publish, context=f" in the tag map {sf.tags}")
            problems.append(Problem(where, "monitoring.alarm_tag", message, alarm))
        elif tag.direction is not Direction.PUBLISH or tag.publishes not in (
            "alarm.word",
            "alarm.active",
        ):
            problems.append(
                Problem(
                    where,
                    "monitoring.alarm_tag",
                    f"the tag has direction {tag.direction.value} and publishes "
                    f"{tag.publishes!r}; the alarm tag must have direction publish and publish "
                    "'alarm.word' or 'alarm.active'",
                    alarm,
                )
            )
    return problems


def _check_tags(sf: SiteFile, tm: TagMap, model: PlantModel | None, path: Path) -> list[Problem]:
    problems = []
    src = str(resolve(path, sf.tags))
    names = set(model.all_variables) | set(model.expression_names) if model else None
    for name, tag in tm.tags.items():
        if names is not None and tag.binds is not None and tag.binds not in names:
            message = unknown_name("model variable", tag.binds, sorted(names))
            problems.append(Problem(src, f"tags.{name}.binds", message, tag.binds))
        proto = sf.connection.protocol
        if getattr(tag, proto) is None:
            problems.append(
                Problem(
                    src,
                    f"tags.{name}.{proto}",
                    f"the site connects over {proto}; this tag has no {proto} address",
                    None,
                )
            )
    if model is not None:
        for inp in model.input_names:
            if tm.setpoint_tag(inp) is None:
                problems.append(
                    Problem(src, "tags", f"no writable tag binds the model input {inp!r}", inp)
                )
    return problems + _check_advisory(sf, tm, model, path)


def _check_advisory(
    sf: SiteFile, tm: TagMap, model: PlantModel | None, path: Path
) -> list[Problem]:
    """``runtime.advisory_tags``: a model input -> a tag of the map the twin may write."""
    problems = []
    writable = [n for n, t in tm.tags.items() if t.writable]
    for inp, tag in sf.runtime.advisory_tags.items():
        loc = f"runtime.advisory_tags.{inp}"
        if model is not None and inp not in model.input_names:
            problems.append(Problem(str(path), loc, unknown_name("input", inp, model.input_names)))
        if tag not in tm.tags:
            message = unknown_name("tag", tag, writable, context=f" in the tag map {sf.tags}")
            problems.append(Problem(str(path), loc, message, tag))
        elif not tm.tags[tag].writable:
            message = f"the tag {tag!r} is read-only; an advisory tag must be writable"
            problems.append(Problem(str(path), loc, message, tag))
    return problems


@dataclass(frozen=True)
class ContractTag:
    """One tag of the PLC contract the supervisor relies on in closed loop."""

    tag: str
    role: str
    twin_writes: bool  # True: the twin writes it (a writable tag); False: the twin reads it


#: The PLC contract of a closed-loop site (see the configs/tags/*.yaml headers and
#: :mod:`controller.runtime.supervisor`): the twin requests control, the PLC permits and reports it
#: active, heartbeats go both ways (the twin's counter, the PLC's scan counter, which the
#: twin watches for a frozen PLC) and the PLC vouches for each measurement.
CLOSED_LOOP_CONTRACT = (
    ContractTag("mpc_request", "request: the twin asks the PLC for control", True),
    ContractTag("mpc_permissive", "permissive: the PLC allows the MPC to take control", False),
    ContractTag("mpc_active", "active: the PLC reports the MPC in control", False),
    ContractTag("mpc_heartbeat", "heartbeat to the PLC: the twin's counter", True),
    ContractTag("plc_scan_counter", "heartbeat from the PLC: its scan counter", False),
    ContractTag("measurement_validity", "validity: the PLC's bit per measurement", False),
)


def contract_problems(sf: SiteFile, tm: TagMap, path: Path) -> list[Problem]:
    """The PLC contract a closed-loop site needs in its tag map: every tag of
    :data:`CLOSED_LOOP_CONTRACT`, each in the direction its role needs. A shadow-only site
    (``runtime.shadow_only``) needs none of them."""
    if sf.runtime.shadow_only:
        return []
    src = str(resolve(path, sf.tags))
    problems = []
    for c in CLOSED_LOOP_CONTRACT:
        tag = tm.tags.get(c.tag)
        who = "the twin writes it" if c.twin_writes else "the twin reads it"
        if tag is None:
            problems.append(
                Problem(
                    src,
                    "tags",
                    f"missing tag {c.tag!r} of the PLC contract ({c.role}; {who}): the "
                    f"closed-loop site {sf.name!r} needs it (a site that never runs in closed "
                    "loop sets runtime.shadow_only: true)",
                    c.tag,
                )
            )
        elif not (tag.writable if c.twin_writes else tag.readable):
            allowed = ["read_write", "write"] if c.twin_writes else ["read", "read_write"]
            message = (
                f"the PLC contract's {c.tag!r} ({c.role}) needs a direction in which {who}; "
                f"allowed: {allowed}"
            )
            problems.append(Problem(src, f"tags.{c.tag}.direction", message, tag.direction.value))
    return problems


#: Tags the virtual PLC of the HIL bench serves (see configs/tags/*.yaml headers): the
#: closed-loop contract and the PLC's own status and pushbutton.
CONTRACT_TAGS = (
    "mpc_request",
    "mpc_permissive",
    "mpc_active",
    "mpc_heartbeat",
    "plc_heartbeat",
    "plc_scan_counter",
    "mpc_fallback_alarm",
    "interlock_active",
    "operator_reset",
    "measurement_validity",
)


def _model_of(plant_file: Path) -> str:
    """The model name a plant YAML file is for."""
    from controller.config import load_parameter_set

    return load_parameter_set(plant_file).model


def _check_hil(hil: HilSection, model: PlantModel, tm: TagMap, path: Path) -> list[Problem]:
    from controller.config import load_scenario

    problems: list[Problem] = []
    src = str(path)
    try:
        sc = load_scenario(resolve(path, hil.scenario))
    except ConfigError as exc:
        problems += exc.problems
    else:
        if sc.plant and _model_of(resolve(resolve(path, hil.scenario), sc.plant)) != model.name:
            problems.append(
                Problem(
                    src,
                    "hil.scenario",
                    f"the scenario is not for model {model.name!r}",
                    hil.scenario,
                )
            )
    closed_loop = {c.tag for c in CLOSED_LOOP_CONTRACT}
    for name in CONTRACT_TAGS:
        if name not in tm.tags and name not in closed_loop:  # those: contract_problems
            problems.append(
                Problem(src, "hil", f"the virtual PLC needs the tag {name!r} in the tag map", name)
            )
    for inp in model.input_names:
        if inp not in tm.reading_tags():
            problems.append(
                Problem(
                    src, "hil", f"no read-only tag publishes the working setpoint of {inp!r}", inp
                )
            )
    named = set(model.output_names) | set(model.state_names) | set(model.expression_names)
    for i, lock in enumerate(hil.plc.interlocks):
        if lock.expression not in named:
            problems.append(
                Problem(
                    src,
                    f"hil.plc.interlocks.{i}.expression",
                    unknown_name("expression", lock.expression, sorted(named)),
                    lock.expression,
                )
            )
        for inp in lock.force:
            if inp not in model.input_names:
                problems.append(
                    Problem(
                        src,
                        f"hil.plc.interlocks.{i}.force.{inp}",
                        unknown_name("input", inp, model.input_names),
                        inp,
                    )
                )
    return problems


def _check_forecast(fc: ForecastSection, model: PlantModel, path: Path) -> list[Problem]:
    """CQA expressions must name something the forecast computes; the local recipe must be a
    recipe of every input of the model."""
    from controller.twin.forecast import forecast_names, recipe_problems

    problems: list[Problem] = []
    named = forecast_names(model)
    for i, cqa in enumerate(fc.cqas):
        if cqa.expression not in named:
            problems.append(
                Problem(
                    str(path),
                    f"forecast.cqas.{i}.expression",
                    unknown_name("expression", cqa.expression, sorted(named)),
                    cqa.expression,
                )
            )
    # A missing recipe file is not a load error: copies of a site elsewhere (campaign cases)
    # still run; `pharmatwin forecast` reports it, naming the site file and the key.
    if fc.local_recipe is not None and resolve(path, fc.local_recipe).is_file():
        problems += recipe_problems(resolve(path, fc.local_recipe), model)[1]
    return problems


def _check_files(sf: SiteFile, path: Path) -> list[Problem]:
    refs: list[tuple[str, str]] = []
    tls = sf.connection.modbus.tls
    if tls is not None:
        refs += [("connection.modbus.tls.ca_file", tls.ca_file)]
        refs += [("connection.modbus.tls.cert_file", tls.cert_file)]
        refs += [("connection.modbus.tls.key_file", tls.key_file)]
    sec = sf.connection.opcua.security
    for key in ("certificate", "private_key"):
        ref = getattr(sec, key)
        if ref:
            refs.append((f"connection.opcua.security.{key}", ref))
    refs += [(f"connection.opcua.security.trust_list.{i}", r) for i, r in enumerate(sec.trust_list)]
    if sf.hil is not None:
        for key in ("ca_certificate", "ca_private_key"):
            ref = getattr(sf.hil, key)
            if ref:
                refs.append((f"hil.{key}", ref))
    return [
        Problem(str(path), key, "file not found", ref)
        for key, ref in refs
        if not resolve(path, ref).is_file()
    ]
