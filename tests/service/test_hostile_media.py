"""Issue 28, item 1: a file that names other files (an HLS playlist, an ffconcat list, an image-sequence pattern
name) is refused by every route that decodes what a client gives: the searches, /localize (as the image and as the
audio), POST /index (upload and by path: the job's file fails, the file it names is not indexed) and the poster
and /localize of a catalog row that points at such a file. No answer carries the outside file or a frame of it."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from fastapi.testclient import TestClient

from service.app import create_app

from ..model.media_files import ffmpeg
from .conftest import API_KEY, CORPUS_CLIPS, Corpus, make_config, upload
from .test_catalog import _wait_for_job

pytestmark = pytest.mark.slow  # the demo corpus, indexed once per session

REFUSED = "is not accepted; send a media file"


@dataclass(frozen=True)
class Outside:
    """A never-indexed clip outside every media root, and frames of it as pictures (what a pattern would read)."""

    clip: Path
    frames: list[Path]

    def leaked(self, answer: httpx.Response) -> bool:
        """Whether an answer carries the clip's bytes or any picture (a frame of it)."""
        picture = answer.headers.get("content-type", "").startswith("image/")
        return picture or self.clip.read_bytes()[:64] in answer.content


@pytest.fixture(scope="module")
def outside(tmp_path_factory: pytest.TempPathFactory) -> Outside:
    from training.synth import generate

    folder = tmp_path_factory.mktemp("outside")
    [made] = sorted(generate(folder / "synth", 1, seed=2828).glob("*.mp4"))
    clip = folder / "clip.mp4"  # faststart: the hls demuxer reads a segment without seeking
    ffmpeg("-i", str(made), "-c", "copy", "-movflags", "+faststart", str(clip))
    frames = [folder / f"frame{i}.png" for i in range(3)]
    for i, frame in enumerate(frames):
        ffmpeg("-ss", str(i), "-i", str(clip), "-frames:v", "1", str(frame))
    return Outside(clip, frames)


def _playlist(target: Path) -> str:
    return f"#EXTM3U\n#EXT-X-TARGETDURATION:10\n#EXTINF:10.0,\n{target}\n#EXT-X-ENDLIST\n"


def _listing(target: Path | str) -> str:
    return f"ffconcat version 1.0\nfile '{target}'\n"


def _uploads(outside: Outside) -> dict[str, tuple[str, bytes]]:
    """What a client sends: (the name sent, the bytes)."""
    return {
        "hls": ("list.m3u8", _playlist(outside.clip).encode()),
        "concat": ("list.ffconcat", _listing(outside.clip).encode()),
        "pattern": ("a%03d.png", b"a name that is an image-sequence pattern\n"),
    }


HOSTILE = ("hls", "concat", "pattern")


def _refused(answer: httpx.Response, outside: Outside, kind: str, what: str) -> None:
    assert answer.status_code == 415, f"{what}: {answer.status_code} {answer.text[:300]}"
    assert not outside.leaked(answer), what
    if kind != "pattern":  # the service gives ffmpeg a descriptor, never the name: this text is no media at all
        assert REFUSED in answer.json()["detail"], f"{what}: {answer.json()['detail']}"


@pytest.mark.parametrize("kind", HOSTILE)
def test_searches_and_localize_refuse_what_names_another_file(
    client: TestClient, corpus: Corpus, outside: Outside, kind: str
) -> None:
    name, data = _uploads(outside)[kind]
    sent = {"file": (name, data, "application/octet-stream")}
    _refused(client.post("/search/audio-to-video", files=sent), outside, kind, "audio-to-video")
    _refused(client.post("/search/video-to-audio", files=sent), outside, kind, "video-to-audio")
    as_image = {"image": (name, data, "application/octet-stream")} | upload(corpus.clips[0], "audio")
    _refused(client.post("/localize", files=as_image, data={"time": 1.0}), outside, kind, "localize image")
    as_audio = upload(corpus.clips[0], "image") | {"audio": (name, data, "application/octet-stream")}
    _refused(client.post("/localize", files=as_audio), outside, kind, "localize audio")
    as_png = client.post("/localize", files=as_image, data={"time": 1.0}, params={"format": "png"})
    _refused(as_png, outside, kind, "localize png")


def _indexed(client: TestClient) -> int:
    """How many videos are indexed (a failed upload keeps a row of its own, `failed`)."""
    return int(client.get("/videos", params={"limit": 1, "status": "indexed"}).json()["total"])


@pytest.mark.parametrize("kind", HOSTILE)
def test_an_uploaded_list_fails_its_job_and_indexes_nothing(
    writable_client: TestClient, outside: Outside, kind: str
) -> None:
    name, data = _uploads(outside)[kind]
    response = writable_client.post("/index", files={"files": (name, data, "application/octet-stream")})
    assert response.status_code == 202, response.text
    job = _wait_for_job(writable_client, response.json()["job_id"])
    assert (job["done"], job["failed"]) == (0, 1), job
    [failure] = job["files"]
    assert failure["state"] == "failed" and str(outside.clip) not in (failure["error"] or "")
    if kind != "pattern":
        assert REFUSED in failure["error"], failure
    assert _indexed(writable_client) == CORPUS_CLIPS


@pytest.fixture()
def hostile_root(tmp_path: Path, outside: Outside) -> Path:
    """A media root holding files that name the outside clip or its frames: a playlist, a concat list (through a
    link: the demuxer's `safe` mode refuses an absolute name) and a pattern whose numbered files link out."""
    root = tmp_path / "root"
    root.mkdir()
    (root / "playlist.mp4").write_text(_playlist(outside.clip))
    (root / "link.mp4").symlink_to(outside.clip)
    (root / "listing.mp4").write_text(_listing("link.mp4"))
    (root / "a%03d.png").write_text("a name that is an image-sequence pattern\n")
    for i, frame in enumerate(outside.frames):
        (root / f"a{i:03d}.png").symlink_to(frame)
    return root


HOSTILE_FILES = {"hls": "playlist.mp4", "concat": "listing.mp4", "pattern": "a%03d.png"}


@pytest.fixture()
def root_client(corpus: Corpus, private_data: Path, hostile_root: Path) -> Iterator[TestClient]:
    config = make_config(corpus, private_data, media_roots=[hostile_root], api_key=API_KEY)
    with TestClient(create_app(config), raise_server_exceptions=False, headers={"X-API-Key": API_KEY}) as client:
        yield client


def test_files_under_a_root_that_name_others_fail_their_job(root_client: TestClient, hostile_root: Path) -> None:
    paths = [str(hostile_root / name) for name in HOSTILE_FILES.values()]
    response = root_client.post("/index", json={"paths": paths})
    assert response.status_code == 202, response.text
    job = _wait_for_job(root_client, response.json()["job_id"])
    assert (job["done"], job["failed"]) == (0, len(paths)), job
    errors = {Path(f["path"]).name: f["error"] or "" for f in job["files"]}
    for kind, name in HOSTILE_FILES.items():
        assert f"format {kind if kind != 'pattern' else 'image2'} {REFUSED}" in errors[name], errors
    assert _indexed(root_client) == CORPUS_CLIPS


@pytest.mark.parametrize("kind", HOSTILE)
def test_the_poster_and_frame_of_a_row_naming_such_a_file_are_refused(
    root_client: TestClient, corpus: Corpus, private_data: Path, hostile_root: Path, outside: Outside, kind: str
) -> None:
    """A catalog row whose file is such a list (indexed before it was refused, say): every reader of its file
    refuses it, as the uploads are."""
    from indexer.catalog.tables import Video, open_catalog

    target = hostile_root / HOSTILE_FILES[kind]
    sessions = open_catalog(f"sqlite:///{private_data / 'catalog.db'}")
    with sessions() as session:
        video = session.get(Video, 4)
        assert video is not None
        video.uri = str(target.resolve())
        video.sha256 = hashlib.sha256(target.read_bytes()).hexdigest()
        video.file_size, video.file_mtime_ns = target.stat().st_size, target.stat().st_mtime_ns
        session.commit()
    poster = root_client.get("/videos/4/poster", params={"time": 1.0})
    _refused(poster, outside, kind, "poster")
    located = root_client.post("/localize", data={"video_id": 4, "time": 1.0, "audio_video_id": 2})
    _refused(located, outside, kind, "localize by id")
    assert not list((private_data / "posters").glob("4/*.jpg"))  # nothing cached either


def test_the_outside_clip_decodes_when_given_itself(client: TestClient, corpus: Corpus, outside: Outside) -> None:
    """The control: the clip the lists name is good media (so each refusal above is the list's, not the clip's)."""
    found = client.post("/localize", files=upload(outside.clip, "image") | upload(corpus.clips[0], "audio"))
    assert found.status_code == 200, found.text
    assert client.post("/search/audio-to-video", files=upload(outside.clip)).status_code == 200
