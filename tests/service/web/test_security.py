"""Issue 28 in a real browser: an uploaded file that is both an mp4 and an HTML page, opened by its media URL,
runs nothing (it is served as the video it is, with nosniff and a policy that allows no script); the page and
the docs run under a Content-Security-Policy that blocks any script they did not ship (and, by `app_page` in
test_page.py, every flow of the page runs with no violation of it)."""

from __future__ import annotations

import time

import httpx
import pytest
from playwright.sync_api import Page, expect

from ..conftest import Corpus
from .conftest import Server

MARK = "polyglot-ran"
POLYGLOT_HTML = (
    f'<html><body><script>document.title = "{MARK}"; fetch("/health?{MARK}=1")</script>'
    f'<img src="/health?{MARK}=2"></body></html>'
).encode()
INJECT = """() => {
    const script = document.createElement('script');
    script.textContent = 'window.injected = true';
    document.body.append(script);
    return window.injected === true;
}"""


def _index_upload(server: Server, name: str, data: bytes) -> int:
    api = httpx.Client(base_url=server.url, timeout=60)
    job = api.post("/index", files={"files": (name, data, "text/html")}).json()["job_id"]
    deadline = time.monotonic() + 120
    while (state := api.get(f"/jobs/{job}").json())["state"] not in ("done", "failed"):
        assert time.monotonic() < deadline, "the index job did not finish"
        time.sleep(0.3)
    assert state["done"] == 1, state
    [video] = [v for v in api.get("/videos", params={"limit": 1000}).json()["items"] if v["name"] == name]
    return int(video["id"])


def test_an_uploaded_polyglot_opened_by_its_media_url_runs_nothing(
    page: Page, outside_requests: list[str], live_server: Server, corpus: Corpus
) -> None:
    """A valid mp4 with an HTML page appended, uploaded as `report.html`: opening its media URL shows a video
    (or offers nothing), never runs its script: the title stays, no request it would make is made."""
    video_id = _index_upload(live_server, "report.html", corpus.clips[5].read_bytes() + b"\n" + POLYGLOT_HTML)
    made: list[str] = []
    page.on("request", lambda request: made.append(request.url) if MARK in request.url else None)
    answer = page.goto(f"/videos/{video_id}/media")
    page.wait_for_timeout(1500)  # a script would have run by now (it runs as the document is parsed)
    assert page.title() != MARK and made == [], (page.title(), made)
    assert answer is not None, "no answer"
    assert answer.headers["content-type"] == "video/mp4", answer.headers
    assert page.evaluate("() => document.contentType") == "video/mp4"


@pytest.mark.parametrize("path", ["/ui/", "/docs", "/redoc"])
def test_the_page_and_the_docs_run_no_script_they_did_not_ship(
    page: Page, outside_requests: list[str], csp_violations: list[str], path: str
) -> None:
    """Under the policy, a script element added at run time (what an injected one would be) does not run, and is
    reported as a violation (so `no_csp_violations`' silence elsewhere means something). (Playwright's evaluate
    itself is exempt from the policy: eval cannot be tried from here; test_headers.py checks 'unsafe-eval' is
    never allowed.)"""
    page.goto(path)
    expect(page.locator("#banner, .swagger-ui .info .title, h1").first).to_be_visible()
    assert page.evaluate(INJECT) is False
    page.wait_for_timeout(200)  # the violation events are queued as tasks
    assert any("script-src" in v for v in csp_violations), csp_violations
