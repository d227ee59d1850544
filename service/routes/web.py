"""The web page and the interactive docs, both served by the API itself (same origin, nothing from a CDN):
`/` redirects to the page in `service/static/` (plain HTML, ES modules and CSS: no build step), `/docs` is
Swagger UI and `/redoc` ReDoc, their scripts served from the `fastapi-offline` package's files (ReDoc's with
its footer logo served from here: nothing is fetched from another host). Swagger UI's inline scripts carry the
answer's CSP nonce (`service.headers`)."""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

import fastapi_offline
from fastapi import APIRouter, FastAPI, Request
from fastapi.openapi.docs import get_redoc_html, get_swagger_ui_html, get_swagger_ui_oauth2_redirect_html
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from fastapi.staticfiles import StaticFiles

from service.headers import csp_nonce, nonce_scripts

STATIC = Path(__file__).resolve().parents[1] / "static"
DOCS_ASSETS = Path(fastapi_offline.__file__).resolve().parent / "static"
PAGE_URL, ASSETS_URL = "/ui", "/docs-assets"

router = APIRouter(include_in_schema=False)


@router.get("/")
def home() -> RedirectResponse:
    return RedirectResponse(f"{PAGE_URL}/", status_code=307)


def nonced(request: Request, page: HTMLResponse) -> HTMLResponse:
    """A docs page with this answer's CSP nonce on its scripts (its inline one runs under the page's policy,
    `service.headers`)."""
    return HTMLResponse(nonce_scripts(bytes(page.body), csp_nonce(request)))


@router.get("/docs")
def swagger(request: Request) -> HTMLResponse:
    root = request.scope.get("root_path", "")
    page = get_swagger_ui_html(
        openapi_url=f"{root}/openapi.json",
        title="cavsync - Swagger UI",
        swagger_js_url=f"{root}{ASSETS_URL}/swagger-ui-bundle.js",
        swagger_css_url=f"{root}{ASSETS_URL}/swagger-ui.css",
        swagger_favicon_url=f"{root}{PAGE_URL}/favicon.svg",
        oauth2_redirect_url=f"{root}/docs/oauth2-redirect",
    )
    return nonced(request, page)


@router.get("/docs/oauth2-redirect")
def swagger_redirect(request: Request) -> HTMLResponse:
    return nonced(request, get_swagger_ui_oauth2_redirect_html())


# ReDoc's bundle draws its "API docs by Redocly" logo from this URL; the page serves its own picture instead.
REDOC_LOGO = "https://cdn.redoc.ly/redoc/logo-mini.svg"
REDOC_JS = "redoc.offline.js"


@lru_cache(maxsize=4)
def offline_redoc(logo_url: str) -> bytes:
    """fastapi-offline's ReDoc bundle with its one fetched outside resource (the footer logo) made local."""
    text = (DOCS_ASSETS / "redoc.standalone.js").read_text(encoding="utf-8")
    if REDOC_LOGO not in text:  # another ReDoc version: the test of the served bundle says what it fetches
        raise RuntimeError(f"fastapi-offline's ReDoc no longer has {REDOC_LOGO}: check what it fetches")
    return text.replace(REDOC_LOGO, logo_url).encode("utf-8")


@router.get("/redoc")
def redoc(request: Request) -> HTMLResponse:
    """ReDoc, with nothing fetched from another host: its script (and logo) from here, no Google fonts."""
    root = request.scope.get("root_path", "")
    return get_redoc_html(
        openapi_url=f"{root}/openapi.json",
        title="cavsync - ReDoc",
        redoc_js_url=f"{root}/{REDOC_JS}",
        redoc_favicon_url=f"{root}{PAGE_URL}/favicon.svg",
        with_google_fonts=False,
    )


@router.get(f"/{REDOC_JS}")
def redoc_js(request: Request) -> Response:
    root = request.scope.get("root_path", "")
    body = offline_redoc(f"{root}{PAGE_URL}/favicon.svg")
    return Response(body, media_type="text/javascript", headers={"Cache-Control": "public, max-age=3600"})


def mount_static(app: FastAPI) -> None:
    """The page's files under /ui (index.html for /ui/) and Swagger UI's under /docs-assets."""
    app.mount(PAGE_URL, StaticFiles(directory=STATIC, html=True), name="ui")
    app.mount(ASSETS_URL, StaticFiles(directory=DOCS_ASSETS), name="docs-assets")
