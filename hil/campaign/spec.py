"""Campaign files (``configs/campaigns/<name>.yaml``): a scenario matrix and acceptance criteria.

A campaign names the site under test (its controller, tag map, PLC behaviour and base HIL
scenario), optionally another controller config to test on that site, a scenario matrix and
the acceptance criteria::

    name: lyophilizer-oq
    site: ../sites/lyophilizer-modbus.yaml
    matrix:                      # a list of blocks; each block is the product of its factors
      - factors:
          mismatch:              # factor -> variant -> overlay on the base scenario
            nominal: {}
            R0-high: {parameters: {R0: 2.0}}
          faults:
            none: {}
            bias: {faults: [{kind: sensor_bias, target: Tbot, start: 2.0, magnitude: 1.0}]}
        seeds: [1, 2]
    criteria:
      - id: REQ-SAFE-01
        description: No setpoint outside its limits
        check: {kind: setpoints_within_limits, limits: {Tsh: [-45, 120]}}

An overlay changes the true plant of the base scenario: ``parameters`` (plant-model
mismatch), ``initial_state``, ``noise_std`` (merged), ``disturbances`` and ``faults``
(appended), and ``controller_loss_at`` (the controller process is lost at that time). Checks
are a fixed set of named kinds (:data:`Check`); nothing in a campaign file is evaluated as code.

Times are in the plant model's time unit. :func:`load_campaign` validates the file and every
case it expands to, and raises one :class:`~controller.errors.ConfigError` listing every problem
with its file, key, bad value and what is allowed.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import Field, model_validator

from controller.configfile import Finite, PositiveFinite, Strict, parse, read_yaml, resolve
from controller.controllerfile import load_controller
from controller.errors import ConfigError, Problem
from controller.plantfile import build_model
from hil.faultspec import FaultSpec
from hil.scenario import Disturbance, ScenarioConfig, check_scenario
from hil.site import hil_section, load_hil_site
from plant_models import PlantModel

NAME = r"^[A-Za-z0-9][A-Za-z0-9_.+-]*$"
REQUIREMENT_ID = r"^REQ-[A-Z0-9]+(-[A-Z0-9]+)*$"


class Overlay(Strict):
    """What one variant of a factor changes in the base scenario's true plant."""

    description: str = ""
    parameters: dict[str, Finite] = Field(default_factory=dict)
    initial_state: dict[str, Finite] = Field(default_factory=dict)
    noise_std: dict[str, Annotated[float, Field(ge=0, allow_inf_nan=False)]] = Field(
        default_factory=dict
    )
    disturbances: tuple[Disturbance, ...] = ()
    faults: tuple[FaultSpec, ...] = ()
    controller_loss_at: Annotated[float, Field(ge=0, allow_inf_nan=False)] | None = None


class Block(Strict):
    """One product of factors: every combination of one variant per factor, times each seed."""

    description: str = ""
    factors: dict[str, dict[Annotated[str, Field(pattern=NAME)], Overlay]]
    seeds: tuple[Annotated[int, Field(ge=0)], ...] = (0,)
    #: the mode these cases need whatever the campaign's (``hil``: a fault that only real
    #: servers can carry out, such as comm_latency); None runs them in the campaign's mode
    mode: Literal["fast", "hil"] | None = None

    @model_validator(mode="after")
    def _non_empty(self) -> Block:
        for name, variants in self.factors.items():
            if not re.match(NAME, name):
                raise ValueError(f"factor name {name!r} must match {NAME}")
            if not variants:
                raise ValueError(f"factor {name!r} has no variants")
        if not self.seeds:
            raise ValueError("give at least one seed")
        return self


# ---------------------------------------------------------------------- checks
class SetpointsWithinLimits(Strict):
    """Every setpoint the controller sent lies within ``limits``, and each change between two
    consecutive sends within ``max_move`` (per controller sample)."""

    kind: Literal["setpoints_within_limits"]
    limits: dict[str, tuple[Finite, Finite]]
    max_move: dict[str, PositiveFinite] = Field(default_factory=dict)


class Extremum(Strict):
    """The maximum, minimum or final value of a true-plant quantity (state, expression, output
    or applied input), within ``[after, before]`` if given (and only while the MPC had control
    if ``while_mpc_active``), against ``at_most``/``at_least``."""

    kind: Literal["max", "min", "final"]
    of: str
    at_most: Finite | None = None
    at_least: Finite | None = None
    unit: str = ""
    after: Finite | None = None
    before: Finite | None = None
    #: judge only the scans during which the MPC had control (the PLC reports it active)
    while_mpc_active: bool = False

    @model_validator(mode="after")
    def _one_bound(self) -> Extremum:
        if (self.at_most is None) == (self.at_least is None):
            raise ValueError("give exactly one of 'at_most' or 'at_least'")
        return self


class FallbackWithin(Strict):
    """After the controller is lost, the PLC falls back within N heartbeat timeouts."""

    kind: Literal["fallback_within"]
    heartbeat_timeouts: PositiveFinite = 2.0


class ConsecutiveFailedSolves(Strict):
    """No run of failed solves longer than ``at_most`` cycles."""

    kind: Literal["consecutive_failed_solves"]
    at_most: Annotated[int, Field(ge=0)]


class ControlLosses(Strict):
    """The MPC loses control (the PLC drops it, or it releases after bad cycles) at most
    ``at_most`` times during the run."""

    kind: Literal["control_losses"]
    at_most: Annotated[int, Field(ge=0)]


class DriftAlarm(Strict):
    """The twin raises a drift alarm on ``signal`` (an estimated parameter or a measured
    output; ``side`` high/low if given) within ``within`` time units of ``after`` (the onset
    of the drift), and none on any signal before ``after``. Judged on the detection delay."""

    kind: Literal["drift_alarm"]
    signal: str
    side: Literal["high", "low"] | None = None
    after: Annotated[float, Field(ge=0, allow_inf_nan=False)]
    within: PositiveFinite


class NoDriftAlarm(Strict):
    """The twin raises at most ``at_most`` drift alarms over the run (false-alarm check)."""

    kind: Literal["no_drift_alarm"]
    at_most: Annotated[int, Field(ge=0)] = 0


class MaintenanceForecast(Strict):
    """The time-to-threshold forecast of ``parameter`` brackets the true crossing: of the
    forecasts issued from ``after`` on (status approaching), at least the fraction
    ``at_least`` have an interval that contains the time the true parameter crosses."""

    kind: Literal["maintenance_forecast"]
    parameter: str
    after: Annotated[float, Field(ge=0, allow_inf_nan=False)]
    at_least: Annotated[float, Field(gt=0, le=1)] = 0.9


Check = Annotated[
    SetpointsWithinLimits
    | Extremum
    | FallbackWithin
    | ConsecutiveFailedSolves
    | ControlLosses
    | DriftAlarm
    | NoDriftAlarm
    | MaintenanceForecast,
    Field(discriminator="kind"),
]


class Criterion(Strict):
    """An acceptance criterion: a requirement ID, what it means, and its check."""

    id: Annotated[str, Field(pattern=REQUIREMENT_ID)]
    description: str
    check: Check
    #: factor -> variants this criterion applies to (empty: every case)
    applies_to: dict[str, tuple[str, ...]] = Field(default_factory=dict)


def describe_check(check: Check) -> str:
    """A person's reading of a check, for reports."""
    match check:
        case SetpointsWithinLimits():
            parts = [f"{n} in [{lo:g}, {hi:g}]" for n, (lo, hi) in check.limits.items()]
            parts += [f"|d{n}| <= {v:g}/sample" for n, v in check.max_move.items()]
            return "every setpoint sent: " + ", ".join(parts)
        case Extremum():
            op, bound = (
                ("<=", check.at_most) if check.at_most is not None else (">=", check.at_least)
            )
            window = ""
            if check.after is not None or check.before is not None:
                window = f" over [{check.after or 0:g}, {check.before or 'end'}]"
            if check.while_mpc_active:
                window += " while the MPC has control"
            return f"{check.kind}({check.of}){window} {op} {bound:g} {check.unit}".rstrip()
        case FallbackWithin():
            return f"PLC fallback within {check.heartbeat_timeouts:g} heartbeat timeouts of loss"
        case ConsecutiveFailedSolves():
            return f"longest run of failed solves <= {check.at_most} cycles"
        case ControlLosses():
            return f"times the MPC lost control <= {check.at_most}"
        case DriftAlarm():
            side = f" ({check.side})" if check.side else ""
            return (
                f"drift alarm on {check.signal}{side} within {check.within:g} of t={check.after:g},"
                " none before"
            )
        case NoDriftAlarm():
            return f"drift alarms <= {check.at_most}"
        case MaintenanceForecast():
            return (
                f"time-to-threshold interval of {check.parameter} contains the true crossing in "
                f">= {100 * check.at_least:g} % of the forecasts from t={check.after:g}"
            )
    raise AssertionError(f"unhandled check {check!r}")  # pragma: no cover


class HilSettings(Strict):
    """The HIL mode's clock: process seconds per wall second."""

    rate: PositiveFinite = 1000.0


class CampaignFile(Strict):
    name: Annotated[str, Field(pattern=NAME)]
    description: str = ""
    site: str
    controller: str | None = None  # another controller config to test on the site
    duration: PositiveFinite | None = None  # overrides the base scenario's (model time unit)
    mode: Literal["fast", "hil"] = "fast"
    hil: HilSettings = HilSettings()
    retries: Annotated[int, Field(ge=0, le=10)] = 2  # a case whose worker is lost is rerun
    matrix: tuple[Block, ...]
    criteria: tuple[Criterion, ...]

    @model_validator(mode="after")
    def _unique(self) -> CampaignFile:
        ids = [c.id for c in self.criteria]
        dup = sorted({i for i in ids if ids.count(i) > 1})
        if dup:
            raise ValueError(f"requirement IDs must be unique; repeated: {dup}")
        if not self.matrix:
            raise ValueError("the matrix needs at least one block")
        return self


# ---------------------------------------------------------------------- cases
@dataclass(frozen=True)
class Case:
    """One scenario of a campaign, as plain data (what a worker receives)."""

    id: str
    index: int
    factors: dict[str, str]
    seed: int
    scenario: dict[str, Any]  # a complete scenario file's content (absolute plant path)
    controller_loss_at: float | None
    criteria: tuple[str, ...]  # the requirement IDs that apply
    mode: str | None = None  # the mode this case needs (None: the campaign's)

    def run_mode(self, campaign_mode: str) -> str:
        """The mode this case runs in: its own if it needs one, else the campaign's."""
        return self.mode or campaign_mode

    def to_json(self) -> dict[str, Any]:
        return {
            "mode": self.mode,
            "id": self.id,
            "index": self.index,
            "factors": dict(self.factors),
            "seed": self.seed,
            "scenario": self.scenario,
            "controller_loss_at": self.controller_loss_at,
            "criteria": list(self.criteria),
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Case:
        return cls(
            id=data["id"],
            index=int(data["index"]),
            factors=dict(data["factors"]),
            seed=int(data["seed"]),
            scenario=data["scenario"],
            controller_loss_at=data["controller_loss_at"],
            criteria=tuple(data["criteria"]),
            mode=data.get("mode"),
        )

    @property
    def digest(self) -> str:
        """A hash of everything that defines the case (a changed case is run again)."""
        text = json.dumps(self.to_json(), sort_keys=True)
        return hashlib.sha256(text.encode()).hexdigest()


@dataclass(frozen=True)
class Campaign:
    """A loaded campaign: its file, the site (and controller) files, and every case."""

    path: Path
    spec: CampaignFile
    site_path: Path
    controller_path: Path | None
    model: PlantModel  # the true plant's model (names for the checks)
    cases: tuple[Case, ...]
    criteria: dict[str, Criterion] = field(default_factory=dict)

    @property
    def name(self) -> str:
        return self.spec.name

    def files(self) -> list[Path]:
        """Every file that defines the campaign (hashed into the results)."""
        site = load_hil_site(self.site_path)
        hil = hil_section(site)
        out = [self.path, self.site_path]
        out += [site.file(str(read_yaml(self.site_path)[k])) for k in ("controller", "tags")]
        out.append(resolve(out[2], site.controller.plant))
        if hil is not None:
            out.append(site.file(hil.scenario))
        if self.controller_path is not None:
            out.append(self.controller_path)
        return list(dict.fromkeys(p.resolve() for p in out))


def _merge(base: dict[str, Any], overlay: Overlay) -> None:
    tp = base.setdefault("true_plant", {})
    for key in ("parameters", "initial_state", "noise_std"):
        extra = getattr(overlay, key)
        if extra:
            tp[key] = {**tp.get(key, {}), **extra}
    if overlay.disturbances:
        tp["disturbances"] = [
            *tp.get("disturbances", []),
            *(d.model_dump() for d in overlay.disturbances),
        ]
    if overlay.faults:
        base["faults"] = [
            *base.get("faults", []),
            *(f.model_dump(exclude_defaults=True) for f in overlay.faults),
        ]


def _applies(c: Criterion, factors: dict[str, str], loss: float | None) -> bool:
    if isinstance(c.check, FallbackWithin) and loss is None:
        return False
    return all(factors.get(f) in allowed for f, allowed in c.applies_to.items())


def _expand(
    spec: CampaignFile, base: dict[str, Any], source: str
) -> tuple[list[Case], list[Problem]]:
    cases: list[Case] = []
    problems: list[Problem] = []
    seen: set[str] = set()
    for b, block in enumerate(spec.matrix):
        names = list(block.factors)
        for combo in itertools.product(*(block.factors[n].items() for n in names)):
            for seed in block.seeds:
                sc = json.loads(json.dumps(base))
                loss: float | None = None
                factors: dict[str, str] = {}
                for name, (variant, overlay) in zip(names, combo, strict=True):
                    factors[name] = variant
                    _merge(sc, overlay)
                    if overlay.controller_loss_at is not None:
                        loss = overlay.controller_loss_at
                index = len(cases)
                label = "-".join(factors.values()) or "base"
                case_id = f"c{index:03d}-{label}-s{seed}"
                if (key := json.dumps([factors, seed], sort_keys=True)) in seen:
                    problems.append(
                        Problem(source, f"matrix.{b}", "this combination repeats another", key)
                    )
                seen.add(key)
                sc["name"] = case_id
                sc["description"] = f"{spec.name}: " + ", ".join(
                    f"{k}={v}" for k, v in factors.items()
                )
                sc.setdefault("true_plant", {})["seed"] = seed
                if spec.duration is not None:
                    sc["duration"] = spec.duration
                applying = tuple(c.id for c in spec.criteria if _applies(c, factors, loss))
                cases.append(Case(case_id, index, factors, seed, sc, loss, applying, block.mode))
    return cases, problems


def _check_criteria(spec: CampaignFile, model: PlantModel, source: str) -> list[Problem]:
    problems: list[Problem] = []
    names = (
        set(model.state_names)
        | set(model.input_names)
        | set(model.output_names)
        | set(model.algebraic_names)
        | set(model.expression_names)
    )
    factors: dict[str, set[str]] = {}
    for block in spec.matrix:
        for name, variants in block.factors.items():
            factors.setdefault(name, set()).update(variants)
    for i, c in enumerate(spec.criteria):
        where = f"criteria.{i}"
        check = c.check
        if isinstance(check, Extremum) and check.of not in names:
            problems.append(
                Problem(
                    source, f"{where}.check.of", f"unknown name; allowed: {sorted(names)}", check.of
                )
            )
        if isinstance(check, SetpointsWithinLimits):
            for key in ("limits", "max_move"):
                for n in getattr(check, key):
                    if n not in model.input_names:
                        problems.append(
                            Problem(
                                source,
                                f"{where}.check.{key}.{n}",
                                f"unknown input; allowed: {list(model.input_names)}",
                                n,
                            )
                        )
            for n, (lo, hi) in check.limits.items():
                if lo > hi:
                    problems.append(
                        Problem(source, f"{where}.check.limits.{n}", "lower > upper", [lo, hi])
                    )
        for f, allowed in c.applies_to.items():
            if f not in factors:
                problems.append(
                    Problem(
                        source,
                        f"{where}.applies_to.{f}",
                        f"unknown factor; the matrix has {sorted(factors)}",
                        f,
                    )
                )
                continue
            for v in allowed:
                if v not in factors[f]:
                    problems.append(
                        Problem(
                            source,
                            f"{where}.applies_to.{f}",
                            f"unknown variant; factor {f!r} has {sorted(factors[f])}",
                            v,
                        )
                    )
    return problems


def load_campaign(path: Path) -> Campaign:
    """Load a campaign, its site, and check every case it expands to."""
    source = str(path)
    path = Path(path).resolve()
    spec = parse(CampaignFile, read_yaml(path), source)
    site_path = resolve(path, spec.site).resolve()
    site = load_hil_site(site_path)
    hil = hil_section(site)
    problems: list[Problem] = []
    if hil is None:
        raise ConfigError(
            [Problem(source, "site", "the site has no 'hil' section to run against", spec.site)]
        )
    controller_path = (
        resolve(path, spec.controller).resolve() if spec.controller is not None else None
    )
    if controller_path is not None:
        try:
            _, cmodel = load_controller(controller_path)
        except ConfigError as exc:
            problems += exc.problems
        else:
            if cmodel.name != site.model.name:
                problems.append(
                    Problem(
                        source,
                        "controller",
                        f"controller is for model {cmodel.name!r}, the site's is "
                        f"{site.model.name!r}",
                        spec.controller,
                    )
                )
    scen_path = site.file(hil.scenario)
    base = read_yaml(scen_path)
    base["plant"] = str(resolve(scen_path, base["plant"]).resolve())
    base.pop("controller", None)
    model = build_model(Path(base["plant"]))
    problems += _check_criteria(spec, model, source)
    cases, more = _expand(spec, base, source)
    problems += more
    for case in cases:
        where = f"{source} (case {case.id})"
        try:
            sc = parse(ScenarioConfig, case.scenario, where)
        except ConfigError as exc:
            problems += exc.problems
            continue
        problems += check_scenario(sc, model, where)
    if problems:
        raise ConfigError(problems)
    criteria = {c.id: c for c in spec.criteria}
    return Campaign(path, spec, site_path, controller_path, model, tuple(cases), criteria)
