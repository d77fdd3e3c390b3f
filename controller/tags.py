"""Tag maps (``configs/tags/*.yaml``): the schema of a tag and the loading of a map.

A tag is a value in the plant's own words (``feed_rate_sp``, ``product_temp_bottom``) with a
unit, a direction, engineering limits, a write rate limit and a stale-after time, plus where
it lives on each protocol:

* Modbus: unit id, table (holding/input register, coil, discrete input), address and whether
  the map counts from 0 or 1, data type, word/byte order, scale and offset;
* OPC UA: a node id (``ns=2;s=...``, ``ns=2;i=...``) or a browse path, and the expected
  data type.

Directions, as seen from the twin (the controller): ``read`` (the PLC writes, the twin
reads: measurements, working setpoints, PLC status), ``read_write`` (setpoints and contract
flags the twin writes and reads back), ``write`` (write-only) and ``publish``: a value the
twin *publishes* for the PLC, the HMI and the historian to read (a soft sensor such as the
drying-front position, an estimated parameter, a drift alarm word). A publishing tag names
what it carries in ``publishes`` (see :mod:`controller.twin.publish` for the names allowed); it is
writable by the twin (a holding register or coil, an OPC UA variable) but it is not
``readable``: the twin never reads its own publications back as inputs, so the supervisor's
per-cycle read, the measurement list and the validity bits never include them. It never
carries a model variable (no ``binds``): a publication is never a control input nor a
measurement. Every problem names ``tags.<tag>.publishes``, the bad value and what is allowed.

What the twin may trust of a value it reads (see :mod:`controller.runtime.trust`), per tag:
``limits`` of a read tag is the instrument's span as the PLC scales it (a value read outside is
flagged UNCERTAIN by every port: "outside limits: wrong word order or scale?"); ``valid_range`` is
what the quantity can physically be (outside: bad data for that cycle); ``frozen_after`` identical
reads of a noisy measurement are a stuck transmitter (or reads taking at most ``frozen_values``
different values: one whose last digit flickers); ``on_bad`` (``hold``, or ``predict`` for at
most ``predict_cycles`` cycles) and ``uncertain_is_good`` are the measurement's bad-data policy;
``min_write_interval`` is the shortest time between two writes of a setpoint.

The register codecs (value <-> registers) are in :mod:`controller.codecs`; which tag carries
which model variable is read through :class:`controller.binding.Binding`.
"""

from __future__ import annotations

import binascii
import re
import uuid
from base64 import b64decode
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field, ValidationInfo, field_validator, model_validator

from controller.codecs import REGISTERS, DataType, Order
from controller.configfile import Finite, PositiveFinite, Strict, parse, read_yaml
from controller.errors import ConfigError, Problem


class Direction(StrEnum):
    """Who writes a tag, as seen from the twin (see the module docstring)."""

    READ = "read"
    WRITE = "write"
    READ_WRITE = "read_write"
    PUBLISH = "publish"  # the twin writes, the PLC / HMI / historian only read


class Table(StrEnum):
    HOLDING = "holding"
    INPUT = "input"
    COIL = "coil"
    DISCRETE = "discrete"


#: What the runtime does with a measurement it cannot trust (see ``Tag.on_bad``).
OnBad = Literal["hold", "predict"]
#: Keys that mean nothing on a publication (the twin writes it and never reads it back).
_NOT_PUBLISHED = (
    "max_rate",
    "frozen_after",
    "frozen_values",
    "valid_range",
    "on_bad",
    "predict_cycles",
    "uncertain_is_good",
    "min_write_interval",
)
#: What ``publishes`` may look like: a name, or dotted names (``Lck.std``, ``alarm.word``).
_PUBLISH_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z0-9_]+)*")


class ModbusSpec(Strict):
    """Where a tag lives in a Modbus device."""

    unit_id: Annotated[int, Field(ge=0, le=255)] = 1
    table: Table
    address: Annotated[int, Field(ge=0, le=65536)]
    base: Literal[0, 1] = 0
    type: DataType = DataType.FLOAT32
    order: Order = Order.ABCD
    scale: Annotated[float, Field(allow_inf_nan=False)] = 1.0
    offset: Finite = 0.0

    @model_validator(mode="after")
    def _consistent(self) -> ModbusSpec:
        if self.scale == 0:
            raise ValueError("scale must not be 0")
        bit_table = self.table in (Table.COIL, Table.DISCRETE)
        if bit_table != (self.type is DataType.BOOL):
            raise ValueError("coils and discrete inputs hold type bool, and only they do")
        if self.address < self.base:
            raise ValueError(f"address {self.address} is below the map's base {self.base}")
        if self.protocol_address + REGISTERS[self.type] > 65536:
            raise ValueError("the value runs past register 65535")
        return self

    @property
    def protocol_address(self) -> int:
        """The 0-based address sent on the wire."""
        return self.address - self.base

    @property
    def count(self) -> int:
        return REGISTERS[self.type]

    @property
    def writable_table(self) -> bool:
        return self.table in (Table.HOLDING, Table.COIL)


OpcUaType = Literal[
    "Boolean", "Int16", "UInt16", "Int32", "UInt32", "Int64", "UInt64", "Float", "Double"
]
#: The range of each OPC UA integer type.
OPCUA_INT_RANGE = {f"Int{b}": (-(2 ** (b - 1)), 2 ** (b - 1) - 1) for b in (16, 32, 64)}
OPCUA_INT_RANGE |= {f"UInt{b}": (0, 2**b - 1) for b in (16, 32, 64)}


class OpcUaSpec(Strict):
    """Where a tag lives in an OPC UA address space: a node id or a browse path."""

    node_id: str | None = None
    browse_path: tuple[str, ...] | None = None
    data_type: OpcUaType = "Double"

    @model_validator(mode="after")
    def _one_address(self) -> OpcUaSpec:
        if (self.node_id is None) == (self.browse_path is None):
            raise ValueError("give exactly one of 'node_id' or 'browse_path'")
        return self


class Tag(Strict):
    """One process value in the plant's own words."""

    description: str = ""
    unit: str
    direction: Direction
    binds: str | None = None  # the plant-model variable this tag carries, if any
    limits: tuple[Finite, Finite] | None = None
    max_rate: PositiveFinite | None = None  # largest allowed change per second when written
    stale_after: PositiveFinite = 10.0  # seconds
    #: a noisy analog measurement read this many times in a row with exactly the same value is
    #: frozen (a stuck transmitter or a PLC holding its last value): treated as stale
    frozen_after: Annotated[int, Field(ge=2, le=1000)] | None = None
    #: with ``frozen_after``: those reads in a row taking at most this many different values
    #: are frozen too: a stuck transmitter whose last digit flickers between two codes
    #: (2). A live float32 measurement under noise almost never repeats a value; a quantised
    #: one repeats by chance, and more often the more values are allowed (see the README)
    frozen_values: Annotated[int, Field(ge=1, le=10)] | None = None  # None: 1
    #: the values the measured quantity can physically take (a fed batch's biomass cannot
    #: reach 50 g/L by mass balance): a value read outside is bad data for that cycle. Not the
    #: engineering ``limits`` (the transmitter's span, the PLC's scaling, the write range: a
    #: value outside those is flagged uncertain by the port) and not the model's operating
    #: limits (what the process must respect, which a true value may well break)
    valid_range: tuple[Finite, Finite] | None = None
    #: a measurement that cannot be trusted in a cycle: ``hold`` the setpoints (and fall back
    #: after ``max_bad_cycles``), or ``predict``: ride on the model's prediction for at most
    #: ``predict_cycles`` cycles in a row, then hold
    on_bad: OnBad = "hold"
    predict_cycles: Annotated[int, Field(ge=1, le=1000)] | None = None
    #: an ``uncertain`` value (OPC UA Uncertain, or read outside ``limits``) counts as good
    uncertain_is_good: bool = False
    #: a setpoint is never written again within this many seconds of process time (the
    #: runtime uses half the sample time when no setpoint tag gives one)
    min_write_interval: PositiveFinite | None = None
    modbus: ModbusSpec | None = None
    opcua: OpcUaSpec | None = None
    #: what the twin publishes into this tag (direction ``publish`` only): a model state, an
    #: estimated parameter, a model expression, ``<name>.std`` or a twin-intelligence value
    #: (``alarm.word``, ``maintenance.<param>.time_to_threshold``...); checked against the
    #: model by :func:`controller.twin.publish.check_publications`
    publishes: Annotated[str | None, Field(validate_default=True)] = None

    @field_validator("publishes")
    @classmethod
    def _publication(cls, value: str | None, info: ValidationInfo) -> str | None:
        """A publication is written by the twin and read by everyone else, never an input."""
        direction = info.data.get("direction")
        if value is None:
            if direction is Direction.PUBLISH:
                raise ValueError(
                    "direction 'publish' needs 'publishes': the model state, estimated "
                    "parameter, expression or twin-intelligence value the twin writes here"
                )
            return None
        if not _PUBLISH_NAME.fullmatch(value):
            raise ValueError(
                f"publishes {value!r} is not a name; allowed: a model name, '<name>.std', or "
                "dotted names such as 'alarm.word' and 'maintenance.Kw.time_to_threshold'"
            )
        if direction is not None and direction is not Direction.PUBLISH:
            raise ValueError(
                f"publishes {value!r} needs direction 'publish' (the twin writes, the PLC and "
                f"HMI only read), not {direction.value!r}"
            )
        problems = []
        binds = info.data.get("binds")
        if binds is not None:
            problems.append(
                f"it also binds the model variable {binds!r}: a publication is written by the "
                "twin and is never a control input or a measurement; remove 'binds'"
            )
        modbus = info.data.get("modbus")
        if modbus is not None and not modbus.writable_table:
            problems.append(
                f"its Modbus table {modbus.table.value!r} is written only by the PLC; allowed: "
                "'holding' (or 'coil' for a bool), which the twin can write"
            )
        for key in _NOT_PUBLISHED:
            if info.data.get(key) not in (None, False, "hold"):
                problems.append(f"'{key}' applies to setpoints and measurements only; remove it")
        if problems:
            raise ValueError(f"publishes {value!r}: " + "; ".join(problems))
        return value

    @model_validator(mode="after")
    def _check(self) -> Tag:
        if self.modbus is None and self.opcua is None:
            raise ValueError(
                "the tag has no address: give 'modbus' (its register or coil), 'opcua' (its "
                "node id), or both"
            )
        if self.limits is not None and self.limits[0] > self.limits[1]:
            raise ValueError(f"limits lower {self.limits[0]} is above upper {self.limits[1]}")
        if self.modbus is not None and self.writable and not self.modbus.writable_table:
            raise ValueError(
                f"a writable tag cannot live in the read-only {self.modbus.table} table"
            )
        problems = self._trust_problems()
        if problems:
            raise ValueError("; ".join(problems))
        return self

    def _trust_problems(self) -> list[str]:
        """The data-trust keys must fit the tag: what it reads, and whether it is written."""
        out = []
        if self.valid_range is not None and not self.valid_range[0] < self.valid_range[1]:
            lo, hi = self.valid_range
            out.append(f"valid_range lower {lo} must be below upper {hi}")
        out.extend(self._frozen_problems())
        if self.valid_range is not None and not self.readable:
            out.append("'valid_range' applies to tags the twin reads; remove it")
        if self.on_bad == "predict" and self.predict_cycles is None:
            out.append(
                "on_bad 'predict' needs 'predict_cycles': the most cycles in a row the runtime "
                "may ride on the model's prediction before it holds"
            )
        if self.on_bad == "hold" and self.predict_cycles is not None:
            out.append("'predict_cycles' applies only with on_bad 'predict'; remove it")
        if self.on_bad == "predict" and (self.direction is not Direction.READ or not self.binds):
            out.append(
                "on_bad 'predict' applies to a measurement (direction 'read', binding a model "
                "output)"
            )
        if self.min_write_interval is not None and self.direction not in (
            Direction.WRITE,
            Direction.READ_WRITE,
        ):
            out.append("'min_write_interval' applies to setpoints the twin writes; remove it")
        return out

    def _frozen_problems(self) -> list[str]:
        """``frozen_values`` means something only with ``frozen_after``, and below it."""
        k, n = self.frozen_values, self.frozen_after
        if k is None or k == 1:
            return []
        if n is None:
            return [
                f"frozen_values {k} needs 'frozen_after': how many reads in a row taking at "
                f"most {k} different values make the value frozen"
            ]
        if k >= n:
            return [
                f"frozen_values {k} is not below frozen_after {n}: every {n} reads in a row "
                f"would read as frozen; allowed: 1 to {n - 1}"
            ]
        return []

    @property
    def writable(self) -> bool:
        return self.direction is not Direction.READ

    @property
    def readable(self) -> bool:
        """Whether the twin reads this tag (never its own publications)."""
        return self.direction not in (Direction.WRITE, Direction.PUBLISH)


class TagMap(Strict):
    """A named set of tags, e.g. one unit operation's PLC interface."""

    name: str
    description: str = ""
    tags: Annotated[dict[str, Tag], Field(min_length=1)]  # a map of nothing checks nothing

    def publication_tags(self) -> dict[str, str]:
        """Tag -> what the twin publishes into it (direction ``publish``), in map order."""
        return {n: t.publishes for n, t in self.tags.items() if t.publishes is not None}


def load_tag_map(path: Path) -> TagMap:
    """Load ``configs/tags/<name>.yaml``; every problem (incl. overlaps) in one ConfigError."""
    tm = parse(TagMap, read_yaml(path), str(path))
    problems = overlap_problems(tm, str(path))
    if problems:
        raise ConfigError(problems)
    return tm


def overlap_problems(tm: TagMap, source: str) -> list[Problem]:
    """Two tags that share a Modbus register (same unit, table and address) or an OPC UA node
    (the same node id, as the port reads it, or the same browse path) are an error: writing
    one would write the other."""
    used: dict[tuple[int, Table, int], str] = {}
    problems = []
    for name, tag in tm.tags.items():
        if tag.modbus is None:
            continue
        m = tag.modbus
        for reg in range(m.protocol_address, m.protocol_address + m.count):
            key = (m.unit_id, m.table, reg)
            if key in used:
                problems.append(
                    Problem(
                        source,
                        f"tags.{name}.modbus.address",
                        f"overlaps tag {used[key]!r} at {m.table} register {reg} "
                        f"(0-based) of unit {m.unit_id}",
                        m.address,
                    )
                )
                break
            used[key] = name
    return problems + _node_problems(tm, source)


def _node_problems(tm: TagMap, source: str) -> list[Problem]:
    """Two tags on one OPC UA node: the second (in map order) names the first."""
    nodes: dict[object, tuple[str, str]] = {}  # node -> (first tag, its node id as written)
    problems = []
    for name, tag in tm.tags.items():
        spec = tag.opcua
        if spec is None:
            continue
        if spec.node_id is not None:
            key, written, what = same_node_key(spec.node_id), spec.node_id, "node_id"
            value: object = spec.node_id
        else:
            path = spec.browse_path or ()
            key, written, what = ("browse_path", path), "/".join(path), "browse_path"
            value = list(path)
        first = nodes.setdefault(key, (name, written))
        if first[0] == name:
            continue
        problems.append(
            Problem(
                source,
                f"tags.{name}.opcua.{what}",
                f"names the OPC UA node of tag {first[0]!r} ({first[1]!r}): writing one tag "
                "would write the other; allowed: a node no other tag of the map uses",
                value,
            )
        )
    return problems


def same_node_key(node_id: str) -> object:
    """What tells OPC UA nodes apart in ``node_id``, read as asyncua's ``ua.NodeId.from_string``
    reads it (the port's reading: keys and numbers stripped, ``ns=2;i=05`` is ``ns=2;i=5``, a
    string identifier kept to the end with its spaces), without importing asyncua; with the
    namespace URI and server index of an ``nsu=``/``srv=`` id. A node id that does not parse
    (the port refuses it when it connects) is compared as written, stripped."""
    namespace, kind = 0, ""
    identifier: int | str | uuid.UUID | bytes | None = None
    extra: dict[str, object] = {}
    elements = node_id.split(";")
    try:
        while elements:
            element = elements.pop(0)
            if not element:
                continue
            k, v = element.split("=", 1)
            k = k.strip()
            if k == "ns":
                namespace = int(v.strip())
            elif k == "i":
                kind, identifier = k, int(v.strip())
            elif k == "s":  # the rest of the id, semicolons included
                kind, identifier, elements = k, ";".join((v, *elements)), []
            elif k == "g":
                kind, identifier = k, uuid.UUID(f"urn:uuid:{v}")
            elif k == "b":
                kind, identifier = k, _byte_string(v)
            elif k in ("srv", "nsu"):
                extra[k] = int(v.strip()) if k == "srv" else v
    except ValueError:  # binascii.Error and UnicodeError too
        return node_id.strip()
    if identifier is None:
        return node_id.strip()
    return (extra.get("nsu"), extra.get("srv"), namespace, kind, identifier)


def _byte_string(text: str) -> bytes:
    """A ``b=`` identifier as asyncua reads it: ``0x`` hex, else base64, else the text."""
    if text[0:2] == "0x":
        return bytes.fromhex(text[2:])
    try:
        return b64decode(text.encode("ascii"))
    except (binascii.Error, ValueError):
        return text.encode("ascii")
