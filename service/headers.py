"""Security headers on every answer of the API (OWASP's HTTP headers, REST and file-upload guidance): one pure
ASGI middleware, `SecurityHeaders`, the outermost layer of the app, so that answers made outside the routes (a
413 of a declared body, a 405, a 500) carry them too.

Every answer: `X-Content-Type-Options: nosniff` (a browser never reads a file as another type than the one it is
served as: no media run as a page, no upload run as a script or style), `X-Frame-Options: DENY` with CSP's
`frame-ancestors 'none'` (nothing of the API can be framed by another page) and `Referrer-Policy: same-origin`.

The Content-Security-Policy depends on what the answer is:
- the HTML of the page (`/ui/`) and of the docs (`/docs`, `/redoc`, Swagger UI's OAuth2 redirect): only the
  API's own origin (`'self'`) for scripts, styles, pictures, media, fetches and forms; no plugin, no `<base>`.
  Inline script only with the answer's nonce (a fresh one per request, `csp_nonce`: Swagger UI's inline scripts
  carry it, see `nonce_scripts`); never 'unsafe-inline' or 'unsafe-eval' for scripts. The page needs no inline
  style; Swagger UI and ReDoc insert `<style>` elements at run time and their bundles take no nonce, so `/docs*`
  and `/redoc` allow 'unsafe-inline' *styles* (CSS cannot run script), and ReDoc its search worker from `blob:`.
- media and pictures (video/*, audio/*, image/* but SVG, which is a document: media files, posters):
  `default-src 'none'; media-src 'self'; img-src 'self'`: opened as a document (a link to a video), the
  browser's own player plays it (it loads that same URL) and nothing else loads, no script at all runs
  (script-src falls back to 'none'); a file that is also HTML is still served as its media type, never parsed
  as a page (nosniff). No `sandbox` here: a sandboxed document's origin is opaque, `'self'` no longer matches
  and its own player cannot load it;
- anything else (JSON, the page's scripts and styles, SVG, and any HTML elsewhere): `default-src 'none';
  sandbox`: were it ever opened as a document, it could load and run nothing, and would have an opaque origin.
A subresource's policy is not applied to the page that uses it (a `<video>` still plays a media answer, a
`<script>` still runs a JS file).
"""

from __future__ import annotations

import re
import secrets

from starlette.datastructures import MutableHeaders
from starlette.requests import Request
from starlette.types import ASGIApp, Message, Receive, Scope, Send

NONCE_KEY = "csp_nonce"  # in the request's state (scope["state"])
COMMON = {"X-Content-Type-Options": "nosniff", "X-Frame-Options": "DENY", "Referrer-Policy": "same-origin"}
NOTHING = "default-src 'none'; frame-ancestors 'none'; sandbox"
# A media answer opened as a document itself (a link to it, "open in a new tab"): the browser's own player
# document loads the very same URL as its media; nothing else.
MEDIA_ITSELF = "default-src 'none'; media-src 'self'; img-src 'self'; frame-ancestors 'none'"
MEDIA_TYPES = ("video/", "audio/", "image/")
DOCUMENT = (
    "default-src 'self'; script-src 'self' 'nonce-{nonce}'; style-src {styles}; img-src 'self' data: blob:; "
    "media-src 'self' blob:; connect-src 'self'; worker-src 'self'{workers}; object-src 'none'; base-uri 'none'; "
    "form-action 'self'; frame-ancestors 'none'"
)
PAGE_PREFIX = "/ui/"  # the web page's files (service/routes/web.py's PAGE_URL)
DOCS_PATHS = ("/docs", "/redoc")  # and below /docs/ (the OAuth2 redirect); not /docs-assets/ (files, not pages)
_SCRIPT_TAG = re.compile(rb"<script(?=[\s>])", re.IGNORECASE)


def app_path(scope: Scope) -> str:
    """The request's path under the app's root path (`root_path`: the prefix a proxy mounts the app at)."""
    path, root = scope["path"], scope.get("root_path", "")
    return path[len(root) :] if root and path.startswith(f"{root}/") else path


def is_docs(path: str) -> bool:
    """Whether `path` is a page of the docs (Swagger UI, its OAuth2 redirect, ReDoc)."""
    return path in DOCS_PATHS or path.startswith("/docs/")


def policy(path: str, content_type: str, nonce: str) -> str:
    """The CSP of an answer at `path` (relative to the app's root): the documents' for the HTML of the page and
    the docs (nowhere else does the API answer HTML), else one that allows nothing."""
    kind = content_type.lower()
    if kind.startswith("text/html") and (path.startswith(PAGE_PREFIX) or is_docs(path)):
        return document_policy(path, nonce)
    return MEDIA_ITSELF if kind.startswith(MEDIA_TYPES) and not kind.startswith("image/svg") else NOTHING


def document_policy(path: str, nonce: str) -> str:
    """The CSP of the page's or the docs' HTML at `path`."""
    docs = is_docs(path)
    styles = "'self' 'unsafe-inline'" if docs else "'self'"
    return DOCUMENT.format(nonce=nonce, styles=styles, workers=" blob:" if docs else "")


def csp_nonce(request: Request) -> str:
    """This answer's CSP nonce (set by `SecurityHeaders` for every request it sees)."""
    return str(request.scope.get("state", {}).get(NONCE_KEY, ""))


def nonce_scripts(html: bytes, nonce: str) -> bytes:
    """`html` (a page this service writes, never one it serves from a user) with `nonce` on each `<script>`."""
    return _SCRIPT_TAG.sub(b'<script nonce="' + nonce.encode("ascii") + b'"', html)


class SecurityHeaders:
    """Adds the module's headers to every HTTP answer (replacing any the app set: they are this module's to
    decide), and a fresh CSP nonce to every request's state."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        nonce = secrets.token_urlsafe(18)
        scope.setdefault("state", {})[NONCE_KEY] = nonce
        path = app_path(scope)

        async def with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = MutableHeaders(scope=message)
                for name, value in COMMON.items():
                    headers[name] = value
                headers["Content-Security-Policy"] = policy(path, headers.get("content-type", ""), nonce)
            await send(message)

        await self.app(scope, receive, with_headers)
