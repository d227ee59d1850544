"""Index tasks run in process against the real PostgreSQL: identical results on SQLite and PostgreSQL; the
merge lock of several mergers (Redis). Celery workers themselves: tests/cavsync/test_worker.py."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from indexer.catalog.tables import Clip, IndexJob, JobState, open_catalog
from indexer.jobs.context import Resources, TaskContext
from indexer.search.ranking import search
from indexer.store.datadir import DataDir
from indexer.store.token_store import TokenStore
from tests.indexing import start_job

from ...conftest import redis_db

REPO = Path(__file__).resolve().parents[3]
BROKER = os.environ.get("CAVSYNC_TEST_REDIS", "redis://127.0.0.1:6379/14")


@pytest.fixture()
def broker() -> Iterator[str]:
    yield from redis_db(BROKER)


_SESSIONS: dict = {}


def _session(url: str):  # noqa: ANN202 - one engine per database for the whole test (polling opens no new ones)
    if url not in _SESSIONS:
        _SESSIONS[url] = open_catalog(url)
    return _SESSIONS[url]()


def _job(url: str, job_id: str) -> IndexJob:
    with _session(url) as session:
        return session.get(IndexJob, job_id)


@pytest.mark.slow
@pytest.mark.integration
def test_embedded_mode_and_identical_results_on_sqlite_and_postgresql(
    pg_url: str, media: Path, checkpoint: Path, tmp_path: Path
) -> None:
    files = sorted(str(p) for p in media.glob("*.mp4") if p.name != "broken.mp4")
    results = []
    for url, folder in ((f"sqlite:///{tmp_path / 'c.db'}", tmp_path / "lite"), (pg_url, tmp_path / "pg")):
        job_id = start_job(files, TaskContext(str(checkpoint), DataDir(folder, url)), Resources())
        assert _job(url, job_id).state == JobState.DONE
        version = TokenStore(folder / "index").open()
        query = version.gather("audio", version.rows_of([4]))[0]
        with _session(url) as session:
            hits = search(version, query, target="visual", k=5)
            results.append([(Path(session.get(Clip, h.clip_id).video.uri).name, round(h.score, 5)) for h in hits])
    assert results[0] == results[1]


_HOLDER = """
import sys, time
from indexer.jobs.broker import renewed_lock
with renewed_lock(sys.argv[1], "cavsync:test", ttl_s=1.0, wait_s=5):
    print("held", flush=True)
    time.sleep(float(sys.argv[2]))
    open(sys.argv[3], "w").close()
"""


@pytest.mark.integration
@pytest.mark.timeout(60)
@pytest.mark.parametrize("holder", ["killed", "alive"])
def test_a_dead_holders_lock_frees_within_its_ttl_and_a_live_one_keeps_it(
    broker: str, holder: str, tmp_path: Path
) -> None:
    from indexer.jobs.broker import renewed_lock

    done = tmp_path / "released"
    child = subprocess.Popen(
        [sys.executable, "-c", _HOLDER, broker, "4", str(done)],
        cwd=REPO,
        env=dict(os.environ, PYTHONPATH=str(REPO)),
        stdout=subprocess.PIPE,
        text=True,
    )
    assert child.stdout.readline().strip() == "held"  # type: ignore[union-attr]
    if holder == "killed":
        child.kill()
    start = time.monotonic()
    with renewed_lock(broker, "cavsync:test", ttl_s=1.0, wait_s=30):
        waited = time.monotonic() - start
    child.wait(timeout=30)
    if holder == "killed":
        assert waited < 2.5 and not done.exists()  # freed by its 1-s ttl, not held for the child's 4 s
    else:
        assert done.exists() and waited > 3.0  # renewed past its 1-s ttl until the holder let go


@pytest.mark.slow
@pytest.mark.integration
@pytest.mark.timeout(300)
def test_an_upload_becomes_a_managed_copy_and_a_lost_file_is_found_again(
    catalog_url: str, media: Path, checkpoint: Path, tmp_path: Path
) -> None:
    """What a Celery worker runs (`index_file`, through `dispatch_job` in process), on SQLite and PostgreSQL."""
    import hashlib
    import shutil

    from indexer.catalog.tables import Video
    from indexer.ingest.files import upload_file_name
    from indexer.ingest.pipeline import MEDIA_SUFFIXES, delete_videos

    data, res = tmp_path / "data", Resources()
    ctx = TaskContext(str(checkpoint), DataDir(data, catalog_url))
    clips = sorted(p for p in media.glob("*.mp4") if p.name != "broken.mp4")
    (data / "uploads").mkdir(parents=True)
    kept = data / "uploads" / upload_file_name("my clip: take 2.mp4", MEDIA_SUFFIXES)
    shutil.copy(clips[0], kept)
    own = tmp_path / "own" / "a.mp4"
    own.parent.mkdir()
    shutil.copy(clips[1], own)
    job = start_job([str(kept.resolve()), str(own)], ctx, res)
    assert (_job(catalog_url, job).state, _job(catalog_url, job).done) == (JobState.DONE, 2)
    with _session(catalog_url) as session:
        videos = {v.name: v for v in session.query(Video).all()}
    managed = data / "media" / f"{hashlib.sha256(clips[0].read_bytes()).hexdigest()}.mp4"
    assert sorted(videos) == ["a.mp4", "my clip: take 2.mp4"] and not kept.exists()
    assert videos["my clip: take 2.mp4"].uri == str(managed.resolve()) and managed.read_bytes() == clips[0].read_bytes()
    assert videos["a.mp4"].uri == str(own.resolve()) and videos["a.mp4"].file_size == own.stat().st_size

    moved = own.rename(own.with_name("b.mp4"))  # the user renamed the file: indexing it again repairs the video
    again = start_job([str(moved)], ctx, res)
    assert (_job(catalog_url, again).skipped, _job(catalog_url, again).done) == (1, 0)
    with _session(catalog_url) as session:
        repaired = session.get(Video, videos["a.mp4"].id)
        assert (repaired.uri, repaired.name) == (str(moved.resolve()), "b.mp4")

    store, sessions = TokenStore(data / "index"), _SESSIONS[catalog_url]
    assert delete_videos([videos["my clip: take 2.mp4"].id, repaired.id], store, sessions, data / "media") == 2
    assert not managed.exists() and moved.exists()  # the managed copy goes; the user's own file never does
