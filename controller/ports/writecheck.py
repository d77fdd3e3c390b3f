"""The one write check every port runs before it sends anything.

A value is refused, with one wording for every port (memory, Modbus, OPC UA), when its tag is

* unknown (not in the port's tag map, or its table),
* not writable (a ``read`` tag: the PLC's; the twin only reads it),
* given a value that is not a finite number, or
* given a value outside the tag's engineering ``limits``.

:meth:`WriteCheck.refusals` checks every value of one write; when any is refused,
:func:`refused_report` makes the write's report: REJECTED (with the reason) for the refused
tags and NOT_SENT for the others, so nothing of a write is sent unless all of it can be. What
only one protocol can refuse (a value the register codec or the node's type cannot hold) is
checked by that port after this check. :func:`unreadable` words the refusals of a read
(unknown and write-only tags) the same way for every port. :class:`GroupedWrite` is the same
rule for several independent writes sent in one request (``Port.write_each``): each group is
refused or sent as a whole, whatever the others are.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass

from controller.errors import PortError, unknown_name
from controller.ports.base import WriteReport, WriteResult, WriteStatus, disjoint
from controller.tags import Tag


@dataclass(frozen=True)
class WriteRule:
    """What the check knows of one tag: whether the twin may write it, and its limits."""

    writable: bool
    limits: tuple[float, float] | None = None
    direction: str = ""  # the tag map's direction, for the message ("" when unknown)


class WriteCheck:
    """The write check over a set of tags (``name -> WriteRule``)."""

    def __init__(self, rules: Mapping[str, WriteRule]) -> None:
        self.rules = dict(rules)

    @classmethod
    def of_tags(cls, tags: Mapping[str, Tag]) -> WriteCheck:
        """The check of a tag map's tags (``TagMap.tags``, or a subset of it)."""
        return cls({n: WriteRule(t.writable, t.limits, t.direction.value) for n, t in tags.items()})

    def refusal(self, name: str, value: object) -> str:
        """Why ``value`` may not be written to ``name``; "" when it may."""
        rule = self.rules.get(name)
        if rule is None:
            writable = [n for n, r in self.rules.items() if r.writable]
            return unknown_name("tag", name, writable, context=" to write")
        if not rule.writable:
            how = f" (direction {rule.direction})" if rule.direction else ""
            return f"tag {name!r} is read-only{how}: the twin does not write it"
        number = _number(value)
        if not math.isfinite(number):
            return f"tag {name!r}: value {value!r} is not a finite number"
        if rule.limits is not None and not rule.limits[0] <= number <= rule.limits[1]:
            lo, hi = rule.limits
            return f"tag {name!r}: value {value!r} is outside the tag limits [{lo:g}, {hi:g}]"
        return ""

    def refusals(self, values: Mapping[str, object]) -> dict[str, str]:
        """``tag -> reason`` for every value of ``values`` that is refused."""
        return {name: why for name, v in values.items() if (why := self.refusal(name, v))}


def refused_report(
    values: Mapping[str, float], refused: Mapping[str, str], now: float
) -> WriteReport:
    """The report of a write of which ``refused`` tags were refused: nothing was sent."""
    others = f"not sent: nothing of this write is sent because {sorted(refused)} were refused"
    return WriteReport(
        {
            name: WriteResult(name, v, WriteStatus.REJECTED, None, refused[name])
            if name in refused
            else WriteResult(name, v, WriteStatus.NOT_SENT, None, others)
            for name, v in values.items()
        },
        now,
    )


class GroupedWrite:
    """Independent writes (``groups``) to send in one request: each group checked on its own
    by ``refusals`` (``tag -> reason``; a group with one refused is :func:`refused_report`'d
    and nothing of it is sent), ``values`` the groups' values to send, and each group's
    report or error once the port has sent them. A tag in two groups is a ValueError."""

    def __init__(
        self,
        groups: Sequence[Mapping[str, float]],
        refusals: Callable[[Mapping[str, float]], Mapping[str, str]],
        now: float,
    ) -> None:
        self.groups = [dict(g) for g in groups]
        self.values: dict[str, float] = {}
        self._settled: list[WriteReport | None] = []  # per group: its report, if not sent
        disjoint(self.groups)
        for group in self.groups:
            refused = refusals(group) if group else {}
            if refused or not group:
                self._settled.append(refused_report(group, refused, now))
            else:
                self._settled.append(None)
                self.values |= group

    def reports(
        self, results: Mapping[str, WriteResult], write_time: float
    ) -> list[WriteReport | PortError]:
        """Each group's report, the sent ones' from ``results`` (every sent tag's)."""
        return [
            done if done is not None else WriteReport({n: results[n] for n in g}, write_time)
            for done, g in zip(self._settled, self.groups, strict=True)
        ]

    def failed(self, exc: PortError) -> list[WriteReport | PortError]:
        """Each group's report, ``exc`` for the sent ones (their request failed)."""
        return [done if done is not None else exc for done in self._settled]


def unreadable(readable: Mapping[str, bool], names: Iterable[str]) -> list[str]:
    """Why each of ``names`` cannot be read: not a tag of ``readable`` (tag -> whether the twin
    may read it), or a write-only tag. Empty when every name can be read."""
    problems = []
    for name in names:
        if name not in readable:
            allowed = [n for n, ok in readable.items() if ok]
            problems.append(unknown_name("tag", name, allowed, context=" to read"))
        elif not readable[name]:
            problems.append(f"tag {name!r} is write-only")
    return problems


def _number(value: object) -> float:
    try:
        return float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return math.nan
