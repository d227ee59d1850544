"""The attack run's browser half (issue 28): names made of markup, and a polyglot upload, run no script in the
page. A hostile user uploads files named as HTML (an `<img onerror>`, a `<script>`, a bidi override) and an mp4
with a page appended to it; a person then browses the jobs, the catalog, a result card and the video's media URL.
Every one of those scripts would set `window.__pwned` (or the title) if it ran: the count of scripts run is 0,
and each name is shown as the text it is."""

from __future__ import annotations

import time
from collections.abc import Iterator

import httpx
import pytest
from playwright.sync_api import Page, expect

from .conftest import Server

PAYLOAD = "window.__pwned=(window.__pwned||0)+1;document.title='pwned'"
NAMES = {  # no "/" in them: an upload's name loses its folders
    "img": f'<img src=x onerror="{PAYLOAD}">.mp4',
    "svg": f'<svg onload="{PAYLOAD}">.mp4',
    "bidi": "invoice\u202ecod.exe\u202c.mp4",
}
POLYGLOT_PAGE = f"<html><body><script>{PAYLOAD};fetch('/index/roots')</script></body></html>".encode()


def _wait_job(api: httpx.Client, job_id: str) -> dict:
    deadline = time.monotonic() + 120
    while (state := api.get(f"/jobs/{job_id}").json())["state"] in ("queued", "running"):
        assert time.monotonic() < deadline, state
        time.sleep(0.3)
    return state


@pytest.fixture(scope="module")
def hostile_videos(live_server: Server, tmp_path_factory: pytest.TempPathFactory) -> dict[str, int]:
    """The hostile uploads indexed (each of its own content), by kind -> video id (and `offset`: the catalog page
    that lists them); one broken upload too."""
    from training.synth import generate

    clips = sorted(generate(tmp_path_factory.mktemp("hostile"), 4, seed=2828).glob("*.mp4"))
    api = httpx.Client(base_url=live_server.url, timeout=60)
    sent = [(name, clip.read_bytes()) for name, clip in zip(NAMES.values(), clips, strict=False)]
    sent.append(("attack notes.html", clips[3].read_bytes() + POLYGLOT_PAGE))
    sent.append((NAMES["img"].replace(".mp4", " broken.mp4"), b"not a video" * 100))
    job = api.post("/index", files=[("files", (name, data, "video/mp4")) for name, data in sent]).json()["job_id"]
    state = _wait_job(api, job)
    assert state["done"] == 4 and state["failed"] == 1, state
    listed = api.get("/videos", params={"limit": 1000, "status": "indexed"}).json()["items"]
    by_name = {v["name"]: v["id"] for v in listed}
    ids = {kind: next(i for n, i in by_name.items() if n.startswith(name[:7])) for kind, name in NAMES.items()}
    ids["polyglot"] = by_name["attack notes.html"]
    every = [v["id"] for v in api.get("/videos", params={"limit": 1000}).json()["items"]]
    ids["offset"] = every.index(min(ids.values()))  # the catalog page that shows them first
    return ids


@pytest.fixture()
def watched(page: Page, outside_requests: list[str], no_csp_violations: list[str]) -> Iterator[Page]:
    """The page, with every dialog, script error and CSP violation recorded: a test fails on any."""
    seen: list[str] = []
    page.on("dialog", lambda dialog: (seen.append(dialog.message), dialog.dismiss()))
    page.on("pageerror", lambda error: seen.append(str(error)))
    page.set_default_timeout(30_000)
    yield page
    assert seen == [], seen


def _ran(page: Page) -> int:
    return int(page.evaluate("() => (window.__pwned || 0) + (document.title === 'pwned' ? 1 : 0)"))


def test_markup_names_are_shown_as_text_and_run_nothing(watched: Page, hostile_videos: dict[str, int]) -> None:
    page = watched
    runs = 0
    page.goto("/ui/?view=jobs")
    job = page.locator("#job-list .job").first
    expect(job.locator(".file-errors li")).to_contain_text("<img src=x onerror=")  # named as sent, as text
    assert job.locator("img[src='x']").count() == 0
    runs += _ran(page)
    page.goto(f"/ui/?view=catalog&offset={hostile_videos['offset']}")
    for kind in ("img", "svg"):
        row = page.locator(f"#catalog-rows tr[data-id='{hostile_videos[kind]}']")
        expect(row).to_contain_text(NAMES[kind][:12])
    assert page.locator("#catalog-rows img[src='x']").count() == 0
    bidi = page.locator(f"#catalog-rows tr[data-id='{hostile_videos['bidi']}']").inner_text()
    assert "\u202e" not in bidi, bidi  # the override is not applied to what a person reads
    runs += _ran(page)
    for kind in ("img", "svg", "bidi"):
        page.goto(f"/ui/?view=search&mode=sound&source=video&video={hostile_videos[kind]}&k=3")
        card = page.locator(f"#result-list .card[data-video-id='{hostile_videos[kind]}']")
        expect(card.locator("h3")).to_be_visible()
        runs += _ran(page)
    assert runs == 0


def test_a_polyglot_upload_opened_in_the_browser_plays_and_runs_nothing(
    watched: Page, live_server: Server, hostile_videos: dict[str, int]
) -> None:
    page = watched
    requests: list[str] = []
    page.on("request", lambda request: requests.append(request.url))
    answer = page.goto(f"{live_server.url}/videos/{hostile_videos['polyglot']}/media")
    assert answer is not None and answer.headers["content-type"].startswith("video/mp4"), answer
    player = page.locator("video")  # the browser's own player document plays the file (its policy lets it)
    page.wait_for_function("el => el.currentTime > 0.5", arg=player.element_handle(), timeout=30_000)
    assert _ran(page) == 0
    assert not any(url.endswith("/index/roots") for url in requests), requests
