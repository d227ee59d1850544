"""Index jobs as the catalog records them: every file settled (indexed, skipped, or failed with its error)
and the job done whatever its last file's outcome; transient errors retried; a broker that is down or
silent fails the job at once, with a typed error (503 from the API), instead of leaving it running."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import select

from indexer import tasks
from indexer.catalog import IndexJob, JobFile, JobState
from service.errors import Unavailable
from service.jobs import JobRunner, job_info
from service.settings import Settings

CLOSED_BROKER = "redis://127.0.0.1:1/0"


@pytest.fixture()
def in_process() -> Iterator[None]:
    tasks.configure(None)
    yield
    tasks.configure(None)


@pytest.fixture(scope="module")
def clips(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    from training.synth import generate

    return sorted(generate(tmp_path_factory.mktemp("media"), 2, seed=5).glob("*.mp4"))


def _job(url: str, job_id: str) -> tuple[IndexJob, dict[str, tuple[str, str | None]]]:
    with tasks._sessions(url)() as session:
        files = session.scalars(select(JobFile).where(JobFile.job_id == job_id)).all()
        return session.get(IndexJob, job_id), {f.path: (f.state, f.error) for f in files}


def _only_job(url: str) -> IndexJob:
    with tasks._sessions(url)() as session:
        (job,) = session.scalars(select(IndexJob)).all()
        return job


def _counts(job: IndexJob) -> tuple[str, int, int, int]:
    return job.state, job.done, job.skipped, job.failed


@pytest.mark.timeout(300)
def test_in_process_job_settles_every_file(
    in_process: None, catalog_url: str, checkpoint: Path, clips: list[Path], tmp_path: Path
) -> None:
    good, known = map(str, clips)
    gone = tmp_path / "zz_gone.mp4"  # sorts last: the job's last file is the failure
    gone.write_bytes(clips[0].read_bytes())
    args = (str(checkpoint), str(tmp_path / "data"), catalog_url)
    first = tasks.start_job([known], *args)
    assert _counts(_job(catalog_url, first)[0]) == (JobState.DONE, 1, 0, 0)

    job_id = tasks.create_job(catalog_url, [good, known, str(gone)])
    assert _job(catalog_url, job_id)[0].state == JobState.QUEUED
    gone.unlink()
    tasks.dispatch_job(job_id, *args)
    job, files = _job(catalog_url, job_id)
    assert _counts(job) == (JobState.DONE, 1, 1, 1) and job.total == 3
    assert files[good] == ("indexed", None) and files[known] == ("skipped", None)
    assert files[str(gone)][0] == "failed" and files[str(gone)][1].startswith("FileNotFoundError: ")
    assert job.errors == {str(gone): files[str(gone)][1]}
    info = job_info(tasks._sessions(catalog_url), job_id)  # the API reads the same
    assert (info.state, info.done, info.skipped, info.failed, info.errors) == ("done", 1, 1, 1, job.errors)

    last_skipped = tasks.start_job([good, known], *args)  # no merge at all: every file known
    assert _counts(_job(catalog_url, last_skipped)[0]) == (JobState.DONE, 0, 2, 0)
    assert _counts(_job(catalog_url, tasks.start_job([], *args))[0]) == (JobState.DONE, 0, 0, 0)


@pytest.mark.timeout(300)
def test_transient_errors_are_retried_then_recorded(
    in_process: None, checkpoint: Path, clips: list[Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    url = f"sqlite:///{tmp_path / 'catalog.db'}"
    args = (str(checkpoint), str(tmp_path / "data"), url)
    real, calls = tasks.encode_to_shard, []

    def flaky(ctx: tasks.Context, path: str) -> str:
        calls.append(path)
        if len(calls) == 1:
            raise TimeoutError("the catalog did not answer")
        return real(ctx, path)

    monkeypatch.setattr(tasks, "RETRY_BACKOFF_MAX_S", 0)  # no waiting between the retries
    monkeypatch.setattr(tasks, "encode_to_shard", flaky)
    job, files = _job(url, tasks.start_job([str(clips[0])], *args))
    assert len(calls) == 2 and _counts(job) == (JobState.DONE, 1, 0, 0)

    def down(ctx: tasks.Context, path: str) -> str:
        calls.append(path)
        raise ConnectionError("refused")

    monkeypatch.setattr(tasks, "encode_to_shard", down)
    calls.clear()
    job, files = _job(url, tasks.start_job([str(clips[1])], *args))
    assert len(calls) == tasks.MAX_RETRIES + 1
    assert _counts(job) == (JobState.DONE, 0, 0, 1) and files[str(clips[1])] == ("failed", "ConnectionError: refused")


@pytest.fixture()
def silent_broker() -> Iterator[str]:
    """A port that accepts connections and never answers (a broker gone without closing them)."""
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen(64)
        yield f"redis://127.0.0.1:{server.getsockname()[1]}/0"


@pytest.mark.parametrize("broker", ["closed", "silent"])
@pytest.mark.timeout(120)
def test_broker_down_fails_the_job(broker: str, silent_broker: str, checkpoint: Path, tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'catalog.db'}"
    paths = [str(tmp_path / "a.mp4"), str(tmp_path / "b.mp4")]
    tasks.configure(CLOSED_BROKER if broker == "closed" else silent_broker)
    try:
        start = time.monotonic()
        with pytest.raises(tasks.QueueUnavailable, match="did not take the tasks"):
            tasks.start_job(paths, str(checkpoint), str(tmp_path / "data"), url)
        elapsed = time.monotonic() - start
    finally:
        tasks.configure(None)
    assert elapsed < 4 * tasks.BROKER_TIMEOUT_S, elapsed
    job = _only_job(url)
    assert _counts(job) == (JobState.FAILED, 0, 0, 2) and set(job.errors) == set(paths)
    assert all(message.startswith("not queued: OperationalError") for message in job.errors.values()), job.errors


@pytest.mark.timeout(120)
def test_the_api_answers_503_when_the_broker_is_down(checkpoint: Path, tmp_path: Path) -> None:
    settings = Settings(model_path=checkpoint, data_dir=tmp_path / "data", broker_url=CLOSED_BROKER, retry_after_s=7)
    sessions = tasks._sessions(settings.catalog_url)
    runner = JobRunner(settings, sessions)
    try:
        with pytest.raises(Unavailable) as raised:
            runner.submit([tmp_path / "a.mp4"])
    finally:
        runner.close()
        tasks.configure(None)
    assert raised.value.status_code == 503 and raised.value.headers == {"Retry-After": "7"}
    assert "unreachable" in raised.value.detail
    info = job_info(sessions, _only_job(settings.catalog_url).id)
    assert (info.state, info.failed, info.files[0].state) == ("failed", 1, "failed")


@pytest.mark.timeout(120)
def test_uploads_no_task_was_sent_for_are_deleted(checkpoint: Path, tmp_path: Path) -> None:
    settings = Settings(model_path=checkpoint, data_dir=tmp_path / "data", broker_url=CLOSED_BROKER)
    kept = [tmp_path / "upload-a.mp4", tmp_path / "upload-b.mp4", tmp_path / "media.mp4"]
    for path in kept:
        path.write_bytes(b"media bytes")
    runner = JobRunner(settings, tasks._sessions(settings.catalog_url))
    try:
        with pytest.raises(Unavailable):
            runner.submit(kept[:2], uploaded=True)
        with pytest.raises(Unavailable):
            runner.submit(kept[2:])  # the user's own files are never deleted
    finally:
        runner.close()
        tasks.configure(None)
    assert [path.exists() for path in kept] == [False, False, True]


@pytest.mark.timeout(300)
def test_the_api_in_process_runner(in_process: None, checkpoint: Path, clips: list[Path], tmp_path: Path) -> None:
    settings = Settings(model_path=checkpoint, data_dir=tmp_path / "data")
    sessions = tasks._sessions(settings.catalog_url)
    tasks.start_job([str(clips[0])], str(checkpoint), str(settings.data_dir.resolve()), settings.catalog_url)
    runner = JobRunner(settings, sessions)
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
    in_process: None, checkpoint: Path, clips: list[Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Shutting the API down: the running job stops before its next file, a job still waiting never starts;
    the files not indexed (all of them here) fail with tasks.STOPPED and both jobs end failed, none left running."""
    settings = Settings(model_path=checkpoint, data_dir=tmp_path / "data")
    sessions = tasks._sessions(settings.catalog_url)
    started, release, real = threading.Event(), threading.Event(), tasks.dispatch_job

    def held(*args: object, **kwargs: object) -> None:  # the first job waits until the runner is closed
        started.set()
        release.wait(30)
        real(*args, **kwargs)

    monkeypatch.setattr(tasks, "dispatch_job", held)
    runner = JobRunner(settings, sessions)
    running = runner.submit([clips[0], clips[1]])
    assert started.wait(30)
    waiting = runner.submit([clips[1]])
    runner.close()
    release.set()
    runner._pool.shutdown(wait=True)  # type: ignore[union-attr]
    for job_id, total in ((running, 2), (waiting, 1)):
        info = job_info(sessions, job_id)
        assert (info.state, info.failed, info.done) == ("failed", total, 0), info
        assert set(info.errors.values()) == {tasks.STOPPED}
