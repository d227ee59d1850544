"""What the web page needs from the API: the media file with HTTP Range, poster frames, the job list, the page
and the docs served offline, nothing outside the catalog readable; and the query-upload details (codec
parameters in Content-Type, the uploaded name in errors, times rounded to the ms, no orphan upload)."""

from __future__ import annotations

import io
import re
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from PIL import Image

from service.app import create_app

from ..model.media_files import ffmpeg
from .conftest import API_KEY, Corpus, make_config, upload
from .test_catalog import _wait_for_job


# ------------------------------------------------------------------------------------ media
def test_media_answers_a_range_with_exactly_those_bytes(client: TestClient, corpus: Corpus) -> None:
    data = corpus.clips[4].read_bytes()
    part = client.get("/videos/5/media", headers={"Range": "bytes=100-199"})
    assert part.status_code == 206
    assert part.content == data[100:200] and len(part.content) == 100
    assert part.headers["content-range"] == f"bytes 100-199/{len(data)}"
    whole = client.get("/videos/5/media")
    assert whole.status_code == 200 and whole.content == data
    assert whole.headers["content-type"] == "video/mp4" and whole.headers["accept-ranges"] == "bytes"
    assert client.get("/videos/5/media", headers={"Range": f"bytes={len(data) + 10}-"}).status_code == 416


def test_media_of_unknown_deleted_or_gone_videos_is_404(writable_client: TestClient, private_data: Path) -> None:
    from indexer.catalog.tables import Video, open_catalog

    assert writable_client.get("/videos/999/media").status_code == 404
    assert writable_client.delete("/videos/2").status_code == 200
    gone = writable_client.get("/videos/2/media")
    assert gone.status_code == 404 and "deleted" in gone.json()["detail"]
    sessions = open_catalog(f"sqlite:///{private_data / 'catalog.db'}")
    with sessions() as session:
        session.get(Video, 3).uri = str(private_data / "moved_away.mp4")
        session.commit()
    moved = writable_client.get("/videos/3/media")
    assert moved.status_code == 404 and "gone" in moved.json()["detail"]
    assert writable_client.get("/videos/3/poster").status_code == 404


SECRET_PATHS = [
    "/videos/1/media/../../../../etc/passwd",
    "/videos/..%2f..%2f..%2fetc%2fpasswd/media",
    "/ui/../../../../etc/passwd",
    "/ui/..%2f..%2f..%2f..%2fetc%2fpasswd",
    "/ui/%2e%2e/%2e%2e/app.py",
    "/ui/%2e%2e/app.py",
    "/ui//etc/passwd",
    "/docs-assets/../../../../etc/passwd",
    "/docs-assets/%2e%2e/__init__.py",
    "/videos/1/media?path=/etc/passwd",
    "/videos/1/poster?path=/etc/passwd",
    "/videos/-1/media",
    "/videos/0/media",
    "/videos/1%00/media",
]


@pytest.mark.parametrize("url", SECRET_PATHS)
def test_no_path_outside_the_catalog_is_readable(client: TestClient, url: str) -> None:
    answer = client.get(url)
    assert b"root:" not in answer.content and b"create_app" not in answer.content, url
    assert b"fastapi_offline" not in answer.content, url
    if answer.status_code == 200:  # only the catalog's own video 1 (a query string is ignored)
        assert answer.headers["content-type"] in ("video/mp4", "image/jpeg"), url


# ------------------------------------------------------------------------------------ poster
def test_poster_is_a_jpeg_frame_at_the_time(client: TestClient) -> None:
    answer = client.get("/videos/1/poster", params={"time": 4.5, "width": 160})
    assert answer.status_code == 200 and answer.headers["content-type"] == "image/jpeg"
    image = Image.open(io.BytesIO(answer.content))
    assert image.format == "JPEG" and image.width == 160 and image.height > 0
    assert answer.headers["x-frame-time"] == "4.500"
    past = client.get("/videos/1/poster", params={"time": 60})
    assert past.status_code == 422 and "past the end" in past.json()["detail"]
    assert client.get("/videos/1/poster", params={"width": 5000}).status_code == 422
    assert client.get("/videos/999/poster").status_code == 404


# ------------------------------------------------------------------------------------ jobs
def test_jobs_are_listed_newest_first_with_their_errors(corpus: Corpus, private_data: Path, tmp_path: Path) -> None:
    media = tmp_path / "media"
    media.mkdir()
    (media / "broken.mp4").write_bytes(b"not a video at all" * 100)
    config = make_config(corpus, private_data, media_roots=[media], api_key=API_KEY)
    with TestClient(create_app(config), headers={"X-API-Key": API_KEY}) as client:
        roots = client.get("/index/roots").json()
        assert roots == {"media_roots": [str(media)], "api_key_required": True}
        assert client.get("/jobs").json() == {"total": 0, "limit": 20, "offset": 0, "items": []}
        ids = [client.post("/index", json={"paths": [str(media)]}).json()["job_id"] for _ in range(3)]
        for job_id in ids:
            _wait_for_job(client, job_id)
        page = client.get("/jobs", params={"limit": 2}).json()
        assert (page["total"], page["limit"], len(page["items"])) == (3, 2, 2)
        rest = client.get("/jobs", params={"limit": 2, "offset": 2}).json()["items"]
        listed = [job["id"] for job in page["items"] + rest]
        assert sorted(listed) == sorted(ids) and listed[-1] == ids[0]  # newest first
        job = rest[0]
        assert (job["state"], job["partial"], job["failed"], job["total"]) == ("failed", False, 1, 1), job
        assert "files" not in job and [f["name"] for f in job["failures"]] == [str((media / "broken.mp4").resolve())]
        assert list(job["errors"]) == [str((media / "broken.mp4").resolve())]
        assert client.get("/jobs", params={"limit": 0}).status_code == 422


def test_an_upload_of_content_already_indexed_leaves_no_file(writable_client: TestClient, corpus: Corpus) -> None:
    clip = corpus.clips[5]
    response = writable_client.post("/index", files={"files": ("again.mp4", clip.read_bytes(), "video/mp4")})
    assert response.status_code == 202, response.text
    job = _wait_for_job(writable_client, response.json()["job_id"])
    assert (job["state"], job["partial"], job["skipped"], job["done"]) == ("done", False, 1, 0), job
    assert job["files"][0]["path"] is None and job["files"][0]["name"] == "again.mp4"  # an upload: no server path
    uploads = Path(writable_client.app.state.config.data.uploads)  # type: ignore[attr-defined]
    assert not uploads.exists() or list(uploads.iterdir()) == []


# ------------------------------------------------------------------------------------ page and docs
def test_root_redirects_to_the_page_and_its_files_are_served(client: TestClient) -> None:
    home = client.get("/", follow_redirects=False)
    assert home.status_code == 307 and home.headers["location"] == "/ui/"
    page = client.get("/ui/")
    assert page.status_code == 200 and "<title>cavsync" in page.text
    for src in re.findall(r'(?:src|href)="([^"]+)"', page.text):
        assert not src.startswith(("http:", "https:", "//")), src  # same origin only
        if src.startswith("/"):
            assert client.get(src).status_code == 200, src
    script = client.get("/ui/js/main.js").headers["content-type"]
    assert script.startswith(("text/javascript", "application/javascript")), script


def test_docs_work_offline(client: TestClient) -> None:
    for url in ("/docs", "/redoc"):
        html = client.get(url).text
        assets = re.findall(r'(?:src|href)="([^"]+)"', html)
        assert assets and all(a.startswith("/") for a in assets), assets  # no CDN
        for asset in assets:
            assert client.get(asset).status_code == 200, asset
    assert "fonts.googleapis" not in client.get("/redoc").text


# A URL of another host that a page or script would fetch by itself (a picture, a font, a style sheet); the scripts
# the docs load are checked to be same-origin from their HTML.
FETCHED = re.compile(
    r"(?:https?:)?//[a-z0-9.-]+\.[a-z]{2,}/[^\s\"'`)]*\.(?:svg|png|jpe?g|gif|ico|woff2?|ttf|otf|css)\b"
)


def test_docs_reference_no_other_host(client: TestClient) -> None:
    """/docs and /redoc, and every script and style sheet they load, name no resource of another host."""
    for url in ("/docs", "/redoc"):
        html = client.get(url).text
        assert not FETCHED.findall(html), url
        assert all(a.startswith("/") for a in re.findall(r'(?:src|href)="([^"]+)"', html)), url
        for asset in re.findall(r'(?:src|href)="([^"]+)"', html):
            text = client.get(asset).text
            assert not FETCHED.findall(text), (asset, sorted(set(FETCHED.findall(text)))[:5])
    assert "cdn.redoc.ly" not in client.get("/redoc.offline.js").text  # its footer logo is served from here


def test_head_answers_wherever_get_does(client: TestClient, corpus: Corpus) -> None:
    """HEAD on every GET route: the GET's status and headers, no body (the media file's size, none of its bytes)."""
    size = corpus.clips[4].stat().st_size
    for url in (
        "/health",
        "/docs",
        "/redoc",
        "/metrics",
        "/openapi.json",
        "/videos",
        "/videos/5",
        "/videos/5/media",
        "/videos/5/poster",
        "/jobs",
        "/index/roots",
        "/ui/",
        "/ui/js/main.js",
        "/redoc.offline.js",
    ):
        head, get = client.head(url), client.get(url)
        assert (head.status_code, head.content) == (get.status_code, b"") == (200, b""), url
        assert head.headers["content-type"] == get.headers["content-type"], url
        if url != "/metrics":  # its counters move between the two requests
            assert head.headers["content-length"] == get.headers["content-length"] == str(len(get.content)), url
    media = client.head("/videos/5/media")
    assert media.headers["content-length"] == str(size) and media.headers["accept-ranges"] == "bytes"
    assert client.head("/", follow_redirects=False).status_code == 307
    assert client.head("/videos/999999").status_code == 404
    refused = client.head("/search/audio-to-video")  # no GET there: 405 as before, naming what is allowed
    assert refused.status_code == 405 and refused.headers["allow"] == "POST"
    assert not [p for p, ops in client.get("/openapi.json").json()["paths"].items() if "head" in ops]


def test_new_endpoints_are_documented(client: TestClient) -> None:
    paths = client.get("/openapi.json").json()["paths"]
    assert {"/videos/{video_id}/media", "/videos/{video_id}/poster", "/jobs", "/index/roots"} <= set(paths)
    assert "206" in paths["/videos/{video_id}/media"]["get"]["responses"]
    assert "image/jpeg" in paths["/videos/{video_id}/poster"]["get"]["responses"]["200"]["content"]
    assert "/" not in paths and "/docs" not in paths


# ------------------------------------------------------------------------------------ queries
def test_a_time_range_of_an_indexed_video_is_the_query(client: TestClient) -> None:
    part = client.post("/search/audio-to-video", data={"video_id": 4, "start": 2.0, "end": 5.2, "top_k": 3})
    assert part.status_code == 200, part.text
    assert part.json()["query"] == {"source": "video", "video_id": 4, "frames": 5, "truncated": False}
    no_video = client.post("/search/audio-to-video", files=upload(Path(__file__)), data={"start": 1})
    assert no_video.status_code == 422 and "video_id" in no_video.json()["detail"]
    backwards = client.post("/search/video-to-audio", data={"video_id": 4, "start": 3, "end": 2})
    assert backwards.status_code == 422 and "after start" in backwards.json()["detail"]
    short = client.post("/search/video-to-audio", data={"video_id": 4, "start": 3, "end": 3.5})
    assert short.status_code == 422 and "under 1.0 s" in short.json()["detail"]


def test_a_search_by_id_without_end_uses_what_the_docs_and_the_page_say(client: TestClient) -> None:
    """No `end`: to the video's end (180 s at most); the OpenAPI field and the page's placeholder say so."""
    whole = client.post("/search/audio-to-video", data={"video_id": 4, "start": 2.0, "top_k": 1}).json()["query"]
    assert (whole["frames"], whole["truncated"]) == (12, False)  # 2.0 s to the 10-s clip's end: frames 4..15
    schema = client.get("/openapi.json").json()["components"]["schemas"]
    form = next(v for k, v in schema.items() if k.startswith("Body_audio_to_video"))
    assert (
        "default: to the video's end, the longest query (180 s by default) at most"
        in form["properties"]["end"]["description"]
    )
    page = client.get("/ui/").text
    [end] = re.findall(r'<input id="range-end"[^>]*>', page)
    assert 'placeholder="video end, 180 s max"' in end and "180 s by default" in end


def test_codec_parameters_name_and_rounded_times(client: TestClient, corpus: Corpus, tmp_path: Path) -> None:
    excerpt = tmp_path / "excerpt.webm"
    ffmpeg("-ss", "4", "-t", "3", "-i", str(corpus.clips[6]), "-vn", "-c:a", "libopus", str(excerpt))
    files = {"file": ("mic recording.webm", excerpt.read_bytes(), "audio/webm;codecs=opus")}
    answer = client.post("/search/audio-to-video", files=files, data={"top_k": 5})
    assert answer.status_code == 200, answer.text
    moments = [m for r in answer.json()["results"] for m in r["moments"]]
    assert moments and all(m[key] == round(m[key], 3) for m in moments for key in ("start", "end"))
    broken = {"file": ("mic recording.webm", b"\x1aE\xdf\xa3 not really webm", "audio/webm;codecs=opus")}
    refused = client.post("/search/audio-to-video", files=broken)
    assert refused.status_code == 415 and "mic recording.webm" in refused.json()["detail"]
    assert "mic_recording_webm" not in refused.json()["detail"]
