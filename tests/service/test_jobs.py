"""The API's job runner (service.jobs): a broker that takes no task answers 503 with the job failed and the
uploads no task was sent for deleted; the in-process runner settles every file; closing it stops its jobs
and says so. (The Celery side, with a real broker, is tests/cavsync/test_worker.py.)"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from kombu.exceptions import OperationalError as BrokerError
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from indexer import jobs, tasks
from indexer.catalog import IndexJob, open_catalog
from indexer.tasks import Resources, TaskContext
from service.config import ServiceConfig
from service.errors import Unavailable
from service.jobs import JobRunner, job_info


@pytest.fixture(scope="module")
def clips(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    from training.synth import generate

    return sorted(generate(tmp_path_factory.mktemp("media"), 2, seed=5).glob("*.mp4"))


def _only_job(sessions: sessionmaker[Session]) -> IndexJob:
    with sessions() as session:
        (job,) = session.scalars(select(IndexJob)).all()
        return job


def refusing_broker(job_id: str, path: str, ctx: TaskContext) -> None:
    """A publisher whose broker is down: what kombu raises when the connection is refused."""
    raise BrokerError("Error 111 connecting to 127.0.0.1:1. Connection refused.")


@pytest.fixture()
def config(checkpoint: Path, tmp_path: Path) -> ServiceConfig:
    return ServiceConfig(model_path=checkpoint, data_dir=tmp_path / "data", retry_after_s=7)


@pytest.fixture()
def sessions(config: ServiceConfig) -> Iterator[sessionmaker[Session]]:
    yield open_catalog(config.catalog_url)


@pytest.mark.timeout(120)
def test_the_api_answers_503_when_the_broker_takes_no_task(
    config: ServiceConfig, sessions: sessionmaker[Session], tmp_path: Path
) -> None:
    runner = JobRunner(config, sessions, publish=refusing_broker)
    with pytest.raises(Unavailable) as raised:
        runner.submit([tmp_path / "a.mp4"])
    assert raised.value.status_code == 503 and raised.value.headers == {"Retry-After": "7"}
    assert "unreachable" in raised.value.detail
    info = job_info(sessions, _only_job(sessions).id)
    assert (info.state, info.failed, info.files[0].state) == ("failed", 1, "failed")
    assert info.files[0].error is not None and info.files[0].error.startswith("not queued: OperationalError")


@pytest.mark.timeout(120)
def test_uploads_no_task_was_sent_for_are_deleted(
    config: ServiceConfig, sessions: sessionmaker[Session], tmp_path: Path
) -> None:
    kept = [tmp_path / "upload-a.mp4", tmp_path / "upload-b.mp4", tmp_path / "media.mp4"]
    for path in kept:
        path.write_bytes(b"media bytes")
    runner = JobRunner(config, sessions, publish=refusing_broker)
    with pytest.raises(Unavailable):
        runner.submit(kept[:2], uploaded=True)
    with pytest.raises(Unavailable):
        runner.submit(kept[2:])  # the user's own files are never deleted
    assert [path.exists() for path in kept] == [False, False, True]


@pytest.mark.timeout(300)
def test_the_api_in_process_runner(
    config: ServiceConfig, sessions: sessionmaker[Session], checkpoint: Path, clips: list[Path], tmp_path: Path
) -> None:
    ctx = TaskContext(str(checkpoint), str(config.data_dir.resolve()), config.catalog_url)
    tasks.start_job([str(clips[0])], ctx, Resources())
    runner = JobRunner(config, sessions)
    try:
        job_id = runner.submit([clips[0], tmp_path / "missing.mp4"])
        deadline = time.monotonic() + 120
        while (info := job_info(sessions, job_id)).state in ("queued", "running") and time.monotonic() < deadline:
            time.sleep(0.1)
    finally:
        runner.close()
    assert (info.state, info.total, info.done, info.skipped, info.failed) == ("done", 2, 0, 1, 1), info
    assert info.errors[str(tmp_path / "missing.mp4")].startswith("FileNotFoundError: ")


@pytest.mark.timeout(120)
def test_closing_the_runner_stops_its_jobs_and_says_so(
    config: ServiceConfig,
    sessions: sessionmaker[Session],
    clips: list[Path],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Shutting the API down: the running job stops before its next file, a job still waiting never starts;
    the files not indexed (all of them here) fail with jobs.STOPPED and both jobs end failed, none left running."""
    started, release, real = threading.Event(), threading.Event(), tasks.dispatch_job

    def held(*args: object, **kwargs: object) -> None:  # the first job waits until the runner is closed
        started.set()
        release.wait(30)
        real(*args, **kwargs)  # type: ignore[arg-type]  # the runner's own arguments, passed through

    monkeypatch.setattr(tasks, "dispatch_job", held)
    runner = JobRunner(config, sessions)
    running = runner.submit([clips[0], clips[1]])
    assert started.wait(30)
    waiting = runner.submit([clips[1]])
    runner.close()
    release.set()
    assert runner._pool is not None
    runner._pool.shutdown(wait=True)
    for job_id, total in ((running, 2), (waiting, 1)):
        info = job_info(sessions, job_id)
        assert (info.state, info.failed, info.done) == ("failed", total, 0), info
        assert set(info.errors.values()) == {jobs.STOPPED}
