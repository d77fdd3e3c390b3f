"""Who may act in the operator view, and from where: login sessions checked against the users
file on every use, the refusal of cross-site POSTs, and the headers every answer carries.

- :class:`Sessions`: before each authenticated action the users file is read again when its
  stat changed (through :func:`~controller.runtime.users.load_users`, so mode 0600 and the
  scrypt parameters are checked again). Sessions of a user removed, or whose roles or
  password changed, end there. A file that no longer loads locks every action (never the
  old users) until it loads again. A login ends the browser's previous session and purges
  expired ones; a logout ends every session of that user.
- :func:`cross_site_refusal`: why a POST is refused as a possible cross-site request forgery
  (a foreign ``Origin``, ``Sec-Fetch-Site`` cross-site or same-site, or a body that is not
  ``application/json``).
- :class:`SecurityHeaders`: Content-Security-Policy (scripts from the view only, none inline,
  no framing), ``nosniff``, no referrer, nothing cached.
- :class:`Attempts`: when a refused attempt with no logged-in user (a failed login, an action
  without a login) is audited: at most once a minute per kind and client address, the next
  record counting those left out (detected and reported, without letting a flood of wrong
  passwords flood the trail).
- :func:`refuse`, :func:`read_json`, :func:`audit_failed`: the JSON answers of the actions.
"""

from __future__ import annotations

import logging
import math
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from controller.errors import ConfigError
from controller.runtime.users import User, Users, file_stamp, load_users

log = logging.getLogger("pharmatwin.ui")

SESSION_S = 8 * 3600.0
HEADERS = {
    # scripts only from the view itself (no inline script, no eval); inline styles are let
    # through: the page's own and those Plotly injects (a style cannot run code)
    "content-security-policy": (
        "default-src 'self'; style-src 'self' 'unsafe-inline'; frame-ancestors 'none'"
    ),
    "x-content-type-options": "nosniff",
    "referrer-policy": "no-referrer",
    "cache-control": "no-store",
}


@dataclass(frozen=True)
class Session:
    account: User  # as the users file had it at login
    expires: float

    @property
    def user(self) -> str:
        return self.account.name

    @property
    def roles(self) -> frozenset[str]:
        return self.account.roles


class Sessions:
    """Login sessions by cookie token (see the module docstring); used on the UI's loop only.

    ``now``: the monotonic clock (seconds) of expiry."""

    def __init__(self, users: Users | None, now: Callable[[], float] = time.monotonic) -> None:
        self.users = users
        self._now = now
        self._by_token: dict[str, Session] = {}
        self._stamp = users.stamp if users is not None else None
        self.locked = ""  # why every action is refused: the users file no longer loads

    def __len__(self) -> int:
        return len(self._by_token)

    def get(self, token: str) -> Session | None:
        s = self._by_token.get(token)
        return s if s is not None and s.expires >= self._now() else None

    def refresh(self) -> str:
        """Read the users file again if it changed; returns "" or why every action is locked."""
        users = self.users
        if users is None or users.source is None:
            return ""
        stamp = file_stamp(users.source)
        if stamp is not None and stamp == self._stamp:
            return self.locked
        self._stamp = stamp
        try:
            fresh = load_users(users.source)
        except ConfigError as exc:
            if not self.locked:
                log.error(
                    "users file %s no longer loads; every action refused: %s", users.source, exc
                )
            self.locked = (
                f"the users file {users.source} no longer loads, so every action is refused "
                f"until it is fixed: {exc}"
            )
            return self.locked
        if self.locked:
            log.warning("users file %s loads again; actions allowed", users.source)
        self.locked, self.users, self._stamp = "", fresh, fresh.stamp
        gone = {t for t, s in self._by_token.items() if fresh.by_name.get(s.user) != s.account}
        for token in gone:
            s = self._by_token.pop(token)
            log.warning("session of %s ended: the users file removed or changed the user", s.user)
        return ""

    def login(self, account: User, previous: str) -> str:
        """A new session token for ``account``; ends ``previous`` and every expired session."""
        now = self._now()
        self._by_token.pop(previous, None)
        self._by_token = {t: s for t, s in self._by_token.items() if s.expires >= now}
        token = secrets.token_urlsafe(32)
        self._by_token[token] = Session(account, now + SESSION_S)
        return token

    def logout(self, token: str) -> None:
        """End the session ``token`` and every other session of its user."""
        s = self._by_token.pop(token, None)
        if s is not None:
            self._by_token = {t: o for t, o in self._by_token.items() if o.user != s.user}


def cross_site_refusal(
    request: Request, own: frozenset[str], *, remote: bool, need_json: bool
) -> str:
    """Why this POST may be a cross-site request forgery ("" when it is not): an ``Origin``
    other than the view's own (``own``; with ``remote``, a TLS-only bind, also the scheme and
    ``Host`` the browser used), ``Sec-Fetch-Site`` cross-site or same-site (another port of
    the same host), or, with ``need_json``, a Content-Type other than application/json (a
    form or text/plain body a foreign page can send without asking)."""
    if remote:
        own = own | {f"{request.url.scheme}://{request.headers.get('host', '')}".lower()}
    origin = request.headers.get("origin")
    if origin is not None and origin.lower().rstrip("/") not in own:
        return f"refused: the request comes from {origin!r}, not from this view ({sorted(own)})"
    site = request.headers.get("sec-fetch-site", "").lower()
    if site in ("cross-site", "same-site"):
        return f"refused: the request comes from another site (Sec-Fetch-Site: {site})"
    ctype = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if need_json and ctype != "application/json":
        return f"refused: the body must be application/json, not {ctype or 'none'!r}"
    return ""


def own_origins(url: str, loopback: bool) -> frozenset[str]:
    """The origins of the view at ``url`` (scheme://host:port); on loopback also the same
    port by ``localhost``, ``127.0.0.1`` and ``[::1]``."""
    scheme, _, rest = url.partition("://")
    port = rest.rsplit(":", 1)[1]
    hosts = {rest.rsplit(":", 1)[0]}
    if loopback:
        hosts |= {"localhost", "127.0.0.1", "[::1]"}
    return frozenset(f"{scheme}://{h}:{port}".lower() for h in hosts)


class SecurityHeaders:
    """ASGI middleware: :data:`HEADERS` on every answer that does not set them itself."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = list(message.get("headers", []))
                present = {k.decode("latin-1").lower() for k, _ in headers}
                headers += [
                    (k.encode("latin-1"), v.encode("latin-1"))
                    for k, v in HEADERS.items()
                    if k not in present
                ]
                message = {**message, "headers": headers}
            await send(message)

        await self.app(scope, receive, send_with_headers)


async def read_json(request: Request) -> dict[str, Any]:
    """The request's JSON object ({} when the body is not one)."""
    try:
        body = await request.json()
    except ValueError:
        return {}
    return body if isinstance(body, dict) else {}


def refuse(code: int, message: str) -> Response:
    """A JSON answer ``{"error": message}`` with status ``code``."""
    return JSONResponse({"error": message}, status_code=code)


async def audit_failed(request: Request, exc: Exception) -> Response:
    """An action the audit trail could not record was not carried out: 500, and why."""
    log.error(
        "operator action %s not carried out: the audit trail failed: %s", request.url.path, exc
    )
    return refuse(500, f"not carried out: the audit trail could not record it: {exc}")


class Attempts:
    """Which refused anonymous attempts to audit: the first of a kind from a client address,
    then at most one every ``every_s`` seconds, saying how many were left out in between."""

    def __init__(self, every_s: float = 60.0, keep: int = 1024) -> None:
        self.every_s, self.keep = every_s, keep
        self._seen: dict[tuple[str, str], tuple[float, int]] = {}  # -> last recorded, left out

    def due(self, kind: str, host: str, now: float) -> int | None:
        """The attempts left out since the last record, when this one is to be recorded;
        None when it is left out (counted for the next record)."""
        key = (kind, host)
        last, skipped = self._seen.get(key, (-math.inf, 0))
        if now - last < self.every_s:
            self._seen[key] = (last, skipped + 1)
            return None
        if len(self._seen) >= self.keep:  # many addresses: forget the quiet ones
            self._seen = {k: v for k, v in self._seen.items() if now - v[0] < self.every_s}
        self._seen[key] = (now, 0)
        return skipped

    def note(self, request: Request, kind: str, why: str, now: float) -> str | None:
        """The audit note of this attempt (``refused: <why>, from <address>``, with the count
        left out since the last record), or None when it is left out."""
        host = request.client.host if request.client is not None else "unknown address"
        skipped = self.due(kind, host, now)
        if skipped is None:
            return None
        more = f"; {skipped} more since the last record" if skipped else ""
        return f"refused: {why}, from {host}{more}"
