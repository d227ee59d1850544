"""Issue 28, item 4: writes cannot be forged from another site's page. A request that can change state (every
method but GET, HEAD and OPTIONS) sent by a browser from another origin is refused (403, nothing done), with or
without an API key; the page's own (same-origin) requests, origins listed in CAVSYNC_CORS_ORIGINS and clients
that send neither Origin nor Sec-Fetch-Site (curl, scripts) pass."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from service.app import create_app
from service.csrf import cross_site_refusal, normal_origin

from .conftest import API_KEY, Corpus, make_config

EVIL = "http://evil.example"
ALLOWED = "https://app.example"
OWN = "http://testserver"  # TestClient's base URL: its Host header is `testserver`

FORGERIES = {
    "origin": {"Origin": EVIL},
    "fetch-metadata": {"Sec-Fetch-Site": "cross-site", "Origin": EVIL},
    "fetch-metadata-alone": {"Sec-Fetch-Site": "cross-site"},
    "same-site": {"Sec-Fetch-Site": "same-site", "Origin": "http://other.testserver"},
    "opaque-origin": {"Origin": "null"},
    "other-port": {"Origin": "http://testserver:8080"},
}
ALLOWED_SENDERS = {
    "same-origin": {"Sec-Fetch-Site": "same-origin", "Origin": OWN},
    "origin-only": {"Origin": OWN},
    "default-port": {"Origin": "http://TestServer:80"},
    "typed-url": {"Sec-Fetch-Site": "none"},
    "no-browser": {},
    "cors-origin": {"Sec-Fetch-Site": "cross-site", "Origin": ALLOWED},
}


@pytest.fixture(params=[None, API_KEY], ids=["no-key", "key"])
def api(request: pytest.FixtureRequest, corpus: Corpus, private_data: Path) -> Iterator[TestClient]:
    """An app over a private data dir, configured without or with a key (the client then sends it: a forged
    request is refused whatever credentials ride along)."""
    key = request.param
    config = make_config(corpus, private_data, api_key=key, cors_origins=(ALLOWED,))
    headers = {"X-API-Key": key} if key else {}
    with TestClient(create_app(config), raise_server_exceptions=False, headers=headers) as client:
        yield client


def _jobs(client: TestClient) -> int:
    return client.get("/jobs").json()["total"]


@pytest.mark.parametrize("forged", FORGERIES.values(), ids=FORGERIES.keys())
def test_forged_writes_are_refused_and_change_nothing(
    api: TestClient, corpus: Corpus, private_data: Path, forged: dict[str, str]
) -> None:
    clip = corpus.clips[0]
    before = _jobs(api)
    by_path = api.post("/index", json={"paths": [str(clip)]}, headers=forged)
    form = api.post("/index", files={"files": ("a.mp4", clip.read_bytes(), "video/mp4")}, headers=forged)
    deleted = api.delete("/videos/1", headers=forged)
    for response in (by_path, form, deleted):
        assert response.status_code == 403, response.text
        detail = response.json()["detail"]
        assert detail.startswith("cross-site request refused") and "CAVSYNC_CORS_ORIGINS" in detail, detail
    assert _jobs(api) == before
    assert not any((private_data / "uploads").rglob("*"))  # the upload was not kept
    assert api.get("/videos/1").json()["status"] == "indexed"


def test_the_refusal_names_the_origin_and_the_setting(api: TestClient) -> None:
    detail = api.post("/index", json={"paths": []}, headers={"Origin": EVIL}).json()["detail"]
    assert detail == (
        f"cross-site request refused: Origin {EVIL} is not this API's origin ({OWN}); "
        "add it to CAVSYNC_CORS_ORIGINS to allow it"
    )


@pytest.mark.parametrize("sender", ALLOWED_SENDERS.values(), ids=ALLOWED_SENDERS.keys())
def test_same_origin_listed_and_headerless_writes_pass(api: TestClient, corpus: Corpus, sender: dict[str, str]) -> None:
    before = _jobs(api)
    accepted = api.post("/index", json={"paths": [str(corpus.clips[0])]}, headers=sender)
    assert accepted.status_code == 202, accepted.text
    assert _jobs(api) == before + 1
    deleted = api.delete("/videos/2", headers=sender)
    assert deleted.status_code == 200 and deleted.json()["deleted"], deleted.text


def test_searches_are_guarded_and_reads_are_not(client: TestClient) -> None:
    """A cross-site search changes nothing but costs an inference: refused as well. Reads are never refused
    here (a cross-site page cannot read their answers without CORS)."""
    search = client.post("/search/audio-to-video", data={"video_id": "1"}, headers={"Origin": EVIL})
    assert search.status_code == 403, search.text
    assert client.post("/search/audio-to-video", data={"video_id": "1"}, headers={"Origin": OWN}).status_code == 200
    assert client.get("/videos/1", headers={"Origin": EVIL, "Sec-Fetch-Site": "cross-site"}).status_code == 200


def test_origins_compare_as_browsers_send_them() -> None:
    assert normal_origin("HTTP://Example.COM:80/") == "http://example.com"
    assert normal_origin("https://example.com:443") == "https://example.com"
    assert normal_origin("http://[::1]:8000") == "http://[::1]:8000"
    assert normal_origin("http://example.com:99999") is None
    assert normal_origin("null") is None
    own, allowed = "http://127.0.0.1:8000", frozenset({"https://app.example"})
    assert cross_site_refusal({"origin": "http://127.0.0.1:8000"}, own, allowed) is None
    assert cross_site_refusal({"origin": "http://localhost:8000"}, own, allowed) is not None  # another origin
    assert cross_site_refusal({"sec-fetch-site": "same-site"}, own, allowed) is not None
    assert cross_site_refusal({"sec-fetch-site": "cross-site", "origin": "https://app.example"}, own, allowed) is None
    assert cross_site_refusal({"sec-fetch-site": "cross-site", "origin": EVIL}, own, frozenset({"*"})) is None
