"""Which values the controller may act on, cycle by cycle.

Pure computing: no I/O, no clock, no logging. The supervisor reads a snapshot, hands it to
:meth:`DataTrust.judge`, gives the estimator only the trusted measurements, and asks
:class:`BadMeasurementPolicy` whether the cycle may write.

Every tag the decision depends on is judged:

* the measurements (read-only tags bound to a model output);
* the working setpoints: the PV of each applied setpoint (the setpoint tag itself when the
  map has no PV), whose values become the estimator's inputs and the move limits' origin;
* the PLC's words that vouch for them: ``measurement_validity`` and ``plc_scan_counter``.

A value is trusted when it is present, GOOD (or UNCERTAIN where its tag says
``uncertain_is_good``), a finite number, inside its engineering ``limits`` (the ports flag a
value outside them UNCERTAIN; it is flagged again here whatever the port), inside its
``valid_range``, marked valid by its ``measurement_validity`` bit (an unreadable validity word
vouches for nothing), fresh (``stale_after``; measurements only, a setpoint legitimately keeps
its value and timestamp), and not frozen (``frozen_after`` reads of new PLC images in a row,
GOOD or UNCERTAIN, with the same value, or taking at most ``frozen_values`` different values:
a stuck transmitter whose last digit flickers). A frozen or unreadable ``plc_scan_counter``
makes every measurement stale.

Each distrusted tag is a :class:`Distrust` naming the tag, the value and the reason, in words a
person can act on.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum

from controller.ports.base import NOT_FINITE, Quality, Snapshot, TagValue, flag_implausible
from controller.tags import OnBad, Tag, TagMap

__all__ = [
    "BadMeasurementPolicy",
    "DataTrust",
    "Distrust",
    "Judgement",
    "MeasurementPolicy",
    "PolicyStep",
    "Reason",
    "Use",
]

#: the PLC's contract words that vouch for the measurements
VALIDITY_TAG = "measurement_validity"
SCAN_TAG = "plc_scan_counter"
#: reads of an unchanged scan counter after which the whole PLC image is stale
SCAN_FROZEN_AFTER = 3


class Reason(StrEnum):
    """Why a value is not trusted in this cycle."""

    MISSING = "missing"
    BAD = "bad quality"
    UNCERTAIN = "uncertain quality"
    NON_FINITE = "not a finite number"
    IMPLAUSIBLE = "outside its valid range"
    INVALID = "marked invalid by the PLC"
    STALE = "stale"
    FROZEN = "frozen"
    REJECTED = "rejected by the estimator's innovation gate"


@dataclass(frozen=True)
class Distrust:
    """One tag the controller does not trust in this cycle."""

    tag: str
    reason: Reason
    value: float
    detail: str = ""

    @property
    def sent_non_finite(self) -> bool:
        """A NaN or infinity the PLC sent as a value (GOOD or UNCERTAIN; a port or the
        judgement made it BAD saying :data:`NOT_FINITE`), not a NaN standing for none."""
        return self.reason is Reason.NON_FINITE or (
            not math.isfinite(self.value) and self.detail.startswith(NOT_FINITE)
        )

    def __str__(self) -> str:
        """In words. A NaN that stands for no usable value (a Bad status, a value of the
        wrong type, nothing read) is not shown as "nan": the detail says what was sent."""
        extra = f": {self.detail}" if self.detail else ""
        if math.isfinite(self.value) or self.sent_non_finite:
            return f"{self.tag} = {self.value:.6g} {self.reason.value}{extra}"
        return f"{self.tag} (no usable value) {self.reason.value}{extra}"


@dataclass(frozen=True)
class Judgement:
    """What one snapshot may be used for.

    ``measured``: output -> trusted value; ``working``: input -> trusted working setpoint;
    ``outputs`` / ``inputs``: the model name -> why it is not trusted; ``contract``: the
    validity word and scan counter when they cannot vouch for the data; ``snapshot``: the read
    with every value flagged as the ports flag them.
    """

    snapshot: Snapshot
    measured: dict[str, float] = field(default_factory=dict)
    working: dict[str, float] = field(default_factory=dict)
    outputs: dict[str, Distrust] = field(default_factory=dict)
    inputs: dict[str, Distrust] = field(default_factory=dict)
    contract: list[Distrust] = field(default_factory=list)

    @property
    def distrusted(self) -> list[Distrust]:
        """Every distrusted tag: contract words, measurements, then working setpoints."""
        return [*self.contract, *self.outputs.values(), *self.inputs.values()]


@dataclass
class _Repeats:
    """A tag's latest reads that carry a value (at most ``frozen_after``) and how long they
    have been frozen."""

    window: deque[float]
    count: int = 0  # reads in the current frozen run (0: not frozen)
    untrusted: bool = False  # the latest counted read was one the tag does not trust
    same: int = 0  # the latest counted reads in a row with the latest's value

    def add(self, value: float, values: int) -> int:
        """Add a read; the reads in a row that are frozen so far: every ``frozen_after`` of
        them in a row taking at most ``values`` different values (1: all the same)."""
        w = self.window
        self.same = self.same + 1 if w and w[-1] == value else 1
        w.append(value)
        if len(w) == w.maxlen and len(set(w)) <= values:
            self.count = self.count + 1 if self.count else len(w)
        else:
            self.count = 0
        return self.count


def _values(window: Iterable[float]) -> str:
    return " / ".join(f"{v:.9g}" for v in sorted(set(window)))


class DataTrust:
    """Judges every tag the decision depends on (remembers repeats for ``frozen_after``).

    ``outputs``: model output -> its measurement tag; ``working``: model input -> the tag that
    reads its working setpoint; ``validity_order``: the tags of the validity word's bits.
    """

    def __init__(
        self,
        tags: TagMap,
        outputs: Mapping[str, str],
        working: Mapping[str, str],
        validity_order: Sequence[str],
    ) -> None:
        self.tags = tags.tags
        self.outputs, self.working = dict(outputs), dict(working)
        self.validity_order = list(validity_order)
        self._repeats: dict[str, _Repeats] = {}  # tag -> its latest reads with a value
        self._last_scan: float | None = None
        self._scan_repeats = 0
        #: this read's PLC image is the previous read's (the scan counter did not move): a
        #: value read again from it is no new sample of the transmitter
        self._same_image = False
        #: process seconds per wall second of the run's clock (a scaled HIL run: > 1)
        self.rate = 1.0
        #: in a scaled-clock run a measurement is stale only when it is older than its
        #: ``stale_after`` in process time AND older than this in wall time: at 10 800 x, a read
        #: that a busy machine delayed by 3 ms is 30 process seconds old, not stale. A PLC that
        #: stopped updating is still caught by its frozen scan counter.
        self.wall_floor_s = 1.0

    def judge(self, snap: Snapshot) -> Judgement:
        values = {n: flag_implausible(v, self.tags.get(n)) for n, v in snap.values.items()}
        out = Judgement(Snapshot(values, snap.read_time))
        invalid = self._invalid(values, out.contract)
        plc_stale = self._scan_stale(values, out.contract)
        for name, tag in self.outputs.items():
            why = self._value(tag, values.get(tag), snap.read_time, measurement=True)
            if why is None and tag in invalid:
                why = Distrust(tag, Reason.INVALID, values[tag].value, invalid[tag])
            if why is None and plc_stale:
                why = Distrust(tag, Reason.STALE, values[tag].value, "the PLC image is stale")
            if why is None:
                out.measured[name] = values[tag].value
            else:
                out.outputs[name] = why
        for name, tag in self.working.items():
            why = self._value(tag, values.get(tag), snap.read_time, measurement=False)
            if why is None:
                out.working[name] = values[tag].value
            else:
                out.inputs[name] = why
        return out

    # ------------------------------------------------------------------ one value
    def _value(
        self, name: str, tv: TagValue | None, now: float, *, measurement: bool
    ) -> Distrust | None:
        tag = self.tags[name]
        if tv is None:
            return Distrust(name, Reason.MISSING, math.nan, "not in the read")
        why = self._doubt(name, tag, tv)
        frozen = self._frozen(name, tag, tv, trusted=why is None) if measurement else None
        if why is not None:
            return why
        age = tv.age(now)
        if measurement and not self._fresh(age, tag.stale_after):  # NaN age: stale
            what = f"{age:.3g} s old, allowed {tag.stale_after:g} s"
            return Distrust(name, Reason.STALE, tv.value, what)
        if measurement and not self._fresh(-age, tag.stale_after):
            # a stamp ahead of this clock by more than the staleness allowance (the PLC's clock
            # is ahead, or this one stepped back): how old the value is cannot be known, and a
            # value stuck for an hour would pass as fresh for that hour
            what = (
                f"its source timestamp is {-age:.3g} s in the future (allowed "
                f"{tag.stale_after:g} s): its age cannot be known; check the clocks"
            )
            return Distrust(name, Reason.STALE, tv.value, what)
        return frozen

    @staticmethod
    def _doubt(name: str, tag: Tag, tv: TagValue) -> Distrust | None:
        """What is wrong with the value itself: its quality, a non-finite number, outside its
        ``valid_range`` (None: nothing)."""
        if tv.quality is Quality.BAD and not tv.detail.startswith(NOT_FINITE):
            return Distrust(name, Reason.BAD, tv.value, tv.detail)
        if not math.isfinite(tv.value):  # read GOOD or UNCERTAIN, flagged BAD by the port
            return Distrust(name, Reason.NON_FINITE, tv.value, tv.detail)
        rng = tag.valid_range
        if rng is not None and not rng[0] <= tv.value <= rng[1]:
            what = f"physically possible: [{rng[0]:g}, {rng[1]:g}] {tag.unit}"
            what += f"; {tv.detail}" if tv.detail else ""
            return Distrust(name, Reason.IMPLAUSIBLE, tv.value, what)
        if tv.quality is Quality.UNCERTAIN and not tag.uncertain_is_good:
            return Distrust(name, Reason.UNCERTAIN, tv.value, tv.detail)
        return None

    def _fresh(self, age: float, stale_after: float) -> bool:
        """Fresh in process time, or (scaled clock) still within the wall-time floor."""
        if age <= stale_after:
            return True
        return self.rate > 1.0 and age / self.rate <= self.wall_floor_s  # False for NaN

    def _frozen(self, name: str, tag: Tag, tv: TagValue, *, trusted: bool) -> Distrust | None:
        """``frozen_after`` reads in a row with exactly the same value (or taking at most the
        tag's ``frozen_values`` different values), among the reads of new PLC images (a value
        read again while the scan counter stood still is not counted) that carry a value: GOOD
        or UNCERTAIN, trusted or not. A stuck value read UNCERTAIN, or alternating between the
        two, is as stuck: on a tag that does not trust UNCERTAIN, ending the run there let the
        GOOD reads between write from a stuck transmitter. A BAD or non-finite read ends the
        run; a change of quality alone does not, and a ``trusted`` read (nothing wrong with
        its value itself: :meth:`_doubt`) of a value the run has not seen, after an untrusted
        one, starts a new run."""
        if tag.frozen_after is None:
            return None
        if tv.quality is Quality.BAD or not math.isfinite(tv.value):
            self._repeats.pop(name, None)
            return None
        seen = self._repeats.get(name)
        if seen is None:
            seen = self._repeats[name] = _Repeats(deque(maxlen=tag.frozen_after))
        # The same value read again from the same PLC image (the scan counter did not move: the
        # controller reads faster than the PLC publishes, as a HIL at rate 600 does) is no new
        # sample: counting it held live analysers (four reads of two images are two values).
        again = self._same_image and bool(seen.window) and seen.window[-1] == tv.value
        if trusted and seen.untrusted and tv.value not in seen.window:
            # a new value after a stretch it did not trust (an analyser held at its last
            # value, flagged UNCERTAIN, through a calibration, or pinned outside its range) is
            # live again: a new run
            seen.window.clear()
            seen.count = 0
        if not again:
            seen.untrusted = not trusted
        count = seen.count if again else seen.add(tv.value, tag.frozen_values or 1)
        if count < tag.frozen_after:
            return None
        if len(set(seen.window)) == 1:
            detail = f"the same value for {seen.same} reads (frozen_after {tag.frozen_after})"
        else:
            detail = (
                f"{count} reads in a row, every {tag.frozen_after} of them taking at most "
                f"{tag.frozen_values} values ({_values(seen.window)}; frozen_after "
                f"{tag.frozen_after}, frozen_values {tag.frozen_values})"
            )
        return Distrust(name, Reason.FROZEN, tv.value, detail)

    # ------------------------------------------------------------------ contract words
    def _invalid(self, values: Mapping[str, TagValue], contract: list[Distrust]) -> dict[str, str]:
        """Measurement tag -> why its validity bit does not vouch for it."""
        word = values.get(VALIDITY_TAG)
        if word is None:
            return {}
        covered = self.validity_order[:16]
        if word.quality is not Quality.GOOD or not _is_word(word.value):
            why = Distrust(VALIDITY_TAG, _reason(word), word.value, word.detail or "not a word")
            contract.append(why)
            return {t: f"the validity word is unreadable ({why.reason.value})" for t in covered}
        bits = int(word.value)
        return {t: f"bit {i} clear" for i, t in enumerate(covered) if not bits >> i & 1}

    def _scan_stale(self, values: Mapping[str, TagValue], contract: list[Distrust]) -> bool:
        """True when the PLC's scan counter froze or cannot be read (nothing is fresh)."""
        scan = values.get(SCAN_TAG)
        self._same_image = False
        if scan is None:
            return False
        if scan.quality is not Quality.GOOD or not math.isfinite(scan.value):
            self._last_scan, self._scan_repeats = None, 0
            contract.append(Distrust(SCAN_TAG, _reason(scan), scan.value, scan.detail))
            return True
        same = scan.value == self._last_scan
        self._same_image = same
        self._scan_repeats = self._scan_repeats + 1 if same else 1
        self._last_scan = scan.value
        if self._scan_repeats < SCAN_FROZEN_AFTER:
            return False
        detail = f"unchanged for {self._scan_repeats} reads: the PLC stopped scanning"
        contract.append(Distrust(SCAN_TAG, Reason.FROZEN, scan.value, detail))
        return True


def _reason(tv: TagValue) -> Reason:
    if tv.quality is Quality.BAD:
        return Reason.BAD
    if not math.isfinite(tv.value):
        return Reason.NON_FINITE
    return Reason.UNCERTAIN if tv.quality is Quality.UNCERTAIN else Reason.IMPLAUSIBLE


def _is_word(value: float) -> bool:
    return math.isfinite(value) and value == int(value) and 0 <= value <= 0xFFFF


# ---------------------------------------------------------------------- the policy
class Use(StrEnum):
    """How the runtime uses one measured output in this cycle."""

    MEASURED = "measured"  # trusted: the estimator corrects with it
    PREDICTED = "predicted"  # untrusted, riding on the model's prediction (on_bad: predict)
    HELD = "held"  # untrusted: the setpoints are held


#: the historian's number for each use (``data.use.<tag>`` in a cycle's figures)
USE_CODE = {Use.MEASURED: 0.0, Use.PREDICTED: 1.0, Use.HELD: 2.0}


@dataclass(frozen=True)
class MeasurementPolicy:
    """The bad-measurement policy of one measured output (from its tag)."""

    on_bad: OnBad = "hold"
    predict_cycles: int = 0
    uncertain_is_good: bool = False

    @classmethod
    def of(cls, tag: Tag) -> MeasurementPolicy:
        return cls(tag.on_bad, tag.predict_cycles or 0, tag.uncertain_is_good)

    def describe(self) -> str:
        ride = (
            f"ride on the model's prediction for at most {self.predict_cycles} cycles, then hold"
            if self.on_bad == "predict"
            else "hold the setpoints"
        )
        good = "counts" if self.uncertain_is_good else "does not count"
        return f"on bad data {ride}; uncertain {good} as good"


@dataclass(frozen=True)
class PolicyStep:
    """What the policy decided in one cycle.

    ``use``: output -> how it is used; ``changes``: output -> (old use, new use) for the
    outputs whose use changed this cycle (audited); ``riding``: output -> cycles in a row on
    the prediction, this one included.
    """

    use: dict[str, Use]
    changes: dict[str, tuple[Use, Use]]
    riding: dict[str, int]

    @property
    def held(self) -> list[str]:
        return [o for o, u in self.use.items() if u is Use.HELD]

    @property
    def predicted(self) -> list[str]:
        return [o for o, u in self.use.items() if u is Use.PREDICTED]


class BadMeasurementPolicy:
    """Applies each output's :class:`MeasurementPolicy`, cycle after cycle.

    An untrusted output with ``on_bad: hold`` holds the cycle. With ``on_bad: predict`` it
    rides on the model's prediction for ``predict_cycles`` cycles in a row, then holds until
    it is trusted again (one trusted cycle resets the count).
    """

    def __init__(self, policies: Mapping[str, MeasurementPolicy]) -> None:
        self.policies = dict(policies)
        self._riding: dict[str, int] = {}
        self._use = {o: Use.MEASURED for o in self.policies}

    def step(self, untrusted: Iterable[str]) -> PolicyStep:
        bad = set(untrusted)
        use: dict[str, Use] = {}
        for output, policy in self.policies.items():
            if output not in bad:
                self._riding.pop(output, None)
                use[output] = Use.MEASURED
                continue
            n = self._riding.get(output, 0) + 1
            self._riding[output] = n
            ride = policy.on_bad == "predict" and n <= policy.predict_cycles
            use[output] = Use.PREDICTED if ride else Use.HELD
        changes = {o: (self._use[o], u) for o, u in use.items() if self._use[o] is not u}
        self._use = use
        riding = {o: n for o, n in self._riding.items() if use[o] is Use.PREDICTED}
        return PolicyStep(use, changes, riding)
