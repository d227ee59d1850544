"""Issue 19: an uploaded video is kept (a managed copy named by its content, shown by the name it was sent with),
served with Range, postered, localized and searched by id like any indexed file, and its copy removed when the
video is deleted; a file found again repairs its video's location; an indexed file replaced by a link or by
other content is never read (404/409); posters are cached (20 cards in well under a second the second time)."""

from __future__ import annotations

import hashlib
import io
import os
import shutil
import time
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from PIL import Image

from service.app import create_app

from .conftest import API_KEY, CORPUS_CLIPS, Corpus, file_readers, make_config, upload
from .test_catalog import _wait_for_job

pytestmark = pytest.mark.slow  # the demo corpus, indexed once per session


def _video_named(client: TestClient, name: str) -> dict:
    items = client.get("/videos", params={"limit": 1000}).json()["items"]
    [video] = [v for v in items if v["name"] == name]
    return video


def test_an_uploaded_video_is_kept_served_postered_localized_and_deleted(
    writable_client: TestClient, corpus: Corpus, private_data: Path
) -> None:
    from training.synth import generate

    clip = sorted(generate(private_data.parent / "up", 1, seed=321).glob("*.mp4"))[0]
    data = clip.read_bytes()
    sent = "mine a (holiday).mp4"
    response = writable_client.post("/index", files={"files": (sent, data, "video/mp4")})
    assert response.status_code == 202, response.text
    job = _wait_for_job(writable_client, response.json()["job_id"])
    assert (job["state"], job["done"], job["failed"]) == ("done", 1, 0), job
    assert list((private_data / "uploads").iterdir()) == []  # the upload itself is gone once settled

    video = _video_named(writable_client, sent)
    managed = Path(video["uri"])
    assert managed == (private_data / "media" / f"{hashlib.sha256(data).hexdigest()}.mp4").resolve()
    assert managed.read_bytes() == data and video["status"] == "indexed"
    vid = video["id"]
    assert vid > CORPUS_CLIPS and writable_client.get(f"/videos/{vid}").json()["name"] == sent

    whole = writable_client.get(f"/videos/{vid}/media")
    assert whole.status_code == 200 and whole.content == data and whole.headers["content-type"] == "video/mp4"
    part = writable_client.get(f"/videos/{vid}/media", headers={"Range": "bytes=1000-1999"})
    assert part.status_code == 206 and part.content == data[1000:2000]
    assert part.headers["content-range"] == f"bytes 1000-1999/{len(data)}"
    poster = writable_client.get(f"/videos/{vid}/poster", params={"time": 3.0, "width": 160})
    assert poster.status_code == 200 and Image.open(io.BytesIO(poster.content)).width == 160
    located = writable_client.post("/localize", data={"video_id": vid, "time": 2.0, "audio_video_id": vid})
    assert located.status_code == 200, located.text
    assert located.json()["frame_time"] == 2.0
    by_id = writable_client.post("/search/audio-to-video", data={"video_id": vid, "top_k": 3})
    assert by_id.status_code == 200 and by_id.json()["results"][0]["video_id"] == vid
    by_upload = writable_client.post("/search/audio-to-video", files=upload(clip), data={"top_k": 3}).json()
    [hit] = [r for r in by_upload["results"] if r["video_id"] == vid]
    assert hit["name"] == sent and hit["uri"] == str(managed)  # results carry the sent name
    assert not list(Path(writable_client.app.state.config.data_dir).glob("uploads/*"))  # type: ignore[attr-defined]

    deleted = writable_client.delete(f"/videos/{vid}")
    assert deleted.status_code == 200 and deleted.json()["deleted"] is True
    assert not managed.exists() and list((private_data / "media").iterdir()) == []  # the managed copy is gone
    assert not (private_data / "posters" / str(vid)).exists()  # and its cached posters
    assert writable_client.get(f"/videos/{vid}/media").status_code == 404
    assert all(c.is_file() for c in corpus.clips)  # files of the media roots are never deleted


def test_a_video_whose_file_is_gone_is_repaired_by_path_and_by_upload(
    corpus: Corpus, private_data: Path, tmp_path: Path
) -> None:
    media = tmp_path / "media"
    media.mkdir()
    first = media / "first.mp4"
    shutil.copy(corpus.clips[0], first)
    (media / "other.mp4").write_bytes(b"")  # never indexed: just a neighbour
    config = make_config(corpus, private_data, media_roots=[media], api_key=API_KEY)
    with TestClient(create_app(config), headers={"X-API-Key": API_KEY}) as client:
        # the content is indexed already (corpus video 1): its file is intact, so a new path is only skipped
        job = _wait_for_job(client, client.post("/index", json={"paths": [str(first)]}).json()["job_id"])
        assert (job["skipped"], client.get("/videos/1").json()["uri"]) == (1, str(corpus.clips[0].resolve()))

        from indexer.catalog.tables import Video, open_catalog

        sessions = open_catalog(config.catalog_url)
        with sessions() as session:  # its file moves away (as if the corpus folder were renamed)
            session.get(Video, 1).uri = str(media / "moved_away.mp4")
            session.commit()
        assert client.get("/videos/1/media").status_code == 404
        job = _wait_for_job(client, client.post("/index", json={"paths": [str(first)]}).json()["job_id"])
        assert (job["state"], job["skipped"], job["failed"]) == ("done", 1, 0), job
        video = client.get("/videos/1").json()
        assert (video["uri"], video["name"]) == (str(first.resolve()), "first.mp4")  # found again: repaired
        assert client.get("/videos/1/media").content == first.read_bytes()

        first.unlink()  # gone again; this time the same content comes as an upload: it becomes the file
        data = corpus.clips[0].read_bytes()
        response = client.post("/index", files={"files": ("found it.mp4", data, "video/mp4")})
        job = _wait_for_job(client, response.json()["job_id"])
        assert (job["state"], job["skipped"]) == ("done", 1), job
        video = client.get("/videos/1").json()
        assert video["name"] == "found it.mp4" and Path(video["uri"]).parent == (private_data / "media").resolve()
        assert client.get("/videos/1/media").content == data
        assert client.get("/videos/1/poster").status_code == 200
        assert client.get("/videos", params={"limit": 100}).json()["total"] == CORPUS_CLIPS  # no new video


def _refused(client: TestClient, vid: int, secret: bytes) -> list[int]:
    """Every reader of video `vid`'s file: each status, none of them with the secret's bytes."""
    answers = file_readers(client, vid)
    for answer in answers:
        assert secret[:64] not in answer.content and b"root:" not in answer.content
    return [a.status_code for a in answers]


def test_a_swapped_or_replaced_file_is_never_read(corpus: Corpus, private_data: Path, tmp_path: Path) -> None:
    media = tmp_path / "media"
    (media / "sub").mkdir(parents=True)
    target = media / "sub" / "clip.mp4"
    shutil.copy(corpus.clips[3], target)
    shutil.copy(corpus.clips[3], tmp_path / "twin.mp4")  # outside the roots: the same bytes, another place
    outside = tmp_path / "secret.txt"
    outside.write_bytes(b"TOP SECRET: never to be served\n" * 100)
    config = make_config(corpus, private_data, media_roots=[media], api_key=API_KEY)
    with TestClient(create_app(config), headers={"X-API-Key": API_KEY}) as client:
        # the corpus's copy of this content is indexed as video 4; index this copy as a new video of its own:
        from indexer.catalog.tables import Video, open_catalog

        sessions = open_catalog(config.catalog_url)
        with sessions() as session:
            session.get(Video, 4).uri = str(target.resolve())  # video 4 now lives at media/sub/clip.mp4
            session.get(Video, 4).file_size = target.stat().st_size
            session.get(Video, 4).file_mtime_ns = target.stat().st_mtime_ns
            session.commit()
        assert client.get("/videos/4/media").content == target.read_bytes()
        assert client.get("/videos/4/poster").status_code == 200

        target.unlink()
        target.symlink_to(outside)  # the file swapped for a link out of the roots
        assert _refused(client, 4, outside.read_bytes()) == [409] * 7
        target.unlink()
        target.symlink_to("/etc/passwd")
        assert _refused(client, 4, Path("/etc/passwd").read_bytes()) == [409] * 7
        target.unlink()
        (media / "sub").rename(media / "real")  # a folder on the way swapped for a link to the twin's folder
        (media / "sub").symlink_to(tmp_path)
        os.link(tmp_path / "twin.mp4", tmp_path / "clip.mp4")
        assert _refused(client, 4, b"\x00" * 64) == [409] * 7  # the same bytes, but not the file indexed
        (media / "sub").unlink()
        (media / "real").rename(media / "sub")

        target.write_bytes(outside.read_bytes())  # a regular file again, at the same path, other content
        assert _refused(client, 4, outside.read_bytes()) == [409] * 7
        detail = client.get("/videos/4/media").json()["detail"]
        assert "no longer the one indexed" in detail and "index the file again" in detail
        target.unlink()
        assert _refused(client, 4, b"\x00" * 64) == [404] * 7  # gone: 404

        shutil.copy(corpus.clips[3], target)  # the same content back (new mtime): accepted after a hash
        assert client.get("/videos/4/media").content == corpus.clips[3].read_bytes()
        with sessions() as session:
            assert session.get(Video, 4).file_mtime_ns == target.stat().st_mtime_ns  # and recorded


def test_twenty_posters_come_from_the_cache_in_under_a_second(writable_client: TestClient, private_data: Path) -> None:
    shutil.rmtree(private_data / "posters", ignore_errors=True)
    urls = [f"/videos/{vid}/poster?time=2.56&width=320" for vid in range(1, 21)]
    rounds = []
    for _ in range(2):
        started = time.perf_counter()
        answers = [writable_client.get(url) for url in urls]
        rounds.append(time.perf_counter() - started)
        assert [a.status_code for a in answers] == [200] * 20
        assert {a.headers["x-frame-time"] for a in answers} == {"2.560"}
    print(f"20 posters: first round {rounds[0]:.3f} s (decoded), second {rounds[1]:.3f} s (cached)")
    assert rounds[1] < 1.0, rounds
    cached = sorted((private_data / "posters").glob("*/*.jpg"))
    assert len(cached) == 20
    assert writable_client.get(urls[0]).content in [c.read_bytes() for c in cached]
