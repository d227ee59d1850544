"""Index jobs as the catalog records them (indexer.jobs: records, the supervisor's dispatch and the task, run in
process): every file settled (indexed, skipped, or failed with its error), the job done whatever its last file's
outcome, failed when every file failed; uploads keep the name they were sent with; transient errors retried, then
recorded; a publisher that fails marks the job failed with a typed error."""

from __future__ import annotations

from pathlib import Path

import pytest
from kombu.exceptions import OperationalError as BrokerError
from sqlalchemy import select

from indexer.catalog.tables import FileState, IndexJob, JobFile, JobState
from indexer.jobs import supervisor as tasks
from indexer.jobs import task
from indexer.jobs.broker import TaskMessage
from indexer.jobs.context import Resources, TaskContext, TaskRun
from indexer.jobs.records import create_job
from indexer.store.datadir import DataDir
from tests.indexing import job_run, start_job


@pytest.fixture(scope="module")
def clips(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    from training.synth import generate

    return sorted(generate(tmp_path_factory.mktemp("media"), 2, seed=5).glob("*.mp4"))


def _job(res: Resources, url: str, job_id: str) -> tuple[IndexJob, dict[str, tuple[str, str | None]]]:
    with res.sessions(url)() as session:
        files = session.scalars(select(JobFile).where(JobFile.job_id == job_id)).all()
        job = session.get(IndexJob, job_id)
        assert job is not None
        return job, {f.path: (f.state, f.error) for f in files}


def _counts(job: IndexJob) -> tuple[str, int, int, int]:
    return job.state, job.done, job.skipped, job.failed


@pytest.mark.timeout(300)
def test_in_process_job_settles_every_file(
    catalog_url: str, checkpoint: Path, clips: list[Path], tmp_path: Path
) -> None:
    good, known = map(str, clips)
    gone = tmp_path / "zz_gone.mp4"  # sorts last: the job's last file is the failure
    gone.write_bytes(clips[0].read_bytes())
    ctx, res = TaskContext(str(checkpoint), DataDir(tmp_path / "data", catalog_url)), Resources()
    first = start_job([known], ctx, res)
    assert _counts(_job(res, catalog_url, first)[0]) == (JobState.DONE, 1, 0, 0)

    job_id = create_job(res.sessions(catalog_url), [good, known, str(gone)])
    assert _job(res, catalog_url, job_id)[0].state == JobState.QUEUED
    gone.unlink()
    tasks.dispatch_job(job_run(ctx, res, job_id))
    job, files = _job(res, catalog_url, job_id)
    assert _counts(job) == (JobState.DONE, 1, 1, 1) and job.total == 3
    assert files[good] == (FileState.INDEXED, None) and files[known] == (FileState.SKIPPED, None)
    state, error = files[str(gone)]
    assert state == FileState.FAILED and error is not None and error.startswith("FileNotFoundError: ")
    assert job.errors == {str(gone): error}

    last_skipped = start_job([good, known], ctx, res)  # no merge at all: every file known
    assert _counts(_job(res, catalog_url, last_skipped)[0]) == (JobState.DONE, 0, 2, 0)
    assert _counts(_job(res, catalog_url, start_job([], ctx, res))[0]) == (JobState.DONE, 0, 0, 0)


@pytest.mark.timeout(300)
def test_transient_errors_are_retried_then_recorded(
    checkpoint: Path, clips: list[Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    url = f"sqlite:///{tmp_path / 'catalog.db'}"
    ctx, res = TaskContext(str(checkpoint), DataDir(tmp_path / "data", url)), Resources()
    real, calls = task.encode_file, []

    def flaky(run: TaskRun, path: str) -> str:
        calls.append(path)
        if len(calls) == 1:
            raise TimeoutError("the catalog did not answer")
        return real(run, path)

    monkeypatch.setattr(task, "RETRY_BACKOFF_MAX_S", 0)  # no waiting between the retries
    monkeypatch.setattr(task, "encode_file", flaky)
    job, files = _job(res, url, start_job([str(clips[0])], ctx, res))
    assert len(calls) == 2 and _counts(job) == (JobState.DONE, 1, 0, 0)

    def down(run: TaskRun, path: str) -> str:
        calls.append(path)
        raise ConnectionError("refused")

    monkeypatch.setattr(task, "encode_file", down)
    calls.clear()
    job, files = _job(res, url, start_job([str(clips[1])], ctx, res))
    assert len(calls) == tasks.MAX_RETRIES + 1
    assert _counts(job) == (JobState.FAILED, 0, 0, 1) and files[str(clips[1])] == ("failed", "ConnectionError: refused")


def test_a_publisher_that_fails_fails_the_job(checkpoint: Path, tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'catalog.db'}"
    ctx, res = TaskContext(str(checkpoint), DataDir(tmp_path / "data", url)), Resources()
    paths, sent = [str(tmp_path / "a.mp4"), str(tmp_path / "b.mp4"), str(tmp_path / "c.mp4")], []

    def first_then_down(job_id: str, path: str, message: TaskMessage) -> None:
        if sent:
            raise BrokerError("connection refused")
        sent.append(path)

    with pytest.raises(tasks.QueueUnavailable, match="did not take the tasks") as raised:
        start_job(paths, ctx, res, publish=first_then_down)
    assert raised.value.unsent == paths[1:] and sent == paths[:1]
    with res.sessions(url)() as session:
        (job,) = session.scalars(select(IndexJob)).all()
    assert _counts(job) == (JobState.FAILED, 0, 0, 2) and set(job.errors) == set(paths[1:])
    assert all(message == "not queued: OperationalError: connection refused" for message in job.errors.values())


def test_a_job_whose_every_file_failed_is_failed_and_uploads_keep_their_names(
    catalog_url: str, checkpoint: Path, tmp_path: Path
) -> None:
    url = catalog_url  # the migration adding the names runs on both databases
    ctx, res = TaskContext(str(checkpoint), DataDir(tmp_path / "data", url)), Resources()
    broken = [tmp_path / "uploads" / "817e490bbb18-mine_a.mp4", tmp_path / "uploads" / "0a1b2c3d4e5f-mine_b.mp4"]
    broken[0].parent.mkdir()
    for path in broken:
        path.write_bytes(b"not a video" * 100)
    names = ["mine a.mp4", "mine_b.mp4"]
    job_id = create_job(res.sessions(url), [*broken, broken[0]], [*names, "again.mp4"])  # a path twice: once
    tasks.dispatch_job(job_run(ctx, res, job_id))
    job, files = _job(res, url, job_id)
    assert _counts(job) == (JobState.FAILED, 0, 0, 2) and job.total == 2
    with res.sessions(url)() as session:
        rows = session.scalars(select(JobFile).where(JobFile.job_id == job_id).order_by(JobFile.path)).all()
        assert [(r.path, r.name) for r in rows] == [(str(broken[1]), names[1]), (str(broken[0]), names[0])]
    by_path = create_job(res.sessions(url), [str(tmp_path / "x.mp4")])
    with res.sessions(url)() as session:
        (row,) = session.scalars(select(JobFile).where(JobFile.job_id == by_path)).all()
        assert row.name is None
    with pytest.raises(ValueError, match="2 paths but 1 names"):
        create_job(res.sessions(url), ["a", "b"], ["a"])
