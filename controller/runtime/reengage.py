"""When the supervisor asks the PLC for control again by itself, after a fallback.

A review watched a closed loop flap: FALLBACK -> REQUESTING on the first clean cycle the PLC
permitted, a request written on a cycle of bad data, RUNNING, HOLD, FALLBACK again (the bad
cycles counted from before it engaged), 15 times in 100 s. Now, after a fallback, the
supervisor asks again only when the PLC permits it and the last ``max_bad_cycles`` cycles in a
row were clean (:meth:`Reengagement.ready`), at most ``runtime.reengage_limit`` times in a run
(then an operator asks, from the operator view: "Default to operator re-enable after a
fallback", the field notes say), and only on a clean cycle (:meth:`Supervisor._send`); the
bad cycles count from zero when it engages.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

log = logging.getLogger("pharmatwin.supervisor")

#: the problem of a cycle in which the PLC reports an mpc_active nobody here asked for
TAKEN = (
    "the PLC reports mpc_active before this runtime asked for control: another controller "
    "(or a stale flag) has the MPC; writing nothing, not the heartbeat nor mpc_request, "
    "until the PLC clears mpc_active"
)


@dataclass
class Reengagement:
    """The automatic re-engagements of one run (``enabled``: ``runtime.reengage``)."""

    enabled: bool
    clean_needed: int  # runtime.max_bad_cycles
    limit: int  # runtime.reengage_limit
    clean: int = 0  # clean cycles in a row in this FALLBACK
    done: int = 0  # automatic re-engagements so far
    told: bool = False  # the limit was logged

    def fell_back(self) -> None:
        self.clean = 0

    def ready(self, permissive: bool | None, clean: bool) -> bool:
        """In FALLBACK, once per cycle: ask for control again now? ``clean``: the last cycle
        had no problem."""
        self.clean = self.clean + 1 if clean else 0
        if not (self.enabled and permissive) or self.clean < self.clean_needed:
            return False
        if self.done >= self.limit:
            if not self.told:
                self.told = True
                log.warning(
                    "not asking for control again by itself: %d automatic re-engagements in "
                    "this run (runtime.reengage_limit %d); an operator may request control",
                    self.done,
                    self.limit,
                )
            return False
        self.done += 1
        self.clean = 0
        return True

    def why(self) -> str:
        return (
            f"the PLC permits re-engaging after {self.clean_needed} clean cycles in a row "
            f"(automatic re-engagement {self.done} of {self.limit})"
        )
