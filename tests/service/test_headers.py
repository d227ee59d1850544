"""Issue 28, item 6: every answer of the API carries `X-Content-Type-Options: nosniff`, frame options and a
referrer policy; the page, /docs and /redoc a Content-Security-Policy allowing only the API's own origin (inline
script only by a per-answer nonce), media and posters only the browser's own player of themselves, everything
else a policy that allows nothing (`default-src 'none'; sandbox`)."""

from __future__ import annotations

import re
from collections.abc import Mapping

import pytest
from fastapi.testclient import TestClient

from service.app import create_app

from .conftest import Corpus, make_config

HTML = ["/ui/", "/docs", "/redoc", "/docs/oauth2-redirect"]
OTHER = [
    "/ui/js/main.js",
    "/ui/css/app.css",
    "/ui/favicon.svg",
    "/docs-assets/swagger-ui-bundle.js",
    "/redoc.offline.js",
    "/videos",
    "/openapi.json",
    "/health",
    "/videos/999",  # a JSON 404
]
MEDIA = ["/videos/5/media", "/videos/5/poster"]
INLINE_SCRIPT = re.compile(r"<script(?![^>]*\ssrc=)([^>]*)>", re.IGNORECASE)


def policy(headers: Mapping[str, str]) -> dict[str, list[str]]:
    """An answer's Content-Security-Policy as directive -> values."""
    directives = [d.split() for d in headers["content-security-policy"].split(";") if d.strip()]
    return {d[0]: d[1:] for d in directives}


def common(headers: Mapping[str, str], what: str) -> None:
    """The headers every answer carries."""
    assert headers["x-content-type-options"] == "nosniff", what
    assert headers["x-frame-options"] == "DENY", what
    assert headers["referrer-policy"] == "same-origin", what
    assert policy(headers)["frame-ancestors"] == ["'none'"], what


@pytest.mark.parametrize("path", HTML)
def test_the_page_and_the_docs_allow_only_their_own_origin(client: TestClient, path: str) -> None:
    answer = client.get(path)
    assert answer.status_code == 200 and answer.headers["content-type"].startswith("text/html"), path
    common(answer.headers, str(answer.request.url))
    rules = policy(answer.headers)
    assert rules["default-src"] == ["'self'"] and rules["object-src"] == ["'none'"]
    assert rules["base-uri"] == ["'none'"] and rules["form-action"] == ["'self'"]
    scripts = rules["script-src"]
    assert "'unsafe-inline'" not in scripts and "'unsafe-eval'" not in scripts and "'self'" in scripts
    assert all(source in ("'self'", "'none'") or source.startswith("'nonce-") for source in scripts), scripts
    for directive, sources in rules.items():  # no other host, no scheme-wide source but data:/blob: media
        assert not any(s in ("*", "http:", "https:") or "://" in s for s in sources), (directive, sources)
    nonces = {s[len("'nonce-") : -1] for s in scripts if s.startswith("'nonce-")}
    inline = INLINE_SCRIPT.findall(answer.text)
    assert all(f'nonce="{n}"' in attrs for attrs in inline for n in nonces), inline  # each inline script
    assert inline or not path.startswith("/docs"), path  # Swagger UI's pages have inline script: checked above
    if nonces:
        again = policy(client.get(path).headers)["script-src"]
        assert not nonces & {s[len("'nonce-") : -1] for s in again}  # a fresh nonce per answer


def test_the_page_allows_no_inline_style_the_docs_do(client: TestClient) -> None:
    """The page sets its styles from its CSS file and through the CSSOM; Swagger UI and ReDoc insert `<style>`
    elements at run time (no nonce support in their bundles): 'unsafe-inline' for their styles only."""
    assert policy(client.get("/ui/").headers)["style-src"] == ["'self'"]
    for path in ("/docs", "/redoc"):
        assert policy(client.get(path).headers)["style-src"] == ["'self'", "'unsafe-inline'"]


@pytest.mark.parametrize("path", OTHER)
def test_every_other_answer_allows_nothing(client: TestClient, path: str) -> None:
    answer = client.get(path)
    assert answer.status_code in (200, 404), (path, answer.status_code)
    common(answer.headers, str(answer.request.url))
    rules = policy(answer.headers)
    assert rules["default-src"] == ["'none'"] and rules["sandbox"] == [], (path, rules)


@pytest.mark.parametrize("path", MEDIA)
def test_media_answers_let_only_the_browsers_own_player_load_them(client: TestClient, path: str) -> None:
    """Opened as a document (a link to a video), a media answer is shown by the browser's own player, which
    loads that same URL: media and pictures from 'self', nothing else, no script of any kind."""
    answer = client.get(path)
    assert answer.status_code == 200, (path, answer.status_code)
    common(answer.headers, str(answer.request.url))
    rules = policy(answer.headers)
    assert rules["default-src"] == ["'none'"] and "script-src" not in rules, (path, rules)
    assert rules["media-src"] == ["'self'"] and rules["img-src"] == ["'self'"], (path, rules)


def test_range_errors_and_head_answers_carry_the_headers(client: TestClient) -> None:
    for answer in (
        client.get("/videos/5/media", headers={"Range": "bytes=99999999-"}),
        client.head("/videos/5/media"),
        client.head("/ui/"),
    ):
        common(answer.headers, str(answer.request.url))


def test_answers_made_outside_the_routes_carry_them_too(corpus: Corpus) -> None:
    """The 413 of a declared body over the limit (answered before FastAPI) and a 405."""
    app = create_app(make_config(corpus, max_upload_bytes=1000))
    bare = TestClient(app, raise_server_exceptions=False)  # no lifespan: nothing of the model needed
    too_long = bare.post("/search/tokens", content=b"x" * 2000, headers={"Content-Type": "application/json"})
    assert too_long.status_code == 413
    common(too_long.headers, "413")
    not_allowed = bare.put("/videos")
    assert not_allowed.status_code == 405
    common(not_allowed.headers, "405")
