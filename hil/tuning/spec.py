"""Tuning files (``configs/tuning/<name>.yaml``): what to tune, on which scenarios, toward what.

::

    name: bioreactor
    start: ../controllers/bioreactor.yaml        # the controller config to start from
    parameters:                                  # dotted paths into the controller YAML
      - {path: objective.economic.0.weight, low: 0.1, high: 10.0, scale: log}
      - {path: horizon, low: 10, high: 30, type: int}
      - {path: estimator.process_noise_std.Y_x, low: 1.0e-4, high: 1.0e-2, scale: log}
    scenarios:                                   # a campaign file, or an inline matrix
      site: ../sites/bioreactor-modbus.yaml
      duration: 150.0
      matrix: [{factors: {mismatch: {low: {parameters: {Y_x: 0.3}}}}, seeds: [1]}]
      criteria: []                               # campaign criteria (for `reject`)
    objectives:                                  # one: TPE; several: NSGA-II (Pareto front)
      - name: titer
        aggregate: mean                          # over scenarios: mean or worst
        terms: [{kpi: final.P, sense: maximize}]
    reject:                                      # a candidate failing any of these never wins
      requirements: all                          # any failed verdict (or a list of IDs)
      kpis: [{kpi: solves.failed, at_most: 0}]
    search: {sampler: tpe, trials: 20, seed: 1}

An objective is a weighted sum of terms, each a campaign KPI (``result.json``'s ``kpis``) or a
statistic of a recorded trajectory signal (``signal: C_b, stat: iae, target: 0.6``), made
"lower is better" (maximized terms change sign), then aggregated over the scenarios. Every
problem is reported at once as one :class:`~controller.errors.ConfigError` naming the file,
the key, the bad value and what is allowed. Nothing is evaluated as code.
"""

from __future__ import annotations

import dataclasses
import hashlib
import math
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import Field, model_validator

from controller.config import ControllerConfig
from controller.configfile import (
    NAME,
    Finite,
    PositiveFinite,
    Strict,
    parse,
    read_yaml,
    real,
    resolve,
)
from controller.controllerfile import load_controller
from controller.errors import ConfigError, Problem, unknown_name
from hil.campaign.checks import Criterion
from hil.campaign.schema import Block
from hil.campaign.spec import Campaign, load_campaign

#: KPIs every campaign case reports (``final.*``, ``max.*``, ``min.*`` depend on the scenario)
FIXED_KPIS = (
    "scans",
    "cycles",
    "t_end",
    "solves.failed",
    "solves.longest_failed_run",
    "setpoint_writes",
    "plc.fallbacks",
    "mpc.control_losses",
    "plc.active_scans",
)
Stat = Literal["mean", "max", "min", "final", "iae", "ise"]


class ParameterSpec(Strict):
    """One tuned number: a dotted path into the controller YAML and its range."""

    path: Annotated[str, Field(min_length=1)]
    low: Finite
    high: Finite
    scale: Literal["linear", "log"] = "linear"
    type: Literal["float", "int"] = "float"
    #: grid sampler: the values to try (default: ``search.grid_points`` over the range)
    values: tuple[Finite, ...] = ()

    @model_validator(mode="after")
    def _range(self) -> ParameterSpec:
        if self.low >= self.high:
            raise ValueError(f"low {self.low} must be below high {self.high}")
        if self.scale == "log" and self.low <= 0:
            raise ValueError(f"a log scale needs low > 0 (got {self.low})")
        if self.type == "int" and (self.low != int(self.low) or self.high != int(self.high)):
            raise ValueError("an int parameter needs whole-number low and high")
        for v in self.values:
            if not self.low <= v <= self.high:
                raise ValueError(f"grid value {v} is outside [{self.low}, {self.high}]")
        return self

    @property
    def name(self) -> str:
        return self.path


class Term(Strict):
    """A KPI (``kpi``) or a trajectory statistic (``signal`` + ``stat``, ``target`` for
    ``iae``/``ise``: the time integral of the absolute/squared error), with a weight."""

    kpi: str | None = None
    signal: str | None = None
    stat: Stat = "mean"
    target: Finite = 0.0
    sense: Literal["minimize", "maximize"] = "minimize"
    weight: PositiveFinite = 1.0

    @model_validator(mode="after")
    def _one_source(self) -> Term:
        if (self.kpi is None) == (self.signal is None):
            raise ValueError("give exactly one of 'kpi' or 'signal'")
        return self

    @property
    def label(self) -> str:
        if self.kpi is not None:
            return self.kpi
        extra = f"-{self.target:g}" if self.stat in ("iae", "ise") else ""
        return f"{self.stat}({self.signal}{extra})"


class ObjectiveSpec(Strict):
    name: Annotated[str, Field(pattern=NAME)] = "objective"
    aggregate: Literal["mean", "worst"] = "mean"
    terms: tuple[Term, ...] = Field(min_length=1)


class KpiBound(Strict):
    """A KPI every scenario must meet, else the candidate is rejected."""

    kpi: str
    at_most: Finite | None = None
    at_least: Finite | None = None

    @model_validator(mode="after")
    def _one_bound(self) -> KpiBound:
        if self.at_most is None and self.at_least is None:
            raise ValueError("give 'at_most', 'at_least' or both")
        return self


class Reject(Strict):
    """Hard requirements. A case that errors always rejects its candidate."""

    requirements: Literal["all"] | tuple[str, ...] = ()
    kpis: tuple[KpiBound, ...] = ()


class Scenarios(Strict):
    """A campaign file (``campaign``), or an inline campaign-style ``site`` + ``matrix``."""

    campaign: str | None = None
    site: str | None = None
    controller: None = None  # the candidate is the controller
    duration: PositiveFinite | None = None
    matrix: tuple[Block, ...] = ()
    criteria: tuple[Criterion, ...] = ()

    @model_validator(mode="after")
    def _one_source(self) -> Scenarios:
        if (self.campaign is None) == (self.site is None):
            raise ValueError("give exactly one of 'campaign' or 'site' (with 'matrix')")
        if self.site is not None and not self.matrix:
            raise ValueError("an inline scenario set needs a 'matrix'")
        if self.campaign is not None and (self.matrix or self.criteria):
            raise ValueError("'matrix' and 'criteria' come from the campaign file")
        return self


class Search(Strict):
    sampler: Literal["tpe", "nsga2", "grid", "random"] | None = None  # default: tpe / nsga2
    trials: Annotated[int, Field(ge=1, le=10_000)] = 20
    seed: Annotated[int, Field(ge=0)] = 0
    grid_points: Annotated[int, Field(ge=2, le=50)] = 3
    #: compile candidates' solvers (off: every candidate would recompile, ~10 s each)
    jit: bool = False
    #: try the start config's own values first (TPE, NSGA-II, random)
    start_first: bool = True


class TuningFile(Strict):
    name: Annotated[str, Field(pattern=NAME)]
    description: str = ""
    start: str
    parameters: tuple[ParameterSpec, ...] = Field(min_length=1)
    scenarios: Scenarios
    objectives: tuple[ObjectiveSpec, ...] = Field(min_length=1)
    reject: Reject = Reject()
    search: Search = Search()

    @model_validator(mode="after")
    def _unique(self) -> TuningFile:
        for what, names in (
            ("parameter paths", [p.path for p in self.parameters]),
            ("objective names", [o.name for o in self.objectives]),
        ):
            dup = sorted({n for n in names if names.count(n) > 1})
            if dup:
                raise ValueError(f"{what} must be unique; repeated: {dup}")
        return self


@dataclass(frozen=True)
class Tuning:
    """A loaded tuning file: the start config (raw and validated) and the scenario campaign."""

    path: Path
    spec: TuningFile
    start_path: Path
    start_raw: dict[str, Any]  # the start YAML, plant made absolute
    start_config: ControllerConfig
    campaign: Campaign
    sha256: str

    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def sampler(self) -> str:
        default = "nsga2" if len(self.spec.objectives) > 1 else "tpe"
        return self.spec.search.sampler or default

    def start_values(self) -> dict[str, float]:
        data = self.start_config.model_dump(mode="json")
        return {p.path: float(get_path(data, p.path)) for p in self.spec.parameters}


# ---------------------------------------------------------------------- dotted paths
def _step(node: Any, key: str) -> Any:
    if isinstance(node, dict):
        return node[key]
    if isinstance(node, list):
        return node[int(key)]
    raise KeyError(key)


def get_path(data: Any, path: str) -> Any:
    """The value at ``a.b.0.c``; KeyError/IndexError/ValueError when it is not there."""
    node = data
    for key in path.split("."):
        node = _step(node, key)
    return node


def set_path(data: dict[str, Any], path: str, value: Any) -> None:
    """Set ``a.b.0.c`` in a raw YAML mapping, making missing mappings on the way."""
    keys = path.split(".")
    node: Any = data
    for key in keys[:-1]:
        node = node[int(key)] if isinstance(node, list) else node.setdefault(key, {})
    if isinstance(node, list):
        node[int(keys[-1])] = value
    else:
        node[keys[-1]] = value


def candidate_config(
    tuning: Tuning, values: dict[str, float], *, jit: bool | None, folder: Path | None = None
) -> str:
    """The controller YAML of a candidate; ``jit`` None keeps the start's solver setting.

    Its plant path is absolute, or, with ``folder`` (where the YAML is written), relative to
    it (:func:`portable_path`): a tuned config kept with its project still loads once the
    project is cloned or moved elsewhere."""
    raw = yaml.safe_load(yaml.safe_dump(tuning.start_raw, sort_keys=False))
    if folder is not None:
        raw["plant"] = portable_path(Path(raw["plant"]), folder)
    for p in tuning.spec.parameters:
        v = values[p.path]
        set_path(raw, p.path, round(v) if p.type == "int" else float(v))
    if jit is not None:
        raw.setdefault("solver", {})["jit"] = jit
    return yaml.safe_dump(raw, sort_keys=False)


def portable_path(target: Path, folder: Path) -> str:
    """``target`` (absolute) as a config in ``folder`` names it: relative to ``folder`` when
    the two share a folder below the file system's root (a project and its ``runs/``),
    absolute otherwise (a path climbing to the root would only move the trap)."""
    folder = folder.resolve()
    if os.path.commonpath([target, folder]) == target.anchor:
        return str(target)
    return Path(os.path.relpath(target, folder)).as_posix()


# ---------------------------------------------------------------------- checks
def _check_parameters(
    spec: TuningFile, start: ControllerConfig, source: str, start_ref: str
) -> list[Problem]:
    data = start.model_dump(mode="json")
    problems = []
    for i, p in enumerate(spec.parameters):
        where = f"parameters.{i}.path"
        try:
            value = get_path(data, p.path)
        except (KeyError, IndexError, ValueError, TypeError):
            problems.append(
                Problem(source, where, f"no such number in the start config {start_ref}", p.path)
            )
            continue
        if isinstance(value, bool) or not isinstance(value, int | float):
            problems.append(
                Problem(source, where, f"not a number in {start_ref} (it is {value!r})", p.path)
            )
        elif isinstance(value, float) and p.type == "int":
            problems.append(
                Problem(source, f"parameters.{i}.type", "the start value is a float", p.type)
            )
    return problems


def kpi_names(campaign: Campaign) -> set[str]:
    """Every KPI name the campaign's cases report."""
    names = set(FIXED_KPIS)
    for case in campaign.cases:
        names |= {f"final.{n}" for n in case.scenario.get("cqas", ())}
        for chk in case.scenario.get("checks", ()):
            names |= {f"max.{chk['expression']}", f"min.{chk['expression']}"}
    return names


def signal_names(campaign: Campaign) -> set[str]:
    m = campaign.model
    return (
        set(m.state_names)
        | set(m.input_names)
        | set(m.output_names)
        | set(m.algebraic_names)
        | set(m.expression_names)
    )


def _check_names(spec: TuningFile, campaign: Campaign, source: str) -> list[Problem]:
    """KPIs, signals and requirements the tuning file names that the scenario set lacks."""
    problems = []
    kpis, signals = sorted(kpi_names(campaign)), sorted(signal_names(campaign))
    for i, obj in enumerate(spec.objectives):
        for j, t in enumerate(obj.terms):
            where = f"objectives.{i}.terms.{j}"
            if t.kpi is not None and t.kpi not in kpis:
                problems.append(
                    Problem(source, f"{where}.kpi", unknown_name("KPI", t.kpi, kpis), t.kpi)
                )
            if t.signal is not None and t.signal not in signals:
                message = unknown_name("signal", t.signal, signals)
                problems.append(Problem(source, f"{where}.signal", message, t.signal))
    for i, b in enumerate(spec.reject.kpis):
        if b.kpi not in kpis:
            problems.append(
                Problem(source, f"reject.kpis.{i}.kpi", unknown_name("KPI", b.kpi, kpis), b.kpi)
            )
    if spec.reject.requirements != "all":
        for req in spec.reject.requirements:
            if req not in campaign.criteria:
                message = unknown_name(
                    "requirement", req, sorted(campaign.criteria), context=" in the scenario set"
                )
                problems.append(Problem(source, "reject.requirements", message, req))
    return problems


def _campaign(spec: TuningFile, path: Path) -> Campaign:
    """The scenario set as a campaign (fast mode), through :func:`load_campaign`."""
    sc = spec.scenarios
    if sc.campaign is not None:
        camp_path = real(resolve(path, sc.campaign), str(path), "scenarios.campaign")
        raw = read_yaml(camp_path)
        site = raw.get("site")
        if not isinstance(site, str):  # a KeyError or a TypeError traceback before
            why = "missing" if site is None else f"{site!r} is not a path"
            allowed = f"{why}; allowed: the path of a site file"
            raise ConfigError([Problem(str(camp_path), "site", allowed, site)])
        raw["site"] = str(real(resolve(camp_path, site), str(camp_path), "site"))
        raw.pop("controller", None)
    else:
        if sc.site is None:  # Scenarios requires a campaign or a site
            raise ValueError("a tuning scenario set names neither a campaign nor a site")
        raw = {
            "name": f"{spec.name}-scenarios",
            "site": str(real(resolve(path, sc.site), str(path), "scenarios.site")),
            "matrix": [b.model_dump(mode="json", exclude_defaults=True) for b in sc.matrix],
            "criteria": [c.model_dump(mode="json", exclude_defaults=True) for c in sc.criteria],
        }
    if sc.duration is not None:
        raw["duration"] = sc.duration
    raw["mode"] = "fast"
    with tempfile.TemporaryDirectory(prefix="pharmatwin-tuning-") as tmp:
        file = Path(tmp) / f"{spec.name}-scenarios.yaml"
        file.write_text(yaml.safe_dump(raw, sort_keys=False), encoding="utf-8")
        try:
            campaign = load_campaign(file, judged=False)  # judged by the objectives
        except ConfigError as exc:  # name the tuning file, not the temporary one
            raise ConfigError(
                dataclasses.replace(p, file=str(path), location=f"scenarios: {p.location}")
                if p.file.startswith(str(file)) or p.file == str(file)
                else p
                for p in exc.problems
            ) from exc
    return dataclasses.replace(campaign, path=path)


def load_tuning(path: Path) -> Tuning:
    """Load and check a tuning file, its start config and its scenario set."""
    source = str(path)
    path = real(Path(path), source, "")
    text = path.read_bytes() if path.is_file() else b""
    spec = parse(TuningFile, read_yaml(path), source)
    start_path = real(resolve(path, spec.start), source, "start")
    start_config, _ = load_controller(start_path)
    start_raw = read_yaml(start_path)
    start_raw["plant"] = str(
        real(resolve(start_path, start_config.plant), str(start_path), "plant")
    )
    problems = _check_parameters(spec, start_config, source, spec.start)
    campaign = _campaign(spec, path)
    problems += _check_names(spec, campaign, source)
    if problems:
        raise ConfigError(problems)
    digest = hashlib.sha256(text).hexdigest()
    return Tuning(path, spec, start_path, start_raw, start_config, campaign, digest)


def grid_values(p: ParameterSpec, points: int) -> list[float]:
    """The grid sampler's values of one parameter."""
    if p.values:
        return sorted(set(p.values))
    if p.scale == "log":
        lo, hi = math.log(p.low), math.log(p.high)
        raw = [math.exp(lo + (hi - lo) * k / (points - 1)) for k in range(points)]
    else:
        raw = [p.low + (p.high - p.low) * k / (points - 1) for k in range(points)]
    raw[0], raw[-1] = p.low, p.high
    if p.type == "int":
        return sorted({float(round(v)) for v in raw})
    return raw
