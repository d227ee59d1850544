"""Who may call the API: the holder of its key (CAVSYNC_API_KEY), sent as the X-API-Key header or as the session
cookie POST /session sets. Which routes need it is CAVSYNC_API_ACCESS: `writes` (the write routes, through
`service.deps.require_api_key`) or `all` (every route but those of OPEN_PATHS, through `KeyGate`).

The session cookie lets in what cannot send a header (posters in <img src>, media in <video src>, download links)
and the page, which never holds the key: `cavsync_session`, HttpOnly, SameSite=Strict, Path=/, Secure over
https, for SESSION_TTL_S. Its value is `<expiry>.<HMAC-SHA256 of the expiry keyed with the API key>`: not the key,
no state kept on the server, useless once expired, and every session ends when the key changes.
"""

from __future__ import annotations

import hashlib
import hmac
import math
import re
import secrets
import threading
import time
from collections import deque

from pydantic import SecretStr
from starlette.requests import Request
from starlette.types import ASGIApp, Receive, Scope, Send

from service.errors import Forbidden, ServiceError, TooManyAttempts, Unauthorized, error_answer
from service.headers import app_path

KEY_HEADER = "X-API-Key"
SESSION_COOKIE = "cavsync_session"
SESSION_TTL_S = 12 * 3600
TOKEN = re.compile(r"([0-9]{1,12})\.([0-9a-f]{64})")
# What answers without the key under `all`, by the path asked for (before routing, whatever the router's
# internals): the health check, the page's files and the docs (the page must load to ask for the key; the docs
# hold no data: they describe the routes) and the session routes themselves. Anything else needs the key.
OPEN_PATHS = frozenset(
    {"/health", "/", "/ui", "/docs", "/docs/oauth2-redirect", "/redoc", "/redoc.offline.js", "/openapi.json"}
    | {"/session"}
)
OPEN_PREFIXES = ("/ui/", "/docs-assets/")  # the mounts of service/routes/web.py: static files only
WRITES_NEED = f"this endpoint needs the {KEY_HEADER} header (or the session cookie POST /session sets)"
ALL_NEED = (
    f"this API needs its key on every route but /health (CAVSYNC_API_ACCESS=all): send the {KEY_HEADER} header, "
    "or log in with POST /session for a session cookie"
)
STALE = "the session has expired or the API key has changed: log in again (POST /session)"


def key_matches(sent: str, expected: SecretStr) -> bool:
    """Constant-time comparison of a header's value (Starlette decodes headers as latin-1) with the key."""
    return secrets.compare_digest(sent.encode("latin-1", "replace"), expected.get_secret_value().encode("utf-8"))


def _signature(key: SecretStr, expires: int) -> str:
    message = f"cavsync-session.{expires}".encode("ascii")
    return hmac.new(key.get_secret_value().encode("utf-8"), message, hashlib.sha256).hexdigest()


def session_token(key: SecretStr, now: float, ttl_s: int = SESSION_TTL_S) -> str:
    """A session cookie's value, valid for `ttl_s` from `now` (Unix seconds) while the key stays the same."""
    expires = int(now) + ttl_s
    return f"{expires}.{_signature(key, expires)}"


def valid_session(token: str, key: SecretStr, now: float) -> bool:
    match = TOKEN.fullmatch(token)
    if match is None or int(match[1]) <= now:
        return False
    return hmac.compare_digest(match[2], _signature(key, int(match[1])))


class WrongKeys:
    """Wrong keys by client address (OWASP: throttle guesses): after `limit` wrong keys within `window_s`, that
    address's next key is refused with 429 and Retry-After, right or wrong, until its oldest wrong key is
    `window_s` old. Kept in memory, for at most `max_clients` addresses (the quietest forgotten first)."""

    def __init__(self, limit: int = 10, window_s: float = 60.0, max_clients: int = 10_000) -> None:
        self.limit, self.window_s, self.max_clients = limit, window_s, max_clients
        self._wrong: dict[str, deque[float]] = {}
        self._lock = threading.Lock()

    def _recent(self, client: str, now: float) -> deque[float]:
        times = self._wrong.get(client, deque())
        while times and times[0] <= now - self.window_s:
            times.popleft()
        return times

    def check(self, client: str, now: float) -> None:
        """429 while `client` has had `limit` wrong keys within the window."""
        with self._lock:
            times = self._recent(client, now)
            if len(times) >= self.limit:
                wait = math.ceil(times[0] + self.window_s - now)
                raise TooManyAttempts(f"too many wrong API keys from this address; retry in {wait} s", max(1, wait))

    def failed(self, client: str, now: float) -> None:
        with self._lock:
            times = self._recent(client, now)
            times.append(now)
            self._wrong.pop(client, None)
            self._wrong[client] = times  # the most recent last: the first are the quietest
            while len(self._wrong) > self.max_clients:
                del self._wrong[next(iter(self._wrong))]


def check_key(
    expected: SecretStr | None,
    header: str | None,
    cookie: str | None,
    now: float,
    needs: str,
    *,
    wrong: WrongKeys,
    client: str,
) -> None:
    """Passes without a configured key, with the right key in the header or a live session cookie. Raises
    Forbidden for a wrong key (counted in `wrong` for `client`), TooManyAttempts when `client` has sent too many
    (the key is not even compared), Unauthorized (saying `needs`) without one or for a stale session."""
    if expected is None:
        return
    if header:
        wrong.check(client, now)
        if not key_matches(header, expected):
            wrong.failed(client, now)
            raise Forbidden("wrong API key")
        return
    if cookie:
        if not valid_session(cookie, expected, now):
            raise Unauthorized(STALE)
        return
    raise Unauthorized(needs)


def client_of(scope: Scope) -> str:
    """The request's client address (the peer's; behind a proxy, what uvicorn's proxy headers made of it)."""
    client = scope.get("client")
    return str(client[0]) if client else ""


def is_open(scope: Scope) -> bool:
    """Whether the request's path (under the app's root path) answers without the key under `all`."""
    path = app_path(scope)
    return path in OPEN_PATHS or path.startswith(OPEN_PREFIXES)


class KeyGate:
    """CAVSYNC_API_ACCESS=all, pure ASGI: a request for any path but the open ones (an unknown path too) needs
    the key, else it is answered 401 / 403 here. Deny by default: a new route is closed until listed."""

    def __init__(self, app: ASGIApp, api_key: SecretStr | None, wrong: WrongKeys) -> None:
        if api_key is None:
            raise ValueError("CAVSYNC_API_ACCESS=all needs CAVSYNC_API_KEY")
        self.app, self.api_key, self.wrong = app, api_key, wrong

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and not is_open(scope):
            request = Request(scope)
            header, cookie = request.headers.get(KEY_HEADER), request.cookies.get(SESSION_COOKIE)
            try:
                now, client = time.time(), client_of(scope)
                check_key(self.api_key, header, cookie, now, ALL_NEED, wrong=self.wrong, client=client)
            except ServiceError as exc:
                await error_answer(exc.status_code, exc.detail, exc.headers)(scope, receive, send)
                return
        await self.app(scope, receive, send)
