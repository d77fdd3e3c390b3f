"""The operator page's security headers: a Content-Security-Policy that takes scripts from
the view only (no inline script, no eval) and refuses framing, no MIME sniffing, no referrer,
nothing cached; and a page that needs no inline script to work under it."""

from __future__ import annotations

import re

import httpx

from controller.runtime.ui import OperatorView, parse_bind

CSP = "default-src 'self'; style-src 'self' 'unsafe-inline'; frame-ancestors 'none'"


async def test_the_page_carries_the_security_headers() -> None:
    view = OperatorView(parse_bind("--ui", "127.0.0.1:0"))
    transport = httpx.ASGITransport(app=view.app)  # the app in process, no socket
    async with httpx.AsyncClient(transport=transport, base_url="http://127.0.0.1") as client:
        for path in ("/", "/api/whoami", "/static/app.js"):
            resp = await client.get(path)
            assert resp.status_code == 200, (path, resp.text[:200])
            assert resp.headers["content-security-policy"] == CSP, path
            assert resp.headers["x-content-type-options"] == "nosniff", path
            assert resp.headers["referrer-policy"] == "no-referrer", path
            assert resp.headers["cache-control"] == "no-store", path
        html = (await client.get("/")).text
    assert not re.search(r"\son[a-z]+\s*=", html, re.I)  # no inline event handler
    scripts = re.findall(r"<script([^>]*)>(.*?)</script>", html, re.S)
    assert scripts and all('src="/static/' in attrs and not body for attrs, body in scripts)
