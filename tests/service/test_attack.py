"""The attack run (issue 28): every route of the API, as a hostile user would try it, on a private copy of the
test corpus with the demo checkpoint and in-process jobs.

What is tried, and the counts that must stay 0:
- bytes from outside the media roots served: a secret video, a secret text file and /etc/passwd outside the
  roots, reached through uploads and paths that are HLS playlists, ffconcat lists, image-pattern names (a link
  in the pattern's folder pointing out), traversal names, and an indexed file swapped for a symlink or a hard
  link; no answer holds their bytes, no job indexes them, every reader of a swapped file answers 409;
- forged cross-site writes accepted: every route whose method is not GET/HEAD/OPTIONS, sent with a foreign
  `Origin` and `Sec-Fetch-Site: cross-site`, answers 403 and changes nothing;
- reads without the key under CAVSYNC_API_ACCESS=all: every route of the schema but /health answers 401;
- 5xx answers: none over the whole run.
The routes are read off the app's own OpenAPI schema, so a new route is attacked as soon as it exists (and the
run fails if it meets a route it has no request for). Acknowledged writes undone (a DELETE racing a commit)
are counted by tests/service/test_delete_race.py; scripts run by the page by tests/service/web/.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from service.app import create_app

from ..model.media_files import ffmpeg
from .conftest import API_KEY, Corpus, file_readers, make_config

EVIL = {"Origin": "http://evil.example", "Sec-Fetch-Site": "cross-site"}
PASSWD = Path("/etc/passwd").read_bytes()[:32]
# Uploaded, a list naming another file is the threat (the other bait are the sender's own bytes when uploaded: a
# link's target, a picture whose name no decoder sees); by path every bait is tried.
UPLOADED_BAIT = ("playlist.m3u8", "list.ffconcat")
# What answers without the key under `all` (besides the page and the docs): the health check, and the session
# routes (logging in is how the key is given; logging out clears a cookie).
OPEN_ROUTES = {"/health": {200}, "/session": {204, 401}}


@dataclass
class Tally:
    """What the run counted, per kind of answer that must not happen."""

    requests: int = 0
    server_errors: list[str] = field(default_factory=list)
    leaked: list[str] = field(default_factory=list)
    forged_accepted: list[str] = field(default_factory=list)
    reads_open: list[str] = field(default_factory=list)

    def check(self, what: str, answer: httpx.Response, secrets: list[bytes]) -> httpx.Response:
        self.requests += 1
        if answer.status_code >= 500:
            self.server_errors.append(f"{what}: {answer.status_code} {answer.text[:200]}")
        if any(secret in answer.content for secret in secrets):
            self.leaked.append(f"{what}: {answer.status_code}")
        return answer


@dataclass(frozen=True)
class Field:
    """The files a hostile user plants: outside the roots (secrets) and inside (the bait)."""

    root: Path  # the media root
    secret_video: Path  # outside the roots
    secret_text: Path  # outside the roots
    bait: dict[str, Path]  # name -> a file under the root that points outside

    @property
    def secrets(self) -> list[bytes]:
        return [self.secret_text.read_bytes()[:48], self.secret_video.read_bytes()[-64:], PASSWD]


def _plant(corpus: Corpus, base: Path) -> Field:
    outside, root = base / "outside", base / "root"
    (root / "frames").mkdir(parents=True)
    outside.mkdir()
    secret_video = outside / "secret.mp4"  # content of its own (indexing it would not be `skipped`)
    ffmpeg(
        "-i",
        str(corpus.clips[-1]),
        "-c",
        "copy",
        "-movflags",
        "+faststart",
        "-metadata",
        "title=secret",
        str(secret_video),
    )
    secret_text = outside / "secret.txt"
    secret_text.write_bytes(b"CAVSYNC-ATTACK-SECRET never to be served\n" * 64)
    Image.fromarray(np.full((48, 64, 3), 9, np.uint8)).save(outside / "secret.png")
    bait = {
        "playlist.m3u8": root / "playlist.m3u8",
        "list.ffconcat": root / "list.ffconcat",
        "img%03d.png": root / "frames" / "img%03d.png",
        "link.mp4": root / "link.mp4",
    }
    bait["playlist.m3u8"].write_text(
        f"#EXTM3U\n#EXT-X-TARGETDURATION:11\n#EXTINF:10.0,\n{secret_video}\n#EXT-X-ENDLIST\n"
    )
    bait["list.ffconcat"].write_text(f"ffconcat version 1.0\nfile '{secret_video}'\n")
    Image.fromarray(np.full((48, 64, 3), 200, np.uint8)).save(bait["img%03d.png"], format="PNG")
    (root / "frames" / "img001.png").symlink_to(outside / "secret.png")  # what the pattern would open
    bait["link.mp4"].symlink_to(secret_video)
    return Field(root, secret_video, secret_text, bait)


@pytest.fixture(scope="module")
def planted(corpus: Corpus, tmp_path_factory: pytest.TempPathFactory) -> Field:
    return _plant(corpus, tmp_path_factory.mktemp("attack"))


@pytest.fixture()
def attacked(corpus: Corpus, private_data: Path, planted: Field) -> Iterator[TestClient]:
    """The API over a private copy of the corpus, the planted root its media root, a key for writes."""
    config = make_config(corpus, private_data, media_roots=[planted.root], api_key=API_KEY)
    with TestClient(create_app(config), raise_server_exceptions=False, headers={"X-API-Key": API_KEY}) as client:
        yield client


def _final_job(client: TestClient, job_id: str) -> dict[str, Any]:
    deadline = time.monotonic() + 120
    while (info := client.get(f"/jobs/{job_id}").json())["state"] in ("queued", "running"):
        assert time.monotonic() < deadline, info
        time.sleep(0.2)
    return info


def _upload_fields(schema: dict[str, Any], path: str) -> list[str]:
    """The file fields of a route's multipart body (`contentMediaType` or `format: binary`)."""
    content = schema["paths"][path]["post"].get("requestBody", {}).get("content", {})
    body = content.get("multipart/form-data", {}).get("schema")
    if body is None:
        return []
    if "$ref" in body:
        body = schema["components"]["schemas"][body["$ref"].rsplit("/", 1)[-1]]
    return [
        name
        for name, spec in body["properties"].items()
        if "contentMediaType" in json.dumps(spec) or '"binary"' in json.dumps(spec)
    ]


def _other_field(path: str, field_name: str) -> dict[str, int]:
    """/localize takes a picture and a sound: the field not attacked names an indexed video."""
    if path != "/localize":
        return {}
    return {"audio_video_id": 1} if field_name == "image" else {"video_id": 1}


def _hostile_uploads(client: TestClient, planted: Field, tally: Tally) -> list[str]:
    """Each bait file uploaded to each upload field of each route (an indexed video for the other field of
    /localize): searches and /localize answer 4xx; an index upload's job indexes nothing."""
    schema, attacked_routes = client.get("/openapi.json").json(), []
    for path, methods in schema["paths"].items():
        if "post" not in methods:
            continue
        for field_name in _upload_fields(schema, path):
            attacked_routes.append(path)
            for name in UPLOADED_BAIT:
                bait, what = planted.bait[name], f"POST {path} {field_name}={name}"
                files = {field_name: (name, bait.read_bytes(), "application/octet-stream")}
                data = _other_field(path, field_name)
                if path == "/index":
                    files = {"files": files[field_name]}
                answer = tally.check(what, client.post(path, files=files, data=data), planted.secrets)
                if path == "/index" and answer.status_code == 202:
                    job = _final_job(client, answer.json()["job_id"])
                    assert job["done"] == 0, (what, job)
                else:
                    assert 400 <= answer.status_code < 500, (what, answer.status_code, answer.text)
    return attacked_routes


def _hostile_paths(client: TestClient, planted: Field, tally: Tally) -> None:
    """POST /index by path: the bait, traversal names and server files; refused, or a job that indexes nothing."""
    root = planted.root
    names = [str(p) for p in planted.bait.values()]
    names += [f"{root}/../outside/secret.mp4", f"{root}/../outside", str(planted.secret_video), "/etc/passwd"]
    names += [f"{root}/%2e%2e/outside/secret.mp4", "../outside/secret.mp4", f"{root}/frames/../../outside/secret.txt"]
    for name in names:
        answer = tally.check(f"POST /index {name}", client.post("/index", json={"paths": [name]}), planted.secrets)
        if answer.status_code == 202:
            job = _final_job(client, answer.json()["job_id"])
            assert job["done"] == 0, (name, job)
        else:
            assert 400 <= answer.status_code < 500, (name, answer.status_code, answer.text)


def _traversal_gets(client: TestClient, planted: Field, tally: Tally) -> None:
    for url in [
        "/ui/../../../../etc/passwd",
        "/ui/%2e%2e/%2e%2e/%2e%2e/etc/passwd",
        "/ui/..%2f..%2f..%2fetc%2fpasswd",
        "/docs-assets/..%2f..%2f..%2f..%2fetc%2fpasswd",
        "/videos/..%2f..%2fetc%2fpasswd/media",
        f"/videos/1/media/..%2f..%2f..{planted.secret_text}",
        "/videos/1/poster?time=1e400",
        "/videos/99999999999/media",
    ]:
        answer = tally.check(f"GET {url}", client.get(url), planted.secrets)
        assert answer.status_code in (404, 422), (url, answer.status_code)


def test_hostile_files_names_and_paths_serve_nothing_from_outside(attacked: TestClient, planted: Field) -> None:
    tally = Tally()
    videos_before = attacked.get("/videos", params={"status": "indexed"}).json()["total"]
    routes = _hostile_uploads(attacked, planted, tally)
    assert {"/index", "/localize", "/search/audio-to-video", "/search/video-to-audio"} <= set(routes), routes
    _hostile_paths(attacked, planted, tally)
    _traversal_gets(attacked, planted, tally)
    assert attacked.get("/videos", params={"status": "indexed"}).json()["total"] == videos_before
    assert (tally.server_errors, tally.leaked) == ([], []), tally
    report({"attack": "hostile files, names, paths", "requests": tally.requests, "leaked": 0, "5xx": 0})


def _index_one(client: TestClient, path: Path) -> int:
    accepted = client.post("/index", json={"paths": [str(path)]})
    assert accepted.status_code == 202, accepted.text
    job = _final_job(client, accepted.json()["job_id"])
    assert job["done"] == 1, job
    page = client.get("/videos", params={"limit": 500}).json()["items"]
    return max(v["id"] for v in page if v["name"] == path.name)


def _readers(client: TestClient, vid: int, tally: Tally, secrets: list[bytes]) -> list[int]:
    answers = file_readers(client, vid)
    return [tally.check(f"reader of swapped video {vid}", a, secrets).status_code for a in answers]


def test_an_indexed_file_swapped_for_a_link_is_read_by_nobody(attacked: TestClient, planted: Field) -> None:
    tally = Tally()
    victim = planted.root / "victim.mp4"  # a file of its own under the root, indexed
    ffmpeg("-i", str(planted.secret_video), "-c", "copy", "-metadata", "title=victim", str(victim))
    vid = _index_one(attacked, victim)
    secrets = [*planted.secrets, b"not the indexed file" * 3]
    for swap in ("symlink out", "symlink passwd", "hard link"):
        victim.unlink()
        if swap == "symlink out":
            victim.symlink_to(planted.secret_text)
        elif swap == "symlink passwd":
            victim.symlink_to("/etc/passwd")
        else:
            (planted.root / "hard.bin").write_bytes(b"not the indexed file" * 1000)
            os.link(planted.root / "hard.bin", victim)
        assert _readers(attacked, vid, tally, secrets) == [409] * 7, swap
    assert (tally.server_errors, tally.leaked) == ([], []), tally
    report({"attack": "indexed file swapped (2 symlinks, 1 hard link)", "requests": tally.requests, "leaked": 0})


def _state_changing(schema: dict[str, Any]) -> list[tuple[str, str]]:
    return [(p, m.upper()) for p, ms in schema["paths"].items() for m in ms if m in ("post", "put", "patch", "delete")]


def _forged(client: TestClient, method: str, path: str) -> httpx.Response:
    url = path.replace("{video_id}", "1").replace("{job_id}", "1")
    if path == "/index":
        return client.request(method, url, json={"paths": []}, headers=EVIL)
    if path == "/search/tokens":
        return client.request(method, url, json={"tokens": [[0.0] * 4]}, headers=EVIL)
    return client.request(method, url, data={"video_id": "1", "audio_video_id": "2"}, headers=EVIL)


@pytest.mark.parametrize("with_key", [True, False])
def test_forged_cross_site_writes_are_refused_on_every_route(
    corpus: Corpus, private_data: Path, planted: Field, with_key: bool
) -> None:
    config = make_config(corpus, private_data, media_roots=[planted.root], api_key=API_KEY if with_key else None)
    headers = {"X-API-Key": API_KEY} if with_key else {}
    tally = Tally()
    with TestClient(create_app(config), raise_server_exceptions=False, headers=headers) as client:
        before = (client.get("/videos").json()["total"], client.get("/jobs").json()["total"])
        routes = _state_changing(client.get("/openapi.json").json())
        assert ("/index", "POST") in routes and ("/videos/{video_id}", "DELETE") in routes, routes
        for path, method in routes:
            answer = tally.check(f"forged {method} {path}", _forged(client, method, path), planted.secrets)
            if answer.status_code != 403:
                tally.forged_accepted.append(f"{method} {path}: {answer.status_code}")
        after = (client.get("/videos").json()["total"], client.get("/jobs").json()["total"])
        assert client.get("/videos/1").json()["status"] == "indexed"
    assert (tally.forged_accepted, tally.server_errors, after) == ([], [], before), tally
    report({"attack": f"forged cross-site writes (key {'set' if with_key else 'unset'})", "routes": len(routes)})


def _concrete(path: str) -> str:
    return path.replace("{video_id}", "1").replace("{job_id}", "1")


def test_every_read_needs_the_key_under_all(corpus: Corpus, private_data: Path, planted: Field) -> None:
    config = make_config(corpus, private_data, media_roots=[planted.root], api_key=API_KEY, api_access="all")
    tally = Tally()
    with TestClient(create_app(config), raise_server_exceptions=False) as client:
        schema = TestClient(client.app, headers={"X-API-Key": API_KEY}).get("/openapi.json").json()
        routes = [(p, m.upper()) for p, ms in schema["paths"].items() for m in ms]
        for path, method in routes:
            answer = tally.check(f"{method} {path} without key", client.request(method, _concrete(path)), [])
            if path in OPEN_ROUTES:
                assert answer.status_code in OPEN_ROUTES[path], (method, path, answer.text)
            elif answer.status_code != 401:
                tally.reads_open.append(f"{method} {path}: {answer.status_code}")
        for url in ("/videos/1/media", "/videos/1/poster", "/videos", "/jobs", "/index/roots", "/metrics"):
            tally.check(f"GET {url} keyed", keyed := client.get(url, headers={"X-API-Key": API_KEY}), [])
            assert keyed.status_code == 200, (url, keyed.status_code)
    assert (tally.reads_open, tally.server_errors) == ([], []), tally
    report({"attack": "reads without the key under all", "routes": len(routes), "open": 0})


def report(row: dict[str, Any]) -> None:
    """Append a measured row to $CAVSYNC_FAULT_REPORT (JSON lines; RELIABILITY.md's security table), when set."""
    target = os.environ.get("CAVSYNC_FAULT_REPORT")
    if target:
        with open(target, "a", encoding="utf-8") as out:
            out.write(json.dumps(row) + "\n")
