"""The Celery app of `cavsync.worker` against the real Redis and PostgreSQL: a worker killed mid-job, a new
one finishes it, every video indexed exactly once; a broker that is down or silent fails the job within the
broker timeout, with a typed error (503 from the API), instead of leaving it running."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import redis
from fastapi.testclient import TestClient
from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker

from cavsync.app import build_app
from cavsync.settings import Settings
from cavsync.worker import make_app, publisher
from indexer.catalog.tables import Clip, IndexJob, JobState, Video, VideoStatus, open_catalog
from indexer.jobs import supervisor as tasks
from indexer.jobs.context import Resources, TaskContext
from indexer.store.datadir import DataDir
from indexer.store.token_store import TokenStore
from tests.indexing import start_job

from ..conftest import redis_db

REPO = Path(__file__).resolve().parents[2]
BROKER = os.environ.get("CAVSYNC_TEST_WORKER_REDIS", "redis://127.0.0.1:6379/11")
CLOSED_BROKER = "redis://127.0.0.1:1/0"


@pytest.fixture()
def broker() -> Iterator[str]:
    yield from redis_db(BROKER)


def _worker(env: dict[str, str]) -> subprocess.Popen[bytes]:
    cmd = [sys.executable, "-m", "celery", "-A", "cavsync.worker", "worker", "--concurrency", "1"]
    cmd += ["--pool", "prefork", "--loglevel", "info", "--without-gossip", "--without-mingle", "--without-heartbeat"]
    log = open(env.get("CAVSYNC_TEST_WORKER_LOG", os.devnull), "a")  # noqa: SIM115
    return subprocess.Popen(cmd, cwd=REPO, env=env, stdout=log, stderr=log, start_new_session=True)


def wait_for(condition: Callable[[], bool], timeout_s: float, what: str, every_s: float = 0.2) -> None:
    """Poll `condition` until it holds; fail naming `what` past the deadline."""
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout_s:.0f} s waiting for {what}")
        time.sleep(every_s)


def _job(sessions: sessionmaker[Session], job_id: str) -> IndexJob:
    with sessions() as session:
        job = session.get(IndexJob, job_id)
        assert job is not None
        return job


def _indexed_once(sessions: sessionmaker[Session], data_dir: Path) -> tuple[int, list[int], list[int]]:
    with sessions() as session:
        per_sha = session.execute(
            select(Video.sha256, func.count()).where(Video.status == VideoStatus.INDEXED).group_by(Video.sha256)
        ).all()
        assert all(count == 1 for _, count in per_sha), per_sha
        clips = sorted(session.scalars(select(Clip.id)).all())
    version = TokenStore(data_dir / "index").open()
    assert version is not None
    return len(per_sha), clips, sorted(version.clip_ids[version.live].tolist())


def _oldest_delivery_older_than(broker: str, seconds: float) -> bool:
    """Whether the oldest unacknowledged delivery (kombu's `unacked_index`) is older than `seconds`: the
    broker then hands it to the next worker that asks."""
    oldest = redis.Redis.from_url(broker).zrange("unacked_index", 0, 0, withscores=True)
    return bool(oldest) and time.time() - oldest[0][1] > seconds


@pytest.mark.integration
@pytest.mark.slow
@pytest.mark.timeout(600)
def test_worker_killed_mid_job_then_replaced(
    broker: str, pg_url: str, media: Path, checkpoint: Path, tmp_path: Path
) -> None:
    data_dir, visibility_s, queue = tmp_path / "data", 5, f"cavsync-test-{uuid.uuid4().hex[:8]}"
    # the killed worker's task comes back after the visibility timeout: a short one for the test
    env = dict(
        os.environ,
        PYTHONPATH=str(REPO),
        CAVSYNC_BROKER_URL=broker,
        OMP_NUM_THREADS="1",
        CAVSYNC_VISIBILITY_TIMEOUT_S=str(visibility_s),
        CAVSYNC_LEASE_S="6",  # the redelivered task claims the file once the dead worker's lease expired
        CAVSYNC_RECONCILE_INTERVAL_S="2",
        CAVSYNC_QUEUE=queue,  # a queue of this test's own: nothing else on the broker reaches its workers
        CAVSYNC_TEST_WORKER_LOG=str(tmp_path / "worker.log"),
    )
    publish = publisher(make_app(Settings(broker_url=broker, queue=queue)))
    sessions = open_catalog(pg_url)
    files = sorted(str(p) for p in media.glob("*.mp4"))
    job_id = start_job(files, TaskContext(str(checkpoint), DataDir(data_dir, pg_url)), Resources(), publish=publish)
    first = _worker(env)
    wait_for(lambda: _job(sessions, job_id).done >= 2, 240, "the first worker to index two files")
    os.killpg(first.pid, signal.SIGKILL)
    first.wait(timeout=30)
    assert _job(sessions, job_id).state == JobState.RUNNING
    # past the visibility timeout, the dead worker's task is handed to the new worker
    wait_for(lambda: _oldest_delivery_older_than(broker, visibility_s), 60, "the dead worker's task to expire")
    second = _worker(env)
    try:
        wait_for(lambda: _job(sessions, job_id).state == JobState.DONE, 300, "the second worker to finish the job")
    finally:
        os.killpg(second.pid, signal.SIGKILL)
        second.wait(timeout=30)
    job = _job(sessions, job_id)
    assert job.state == JobState.DONE and (job.done, job.failed) == (10, 1), (job.done, job.failed, job.errors)
    assert "broken.mp4" in next(iter(job.errors))
    videos, catalog_clips, store_clips = _indexed_once(sessions, data_dir)
    assert videos == 10 and catalog_clips == store_clips and len(store_clips) == 10


@pytest.fixture()
def silent_broker() -> Iterator[str]:
    """A port that accepts connections and never answers (a broker gone without closing them)."""
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen(64)
        yield f"redis://127.0.0.1:{server.getsockname()[1]}/0"


@pytest.mark.parametrize("kind", ["closed", "silent"])
@pytest.mark.timeout(120)
def test_broker_down_fails_the_job(kind: str, silent_broker: str, checkpoint: Path, tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'catalog.db'}"
    paths = [str(tmp_path / "a.mp4"), str(tmp_path / "b.mp4")]
    settings = Settings(broker_url=CLOSED_BROKER if kind == "closed" else silent_broker)
    publish, res = publisher(make_app(settings)), Resources()
    start = time.monotonic()
    with pytest.raises(tasks.QueueUnavailable, match="did not take the tasks"):
        start_job(paths, TaskContext(str(checkpoint), DataDir(tmp_path / "data", url)), res, publish=publish)
    elapsed = time.monotonic() - start
    assert elapsed < 4 * settings.broker_timeout_s, elapsed
    with res.sessions(url)() as session:
        (job,) = session.scalars(select(IndexJob)).all()
    assert (job.state, job.failed) == (JobState.FAILED, 2) and set(job.errors) == set(paths)
    assert all(message.startswith("not queued: OperationalError") for message in job.errors.values()), job.errors


@pytest.mark.timeout(120)
def test_the_api_over_a_closed_broker_answers_503(checkpoint: Path, tmp_path: Path) -> None:
    media = tmp_path / "media"
    media.mkdir()
    (media / "a.mp4").write_bytes(b"media bytes")
    settings = Settings(
        model_path=checkpoint, data_dir=tmp_path / "data", broker_url=CLOSED_BROKER, media_roots=[media]
    )
    with TestClient(build_app(settings)) as client:
        answer = client.post("/index", json={"paths": [str(media)]})
        assert answer.status_code == 503 and answer.headers["retry-after"] == "1", answer.text
        assert client.get("/health").json()["queue"] == "unreachable"
