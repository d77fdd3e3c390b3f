"""Refused operator actions are audited, and a reason must say something: against a running
twin. A wrong-role release (403) and an acknowledge of an unknown alarm (404) are audit
records (``refused: <why>``); an invisible reason (U+200B and friends) is refused (400) with
nothing audited or done; an audit trail that fails answers 500."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx
import pytest
from test_ui_api import _login, running_twin

from controller.runtime.audit import AuditTrail
from controller.runtime.audit_chain import AuditError
from controller.runtime.audit_verify import read_records

pytestmark = pytest.mark.timeout(90)
INVISIBLE = ["\u200b", " \u200b\t", "\u2060\ufeff", "\u200d \u3000", "-", " . "]


def _ops(audit: Path) -> list[tuple[Any, ...]]:
    return [
        (r.actor, r.action, r.target, r.new_value, r.reason)
        for r in read_records(audit)
        if r.action.startswith("operator.") or r.action == "alarm.ack"
    ]


async def test_refused_actions_are_audited(tmp_path: Path) -> None:
    async with running_twin(tmp_path) as twin, httpx.AsyncClient(base_url=twin.view.url) as c:
        assert (await _login(c, "olga", "olga-pass-1")).status_code == 200
        rel = await c.post("/api/control", json={"action": "release", "reason": "olga tries"})
        assert rel.status_code == 403 and "lacks the role 'control'" in rel.json()["error"]
        ack = await c.post("/api/alarms/ack", json={"key": "nope", "reason": "unknown ack"})
        assert ack.status_code == 404, ack.text
        # the audit trail fails: the refusal is not answered as if recorded
        assert twin.sup is not None
        real = twin.sup.audit.record

        def failing(action: str, *args: Any, **kwargs: Any) -> Any:
            if action.startswith("operator.") or action == "alarm.ack":
                raise AuditError("simulated: disk full")
            return real(action, *args, **kwargs)

        twin.sup.audit.record = failing  # type: ignore[method-assign]
        try:
            down = await c.post("/api/control", json={"action": "request", "reason": "down"})
        finally:
            twin.sup.audit.record = real  # type: ignore[method-assign]
        assert down.status_code == 500 and "audit" in down.json()["error"], down.text
        site = twin.sup.site.name
    ops = _ops(twin.audit)
    assert ops[0] == (
        "olga",
        "operator.release",
        site,
        "refused: user 'olga' lacks the role 'control'",
        "olga tries",
    )
    assert ops[1][:3] == ("olga", "alarm.ack", "nope") and ops[1][4] == "unknown ack"
    assert ops[1][3].startswith("refused: no active alarm 'nope'"), ops[1]
    assert len(ops) == 2, ops  # the request the audit trail could not record is not there


async def test_an_invisible_reason_is_refused_and_nothing_is_done(tmp_path: Path) -> None:
    async with running_twin(tmp_path) as twin, httpx.AsyncClient(base_url=twin.view.url) as c:
        key = "drift.test"
        twin.view._alarms[key] = {"key": key, "message": "test alarm", "t": 0}
        assert (await _login(c, "carl", "carl-pass-1")).status_code == 200
        for reason in INVISIBLE:
            ack = await c.post("/api/alarms/ack", json={"key": key, "reason": reason})
            assert ack.status_code == 400 and "reason" in ack.json()["error"], (reason, ack.text)
            body = {"action": "release", "reason": reason}
            assert (await c.post("/api/control", json=body)).status_code == 400, reason
        assert key not in twin.view._acked
        assert twin.sup is not None and twin.sup.state.value != "RELEASED"
        ok = await c.post("/api/alarms/ack", json={"key": key, "reason": "\u200bseen it"})
        assert ok.status_code == 200, ok.text
    assert _ops(twin.audit) == [("carl", "alarm.ack", key, None, "\u200bseen it")]


@pytest.mark.parametrize("reason", INVISIBLE)
def test_the_audit_trail_refuses_an_invisible_reason(tmp_path: Path, reason: str) -> None:
    trail = AuditTrail(tmp_path / "a.db")
    with pytest.raises(AuditError, match="a reason is required"):
        trail.record("tag.write.request", "x", reason=reason)
    assert list(trail.records()) == []


def _anonymous(audit: Path) -> list[tuple[Any, ...]]:
    return [
        (r.action, r.target, r.new_value) for r in read_records(audit) if r.actor == "anonymous"
    ]


async def test_failed_logins_and_actions_without_login_are_audited_throttled(
    tmp_path: Path,
) -> None:
    # a wrong password or an action with no login was answered 401 and left no trace: tries
    # at a password went undetected. Now the first of each kind from an address is recorded,
    # then one a minute at most (the view's clock), counting those left out.
    wall = [0.0]
    async with (
        running_twin(tmp_path, ui_now=lambda: wall[0]) as twin,
        httpx.AsyncClient(base_url=twin.view.url) as c,
    ):
        for _ in range(3):
            assert (await _login(c, "olga", "not-her-password")).status_code == 401
            body = {"action": "release", "reason": "who am I"}
            assert (await c.post("/api/control", json=body)).status_code == 401
        wall[0] += 61.0
        assert (await _login(c, "olga", "still-not-it")).status_code == 401
        assert (await _login(c, "olga", "olga-pass-1")).status_code == 200
    assert _anonymous(twin.audit) == [
        ("login.failed", "olga", "refused: unknown user or wrong password, from 127.0.0.1"),
        ("operator.control", "control", "refused: no login, from 127.0.0.1"),
        (
            "login.failed",
            "olga",
            "refused: unknown user or wrong password, from 127.0.0.1; 2 more since the last record",
        ),
    ]
