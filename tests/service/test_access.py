"""Issue 28, item 5: with CAVSYNC_API_ACCESS=all every route but /health and the page's and docs' files needs
the API key, sent as X-API-Key or as the session cookie POST /session sets (what <img> and <video> send); with
`writes` (the default) reads stay open and the cookie also unlocks the write routes."""

from __future__ import annotations

import re
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.routing import iter_route_contexts
from fastapi.testclient import TestClient
from pydantic import SecretStr
from starlette.routing import Mount, Route

from service.access import SESSION_COOKIE, session_token, valid_session
from service.app import create_app
from service.config import ServiceConfig

from .conftest import API_KEY, Corpus, make_config

JOB = str(uuid.UUID(int=7))
# Every read route with a request it answers 200 with the key; the write routes are test_errors.py's.
READS: dict[str, tuple[str, str, dict]] = {
    "videos": ("get", "/videos", {}),
    "video": ("get", "/videos/1", {}),
    "media": ("get", "/videos/1/media", {}),
    "poster": ("get", "/videos/1/poster", {}),
    "embeddings": ("get", "/videos/1/embeddings", {}),
    "jobs": ("get", "/jobs", {}),
    "roots": ("get", "/index/roots", {}),
    "metrics": ("get", "/metrics", {}),
    "audio-to-video": ("post", "/search/audio-to-video", {"data": {"video_id": "1", "top_k": "2"}}),
    "video-to-audio": ("post", "/search/video-to-audio", {"data": {"video_id": "1", "top_k": "2"}}),
    "tokens": ("post", "/search/tokens", {"json": {"tokens": [[0.1] * 128], "target": "audio", "top_k": 2}}),
    "localize": ("post", "/localize", {"data": {"video_id": "1", "audio_video_id": "1"}}),
}
# What answers without a key under `all`: written out here, not imported, so that opening a route is a visible
# change to this test. /ui and /docs-assets are the page's and Swagger UI's files (mounts).
OPEN = {"/health", "/", "/docs", "/docs/oauth2-redirect", "/redoc", "/redoc.offline.js", "/openapi.json", "/session"}
OPEN_MOUNTS = {"/ui": "/ui/", "/docs-assets": "/docs-assets/swagger-ui.css"}


@pytest.fixture(scope="module")
def locked(corpus: Corpus) -> Iterator[TestClient]:
    """The corpus (read only) served with CAVSYNC_API_ACCESS=all; the client sends no key by itself (its wrong
    keys are not throttled here: the throttle has its own test)."""
    config = make_config(corpus, api_key=API_KEY, api_access="all", wrong_keys_per_minute=10_000)
    with TestClient(create_app(config), raise_server_exceptions=False) as client:
        yield client


def _send(client: TestClient, method: str, path: str, kwargs: dict, **extra: object):  # noqa: ANN202
    return getattr(client, method)(path, **kwargs, **extra)


@pytest.mark.parametrize(("method", "path", "kwargs"), READS.values(), ids=READS.keys())
def test_every_read_needs_the_key_under_all(locked: TestClient, method: str, path: str, kwargs: dict) -> None:
    refused = _send(locked, method, path, kwargs)
    assert refused.status_code == 401, refused.text
    assert "X-API-Key" in refused.json()["detail"] and refused.headers["WWW-Authenticate"] == "ApiKey"
    assert _send(locked, method, path, kwargs, headers={"X-API-Key": "wrong"}).status_code == 403
    assert _send(locked, method, path, kwargs, headers={"X-API-Key": API_KEY}).status_code == 200


@pytest.mark.parametrize(("method", "path", "kwargs"), READS.values(), ids=READS.keys())
def test_the_session_cookie_unlocks_every_read(locked: TestClient, method: str, path: str, kwargs: dict) -> None:
    token = session_token(SecretStr(API_KEY), now=1e10 - 3600)  # valid for a while, whatever the clock says
    locked.cookies.set(SESSION_COOKIE, token)
    try:
        assert _send(locked, method, path, kwargs).status_code == 200
    finally:
        locked.cookies.clear()


def test_health_the_page_and_the_docs_stay_open(locked: TestClient) -> None:
    assert locked.get("/health").json()["status"] == "ok"
    assert "<title>cavsync" in locked.get("/ui/").text
    assert locked.get("/ui/js/api.js").status_code == 200
    assert locked.get("/openapi.json").json()["info"]["title"] == "cavsync"
    assert locked.get("/docs").status_code == locked.get("/redoc").status_code == 200
    assert locked.get("/", follow_redirects=False).headers["location"] == "/ui/"


def test_login_sets_an_httponly_strict_cookie_that_is_not_the_key(locked: TestClient) -> None:
    assert locked.post("/session").status_code == 401
    assert locked.post("/session", headers={"X-API-Key": "wrong"}).status_code == 403
    answer = locked.post("/session", headers={"X-API-Key": API_KEY})
    assert answer.status_code == 204, answer.text
    cookie = answer.headers["set-cookie"]
    assert re.match(rf"{SESSION_COOKIE}=[0-9]+\.[0-9a-f]{{64}};", cookie), cookie
    assert {"HttpOnly", "SameSite=strict", "Path=/"} <= {part.strip() for part in cookie.split(";")}, cookie
    assert "Max-Age=43200" in cookie and API_KEY not in cookie
    assert locked.get("/videos/1").status_code == 200  # the client keeps the cookie
    cleared = locked.delete("/session")
    assert cleared.status_code == 204 and "Max-Age=0" in cleared.headers["set-cookie"]
    assert locked.get("/videos/1").status_code == 401


def test_an_expired_forged_or_other_keys_session_is_401() -> None:
    key, now = SecretStr(API_KEY), 1_700_000_000.0
    token = session_token(key, now)
    assert valid_session(token, key, now + 3600)
    assert not valid_session(token, key, now + 13 * 3600)  # expired
    assert not valid_session(token, SecretStr("another-key"), now)  # the key changed: every session ends
    expires, signature = token.split(".")
    assert not valid_session(f"{int(expires) + 3600}.{signature}", key, now)  # its time moved: signature broken
    assert not valid_session("", key, now) and not valid_session("١٢٣.abc", key, now)


def test_a_stale_cookie_is_asked_again(locked: TestClient) -> None:
    locked.cookies.set(SESSION_COOKIE, session_token(SecretStr(API_KEY), now=1_000_000.0))  # long expired
    try:
        answer = locked.get("/videos")
        assert answer.status_code == 401 and "POST /session" in answer.json()["detail"], answer.text
    finally:
        locked.cookies.clear()


def _concrete(path: str) -> str:
    """A path of the route with a value for each parameter."""
    return re.sub(r"\{(\w+)(:\w+)?\}", lambda m: JOB if m.group(1) == "job_id" else "1", path)


def _gated(client: TestClient, method: str, path: str) -> bool:
    """Whether the access gate answered (its 401 names the setting; a route's own 401 does not)."""
    answer = client.request(method, path, follow_redirects=False)
    if answer.status_code != 401:
        return False
    return method == "HEAD" or "CAVSYNC_API_ACCESS=all" in answer.json()["detail"]  # HEAD: no body; GETs never 401


def test_every_route_but_the_open_ones_needs_the_key(locked: TestClient) -> None:
    """Enumerates the app's routes (new ones included): the gate refuses each without the key unless it is
    listed as open above, and lets the open ones through."""
    checked = []
    for route in iter_route_contexts(locked.app.routes):  # type: ignore[attr-defined]  # included routers flattened
        if isinstance(route.original_route, Mount):
            path = OPEN_MOUNTS.get(route.path, f"{route.path}/x")
            assert _gated(locked, "GET", path) == (route.path not in OPEN_MOUNTS), route.path
            checked.append(route.path)
            continue
        assert isinstance(route.original_route, Route) and route.path, route
        for method in sorted(route.methods or ()):
            assert _gated(locked, method, _concrete(route.path)) == (route.path not in OPEN), (method, route.path)
            checked.append(f"{method} {route.path}")
    assert {"GET /videos/{video_id}/media", "HEAD /videos/{video_id}/media", "DELETE /videos/{video_id}"} <= set(
        checked
    )
    assert len(checked) > 30, checked


def test_writes_mode_keeps_reads_open_and_accepts_the_cookie_for_writes(corpus: Corpus, private_data: Path) -> None:
    with TestClient(create_app(make_config(corpus, private_data, api_key=API_KEY))) as client:
        assert client.get("/videos/1/media").status_code == 200
        assert client.delete("/videos/1").status_code == 401
        assert client.post("/session", headers={"X-API-Key": API_KEY}).status_code == 204
        assert client.delete("/videos/1").status_code == 200  # the cookie, no header


def test_login_without_a_configured_key_says_none_is_needed(client: TestClient) -> None:
    answer = client.post("/session", headers={"X-API-Key": "anything"})
    assert answer.status_code == 400 and "CAVSYNC_API_KEY" in answer.json()["detail"], answer.text


def test_all_without_a_key_cannot_be_built(corpus: Corpus) -> None:
    with pytest.raises(ValueError, match="CAVSYNC_API_ACCESS=all.*CAVSYNC_API_KEY"):
        ServiceConfig(model_path=corpus.data, api_access="all")


def test_wrong_keys_are_throttled_per_address(corpus: Corpus, private_data: Path) -> None:
    """OWASP: key guesses are throttled. The 11th wrong key from one address within a minute, and then even the
    right one, answer 429 with Retry-After, on the login route and on every route that takes the key; another
    address is not held up."""
    config = make_config(corpus, private_data, api_key=API_KEY, api_access="all")
    with TestClient(create_app(config), raise_server_exceptions=False) as client:
        wrong = [client.post("/session", headers={"X-API-Key": f"guess-{n}"}).status_code for n in range(10)]
        assert wrong == [403] * 10
        for attempt in (
            client.post("/session", headers={"X-API-Key": "guess-10"}),
            client.post("/session", headers={"X-API-Key": API_KEY}),
            client.get("/videos", headers={"X-API-Key": API_KEY}),
            client.delete("/videos/1", headers={"X-API-Key": API_KEY}),
        ):
            assert attempt.status_code == 429, attempt.text
            assert 1 <= int(attempt.headers["Retry-After"]) <= 60
            assert "too many wrong API keys" in attempt.json()["detail"]
        elsewhere = TestClient(client.app, client=("192.0.2.7", 50000))
        assert elsewhere.get("/videos", headers={"X-API-Key": API_KEY}).status_code == 200
