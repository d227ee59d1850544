"""Celery batch indexing against the real Redis and PostgreSQL: a worker killed mid-job, a new one
finishes it, every video indexed exactly once; the embedded (in-process) mode; SQLite vs PostgreSQL."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import redis
from sqlalchemy import func, select

from indexer import tasks
from indexer.catalog import Clip, IndexJob, JobState, Video, VideoStatus, open_catalog
from indexer.search import search
from indexer.store import TokenStore

from ..conftest import IN_CI
from .conftest import _pg_database

REPO = Path(__file__).resolve().parents[2]
BROKER = os.environ.get("CAVSYNC_TEST_REDIS", "redis://127.0.0.1:6379/14")


@pytest.fixture()
def broker() -> str:
    client = redis.Redis.from_url(BROKER, socket_connect_timeout=3)
    try:
        client.ping()
    except redis.ConnectionError as exc:
        if IN_CI:
            pytest.fail(f"Redis is required in CI and is not reachable: {exc}")
        pytest.skip(f"Redis not reachable: {exc}")
    client.flushdb()
    yield BROKER
    client.flushdb()
    tasks.configure(None)


@pytest.fixture()
def pg_url():
    yield from _pg_database()


def _worker(env: dict) -> subprocess.Popen:
    cmd = [
        sys.executable,
        "-m",
        "celery",
        "-A",
        "indexer.tasks",
        "worker",
        "--concurrency",
        "1",
        "--pool",
        "prefork",
        "--loglevel",
        "info",
        "--without-gossip",
        "--without-mingle",
        "--without-heartbeat",
    ]
    log = open(env.get("CAVSYNC_TEST_WORKER_LOG", os.devnull), "a")  # noqa: SIM115
    return subprocess.Popen(cmd, cwd=REPO, env=env, stdout=log, stderr=log, start_new_session=True)


_SESSIONS: dict = {}


def _session(url: str):  # noqa: ANN202 - one engine per database for the whole test (polling opens no new ones)
    if url not in _SESSIONS:
        _SESSIONS[url] = open_catalog(url)
    return _SESSIONS[url]()


def _job(url: str, job_id: str) -> IndexJob:
    with _session(url) as session:
        return session.get(IndexJob, job_id)


def _indexed_once(url: str, data_dir: Path) -> tuple[int, list[int], list[int]]:
    with _session(url) as session:
        per_sha = session.execute(
            select(Video.sha256, func.count()).where(Video.status == VideoStatus.INDEXED).group_by(Video.sha256)
        ).all()
        assert all(count == 1 for _, count in per_sha), per_sha
        clips = sorted(session.scalars(select(Clip.id)).all())
    version = TokenStore(data_dir / "index").open()
    return len(per_sha), clips, sorted(version.clip_ids[version.live].tolist())


@pytest.mark.integration
@pytest.mark.slow
@pytest.mark.timeout(600)
def test_worker_killed_mid_job_then_replaced(
    broker: str, pg_url: str, media: Path, checkpoint: Path, tmp_path: Path
) -> None:
    data_dir = tmp_path / "data"
    # the killed worker's task comes back after the visibility timeout: a short one for the test
    env = dict(
        os.environ,
        PYTHONPATH=str(REPO),
        CAVSYNC_BROKER_URL=broker,
        OMP_NUM_THREADS="1",
        CAVSYNC_VISIBILITY_TIMEOUT_S="5",
        CAVSYNC_TEST_WORKER_LOG=str(tmp_path / "worker.log"),
    )
    tasks.configure(broker)
    files = sorted(str(p) for p in media.glob("*.mp4"))
    job_id = tasks.start_job(files, str(checkpoint), str(data_dir), pg_url)
    first = _worker(env)
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline and _job(pg_url, job_id).done < 2:
        time.sleep(0.2)
    os.killpg(first.pid, signal.SIGKILL)
    first.wait(timeout=30)
    assert _job(pg_url, job_id).state == JobState.RUNNING
    time.sleep(6)  # past the visibility timeout: the new worker restores the dead one's task at start-up
    second = _worker(env)
    try:
        while time.monotonic() < deadline + 240 and _job(pg_url, job_id).state != JobState.DONE:
            time.sleep(0.3)
    finally:
        os.killpg(second.pid, signal.SIGKILL)
        second.wait(timeout=30)
    job = _job(pg_url, job_id)
    assert job.state == JobState.DONE and (job.done, job.failed) == (10, 1), (job.done, job.failed, job.errors)
    assert "broken.mp4" in next(iter(job.errors))
    videos, catalog_clips, store_clips = _indexed_once(pg_url, data_dir)
    assert videos == 10 and catalog_clips == store_clips and len(store_clips) == 10


@pytest.mark.integration
def test_embedded_mode_and_identical_results_on_sqlite_and_postgresql(
    pg_url: str, media: Path, checkpoint: Path, tmp_path: Path
) -> None:
    tasks.configure(None)  # no broker: the tasks run in this process
    files = sorted(str(p) for p in media.glob("*.mp4") if p.name != "broken.mp4")
    results = []
    for url, folder in ((f"sqlite:///{tmp_path / 'c.db'}", tmp_path / "lite"), (pg_url, tmp_path / "pg")):
        job_id = tasks.start_job(files, str(checkpoint), str(folder), url)
        assert _job(url, job_id).state == JobState.DONE
        version = TokenStore(folder / "index").open()
        query = version.gather("audio", version.rows_of([4]))[0]
        with _session(url) as session:
            hits = search(version, query, target="visual", k=5)
            results.append([(Path(session.get(Clip, h.clip_id).video.uri).name, round(h.score, 5)) for h in hits])
    assert results[0] == results[1]


_HOLDER = """
import sys, time
from indexer.locks import renewed_lock
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
    from indexer.locks import renewed_lock

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
