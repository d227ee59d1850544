"""Bad input never gives a 5xx: every class of bad file on every media endpoint, oversized bodies (413
without reading them whole), unknown ids, paths outside the media roots, API keys, busy slots."""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest
from fastapi.testclient import TestClient

from service.app import create_app, tokens_body_limit

from .conftest import API_KEY, Corpus, make_config, upload

pytestmark = pytest.mark.slow  # every test here reads the demo corpus, indexed once per session (about a minute)

# status per endpoint: audio-to-video, video-to-audio, /localize as the image, /localize as the audio
EXPECTED = {
    "zero_bytes": (415, 415, 415, 415),
    "random_bytes": (415, 415, 415, 415),
    "truncated_mp4": (415, 415, 415, 415),
    "text_file": (415, 415, 415, 415),
    "png_named_mp4": (415, 415, 200, 415),
    "video_only": (422, 200, 200, 422),
    "audio_only": (200, 422, 422, 200),
    "short_wav": (422, 422, 422, 422),
}


def _check(response: httpx.Response, expected: int, what: str) -> None:
    assert response.status_code < 500, f"{what}: {response.status_code} {response.text}"
    assert response.status_code == expected, f"{what}: {response.status_code} {response.text}"
    if expected >= 400:
        detail = response.json()["detail"]
        assert isinstance(detail, str) and detail, what
        assert "cavsync-upload" not in detail, f"{what}: a server path in {detail!r}"


@pytest.mark.parametrize("kind", sorted(EXPECTED))
def test_bad_files_on_every_media_endpoint(
    client: TestClient, corpus: Corpus, bad_files: dict[str, Path], kind: str
) -> None:
    bad, good = bad_files[kind], corpus.clips[0]
    a2v, v2a, as_image, as_audio = EXPECTED[kind]
    _check(client.post("/search/audio-to-video", files=upload(bad)), a2v, f"{kind} audio-to-video")
    _check(client.post("/search/video-to-audio", files=upload(bad)), v2a, f"{kind} video-to-audio")
    _check(client.post("/localize", files=upload(bad, "image") | upload(good, "audio")), as_image, f"{kind} image")
    _check(client.post("/localize", files=upload(good, "image") | upload(bad, "audio")), as_audio, f"{kind} audio")


def test_decoder_messages_are_passed_on(client: TestClient, bad_files: dict[str, Path]) -> None:
    no_audio = client.post("/search/audio-to-video", files=upload(bad_files["video_only"])).json()["detail"]
    assert "no audio track" in no_audio
    too_short = client.post("/search/audio-to-video", files=upload(bad_files["short_wav"])).json()["detail"]
    assert "at least" in too_short
    empty = client.post("/search/audio-to-video", files=upload(bad_files["zero_bytes"])).json()["detail"]
    assert "empty" in empty


def test_uploads_are_deleted(
    client: TestClient, corpus: Corpus, bad_files: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import tempfile

    # uploads land in a folder of this test's own (other processes on the machine share /tmp)
    made: list[Path] = []
    real_mkdtemp = tempfile.mkdtemp

    def mkdtemp(suffix: str | None = None, prefix: str | None = None, dir: str | None = None) -> str:
        if prefix != "cavsync-upload-":  # the decoder's own scratch folders
            return real_mkdtemp(suffix, prefix, dir)
        made.append(Path(real_mkdtemp(suffix, prefix, tmp_path)))
        return str(made[-1])

    monkeypatch.setattr(tempfile, "mkdtemp", mkdtemp)
    assert client.post("/search/audio-to-video", files=upload(corpus.clips[0])).status_code == 200
    assert client.post("/search/audio-to-video", files=upload(bad_files["random_bytes"])).status_code == 415
    files = upload(bad_files["png_named_mp4"], "image") | upload(corpus.clips[0], "audio")
    client.post("/localize", files=files)  # an image upload and an audio upload
    assert len(made) >= 3 and all(p.name.startswith("cavsync-upload-") for p in made)  # every upload went there
    assert list(tmp_path.iterdir()) == []  # and none is left


# ------------------------------------------------------------------------------------ sizes
@pytest.fixture(scope="module")
def small_limit_client(corpus: Corpus) -> Iterator[TestClient]:
    with TestClient(
        create_app(make_config(corpus, max_upload_bytes=256 * 1024, max_media_duration_s=5.0)),
        raise_server_exceptions=False,
    ) as test_client:
        yield test_client


def _raw_post(
    client: TestClient, path: str, chunks: Iterator[bytes], headers: dict[str, str], method: str = "POST"
) -> tuple[int, int]:
    """POST a body straight into the ASGI app chunk by chunk (no client buffering): (status, chunks read); the
    answer (headers and body) is left in `answers`."""
    read, status = 0, 0
    answers.clear()

    async def call() -> None:
        nonlocal status

        async def receive() -> dict:
            nonlocal read
            chunk = next(chunks, None)
            if chunk is None:
                return {"type": "http.disconnect"}
            read += 1
            return {"type": "http.request", "body": chunk, "more_body": True}

        async def send(message: dict) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                answers.append({"headers": dict(message.get("headers", [])), "body": b""})
            elif message["type"] == "http.response.body":
                answers[-1]["body"] += message.get("body", b"")

        scope = {
            "type": "http",
            "asgi": {"version": "3.0"},
            "http_version": "1.1",
            "method": method,
            "scheme": "http",
            "path": path,
            "raw_path": path.encode(),
            "root_path": "",
            "query_string": b"",
            "headers": [(k.lower().encode(), v.encode()) for k, v in headers.items()],
            "client": ("127.0.0.1", 50000),
            "server": ("testserver", 80),
            "state": {},
        }
        await client.app(scope, receive, send)

    client.portal.call(call)  # type: ignore[union-attr]
    return status, read


answers: list[dict] = []  # the last _raw_post's answer: headers (bytes -> bytes) and body


def _json_error(status: int) -> dict:
    """The last _raw_post's answer as JSON, checked to be an error answer like every other."""
    [answer] = answers
    assert answer["headers"][b"content-type"] == b"application/json", answer
    body = json.loads(answer["body"])
    assert set(body) == {"detail", "errors"} and body["errors"] is None and status == 413, body
    return body


def _endless_upload(boundary: str, chunk: int = 64 * 1024, count: int = 400) -> Iterator[bytes]:
    yield (
        f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="big.mp4"\r\n'
        "Content-Type: video/mp4\r\n\r\n"
    ).encode()
    for _ in range(count):  # 25 MiB if all of it were read
        yield b"\0" * chunk
    yield f"\r\n--{boundary}--\r\n".encode()


def test_oversized_upload_gives_413_without_reading_it(small_limit_client: TestClient) -> None:
    boundary = "cavsyncboundary"
    kind = {"content-type": f"multipart/form-data; boundary={boundary}"}
    for endpoint in ("/search/audio-to-video", "/search/video-to-audio", "/localize", "/index"):
        status, read = _raw_post(small_limit_client, endpoint, _endless_upload(boundary), kind)  # no Content-Length
        assert status == 413, endpoint
        assert read <= 6, f"{endpoint}: {read} chunks read of 402; the limit is 4 chunks"
        _json_error(status)
        declared = kind | {"content-length": str(400 * 64 * 1024)}
        status, read = _raw_post(small_limit_client, endpoint, _endless_upload(boundary), declared)
        assert (status, read) == (413, 0), endpoint  # refused on its Content-Length, nothing read
        assert "26214400 bytes" in _json_error(status)["detail"]
    for method in ("GET", "HEAD"):  # a route that reads no body: the declared length is refused all the same
        status, read = _raw_post(small_limit_client, "/health", iter([b"x"]), {"content-length": "26214400"}, method)
        assert (status, read) == (413, 0) and answers[0]["headers"][b"content-type"] == b"application/json"


def test_oversized_upload_through_a_client(small_limit_client: TestClient) -> None:
    response = small_limit_client.post("/search/audio-to-video", files={"file": ("big.mp4", b"\0" * 300_000)})
    assert response.status_code == 413
    big = {"tokens": [[0.5] * 128] * 1024, "target": "audio"}  # ~300 kB of JSON
    assert small_limit_client.post("/search/tokens", json=big).status_code == 413


def test_a_tokens_body_over_the_largest_query_gives_413(client: TestClient) -> None:
    """/search/tokens parses its JSON on the event loop: no body past what 1024 rows of D floats need."""
    limit = tokens_body_limit(128)  # the demo model's D
    assert limit < client.app.state.config.max_upload_bytes  # type: ignore[attr-defined]
    kind = {"content-type": "application/json"}
    declared = kind | {"content-length": str(limit + 1)}
    assert _raw_post(client, "/search/tokens", iter([b"{}"] * 3), declared) == (413, 0)
    endless = iter([b'{"tokens": [['] + [b"0.1," * 16384] * 400)  # 26 MB if all of it were read
    status, read = _raw_post(client, "/search/tokens", endless, kind)
    assert status == 413 and read * 4 * 16384 <= limit + 2 * 4 * 16384, read
    rows = np.random.default_rng(0).standard_normal((1024, 128)) * 1e-5  # the longest floats JSON has
    body = {"tokens": rows.tolist(), "target": "audio", "top_k": 1}
    assert len(json.dumps(body)) < limit
    assert client.post("/search/tokens", json=body).status_code == 200


def test_media_over_the_duration_limit(small_limit_client: TestClient, corpus: Corpus) -> None:
    for endpoint in ("/search/audio-to-video", "/search/video-to-audio"):  # 10-s clips, 5-s limit
        response = small_limit_client.post(endpoint, files=upload(corpus.clips[0]))
        assert response.status_code == 413, response.text
        assert "5 s" in response.json()["detail"]
    localize = small_limit_client.post(
        "/localize", files=upload(corpus.clips[0], "image"), data={"time": "3", "audio_video_id": "1"}
    )
    assert localize.status_code == 413 and "5 s allowed" in localize.json()["detail"], localize.text


# ------------------------------------------------------------------------------------ ids, paths, keys
@pytest.mark.parametrize(
    "method,path,kwargs",
    [
        ("get", "/videos/999999", {}),
        ("get", "/videos/999999/embeddings", {}),
        ("get", "/jobs/3f2b1c1e-0000-4000-8000-000000000000", {}),
        ("post", "/search/audio-to-video", {"data": {"video_id": "999999"}}),
        ("post", "/search/video-to-audio", {"data": {"video_id": "999999"}}),
        ("post", "/localize", {"data": {"video_id": "999999", "audio_video_id": "1"}}),
        ("post", "/localize", {"data": {"video_id": "1", "audio_video_id": "999999"}}),
    ],
)
def test_unknown_ids_are_404(client: TestClient, method: str, path: str, kwargs: dict) -> None:
    response = getattr(client, method)(path, **kwargs)
    assert response.status_code == 404, response.text
    assert "999999" in response.text or "no index job" in response.text


def test_malformed_ids_are_422(client: TestClient) -> None:
    for path in ("/videos/abc", "/videos/0", "/videos/99999999999999999999", "/jobs/not-a-uuid"):
        assert client.get(path).status_code == 422, path


def test_write_endpoints_need_the_api_key(writable_client: TestClient) -> None:
    for headers, status in (({"X-API-Key": ""}, 401), ({"X-API-Key": "wrong"}, 403)):
        response = writable_client.delete("/videos/1", headers=headers)
        assert response.status_code == status, response.text
        response = writable_client.post("/index", json={"paths": ["/nowhere"]}, headers=headers)
        assert response.status_code == status, response.text
    assert writable_client.delete("/videos/1", headers={"X-API-Key": API_KEY}).status_code == 200
    assert writable_client.get("/videos/1", headers={"X-API-Key": ""}).status_code == 200  # reads are open


def test_a_non_ascii_api_key_matches(corpus: Corpus, private_data: Path) -> None:
    with TestClient(create_app(make_config(corpus, private_data, api_key="clé-ü-7"))) as client:
        assert client.delete("/videos/1", headers={"X-API-Key": "clé-ü-7".encode()}).status_code == 200
        assert client.delete("/videos/2", headers={"X-API-Key": "cle-u-7"}).status_code == 403


def test_paths_outside_the_media_roots(writable_client: TestClient, corpus: Corpus) -> None:
    for path in ("/etc/hostname", str(corpus.media / ".." / "data" / "catalog.db"), str(corpus.data)):
        response = writable_client.post("/index", json={"paths": [path]})
        assert response.status_code == 403, response.text
    (corpus.media / "escape").unlink(missing_ok=True)
    (corpus.media / "escape").symlink_to(corpus.data)
    try:
        assert writable_client.post("/index", json={"paths": [str(corpus.media / "escape")]}).status_code == 403
    finally:
        (corpus.media / "escape").unlink()
    assert writable_client.post("/index", json={"paths": [str(corpus.media / "missing.mp4")]}).status_code == 404
    for bad in ({"paths": ["relative/clip.mp4"]}, {"paths": []}, {"paths": "x"}, {"nope": 1}):
        assert writable_client.post("/index", json=bad).status_code == 422, bad
    response = writable_client.post("/index", content=b"{not json", headers={"content-type": "application/json"})
    assert response.status_code == 422
    assert writable_client.post("/index", content=b"x", headers={"content-type": "text/plain"}).status_code == 415


def test_unresolvable_paths_and_bodies_are_422(writable_client: TestClient, corpus: Corpus, tmp_path: Path) -> None:
    for folder in (tmp_path, corpus.media):  # outside and inside the media roots
        (folder / "loop_a").symlink_to(folder / "loop_b")
        (folder / "loop_b").symlink_to(folder / "loop_a")
        try:
            for path in (folder / "loop_a", folder / "loop_a" / "clip.mp4"):
                response = writable_client.post("/index", json={"paths": [str(path)]})
                assert response.status_code == 422, response.text
        finally:
            (folder / "loop_a").unlink()
            (folder / "loop_b").unlink()
    nested = b"[" * 100_000 + b"]" * 100_000  # deeper than the JSON decoder recurses
    response = writable_client.post("/index", content=nested, headers={"content-type": "application/json"})
    assert response.status_code == 422, response.text


def test_no_media_roots_means_no_indexing_by_path(corpus: Corpus, private_data: Path) -> None:
    with TestClient(create_app(make_config(corpus, private_data, media_roots=[]))) as no_roots:
        response = no_roots.post("/index", json={"paths": [str(corpus.clips[0])]})
    assert response.status_code == 403 and "CAVSYNC_MEDIA_ROOTS is empty" in response.json()["detail"]


def test_a_path_outside_the_media_roots_points_at_the_roots_without_naming_them(
    writable_client: TestClient, corpus: Corpus, tmp_path: Path
) -> None:
    outside = tmp_path / "x.mp4"
    outside.write_bytes(corpus.clips[0].read_bytes())
    response = writable_client.post("/index", json={"paths": [str(outside)]})
    detail = response.json()["detail"]
    assert response.status_code == 403 and detail.startswith(f"{outside}: outside the media roots"), detail
    assert "GET /index/roots lists them" in detail and str(corpus.media) not in detail  # issue 28


# ------------------------------------------------------------------------------------ busy
def test_503_with_retry_after_when_every_slot_is_taken(client: TestClient, corpus: Corpus) -> None:
    slots = client.app.state.engine.slots  # type: ignore[attr-defined]
    with contextlib.ExitStack() as held:
        for _ in range(slots.limit):
            held.enter_context(client.portal.wrap_async_context_manager(slots.hold()))  # type: ignore[union-attr]
        assert slots.in_use == slots.limit
        for response in (
            client.post("/search/audio-to-video", files=upload(corpus.clips[0])),
            client.post("/search/video-to-audio", data={"video_id": "1"}),
            client.post("/search/tokens", json={"tokens": [[0.1] * 128], "target": "audio"}),
            client.post("/localize", data={"video_id": "1", "audio_video_id": "1"}),
        ):
            assert response.status_code == 503, response.text
            assert response.headers["retry-after"] == "1"
    assert slots.in_use == 0
    assert client.post("/search/video-to-audio", data={"video_id": "1"}).status_code == 200


def test_no_slots_at_all(corpus: Corpus) -> None:
    with TestClient(create_app(make_config(corpus, max_concurrent_inferences=0, retry_after_s=7))) as busy:
        response = busy.post("/search/audio-to-video", data={"video_id": "1"})
        assert response.status_code == 503 and response.headers["retry-after"] == "7"
        assert busy.get("/videos/1").status_code == 200  # the catalog does not need a slot
