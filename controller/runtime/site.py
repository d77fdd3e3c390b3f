"""Site files (``configs/sites/<name>.yaml``): one deployment wired end to end.

A site names the plant model, the controller config, the tag map and the connection
(protocol, host, port, timeouts, backoff, security). :func:`load_site` validates the site and
every file it names, and raises one :class:`~controller.errors.ConfigError` listing every
problem with its file, key path and bad value. Relative paths (configs, certificates, trust
lists) are relative to the site file. Passwords are never stored in the file: the site names
the environment variable that holds it (``password_env``). The optional ``forecast`` section
tells ``pharmatwin forecast`` when the batch ends, which CQAs to report and where the PLC's
local recipe is (:class:`~controller.twin.forecast_spec.ForecastSection`). The ``hil`` section
is the HIL bench's: kept as written, validated by :mod:`hil.site`, never here.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import Field

from controller.binding import Binding
from controller.clock import Clock
from controller.codecs import DataType
from controller.config import ControllerConfig, InputSpec
from controller.configfile import NAME, Strict, existing, parse, read_yaml, real, resolve
from controller.controllerfile import load_controller
from controller.core.rk4_check import check_rk4_steps
from controller.errors import ConfigError, Problem, unknown_name
from controller.ports.base import Port
from controller.ports.factory import make_port
from controller.ports.settings import Connection
from controller.ports.wire import grid_for, resolution
from controller.tags import Direction, TagMap, load_tag_map
from controller.twin.forecast_spec import ForecastSection, forecast_names
from plant_models import PlantModel


class RuntimeSettings(Strict):
    """How the edge runtime (``pharmatwin run``) supervises this site."""

    solve_deadline_fraction: Annotated[float, Field(gt=0, le=1)] = 0.5
    max_bad_cycles: Annotated[int, Field(ge=1, le=1000)] = 3
    reengage: bool = True  # request control again when the PLC permits after a fallback
    #: ... at most this many times within reengage_window_s (then an operator requests it)
    reengage_limit: Annotated[int, Field(ge=0, le=1000)] = 3
    reengage_window_s: Annotated[float, Field(gt=0, allow_inf_nan=False)] = 3600.0
    service_identity: str = "pharmatwin-service"
    predicted_steps: Annotated[int, Field(ge=0, le=100)] = 5
    advisory_tags: dict[str, str] = Field(default_factory=dict)  # input -> tag (shadow mode)
    #: write the soft sensors (``publish`` tags) in shadow mode too; off: shadow never writes
    #: anything but the advisory tags
    publish_in_shadow: bool = False
    #: this site only ever runs in shadow mode: its tag map needs no PLC contract
    #: (:data:`CLOSED_LOOP_CONTRACT`), and ``pharmatwin run --mode closed-loop`` refuses it
    shadow_only: bool = False


class SiteFile(Strict):
    #: names the site's log and state files (``pharmatwin-hil serve``): no path in it
    name: Annotated[str, Field(pattern=NAME)]
    description: str = ""
    plant: str
    controller: str
    tags: str
    connection: Connection
    runtime: RuntimeSettings = RuntimeSettings()
    #: the HIL bench's section: kept as written, validated by ``hil.site`` (not here)
    hil: dict[str, Any] | None = None
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
    #: the site file's ``hil:`` section as written: the HIL bench's (``hil.site``), unchecked here
    hil: Mapping[str, Any] | None = None
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


def port_for_site(site: Site, clock: Clock) -> Port:
    """The Modbus or OPC UA port of ``site`` (not yet connected: use ``async with``), with the
    site's password (from its environment variable) and its folder for certificate paths."""
    return make_port(
        site.tags, site.connection, clock, password=site.password(), base_dir=site.path.parent
    )


def load_checked_controller(path: Path) -> tuple[ControllerConfig, PlantModel]:
    """A controller file loaded (:func:`load_controller`) and its fast path's RK4 steps
    checked against its model (:func:`controller.core.rk4_check.check_rk4_steps`): what
    every tool that loads a controller to run it calls (sites, check-config, the HIL
    tools' scenarios, campaigns and tuning candidates). One ConfigError either way."""
    cfg, model = load_controller(path)
    check_rk4_steps(cfg, model, str(path))
    return cfg, model


def load_site(path: Path) -> Site:
    """Load a site file and every file it names; one ConfigError lists every problem."""
    sf = parse(SiteFile, read_yaml(path), str(path))
    problems: list[Problem] = []
    cfg = model = tm = None
    try:
        cfg, model = load_checked_controller(
            existing(resolve(path, sf.controller), str(path), "controller")
        )
    except ConfigError as exc:
        problems += exc.problems
    try:
        tm = load_tag_map(existing(resolve(path, sf.tags), str(path), "tags"))
    except ConfigError as exc:
        problems += exc.problems
    if model is not None and cfg is not None:
        ctl_path = resolve(path, sf.controller)
        try:
            plant_path = real(resolve(path, sf.plant), str(path), "plant")
            ctl_plant = real(resolve(ctl_path, cfg.plant), str(ctl_path), "plant")
        except ConfigError as exc:
            problems += exc.problems
        else:
            if plant_path != ctl_plant:
                problems.append(
                    Problem(str(path), "plant", f"the controller uses {ctl_plant}", sf.plant)
                )
    if tm is not None:
        problems += _check_tags(sf, tm, model, path)
        problems += contract_problems(sf, tm, path)
    if tm is not None and model is not None and cfg is not None:
        problems += _check_twin(sf, cfg, tm, model, path)
    if tm is not None and cfg is not None:
        problems += _check_limits(sf, cfg, tm, path)
    problems += _check_files(sf, path)
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
        binding = Binding.of(tm, model)
        problems += binding.bad_data_problems(src)
        for inp in model.input_names:
            if binding.setpoint_tag(inp) is None:
                problems.append(
                    Problem(src, "tags", f"no writable tag binds the model input {inp!r}", inp)
                )
    return problems + _check_advisory(sf, tm, model, path)


def _check_limits(sf: SiteFile, cfg: ControllerConfig, tm: TagMap, path: Path) -> list[Problem]:
    """Every setpoint the safety layer passes (inside the controller's input limits) must be
    one the port writes (inside the limits of the input's setpoint and advisory tags)."""
    problems = []
    binding = Binding.of_inputs(tm, tuple(cfg.inputs))
    for inp, spec in cfg.inputs.items():
        tags = [sf.runtime.advisory_tags.get(inp), binding.setpoint_tag(inp)]
        for name in dict.fromkeys(t for t in tags if t is not None and t in tm.tags):
            limits = tm.tags[name].limits
            if limits is None or (limits[0] <= spec.lower and spec.upper <= limits[1]):
                continue
            message = (
                f"the controller's limits of input {inp!r} [{spec.lower:g}, {spec.upper:g}] "
                f"(inputs.{inp} in {sf.controller}) are not inside the write limits "
                f"[{limits[0]:g}, {limits[1]:g}] of its tag {name!r} (in {sf.tags}): the port "
                "would refuse setpoints the safety layer passes; allowed: input limits within "
                f"[{limits[0]:g}, {limits[1]:g}], or wider tag limits"
            )
            problems.append(Problem(str(path), "controller", message, [spec.lower, spec.upper]))
        problems += _resolution_problems(sf, inp, spec, tm, binding.setpoint_tag(inp), path)
    return problems


def _resolution_problems(
    sf: SiteFile, inp: str, spec: InputSpec, tm: TagMap, name: str | None, path: Path
) -> list[Problem]:
    """The input's setpoint tag must hold a value within its limits, in steps no coarser than
    its move limits: the safety layer writes only what the PLC holds within both
    (:mod:`controller.ports.wire`), so a coarser step would leave the input unable to move."""
    tag, proto = tm.tags.get(name or ""), sf.connection.protocol
    grid = grid_for(name or "", tag, proto) if tag is not None else None
    if tag is None or grid is None:
        return []
    where = f"its setpoint tag {name!r} (in {sf.tags}) over {proto}"
    if grid(spec.lower, spec.lower, spec.upper) is None:
        message = (
            f"{where} holds no value within the limits [{spec.lower:g}, {spec.upper:g}] of "
            f"input {inp!r} (inputs.{inp} in {sf.controller}); allowed: limits that contain "
            "a value the register or node can hold"
        )
        return [Problem(str(path), "controller", message, [spec.lower, spec.upper])]
    step = resolution(name or "", tag, proto, max(abs(spec.lower), abs(spec.upper)))
    moves = {"max_move": spec.max_move, "max_rise": spec.max_rise, "max_fall": spec.max_fall}
    fine = {k: v for k, v in moves.items() if v is not None and 0.0 < v < step}
    return [
        Problem(
            str(path),
            "controller",
            f"input {inp!r}: {key} {value:g} (inputs.{inp} in {sf.controller}) is finer than "
            f"{where} can move (steps of {step:g}): the input could never move; allowed: "
            f"{key} >= {step:g}, or a finer register",
            value,
        )
        for key, value in fine.items()
    ]


def _check_advisory(
    sf: SiteFile, tm: TagMap, model: PlantModel | None, path: Path
) -> list[Problem]:
    """``runtime.advisory_tags``: a model input -> a writable numeric tag of the map that no
    other role uses. Not a tag the process acts on: advice written to a setpoint tag (one that
    binds a model input), a handshake or command tag (the PLC contract, the operator's reset)
    or any bool (a coil, an OPC UA Boolean: a command or status bit, never a number) would be
    a control write in shadow mode, which never writes one; nor a publication of the twin's
    or another input's advice (two writers of one tag)."""
    problems = []
    writable = [n for n, t in tm.tags.items() if t.writable]
    taken = _not_advice(tm)
    first: dict[str, str] = {}  # advisory tag -> the first input it advises
    for inp, tag in sf.runtime.advisory_tags.items():
        loc = f"runtime.advisory_tags.{inp}"
        if model is not None and inp not in model.input_names:
            problems.append(Problem(str(path), loc, unknown_name("input", inp, model.input_names)))
        other = first.setdefault(tag, inp)
        what = taken.get(tag) or (
            f"already the advisory tag of input {other!r}" if other != inp else None
        )
        if tag not in tm.tags:
            message = unknown_name("tag", tag, writable, context=f" in the tag map {sf.tags}")
            problems.append(Problem(str(path), loc, message, tag))
        elif not tm.tags[tag].writable:
            message = f"the tag {tag!r} is read-only; an advisory tag must be writable; {_ADVICE}"
            problems.append(Problem(str(path), loc, message, tag))
        elif what is not None:
            message = (
                f"the tag {tag!r} is {what}; an advisory tag must be one the process does "
                f"not act on (shadow mode never writes a control tag); {_ADVICE}"
            )
            problems.append(Problem(str(path), loc, message, tag))
    return problems


#: What an advisory tag may be (the end of every ``runtime.advisory_tags`` problem).
_ADVICE = (
    "allowed: a writable numeric tag that no other role uses (not bool, no 'binds', not "
    "a publication, not a handshake or command tag), such as <input>_advice"
)


def _not_advice(tm: TagMap) -> dict[str, str]:
    """Tag -> the role that makes it no advisory tag (what it is, for the message)."""
    out = {
        n: "a bool (a coil or an OPC UA Boolean: a command or status bit, not a number)"
        for n, t in tm.tags.items()
        if (t.modbus is not None and t.modbus.type is DataType.BOOL)
        or (t.opcua is not None and t.opcua.data_type == "Boolean")
    }
    out |= {
        n: f"a publication of the twin (it publishes {t.publishes!r})"
        for n, t in tm.tags.items()
        if t.publishes is not None
    }
    out |= {
        n: f"a setpoint tag (it binds the model variable {t.binds!r})"
        for n, t in tm.tags.items()
        if t.binds is not None and t.writable
    }
    out |= {n: f"{role}, a PLC command or status tag" for n, role in PLC_TAGS.items()}
    out |= {c.tag: f"a tag of the PLC contract ({c.role})" for c in CLOSED_LOOP_CONTRACT}
    return out


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


#: The PLC's own handshake, command and status tags besides :data:`CLOSED_LOOP_CONTRACT` (see
#: the configs/tags/*.yaml headers): never a target of the twin's advice.
PLC_TAGS = {
    "operator_reset": "the operator's reset of a fallback alarm (an HMI pushbutton)",
    "plc_heartbeat": "the PLC's heartbeat",
    "mpc_fallback_alarm": "the PLC's fallback alarm",
    "interlock_active": "the PLC's interlock flag",
}


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


def _check_forecast(fc: ForecastSection, model: PlantModel, path: Path) -> list[Problem]:
    """CQA expressions must name something the forecast computes; the local recipe must be a
    recipe of every input of the model."""
    from controller.runtime.forecast_files import recipe_problems

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
    return [
        Problem(str(path), key, "file not found", ref)
        for key, ref in sf.connection.file_refs()
        if not resolve(path, ref).is_file()
    ]
