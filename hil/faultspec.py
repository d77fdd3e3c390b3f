"""The fault schema of the HIL simulator: the kinds of fault and :class:`FaultSpec`.

A :class:`FaultSpec` is one fault, scheduled in a scenario's ``faults:`` or injected into a
serving rig. Its own validator refuses a magnitude, rate, unit or duration on a kind that
does not use it (it would silently do nothing); :func:`check_faults` checks its target
against the plant model. What a fault does is :mod:`hil.faults`; the checks against a site
and the mode it runs in are :mod:`hil.faultcheck`.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Iterable
from typing import Annotated, Literal, get_args

from pydantic import Field, model_validator

from controller.configfile import Finite, PositiveFinite, Strict
from controller.errors import Problem, unknown_name
from plant_models import PlantModel

__all__ = [
    "FAULT_KINDS",
    "FAULT_MAGNITUDE_KINDS",
    "FAULT_OPTIONAL_MAGNITUDE_KINDS",
    "FAULT_RATE_KINDS",
    "FAULT_READ_KINDS",
    "FAULT_SERVER_WIDE_KINDS",
    "FaultKind",
    "FaultSpec",
    "check_faults",
    "expand_tags",
    "is_pattern",
]


FaultKind = Literal[
    # sensors (target: a measured output of the model)
    "sensor_bias",  # magnitude: added offset
    "sensor_drift",  # rate: offset growing per time unit from start
    "sensor_noise",  # magnitude: extra Gaussian noise std
    "sensor_stuck",  # the value freezes at its value at start; magnitude (optional): flicker
    "sensor_dropout",  # the value goes bad quality
    # actuators (target: a model input)
    "actuator_stuck",  # the input freezes at its value at start
    "actuator_saturation",  # magnitude: the input cannot exceed this value
    "actuator_lag",  # magnitude: first-order time constant [model time unit]
    # communications: server-wide kinds target "*" (the whole server); comm_bad_status a
    # tag name or a wildcard pattern ("*" every tag, "product_temp_*", ...)
    "comm_latency",  # magnitude: seconds added to every answer
    "comm_drop",  # every client connection is dropped at start
    "comm_restart",  # the servers stop at start and come back after duration
    "comm_bad_status",  # reads of the tag answer Modbus exception 04 / OPC UA Bad
    # equipment degradation (target: a model parameter)
    "parameter_drift",  # rate: relative change per time unit from start (e.g. -0.01 = -1 %/h)
]


#: every fault kind, in the order :data:`FaultKind` declares them
FAULT_KINDS: tuple[str, ...] = get_args(FaultKind)

#: the kinds whose ``magnitude`` means something and is needed (the kinds in neither this
#: nor :data:`FAULT_OPTIONAL_MAGNITUDE_KINDS` refuse one)
FAULT_MAGNITUDE_KINDS = frozenset(
    {"sensor_bias", "sensor_noise", "actuator_saturation", "actuator_lag", "comm_latency"}
)

#: the kinds whose ``magnitude`` may be left out (0): a stuck sensor's flicker
FAULT_OPTIONAL_MAGNITUDE_KINDS = frozenset({"sensor_stuck"})


#: the kinds whose ``rate`` means something (every other kind refuses one)
FAULT_RATE_KINDS = frozenset({"sensor_drift", "parameter_drift"})


#: the kinds that act on a whole server at once: their target is "*"
FAULT_SERVER_WIDE_KINDS = frozenset({"comm_latency", "comm_drop", "comm_restart"})


#: the kinds that change what the controller reads (a value, its quality, or how late the
#: answer comes): the controller sees them only at its reads, once per sample time, so a
#: shorter window may never be seen
FAULT_READ_KINDS = frozenset(
    {k for k in FAULT_KINDS if k.startswith("sensor_")} | {"comm_bad_status", "comm_latency"}
)


class FaultSpec(Strict):
    """One scheduled fault of the HIL simulator (times in the model's time unit).

    ``unit`` (optional) states the unit ``magnitude`` or ``rate`` is written in; the HIL rig
    refuses the fault when it is not the unit the kind uses on its target (see
    :func:`hil.faultcheck.magnitude_unit`). A magnitude, rate or unit on a kind that does not use
    it, and a duration on ``comm_drop`` (it happens once, at its start), are refused: they
    would silently do nothing.
    """

    kind: FaultKind
    target: str
    start: Annotated[float, Field(ge=0, allow_inf_nan=False)]
    duration: PositiveFinite | None = None  # None: until the end of the run
    magnitude: Finite = 0.0
    rate: Finite = 0.0
    unit: str = ""
    description: str = ""

    @model_validator(mode="after")
    def _needs(self) -> FaultSpec:
        kind = self.kind
        if kind in FAULT_MAGNITUDE_KINDS and self.magnitude == 0.0:
            raise ValueError(f"a {kind} fault needs a non-zero 'magnitude'")
        takes_magnitude = FAULT_MAGNITUDE_KINDS | FAULT_OPTIONAL_MAGNITUDE_KINDS
        if kind not in takes_magnitude and self.magnitude != 0.0:
            raise ValueError(f"a {kind} fault takes no 'magnitude' (got {self.magnitude:g})")
        if kind in FAULT_RATE_KINDS and self.rate == 0.0:
            raise ValueError(f"a {kind} fault needs a non-zero 'rate'")
        if kind not in FAULT_RATE_KINDS and self.rate != 0.0:
            raise ValueError(f"a {kind} fault takes no 'rate' (got {self.rate:g})")
        if self.unit and kind not in takes_magnitude | FAULT_RATE_KINDS:
            raise ValueError(f"a {kind} fault has no magnitude or rate to give a 'unit' to")
        if self.unit and kind in FAULT_OPTIONAL_MAGNITUDE_KINDS and self.magnitude == 0.0:
            raise ValueError(
                f"a {kind} fault without a 'magnitude' has nothing to give a 'unit' "
                f"({self.unit!r}) to"
            )
        if kind in {"sensor_noise", "actuator_lag", "comm_latency"} and self.magnitude < 0:
            raise ValueError(f"a {kind} fault needs a positive 'magnitude'")
        if kind == "comm_restart" and self.duration is None:
            raise ValueError(
                "a comm_restart fault needs a 'duration' (the time the servers are down)"
            )
        if kind == "comm_drop" and self.duration is not None:
            raise ValueError("a comm_drop fault happens once, at its start: it takes no 'duration'")
        if kind in FAULT_SERVER_WIDE_KINDS and self.target != "*":
            raise ValueError(
                f"a {kind} fault acts on the whole server: its target must be '*' "
                f"(got {self.target!r})"
            )
        if not self.target:
            raise ValueError("a fault needs a 'target'")
        return self

    def active(self, t: float) -> bool:
        return self.start <= t and (self.duration is None or t < self.start + self.duration)


def check_faults(faults: tuple[FaultSpec, ...], model: PlantModel, source: str) -> list[Problem]:
    """Fault targets must name a model output, input or parameter (comm faults: any tag)."""
    problems = []
    allowed_by_prefix = {
        "sensor": ("measured output", model.output_names),
        "actuator": ("input", model.input_names),
        "parameter": ("parameter", model.parameter_names),
    }
    for i, f in enumerate(faults):
        what, allowed = allowed_by_prefix.get(f.kind.split("_")[0], ("", ()))
        if what and f.target not in allowed:
            message = unknown_name(what, f.target, allowed, context=f" for a {f.kind} fault")
            problems.append(Problem(source, f"faults.{i}.target", message, f.target))
    return problems


def is_pattern(target: str) -> bool:
    """Whether a ``comm_bad_status`` target is a wildcard pattern (``*``, ``?`` or ``[...]``)."""
    return any(c in target for c in "*?[")


def expand_tags(target: str, tags: Iterable[str]) -> tuple[str, ...]:
    """The real tags ``target`` names: itself if it is one, every match of a pattern."""
    names = tuple(tags)
    if not is_pattern(target):
        return (target,) if target in names else ()
    return tuple(t for t in names if fnmatch.fnmatchcase(t, target))
