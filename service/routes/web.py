"""The web page and the interactive docs, both served by the API itself (same origin, nothing from a CDN):
`/` redirects to the page in `service/static/` (plain HTML, ES modules and CSS: no build step), `/docs` is
Swagger UI and `/redoc` ReDoc, their scripts served from the `fastapi-offline` package's files."""

from __future__ import annotations

from pathlib import Path

import fastapi_offline
from fastapi import APIRouter, FastAPI, Request
from fastapi.openapi.docs import get_redoc_html, get_swagger_ui_html, get_swagger_ui_oauth2_redirect_html
from fastapi.responses import HTMLResponse, RedirectResponse
from fastapi.staticfiles import StaticFiles

STATIC = Path(__file__).resolve().parents[1] / "static"
DOCS_ASSETS = Path(fastapi_offline.__file__).resolve().parent / "static"
PAGE_URL, ASSETS_URL = "/ui", "/docs-assets"

router = APIRouter(include_in_schema=False)


@router.get("/")
def home() -> RedirectResponse:
    return RedirectResponse(f"{PAGE_URL}/", status_code=307)


@router.get("/docs")
def swagger(request: Request) -> HTMLResponse:
    root = request.scope.get("root_path", "")
    return get_swagger_ui_html(
        openapi_url=f"{root}/openapi.json",
        title="cavsync - Swagger UI",
        swagger_js_url=f"{root}{ASSETS_URL}/swagger-ui-bundle.js",
        swagger_css_url=f"{root}{ASSETS_URL}/swagger-ui.css",
        swagger_favicon_url=f"{root}{PAGE_URL}/favicon.svg",
        oauth2_redirect_url=f"{root}/docs/oauth2-redirect",
    )


@router.get("/docs/oauth2-redirect")
def swagger_redirect() -> HTMLResponse:
    return get_swagger_ui_oauth2_redirect_html()


@router.get("/redoc")
def redoc(request: Request) -> HTMLResponse:
    root = request.scope.get("root_path", "")
    return get_redoc_html(
        openapi_url=f"{root}/openapi.json",
        title="cavsync - ReDoc",
        redoc_js_url=f"{root}{ASSETS_URL}/redoc.standalone.js",
        redoc_favicon_url=f"{root}{PAGE_URL}/favicon.svg",
        with_google_fonts=False,
    )


def mount_static(app: FastAPI) -> None:
    """The page's files under /ui (index.html for /ui/) and Swagger UI's under /docs-assets."""
    app.mount(PAGE_URL, StaticFiles(directory=STATIC, html=True), name="ui")
    app.mount(ASSETS_URL, StaticFiles(directory=DOCS_ASSETS), name="docs-assets")
