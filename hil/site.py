"""The ``hil:`` section of a site file: how ``pharmatwin-hil serve`` stands in for its PLC.

The controller keeps a site's ``hil:`` section as an opaque mapping (``Site.hil``) and never
validates it: a deployment ignores it. The HIL bench owns its schema (:class:`HilSection`: the
true plant's scenario, the virtual PLC's behaviour and interlocks, the server's users and CA)
and checks it here:

* :func:`hil_section` validates the section of a loaded site (ConfigError naming the site file
  and the ``hil.`` key path of every problem);
* :func:`load_hil_site` loads a site for the bench: :func:`~controller.runtime.site.load_site`,
  then the section and what it must agree with (the scenario is for the site's model, the
  virtual PLC finds its tags in the tag map, interlocks name model quantities and inputs, the
  CA files exist), every problem in one ConfigError;
* :func:`with_hil` is a site with another section (tests and tools that adjust one).
"""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field, PositiveInt, model_validator

from controller.binding import Binding
from controller.configfile import Finite, PositiveFinite, Strict, parse, resolve
from controller.errors import ConfigError, Problem, unknown_name
from controller.plantfile import load_parameter_set
from controller.ports.opcua_limits import OperationLimits
from controller.runtime.site import CLOSED_LOOP_CONTRACT, Site, load_site
from controller.timebase import TimeBase
from hil.scenario import ScenarioConfig, load_scenario


class Interlock(Strict):
    """A PLC interlock: when a true-plant quantity crosses a limit, inputs are forced.

    ``release`` is its hysteresis: a tripped interlock clears only once the quantity is back
    at or below it (``above``) or at or above it (``below``); without it the interlock clears
    as soon as the quantity is back within the limit. A quantity that answers the forced
    input within one scan (the freeze dryer's Tbot to its shelf) makes an interlock without
    hysteresis trip and clear at every scan, which no PLC would be commissioned with.
    """

    name: str
    expression: str  # a model output, state or named expression of the true plant
    above: Finite | None = None
    below: Finite | None = None
    release: Finite | None = None
    force: dict[str, Finite]  # model input -> forced value
    description: str = ""

    @model_validator(mode="after")
    def _one_side(self) -> Interlock:
        if (self.above is None) == (self.below is None):
            raise ValueError("give exactly one of 'above' or 'below'")
        if self.release is None:
            return self
        if self.above is not None and self.release > self.above:
            raise ValueError(
                f"release {self.release:g} must be at or below 'above' ({self.above:g}): "
                "the interlock clears on the safe side of its limit"
            )
        if self.below is not None and self.release < self.below:
            raise ValueError(
                f"release {self.release:g} must be at or above 'below' ({self.below:g}): "
                "the interlock clears on the safe side of its limit"
            )
        return self

    def tripped(self, value: float, was_tripped: bool) -> bool:
        """Whether the interlock holds at ``value``, given whether it held at the last scan
        (NaN, an unknown quantity, never trips it and never clears it)."""
        if math.isnan(value):
            return was_tripped
        hold = self.release if was_tripped and self.release is not None else None
        if self.above is not None:
            return value > (self.above if hold is None else hold)
        below = self.below if self.below is not None else -math.inf  # one side is given
        return value < (below if hold is None else hold)


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


class OpcUaLimits(Strict):
    """Nodes per request the HIL OPC UA server advertises and enforces, as an embedded PLC's
    server does (:mod:`hil.servers.opcua_limits`); unset: asyncua's 10000, not enforced."""

    max_nodes_per_read: PositiveInt | None = None
    max_nodes_per_write: PositiveInt | None = None
    max_nodes_per_translate_browse_paths: PositiveInt | None = None
    max_monitored_items_per_call: PositiveInt | None = None

    def operation_limits(self) -> OperationLimits:
        return OperationLimits(
            read=self.max_nodes_per_read,
            write=self.max_nodes_per_write,
            translate=self.max_nodes_per_translate_browse_paths,
            monitored_items=self.max_monitored_items_per_call,
        )


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
    opcua_limits: OpcUaLimits = OpcUaLimits()  # the OPC UA server's OperationLimits

    @model_validator(mode="after")
    def _ca_pair(self) -> HilSection:
        if (self.ca_certificate is None) != (self.ca_private_key is None):
            raise ValueError("give both 'ca_certificate' and 'ca_private_key', or neither")
        return self


class _SiteHil(Strict):
    """A site's ``hil:`` key alone, so that problems are named ``hil.<key path>``."""

    hil: HilSection


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


def hil_section(site: Site) -> HilSection | None:
    """The site's validated ``hil:`` section (None without one); ConfigError naming the site
    file and each ``hil.`` key path otherwise."""
    if site.hil is None:
        return None
    return parse(_SiteHil, {"hil": site.hil}, str(site.path)).hil


def with_hil(site: Site, section: HilSection) -> Site:
    """``site`` with ``section`` as its ``hil:`` section."""
    return dataclasses.replace(site, hil=section.model_dump())


def load_hil_site(path: Path) -> Site:
    """Load a site file for the HIL bench: the site (:func:`load_site`) and its ``hil:``
    section, cross-checked; one ConfigError lists every problem of the section."""
    return load_hil_site_and_scenario(path)[0]


def load_hil_site_and_scenario(path: Path) -> tuple[Site, ScenarioConfig | None]:
    """:func:`load_hil_site`, and the scenario it checked (None without a ``hil:`` section),
    for a :class:`~hil.rig.HilRig` of this site now (a campaign case: loaded once, not twice)."""
    site = load_site(path)
    section = hil_section(site)
    if section is None:
        return site, None
    scenario, problems = _checked_scenario(site, section)
    problems += _other_problems(site, section)
    if problems:
        raise ConfigError(problems)
    return site, scenario


def hil_problems(site: Site, hil: HilSection) -> list[Problem]:
    """What the section must agree with: its scenario, the tag map, the model, its CA files."""
    return [*_checked_scenario(site, hil)[1], *_other_problems(site, hil)]


def _other_problems(site: Site, hil: HilSection) -> list[Problem]:
    return [*_tag_problems(site), *_interlock_problems(site, hil), *_file_problems(site, hil)]


def _checked_scenario(site: Site, hil: HilSection) -> tuple[ScenarioConfig | None, list[Problem]]:
    """The section's scenario (None when it does not load) and its problems."""
    path = site.file(hil.scenario)
    try:
        sc = load_scenario(path)
    except ConfigError as exc:
        return None, list(exc.problems)
    if sc.plant and load_parameter_set(resolve(path, sc.plant)).model != site.model.name:
        message = f"the scenario is not for model {site.model.name!r}"
        return sc, [Problem(str(site.path), "hil.scenario", message, hil.scenario)]
    return sc, []


def _tag_problems(site: Site) -> list[Problem]:
    """The virtual PLC's tags (the closed-loop contract's are the site's own check) and a
    read-only tag with the working setpoint of every input."""
    src, tm = str(site.path), site.tags
    closed_loop = {c.tag for c in CLOSED_LOOP_CONTRACT}
    problems = [
        Problem(src, "hil", f"the virtual PLC needs the tag {name!r} in the tag map", name)
        for name in CONTRACT_TAGS
        if name not in tm.tags and name not in closed_loop
    ]
    reading = Binding.of(tm, site.model).working_setpoint_tags()
    return problems + [
        Problem(src, "hil", f"no read-only tag publishes the working setpoint of {inp!r}", inp)
        for inp in site.model.input_names
        if inp not in reading
    ]


def _interlock_problems(site: Site, hil: HilSection) -> list[Problem]:
    model, src = site.model, str(site.path)
    named = set(model.output_names) | set(model.state_names) | set(model.expression_names)
    problems = []
    for i, lock in enumerate(hil.plc.interlocks):
        where = f"hil.plc.interlocks.{i}"
        if lock.expression not in named:
            message = unknown_name("expression", lock.expression, sorted(named))
            problems.append(Problem(src, f"{where}.expression", message, lock.expression))
        problems += [
            Problem(src, f"{where}.force.{inp}", unknown_name("input", inp, model.input_names), inp)
            for inp in lock.force
            if inp not in model.input_names
        ]
    return problems


def _file_problems(site: Site, hil: HilSection) -> list[Problem]:
    refs = [(key, getattr(hil, key)) for key in ("ca_certificate", "ca_private_key")]
    return [
        Problem(str(site.path), f"hil.{key}", "file not found", ref)
        for key, ref in refs
        if ref and not site.file(ref).is_file()
    ]


#: a scaled-clock HIL run lets the virtual PLC scan at least this many times per controller
#: sample: slower, the controller reads PLC images up to a scan old and its writes reach the
#: plant up to a scan late (the CSTR at rate 600, a scan every 30 s of an 18 s sample: a
#: healthy plant's estimator rejected readings and the loop fell back)
MIN_SCANS_PER_SAMPLE = 2.0


def scan_rate_problem(
    site: Site, rate: float, sample_time: float, *, file: str, location: str
) -> Problem | None:
    """Why ``rate`` (process s per wall s) is too fast for the site's virtual PLC to serve a
    controller sampling every ``sample_time`` (model time unit), or None."""
    hil = hil_section(site)
    if hil is None or not math.isfinite(rate) or rate <= 0:
        return None
    sample_s = TimeBase.of(site.model).seconds(sample_time)
    scan_wall = hil.plc.scan_period_s
    scan_s = scan_wall * rate
    if scan_s * MIN_SCANS_PER_SAMPLE <= sample_s:
        return None
    # printed rounded down, so that the rate it names is accepted
    most = math.floor(sample_s / (MIN_SCANS_PER_SAMPLE * scan_wall) * 1e3) / 1e3
    why = (
        f"at {rate:.10g} process s per wall s the virtual PLC scans every {scan_s:.10g} s of "
        f"process time (hil.plc.scan_period_s {scan_wall:g} s of wall time), more than half "
        f"of the controller's sample ({sample_s:.10g} s): the controller would read PLC images "
        "up to a scan old and its writes would reach the plant up to a scan late, not the "
        f"plant it will run; allowed: a rate of at most {most:.10g} (or a shorter "
        f"hil.plc.scan_period_s in {site.path.resolve()})"
    )
    return Problem(file, location, why, rate)
