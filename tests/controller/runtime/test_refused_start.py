"""A runtime start that the audit trail refuses leaves nothing behind in the historian.

Seen by a newcomer following the README (the demo first, then ``audit keygen`` and the key
exported): ``pharmatwin run`` was refused ("the anchors of ... are unsigned, this writer has
key ...; nothing was written") but the historian had got a new run with no cycles, and
``pharmatwin forecast`` then took that newest run and failed on it.
"""

from __future__ import annotations

import asyncio
import dataclasses
from pathlib import Path

import pytest

from controller.clock import SteppedClock
from controller.errors import ConfigError
from controller.runtime import wiring
from controller.runtime.audit import AuditTrail
from controller.runtime.audit_chain import AuditError
from controller.runtime.audit_keys import KEY_ENV, create_key
from controller.runtime.historian import SqliteHistorian
from controller.runtime.site import load_site
from controller.runtime.supervisor import Mode
from controller.runtime.wiring import RunOptions, run_site
from controller.tags import Tag

ROOT = Path(__file__).resolve().parents[3]
SITE = ROOT / "configs" / "sites" / "lyophilizer-modbus.yaml"


def test_a_start_refused_by_the_audit_trail_writes_no_run_to_the_historian(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    audit_db, history_db = tmp_path / "audit.db", tmp_path / "history.db"
    trail = AuditTrail(audit_db)  # an earlier run's trail, written without a key
    trail.record("mode.change", "supervisor", reason="an earlier run", new_value="SHADOW")
    trail.close()
    monkeypatch.setenv(KEY_ENV, str(create_key(tmp_path / "keys" / "audit.key").path))
    opts = RunOptions(mode=Mode.SHADOW, audit_path=audit_db, historian_path=history_db)
    with pytest.raises(AuditError, match="nothing was written"):
        asyncio.run(run_site(load_site(SITE), opts, clock=SteppedClock()))
    with SqliteHistorian(history_db, read_only=True) as historian:
        assert historian.runs() == []


def test_a_start_interrupted_while_the_solver_compiles_leaves_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Ctrl-C during the first start's compile (the pipeline is built before the loop): the
    trail got ``config.load`` and the historian a run with no cycle (``forecast`` then failed
    on it), and neither was closed. The pipeline is now built before anything is recorded."""

    def interrupted(*args: object, **kwargs: object) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(wiring, "build_pipeline", interrupted)
    audit_db, history_db = tmp_path / "audit.db", tmp_path / "history.db"
    opts = RunOptions(mode=Mode.SHADOW, audit_path=audit_db, historian_path=history_db)
    with pytest.raises(KeyboardInterrupt):
        asyncio.run(run_site(load_site(SITE), opts, clock=SteppedClock()))
    assert not audit_db.exists() and not history_db.exists()


def test_a_site_the_supervisor_refuses_leaves_no_recorded_start(tmp_path: Path) -> None:
    """A site the supervisor refuses (``on_bad: predict`` on a working setpoint, built here
    past the site check, which refuses it when the site loads) leaves no recorded start: no
    audit record."""
    cstr = load_site(ROOT / "configs" / "sites" / "cstr-modbus.yaml")
    tags = dict(cstr.tags.tags)
    bad = {"on_bad": "predict", "predict_cycles": 3}
    tags["feed_dilution_pv"] = Tag.model_validate({**tags["feed_dilution_pv"].model_dump(), **bad})
    site = dataclasses.replace(cstr, tags=cstr.tags.model_copy(update={"tags": tags}))
    audit_db, history_db = tmp_path / "audit.db", tmp_path / "history.db"
    opts = RunOptions(mode=Mode.SHADOW, audit_path=audit_db, historian_path=history_db)
    with pytest.raises(ConfigError, match=r"tags\.feed_dilution_pv\.on_bad"):
        asyncio.run(run_site(site, opts, clock=SteppedClock()))
    trail = AuditTrail(audit_db)
    assert list(trail.records()) == []
    trail.close()
    with SqliteHistorian(history_db, read_only=True) as historian:
        assert historian.runs() == []
