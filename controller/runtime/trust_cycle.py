"""The data-trust half of a supervisor cycle: estimate from trusted data, then apply policies.

:class:`TrustCycle` takes a cycle's :class:`~controller.runtime.trust.Judgement`, updates the
estimator with the trusted measurements only (the untrusted ones excluded: it rides on its
prediction for them), counts a measurement the innovation gate rejected as untrusted, and
applies each measurement's bad-data policy (``hold`` or ``predict``). It counts every
distrusted value, records each as a historian event (``data.<reason>``), records the use of
every measurement as a figure of the cycle (``data.use.<tag>``: 0, 1, 2), and audits a change
of use (``data.use``) and, once per run, the policy in force (``data.policy``).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Mapping

from controller.core.estimate import Estimate
from controller.core.pipeline import ESTIMATOR_FAILED, ControlPipeline, rejected_outputs
from controller.runtime.audit import AuditTrail
from controller.runtime.cycle import Counters, CycleView
from controller.runtime.historian_records import HistorianEvent
from controller.runtime.trust import (
    USE_CODE,
    BadMeasurementPolicy,
    Distrust,
    Judgement,
    PolicyStep,
    Reason,
    Use,
)

__all__ = ["TrustCycle", "TrustedEstimate"]

log = logging.getLogger("pharmatwin.supervisor")

#: ``(estimate, problem, data_ok, data_fresh)``: act on the estimate only without a problem
TrustedEstimate = tuple[Estimate | None, str, bool, bool]


class TrustCycle:
    """Estimation from trusted data and the records of what was not trusted, cycle by cycle.

    ``y_tags`` maps each measured output to its tag; ``problem(view, text)`` records a
    problem of the cycle (the supervisor's, which logs it with the state).
    """

    def __init__(
        self,
        pipeline: ControlPipeline,
        y_tags: Mapping[str, str],
        policy: BadMeasurementPolicy,
        counters: Counters,
        audit: AuditTrail,
        *,
        run_id: str,
        actor: str,
        problem: Callable[[CycleView, str], None],
    ) -> None:
        self.pipeline, self.y_tags, self.policy = pipeline, y_tags, policy
        self.counters, self.audit = counters, audit
        self.run_id, self.actor, self._problem = run_id, actor, problem
        self._policy_audited = False

    def estimate(self, judged: Judgement, view: CycleView) -> TrustedEstimate:
        """Estimate from the trusted measurements only, then apply each measurement's policy.

        Returns ``(estimate, problem, data_ok, data_fresh)``; the cycle may act on the
        estimate only when there is no problem. Untrusted measurements (and those the
        innovation gate rejects) are left out of the correction: the estimator rides on its
        prediction for them; one whose policy is ``hold`` (or whose ``predict_cycles`` ran
        out) holds the cycle, as do untrusted working setpoints.
        """
        untrusted = set(judged.outputs)
        estimate, problem = self.pipeline.estimate(judged.measured, exclude=sorted(untrusted))
        rejected = () if problem else rejected_outputs(estimate)
        gated = {
            o: Distrust(self.y_tags[o], Reason.REJECTED, judged.measured[o], _gate(estimate, o))
            for o in rejected
            if o in self.y_tags and o in judged.measured
        }
        step = self.policy.step(untrusted | set(gated))
        distrust = {**judged.outputs, **gated}
        self.count([*distrust.values(), *judged.inputs.values()])
        self.counters.gate_rejections += len(gated)
        self.record(view, [*judged.contract, *distrust.values(), *judged.inputs.values()], step)
        if problem.startswith(ESTIMATOR_FAILED):
            self.counters.estimator_failures += 1
            self._problem(view, problem)
        data_ok, fresh = self._held(view, judged, step, distrust)
        if not problem and not (data_ok and fresh):
            problem = "no solve: untrusted data"
        return estimate, problem, data_ok, fresh

    def _held(
        self,
        view: CycleView,
        judged: Judgement,
        step: PolicyStep,
        distrust: Mapping[str, Distrust],
    ) -> tuple[bool, bool]:
        """The problems of the measurements the policies hold, and of untrusted working
        setpoints; returns ``(data_ok, data_fresh)``."""
        stale = {
            o: d for o in step.held if (d := distrust[o]).reason in (Reason.STALE, Reason.FROZEN)
        }
        bad = {o: distrust[o] for o in step.held if o not in stale}
        gated = [d for d in bad.values() if d.reason is Reason.REJECTED]
        quality = [d for d in bad.values() if d.reason is not Reason.REJECTED]
        if bad:
            self.counters.bad_data += 1
        if quality:
            self._problem(view, f"bad-quality inputs {_tags(quality)}")
        if gated:  # good quality, but the model cannot explain them (not "bad quality")
            self._problem(view, f"inputs the estimator's innovation gate rejected {_tags(gated)}")
        if stale:
            self.counters.stale_data += 1
            self._problem(view, f"stale inputs {_tags(stale.values())}")
        if judged.inputs:
            self.counters.untrusted_working += 1
            self._problem(view, f"untrusted working setpoints {_tags(judged.inputs.values())}")
        if step.predicted:
            self.counters.predicted_cycles += 1
            log.warning(
                "cycle %d: riding on the model's prediction for %s",
                view.cycle,
                {
                    self.y_tags[o]: f"{n} of {self.policy.policies[o].predict_cycles}"
                    for o, n in step.riding.items()
                },
            )
        return not bad and not judged.inputs, not stale

    def count(self, distrusted: Iterable[Distrust]) -> None:
        """Count the implausible and the non-finite values among ``distrusted``: non-finite
        only a NaN or infinity the PLC sent as such (GOOD or UNCERTAIN). A value the port could
        not use (a Bad status, a value of the wrong type, none in the read) is held as NaN but
        is no such number: bad quality (``bad_data`` counts the cycles it holds), not counted
        here."""
        for d in distrusted:
            if d.reason is Reason.IMPLAUSIBLE:
                self.counters.implausible_values += 1
            elif d.sent_non_finite:
                self.counters.non_finite_values += 1

    def record(
        self, view: CycleView, distrusted: Iterable[Distrust], step: PolicyStep | Mapping[str, Use]
    ) -> None:
        """Every distrusted value is a historian event; a change of use is audited too; the
        use of every measurement is a figure of the cycle."""
        use = step.use if isinstance(step, PolicyStep) else step
        for d in distrusted:
            kind = f"data.{d.reason.name.lower()}"
            detail = {"value": d.value, "reason": d.reason.value, "detail": d.detail}
            said = str(d)
            view.events.append(HistorianEvent(self.run_id, view.t, kind, d.tag, said, detail))
            log.warning("cycle %d: not trusted: %s", view.cycle, said)
        view.monitor = {
            **view.monitor,
            **{f"data.use.{self.y_tags[o]}": USE_CODE[u] for o, u in use.items()},
        }
        if isinstance(step, PolicyStep):
            self._audit_changes(view, step)

    def _audit_changes(self, view: CycleView, step: PolicyStep) -> None:
        """A measurement whose use changed: audited, logged, an event for the historian."""
        for output, (old, new) in step.changes.items():
            tag, policy = self.y_tags[output], self.policy.policies[output]
            why = f"{tag} is now {new.value} ({policy.describe()})"
            self.audit.record(
                "data.use",
                tag,
                reason=why,
                old_value=old.value,
                new_value=new.value,
                actor=self.actor,
                detail={"run_id": self.run_id, "cycle": view.cycle, "output": output},
            )
            log.warning("cycle %d: %s", view.cycle, why)
            detail = {"old": old.value, "new": new.value, "policy": policy.describe()}
            view.events.append(HistorianEvent(self.run_id, view.t, "data.use", tag, why, detail))

    def audit_policy(self, view: CycleView) -> None:
        """The bad-measurement policy in force, once per run (its first cycle): audited, and
        an event for the historian."""
        if self._policy_audited:
            return
        self._policy_audited = True
        for output, policy in self.policy.policies.items():
            tag = self.y_tags[output]
            detail = {
                "output": output,
                "on_bad": policy.on_bad,
                "predict_cycles": policy.predict_cycles,
                "uncertain_is_good": policy.uncertain_is_good,
            }
            self.audit.record(
                "data.policy",
                tag,
                reason=policy.describe(),
                new_value=policy.on_bad,
                actor=self.actor,
                detail={"run_id": self.run_id, **detail},
            )
            message = f"{tag}: {policy.describe()}"
            view.events.append(
                HistorianEvent(self.run_id, view.t, "data.policy", tag, message, detail)
            )


def _tags(distrusted: Iterable[Distrust]) -> list[str]:
    """The tags, sorted (each one's reason is logged and is a historian event)."""
    return sorted({d.tag for d in distrusted})


def _gate(estimate: Estimate | None, output: str) -> str:
    """The normalized innovation that made the gate reject ``output``, in words."""
    if estimate is None:
        return ""
    innovation = estimate.innovation.get(output)
    std = estimate.innovation_std.get(output)
    if innovation is None or not std:
        return ""
    return f"innovation {innovation:.4g}, {abs(innovation) / std:.3g} standard deviations"
