"""A shadow run did its job only if it was still recommending, and its advice still reached the
PLC, when it ended.

Before, one recommendation anywhere passed a shadow run: ``pharmatwin run SITE --mode shadow
--cycles 100`` whose estimator failed on 91 of 100 cycles, every cycle near the end among them,
printed ``shadow: 100 of 100 cycles read the PLC, 4 gave a recommendation`` and "did what was
asked" (exit 0), and so did a run whose 10 advisory writes were all refused by the PLC. The
rule now matches the closed loop's: ``runtime.max_bad_cycles`` bad cycles in a row make a
closed loop fall back (a run that ends in FALLBACK fails), and as many cycles in a row at the
end of a shadow run without a recommendation (or whose advisory writes failed) fail it.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import yaml

from controller.core.mpc import Decision, SolveStatus
from controller.core.safety import SafetyOutcome
from controller.ports.base import Quality, Snapshot, TagValue
from controller.runtime import wiring
from controller.runtime.cli import main as cli_main
from controller.runtime.cycle import Counters, CycleView, Mode, State
from controller.runtime.engagement import MAX_BAD_CYCLES, Engagement
from controller.runtime.site import Site
from controller.runtime.wiring import RunOptions

SITES = Path(__file__).resolve().parents[3] / "configs" / "sites"
WHERE = "modbus+tcp://127.0.0.1:15020"
ESTIMATOR = "estimator failed: covariance not positive definite: held"
REFUSED = "write refused: ['feed_rate_advice: illegal data address']"


def _view(k: int, *, advice: bool = True, problem: str = "") -> CycleView:
    """A shadow cycle that read the PLC: a recommendation (``advice``) or a held cycle."""
    good = TagValue(1.0, Quality.GOOD, 0.0, 0.0)
    view = CycleView(k, float(k), State.SHADOW, Snapshot({"mpc_permissive": good}, 0.0))
    sp = {"F": 10.0}
    view.decision = Decision(float(k), sp, SolveStatus.SUCCESS, "Solve_Succeeded", 3, 1e-3)
    view.outcome = SafetyOutcome(sp, held=not advice, interventions=())
    if problem:
        view.problems.append(problem)
    if problem.startswith(("write refused: ", "write failed: ")):  # as ControlWriter.advise
        view.advice_unwritten = ["feed_rate_advice"]
    return view


def _judge(views: Iterable[CycleView], max_bad_cycles: int = MAX_BAD_CYCLES) -> Engagement:
    e = Engagement(Mode.SHADOW, WHERE, max_bad_cycles=max_bad_cycles)
    for v in views:
        e.observe(v)
    return e


def test_a_shadow_run_whose_estimator_failed_to_the_end_fails_and_names_the_problem() -> None:
    """91 of 100 cycles held by a failed estimator, the last 30 among them: 9 recommendations
    early on (as reproduced: 'did what was asked', exit 0)."""
    ok = {3, 10, 40, 55, 60, 62, 64, 66, 69}
    views = [_view(k, advice=k in ok, problem="" if k in ok else ESTIMATOR) for k in range(100)]
    e = _judge(views)
    assert e.summary() == "shadow: 100 of 100 cycles read the PLC, 9 gave a recommendation"
    assert e.verdict() == (
        "no recommendation in the last 30 cycles of the run: it ended without advising "
        "(3 cycles in a row without one fail a shadow run, as 3 bad cycles in a row make a "
        f"closed loop fall back: runtime.max_bad_cycles) (last problem: {ESTIMATOR})"
    )


def test_a_shadow_run_whose_advisory_writes_were_all_refused_fails() -> None:
    """Every cycle recommended, every advisory write was refused by the PLC."""
    views = [_view(k, problem=REFUSED) for k in range(10)]
    e = _judge(views)
    assert e.summary() == (
        "shadow: 10 of 10 cycles read the PLC, 10 gave a recommendation, 10 of them not "
        "written to the advisory tags"
    )
    assert e.verdict() == (
        "the advisory writes of the last 10 cycles of the run failed or were refused: its "
        "recommendations did not reach the PLC (3 cycles in a row fail a shadow run, as 3 bad "
        f"cycles in a row make a closed loop fall back: runtime.max_bad_cycles) (last problem: "
        f"feed_rate_advice not written: {REFUSED})"
    )


def test_failed_advisory_writes_and_held_cycles_at_the_end_add_up() -> None:
    views = [_view(k) for k in range(5)]
    views += [_view(5, problem=REFUSED), _view(6, advice=False, problem=ESTIMATOR)]
    views += [_view(7, problem="write failed: connection reset")]
    verdict = _judge(views).verdict()
    assert verdict is not None
    assert verdict.startswith("the advisory writes of the last 3 cycles of the run failed")
    assert verdict.endswith(
        "(last problem: feed_rate_advice not written: write failed: connection reset)"
    )
    # held and refused cycles on the way, as a closed loop's HOLDs it recovered from: passes
    views = [_view(k, advice=False, problem=ESTIMATOR) for k in range(20)]
    views += [_view(k, problem=REFUSED) for k in range(20, 30)]
    views += [_view(30), _view(31, advice=False, problem=ESTIMATOR), _view(32, problem=REFUSED)]
    assert _judge(views).verdict() is None  # 2 bad cycles at the end: fewer than 3


def test_the_cycles_in_a_row_follow_the_site_s_max_bad_cycles() -> None:
    views = [_view(k) for k in range(5)]
    views += [_view(k, advice=False, problem=ESTIMATOR) for k in range(5, 9)]  # 4 at the end
    assert _judge(views, max_bad_cycles=5).verdict() is None
    assert _judge(views, max_bad_cycles=4).verdict() == (
        "no recommendation in the last 4 cycles of the run: it ended without advising "
        "(4 cycles in a row without one fail a shadow run, as 4 bad cycles in a row make a "
        f"closed loop fall back: runtime.max_bad_cycles) (last problem: {ESTIMATOR})"
    )


def _site_with(tmp_path: Path, max_bad_cycles: int) -> Path:
    """The lyophilizer Modbus site, its ``runtime.max_bad_cycles`` set."""
    data: dict[str, Any] = yaml.safe_load((SITES / "lyophilizer-modbus.yaml").read_text())
    for key in ("plant", "controller", "tags"):
        data[key] = str((SITES / data[key]).resolve())
    data["hil"]["scenario"] = str((SITES / data["hil"]["scenario"]).resolve())
    data["forecast"]["local_recipe"] = str((SITES / data["forecast"]["local_recipe"]).resolve())
    data.setdefault("runtime", {})["max_bad_cycles"] = max_bad_cycles
    path = tmp_path / "site.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def test_pharmatwin_run_judges_with_the_site_s_max_bad_cycles(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """``pharmatwin run --mode shadow``: the run's cycles (as the supervisor hands them to the
    verdict), 5 held at the end, judged with the site's ``runtime.max_bad_cycles``."""
    views = [_view(k) for k in range(4)]
    views += [_view(k, advice=False, problem=ESTIMATOR) for k in range(4, 9)]

    async def cycles(site: Site, opts: RunOptions, **kw: Any) -> Any:
        for view in views:
            kw["observer"](view)
        return SimpleNamespace(counters=Counters(cycles=len(views)))

    monkeypatch.setattr(wiring, "run_site", cycles)
    argv = ["run", "SITE", "--mode", "shadow", "--quiet", "--audit", str(tmp_path / "a.db")]
    argv += ["--historian", str(tmp_path / "h.db")]
    argv[1] = str(_site_with(tmp_path, 5))
    assert cli_main(argv) == 1
    out = " ".join(capsys.readouterr().out.split())
    assert out.endswith(
        "FAILED no recommendation in the last 5 cycles of the run: it ended without advising "
        "(5 cycles in a row without one fail a shadow run, as 5 bad cycles in a row make a "
        f"closed loop fall back: runtime.max_bad_cycles) (last problem: {ESTIMATOR})"
    ), out
    argv[1] = str(_site_with(tmp_path, 6))
    assert cli_main(argv) == 0
    assert "did what was asked" in capsys.readouterr().out
