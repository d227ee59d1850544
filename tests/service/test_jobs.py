"""The API's job supervisor (indexer.jobs.supervisor, through service.jobs):
 a broker that takes no task answers 503 with the job failed and the
uploads no task was sent for deleted; the in-process runner settles every file; closing it stops its jobs
and says so; a job says how it ended (failed, done, done but partial) and names uploads as they were sent.
(The Celery side, with a real broker, is tests/cavsync/test_worker.py.)"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from kombu.exceptions import OperationalError as BrokerError
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from indexer.catalog.tables import IndexJob, open_catalog
from indexer.jobs import supervisor as tasks
from indexer.jobs.broker import RedisBroker, TaskMessage
from indexer.jobs.context import Resources, TaskContext
from indexer.jobs.records import STOPPED
from indexer.jobs.supervisor import Supervisor
from indexer.store.datadir import DataDir
from service.config import ServiceConfig
from service.errors import Unavailable
from service.jobs import job_info, submit
from tests.indexing import start_job

from .conftest import Corpus


@pytest.fixture(scope="module")
def clips(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    from training.synth import generate

    return sorted(generate(tmp_path_factory.mktemp("media"), 2, seed=5).glob("*.mp4"))


def _only_job(sessions: sessionmaker[Session]) -> IndexJob:
    with sessions() as session:
        (job,) = session.scalars(select(IndexJob)).all()
        return job


def refusing_send(job_id: str, path: str, message: TaskMessage) -> None:
    """A publisher whose broker is down: what kombu raises when the connection is refused."""
    raise BrokerError("Error 111 connecting to 127.0.0.1:1. Connection refused.")


refusing_broker = RedisBroker("redis://127.0.0.1:1/0", refusing_send, timeout_s=1.0)


def JobRunner(config: ServiceConfig, sessions: sessionmaker[Session], broker: RedisBroker | None = None) -> Supervisor:  # noqa: N802 - the old name of what the API builds
    return Supervisor(config.jobs, sessions, broker)


@pytest.fixture()
def config(checkpoint: Path, tmp_path: Path) -> ServiceConfig:
    return ServiceConfig(model_path=checkpoint, data=DataDir(tmp_path / "data"), retry_after_s=7)


@pytest.fixture()
def sessions(config: ServiceConfig) -> Iterator[sessionmaker[Session]]:
    yield open_catalog(config.catalog_url)


@pytest.mark.timeout(120)
def test_the_api_answers_503_when_the_broker_takes_no_task(
    config: ServiceConfig, sessions: sessionmaker[Session], tmp_path: Path
) -> None:
    runner = JobRunner(config, sessions, broker=refusing_broker)
    with pytest.raises(Unavailable) as raised:
        submit(runner, [tmp_path / "a.mp4"], retry_after_s=config.retry_after_s)
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
    runner = JobRunner(config, sessions, broker=refusing_broker)
    with pytest.raises(Unavailable):
        submit(runner, kept[:2], uploaded=True)
    with pytest.raises(Unavailable):
        submit(runner, kept[2:])  # the user's own files are never deleted
    assert [path.exists() for path in kept] == [False, False, True]


@pytest.mark.timeout(300)
def test_the_api_in_process_runner(
    config: ServiceConfig, sessions: sessionmaker[Session], checkpoint: Path, clips: list[Path], tmp_path: Path
) -> None:
    ctx = TaskContext(str(checkpoint), DataDir(config.data_dir.resolve(), config.catalog_url))
    start_job([str(clips[0])], ctx, Resources())
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
    the files not indexed (all of them here) fail with records.STOPPED and both jobs end failed, none left running."""
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
        assert set(info.errors.values()) == {STOPPED}


def _final(client: TestClient, job_id: str) -> dict:
    deadline = time.monotonic() + 180
    while (info := client.get(f"/jobs/{job_id}").json())["state"] in ("queued", "running"):
        assert time.monotonic() < deadline, info
        time.sleep(0.2)
    return info


@pytest.mark.timeout(300)
def test_jobs_say_how_they_ended_and_name_uploads_as_sent(writable_client: TestClient, corpus: Corpus) -> None:
    """Every file failed: `failed`; some failed: `done` and partial; uploads named as sent, paths by path."""
    broken = b"this is not a video" * 64
    sent = [("files", ("holiday/mine_a.mp4", broken, "video/mp4")), ("files", ("mine b.mov", broken, "video/mp4"))]
    accepted = writable_client.post("/index", files=sent)
    assert accepted.status_code == 202, accepted.text
    info = _final(writable_client, accepted.json()["job_id"])
    assert (info["state"], info["partial"], info["failed"], info["total"]) == ("failed", False, 2, 2), info
    assert sorted(f["name"] for f in info["files"]) == ["mine b.mov", "mine_a.mp4"]
    for file in info["files"]:
        assert file["uploaded"]
        assert file["path"] is None  # where the server kept it is never shown (issue 28)
        assert file["error"].startswith(f"{file['name']}: "), file  # never the server's name for it
        assert "uploads" not in file["error"]
    assert [f["name"] for f in info["failures"]] == [f["name"] for f in info["files"]]

    good = corpus.clips[3].read_bytes()
    mixed = [("files", ("good.mp4", good, "video/mp4")), ("files", ("bad.mp4", broken, "video/mp4"))]
    info = _final(writable_client, writable_client.post("/index", files=mixed).json()["job_id"])
    assert (info["state"], info["partial"], info["skipped"], info["failed"]) == ("done", True, 1, 1), info
    assert {f["name"]: f["state"] for f in info["files"]} == {"good.mp4": "skipped", "bad.mp4": "failed"}
    [listed] = [j for j in writable_client.get("/jobs").json()["items"] if j["id"] == info["id"]]
    assert listed["partial"] and [(f["name"], f["state"]) for f in listed["failures"]] == [("bad.mp4", "failed")]
    assert listed["failures"][0]["error"].startswith("bad.mp4: ")

    by_path = writable_client.post("/index", json={"paths": [str(corpus.clips[4])]})
    info = _final(writable_client, by_path.json()["job_id"])
    assert (info["state"], info["partial"], info["failures"]) == ("done", False, []), info
    assert [(f["name"], f["uploaded"]) for f in info["files"]] == [(str(corpus.clips[4]), False)]
