"""Cross-site request forgery against the operator view, against a running twin: a foreign
page's POST carrying the session cookie (a ``text/plain`` "simple" request, or a same-site
one from another port of 127.0.0.1) is refused with 403 and why, and changes nothing; the
view's own JSON POSTs still act."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest
from test_ui_api import _login, running_twin, wait_state

from controller.runtime.audit_verify import read_records

pytestmark = pytest.mark.timeout(90)
BODY = '{"action": "release", "reason": "csrf"}'


def _operator_records(audit: Path) -> list[str]:
    return [r.action for r in read_records(audit) if r.action.startswith("operator.")]


async def test_foreign_posts_with_the_session_cookie_are_refused(tmp_path: Path) -> None:
    async with running_twin(tmp_path) as twin, httpx.AsyncClient(base_url=twin.view.url) as c:
        login = await _login(c, "carl", "carl-pass-1")
        assert login.status_code == 200
        await wait_state(twin, "RUNNING")
        forged = {
            "cross-origin text/plain": {
                "Origin": "http://evil.example",
                "Sec-Fetch-Site": "cross-site",
                "Content-Type": "text/plain",
            },
            "another port of 127.0.0.1": {
                "Origin": "http://127.0.0.1:1",
                "Sec-Fetch-Site": "same-site",
                "Content-Type": "application/json",
            },
            "same-site without Origin": {
                "Sec-Fetch-Site": "same-site",
                "Content-Type": "application/json",
            },
            "text/plain without Origin": {"Content-Type": "text/plain"},
            "a form": {"Content-Type": "application/x-www-form-urlencoded"},
        }
        for label, headers in forged.items():
            resp = await c.post("/api/control", content=BODY, headers=headers)
            assert resp.status_code == 403, (label, resp.text)
            assert resp.json()["error"].startswith("refused: "), (label, resp.text)
        assert twin.sup is not None and twin.sup.state.value == "RUNNING"
        # login and logout are refused alike: the session lives on
        plain = {"Content-Type": "text/plain"}
        creds = '{"user": "olga", "password": "olga-pass-1"}'
        assert (await c.post("/api/login", content=creds, headers=plain)).status_code == 403
        evil = {"Origin": "http://evil.example"}
        assert (await c.post("/api/logout", json={}, headers=evil)).status_code == 403
        assert (await c.get("/api/whoami")).json()["user"] == "carl"
        # the forecast (read-only, but seconds of CPU) is not for foreign pages either
        assert (await c.post("/api/forecast", headers=evil)).status_code == 403
        # the page's own requests act: JSON, from the view's origin
        own = {"Origin": twin.view.url, "Sec-Fetch-Site": "same-origin"}
        resp = await c.post("/api/control", json={"action": "release", "reason": "ok"}, headers=own)
        assert resp.status_code == 200, resp.text
        assert twin.sup.state.value == "RELEASED"
    assert _operator_records(twin.audit) == ["operator.release"]
