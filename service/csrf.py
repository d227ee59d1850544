"""Cross-site request forgery: a request that can change state, sent by a browser from another site's page, is
refused (403) before any route sees it, with or without an API key.

Every method but GET, HEAD and OPTIONS is checked, searches and /localize included: they change nothing but
cost an inference, and a page of another origin has no use for them (it could not read the answer without
CORS). The check follows OWASP's CSRF Prevention Cheat Sheet (Fetch Metadata, then the Origin header):

- `Sec-Fetch-Site: same-origin` or `none` (a typed URL, a bookmark) passes; any other value (`same-site`,
  `cross-site`) passes only when the request's Origin is one of `cors_origins` (CAVSYNC_CORS_ORIGINS; `*`
  there lets every origin in, as it does for CORS);
- without Sec-Fetch-Site (older browsers), `Origin` must be the request's own origin (its scheme and Host
  header) or one of `cors_origins`; `Origin: null` (a sandboxed frame, a data: URL) never passes;
- a request with neither header passes: it does not come from a browser (curl, scripts, the command line), since
  browsers send Origin on every cross-origin POST, PUT, PATCH and DELETE.

Behind a proxy that rewrites Host, the page's origin is not the request's: list it in CAVSYNC_CORS_ORIGINS.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from urllib.parse import urlsplit

from starlette.datastructures import Headers
from starlette.types import ASGIApp, Receive, Scope, Send

from service.errors import error_answer

SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
SAME_ORIGIN = frozenset({"same-origin", "none"})
DEFAULT_PORTS = {"http": 80, "https": 443}
ANY_ORIGIN = "*"
SETTING = "CAVSYNC_CORS_ORIGINS"


def origin_of(scheme: str, netloc: str) -> str | None:
    """`scheme://host[:port]` as browsers serialise an origin (lower case, no default port); None when invalid."""
    try:
        parts = urlsplit(f"{scheme.lower()}://{netloc}")
        port = parts.port
    except ValueError:  # a port out of range or not a number
        return None
    host = parts.hostname
    if not parts.scheme or not host or parts.username is not None:
        return None
    host = f"[{host}]" if ":" in host else host
    default = DEFAULT_PORTS.get(parts.scheme)
    return f"{parts.scheme}://{host}" + (f":{port}" if port is not None and port != default else "")


def normal_origin(origin: str) -> str | None:
    """An Origin header or a configured origin, compared form (None for `null` or anything not an origin)."""
    parts = urlsplit(origin.strip())
    if parts.path not in ("", "/") or parts.query or parts.fragment:
        return None
    return origin_of(parts.scheme, parts.netloc)


def own_origin(scope: Scope, headers: Headers) -> str | None:
    """The origin this request was sent to: its scheme and its Host header (the server's address without one)."""
    host = headers.get("host")
    if host is None and scope.get("server"):
        name, port = scope["server"]
        host = f"{name}:{port}"
    return origin_of(scope.get("scheme", "http"), host) if host else None


def allowed_origins(cors_origins: Iterable[str]) -> frozenset[str]:
    """The configured origins in compared form (`*` kept as it is)."""
    found = {ANY_ORIGIN if o.strip() == ANY_ORIGIN else normal_origin(o) for o in cors_origins}
    return frozenset(o for o in found if o is not None)


def _listed(origin: str | None, allowed: frozenset[str]) -> bool:
    return ANY_ORIGIN in allowed or (origin is not None and normal_origin(origin) in allowed)


def cross_site_refusal(headers: Mapping[str, str], own: str | None, allowed: frozenset[str]) -> str | None:
    """Why a state-changing request with these (lower-case) headers is refused as cross-site; None: it passes."""
    site, origin = headers.get("sec-fetch-site"), headers.get("origin")
    if site is not None:
        if site.strip().lower() in SAME_ORIGIN or _listed(origin, allowed):
            return None
        sender = f"Origin {origin}" if origin else "a page that sent no Origin"
        return (
            f"cross-site request refused: Sec-Fetch-Site is {site} and {sender} is not in {SETTING}; "
            f"add the page's origin to {SETTING} to allow it"
        )
    if origin is None or _listed(origin, allowed):
        return None
    if own is not None and normal_origin(origin) == own:
        return None
    return (
        f"cross-site request refused: Origin {origin} is not this API's origin ({own or 'unknown'}); "
        f"add it to {SETTING} to allow it"
    )


class CrossSiteGuard:
    """Pure ASGI: every request but GET, HEAD and OPTIONS goes through `cross_site_refusal` (403 JSON when refused,
    its body unread)."""

    def __init__(self, app: ASGIApp, cors_origins: Iterable[str] = ()) -> None:
        self.app, self.allowed = app, allowed_origins(cors_origins)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["method"] not in SAFE_METHODS:
            headers = Headers(scope=scope)
            why = cross_site_refusal(headers, own_origin(scope, headers), self.allowed)
            if why is not None:
                await error_answer(403, why)(scope, receive, send)
                return
        await self.app(scope, receive, send)
