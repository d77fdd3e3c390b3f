"""The supervisor's control writes: the heartbeat, the setpoints and their audit, the advice.

:class:`ControlWriter` writes to the PLC on the supervisor's behalf. Every value it writes is
audited *before* it is sent: each setpoint (``setpoint.write``, one transaction for the whole
decision, the heartbeat that goes with it included), the heartbeat written alone
(``heartbeat.write``) and each advisory value of shadow mode (``advisory.write``; the site
refuses a setpoint, contract or publication tag as one). Two setpoint writes are never
closer than ``min_write_interval``, and the write's report says what the PLC has: a value it
accepted, or its read-back when that is a finite number within the tag's limits (anything else
is a problem of the cycle, never the new move origin). What the PLC has is handed to the
pipeline (:meth:`controller.core.pipeline.ControlPipeline.resync`), its one owner. A failed or
refused write is a problem of the cycle; what follows from it is the supervisor's call. While
the MPC has control, every cycle takes the PLC's trusted working setpoints as what it has
(:meth:`ControlWriter.settle`: they differ from what was written only when the PLC or someone
moved them, or a write's outcome was unknown). A write whose outcome is unknown (no answer, a
failed read-back: the PLC may have applied it) holds while they cannot be trusted.
While RUNNING the heartbeat goes in the setpoints' write (:meth:`ControlWriter.setpoints`), and
alone whenever nothing of that write was sent, so it never depends on the setpoints. On a port that
batches writes (OPC UA), the cycle's first control write sent after the twin's publication record is
committed takes the soft sensors along (``CycleView.rider``,
:meth:`controller.ports.base.Port.write_each`: one Write and one Read for both, within the PLC's
limits), checked and reported apart: what comes of them is the twin's (``Rider.sent``), never a
problem of the control cycle; on the others the twin writes them after the control writes, as
before.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Mapping

from controller.binding import Binding
from controller.clock import Clock
from controller.core.mpc import Decision
from controller.core.pipeline import ControlPipeline
from controller.core.safety import SafetyOutcome
from controller.errors import PortConnectError, PortError, PortTimeoutError
from controller.ports.base import Port, WriteReport, WriteStatus
from controller.ports.wire import resolution
from controller.runtime.audit import AuditTrail
from controller.runtime.audit_chain import AuditEntry
from controller.runtime.cycle import Counters, CycleView, Mode, Rider, State
from controller.tags import TagMap

__all__ = ["ControlWriter"]

log = logging.getLogger("pharmatwin.supervisor")

#: the heartbeat counts modulo this (a 16-bit register)
_WRAP = 65536


class ControlWriter:
    """Writes of the control loop: heartbeat, setpoints (audited first), advisory tags.

    ``sp_tags`` maps each input to its setpoint tag; ``problem(view, text)`` records a
    problem of the cycle.
    """

    def __init__(
        self,
        port: Port,
        clock: Clock,
        pipeline: ControlPipeline,
        tags: TagMap,
        sp_tags: Mapping[str, str],
        counters: Counters,
        audit: AuditTrail,
        *,
        min_write_interval_s: float,
        run_id: str,
        actor: str,
        model_version: str,
        problem: Callable[[CycleView, str], None],
    ) -> None:
        self.port, self.clock, self.pipeline = port, clock, pipeline
        self.tags, self.sp_tags, self.counters, self.audit = tags, sp_tags, counters, audit
        self.min_write_interval_s = min_write_interval_s
        self.run_id, self.actor, self.model_version = run_id, actor, model_version
        self._problem = problem
        self._heartbeat = 0
        self._last_write_t: float | None = None
        self._advised: dict[str, float] = {}  # advisory tag -> the value last written
        working = Binding.of_inputs(tags, list(sp_tags)).working_setpoint_tags()
        #: per input, its setpoint tag and its working-setpoint tag (what the PLC reports)
        self._pair = {i: (sp, working.get(i)) for i, sp in sp_tags.items()}
        #: since it engaged, the PLC ran a setpoint other than the one written and confirmed
        #: (the first time, in words): every cycle holds until it hands control back
        self._unapplied: str | None = None
        self._moved_before = False  # the last settled cycle had such a working setpoint
        #: per input, the value last written and confirmed (its read-back) since engaging
        self._confirmed: dict[str, float] = {}

    async def write(self, values: Mapping[str, float], view: CycleView) -> WriteReport | None:
        """A control write; a failure (None) or a refusal is a problem of the cycle."""
        report = await self._send(values, view)
        if isinstance(report, PortError):
            self.counters.failed_writes += 1
            self._problem(view, f"write failed: {report}")
            return None
        if not report.ok:
            self.counters.failed_writes += 1
            self._problem(view, f"write refused: {[r.detail for r in report.failed()]}")
        return report

    async def _send(self, values: Mapping[str, float], view: CycleView) -> WriteReport | PortError:
        """``values`` sent, with the cycle's rider (the twin's publication) when the port sends
        both in one request (``Port.batches_writes``) and the rider's audit record is
        committed; each reported apart. A batched request that fails as a whole for another
        reason than a timeout or a lost connection (a PLC refusing its size, a fault of ours)
        is sent again without the rider, which the twin then writes on its own: the twin's
        writes never cost the control write."""
        rider = view.rider if self.port.batches_writes and not view.audit_first else None
        if rider is not None:
            view.rider = None  # offered once: if the batch fails, the twin writes it alone
            try:
                report, ridden = await self.port.write_each([values, rider.values])
            except Exception:  # a fault of the batching: the write goes alone
                self.counters.twin_failures += 1
                log.exception("cycle %d: the write with the twin's publication failed", view.cycle)
            else:
                if not isinstance(report, PortError) or isinstance(
                    report, PortTimeoutError | PortConnectError
                ):
                    self._hand_back(rider, view, ridden)
                    return report
                log.warning(
                    "cycle %d: the write with the twin's publication failed (%s): sent again "
                    "without it",
                    view.cycle,
                    report,
                )
        try:
            return await self.port.write(values)
        except PortError as exc:
            return exc

    def _hand_back(self, rider: Rider, view: CycleView, ridden: WriteReport | PortError) -> None:
        """What came of the rider, to the twin (whose fault never reaches the control cycle)."""
        try:
            rider.sent(view, ridden)
        except Exception:  # the twin's work never stops the control loop
            self.counters.twin_failures += 1
            log.exception("cycle %d: the twin's publication report failed", view.cycle)

    def next_heartbeat(self) -> dict[str, float]:
        """The next heartbeat count, as the values of a write."""
        self._heartbeat = (self._heartbeat + 1) % _WRAP
        return {"mpc_heartbeat": float(self._heartbeat)}

    async def heartbeat(self, view: CycleView, beat: Mapping[str, float] | None = None) -> None:
        """The heartbeat ``beat`` (default: the next count) written alone, audited first."""
        beat = dict(beat) if beat is not None else self.next_heartbeat()
        self._commit(view, self._beat_entries(beat, view.cycle))
        await self.write(beat, view)

    def _commit(self, view: CycleView, entries: list[AuditEntry]) -> None:
        """One transaction: ``entries`` and the records the cycle staged for writes later in
        it (``view.audit_first``: the twin's publication), durable on return."""
        first, view.audit_first = view.audit_first, []
        self.audit.record_all([*first, *entries])

    def _beat_entries(self, beat: Mapping[str, float], cycle: int) -> list[AuditEntry]:
        """``heartbeat.write`` records of ``beat`` (none for no heartbeat)."""
        detail = {"run_id": self.run_id, "cycle": cycle}
        return [
            AuditEntry(
                "heartbeat.write",
                tag,
                f"watchdog heartbeat of cycle {cycle}",
                new_value=value,
                actor=self.actor,
                detail=detail,
            )
            for tag, value in beat.items()
        ]

    def too_soon(self, view: CycleView) -> bool:
        """Two setpoint writes are never closer than ``min_write_interval``: a held cycle
        (a problem; the move limits count from what the PLC has)."""
        now = self.clock.now()
        last = self._last_write_t
        if last is None or now - last >= self.min_write_interval_s:
            return False
        self.counters.write_spacing_holds += 1
        self._problem(
            view,
            f"setpoints last written {now - last:.3g} s ago, less than the minimum interval "
            f"of {self.min_write_interval_s:.3g} s: held",
        )
        self.pipeline.resync(self.pipeline.working)
        return True

    async def setpoints(
        self,
        view: CycleView,
        mode: Mode,
        state: State,
        heartbeat: Mapping[str, float] | None = None,
    ) -> bool:
        """Audit, then write the cycle's safe setpoints, with the ``heartbeat`` if given (one
        write: :meth:`_with_heartbeat`); False when the setpoints' write failed, was refused
        or their read-back cannot be trusted (a problem of the cycle, as is a failed
        heartbeat). Setpoints the PLC may or may not have applied (no answer, a failed or
        untrusted read-back) are unknown to the pipeline until :meth:`settle`."""
        beat = dict(heartbeat or {})
        if view.outcome is None or view.decision is None or not view.outcome.setpoints:
            if beat:
                await self.heartbeat(view, beat)
            return True
        if self.pipeline.unsure:  # the supervisor holds first (settle): never reached
            self._problem(view, f"the PLC's {sorted(self.pipeline.unsure)} unknown: held")
            if beat:
                await self.heartbeat(view, beat)
            return False
        values = {self.sp_tags[n]: v for n, v in view.outcome.setpoints.items()}
        self._audit_setpoints(view, view.outcome, view.decision, mode, state, beat)
        self._last_write_t = self.clock.now()
        report = await self._with_heartbeat(beat, values, view)
        have = dict(self.pipeline.working)
        trusted, unknown, confirmed = True, [], []
        for name, value in view.outcome.setpoints.items():
            result = report.results.get(self.sp_tags[name]) if report is not None else None
            if result is None or result.status is WriteStatus.FAILED:
                unknown.append(name)  # no answer, or sent but not confirmed: applied or not
            elif result.status is WriteStatus.OK:
                # what the PLC stores (a register's resolution, a float32 node), as its working
                # setpoint will read next cycle; the request when the port gives no read-back
                rb = result.readback
                have[name] = float(rb) if rb is not None and math.isfinite(rb) else float(value)
                confirmed.append(name)
            elif result.status is WriteStatus.MISMATCH:
                if self._take_readback(name, result.readback, have, view):
                    confirmed.append(name)  # a trusted read-back is what the PLC has
                else:
                    trusted = False
                    unknown.append(name)
        # what the PLC confirmed it has; unknown: nothing; refused or not sent: as it was
        self._confirmed |= {name: have[name] for name in confirmed}
        for name in unknown:
            self._confirmed.pop(name, None)
        # The safety layer took its outcome as applied; when it was not (or not all of it),
        # the move limits must count from what the PLC really has, or held cycles add up.
        # When nobody knows (the outcome is unknown), the next cycle learns it (settle).
        self.pipeline.resync(have)
        self.pipeline.unknown(unknown)
        results = report.results if report is not None else {}
        sent = all(t in results and results[t].status is WriteStatus.OK for t in values)
        if not sent or not trusted:
            return False
        self.counters.writes += 1
        view.written.update(values)
        return True

    async def _with_heartbeat(
        self, beat: Mapping[str, float], values: Mapping[str, float], view: CycleView
    ) -> WriteReport | None:
        """The heartbeat and the setpoints in one write: over OPC UA one Write and one Read
        call fewer per cycle (over Modbus their registers are apart: a request each still).
        The heartbeat never depends on the setpoints: when a refused setpoint kept the port
        from sending any of the write (the heartbeat NOT_SENT), the heartbeat goes alone (it
        was audited with the setpoints)."""
        report = await self.write({**beat, **values}, view)
        results = report.results if report is not None else {}
        if any(t in results and results[t].status is WriteStatus.NOT_SENT for t in beat):
            await self.write(beat, view)
        return report

    def engaged(self) -> None:
        """The PLC handed control to the MPC (again): what it ran before is past."""
        self._unapplied, self._moved_before = None, False
        self._confirmed.clear()

    def settle(self, working_now: Mapping[str, float], view: CycleView) -> None:
        """While the MPC has control, what the PLC has is its trusted working setpoint as
        read this cycle (``working_now``): the move limits count from it and the next write's
        audit names it as the old value (it is what was written, unless the PLC or someone
        moved it, or a write's outcome was unknown). After a write of unknown outcome whose
        working setpoint cannot be trusted the move limits have no origin: a problem of the
        cycle (held, nothing written)."""
        unsure = self.pipeline.unsure
        before = dict(self.pipeline.working)
        left = self.pipeline.settle(working_now)
        moved, compared = [], False
        for name, value in working_now.items():
            if name in unsure:
                continue
            tag = self.sp_tags.get(name, name)
            confirmed = self._confirmed.get(name)  # not the move origin: a late scan catches up
            compared = compared or confirmed is not None
            if confirmed is not None and abs(value - confirmed) > self._step(name, confirmed):
                moved.append(f"{tag} = {value!r} where {confirmed!r} was written and confirmed")
                continue
            held = before.get(name)
            if held is None or value == held:
                continue
            log.info(  # what the working-setpoint tag can hold differs from the setpoint's
                "cycle %d: the PLC has %s = %r where %r was assumed: the move limits count "
                "from what it has",
                view.cycle,
                tag,
                value,
                held,
            )
        self._check_applied(moved, view, compared)
        for name in sorted(unsure - left):
            log.warning(
                "cycle %d: the outcome of the last write of %s was unknown; the PLC has %r "
                "(its working setpoint; %r was assumed): the move limits count from it",
                view.cycle,
                self.sp_tags.get(name, name),
                self.pipeline.working.get(name),
                before.get(name),
            )
        if left:
            self._problem(
                view,
                f"the outcome of the last write of {sorted(left)} is unknown and their working "
                "setpoints cannot be trusted: no origin for the move limits, held",
            )

    def _check_applied(self, moved: list[str], view: CycleView, compared: bool) -> None:
        """``moved``: this cycle's working setpoints other than the values written and
        confirmed. One such cycle is a warning (a PLC that publishes its working setpoint a
        scan late, a value moved once); two in a row are a problem (counted in
        ``unapplied_setpoints``), and so is every cycle after it until the PLC hands control
        back (:meth:`engaged` forgets it). A cycle that could compare nothing (``compared``
        False: the outcome of the last write unknown) neither counts nor breaks the row."""
        text = "; ".join(moved)
        if moved and not self._moved_before:
            log.warning(
                "cycle %d: the PLC has %s: if it does not run the MPC's setpoints next cycle "
                "either, the runtime holds until it hands control back",
                view.cycle,
                text,
            )
        elif moved:
            self.counters.unapplied_setpoints += 1
            self._unapplied = self._unapplied or f"cycle {view.cycle}: {text}"
            self._problem(
                view,
                f"the PLC runs {text}, as in the cycle before: it does not run the MPC's "
                "setpoints (or someone moves them) while it reports the MPC active: held until "
                "it hands control back; the move limits count from what it has",
            )
        elif self._unapplied is not None:
            self._problem(
                view,
                f"the PLC did not run the MPC's setpoints ({self._unapplied}): held until it "
                "hands control back",
            )
        self._moved_before = bool(moved) if compared else self._moved_before

    def _step(self, name: str, near: float) -> float:
        """How far the PLC's working setpoint of ``name`` may read from the value written and
        confirmed without saying anything: the coarser step of the two tags (the setpoint's
        and the working setpoint's, on either protocol they have) near it."""
        steps = [1e-9 * max(1.0, abs(near))]  # as the PLC's own check (hil.vplc)
        for tag in (t for t in self._pair.get(name, ()) if t is not None):
            spec = self.tags.tags[tag]
            steps += [resolution(tag, spec, protocol, near) for protocol in ("modbus", "opcua")]
        return max(steps)

    def _audit_setpoints(
        self,
        view: CycleView,
        outcome: SafetyOutcome,
        decision: Decision,
        mode: Mode,
        state: State,
        beat: Mapping[str, float],
    ) -> None:
        """One transaction: every setpoint of the decision, and the heartbeat written with
        them (and what the cycle staged), durable before the write."""
        cycle = view.cycle
        decision_id = f"{self.run_id}:{cycle}"
        changes = [
            {
                "input": i.name,
                "proposed": i.proposed,
                "applied": i.applied,
                "reason": i.reason.value,
            }
            for i in outcome.interventions
        ]
        detail = {
            "decision_id": decision_id,
            "mode": mode.value,
            "state": state.value,
            "solver_status": decision.status.value,
            "return_status": decision.return_status,
            "safety_changes": changes,
            "config_hash": self.audit.config_hash,
            "model": self.pipeline.model.name,
            "model_version": self.model_version,
        }
        working = self.pipeline.working
        self._commit(
            view,
            [
                AuditEntry(
                    "setpoint.write",
                    self.sp_tags[name],
                    f"MPC decision {decision_id}",
                    old_value=working.get(name),
                    new_value=value,
                    actor=self.actor,
                    detail=dict(detail),
                )
                for name, value in outcome.setpoints.items()
            ]
            + self._beat_entries(beat, cycle),
        )

    def _take_readback(
        self, name: str, readback: float | None, have: dict[str, float], view: CycleView
    ) -> bool:
        """What the PLC reports it has (a write answered MISMATCH) becomes the move limits'
        origin in ``have``, if it can be trusted: a finite number within the setpoint tag's
        limits. Otherwise the last trusted value stays, and the cycle has a problem."""
        tag = self.sp_tags[name]
        limits = self.tags.tags[tag].limits
        value = math.nan if readback is None else float(readback)
        if math.isfinite(value) and (limits is None or limits[0] <= value <= limits[1]):
            have[name] = value
            return True
        self.counters.readback_failures += 1
        allowed = f"within {list(limits)}" if limits is not None else "finite"
        self._problem(
            view,
            f"read-back of {tag} is {value!r}, not a number the PLC can hold ({allowed}); "
            f"keeping {have.get(name)!r} as its value",
        )
        return False

    async def advise(self, view: CycleView, advisory_tags: Mapping[str, str]) -> None:
        """Shadow mode: recommendations go to the historian and, if configured, advisory tags
        (each value audited before it is sent, ``advisory.write``). A held cycle (the solve
        failed, the data could not be trusted) recommends nothing: its "setpoints" are the
        held ones, the PLC's own; the advisory tags keep the last advice."""
        if view.outcome is None or not view.outcome.setpoints:
            return
        if view.outcome.held:
            why = sorted({i.reason.value for i in view.outcome.interventions}) or ["held"]
            log.info("cycle %d: no recommendation (%s)", view.cycle, ", ".join(why))
            return
        advisory = {
            tag: view.outcome.setpoints[i]
            for i, tag in advisory_tags.items()
            if i in view.outcome.setpoints
        }
        if advisory:
            detail = {"run_id": self.run_id, "cycle": view.cycle, "mode": Mode.SHADOW.value}
            reason = f"recommendation of cycle {view.cycle} (shadow mode: advice, not control)"
            self._commit(
                view,
                [
                    AuditEntry(
                        "advisory.write",
                        tag,
                        reason,
                        old_value=self._advised.get(tag),
                        new_value=value,
                        actor=self.actor,
                        detail=detail,
                    )
                    for tag, value in advisory.items()
                ],
            )
            report = await self.write(advisory, view)
            results = report.results if report is not None else {}
            for tag, result in results.items():
                if result.status is WriteStatus.OK:
                    self._advised[tag] = advisory[tag]
            view.advice_unwritten = sorted(
                t for t in advisory if t not in results or results[t].status is not WriteStatus.OK
            )
        log.info("cycle %d recommendation: %s", view.cycle, dict(view.outcome.setpoints))
