"""Issue 28, item 2: a media answer says what its file is (from the probe of the opened file, never from the name
it was sent with), with `X-Content-Type-Options: nosniff` and a Content-Disposition safe for any name; item 6:
its Range errors are JSON like every error."""

from __future__ import annotations

import os
import unicodedata
from pathlib import Path
from typing import Any
from urllib.parse import unquote

import pytest
from fastapi.testclient import TestClient

from indexer.ingest.files import Opened
from model.media import MediaInfo, MediaTimeoutError
from service import served_types
from service.served_types import (
    ASCII_SAFE,
    OCTET_STREAM,
    ServedType,
    TypeCache,
    content_disposition,
    probe_served_type,
    served_type,
)

from ..model.media_files import audio_only, av_file, video_only
from .conftest import Corpus
from .test_catalog import _wait_for_job

SCRIPT = b'<html><body><script>document.title = "polyglot ran"; fetch("/health?polyglot=ran")</script></body></html>'
MAX_PIXELS = 4096 * 4096
MP4 = ServedType("video/mp4", (".mp4", ".m4v", ".mov"))


def polyglot(corpus: Corpus) -> bytes:
    """A valid mp4 (a corpus clip) with an HTML document and its script appended: a player plays it, a browser
    told it is HTML runs the script."""
    return corpus.clips[0].read_bytes() + b"\n" + SCRIPT


def _video_named(client: TestClient, name: str) -> dict:
    [video] = [v for v in client.get("/videos", params={"limit": 1000}).json()["items"] if v["name"] == name]
    return video


def _disposition(value: str) -> tuple[str, str, str]:
    """(type, the quoted ASCII filename, the decoded filename*) of a Content-Disposition we wrote."""
    kind, plain, extended = (part.strip() for part in value.split(";"))
    assert plain.startswith('filename="') and plain.endswith('"'), value
    assert extended.startswith("filename*=UTF-8''"), value
    return kind, plain[len('filename="') : -1], unquote(extended[len("filename*=UTF-8''") :], errors="strict")


# ------------------------------------------------------------------------------------ through the API
@pytest.mark.slow
def test_an_uploaded_polyglot_named_html_is_served_as_the_video_it_is(
    writable_client: TestClient, corpus: Corpus, tmp_path: Path
) -> None:
    song = audio_only(tmp_path / "song.wav", ["-c:a", "pcm_s16le"], d=2.0)
    files = [
        ("files", ("report.html", polyglot(corpus), "text/html")),
        ("files", ("lyrics.txt", song.read_bytes(), "text/plain")),
    ]
    response = writable_client.post("/index", files=files)
    assert response.status_code == 202, response.text
    job = _wait_for_job(writable_client, response.json()["job_id"])
    assert (job["done"], job["failed"]) == (2, 0), job

    video = _video_named(writable_client, "report.html")
    media = writable_client.get(f"/videos/{video['id']}/media")
    assert media.status_code == 200 and media.content == polyglot(corpus)
    assert media.headers["content-type"] == "video/mp4"
    assert media.headers["x-content-type-options"] == "nosniff"
    assert _disposition(media.headers["content-disposition"]) == ("inline", "report.html.mp4", "report.html.mp4")
    part = writable_client.get(f"/videos/{video['id']}/media", headers={"Range": "bytes=0-99"})
    assert part.status_code == 206 and part.headers["content-type"] == "video/mp4"

    sound = writable_client.get(f"/videos/{_video_named(writable_client, 'lyrics.txt')['id']}/media")
    assert sound.status_code == 200 and sound.headers["content-type"] == "audio/wav"
    assert _disposition(sound.headers["content-disposition"])[1:] == ("lyrics.txt.wav", "lyrics.txt.wav")


@pytest.mark.slow
@pytest.mark.parametrize(
    ("name", "shown"),
    [
        ('say "hi"\r\nX-Injected: 1.mp4', ("say", "hi", "X-Injected: 1.mp4")),
        ("café 漢字.mp4", ("café 漢字.mp4",)),
        ("evil\u202egnp.mp4", ("evil", "gnp.mp4")),
        ("nul\x00\x7f;name=x.mp4", ("nul", ";name=x.mp4")),
        ("../../etc/passwd", ("passwd.mp4",)),
        ("C:\\Users\\me\\clip.MP4", ("clip.MP4",)),
        ("  ", ("media.mp4",)),
    ],
)
def test_any_name_gives_a_valid_content_disposition(
    writable_client: TestClient, private_data: Path, name: str, shown: tuple[str, ...]
) -> None:
    """Whatever the catalog holds as a name (the service may show it escaped: `indexer.catalog.names`), the header is
    one line of visible ASCII whose filename* names the file without a control or bidi character, as a .mp4."""
    from indexer.catalog.tables import Video, open_catalog

    sessions = open_catalog(f"sqlite:///{private_data / 'catalog.db'}")
    with sessions() as session:
        session.get(Video, 3).name = name  # type: ignore[union-attr]  # video 3 is a corpus clip
        session.commit()
    media = writable_client.get("/videos/3/media")
    assert media.status_code == 200 and media.headers["content-type"] == "video/mp4"
    raw = dict(media.headers.raw)[b"content-disposition"]
    assert all(32 <= byte < 127 for byte in raw), raw  # one line of visible ASCII: no CR, LF, NUL, no 8-bit
    kind, plain, full = _disposition(raw.decode("ascii"))
    assert kind == "inline" and set(plain) <= ASCII_SAFE and plain.lower().endswith(".mp4"), plain
    assert not any(unicodedata.category(c) in ("Cc", "Cf", "Zl", "Zp") for c in full), full
    assert full.lower().endswith(".mp4") and "/" not in full and all(part in full for part in shown), full


@pytest.mark.parametrize(
    ("name", "plain", "full"),
    [
        ('say "hi"\r\nX-Injected: 1.mp4', "say _hi___X-Injected_ 1.mp4", 'say "hi"__X-Injected: 1.mp4'),
        ("café 漢字.mp4", "cafe __.mp4", "café 漢字.mp4"),
        ("evil\u202egnp.mp4", "evil_gnp.mp4", "evil_gnp.mp4"),
        ("nul\x00\x7f;name=x%41.mp4", "nul___name_x_41.mp4", "nul__;name=x%41.mp4"),
        ("../../etc/passwd", "passwd.mp4", "passwd.mp4"),
        ("C:\\Users\\clip.MP4", "C__Users_clip.MP4", "C:\\Users\\clip.MP4"),
        ("  ", "media.mp4", "media.mp4"),
        (".mp4", "mp4.mp4", "mp4.mp4"),
    ],
)
def test_content_disposition_of_raw_names(name: str, plain: str, full: str) -> None:
    header = content_disposition(name, MP4)
    assert header.isascii() and header.isprintable(), header
    assert _disposition(header) == ("inline", plain, full)


def test_range_errors_are_json_with_content_range_on_416(client: TestClient, corpus: Corpus) -> None:
    size = corpus.clips[4].stat().st_size
    past = client.get("/videos/5/media", headers={"Range": f"bytes={size + 10}-"})
    assert past.status_code == 416 and past.headers["content-type"] == "application/json"
    assert past.headers["content-range"] == f"bytes */{size}"
    body = past.json()
    assert body["errors"] is None and str(size) in body["detail"], body
    for malformed in ("items=0-5", "bytes=9-3", "bytes"):
        answer = client.get("/videos/5/media", headers={"Range": malformed})
        assert answer.status_code == 400 and answer.headers["content-type"] == "application/json", malformed
        assert set(answer.json()) == {"detail", "errors"} and "Range" in answer.json()["detail"], answer.json()
        assert answer.headers["x-content-type-options"] == "nosniff"
    assert client.get("/videos/5/media", headers={"Range": "bytes=0-9"}).status_code == 206


# ------------------------------------------------------------------------------------ the type of what it is
def _info(format_name: str, video: str | None = None, audio: str | None = "aac", still: bool = False) -> MediaInfo:
    return MediaInfo(Path("x"), format_name, 1.0, audio_codec=audio, video_codec=video, still_image=still)


MOV = "mov,mp4,m4a,3gp,3g2,mj2"


@pytest.mark.parametrize(
    ("info", "head", "expected"),
    [
        (_info(MOV, "h264"), b"", "video/mp4"),
        (_info(MOV, None), b"", "audio/mp4"),
        (_info(MOV, "mjpeg", still=True), b"", "audio/mp4"),  # an m4a's cover art is no video
        (_info("matroska,webm", "vp9"), b"\x1a\x45\xdf\xa3\x9f\x42\x86\x81\x01\x42\x82\x84webm", "video/webm"),
        (_info("matroska,webm", None, "opus"), b"\x1a\x45\xdf\xa3\x42\x82\x84webm", "audio/webm"),
        (_info("matroska,webm", "h264"), b"\x1a\x45\xdf\xa3\x42\x82\x88matroska", "video/x-matroska"),
        (_info("wav", None, "pcm_s16le"), b"", "audio/wav"),
        (_info("mp3", None, "mp3"), b"", "audio/mpeg"),
        (_info("mp3", "png", "mp3", still=True), b"", "audio/mpeg"),
        (_info("flac", None, "flac"), b"", "audio/flac"),
        (_info("ogg", None, "vorbis"), b"", "audio/ogg"),
        (_info("ogg", "theora", "vorbis"), b"", "video/ogg"),
        (_info("avi", "mpeg4", "mp3"), b"", "video/x-msvideo"),
        (_info("png_pipe", "png", None, still=True), b"", "image/png"),
        (_info("svg_pipe", "svg", None, still=True), b"", OCTET_STREAM.media_type),  # an SVG document runs script
        (_info("tty", "ansi", None), b"", OCTET_STREAM.media_type),  # text shown as video by ffmpeg
        (_info("hls", "h264"), b"", OCTET_STREAM.media_type),
    ],
)
def test_the_type_follows_the_container_and_its_streams(info: MediaInfo, head: bytes, expected: str) -> None:
    assert served_type(info, head).media_type == expected


@pytest.mark.parametrize(
    ("name", "make", "expected"),
    [
        ("a.bin", lambda p: av_file(p.with_suffix(".mp4"), ["-c:v", "libx264"], ["-c:a", "aac"]), "video/mp4"),
        ("b.bin", lambda p: audio_only(p.with_suffix(".m4a"), ["-c:a", "aac"]), "audio/mp4"),
        ("c.bin", lambda p: video_only(p.with_suffix(".mkv")), "video/x-matroska"),
        ("d.bin", lambda p: audio_only(p.with_suffix(".webm"), ["-c:a", "libopus"]), "audio/webm"),
        ("e.bin", lambda p: audio_only(p.with_suffix(".mp3"), ["-c:a", "libmp3lame"]), "audio/mpeg"),
        ("f.bin", lambda p: audio_only(p.with_suffix(".flac"), ["-c:a", "flac"]), "audio/flac"),
        ("g.bin", lambda p: audio_only(p.with_suffix(".ogg"), ["-c:a", "libvorbis"]), "audio/ogg"),
        ("h.bin", lambda p: audio_only(p.with_suffix(".wav"), ["-c:a", "pcm_s16le"]), "audio/wav"),
    ],
)
def test_real_files_are_typed_by_their_content_whatever_their_name(
    tmp_path: Path, name: str, make: object, expected: str
) -> None:
    made = make(tmp_path / name)  # type: ignore[operator]  # one of the lambdas above
    renamed = made.rename(tmp_path / f"{name}.html")  # the name says HTML: the content decides
    fd = os.open(renamed, os.O_RDONLY)
    try:
        assert probe_served_type(fd, 30.0, MAX_PIXELS).media_type == expected
    finally:
        os.close(fd)


def _opened(path: Path) -> Opened:
    fd = os.open(path, os.O_RDONLY)
    return Opened(fd, os.fstat(fd), None)


def test_a_type_is_probed_once_per_content_and_unknown_is_an_octet_stream(
    tmp_path: Path, corpus: Corpus, monkeypatch: pytest.MonkeyPatch
) -> None:
    page, clip = tmp_path / "page.mp4", corpus.clips[0]
    page.write_bytes(SCRIPT * 50)
    cache, probed = TypeCache(capacity=2), []
    real_probe = served_types.probe

    def counted(*args: Any) -> MediaInfo:
        probed.append(args[0])
        return real_probe(*args)

    monkeypatch.setattr(served_types, "probe", counted)
    for _ in range(2):
        for path, sha, expected in ((page, "a" * 64, OCTET_STREAM.media_type), (clip, "b" * 64, "video/mp4")):
            opened = _opened(path)
            try:
                assert cache.served_type(sha, opened, 30.0, MAX_PIXELS).media_type == expected
            finally:
                os.close(opened.fd)
    assert len(probed) == 2  # each content once, the unreadable one too

    def slow(*args: object) -> None:
        raise MediaTimeoutError("probe: ffprobe did not finish")

    monkeypatch.setattr(served_types, "probe", slow)
    opened = _opened(clip)
    try:
        assert cache.served_type("c" * 64, opened, 30.0, MAX_PIXELS) == OCTET_STREAM
        monkeypatch.setattr(served_types, "probe", real_probe)  # a timeout is not kept: the next one probes
        assert cache.served_type("c" * 64, opened, 30.0, MAX_PIXELS).media_type == "video/mp4"
    finally:
        os.close(opened.fd)


def test_content_disposition_keeps_or_adds_the_types_extension() -> None:
    assert content_disposition("clip.MOV", MP4) == "inline; filename=\"clip.MOV\"; filename*=UTF-8''clip.MOV"
    assert content_disposition("report.html", MP4).endswith("''report.html.mp4")
    assert content_disposition("x.html", OCTET_STREAM).endswith("''x.html.bin")
    long = content_disposition("a" * 5000 + ".mp4", MP4)
    assert len(long) < 1000 and long.endswith("a.mp4")
