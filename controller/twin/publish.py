"""Soft sensors as tags: what the twin publishes for the PLC, the HMI and the historian.

A tag of direction ``publish`` names in ``publishes`` what the twin writes into it each cycle
(see :mod:`controller.tags`). The names allowed, for a model and its estimated parameters:

* a model state (``Lck``, ``X``, ``C_b``): the estimate, in the state's unit;
* an estimated parameter (``KC``, ``Kw``): the estimate, in the parameter's unit;
* ``<state or estimated parameter>.std``: its 1-sigma standard deviation (same unit);
* a model expression, outputs included (``percent_dried``, ``Kv``, ``titer``, ``seed_mean_size``):
  ``model.evaluate`` at the estimated states, algebraic states and parameters and the inputs
  in effect;
* a twin-intelligence value handed in as ``extra`` each cycle: ``alarm.active`` (count of
  active drift alarms), ``alarm.word`` (bitmask), ``maintenance.<estimated parameter>.``
  ``time_to_threshold`` / ``low`` / ``high`` (hours to the maintenance threshold and its 90 %
  interval), ``forecast.<name>``.

:func:`check_publications` checks a tag map's publications against a model (one
:class:`~controller.errors.Problem` per bad tag, naming ``tags.<tag>.publishes``, the value and
the names allowed; also a publication sharing a Modbus register or an OPC UA node with another
tag, above all one that carries a model input). :class:`Publisher` computes the values, in
engineering units, ready for ``port.write``.

Failure behaviour: a value is never written unless it is a finite number the tag can hold.

* NaN, or a value the estimate / ``extra`` does not have this cycle, or every expression when
  the model cannot be evaluated: *omitted* (the tag keeps its last value), with the reason;
* every value of an estimate that is not ``ok`` (the estimator failed: "must not be acted
  on"): *omitted*, with ``estimate.reason``; the ``extra`` values, which do not come from
  that estimate, still go out, except those the caller withholds (with its reason);
* outside the tag's ``limits``, or outside what its Modbus type / OPC UA type can hold (a
  value the port would refuse, and with it the whole write): *clipped* to the nearest bound,
  reported with the value computed. ``+inf`` / ``-inf`` (e.g. a time to threshold when
  nothing drifts) are clipped to the tag's limit on that side, omitted if it has none;
* a bool tag (coil, OPC UA Boolean) publishes ``value != 0``; an OPC UA integer node the
  rounded value.

:class:`Publication` carries the values, the clipped and the omitted ones so that the caller
can log them. Pure computing: no I/O, no clocks.
"""

from __future__ import annotations

import math
import re
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from typing import TYPE_CHECKING

import numpy as np

from controller.codecs import FLOAT32_MAX, INT_RANGE, DataType
from controller.core.prediction import BufferedFunction
from controller.errors import ConfigError, Problem
from controller.tags import OPCUA_INT_RANGE, ModbusSpec, OpcUaSpec, Tag, TagMap
from plant_models import ModelError, PlantModel, Role

if TYPE_CHECKING:
    from controller.core.estimate import Estimate

__all__ = [
    "EXTRA_PATTERNS",
    "Publication",
    "Publisher",
    "Source",
    "check_publications",
    "source_of",
]


class Source(StrEnum):
    """Where a published value comes from."""

    STATE = "state"
    PARAMETER = "parameter"
    STD = "std"
    EXPRESSION = "expression"
    EXTRA = "extra"


#: The twin-intelligence names handed in as ``extra`` (``<param>``: an estimated parameter).
EXTRA_PATTERNS = (
    "alarm.active",
    "alarm.word",
    "maintenance.<param>.time_to_threshold",
    "maintenance.<param>.low",
    "maintenance.<param>.high",
    "forecast.<name>",
)
_MAINTENANCE = re.compile(r"maintenance\.([^.]+)\.(time_to_threshold|low|high)")
_FORECAST = re.compile(r"forecast\.[A-Za-z0-9_.]+")


# ---------------------------------------------------------------------- names
def source_of(
    name: str,
    model: PlantModel,
    estimated: Collection[str],
    extra_names: Collection[str] | None = None,
) -> Source | None:
    """What ``name`` publishes for this model, or None if it is not allowed.

    Twin-intelligence names: those of ``extra_names`` when given (the values the site really
    computes), else any name of :data:`EXTRA_PATTERNS`.
    """
    if name.endswith(".std"):
        base = name[: -len(".std")]
        return Source.STD if base in model.state_names or base in estimated else None
    if name in model.state_names:
        return Source.STATE
    if name in estimated:
        return Source.PARAMETER
    if name in model.expression_names:
        return Source.EXPRESSION
    if extra_names is not None:
        return Source.EXTRA if name in extra_names else None
    maintenance = _MAINTENANCE.fullmatch(name)
    pattern = (
        name in ("alarm.active", "alarm.word")
        or (maintenance is not None and maintenance.group(1) in estimated)
        or _FORECAST.fullmatch(name) is not None
    )
    return Source.EXTRA if pattern else None


def _allowed(
    model: PlantModel, estimated: Collection[str], extra_names: Collection[str] | None
) -> str:
    extra = (
        f"twin-intelligence values {sorted(extra_names)}"
        if extra_names is not None
        else f"twin-intelligence values {list(EXTRA_PATTERNS)} (<param>: an estimated parameter)"
    )
    return (
        f"allowed: states {list(model.state_names)}, estimated parameters {list(estimated)}, "
        f"expressions {list(model.expression_names)}, '<state or estimated parameter>.std', "
        f"{extra}"
    )


def check_publications(
    tm: TagMap,
    model: PlantModel,
    estimated: Sequence[str],
    extra_names: Collection[str] | None = None,
    source: str = "",
) -> list[Problem]:
    """Every problem with the publications of ``tm`` for ``model`` (empty when all is well).

    ``estimated``: the controller's estimated parameters (``estimator.parameters``);
    ``extra_names``: the twin-intelligence values computed at this site, if known (else any
    name of :data:`EXTRA_PATTERNS` passes); ``source``: the tag map's file, for the problems.
    """
    problems = []
    for name, tag in tm.tags.items():
        if tag.publishes is None:
            continue
        if source_of(tag.publishes, model, estimated, extra_names) is None:
            problems.append(
                Problem(
                    source,
                    f"tags.{name}.publishes",
                    f"unknown publication for model {model.name!r}; "
                    + _allowed(model, estimated, extra_names),
                    tag.publishes,
                )
            )
        problems += _clashes(tm, name, tag, model, source)
    return problems


def _clashes(tm: TagMap, name: str, tag: Tag, model: PlantModel, source: str) -> list[Problem]:
    """A publication must not write into another tag's register or node."""
    problems = []
    for other, o in tm.tags.items():
        if other == name:
            continue
        ours, theirs = tag.modbus, o.modbus
        modbus_clash = ours is not None and theirs is not None and _overlap(ours, theirs)
        node_clash = tag.opcua is not None and _same_node(tag.opcua, o.opcua)
        if not (modbus_clash or node_clash):  # the usual case: nothing to word (every case
            continue  # of a campaign checks its site's publications)
        what = (
            f"the model input {o.binds!r}: a publication must never write a control input"
            if o.binds in model.input_names
            else "it: a publication must have a register and a node of its own"
        )
        if modbus_clash and tag.modbus is not None:
            problems.append(
                Problem(
                    source,
                    f"tags.{name}.modbus.address",
                    f"publishes {tag.publishes!r} into a register of tag {other!r}, "
                    f"which carries {what}",
                    tag.modbus.address,
                )
            )
        if node_clash and tag.opcua is not None:
            problems.append(
                Problem(
                    source,
                    f"tags.{name}.opcua.{'node_id' if tag.opcua.node_id else 'browse_path'}",
                    f"publishes {tag.publishes!r} into the node of tag {other!r}, "
                    f"which carries {what}",
                    tag.opcua.node_id or tag.opcua.browse_path,
                )
            )
    return problems


def _overlap(a: ModbusSpec, b: ModbusSpec) -> bool:
    if (a.unit_id, a.table) != (b.unit_id, b.table):
        return False
    return (
        a.protocol_address < b.protocol_address + b.count
        and b.protocol_address < a.protocol_address + a.count
    )


def _same_node(a: OpcUaSpec, b: OpcUaSpec | None) -> bool:
    if b is None:
        return False
    if a.node_id is not None:
        return a.node_id == b.node_id
    return a.browse_path is not None and a.browse_path == b.browse_path


# ---------------------------------------------------------------------- values
@dataclass(frozen=True)
class Publication:
    """One cycle's publications: what to write, what was clipped, what was left out.

    ``values``: tag -> engineering value, every one finite and within what the tag holds;
    ``clipped``: tag -> (computed, written); ``omitted``: tag -> why nothing is written.
    """

    values: dict[str, float] = field(default_factory=dict)
    clipped: dict[str, tuple[float, float]] = field(default_factory=dict)
    omitted: dict[str, str] = field(default_factory=dict)

    def problems(self) -> list[str]:
        """One line per clipped or omitted publication, for the log."""
        out = [f"{t}: computed {raw!r}, clipped to {v!r}" for t, (raw, v) in self.clipped.items()]
        return out + [f"{t}: not published ({why})" for t, why in self.omitted.items()]


@dataclass(frozen=True)
class _Target:
    """One publishing tag: what it carries and the range of values it can be written."""

    tag: str
    name: str
    source: Source
    key: str  # the state / parameter / expression / extra name (without ".std")
    lower: float  # what the tag can be written: its limits, its Modbus and OPC UA types
    upper: float
    limits: tuple[float, float]  # the tag's own limits (infinite where it has none)
    boolean: bool
    integer: bool


class Publisher:
    """Computes the publishing tags' values from an estimate, the inputs and ``extra``.

    ``tags``, ``model``, ``estimated`` (the controller's estimated parameters) and
    ``extra_names`` (the twin-intelligence values computed at the site; default: any name of
    :data:`EXTRA_PATTERNS`) are checked with :func:`check_publications`; ConfigError if a
    publication is not valid for them.
    """

    def __init__(
        self,
        tags: TagMap,
        model: PlantModel,
        estimated: Sequence[str],
        *,
        extra_names: Collection[str] | None = None,
    ) -> None:
        where = f"tag map {tags.name!r}"
        problems = check_publications(tags, model, estimated, extra_names, where)
        if problems:
            raise ConfigError(problems)
        self.tags, self.model, self.estimated = tags, model, tuple(estimated)
        self._targets = [
            _target(name, tag, model, self.estimated, extra_names)
            for name, tag in tags.tags.items()
            if tag.publishes is not None
        ]
        self._needs_model = any(t.source is Source.EXPRESSION for t in self._targets)
        # the model's evaluation, called through a buffer (no DM round trip every cycle)
        self._evaluate = BufferedFunction(model.function) if self._needs_model else None

    def names(self) -> dict[str, str]:
        """Tag -> what it publishes, in map order."""
        return {t.tag: t.name for t in self._targets}

    def values(
        self,
        estimate: Estimate,
        inputs: Mapping[str, float],
        extra: Mapping[str, float] | None = None,
        *,
        withheld: Mapping[str, str] | None = None,
    ) -> dict[str, float]:
        """Tag -> engineering value to write this cycle (see :meth:`publication`)."""
        return self.publication(estimate, inputs, extra, withheld=withheld).values

    def publication(
        self,
        estimate: Estimate,
        inputs: Mapping[str, float],
        extra: Mapping[str, float] | None = None,
        *,
        withheld: Mapping[str, str] | None = None,
    ) -> Publication:
        """This cycle's values, and the clipped and omitted ones with their reasons.

        ``inputs``: the model inputs in effect (every input of the model, for expressions);
        ``extra``: the twin-intelligence values of this cycle (name -> value);
        ``withheld``: twin-intelligence names not to publish this cycle -> why (omitted).
        An estimate that is not ``ok`` (the estimator failed; its values must not be acted
        on) publishes nothing of its own: every state, parameter, std and expression is
        omitted with ``estimate.reason``; only the ``extra`` values may still go out.
        """
        failed = "" if estimate.ok else (estimate.reason or "the estimator failed this cycle")
        expressions: dict[str, float] = {}
        failure = failed
        if not failed:
            expressions, failure = self._expressions(estimate, inputs)
        out = Publication()
        for t in self._targets:
            if t.source is not Source.EXTRA and failed:
                out.omitted[t.tag] = failed
                continue
            if t.source is Source.EXTRA and withheld and t.key in withheld:
                out.omitted[t.tag] = withheld[t.key]
                continue
            raw, why = _raw(t, estimate, expressions, failure, extra or {})
            if raw is None:
                out.omitted[t.tag] = why
                continue
            value, why = _fit(t, raw)
            if value is None:
                out.omitted[t.tag] = why
                continue
            if not (t.boolean or t.lower <= raw <= t.upper):
                out.clipped[t.tag] = (raw, value)
            out.values[t.tag] = value
        return out

    def _expressions(
        self, estimate: Estimate, inputs: Mapping[str, float]
    ) -> tuple[dict[str, float], str]:
        """The model's expressions at the estimate, or ({}, why they cannot be evaluated)."""
        if self._evaluate is None:
            return {}, ""
        m = self.model
        try:  # PlantModel.evaluate's vectors and its call, on the buffered function
            z = dict(estimate.algebraic) if estimate.algebraic else m.initial_algebraic
            expr = self._evaluate(
                m.vector(Role.STATE, estimate.states),
                m.vector(Role.ALGEBRAIC, z) if m.is_dae else np.zeros(0),
                m.vector(Role.INPUT, inputs),
                m.parameter_vector(estimate.parameters),
            )[3]
        except (ModelError, RuntimeError, ValueError, TypeError) as exc:
            return {}, f"model {m.name!r} could not be evaluated: {exc}"
        return dict(zip(m.expression_names, expr.tolist(), strict=True)), ""


def _target(
    name: str,
    tag: Tag,
    model: PlantModel,
    estimated: Sequence[str],
    extra_names: Collection[str] | None,
) -> _Target:
    publishes = tag.publishes or ""
    source = source_of(publishes, model, estimated, extra_names)
    if source is None:  # unreachable: checked by check_publications
        raise ConfigError([Problem("", f"tags.{name}.publishes", "unknown", publishes)])
    key = publishes[: -len(".std")] if source is Source.STD else publishes
    lower, upper = _holds(tag)
    opcua_int = tag.opcua is not None and tag.opcua.data_type in OPCUA_INT_RANGE
    boolean = (tag.modbus is not None and tag.modbus.type is DataType.BOOL) or (
        tag.opcua is not None and tag.opcua.data_type == "Boolean"
    )
    limits = tag.limits if tag.limits is not None else (-math.inf, math.inf)
    return _Target(name, publishes, source, key, lower, upper, limits, boolean, opcua_int)


def _holds(tag: Tag) -> tuple[float, float]:
    """The range of values the tag can be written: its limits, its Modbus type, its node's."""
    ranges: list[tuple[float, float]] = [tag.limits] if tag.limits is not None else []
    m = tag.modbus
    if m is not None and m.type in INT_RANGE:
        lo, hi = INT_RANGE[m.type]
        a, b = lo * m.scale + m.offset, hi * m.scale + m.offset
        ranges.append((min(a, b), max(a, b)))
    elif m is not None and m.type is DataType.FLOAT32:
        span = FLOAT32_MAX * abs(m.scale)
        ranges.append((m.offset - span, m.offset + span))
    elif m is not None and m.type is DataType.BOOL:
        ranges.append((0.0, 1.0))
    o = tag.opcua
    if o is not None and o.data_type in OPCUA_INT_RANGE:
        lo, hi = OPCUA_INT_RANGE[o.data_type]
        ranges.append((float(lo), float(hi)))
    elif o is not None and o.data_type == "Float":
        ranges.append((-FLOAT32_MAX, FLOAT32_MAX))
    elif o is not None and o.data_type == "Boolean":
        ranges.append((0.0, 1.0))
    return max((r[0] for r in ranges), default=-math.inf), min(
        (r[1] for r in ranges), default=math.inf
    )


def _raw(
    t: _Target,
    estimate: Estimate,
    expressions: Mapping[str, float],
    failure: str,
    extra: Mapping[str, float],
) -> tuple[float | None, str]:
    """The value computed for ``t`` (engineering units), or (None, why there is none)."""
    if t.source is Source.EXPRESSION:
        if failure:
            return None, failure
        where: Mapping[str, float] = expressions
    elif t.source is Source.STATE:
        where = estimate.states
    elif t.source is Source.PARAMETER:
        where = estimate.parameters
    elif t.source is Source.STD:
        where = estimate.state_std if t.key in estimate.state_std else estimate.parameter_std
    else:
        where = extra
    if t.key not in where:
        return None, f"{t.name!r} has no value this cycle"
    try:
        return float(where[t.key]), ""
    except (TypeError, ValueError):
        return None, f"{t.name!r} is not a number: {where[t.key]!r}"


def _fit(t: _Target, raw: float) -> tuple[float | None, str]:
    """``raw`` as the tag can hold it, or (None, why it cannot be written)."""
    if math.isnan(raw):
        return None, f"{t.name!r} is not a number"
    if t.boolean:
        return (0.0 if raw == 0 else 1.0), ""
    if raw == math.inf and not math.isfinite(t.limits[1]):
        return None, f"{t.name!r} is +inf and the tag has no upper limit"
    if raw == -math.inf and not math.isfinite(t.limits[0]):
        return None, f"{t.name!r} is -inf and the tag has no lower limit"
    value = min(max(raw, t.lower), t.upper)
    if t.integer:
        value = float(round(value))
        value = min(max(value, math.ceil(t.lower)), math.floor(t.upper))
    return value, ""
