"""Checking a fault before it is held: against the site and the mode the rig runs in.

:class:`FaultTargets` is what one site, in one mode, offers to faults: its outputs, inputs
and parameters with their units, the PLC's input limits, its tags, and the kinds its servers
cannot carry out. :func:`fault_problems` lists every reason a fault would not do what it says
there: the target exists (unknown names are listed with what is allowed and a "did you
mean"), a ``comm_bad_status`` names a tag the controller reads and acts on
(:func:`controller_reads`: a bad status on a publication of the twin, or on a diagnostic no
decision depends on, would change nothing; a wildcard must match at least one such tag), the
stated ``unit`` is the one the magnitude or
rate is in (:func:`magnitude_unit`), the magnitude can take effect (a saturation at or above
the input's upper limit, a lag far shorter than a plant step, a drift of a parameter that is
0, a window shorter than a plant step would all silently do nothing; a saturation outside the
input's physical range is a value the plant could never receive; a sensor, ``comm_bad_status``
or ``comm_latency`` window shorter than the controller's sample time could fall between two
reads and never be seen) and the servers of this
mode can carry out the kind (the in-memory PLC of the fast mode cannot delay answers by
wall-clock seconds: ``comm_latency`` is refused there). :func:`parse_fault` turns a raw
request into a :class:`~hil.faultspec.FaultSpec` with plain-sentence errors. A refused fault
raises :class:`FaultRefusedError`; nothing is held. Pure: no I/O.
"""

from __future__ import annotations

import fnmatch
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any

from pydantic import ValidationError

from controller.binding import Binding
from controller.errors import ConfigError, Problem, ScenarioError, suggest, unknown_name
from controller.runtime.site import CLOSED_LOOP_CONTRACT
from controller.tags import Direction
from hil.faultspec import (
    FAULT_KINDS,
    FAULT_RATE_KINDS,
    FAULT_READ_KINDS,
    FAULT_SERVER_WIDE_KINDS,
    FaultSpec,
    expand_tags,
    is_pattern,
)

if TYPE_CHECKING:
    from controller.runtime.site import Site
    from controller.tags import TagMap
    from hil.servers.base import PlcServer
    from plant_models import PlantModel

__all__ = [
    "FaultRefusedError",
    "FaultTargets",
    "check_clear",
    "check_fault",
    "check_scheduled",
    "controller_reads",
    "fault_problems",
    "late_fault_problems",
    "magnitude_unit",
    "parse_fault",
    "scheduled_fault_problems",
]


class FaultRefusedError(ScenarioError):
    """A fault that would not do what it says, refused before anything is held.

    ``problems`` are plain sentences, one per reason; ``allowed`` lists the names the field at
    fault may take (the kinds for an unknown kind, the targets for an unknown target; empty
    otherwise); ``suggestion`` is the allowed name closest to a mistyped one, or None.
    """

    def __init__(
        self,
        problems: Sequence[str],
        *,
        allowed: Sequence[str] = (),
        suggestion: str | None = None,
    ) -> None:
        self.problems = tuple(problems)
        self.allowed = tuple(allowed)
        self.suggestion = suggestion
        super().__init__("fault refused: " + "; ".join(self.problems))

    def answer(self) -> dict[str, Any]:
        """The refusal as the admin channel and ``fault --json`` give it."""
        return {
            "ok": False,
            "error": str(self),
            "problems": list(self.problems),
            "allowed": list(self.allowed),
            "did_you_mean": self.suggestion,
        }


_NOUN = {"sensor": "measured output", "actuator": "input", "parameter": "parameter"}


@dataclass(frozen=True)
class FaultTargets:
    """What one site, in one mode, offers to faults (checked by :func:`fault_problems`).

    Units are the model's. ``input_limits``: the PLC's range of each input's setpoint tag
    (the model's bounds where the tag has none). ``input_ranges``: each input's physical range
    (the model's ``Variable.lower``/``upper``; empty: not known). ``parameter_units``: every
    parameter's unit; ``parameters``: the true plant's values. ``plant_step``: the rig's
    integration step [time unit]; ``sample_time``: the controller's [time unit]. ``parameters``
    and ``plant_step`` are None where they are not known (the CLI, from the site file alone:
    :meth:`for_site`), which leaves the checks that need them to the serving rig; so is
    ``sample_time`` where no controller is known. ``unsupported``: kind -> why the servers of
    this mode cannot carry it out. ``reads``: the tags the controller reads and acts on
    (:func:`controller_reads`), the only ones a ``comm_bad_status`` may target (None: not
    known, every tag may be targeted); ``directions``: each tag's.
    """

    time_unit: str
    outputs: Mapping[str, str]
    inputs: Mapping[str, str]
    input_limits: Mapping[str, tuple[float, float]]
    parameter_units: Mapping[str, str]
    tags: tuple[str, ...]
    parameters: Mapping[str, float] | None = None
    plant_step: float | None = None
    unsupported: Mapping[str, str] = field(default_factory=dict)
    input_ranges: Mapping[str, tuple[float, float]] = field(default_factory=dict)
    sample_time: float | None = None
    reads: tuple[str, ...] | None = None
    directions: Mapping[str, Direction] = field(default_factory=dict)  # tag -> its direction

    @classmethod
    def of(
        cls,
        model: PlantModel,
        tags: TagMap,
        *,
        plant_step: float | None = None,
        sample_time: float | None = None,
        servers: Iterable[PlcServer] = (),
    ) -> FaultTargets:
        """The targets of ``model`` (with the true plant's parameter values) behind ``tags``;
        ``sample_time``: the controller's [time unit]; ``servers`` say which kinds they cannot
        carry out (``unsupported_faults``)."""
        limits: dict[str, tuple[float, float]] = {}
        ranges: dict[str, tuple[float, float]] = {}
        binding = Binding.of(tags, model)
        for name in model.input_names:
            sp = binding.setpoint_tag(name)
            tag_limits = tags.tags[sp].limits if sp is not None else None
            var = model.variable(name)
            lo, hi = tag_limits if tag_limits is not None else (var.lower, var.upper)
            limits[name] = (float(lo), float(hi))
            ranges[name] = (float(var.lower), float(var.upper))
        unsupported: dict[str, str] = {}
        for server in servers:
            unsupported.update(server.unsupported_faults)
        return cls(
            time_unit=model.time_unit,
            outputs={n: model.variable(n).unit for n in model.output_names},
            inputs={n: model.variable(n).unit for n in model.input_names},
            input_limits=limits,
            parameter_units=dict(model.parameter_units),
            tags=tuple(tags.tags),
            parameters=model.parameters,
            plant_step=plant_step,
            unsupported=unsupported,
            input_ranges=ranges,
            sample_time=sample_time,
            reads=controller_reads(tags, model),
            directions={n: t.direction for n, t in tags.tags.items()},
        )

    @classmethod
    def for_site(cls, site: Site) -> FaultTargets:
        """What the site file alone says (names, units, the PLC's limits, the controller's
        sample time): the true plant's parameter values, the rig's step and its servers are the
        serving rig's to check."""
        targets = cls.of(site.model, site.tags, sample_time=site.controller.sample_time)
        return replace(targets, parameters=None)

    def allowed(self, kind: str) -> tuple[str, ...]:
        """The targets a fault of ``kind`` may name (comm_bad_status: also patterns)."""
        if kind in FAULT_SERVER_WIDE_KINDS:
            return ("*",)
        if kind == "comm_bad_status":
            return self.tags if self.reads is None else self.reads
        names = {"sensor": self.outputs, "actuator": self.inputs, "parameter": self.parameter_units}
        return tuple(names.get(kind.split("_")[0], ()))

    def every_name(self) -> tuple[str, ...]:
        """Every name any fault may target, ``"*"`` included."""
        names = [*self.outputs, *self.inputs, *self.parameter_units, *self.tags, "*"]
        return tuple(dict.fromkeys(names))


def controller_reads(tags: TagMap, model: PlantModel) -> tuple[str, ...]:
    """The tags the controller reads and acts on, in map order: the measurements of the
    model's outputs, the working setpoints and the setpoints it writes and reads back, and the
    PLC contract's flags and words it reads (``mpc_active``, ``measurement_validity``, ...).
    Its own publications it never reads; other readable tags (diagnostics such as
    ``write_refusal_count``) it fetches, but no decision depends on them."""
    binding = Binding.of(tags, model)
    acted = {c.tag for c in CLOSED_LOOP_CONTRACT if not c.twin_writes}
    acted.update(binding.output_tags().values(), binding.working_setpoint_tags().values())
    acted.update(binding.setpoint_tags().values())
    return tuple(n for n, t in tags.tags.items() if t.readable and n in acted)


def _unread_why(tag: str, targets: FaultTargets) -> str:
    direction = targets.directions.get(tag)
    if direction is Direction.PUBLISH:
        return "the twin publishes it (direction publish) and never reads it back"
    if direction is Direction.WRITE:
        return "the twin only writes it (direction write)"
    return "the runtime fetches it, but no decision depends on it"


def magnitude_unit(spec: FaultSpec, targets: FaultTargets) -> str | None:
    """The unit of ``spec``'s magnitude or rate on its target (None: it has neither, or the
    target is unknown): the output's unit for a bias, noise or a stuck sensor's flicker, output
    unit per time unit for a sensor drift, the input's unit for a saturation, the time unit for
    a lag, s (wall clock) for a latency, 1 per time unit (relative) for a parameter drift."""
    kind, target, per = spec.kind, spec.target, targets.time_unit
    if kind in ("sensor_bias", "sensor_noise", "sensor_stuck"):
        return targets.outputs.get(target)
    if kind == "sensor_drift":
        unit = targets.outputs.get(target)
        return None if unit is None else f"{unit}/{per}"
    if kind == "actuator_saturation":
        return targets.inputs.get(target)
    if kind == "actuator_lag":
        return per
    if kind == "comm_latency":
        return "s"
    if kind == "parameter_drift":
        return f"1/{per}"
    return None


def _target_problem(spec: FaultSpec, targets: FaultTargets) -> str | None:
    kind, target = spec.kind, spec.target
    if kind == "comm_bad_status":
        return _tag_problem(spec, targets)
    allowed = targets.allowed(kind)
    if target in allowed:
        return None
    context = f" for a {kind} fault"
    return unknown_name(_NOUN.get(kind.split("_")[0], "target"), target, allowed, context=context)


def _tag_problem(spec: FaultSpec, targets: FaultTargets) -> str | None:
    """A ``comm_bad_status`` target that is no tag, or no tag the controller reads (a pattern:
    matches none)."""
    kind, target = spec.kind, spec.target
    context = f" for a {kind} fault"
    reads = targets.allowed(kind)
    allowed = f"allowed: the tags the controller reads: {list(reads)}"
    if is_pattern(target):
        matched = expand_tags(target, targets.tags)
        if not matched:
            return f"the pattern {target!r}{context} matches no tag; {allowed}"
        if set(matched) & set(reads):
            return None
        return (
            f"the pattern {target!r}{context} matches no tag the controller reads (it "
            f"matches {list(matched)}): it would do nothing; {allowed}"
        )
    if target not in targets.tags:
        return unknown_name("tag", target, reads, context=context)
    if target in reads:
        return None
    return (
        f"a {kind} fault on {target!r} would do nothing: the controller never reads "
        f"{target!r} for anything it does: {_unread_why(target, targets)}; {allowed}"
    )


def _window_problems(spec: FaultSpec, targets: FaultTargets) -> list[str]:
    """A window too short to act on the plant, or to be seen by the controller."""
    step, ts, per, duration = (
        targets.plant_step,
        targets.sample_time,
        targets.time_unit,
        spec.duration,
    )
    if duration is None:
        return []
    if step is not None and duration < step:
        return [
            f"a duration of {duration:g} {per} is shorter than one plant step "
            f"({step:g} {per}): the fault could begin and end between two steps and never act"
        ]
    if ts is not None and spec.kind in FAULT_READ_KINDS and duration < ts * (1.0 - 1e-9):
        return [
            f"a {spec.kind} fault on {spec.target} lasting {duration:g} {per} is shorter than "
            f"the controller's sample time ({ts:g} {per}): it could begin and end between two "
            f"controller reads and never be seen; allowed: a duration of at least {ts:g} {per}"
        ]
    return []


def _saturation_problems(spec: FaultSpec, targets: FaultTargets) -> list[str]:
    """A cap the PLC never reaches, or a value the plant could never physically receive."""
    target, cap = spec.target, spec.magnitude
    plc_hi, unit = targets.input_limits[target][1], targets.inputs[target]
    lo, hi = targets.input_ranges.get(target, (-math.inf, math.inf))
    problems: list[str] = []
    if cap >= plc_hi:
        problems.append(
            f"a saturation at {cap:g} {unit} can never cap {target}: the PLC "
            f"never applies more than {plc_hi:g} {unit} (its upper limit)"
        )
    elif cap > hi or cap < lo:
        problems.append(
            f"a saturation at {cap:g} {unit} is outside {target}'s physical range "
            f"[{lo:g}, {hi:g}] {unit}: the plant could never receive it; allowed: a magnitude "
            f"in [{lo:g}, {min(hi, plc_hi):g}) {unit}"
        )
    return problems


def _effect_problems(spec: FaultSpec, targets: FaultTargets) -> list[str]:
    """Magnitudes and windows with which the fault could never act."""
    problems = _window_problems(spec, targets)
    step, per, kind, target = targets.plant_step, targets.time_unit, spec.kind, spec.target
    if kind == "actuator_saturation":
        problems += _saturation_problems(spec, targets)
    if kind == "actuator_lag" and step is not None and spec.magnitude < step / math.log(100):
        problems.append(
            f"a lag time constant of {spec.magnitude:g} {per} leaves less than 1 % of a change "
            f"after one plant step of {step:g} {per}: it would not be seen; use at least "
            f"{step / math.log(100):.3g} {per}"
        )
    if (
        kind == "parameter_drift"
        and targets.parameters is not None
        and targets.parameters[target] == 0.0
    ):
        problems.append(f"{target} is 0 in the true plant: a relative drift cannot change it")
    return problems


def fault_problems(spec: FaultSpec, targets: FaultTargets) -> list[str]:
    """Every reason ``spec`` would not do what it says on this site and in this mode, as plain
    sentences (empty: the fault is valid)."""
    problems: list[str] = []
    why = targets.unsupported.get(spec.kind)
    if why is not None:
        problems.append(f"a {spec.kind} fault cannot take effect here: {why}")
    target_problem = _target_problem(spec, targets)
    if target_problem is not None:
        return [*problems, target_problem]  # units and magnitudes depend on the target
    unit = magnitude_unit(spec, targets)
    if spec.unit and unit is not None and spec.unit != unit:
        what = "rate" if spec.kind in FAULT_RATE_KINDS else "magnitude"
        problems.append(
            f"the {what} of a {spec.kind} fault on {spec.target} is in {unit!r}, not {spec.unit!r}"
        )
    return problems + _effect_problems(spec, targets)


def check_fault(spec: FaultSpec, targets: FaultTargets) -> FaultSpec:
    """``spec`` if it is valid here; else :class:`FaultRefusedError` with every reason, the
    allowed targets and a "did you mean" when the target is unknown."""
    problems = fault_problems(spec, targets)
    if not problems:
        return spec
    if _target_problem(spec, targets) is None:
        raise FaultRefusedError(problems)
    allowed = targets.allowed(spec.kind)
    raise FaultRefusedError(problems, allowed=allowed, suggestion=suggest(spec.target, allowed))


def scheduled_fault_problems(
    faults: Sequence[FaultSpec],
    targets: FaultTargets,
    source: str,
    run_end: float | None = None,
) -> list[Problem]:
    """:func:`fault_problems` for a scenario's ``faults:``, as config problems; a fault that
    starts at or after ``run_end`` [time unit] would never act either
    (:func:`late_fault_problems`)."""
    out: list[Problem] = []
    for i, spec in enumerate(faults):
        sentences = fault_problems(spec, targets)
        late = _late(spec, run_end, targets.time_unit)
        sentences += [late] if late is not None else []
        out += [Problem(source, f"faults.{i}", text, spec.kind) for text in sentences]
    return out


def _late(spec: FaultSpec, run_end: float | None, unit: str) -> str | None:
    if run_end is None or spec.start < run_end:
        return None
    return (
        f"a {spec.kind} fault on {spec.target}: it starts at {spec.start:g} {unit}, when the run "
        f"({run_end:g} {unit}) is over: it would never act; allowed: a start before "
        f"{run_end:g} {unit}"
    )


def late_fault_problems(
    faults: Sequence[FaultSpec], run_end: float, time_unit: str, source: str
) -> list[Problem]:
    """A scenario's faults that start at or after ``run_end`` [``time_unit``], the end of its
    run: they would never act (what a scenario file alone says, without its site)."""
    out: list[Problem] = []
    for i, spec in enumerate(faults):
        late = _late(spec, run_end, time_unit)
        if late is not None:
            out.append(Problem(source, f"faults.{i}.start", late, spec.start))
    return out


_FIELDS: tuple[str, ...] = tuple(FaultSpec.model_fields)


def _sentence(err: Mapping[str, Any]) -> str:
    """One pydantic error on a fault, as a plain sentence."""
    loc = ".".join(str(part) for part in err["loc"])
    value, kind, msg = err.get("input"), err["type"], str(err["msg"])
    if kind == "literal_error" and loc == "kind":
        return unknown_name("fault kind", value, FAULT_KINDS)
    if kind == "extra_forbidden":
        return unknown_name("fault field", loc, _FIELDS)
    if kind == "missing":
        return f"the fault needs a {loc!r}"
    if kind == "value_error":
        return msg.removeprefix("Value error, ")
    return f"{loc} = {value!r} is not allowed: {msg[:1].lower()}{msg[1:]}"


def parse_fault(data: object) -> FaultSpec:
    """A :class:`~hil.faultspec.FaultSpec` from a request's raw fields, or
    :class:`FaultRefusedError` with one plain sentence per problem (no pydantic dump)."""
    if not isinstance(data, Mapping):
        raise FaultRefusedError([f"a fault is a mapping of {list(_FIELDS)}, not {data!r}"])
    try:
        return FaultSpec.model_validate(data)
    except ValidationError as exc:
        errors = exc.errors()
        kind = data.get("kind")
        if any(e["type"] == "literal_error" and e["loc"] == ("kind",) for e in errors):
            raise FaultRefusedError(
                [_sentence(e) for e in errors],
                allowed=FAULT_KINDS,
                suggestion=suggest(str(kind), FAULT_KINDS),
            ) from exc
        raise FaultRefusedError([_sentence(e) for e in errors]) from exc


def check_clear(kind: str | None, target: str | None, targets: FaultTargets) -> None:
    """Refuse (:class:`FaultRefusedError`) a clear request naming an unknown kind or target:
    a typo would otherwise clear nothing and look fine.

    A ``target`` with wildcard characters is a pattern matched against the held faults'
    targets (:meth:`~hil.faults.FaultSet.clear`: ``"T*"`` clears the faults on ``Tbot``;
    ``"*"`` matches every target); one that matches no name a fault may target on this site
    is refused. Whether it matches a fault held now is the serving rig's to say (a clear that
    removes nothing answers ``ok: false``)."""
    if kind is not None and kind not in FAULT_KINDS:
        raise FaultRefusedError(
            [unknown_name("fault kind", kind, FAULT_KINDS)],
            allowed=FAULT_KINDS,
            suggestion=suggest(kind, FAULT_KINDS),
        )
    names = targets.every_name()
    if target is None or target in names:
        return
    if not is_pattern(target):
        raise FaultRefusedError(
            [unknown_name("fault target", target, names)],
            allowed=names,
            suggestion=suggest(target, names),
        )
    if not any(fnmatch.fnmatchcase(name, target) for name in names):
        raise FaultRefusedError(
            [
                f"the clear pattern {target!r} matches no name a fault may target on this site; "
                f"targets: {list(names)}"
            ],
            allowed=names,
        )


def check_scheduled(
    faults: Sequence[FaultSpec],
    targets: FaultTargets,
    source: str,
    run_end: float | None = None,
) -> None:
    """Raise one :class:`~controller.errors.ConfigError` listing every problem of a
    scenario's ``faults:`` (:func:`scheduled_fault_problems`); nothing if they are valid."""
    problems = scheduled_fault_problems(faults, targets, source, run_end)
    if problems:
        raise ConfigError(problems)
