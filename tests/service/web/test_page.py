"""The web page in a real browser: searching by an uploaded file, by a microphone recording and by a shared
URL; the result cards, the player seeking to a moment, the localization overlay, "more like this"; the catalog
(delete with confirmation); an indexing job from the page; the banner when the API is down; no request leaving
the machine. Assertions are on what a person sees (text, pixels, the player's position)."""

from __future__ import annotations

import io
import re
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from PIL import Image
from playwright.sync_api import Locator, Page, expect

from ...model.media_files import ffmpeg
from ..conftest import Corpus
from .conftest import Server, shot

EXCERPT_VIDEO = 7  # the excerpt is 4-7 s of the corpus's 7th clip (video id 7)


@pytest.fixture()
def app_page(page: Page, outside_requests: list[str], no_csp_violations: list[str]) -> Iterator[Page]:
    """The page, with every uncaught script error and every Content-Security-Policy violation failing the test."""
    errors: list[str] = []
    page.on("pageerror", lambda error: errors.append(str(error)))
    page.set_default_timeout(30_000)
    yield page
    assert errors == [], errors


@pytest.fixture(scope="module")
def excerpt(corpus: Corpus, tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("excerpt") / "excerpt 4s-7s.wav"
    ffmpeg("-ss", "4", "-t", "3", "-i", str(corpus.clips[EXCERPT_VIDEO - 1]), "-vn", "-ac", "1", str(path))
    return path


def cards(page: Page) -> list[dict]:
    """What each result card shows: video id, score text, moment chips."""
    return page.eval_on_selector_all(
        "#result-list .card",
        """cards => cards.map(c => ({
            id: Number(c.dataset.videoId),
            score: c.querySelector('.score-value').textContent,
            chips: [...c.querySelectorAll('.chip')].map(b => b.textContent),
        }))""",
    )


def open_search(page: Page, query: str = "") -> None:
    page.goto(f"/ui/{query}")
    expect(page.locator("#banner")).to_contain_text("Model tiny")


def test_upload_search_shows_cards_with_score_and_moment(app_page: Page, excerpt: Path) -> None:
    page = app_page
    open_search(page)
    data = list(excerpt.read_bytes())
    page.evaluate(  # a drop of the file on the drop zone, as a person dragging it from their desktop
        """([bytes, name]) => {
            const transfer = new DataTransfer();
            transfer.items.add(new File([new Uint8Array(bytes)], name, {type: 'audio/wav'}));
            const drop = new DragEvent('drop', {dataTransfer: transfer, bubbles: true});
            document.getElementById('drop-zone').dispatchEvent(drop);
        }""",
        [data, excerpt.name],
    )
    expect(page.locator("#file-name")).to_contain_text(excerpt.name)
    expect(page.locator("#query-caption")).to_contain_text("3.0 s of sound")
    page.get_by_label("How many videos").fill("12")
    page.get_by_role("button", name="Search", exact=True).click()
    expect(page.locator("#result-list .card")).to_have_count(10)  # a page of 10 of the 12
    shown = cards(page)
    found = {c["id"]: c for c in shown[:3]}
    assert "0:04–0:07" in found[EXCERPT_VIDEO]["chips"], shown[:3]  # its video, at the excerpt's moment
    assert all(re.fullmatch(r"0\.\d{3}", c["score"]) for c in shown), shown
    assert all(c["chips"] and all(re.fullmatch(r"\d+:\d\d–\d+:\d\d", chip) for chip in c["chips"]) for c in shown)
    assert page.locator("#results-page").text_content() == "Page 1 of 2"
    poster = page.locator("#result-list .card").first.locator("img.poster")
    expect(poster).to_have_js_property("complete", True)
    assert poster.evaluate("img => img.naturalWidth") == 320
    shot(page, "search")
    page.get_by_role("button", name="Next →").click()
    expect(page.locator("#result-list .card")).to_have_count(2)


def test_microphone_recording_searches(app_page: Page) -> None:
    page = app_page
    page.context.grant_permissions(["microphone"])
    open_search(page)
    page.get_by_label("Record from the microphone").check()
    page.get_by_role("button", name="● Record").click()
    expect(page.locator("#timer")).to_have_text("0:02", timeout=10_000)  # the timer runs while recording
    assert page.locator("#level").evaluate("m => m.value") > 0  # the fake device's tone moves the meter
    page.get_by_role("button", name="■ Stop").click()
    expect(page.locator("#rec-state")).to_contain_text("Recorded 2.")
    expect(page.locator("#file-name")).to_contain_text("microphone")
    expect(page.get_by_role("button", name="● Re-record")).to_be_enabled()
    expect(page.locator("#query-caption")).to_contain_text("s of sound")
    page.get_by_role("button", name="Search", exact=True).click()
    expect(page.locator("#result-list .card").first).to_be_visible()
    assert len(cards(page)) == 10 and "videos ranked" in page.locator("#results-summary").text_content()


def test_video_search_shows_the_query_frames(app_page: Page, corpus: Corpus) -> None:
    page = app_page
    open_search(page)
    page.get_by_role("radio", name=re.compile(r"^Video")).check()
    page.locator("#file-input").set_input_files(str(corpus.clips[2]))
    expect(page.locator("#frames canvas")).to_have_count(8)
    frame = page.locator("#frames canvas").first.evaluate(
        "c => { const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;"
        " let lit = 0; for (let i = 0; i < d.length; i += 4) lit += d[i] + d[i + 1] + d[i + 2] > 30; return lit; }"
    )
    assert frame > 100  # a decoded picture, not an empty canvas
    page.get_by_role("button", name="Search", exact=True).click()
    expect(page.locator("#results-summary")).to_contain_text("pictures with their sound")
    assert cards(page)[0]["id"] == 3  # its own soundtrack fits its pictures best


def test_every_control_is_labelled(app_page: Page) -> None:
    page = app_page
    for view in ("search", "catalog", "jobs"):
        page.goto(f"/ui/?view={view}")
        expect(page.locator(f"#view-{view}")).to_be_visible()
        unnamed = page.evaluate(
            """() => [...document.querySelectorAll('input, select, textarea, button')]
                .filter(e => e.offsetParent !== null)
                .filter(e => !(e.labels?.length || e.getAttribute('aria-label') || e.textContent.trim()))
                .map(e => e.outerHTML)"""
        )
        assert unnamed == [], unnamed
        assert page.locator("[aria-live]").count() >= 2
    page.goto("/ui/")
    page.keyboard.press("Tab")
    expect(page.locator(".skip-link")).to_be_focused()


def test_a_shared_url_reproduces_the_search(app_page: Page, live_server: Server) -> None:
    page = app_page
    query = "?view=search&mode=sound&source=video&video=4&start=2&end=5.2&k=6&strategy=diagonal_max"
    open_search(page, query)
    expect(page.locator("#result-list .card")).to_have_count(6)
    first = cards(page)
    expect(page.get_by_label("Video id")).to_have_value("4")
    expect(page.locator("#strategy")).to_have_value("diagonal_max")
    page.reload()
    expect(page.locator("#result-list .card")).to_have_count(6)
    assert cards(page) == first
    form = {"video_id": "4", "start": "2", "end": "5.2", "top_k": "6", "strategy": "diagonal_max"}
    answer = httpx.post(f"{live_server.url}/search/audio-to-video", data=form, timeout=60).json()
    assert [c["id"] for c in first] == [r["video_id"] for r in answer["results"]]
    assert [c["score"] for c in first] == [f"{r['score']:.3f}" for r in answer["results"]]


def test_a_moment_seeks_the_player_and_the_sound_is_located(app_page: Page) -> None:
    page = app_page
    open_search(page, "?view=search&mode=sound&source=video&video=7&start=4&end=7&k=4")
    card = page.locator("#result-list .card").first
    chip = card.locator(".chip").first
    start = float(chip.get_attribute("data-start"))
    chip.click()
    video = card.locator("video")
    expect(video).to_have_attribute("data-seeked-to", re.compile(r"\d"))
    assert abs(float(video.get_attribute("data-seeked-to")) - start) < 0.1
    assert "#t=" in video.get_attribute("src")
    video.evaluate("v => v.pause()")
    card.get_by_role("button", name="Where is the sound?").click()
    overlay = card.locator("canvas.overlay")
    expect(overlay).to_have_attribute("data-rect", re.compile(r"\{"))
    drawn = overlay.evaluate(
        """canvas => {
            const rect = JSON.parse(canvas.dataset.rect);
            const data = canvas.getContext('2d').getImageData(0, 0, canvas.width, canvas.height).data;
            let inside = 0, outside = 0, colours = new Set();
            for (let y = 0; y < canvas.height; y++) for (let x = 0; x < canvas.width; x++) {
                const i = (y * canvas.width + x) * 4;
                if (data[i + 3] === 0) continue;
                const within = x >= rect.x - 1 && x <= rect.x + rect.width + 1
                    && y >= rect.y - 1 && y <= rect.y + rect.height + 1;
                if (!within) { outside++; continue; }
                inside++;
                colours.add(data[i] >> 4 << 8 | data[i + 1] >> 4 << 4 | data[i + 2] >> 4);
            }
            const v = canvas.parentElement.querySelector('video');
            return {rect, inside, outside, colours: colours.size, width: canvas.width, height: canvas.height,
                    videoWidth: v.videoWidth, videoHeight: v.videoHeight};
        }"""
    )
    rect = drawn["rect"]
    assert drawn["outside"] == 0 and drawn["inside"] >= 0.95 * rect["width"] * rect["height"], drawn
    assert drawn["colours"] > 10, drawn  # a map, not a flat tint
    picture = min(drawn["width"] / drawn["videoWidth"], drawn["height"] / drawn["videoHeight"])
    assert abs(rect["height"] - drawn["videoHeight"] * picture) < 2  # on the picture, not on the letterbox bars
    assert abs(rect["x"] - (drawn["width"] - drawn["videoWidth"] * picture) / 2) < 2
    expect(card.locator(".legend")).to_be_visible()
    card.scroll_into_view_if_needed()
    shot(page, "results")
    card.get_by_label("Overlay opacity").fill("30")
    expect(overlay).to_have_css("opacity", "0.3")


def test_more_like_this(app_page: Page) -> None:
    page = app_page
    open_search(page, "?view=search&mode=sound&source=video&video=4&k=5")
    expect(page.locator("#result-list .card")).to_have_count(5)
    second = page.locator("#result-list .card").nth(1)
    hit = int(second.get_attribute("data-video-id"))
    second.get_by_role("button", name="More like this").click()
    expect(page).to_have_url(re.compile(rf"video={hit}\b"))
    expect(page.locator("#results-summary")).to_contain_text(f"video {hit}'s sound")
    expect(page.get_by_label("Video id")).to_have_value(str(hit))
    expect(page.locator("#result-list .card")).to_have_count(5)
    page.go_back()
    expect(page.get_by_label("Video id")).to_have_value("4")


def test_delete_from_the_catalog(app_page: Page, live_server: Server) -> None:
    page = app_page
    page.goto("/ui/?view=catalog&offset=20")
    expect(page.locator("#catalog-page")).to_have_text(re.compile(r"21–\d+ of \d+"))
    row = page.locator("#catalog-rows tr[data-id='23']")
    row.get_by_role("button").click()
    expect(page.locator("#video-detail")).to_contain_text("Video 23")
    page.locator("#video-detail").get_by_role("button", name="Delete…").click()
    dialog = page.locator("dialog#confirm")
    expect(dialog).to_be_visible()
    dialog.get_by_role("button", name="Delete").click()
    expect(page.locator("#catalog-summary")).to_contain_text("Video 23")
    expect(row.locator(".status")).to_have_text("deleted")
    assert httpx.get(f"{live_server.url}/videos/23", timeout=10).json()["status"] == "deleted"
    assert httpx.get(f"{live_server.url}/videos/23/media", timeout=10).status_code == 404


def badge_colour(badge: Locator) -> tuple[int, int, int]:
    """The colour most of the badge's pixels have (its background), as the screen shows it."""
    picture = Image.open(io.BytesIO(badge.screenshot())).convert("RGB")
    _count, colour = max(picture.getcolors(picture.width * picture.height) or [(0, (0, 0, 0))])
    return colour


def test_an_index_job_from_the_page(app_page: Page, web_media: Path) -> None:
    """A job with a failed file is not a green DONE: amber "done with errors", the failed count in red."""
    page = app_page
    page.goto("/ui/?view=jobs")
    expect(page.locator("#media-roots")).to_contain_text(str(web_media.parent))
    page.get_by_label("Paths, one per line").fill(str(web_media))
    page.get_by_role("button", name="Index these paths").click()
    job = page.locator("#job-list .job").first
    expect(job.locator(".status")).to_have_text("done with errors", timeout=120_000)
    expect(job).to_contain_text("2 of 2 files")
    expect(job.locator(".failed-count")).to_have_text("1 failed")
    expect(job.locator(".file-errors")).to_contain_text(str(web_media / "broken_upload.mp4"))  # given by path
    assert job.locator("progress").evaluate("p => p.value") == 100
    red, green, blue = badge_colour(job.locator(".status"))
    assert red > 200 and 170 < green < 240 and blue < 170, (red, green, blue)  # amber, not the green of done
    red, green, blue = job.locator(".failed-count").evaluate("e => getComputedStyle(e).color").strip("rgb()").split(",")
    assert (int(red), int(green), int(blue)) == (179, 38, 30)  # the count in the page's "bad" red
    shot(page, "jobs")


def test_a_failed_upload_job_is_red_and_names_the_file_as_sent(app_page: Page, web_media: Path) -> None:
    page = app_page
    page.goto("/ui/?view=jobs")
    page.get_by_label("Files").set_input_files(str(web_media / "broken_upload.mp4"))
    page.get_by_role("button", name="Upload and index").click()
    job = page.locator("#job-list .job").first
    expect(job.locator(".status")).to_have_text("failed", timeout=120_000)
    expect(job).to_contain_text("1 of 1 files")
    expect(job.locator(".failed-count")).to_have_text("1 failed")
    failure = job.locator(".file-errors li")
    expect(failure.locator(".path")).to_have_text("broken_upload.mp4")  # as sent, not the server's kept name
    assert not re.search(r"[0-9a-f]{12}-|uploads/", failure.inner_text()), failure.inner_text()
    red, green, blue = badge_colour(job.locator(".status"))
    assert red > 230 and green < 240 and blue < 240 and red - green > 15, (red, green, blue)  # the red of failed


def test_a_video_the_browser_cannot_play_is_explained(
    app_page: Page, live_server: Server, web_media: Path, corpus: Corpus
) -> None:
    """An AVI (MPEG-4 part 2 + MP3) indexes and searches like any file; Chromium cannot play it: the card says so."""
    avi = web_media.parent / "other" / "old_camera.avi"
    avi.parent.mkdir(exist_ok=True)
    ffmpeg("-i", str(corpus.clips[9]), "-c:v", "mpeg4", "-c:a", "libmp3lame", str(avi))
    api = httpx.Client(base_url=live_server.url, timeout=60)
    job = api.post("/index", json={"paths": [str(avi)]}).json()["job_id"]
    deadline = time.monotonic() + 120
    while api.get(f"/jobs/{job}").json()["state"] not in ("done", "failed"):
        assert time.monotonic() < deadline, "the index job did not finish"
        time.sleep(0.3)
    [video] = [v for v in api.get("/videos", params={"limit": 100}).json()["items"] if v["uri"] == str(avi.resolve())]
    assert video["status"] == "indexed", video
    page = app_page
    open_search(page, f"?view=search&mode=sound&source=video&video={video['id']}&k=2")
    card = page.locator(f"#result-list .card[data-video-id='{video['id']}']")
    expect(card.locator("img.poster")).to_have_js_property("complete", True)
    assert card.locator("img.poster").evaluate("img => img.naturalWidth") == 320  # the server decodes it
    card.get_by_role("button", name="▶ Play the moment").click()
    expect(card.locator(".card-error")).to_contain_text("This browser cannot play old_camera.avi")


def test_the_banner_says_when_the_api_is_down(page: Page, outside_requests: list[str], corpus: Corpus) -> None:
    from service.app import create_app

    from ..conftest import make_config

    server = Server(create_app(make_config(corpus))).start()
    try:
        page.goto(f"{server.url}/ui/?view=search&source=video")
        expect(page.locator("#banner")).to_contain_text("Model tiny")
    finally:
        server.stop()
    page.get_by_label("Video id").fill("3")
    page.get_by_role("button", name="Search", exact=True).click()
    banner = page.locator("#banner")
    expect(banner).to_contain_text("cannot be reached")
    expect(banner).to_have_attribute("role", "alert")
    expect(page.locator("#search-error")).to_contain_text("cannot be reached")


def test_no_request_leaves_the_machine_and_docs_work_offline(app_page: Page) -> None:
    page = app_page
    page.goto("/docs")
    expect(page.locator(".swagger-ui .info .title")).to_contain_text("cavsync")
    expect(page.locator(".opblock-summary-path").filter(has_text="/videos/{video_id}/media")).to_be_visible()
    page.goto("/redoc")
    expect(page.locator("h1").first).to_contain_text("cavsync")  # ReDoc rendered the schema
    expect(page.get_by_text("API docs by Redocly")).to_be_visible()  # its footer, whose logo came from the CDN
    assert page.locator("a[href*='redocly'] img").evaluate("img => img.complete && img.naturalWidth > 0")
    page.goto("/")
    expect(page).to_have_url(re.compile(r"/ui/$"))
    local = page.local_requests  # type: ignore[attr-defined]
    assert any("/redoc.offline.js" in url for url in local) and any("/ui/favicon.svg" in url for url in local)
    assert any("/docs-assets/swagger-ui-bundle.js" in url for url in local)
    assert any("/ui/js/main.js" in url for url in local)


def test_an_uploaded_video_plays_under_the_name_it_was_sent_with(
    app_page: Page, live_server: Server, tmp_path: Path
) -> None:
    """Issue 19: a video indexed by upload keeps its media: its card is named as sent, its poster shows, the
    player plays it (its time advances, no "cannot play"), and the catalog names it the same."""
    from training.synth import generate

    clip = sorted(generate(tmp_path / "synth", 1, seed=4242).glob("*.mp4"))[0]
    sent = "Our holiday, day 2.mp4"
    api = httpx.Client(base_url=live_server.url, timeout=60)
    job = api.post("/index", files={"files": (sent, clip.read_bytes(), "video/mp4")}).json()["job_id"]
    deadline = time.monotonic() + 120
    while (state := api.get(f"/jobs/{job}").json())["state"] not in ("done", "failed"):
        assert time.monotonic() < deadline, "the index job did not finish"
        time.sleep(0.3)
    assert state["done"] == 1, state
    listed = api.get("/videos", params={"limit": 1000}).json()["items"]
    [position] = [i for i, v in enumerate(listed) if v["name"] == sent]  # other tests may have deleted videos
    video = listed[position]
    page = app_page
    open_search(page, f"?view=search&mode=sound&source=video&video={video['id']}&k=2")
    card = page.locator(f"#result-list .card[data-video-id='{video['id']}']")
    expect(card.locator("h3")).to_contain_text(sent)
    expect(card.locator("img.poster")).to_have_js_property("complete", True)
    assert card.locator("img.poster").evaluate("img => img.naturalWidth") == 320
    start = float(card.locator(".chip").first.get_attribute("data-start"))
    card.get_by_role("button", name="▶ Play the moment").click()
    player = card.locator("video")
    expect(player).to_have_count(1)
    page.wait_for_function(  # playing: its time moves past the moment's start
        "([el, t]) => el.currentTime > t + 0.5", arg=[player.element_handle(), start], timeout=30_000
    )
    assert card.locator(".card-error").is_hidden() and "cannot play" not in card.text_content()
    page.goto(f"/ui/?view=catalog&offset={position}")
    expect(page.locator(f"#catalog-rows tr[data-id='{video['id']}']")).to_contain_text(sent)
