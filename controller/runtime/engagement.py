"""A run's verdict: what ``pharmatwin run`` saw of the PLC, cycle by cycle, and whether the run
did what its mode promises (pure: fed the supervisor's cycle views, no I/O).

A run fails, with one sentence saying why, when:

- a failure aborted it once it had started (:attr:`Engagement.aborted`: e.g. the audit trail
  could not be written);
- no read of the PLC succeeded;
- the PLC could not be read in the run's last cycles (it ended out of touch with the PLC);
- the PLC was read in fewer than half of its cycles (most of the run saw nothing);
- shadow mode: no cycle gave a recommendation (every one was held, or failed), or the run
  ended without advising: its last ``max_bad_cycles`` cycles (the site's
  ``runtime.max_bad_cycles``, the bad cycles in a row that make a closed loop fall back) or
  more gave no recommendation, or gave one whose advisory write failed or was refused (the
  shadow run's counterpart of a closed loop that ended in FALLBACK);
- closed loop: the MPC never got control (the PLC never permitted it, never reported it
  active, or its working setpoints were never readable), or it lost control (FALLBACK) and
  had not got it back when the run ended.

A run the MPC controlled to its end, with fallbacks on the way that it recovered from,
did its job; the summary counts the fallbacks. An operator's release is not a failure. So does
a shadow run that advised at its end after held cycles or refused advisory writes on the way.

A failed or refused advisory write is the cycle's ``advice_unwritten`` (the advisory tags
:meth:`ControlWriter.advise <controller.runtime.writes.ControlWriter.advise>` could not write),
the cycle's problem says why.
"""

from __future__ import annotations

from dataclasses import dataclass

from controller.ports.base import Quality, Snapshot
from controller.runtime.cycle import CycleView, Mode, State
from controller.runtime.site import RuntimeSettings

__all__ = ["IN_CONTROL", "Engagement"]

#: the supervisor's states in which the MPC has control (HOLD: in control, holding)
IN_CONTROL = frozenset({State.RUNNING, State.HOLD})
#: ``runtime.max_bad_cycles`` of a site that does not set it
MAX_BAD_CYCLES: int = RuntimeSettings.model_fields["max_bad_cycles"].default


@dataclass
class Engagement:
    """What a run saw of the PLC and its handshake, cycle by cycle, for the run's verdict."""

    mode: Mode
    where: str  # the PLC's address, for the sentences
    cycles: int = 0
    reads: int = 0  # cycles whose read of the PLC succeeded
    unread_in_a_row: int = 0  # the cycles since the last one that read the PLC
    initialized: int = 0  # cycles past INIT (the working setpoints were known)
    in_control: int = 0  # cycles ending in RUNNING or HOLD
    advised: int = 0  # shadow cycles that gave a recommendation (nothing held)
    permitted: int = 0  # cycles that read mpc_permissive set (GOOD)
    permissive_read: int = 0  # cycles that read mpc_permissive with GOOD quality
    interlocked: int = 0  # cycles that read interlock_active set
    alarmed: int = 0  # cycles that read mpc_fallback_alarm set
    lost_control_at: int | None = None  # the cycle that fell back, until control is back
    last_problem: str = ""
    #: the site's runtime.max_bad_cycles: as many cycles in a row without advice (or whose
    #: advisory writes failed) at the end fail a shadow run, as they make a closed loop fall back
    max_bad_cycles: int = MAX_BAD_CYCLES
    unadvised_in_a_row: int = 0  # shadow: the cycles since the last one that recommended
    undelivered_in_a_row: int = 0  # shadow: ... that recommended and wrote its advice (if any)
    advice_unwritten: int = 0  # shadow cycles that recommended but whose advisory write failed
    last_write_problem: str = ""  # the last failed or refused advisory write
    aborted: str = ""  # the failure that aborted the run once started (none: it was not)
    taken: int = 0  # cycles the PLC reported an mpc_active this runtime had not asked for
    taken_last: bool = False  # ... and the last cycle was one

    def observe(self, view: CycleView) -> None:
        self.cycles += 1
        in_control = view.state in IN_CONTROL
        self.in_control += in_control
        self.initialized += view.state is not State.INIT
        self.taken += view.taken
        self.taken_last = view.taken
        if in_control:
            self.lost_control_at = None
        elif view.state is State.FALLBACK and self.lost_control_at is None:
            self.lost_control_at = view.cycle
        elif view.state is State.RELEASED:
            self.lost_control_at = None  # an operator's decision, not a lost loop
        if self.mode is Mode.SHADOW:
            self._advice(view)
        if view.problems:
            self.last_problem = view.problems[-1]
        snap = view.snapshot
        if snap is None:
            self.unread_in_a_row += 1
            return
        self.reads += 1
        self.unread_in_a_row = 0
        permissive = _flag(snap, "mpc_permissive")
        self.permissive_read += permissive is not None
        self.permitted += bool(permissive)
        self.interlocked += bool(_flag(snap, "interlock_active"))
        self.alarmed += bool(_flag(snap, "mpc_fallback_alarm"))

    def _advice(self, view: CycleView) -> None:
        """A shadow cycle: did it recommend, and did its advice reach the advisory tags?"""
        outcome = view.outcome
        advised = (
            view.state is State.SHADOW
            and outcome is not None
            and bool(outcome.setpoints)
            and not outcome.held
        )
        unwritten = view.advice_unwritten
        if unwritten:
            why = view.problems[-1] if view.problems else "no answer"
            self.last_write_problem = f"{', '.join(unwritten)} not written: {why}"
        self.advised += advised
        self.advice_unwritten += advised and bool(unwritten)
        self.unadvised_in_a_row = 0 if advised else self.unadvised_in_a_row + 1
        delivered = advised and not unwritten
        self.undelivered_in_a_row = 0 if delivered else self.undelivered_in_a_row + 1

    def verdict(self) -> str | None:
        """None when the run did what its mode promises; else one sentence saying why not."""
        n = _cycles(self.cycles)
        last = f" (last problem: {self.last_problem})" if self.last_problem else ""
        if self.aborted:
            return f"the run was aborted after {n}: {self.aborted}"
        if self.reads == 0:
            return f"no read of the PLC at {self.where} succeeded in {n}{last}"
        if self.unread_in_a_row:
            return (
                f"the PLC at {self.where} could not be read in the last "
                f"{_cycles(self.unread_in_a_row)} of the run: it ended out of touch with the "
                f"PLC{last}"
            )
        if 2 * self.reads < self.cycles:
            return (
                f"the PLC at {self.where} was read in only {self.reads} of {n}; a run must read "
                f"it in at least half of its cycles{last}"
            )
        if self.mode is Mode.SHADOW:
            if not self.advised:
                return f"no recommendation in {n}: every cycle was held or failed{last}"
            return self._ended_advising(last)
        if self.in_control:
            if self.lost_control_at is None:
                return None
            return (
                f"the MPC lost control (FALLBACK) at cycle {self.lost_control_at} and had not "
                f"got it back when the run ended{last}"
            )
        return self._never_engaged(n, last)

    def _ended_advising(self, last: str) -> str | None:
        """None when the shadow run was still recommending, and writing its advice, at its end."""
        k = self.max_bad_cycles
        rule = (
            f"{_cycles(k)} in a row{{}} fail a shadow run, as {k} bad cycles in a row make a "
            "closed loop fall back: runtime.max_bad_cycles"
        )
        if self.unadvised_in_a_row >= k:
            return (
                f"no recommendation in the last {_cycles(self.unadvised_in_a_row)} of the run: "
                f"it ended without advising ({rule.format(' without one')}){last}"
            )
        if self.undelivered_in_a_row >= k:
            problem = f" (last problem: {self.last_write_problem})"
            return (
                f"the advisory writes of the last {_cycles(self.undelivered_in_a_row)} of the "
                "run failed or were refused: its recommendations did not reach the PLC "
                f"({rule.format('')}){problem}"
            )
        return None

    def _never_engaged(self, n: str, last: str) -> str:
        lead = f"the MPC never got control in {n}: "
        if not self.initialized:
            return f"{lead}the PLC's working setpoints were never readable, so it stayed in INIT"
        if self.taken_last:  # still waiting at the end (an earlier episode is no reason)
            return (
                f"{lead}the PLC reported mpc_active before this runtime asked for control in "
                f"{_cycles(self.taken)}, the last ones included (another controller, a stale "
                f"flag, or this runtime's own earlier instance had the MPC): it wrote nothing"
                f"{last}"
            )
        if not self.permissive_read:
            return f"{lead}mpc_permissive was never read with good quality{last}"
        if not self.permitted:
            why = []
            if self.interlocked:
                why.append("interlock_active was set")
            if self.alarmed:
                why.append("mpc_fallback_alarm was latched: an operator reset is needed")
            because = f" ({'; '.join(why)})" if why else ""
            return f"{lead}the PLC never granted mpc_permissive{because}"
        short = " (the PLC answers a request on a later cycle)" if self.cycles < 3 else ""
        granted = "the PLC granted mpc_permissive"
        if self.permitted < self.reads:  # and took it back
            granted += f" in only {self.permitted} of {_cycles(self.reads)}"
        why = []  # what took the permissive away again
        if self.alarmed:
            why.append(
                f"mpc_fallback_alarm was latched in {_cycles(self.alarmed)} (an operator reset "
                "is needed; the PLC latches it when the MPC's heartbeat stays unchanged past its "
                "timeout, e.g. a runtime --rate below the HIL's)"
            )
        if self.interlocked:
            why.append(f"interlock_active was set in {_cycles(self.interlocked)}")
        because = "".join(f"; {w}" for w in why)
        return f"{lead}{granted} but never reported mpc_active{short}{because}{last}"

    def summary(self) -> str:
        if self.mode is Mode.SHADOW:
            unwritten = self.advice_unwritten
            return (
                f"shadow: {self.reads} of {self.cycles} cycles read the PLC, "
                f"{self.advised} gave a recommendation"
                + (f", {unwritten} of them not written to the advisory tags" if unwritten else "")
            )
        return f"closed loop: the MPC had control in {self.in_control} of {self.cycles} cycles"


def _cycles(k: int) -> str:
    return f"{k} cycle{'s' if k != 1 else ''}"


def _flag(snap: Snapshot, tag: str) -> bool | None:
    tv = snap.values.get(tag)
    if tv is None or tv.quality is not Quality.GOOD:
        return None
    return bool(tv.value)
