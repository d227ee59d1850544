"""Catalog, embeddings, deletion, index jobs (by path and by upload) and a new index version written by
another process, picked up without a restart."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient

from service.app import create_app

from ..model.media_files import ffmpeg
from .conftest import API_KEY, CORPUS_CLIPS, REPO, Corpus, make_config, upload

pytestmark = pytest.mark.slow  # every test here reads the demo corpus, indexed once per session (about a minute)


def test_video_pages(client: TestClient, corpus: Corpus) -> None:
    first = client.get("/videos", params={"limit": 10}).json()
    assert (first["total"], first["limit"], first["offset"]) == (CORPUS_CLIPS, 10, 0)
    assert [v["id"] for v in first["items"]] == list(range(1, 11))
    last = client.get("/videos", params={"limit": 10, "offset": 20}).json()
    assert [v["id"] for v in last["items"]] == [21, 22, 23, 24]
    video = last["items"][0]
    assert video["uri"] == str(corpus.clips[20].resolve()) and video["status"] == "indexed"
    assert video["modalities"] == "audio,visual" and video["duration"] == pytest.approx(10.0, abs=0.1)
    assert client.get("/videos", params={"status": "failed"}).json()["total"] == 0
    assert client.get("/videos", params={"limit": 0}).status_code == 422
    assert client.get("/videos", params={"status": "sideways"}).status_code == 422


def test_one_video(client: TestClient, corpus: Corpus) -> None:
    video = client.get("/videos/3").json()
    assert video["id"] == 3 and video["uri"] == str(corpus.clips[2].resolve())
    assert video["clips"] == [
        {"id": 3, "start": 0.0, "duration": pytest.approx(10.0, abs=0.1), "modalities": "audio,visual"}
    ]


def test_embeddings_are_the_stored_tokens(client: TestClient, corpus: Corpus) -> None:
    from indexer.store.token_store import TokenStore

    body = client.get("/videos/7/embeddings").json()
    assert (body["frames_per_clip"], body["dim"], len(body["clips"])) == (16, 128, 1)
    version = TokenStore(corpus.data / "index").open()
    assert body["index_version"] == version.name and body["model_id"] == version.manifest.model_id
    clip = body["clips"][0]
    for modality in ("audio", "visual"):
        tokens = np.array(clip[modality])
        assert tokens.shape == (16, 128)
        assert np.allclose(np.linalg.norm(tokens, axis=1), 1.0, atol=2e-3)  # fp16 storage
        assert np.allclose(tokens, version.gather(modality, version.rows_of([clip["clip_id"]]))[0], atol=1e-5)


def test_delete_a_video(writable_client: TestClient) -> None:
    before = writable_client.post("/search/audio-to-video", data={"video_id": "3", "top_k": "30"}).json()
    assert 3 in [r["video_id"] for r in before["results"]]
    response = writable_client.delete("/videos/3")
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["deleted"] is True and body["index_version"] != before["index_version"]
    assert writable_client.get("/videos/3").json()["status"] == "deleted"
    assert writable_client.get("/videos/3/embeddings").status_code == 404
    after = writable_client.post("/search/video-to-audio", data={"video_id": "4", "top_k": "30"}).json()
    assert 3 not in [r["video_id"] for r in after["results"]] and len(after["results"]) == CORPUS_CLIPS - 1
    assert writable_client.post("/search/audio-to-video", data={"video_id": "3"}).status_code == 404
    assert writable_client.delete("/videos/3").json()["deleted"] is False  # already deleted: no error
    assert writable_client.delete("/videos/777").status_code == 404
    assert writable_client.get("/health").json()["index"]["clips"] == CORPUS_CLIPS - 1


def _wait_for_job(client: TestClient, job_id: str, timeout_s: float = 240.0) -> dict:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        job = client.get(f"/jobs/{job_id}").json()
        if job["state"] in ("done", "failed"):
            return job
        time.sleep(0.5)
    raise AssertionError(f"job {job_id} did not finish: {job}")


@pytest.fixture()
def new_media(tmp_path: Path) -> Path:
    from training.synth import generate

    folder = generate(tmp_path / "media" / "new", 2, seed=99)
    (folder / "broken.mp4").write_bytes(b"definitely not a video")
    return tmp_path / "media"


def test_index_by_path_then_search(corpus: Corpus, private_data: Path, new_media: Path) -> None:
    config = make_config(corpus, private_data, media_roots=[new_media], api_key=API_KEY)
    with TestClient(create_app(config), headers={"X-API-Key": API_KEY}) as client:
        response = client.post("/index", json={"paths": [str(new_media / "new")]})
        assert response.status_code == 202, response.text
        accepted = response.json()
        assert accepted["mode"] == "in-process" and accepted["files"] == 3  # the folder's media files
        job = _wait_for_job(client, accepted["job_id"])
        assert (job["state"], job["total"], job["done"], job["failed"], job["skipped"]) == ("done", 3, 2, 1, 0)
        assert job["partial"] is True
        assert list(job["errors"]) == [str(new_media / "new" / "broken.mp4")]
        assert "ffmpeg failed" in job["errors"][str(new_media / "new" / "broken.mp4")]
        assert {f["state"] for f in job["files"]} == {"indexed", "failed"}
        assert client.get("/health").json()["index"]["clips"] == CORPUS_CLIPS + 2
        clip = sorted((new_media / "new").glob("synth_*.mp4"))[0]
        found = client.post("/search/audio-to-video", files=upload(clip), data={"top_k": "3"}).json()["results"]
        assert str(clip.resolve()) in [r["uri"] for r in found]
        new_id = next(r["video_id"] for r in found if r["uri"] == str(clip.resolve()))
        tokens = client.get(f"/videos/{new_id}/embeddings").json()["clips"][0]["audio"]
        itself = client.post("/search/tokens", json={"tokens": tokens, "target": "audio", "top_k": 1}).json()
        assert itself["results"][0]["video_id"] == new_id > CORPUS_CLIPS
        again = _wait_for_job(client, client.post("/index", json={"paths": [str(clip)]}).json()["job_id"])
        assert (again["state"], again["skipped"]) == ("done", 1)  # same content: skipped


def test_a_long_videos_embeddings_come_a_page_at_a_time(corpus: Corpus, private_data: Path, tmp_path: Path) -> None:
    media = tmp_path / "long"
    media.mkdir()
    listing = tmp_path / "list.txt"
    listing.write_text("".join(f"file '{clip}'\n" for clip in corpus.clips[:3]))
    ffmpeg("-f", "concat", "-safe", "0", "-i", str(listing), "-c", "copy", str(media / "three.mp4"))  # 30 s: 3 clips
    config = make_config(corpus, private_data, media_roots=[media], api_key=API_KEY)
    with TestClient(create_app(config), headers={"X-API-Key": API_KEY}) as client:
        job = _wait_for_job(client, client.post("/index", json={"paths": [str(media)]}).json()["job_id"])
        assert job["done"] == 1, job
        items = client.get("/videos", params={"limit": 100}).json()["items"]
        video_id = next(v["id"] for v in items if v["uri"].endswith("three.mp4"))
        whole = client.get(f"/videos/{video_id}/embeddings").json()
        page = client.get(f"/videos/{video_id}/embeddings", params={"offset": 1, "limit": 1}).json()
        past = client.get(f"/videos/{video_id}/embeddings", params={"offset": 5}).json()
    assert (whole["clips_total"], len(whole["clips"]), whole["offset"]) == (3, 3, 0)
    assert (page["clips_total"], page["offset"], page["clips"]) == (3, 1, whole["clips"][1:2])
    assert page["clips"][0]["start"] == pytest.approx(10.24) and past["clips"] == []


def test_index_uploads(writable_client: TestClient, corpus: Corpus, tmp_path: Path) -> None:
    from training.synth import generate

    clip = sorted(generate(tmp_path / "up", 1, seed=123).glob("*.mp4"))[0]
    response = writable_client.post("/index", files={"files": (clip.name, clip.read_bytes(), "video/mp4")})
    assert response.status_code == 202, response.text
    job = _wait_for_job(writable_client, response.json()["job_id"])
    assert (job["state"], job["done"]) == ("done", 1), job
    assert (job["files"][0]["name"], job["files"][0]["path"]) == (clip.name, None)  # where it was kept: not shown
    uploads = Path(writable_client.app.state.config.data.uploads)  # type: ignore[attr-defined]
    assert list(uploads.iterdir()) == []  # an upload is deleted once indexed (issue 13)
    [video] = writable_client.get("/videos", params={"offset": CORPUS_CLIPS}).json()["items"]
    managed = Path(video["uri"])  # the video's file: a managed copy named by its content (issue 19)
    assert managed.parent == (uploads.parent / "media").resolve() and managed.suffix == ".mp4"
    assert managed.read_bytes() == clip.read_bytes() and video["name"] == clip.name
    assert writable_client.post("/index", files={"other": ("x.txt", b"x")}).status_code == 422


def test_uploads_are_indexed_by_absolute_path(
    corpus: Corpus, private_data: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A relative data dir (the default, `data`): the job still names its uploads by absolute path."""
    monkeypatch.chdir(private_data.parent)
    submitted: list[list[Path]] = []
    with TestClient(
        create_app(make_config(corpus, Path(private_data.name), api_key=API_KEY)), headers={"X-API-Key": API_KEY}
    ) as client:
        monkeypatch.setattr(
            client.app.state.jobs, "submit", lambda files, uploaded, names: submitted.append(files + names) or "job"
        )  # type: ignore[attr-defined]
        response = client.post("/index", files={"files": ("a.mp4", b"not read here", "video/mp4")})
    assert response.status_code == 202, response.text
    [[kept, name]] = submitted
    assert name == "a.mp4"  # the name it was sent with travels with it
    assert kept.is_absolute() and kept.parent == (private_data / "uploads").resolve() and kept.is_file()


def test_uploads_over_the_duration_limit_are_refused_and_not_kept(corpus: Corpus, private_data: Path) -> None:
    config = make_config(corpus, private_data, max_media_duration_s=5.0)
    with TestClient(create_app(config)) as client:
        files = [
            ("files", ("short.txt", b"not media: the job records it", "text/plain")),
            ("files", ("long.mp4", corpus.clips[0].read_bytes(), "video/mp4")),
        ]
        response = client.post("/index", files=files)
    assert response.status_code == 413 and "long.mp4: 10 s is longer than the 5 s allowed" in response.json()["detail"]
    assert list((private_data / "uploads").iterdir()) == []


def test_a_version_written_by_another_process_is_picked_up(writable_client: TestClient, private_data: Path) -> None:
    version = writable_client.get("/health").json()["index"]["version"]
    env = {k: v for k, v in os.environ.items() if not k.startswith("CAVSYNC_")} | {"PYTHONPATH": str(REPO)}
    done = subprocess.run(
        [sys.executable, "-m", "cavsync.cli", "delete", "5", "--data-dir", str(private_data)],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert done.returncode == 0, done.stderr
    health = writable_client.get("/health").json()["index"]  # the same app, no restart
    assert health["version"] != version and health["clips"] == CORPUS_CLIPS - 1
    results = writable_client.post("/search/audio-to-video", data={"video_id": "6", "top_k": "30"}).json()["results"]
    assert 5 not in [r["video_id"] for r in results]


def test_health_and_metrics(client: TestClient) -> None:
    health = client.get("/health").json()
    assert health["status"] == "ok" and health["queue"] == "in-process" and health["database"] == "ok"
    assert health["model"]["preset"] == "tiny" and health["model"]["grid_size"] == 7
    assert len(health["model"]["id"]) == 16
    assert health["index"]["clips"] == CORPUS_CLIPS and health["index"]["videos"] == CORPUS_CLIPS
    client.get("/videos/1")
    client.get("/videos/2")
    client.get("/videos/999999")
    client.get("/no/such/route")
    text = client.get("/metrics").text
    assert 'cavsync_http_requests_total{method="GET",route="/videos/{video_id}",status="200"}' in text
    assert 'route="/videos/{video_id}",status="404"' in text and 'route="/videos/1"' not in text
    assert 'route="<unmatched>",status="404"' in text
    assert 'cavsync_http_request_duration_seconds_bucket{le="0.005",method="GET",route="/health"}' in text
    assert f"cavsync_index_clips {float(CORPUS_CLIPS)}" in text


def test_an_empty_index(corpus: Corpus, tmp_path: Path) -> None:
    with TestClient(create_app(make_config(corpus, tmp_path / "empty"))) as client:
        health = client.get("/health").json()
        assert health["index"] == {"version": None, "clips": 0, "videos": 0, "shards": []} and health["status"] == "ok"
        body = client.post("/search/tokens", json={"tokens": [[0.1] * 128], "target": "visual"}).json()
        assert body["results"] == [] and body["index_version"] is None
        assert client.post("/search/audio-to-video", files=upload(corpus.clips[0])).json()["results"] == []
        assert client.get("/videos").json() == {"total": 0, "limit": 50, "offset": 0, "items": []}
