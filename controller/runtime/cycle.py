"""The supervisor's vocabulary: its states and modes, its counters, and what one cycle saw.

:class:`State` and :class:`Mode` name where the supervisor
(:class:`controller.runtime.supervisor.Supervisor`) is and how it runs; :class:`Counters`
count what went wrong, run-long; :class:`CycleView` is what one cycle saw and did, handed to
the historian, the metrics, the status file and the tests. Plain data, and :func:`flag`: how
the supervisor reads a flag of the PLC's handshake (``mpc_active``, ``mpc_permissive``).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from enum import StrEnum

from controller.core.estimate import Estimate
from controller.core.mpc import Decision
from controller.core.safety import Reason, SafetyOutcome
from controller.errors import PortError
from controller.ports.base import Quality, Snapshot, WriteReport
from controller.runtime.audit_chain import AuditEntry
from controller.runtime.historian_records import HistorianEvent

__all__ = ["Counters", "CycleView", "Mode", "Rider", "State", "flag", "flag_reading"]


class State(StrEnum):
    INIT = "INIT"
    SHADOW = "SHADOW"
    REQUESTING = "REQUESTING"
    RUNNING = "RUNNING"
    HOLD = "HOLD"
    FALLBACK = "FALLBACK"
    #: an operator released control (:meth:`Supervisor.release_control`): ``mpc_request``
    #: cleared, the PLC drives, the MPC only recommends, until an operator requests again
    RELEASED = "RELEASED"
    STOPPED = "STOPPED"


class Mode(StrEnum):
    SHADOW = "shadow"
    CLOSED_LOOP = "closed-loop"


@dataclass
class Counters:
    cycles: int = 0
    bad_in_a_row: int = 0
    bad_data: int = 0
    stale_data: int = 0
    failed_solves: int = 0
    late_solves: int = 0
    overruns: int = 0
    failed_writes: int = 0
    read_failures: int = 0
    writes: int = 0
    fallbacks: int = 0
    drift_alarms: int = 0
    publish_failures: int = 0
    twin_failures: int = 0
    #: data trust (see :mod:`controller.runtime.trust`): values outside their tag's ``valid_range``,
    #: values that are not finite numbers, measurements the innovation gate rejected, cycles
    #: riding on the model's prediction for a measurement, working setpoints not trusted
    implausible_values: int = 0
    non_finite_values: int = 0
    gate_rejections: int = 0
    predicted_cycles: int = 0
    untrusted_working: int = 0
    estimator_failures: int = 0
    #: read-backs that were not a finite number within the tag's limits
    readback_failures: int = 0
    #: stalls (woke up more than half a sample late), the whole cycles they skipped, and
    #: setpoint writes held because the last one was less than ``min_write_interval`` ago
    stalls: int = 0
    skipped_cycles: int = 0
    write_spacing_holds: int = 0
    #: cycles waiting, writing nothing, while the PLC reported mpc_active this runtime had not
    #: asked for (another controller had the MPC)
    taken_cycles: int = 0
    #: cycles in which the PLC, reporting the MPC active, ran a setpoint other than the one
    #: written and confirmed (held)
    unapplied_setpoints: int = 0


@dataclass(frozen=True)
class Rider:
    """A write of the twin's own tags (its publication) that goes with the cycle's first
    control write sent once the rider's audit record is committed (``audit_first`` empty):
    in the same request where the port can (:meth:`controller.ports.base.Port.write_each`:
    one OPC UA Write and one Read for both), checked and reported on its own, never a
    problem of the control cycle. ``sent`` takes the cycle's view and the rider's report, or
    the error that kept it from being sent (the view is handed in, not held: no reference
    cycle between a view and its rider)."""

    values: Mapping[str, float]
    sent: Callable[[CycleView, WriteReport | PortError], None]


@dataclass
class CycleView:
    """What one cycle saw and did (handed to the historian and to tests)."""

    cycle: int
    t: float
    state: State
    snapshot: Snapshot | None
    estimate: Estimate | None = None
    decision: Decision | None = None
    outcome: SafetyOutcome | None = None
    written: dict[str, float] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)
    #: the twin's figures this cycle (drift statistics, maintenance forecasts, publications)
    monitor: dict[str, float] = field(default_factory=dict)
    #: what the twin noticed this cycle (drift alarms raised and cleared), for the historian
    events: list[HistorianEvent] = field(default_factory=list)
    #: the solve did not deliver: the solver failed or raised, was late, or overran (as the
    #: runtime counts it; a cycle held for bad data is no failed solve)
    solve_failed: bool = False
    #: audit records of writes later in this cycle (the twin's publication), committed with
    #: the cycle's first audited write, or before their own (one transaction, not two)
    audit_first: list[AuditEntry] = field(default_factory=list)
    #: the twin's publication, to go with the cycle's first control write (None: none, or gone)
    rider: Rider | None = None
    #: shadow mode: the advisory tags of the cycle's advice that were not written (the write
    #: failed or was refused; the problem says why)
    advice_unwritten: list[str] = field(default_factory=list)
    #: the PLC reported an mpc_active this runtime had not asked for: it wrote nothing
    taken: bool = False


def flag(snap: Snapshot, tag: str) -> bool | None:
    """A handshake flag as the PLC reports it; None when it cannot be trusted (missing, not
    GOOD, or neither 0 nor 1)."""
    tv = snap.values.get(tag)
    if tv is None or tv.quality is not Quality.GOOD or tv.value not in (0.0, 1.0):
        return None
    return bool(tv.value)


def flag_reading(snap: Snapshot, tag: str) -> str:
    """What was read of a flag, for a problem's text."""
    tv = snap.values.get(tag)
    return "not read" if tv is None else f"read {tv.value!r} with {tv.quality.value} quality"


def unreachable(outcome: SafetyOutcome | None) -> str | None:
    """Why the cycle cannot set an input (the safety layer found no safe value for it: its
    last value outside the limits and out of reach within one move, or unknown), or None.

    While the MPC has control this is a problem of the cycle: without it the controller
    stayed RUNNING, feeding the PLC's watchdog, while an input it cannot set sat where the
    PLC left it, outside the controller's limits, cycle after cycle."""
    stuck = [
        i for i in (outcome.interventions if outcome else ()) if i.reason is Reason.NO_SAFE_VALUE
    ]
    if not stuck:
        return None
    return "cannot set " + "; ".join(i.detail for i in stuck)
