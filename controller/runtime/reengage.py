"""When the supervisor asks the PLC for control again by itself, after a fallback.

A review watched a closed loop flap: FALLBACK -> REQUESTING on the first clean cycle the PLC
permitted, a request written on a cycle of bad data, RUNNING, HOLD, FALLBACK again (the bad
cycles counted from before it engaged), 15 times in 100 s. Now, after a fallback, the
supervisor asks again only when the PLC permits it and the last ``max_bad_cycles`` cycles in a
row were clean (:meth:`Reengagement.ready`), at most ``runtime.reengage_limit`` times within
``runtime.reengage_window_s`` of the runtime's clock (beyond it an operator asks, from the
operator view: "Default to operator re-enable after a fallback", the field notes say), and
only on a clean cycle (:meth:`Supervisor._send`); the bad cycles count from zero when it
engages.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

from controller.ports.base import WriteReport, WriteStatus
from controller.runtime.site import RuntimeSettings

log = logging.getLogger("pharmatwin.supervisor")

#: the problem of a cycle in which the PLC reports an mpc_active nobody here asked for
TAKEN = (
    "the PLC reports mpc_active before this runtime asked for control: another controller, "
    "a stale flag, or this runtime's own earlier instance that stopped without releasing it "
    "has the MPC; writing nothing, not the heartbeat nor mpc_request, until the PLC clears "
    "mpc_active (it drops a controller whose heartbeat stops: after its heartbeat timeout, "
    "and with its fallback alarm, which may need an operator reset)"
)


@dataclass
class Takeover:
    """An ``mpc_active`` this runtime did not ask for, cycle by cycle (:data:`TAKEN`)."""

    seen: bool = False  # in this episode: until the PLC clears the flag

    def judge(self, requesting: bool, active: bool | None, requested: bool) -> tuple[bool, bool]:
        """(taken this cycle, release first): once the PLC has cleared the flag, the request
        coil still holds the other controller's (or the earlier instance's) 1, so this runtime
        writes 0 before its own 1: the PLC sees a new request, as its rules ask."""
        if requesting and not requested and (active or (self.seen and active is None)):
            self.seen = True  # an untrusted flag does not end it: only a trusted 0 does
            return True, False
        if self.seen and active is False:
            self.seen = False
            return False, True
        return False, False


def not_applied(report: WriteReport, tag: str) -> bool:
    """The write of ``tag`` certainly did not reach the PLC's value: refused, or not sent."""
    result = report.results.get(tag)
    return result is not None and result.status in (WriteStatus.REJECTED, WriteStatus.NOT_SENT)


@dataclass
class Reengagement:
    """The automatic re-engagements of one run (``enabled``: ``runtime.reengage``)."""

    enabled: bool
    clean_needed: int  # runtime.max_bad_cycles
    limit: int  # runtime.reengage_limit
    window_s: float  # runtime.reengage_window_s
    clean: int = 0  # clean cycles in a row in this FALLBACK
    times: list[float] = field(default_factory=list)  # automatic re-engagements, clock s
    told: bool = False  # the limit was logged in this FALLBACK

    @classmethod
    def of(cls, settings: RuntimeSettings) -> Reengagement:
        return cls(
            settings.reengage,
            settings.max_bad_cycles,
            settings.reengage_limit,
            settings.reengage_window_s,
        )

    def fell_back(self) -> None:
        self.clean, self.told = 0, False

    def ready(self, permissive: bool | None, clean: bool, now: float) -> bool:
        """In FALLBACK, once per cycle at ``now`` (the runtime's clock, s): ask for control
        again? ``clean``: the last cycle had no problem."""
        self.clean = self.clean + 1 if clean else 0
        if not (self.enabled and permissive) or self.clean < self.clean_needed:
            return False
        self.times = [t for t in self.times if now - t < self.window_s]
        if len(self.times) >= self.limit:
            if not self.told:
                self.told = True
                log.warning(
                    "not asking for control again by itself: %d automatic re-engagements in "
                    "the last %g s (runtime.reengage_limit %d in runtime.reengage_window_s "
                    "%g); an operator may request control, or it asks again once the oldest "
                    "is %g s old",
                    len(self.times),
                    self.window_s,
                    self.limit,
                    self.window_s,
                    self.window_s,
                )
            return False
        self.times.append(now)
        self.clean = 0
        return True

    def why(self) -> str:
        return (
            f"the PLC permits re-engaging after {self.clean_needed} clean cycles in a row "
            f"(automatic re-engagement {len(self.times)} of {self.limit} in "
            f"{self.window_s:g} s)"
        )
