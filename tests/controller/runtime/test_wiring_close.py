"""The end of a run: a historian that cannot commit its last batch is an error, the audit trail
is closed whatever happens, and a run that already failed keeps its own error."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import pytest

from controller.clock import SteppedClock
from controller.core.mpc import Decision, SolveStatus
from controller.ports.memory import MemoryPort, table_from_tag_map
from controller.runtime.audit import AuditTrail
from controller.runtime.historian import MemoryHistorian, SqliteHistorian
from controller.runtime.historian_records import HistorianError
from controller.runtime.site import Site, load_site
from controller.runtime.supervisor import Mode, Supervisor
from controller.runtime.wiring import RunOptions, close_historian, run_site

ROOT = Path(__file__).resolve().parents[3]
LYO_MODBUS = ROOT / "configs" / "sites" / "lyophilizer-modbus.yaml"
LOST = "cannot commit the open batch: disk gone; nothing of the open batch is stored"


class HoldPolicy:
    """A policy that is never asked (the runs here end before their first cycle)."""

    def reset(self, u_prev: Mapping[str, float]) -> None:
        pass

    def step(
        self,
        t: float,
        x_hat: Mapping[str, float],
        params: Mapping[str, float] | None = None,
        u_prev: Mapping[str, float] | None = None,
    ) -> Decision:
        return Decision(t, {}, SolveStatus.SUCCESS, "Solve_Succeeded", 0, 0.0)


class UnclosableHistorian(MemoryHistorian):
    def close(self) -> None:
        raise HistorianError(LOST)


@pytest.fixture(scope="module")
def site() -> Site:
    return load_site(LYO_MODBUS)


def test_close_historian_raises_when_the_run_went_well() -> None:
    with pytest.raises(HistorianError, match="cannot commit the open batch"):
        close_historian(UnclosableHistorian(), None)


def test_close_historian_notes_its_failure_on_the_run_s_own_error() -> None:
    first = RuntimeError("the audit trail's disk is full")
    close_historian(UnclosableHistorian(), first)  # does not replace the first error
    assert first.__notes__ == [f"closing the historian failed too: {LOST}"]


@pytest.fixture
def closes(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The audit trail's closes, and a SQLite historian whose close fails."""
    seen: list[str] = []
    real_close = AuditTrail.close

    def audit_close(self: AuditTrail) -> None:
        seen.append("audit")
        real_close(self)

    def historian_close(self: SqliteHistorian) -> None:
        self._db.close()
        raise HistorianError(LOST)

    monkeypatch.setattr(AuditTrail, "close", audit_close)
    monkeypatch.setattr(SqliteHistorian, "close", historian_close)
    return seen


async def _run(site: Site, tmp_path: Path) -> Supervisor:
    clock = SteppedClock()
    port = MemoryPort(table_from_tag_map(site.tags), clock)
    opts = RunOptions(
        Mode.SHADOW,
        cycles=0,
        audit_path=tmp_path / "audit.db",
        historian_path=tmp_path / "history.db",
        historian_commit_every=8,
    )
    return await run_site(site, opts, port=port, clock=clock, policy=HoldPolicy())


async def test_a_historian_that_cannot_close_fails_the_run_and_the_audit_closes(
    site: Site, tmp_path: Path, closes: list[str]
) -> None:
    with pytest.raises(HistorianError, match="cannot commit the open batch"):
        await _run(site, tmp_path)
    assert closes == ["audit"]
    trail = AuditTrail(tmp_path / "audit.db")  # closed: another writer opens it and verifies
    assert [r.action for r in trail.records()][-1] == "run.stop"
    trail.close()


async def test_a_failed_run_keeps_its_error_when_the_historian_cannot_close(
    site: Site, tmp_path: Path, closes: list[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    async def broken_run(self: Supervisor, *args: object, **kwargs: object) -> None:
        raise RuntimeError("the control loop broke")

    monkeypatch.setattr(Supervisor, "run", broken_run)
    with pytest.raises(RuntimeError, match="the control loop broke") as err:
        await _run(site, tmp_path)
    assert err.value.__notes__ == [f"closing the historian failed too: {LOST}"]
    assert closes == ["audit"]
