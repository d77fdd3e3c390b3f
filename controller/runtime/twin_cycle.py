"""The twin's half of a supervisor cycle: drift charts, alarms and publications.

:class:`TwinCycleWork` runs the twin's services (:class:`controller.twin.services.TwinServices`)
on the cycle's estimate, audits and logs every drift alarm raised or cleared (and hands it to
the historian as an event), and writes the soft-sensor publications and the alarm tag, each
audited before it is sent (``publication.write``: one record for the cycle's soft sensors,
their values by tag as JSON, staged by :meth:`TwinCycleWork.watch` in the cycle's
``audit_first`` so that it goes in the setpoints' transaction, or in one of its own before
the write; ``tag.write.alarm`` once per change of the alarm tag, its retries covered by that
record). On a port that batches writes (OPC UA) the staged soft sensors ride with the
cycle's first control write sent after that transaction
(:class:`~controller.runtime.cycle.Rider`: one Write and one Read for both, each reported
apart); they are written on their own when no control write took them. A failed
publication is logged and counted, never a problem of the control cycle. When the twin's
work runs, and whether it publishes, is the supervisor's call.
"""

from __future__ import annotations

import functools
import json
import logging
from collections.abc import Mapping

from controller.core.estimate import Estimate
from controller.errors import PortError
from controller.ports.base import Port, WriteReport, WriteStatus
from controller.runtime.audit import AuditTrail
from controller.runtime.audit_chain import AuditEntry
from controller.runtime.cycle import Counters, CycleView, Rider
from controller.runtime.historian_records import HistorianEvent
from controller.twin.monitoring import Alarm
from controller.twin.services import TwinCycle, TwinServices

__all__ = ["TwinCycleWork"]

log = logging.getLogger("pharmatwin.supervisor")

#: the target of a ``publication.write`` record (its values name each tag)
PUBLICATIONS = "twin publications"


def _json(values: Mapping[str, float]) -> str:
    """``{"tag": value, ...}`` as JSON (non-finite numbers as NaN/Infinity, as written)."""
    return json.dumps(dict(values), separators=(", ", ": "))


class TwinCycleWork:
    """The twin's work of each cycle and what it last wrote to the PLC."""

    def __init__(
        self,
        twin: TwinServices,
        port: Port,
        counters: Counters,
        audit: AuditTrail,
        *,
        run_id: str,
        actor: str,
        publishes: bool = True,
    ) -> None:
        self.twin, self.port, self.counters, self.audit = twin, port, counters, audit
        self.run_id, self.actor = run_id, actor
        #: whether the supervisor has :meth:`publish` called after :meth:`watch` (its mode)
        self.publishes = publishes
        #: this cycle's result of the twin's services (None: nothing to publish)
        self.last: TwinCycle | None = None
        self._alarm_written: float | None = None
        self._alarm_audited: float | None = None
        self._publish_warned: set[str] = set()
        self._published: dict[str, float] = {}  # soft-sensor tag -> the value the PLC took
        self._staged: int | None = None  # the cycle whose publication record watch staged
        self._rode: int | None = None  # the cycle whose soft sensors went with a control write

    def watch(
        self,
        view: CycleView,
        t_model: float,
        estimate: Estimate | None,
        inputs: Mapping[str, float],
        *,
        data_good: bool,
    ) -> None:
        """Drift charts, maintenance forecasts and publications on this cycle's estimate
        (at model time ``t_model``, under ``inputs``); nothing when the twin is disabled."""
        if not self.twin.enabled:
            return
        tc = self.twin.update(t_model, estimate, inputs, data_good=data_good)
        self.last = tc
        view.monitor = {**view.monitor, **tc.monitor}  # after the data-trust figures
        for kind, alarms in (("drift.alarm", tc.raised), ("drift.clear", tc.cleared)):
            for alarm in alarms:
                self._alarm_event(kind, alarm, view)
        for problem in tc.publication.problems():
            tag = problem.split(":", 1)[0]
            if tag not in self._publish_warned:  # once per tag, not every cycle
                self._publish_warned.add(tag)
                log.info("publication %s", problem)
        values = self._soft_sensors(tc)
        if self.publishes and values:  # last: nothing after it can fail the twin's work
            view.audit_first.append(self._publication_entry(values, view))
            self._staged = view.cycle
            view.rider = Rider(values, functools.partial(self._ridden, values))

    def _ridden(
        self, values: Mapping[str, float], view: CycleView, outcome: WriteReport | PortError
    ) -> None:
        """The soft sensors went with a control write: what came of them."""
        self._rode = view.cycle
        self._took(values, view, self._outcome(values, view, outcome, "publishing"))

    def _soft_sensors(self, tc: TwinCycle) -> dict[str, float]:
        """The values of the cycle's publication that go in one write (not the alarm tag)."""
        values = dict(tc.publication.values)
        if self.twin.alarm_tag is not None:
            values.pop(self.twin.alarm_tag, None)
        return values

    def _alarm_event(self, kind: str, alarm: Alarm, view: CycleView) -> None:
        detail = {
            "run_id": self.run_id,
            "cycle": view.cycle,
            "signal": alarm.signal,
            "side": alarm.side,
            "chart": alarm.chart,
            "statistic": alarm.statistic,
            "limit": alarm.limit,
            "value": alarm.value,
            "reference": alarm.reference,
            "raised_at": alarm.raised_at,
            "since": alarm.since,
        }
        message = alarm.message
        self.audit.record(
            kind,
            alarm.signal,
            reason=message,
            new_value=alarm.statistic,
            actor=self.actor,
            detail=detail,
        )
        if kind == "drift.alarm":
            self.counters.drift_alarms += 1
            log.warning("%s", message)
        else:
            log.info("%s", message)
        view.events.append(HistorianEvent(self.run_id, view.t, kind, alarm.key, message, detail))

    async def publish(self, view: CycleView) -> None:
        """Write the soft sensors, then (in its own request) the alarm tag when it changed,
        audited first. The historian's ``pub.<tag>`` figures are what the PLC accepted."""
        tc = self.last
        if tc is None:
            return
        values = self._soft_sensors(tc)
        tag = self.twin.alarm_tag
        alarm = tc.publication.values.get(tag) if tag is not None else None
        view.rider = None  # gone with a control write, or not: written here
        if values and self._rode != view.cycle:
            if self._staged != view.cycle:  # not staged by watch: audited here
                view.audit_first.append(self._publication_entry(values, view))
            if view.audit_first:  # not committed with the cycle's setpoints: on its own
                first, view.audit_first = view.audit_first, []
                self.audit.record_all(first)
            self._took(values, view, await self._try_write(values, view, "publishing"))
        if tag is None or alarm is None or alarm == self._alarm_written:
            return
        if alarm != self._alarm_audited:  # one record per change, not one per retry
            self.audit.record(
                "tag.write.alarm",
                tag,
                reason="drift alarm state changed",
                old_value=self._alarm_written,
                new_value=alarm,
                actor=self.actor,
                detail={
                    "run_id": self.run_id,
                    "cycle": view.cycle,
                    "active": [a.key for a in tc.active],
                },
            )
            self._alarm_audited = alarm
        alarm_report = await self._try_write({tag: alarm}, view, "the alarm tag")
        result = alarm_report.results.get(tag) if alarm_report is not None else None
        if result is not None and result.status is WriteStatus.OK:
            self._alarm_written = alarm
            view.monitor[f"pub.{tag}"] = alarm
        elif result is not None and result.status is WriteStatus.MISMATCH:
            self._alarm_written = result.readback  # retried next cycle: the PLC has another

    def _publication_entry(self, values: Mapping[str, float], view: CycleView) -> AuditEntry:
        """The ``publication.write`` record of the cycle's soft sensors (one write): their
        values by tag, and what the PLC last took of them."""
        published = self._published
        old = {t: published[t] for t in values if t in published}
        return AuditEntry(
            "publication.write",
            PUBLICATIONS,
            f"twin publication of cycle {view.cycle} (estimate and monitor figures)",
            old_value=_json(old) if old else None,
            new_value=_json(values),
            actor=self.actor,
            detail={"run_id": self.run_id, "cycle": view.cycle},
        )

    async def _try_write(
        self, values: Mapping[str, float], view: CycleView, what: str
    ) -> WriteReport | None:
        """A write of the twin's own tags (:meth:`_outcome`)."""
        try:
            outcome: WriteReport | PortError = await self.port.write(values)
        except PortError as exc:
            outcome = exc
        return self._outcome(values, view, outcome, what)

    def _outcome(
        self,
        values: Mapping[str, float],
        view: CycleView,
        outcome: WriteReport | PortError,
        what: str,
    ) -> WriteReport | None:
        """The report of a write of the twin's own tags (None: it failed); a failure or a
        refusal is logged and counted, never a problem of the control cycle."""
        if isinstance(outcome, PortError):
            self.counters.publish_failures += 1
            log.warning("cycle %d: %s %s failed: %s", view.cycle, what, sorted(values), outcome)
            return None
        if not outcome.ok:
            self.counters.publish_failures += 1
            log.warning(
                "cycle %d: %s refused: %s", view.cycle, what, [r.detail for r in outcome.failed()]
            )
        return outcome

    def _took(
        self, values: Mapping[str, float], view: CycleView, report: WriteReport | None
    ) -> None:
        """What the PLC took of the soft sensors (``values``): the historian's ``pub.<tag>``."""
        for name, written in report.results.items() if report is not None else ():
            if written.status is WriteStatus.OK:
                view.monitor[f"pub.{name}"] = values[name]
                self._published[name] = values[name]
