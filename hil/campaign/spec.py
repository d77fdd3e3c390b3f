"""Loading a campaign file: its site, its cases, and every name it uses checked.

:func:`load_campaign` parses the file (:mod:`hil.campaign.schema`), loads the site under test
and its base HIL scenario, checks the criteria's names against the true plant's model and the
matrix (:func:`check_criteria`), expands the matrix (:mod:`hil.campaign.cases`) and validates
every case's scenario, its scheduled faults checked against the site as its rig will check
them, in the mode the case runs in (its block's, else the campaign's)
(:func:`hil.faultcheck.scheduled_fault_problems`: a fault that could not act, that the
controller could never see, or that the servers of the case's mode cannot carry out, such as
``comm_latency`` on the in-memory PLC of the fast mode, is refused here rather than erroring
its case after the others have run). It raises one
:class:`~controller.errors.ConfigError` listing every problem with its file, key, bad value
and what is allowed.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from controller.configfile import existing, parse, read_yaml, real, resolve
from controller.errors import ConfigError, Problem, unknown_name
from controller.plantfile import build_model
from controller.runtime.site import Site, load_checked_controller
from hil.campaign.cases import Case, expand_matrix
from hil.campaign.checks import Criterion, Extremum, SetpointsWithinLimits
from hil.campaign.schema import CampaignFile
from hil.faultcheck import FaultTargets, scheduled_fault_problems
from hil.scenario import ScenarioConfig, check_scenario
from hil.site import hil_section, load_hil_site, scan_rate_problem
from plant_models import PlantModel


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


def load_campaign(
    path: Path, *, judged: bool = True, mode: str | None = None, rate: float | None = None
) -> Campaign:
    """Load a campaign, its site, and check every case it expands to.

    ``judged``: its verdicts are the evidence (a campaign run), so every case must be judged
    by some requirement; a tuning's scenario set (judged by its objectives) need not be.
    ``mode``: the mode the campaign is to run in (``campaign run --mode``; default the file's):
    a case's faults are checked in it, or in its block's own mode.
    Raises ConfigError listing every problem of the file, its controller and its cases."""
    source = str(path)
    real(Path(path), source, "")  # a symlink loop is a clear error
    path = Path(path).absolute()  # as written: a symlink's relative paths from where it is
    spec = parse(CampaignFile, read_yaml(path), source)
    site_path = existing(resolve(path, spec.site), source, "site")
    site = load_hil_site(site_path)
    hil = hil_section(site)
    if hil is None:
        raise ConfigError(
            [Problem(source, "site", "the site has no 'hil' section to run against", spec.site)]
        )
    controller_path = (
        existing(resolve(path, spec.controller), source, "controller")
        if spec.controller is not None
        else None
    )
    problems = _controller_problems(spec, controller_path, site.model.name, source)
    base = _base_scenario(site.file(hil.scenario))
    model = build_model(Path(base["plant"]))
    problems += check_criteria(spec, model, source)
    cases, more = expand_matrix(spec, base, source, model)
    problems += more
    problems += _case_problems(cases, model, source, site, mode or spec.mode)
    problems += _exercise_problems(spec, cases, source, judged=judged)
    problems += _rate_problems(spec, cases, site, controller_path, source, mode or spec.mode, rate)
    if problems:
        raise ConfigError(problems)
    criteria = {c.id: c for c in spec.criteria}
    return Campaign(path, spec, site_path, controller_path, model, tuple(cases), criteria)


def _controller_problems(
    spec: CampaignFile, controller_path: Path | None, site_model: str, source: str
) -> list[Problem]:
    """The problems of the campaign's own controller config (none without one)."""
    if controller_path is None:
        return []
    try:
        _, cmodel = load_checked_controller(controller_path)
    except ConfigError as exc:
        return list(exc.problems)
    if cmodel.name == site_model:
        return []
    message = f"controller is for model {cmodel.name!r}, the site's is {site_model!r}"
    return [Problem(source, "controller", message, spec.controller)]


def _rate_problems(
    spec: CampaignFile,
    cases: list[Case],
    site: Site,
    controller_path: Path | None,
    source: str,
    campaign_mode: str,
    rate: float | None,
) -> list[Problem]:
    """A rate (the command line's ``rate``, else the file's ``hil.rate``) too fast for the
    virtual PLC to serve the controller, when any case runs in hil mode."""
    if not any(c.run_mode(campaign_mode) == "hil" for c in cases):
        return []
    sample_time = site.controller.sample_time
    if controller_path is not None:
        try:
            sample_time = load_checked_controller(controller_path)[0].sample_time
        except ConfigError:
            return []  # said by _controller_problems
    default = "rate" not in spec.hil.model_fields_set  # the file does not set it
    key = "hil.rate (not set: the default)" if default else "hil.rate"
    where = ("command line", "--rate") if rate is not None else (source, key)
    effective = spec.hil.rate if rate is None else rate
    problem = scan_rate_problem(site, effective, sample_time, file=where[0], location=where[1])
    return [] if problem is None else [problem]


def _exercise_problems(
    spec: CampaignFile, cases: list[Case], source: str, *, judged: bool = True
) -> list[Problem]:
    """What would pass without being looked at: a requirement no case judges (it would be
    "not run" in a report that passes), a case no requirement judges (it would pass on
    nothing), and a fault or controller loss planned at or after its case's end (it would
    never act, and its case would pass as if it had)."""
    problems: list[Problem] = []
    for i, c in enumerate(spec.criteria):
        if cases and not any(c.id in case.criteria for case in cases):
            why = (
                f"requirement {c.id} judges no case of the matrix (its applies_to, or a "
                "fallback check without a controller loss, matches none): it would never be run"
            )
            problems.append(Problem(source, f"criteria.{i}", why, c.id))
    if judged and not spec.criteria:
        problems.append(
            Problem(source, "criteria", "no criterion: every case would pass on nothing")
        )
    for case in cases:
        where = f"{source} (case {case.id})"
        if judged and spec.criteria and not case.criteria:
            why = "no requirement judges this case: it would pass on nothing"
            problems.append(Problem(where, "criteria", why, case.id))
        end = case.scenario.get("duration")
        if not isinstance(end, int | float):
            continue
        for k, fault in enumerate(case.scenario.get("faults") or []):
            start = fault.get("start", 0.0) if isinstance(fault, dict) else 0.0
            if isinstance(start, int | float) and start >= end:
                why = f"starts at t={start:g}, at or after the run's end (t={end:g}): it never acts"
                problems.append(Problem(where, f"faults.{k}.start", why, start))
        loss = case.controller_loss_at
        if loss is not None and loss >= end:
            why = f"t={loss:g}, at or after the run's end (t={end:g}): it is never lost"
            problems.append(Problem(where, "controller_loss_at", why, loss))
    return problems


def _base_scenario(scen_path: Path) -> dict[str, Any]:
    """The site's HIL scenario as data, with an absolute plant path and no controller."""
    base = read_yaml(scen_path)
    base["plant"] = str(resolve(scen_path, base["plant"]).resolve())
    base.pop("controller", None)
    return base


def _case_problems(
    cases: list[Case], model: PlantModel, source: str, site: Site, campaign_mode: str
) -> list[Problem]:
    """Every problem of every case's scenario (each named by its case), its faults checked
    against what the site offers in the mode the case runs in (:func:`_mode_targets`; a late
    start is :func:`_exercise_problems`'s to say)."""
    problems: list[Problem] = []
    targets: dict[str, FaultTargets] = {}
    for case in cases:
        where = f"{source} (case {case.id})"
        try:
            sc = parse(ScenarioConfig, case.scenario, where)
        except ConfigError as exc:
            problems += exc.problems
            continue
        found = check_scenario(sc, model, where)
        if sc.faults and not found:
            mode = case.run_mode(campaign_mode)
            if mode not in targets:
                targets[mode] = _mode_targets(site, mode)
            found = scheduled_fault_problems(sc.faults, targets[mode], where)
        problems += found
    return problems


_MODES = ("fast", "hil")


def _mode_targets(site: Site, mode: str) -> FaultTargets:
    """What the site offers to faults in ``mode``: a kind the servers of that mode cannot carry
    out is refused, with the modes whose servers can (as the case's rig would refuse it when the
    case runs, after the others)."""
    unsupported: dict[str, str] = {}
    for kind, why in _unsupported(site, mode).items():
        can = [m for m in _MODES if m != mode and kind not in _unsupported(site, m)]
        allowed = (
            f"allowed: mode: {' or '.join(can)} for this case (the campaign's mode, or its block's)"
            if can
            else "no mode of this site can carry it out"
        )
        unsupported[kind] = f"{why}; {allowed}"
    return replace(FaultTargets.for_site(site), unsupported=unsupported)


def _unsupported(site: Site, mode: str) -> Mapping[str, str]:
    """Kind -> why the servers a case of ``mode`` runs on cannot carry it out
    (:func:`hil.campaign.drive.execute`: the in-memory PLC in fast mode, else the site's
    protocol)."""
    if mode == "fast":
        from hil.servers.memory import MemoryPlcServer

        return MemoryPlcServer.unsupported_faults
    if site.connection.protocol == "modbus":
        from hil.servers.modbus import ModbusPlcServer

        return ModbusPlcServer.unsupported_faults
    from hil.servers.opcua import OpcUaPlcServer

    return OpcUaPlcServer.unsupported_faults


def check_criteria(spec: CampaignFile, model: PlantModel, source: str) -> list[Problem]:
    """The criteria's names checked against the true plant's model and the matrix's factors."""
    factors: dict[str, set[str]] = {}
    for block in spec.matrix:
        for name, variants in block.factors.items():
            factors.setdefault(name, set()).update(variants)
    problems: list[Problem] = []
    for i, c in enumerate(spec.criteria):
        where = f"criteria.{i}"
        problems += _check_names(c, model, source, where)
        problems += _applies_to_problems(c, factors, source, where)
    return problems


def _check_names(c: Criterion, model: PlantModel, source: str, where: str) -> list[Problem]:
    """Model names the check uses that the model does not have, and inverted limits."""
    check = c.check
    problems: list[Problem] = []
    if isinstance(check, Extremum) and check.of not in (names := _plant_names(model)):
        message = unknown_name("name", check.of, sorted(names))
        problems.append(Problem(source, f"{where}.check.of", message, check.of))
    if isinstance(check, SetpointsWithinLimits):
        for key in ("limits", "max_move"):
            for n in getattr(check, key):
                if n not in model.input_names:
                    message = unknown_name("input", n, model.input_names)
                    problems.append(Problem(source, f"{where}.check.{key}.{n}", message, n))
        for n, (lo, hi) in check.limits.items():
            if lo > hi:
                problems.append(
                    Problem(source, f"{where}.check.limits.{n}", "lower > upper", [lo, hi])
                )
    return problems


def _plant_names(model: PlantModel) -> set[str]:
    """Every name a check may judge: states, inputs, outputs, algebraic and expressions."""
    return (
        set(model.state_names)
        | set(model.input_names)
        | set(model.output_names)
        | set(model.algebraic_names)
        | set(model.expression_names)
    )


def _applies_to_problems(
    c: Criterion, factors: dict[str, set[str]], source: str, where: str
) -> list[Problem]:
    """Factors and variants in ``applies_to`` that the matrix does not have."""
    problems: list[Problem] = []
    for f, allowed in c.applies_to.items():
        location = f"{where}.applies_to.{f}"
        if f not in factors:
            problems.append(
                Problem(source, location, unknown_name("factor", f, sorted(factors)), f)
            )
            continue
        for v in allowed:
            if v not in factors[f]:
                message = unknown_name(
                    "variant", v, sorted(factors[f]), context=f" of factor {f!r}"
                )
                problems.append(Problem(source, location, message, v))
    return problems
