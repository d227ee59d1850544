"""Bounded inputs and resources (issue 13): decompression bombs refused in under a second with no ffmpeg
started on them (issue 19: also those whose header lies or drops a size, by upload, by path and met by an index
task, with the peak memory of the one bounded ffprobe they cost), FIFOs refused, any valid float as a time,
exactly one of concurrent deletes reports it, a store of 1,000 shards opened with a bounded number of file
descriptors, a blank API key refused."""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from fastapi.testclient import TestClient
from pydantic import SecretStr, ValidationError

from cavsync.settings import Settings
from indexer.store.datadir import DataDir
from service.app import create_app
from service.config import ServiceConfig

from ..bombs import ToolRuns, measured_tools, without_run_args
from ..bombs import png_bomb as make_png_bomb
from .conftest import DEMO_CHECKPOINT, record

pytestmark = pytest.mark.slow  # the module's fixtures index clips and mux a bomb (about half a minute)
BOMB_SIDE = 16000  # 256 M pixels: 768 MB of RGB once decoded, from a file of under 1 MB


def png_bomb(path: Path) -> Path:
    """A valid 16000 x 16000 black PNG (the field report's 746-KB bomb)."""
    return make_png_bomb(path, BOMB_SIDE, BOMB_SIDE, level=9)


@pytest.fixture(scope="module")
def bombs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The PNG bomb, and the same frames muxed into an mp4 (two frames, stream copy: no decoding)."""
    from model.media import ffmpeg_binary

    folder = tmp_path_factory.mktemp("bombs")
    png = png_bomb(folder / "bomb.png")
    mp4 = folder / "bomb.mp4"
    args = [ffmpeg_binary(), "-v", "error", "-y", "-loop", "1", "-t", "2", "-framerate", "1", "-i", str(png)]
    subprocess.run([*args, "-c:v", "copy", str(mp4)], check=True, timeout=120)
    return {"png": png, "mp4": mp4}


@pytest.fixture(scope="module")
def indexed(tmp_path_factory: pytest.TempPathFactory, media: list[Path]) -> Path:
    """A data dir with the first three clips indexed."""
    from indexer.catalog.tables import open_catalog
    from indexer.ingest.pipeline import Indexer, model_id_of
    from indexer.store.token_store import TokenStore
    from model import load_model

    data = tmp_path_factory.mktemp("indexed")
    sessions = open_catalog(f"sqlite:///{data / 'catalog.db'}")
    store = TokenStore(data / "index")
    model = load_model(DEMO_CHECKPOINT)
    summary = Indexer(model, model_id_of(DEMO_CHECKPOINT), store, sessions, workers=1).index(media[:3], False)
    assert summary.indexed == 3, summary
    return data


@pytest.fixture()
def client(indexed: Path, media: list[Path], tmp_path: Path) -> Iterator[TestClient]:
    data = Path(shutil.copytree(indexed, tmp_path / "data"))
    config = ServiceConfig(model_path=DEMO_CHECKPOINT, data=DataDir(data), media_roots=(tmp_path, media[0].parent))
    with TestClient(create_app(config), raise_server_exceptions=False) as test_client:
        yield test_client


@pytest.fixture()
def spawned(monkeypatch: pytest.MonkeyPatch) -> list[list[str]]:
    """The argument list of every process started meanwhile (ffprobe and ffmpeg go through Popen)."""
    started: list[list[str]] = []
    real = subprocess.Popen

    def recording(args: Any, *rest: Any, **kwargs: Any) -> Any:
        started.append([str(a) for a in args])
        return real(args, *rest, **kwargs)

    monkeypatch.setattr(subprocess, "Popen", recording)
    return started


def test_decompression_bombs_are_refused_at_once(
    client: TestClient, bombs: dict[str, Path], spawned: list[list[str]]
) -> None:
    """413 in under a second, and no ffmpeg or ffprobe ever started on the bomb."""
    timings = {}
    for name, route, field, extra in (
        ("png", "/localize", "image", {"audio_video_id": "1"}),
        ("mp4", "/search/video-to-audio", "file", {}),
        ("mp4", "/localize", "image", {"audio_video_id": "1", "time": "1"}),
    ):
        started = time.perf_counter()
        response = client.post(route, files={field: (f"bomb.{name}", bombs[name].read_bytes())}, data=extra)
        timings[f"{name} {route}"] = time.perf_counter() - started
        assert response.status_code == 413, response.text
        assert "16000x16000 pixels per frame" in response.json()["detail"], response.text
    record("decompression bombs", seconds=timings, processes_started=len(spawned))
    assert max(timings.values()) < 1.0, timings
    assert spawned == [], spawned  # refused from the header alone


def test_bomb_upload_for_indexing_is_refused(
    client: TestClient, bombs: dict[str, Path], spawned: list[list[str]]
) -> None:
    response = client.post("/index", files={"files": ("bomb.mp4", bombs["mp4"].read_bytes())})
    assert response.status_code == 413 and "pixels per frame" in response.json()["detail"], response.text
    assert spawned == []


LYING_SIZES = {"mp4": "16000x16000", "png": "20001x13000"}  # what the bombs of tests/bombs.py really hold
UPLOAD_ROUTES = (  # route, the upload's field, the other fields
    ("/search/audio-to-video", "file", {}),
    ("/search/video-to-audio", "file", {}),
    ("/localize", "image", {"audio_video_id": "1"}),
    ("/localize", "audio", {"video_id": "1"}),
    ("/index", "files", {}),
)


@pytest.fixture()
def tools(tmp_path: Path) -> Iterator[ToolRuns]:
    """Every ffmpeg / ffprobe started meanwhile, with its peak RSS (tests/bombs.py)."""
    with measured_tools(tmp_path / "tools") as runs:
        yield runs


def _bomb_runs(runs: ToolRuns) -> list[dict]:
    """The runs given a bomb (every bomb file's name starts with `bomb-`; uploads keep it in their own name)."""
    return [row for row in runs.rows() if any("bomb-" in arg for arg in row["args"])]


def test_bombs_behind_a_lying_header_are_refused_by_upload(
    client: TestClient, lying_bombs: dict[str, Path], tools: ToolRuns
) -> None:
    """Headers that pass the Python check (64x64; a width hachoir drops): 413 in under a second on every upload
    route, from one bounded ffprobe of flat memory; no ffmpeg decodes them; four at once cost four such probes."""
    timings, peaks = {}, {}
    for name, path in lying_bombs.items():
        for route, field, extra in UPLOAD_ROUTES:
            tools.clear()
            started = time.perf_counter()
            response = client.post(route, files={field: (f"bomb-{path.name}", path.read_bytes())}, data=extra)
            case = f"{name} {route} {field}"
            timings[case] = round(time.perf_counter() - started, 3)
            assert response.status_code == 413, (case, response.text)
            assert f"{LYING_SIZES[name]} pixels per frame" in response.json()["detail"], (case, response.text)
            runs = _bomb_runs(tools)
            assert [row["tool"] for row in runs] == ["ffprobe"], (case, without_run_args(runs))
            peaks[case] = round(tools.peak_mb(), 1)  # every ffmpeg / ffprobe of the request
    tools.clear()
    started = time.perf_counter()
    with ThreadPoolExecutor(4) as pool:
        data = lying_bombs["mp4"].read_bytes()
        answers = list(
            pool.map(lambda _: client.post("/search/video-to-audio", files={"file": ("bomb-4", data)}), range(4))
        )
    four_at_once = round(time.perf_counter() - started, 3)
    assert [a.status_code for a in answers] == [413] * 4, [a.text for a in answers]
    four_peaks = [round(row["peak_rss_mb"], 1) for row in tools.rows()]
    record(
        "bombs behind a lying header, by upload",
        seconds=timings,
        child_peak_rss_mb=peaks,
        four_at_once_s=four_at_once,
        four_at_once_peaks_mb=four_peaks,
    )
    assert max(timings.values()) < 1.0, timings
    assert max(peaks.values()) < 200, peaks
    assert len(four_peaks) == 4 and max(four_peaks) < 200, four_peaks


def test_bombs_behind_a_lying_header_are_refused_by_path(
    client: TestClient, lying_bombs: dict[str, Path], tools: ToolRuns, tmp_path: Path
) -> None:
    """A bomb named in POST /index {"paths"} is probed (bounded) before any job is made: 413 in under a second."""
    jobs_before = client.get("/jobs").json()["total"]
    timings, peaks = {}, {}
    for name, source in lying_bombs.items():
        target = tmp_path / f"bomb-{source.name}"
        shutil.copyfile(source, target)
        tools.clear()
        started = time.perf_counter()
        response = client.post("/index", json={"paths": [str(target)]})
        timings[name] = round(time.perf_counter() - started, 3)
        assert response.status_code == 413, response.text
        assert f"{LYING_SIZES[name]} pixels per frame" in response.json()["detail"], response.text
        assert [row["tool"] for row in tools.rows()] == ["ffprobe"], without_run_args(tools.rows())
        peaks[name] = round(tools.peak_mb(), 1)
    record("bombs behind a lying header, by path", seconds=timings, child_peak_rss_mb=peaks)
    assert client.get("/jobs").json()["total"] == jobs_before  # no job was made
    assert max(timings.values()) < 1.0, timings
    assert max(peaks.values()) < 200, peaks


def test_an_index_task_meeting_a_bomb_fails_its_file(
    client: TestClient, lying_bombs: dict[str, Path], tools: ToolRuns, tmp_path: Path
) -> None:
    """Files found by walking a folder are checked by their task: each bomb fails its file with the sizes it
    really has, from one bounded probe (the PNG named .mp4 is walked as media and found out by its content)."""
    folder = tmp_path / "incoming"
    folder.mkdir()
    shutil.copyfile(lying_bombs["mp4"], folder / "bomb-lying.mp4")
    shutil.copyfile(lying_bombs["png"], folder / "bomb-wide.mp4")
    started = time.perf_counter()
    response = client.post("/index", json={"paths": [str(folder)]})
    assert response.status_code == 202, response.text
    job_id = response.json()["job_id"]
    deadline = time.monotonic() + 60
    while (info := client.get(f"/jobs/{job_id}").json())["state"] not in {"done", "failed"}:
        assert time.monotonic() < deadline, info
        time.sleep(0.1)
    settled_s = round(time.perf_counter() - started, 3)
    errors = {Path(f["path"]).name: (f["state"], f["error"]) for f in info["files"]}
    assert errors.keys() == {"bomb-lying.mp4", "bomb-wide.mp4"}, info
    for file, size in (("bomb-lying.mp4", "16000x16000"), ("bomb-wide.mp4", "20001x13000")):
        state, error = errors[file]
        assert state == "failed" and f"{size} pixels per frame" in (error or ""), info
    runs = _bomb_runs(tools)
    record("bombs behind a lying header, met by an index task", job_s=settled_s, runs=without_run_args(runs))
    assert sorted(row["tool"] for row in runs) == ["ffprobe", "ffprobe"], without_run_args(runs)
    assert tools.peak_mb() < 200, without_run_args(tools.rows())


def test_a_fifo_is_refused(client: TestClient, tmp_path: Path) -> None:
    fifo = tmp_path / "f.mp4"
    os.mkfifo(fifo)
    started = time.perf_counter()
    response = client.post("/index", json={"paths": [str(fifo)]})
    assert response.status_code == 422 and "not a regular file" in response.json()["detail"], response.text
    assert time.perf_counter() - started < 5


def test_a_fifo_met_by_a_task_fails_its_file_without_blocking(tmp_path: Path) -> None:
    """A path that became a FIFO after the API checked it: the task fails the file, it never blocks on it."""
    from indexer.ingest.pipeline import content_hash
    from model.media import NotRegularFileError

    fifo = tmp_path / "late.mp4"
    os.mkfifo(fifo)
    with pytest.raises(NotRegularFileError):
        content_hash(fifo)


def test_any_valid_float_is_a_time(client: TestClient, media: list[Path]) -> None:
    response = client.post(
        "/localize", files={"image": ("v.mp4", media[0].read_bytes())}, data={"time": "0.00001", "audio_video_id": "1"}
    )
    assert response.status_code == 200, response.text


def test_concurrent_deletes_report_one_deletion(client: TestClient) -> None:
    with ThreadPoolExecutor(10) as pool:
        answers = list(pool.map(lambda _: client.delete("/videos/2"), range(10)))
    assert [a.status_code for a in answers] == [200] * 10, [a.text for a in answers]
    deleted = sum(a.json()["deleted"] for a in answers)
    record("10 concurrent DELETE /videos/2", deleted_true=deleted, answers=len(answers))
    assert deleted == 1
    assert client.get("/videos/2").json()["status"] == "deleted"


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def test_a_store_of_1000_shards_holds_no_fd_per_shard(tmp_path: Path) -> None:
    from indexer.store.corpus import Clips
    from indexer.store.token_store import TokenStore
    from indexer.store.version import Manifest

    store, rng = TokenStore(tmp_path / "index", factory="IDMap2,Flat"), np.random.default_rng(0)
    manifest = Manifest(1, 2, 8, "float16", "m", factory="")
    for shard in range(1000):
        tokens = rng.standard_normal((1, 2, 8)).astype(np.float32)
        tokens /= np.linalg.norm(tokens, axis=-1, keepdims=True)
        # one clip a track, both frames inside the media
        clips = Clips.of(np.array([shard]), tokens, tokens, np.ones((1, 2), bool), np.array([shard]), np.full(1, 2))
        manifest.segments.append(store._write_segment(clips))
    store._rebuilt(manifest)  # published as the current version, indexes built from the 1,000 shards
    before = open_fds()
    version = store.open(gpu=False)
    assert version is not None and len(version) == 1000 and len(version.manifest.segments) == 1000
    held = open_fds() - before
    rows = np.arange(1000)
    assert np.isfinite(version.gather("audio", rows)).all()
    record("a store of 1,000 shards opened", fds_held=held)
    assert held <= 4, held  # numpy's memmaps held 2 per shard: 2,000


@pytest.mark.parametrize("key", ["", "   ", "\t\n"])
def test_a_blank_api_key_is_an_error_at_start(monkeypatch: pytest.MonkeyPatch, key: str) -> None:
    monkeypatch.setenv("CAVSYNC_API_KEY", key)
    with pytest.raises(ValidationError, match="is blank"):
        Settings()
    with pytest.raises(ValueError, match="blank"):
        ServiceConfig(model_path=DEMO_CHECKPOINT, api_key=SecretStr(" \t"))
