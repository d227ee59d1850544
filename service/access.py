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
import re
import secrets
import time

from pydantic import SecretStr
from starlette.requests import Request
from starlette.types import ASGIApp, Receive, Scope, Send

from service.errors import Forbidden, ServiceError, Unauthorized, error_answer

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


def check_key(expected: SecretStr | None, header: str | None, cookie: str | None, now: float, needs: str) -> None:
    """Passes without a configured key, with the right key in the header or a live session cookie. Raises
    Forbidden for a wrong key, Unauthorized (saying `needs`) without one or for a stale session."""
    if expected is None:
        return
    if header:
        if not key_matches(header, expected):
            raise Forbidden("wrong API key")
        return
    if cookie:
        if not valid_session(cookie, expected, now):
            raise Unauthorized(STALE)
        return
    raise Unauthorized(needs)


def is_open(scope: Scope) -> bool:
    """Whether the request's path (under the app's root path) answers without the key under `all`."""
    path, root = scope["path"], scope.get("root_path", "")
    if root and path.startswith(f"{root}/"):
        path = path[len(root) :]
    return path in OPEN_PATHS or path.startswith(OPEN_PREFIXES)


class KeyGate:
    """CAVSYNC_API_ACCESS=all, pure ASGI: a request for any path but the open ones (an unknown path too) needs
    the key, else it is answered 401 / 403 here. Deny by default: a new route is closed until listed."""

    def __init__(self, app: ASGIApp, api_key: SecretStr | None) -> None:
        if api_key is None:
            raise ValueError("CAVSYNC_API_ACCESS=all needs CAVSYNC_API_KEY")
        self.app, self.api_key = app, api_key

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and not is_open(scope):
            request = Request(scope)
            header, cookie = request.headers.get(KEY_HEADER), request.cookies.get(SESSION_COOKIE)
            try:
                check_key(self.api_key, header, cookie, time.time(), ALL_NEED)
            except ServiceError as exc:
                await error_answer(exc.status_code, exc.detail, exc.headers)(scope, receive, send)
                return
        await self.app(scope, receive, send)
