"""Issue 28 (6.): names with NUL, control or bidi characters are listed and answered with those characters written
out (`\\u202e`), the original kept for export (`original_name`); errors that name a file say which video and never
a server path (a 409 names no link target, a 403 no media root, a failed upload no temporary file); a path repeated
in `POST /index` is checked once."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from service import jobs
from service.app import create_app

from .conftest import API_KEY, Corpus, make_config
from .test_catalog import _wait_for_job

pytestmark = pytest.mark.slow  # the demo corpus, indexed once per session

SENT = "mine\x00\x01\x1b[2J\u202egnp.exe\u2066\u200f.mp4"  # as sent; `gnp.exe` displays as `exe.png` unescaped
SHOWN = r"mine\u0000\u0001\u001b[2J\u202egnp.exe\u2066\u200f.mp4"
HIDDEN = re.compile("[\x00-\x1f\x7f\u061c\u200e\u200f\u202a-\u202e\u2066-\u2069]")
ABSOLUTE_PATH = re.compile(r"(?:^|[\s(\"'=:])/[^\s/]+/")  # /something/ starting a word: a server path


def _multipart(name: str, data: bytes, field: str = "files") -> tuple[bytes, dict[str, str]]:
    """A multipart body whose file name is sent byte for byte (a client library would percent-encode a NUL)."""
    head = (
        f'--B\r\nContent-Disposition: form-data; name="{field}"; filename="{name}"\r\nContent-Type: video/mp4\r\n\r\n'
    )
    return head.encode() + data + b"\r\n--B--\r\n", {"content-type": "multipart/form-data; boundary=B"}


def _upload(client: TestClient, data: bytes) -> dict:
    body, headers = _multipart(SENT, data)
    accepted = client.post("/index", content=body, headers=headers)
    assert accepted.status_code == 202, accepted.text
    return _wait_for_job(client, accepted.json()["job_id"])


def test_an_upload_named_with_hidden_characters_is_shown_escaped_and_kept_as_sent(
    writable_client: TestClient, private_data: Path
) -> None:
    from training.synth import generate

    clip = sorted(generate(private_data.parent / "up", 1, seed=2828).glob("*.mp4"))[0]
    job = _upload(writable_client, clip.read_bytes())
    assert (job["state"], job["done"]) == ("done", 1), job
    assert [(f["name"], f["path"]) for f in job["files"]] == [(SHOWN, None)]
    [video] = [v for v in writable_client.get("/videos", params={"limit": 1000}).json()["items"] if "mine" in v["name"]]
    assert video["name"] == SHOWN and not HIDDEN.search(json.dumps(video, ensure_ascii=False))
    detail = writable_client.get(f"/videos/{video['id']}").json()
    assert (detail["name"], detail["original_name"]) == (SHOWN, SENT)  # the original, for export
    found = writable_client.post("/search/audio-to-video", data={"video_id": video["id"]}).json()
    assert SHOWN in [r["name"] for r in found["results"]]

    body, headers = _multipart(SENT, b"not media at all" * 64, field="file")  # an error naming the upload
    refused = writable_client.post("/search/audio-to-video", content=body, headers=headers)
    assert refused.status_code == 415 and SHOWN in refused.json()["detail"], refused.text
    assert not HIDDEN.search(refused.json()["detail"])


def test_a_failed_upload_names_no_temporary_file(writable_client: TestClient, private_data: Path) -> None:
    job = _upload(writable_client, b"this is not a video" * 64)
    assert (job["state"], job["failed"]) == ("failed", 1), job
    [file] = job["files"]
    assert (file["name"], file["path"], file["uploaded"]) == (SHOWN, None, True)
    assert list(job["errors"]) == [SHOWN] and job["failures"] == [file]
    [video] = writable_client.get("/videos", params={"status": "failed"}).json()["items"]
    assert (video["name"], video["uri"]) == (SHOWN, "") and video["error"].startswith(f"{SHOWN}: ")
    media = writable_client.get(f"/videos/{video['id']}/media")
    assert media.status_code == 404 and f"video {video['id']} ({SHOWN})" in media.json()["detail"]
    listed = writable_client.get("/jobs").json()
    for text in (json.dumps(job), json.dumps(video), json.dumps(listed), media.text):
        assert "/tmp" not in text and str(private_data) not in text and "uploads" not in text, text
        assert not ABSOLUTE_PATH.search(text), text


def _private_roots(corpus: Corpus, data: Path, media: Path) -> TestClient:
    """An app over a private copy of the data dir whose only media root is `media`."""
    config = make_config(corpus, data, media_roots=[media], api_key=API_KEY)
    return TestClient(create_app(config), headers={"X-API-Key": API_KEY})


def test_a_file_swapped_for_a_link_is_refused_naming_the_video_not_a_path(
    corpus: Corpus, private_data: Path, tmp_path: Path
) -> None:
    from indexer.catalog.tables import Video, open_catalog

    media = tmp_path / "media"
    media.mkdir()
    target = (media / "clip.mp4").resolve()
    shutil.copy(corpus.clips[3], target)
    with open_catalog(make_config(corpus, private_data).catalog_url)() as session:
        video = session.get(Video, 4)  # video 4 now lives at media/clip.mp4 (the same content)
        assert video is not None
        video.uri, video.file_size, video.file_mtime_ns = str(target), target.stat().st_size, target.stat().st_mtime_ns
        session.commit()
    with _private_roots(corpus, private_data, media) as client:
        assert client.get("/videos/4/media").status_code == 200
        target.unlink()
        target.symlink_to("/etc/passwd")
        readers = [
            client.get("/videos/4/media"),
            client.get("/videos/4/poster"),
            client.post("/localize", data={"video_id": 4, "audio_video_id": 2}),
            client.post("/search/audio-to-video", data={"video_id": 4}),
        ]
        target.unlink()
        readers.append(client.get("/videos/4/media"))  # gone: 404
    assert [r.status_code for r in readers] == [409, 409, 409, 409, 404]
    for answer in readers:
        detail = answer.json()["detail"]
        assert f"video 4 ({corpus.clips[3].name})" in detail, detail
        assert "/" not in detail and "passwd" not in detail and "clip.mp4" not in detail, detail
    assert "no longer the one indexed" in readers[0].json()["detail"]


def test_paths_outside_the_roots_are_refused_without_naming_the_roots(
    corpus: Corpus, private_data: Path, tmp_path: Path
) -> None:
    media = (tmp_path / "media").resolve()
    (media / "linked").mkdir(parents=True)
    (media / "linked" / "secret.mp4").symlink_to("/etc/passwd")
    outside = tmp_path / "elsewhere.mp4"
    shutil.copy(corpus.clips[0], outside)
    given = [str(outside), str(media / "linked"), "/etc/passwd", str(media / ".." / "elsewhere.mp4")]
    with _private_roots(corpus, private_data, media) as client:
        answers = [client.post("/index", json={"paths": [path]}) for path in given]
    for path, answer in zip(given, answers, strict=True):
        detail = answer.json()["detail"]
        assert answer.status_code == 403 and detail.startswith(f"{path}"), (path, detail)
        assert "GET /index/roots" in detail and str(media) not in detail.removeprefix(path), detail
    assert "/etc/passwd" not in answers[1].json()["detail"]  # the link is named as found, not where it leads
    assert answers[1].json()["detail"].startswith(f"{media / 'linked' / 'secret.mp4'}: a link out of the media roots")


def test_a_path_repeated_a_thousand_times_is_checked_once(
    writable_client: TestClient, corpus: Corpus, monkeypatch: pytest.MonkeyPatch
) -> None:
    probed: list[Path] = []
    walked: list[Path] = []
    real_probe, real_list = jobs.probe, jobs.list_media

    def probe(path: Path, *args: Any) -> Any:
        probed.append(path)
        return real_probe(path, *args)

    def list_media(path: Path) -> list[Path]:
        walked.append(path)
        return real_list(path)

    monkeypatch.setattr(jobs, "probe", probe)
    monkeypatch.setattr(jobs, "list_media", list_media)
    folder, file = str(corpus.media / "synth"), str(corpus.clips[0])
    accepted = writable_client.post("/index", json={"paths": [file, folder] * 1000})
    assert accepted.status_code == 202, accepted.text
    assert (len(probed), len(walked)) == (1, 1)  # each distinct path checked once
    assert accepted.json()["files"] == len(corpus.clips)
    job = _wait_for_job(writable_client, accepted.json()["job_id"])
    assert (job["total"], job["skipped"]) == (len(corpus.clips), len(corpus.clips)), job
