"""Index jobs as the catalog records them: a job and its files, each file's state, the job's counters.

A job is created queued (`create_job`), marked running when dispatched (`mark_running`), and each file is
settled (indexed, skipped, or failed with its error) by the task that ran it (`settle_file`, `fail_file`), which
recounts the job: once its last file is settled the job is `done`, or `failed` when every one of its files failed
(`JobState`). A job that cannot run (the broker took no task, the process stopped) fails with its unsent files
(`fail_files`, `fail_unstarted`). A file sent as an upload keeps the name it was sent with (`JobFile.name`).

The leases that make every job end are `indexer.jobs.leases`; the API's read views of jobs `indexer.jobs.views`.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Sequence

from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker

from indexer.catalog.content import indexed_videos_of
from indexer.catalog.tables import FINAL_JOB_STATES, SETTLED, FileState, IndexJob, JobFile, JobState, Video, VideoStatus

Sessions = sessionmaker[Session]  # the catalog's session factory, as the API holds it
Outcome = tuple[FileState, str | None]  # a file's state and error

STOPPED = "not indexed: the server stopped first; index it again (indexed files are skipped)"
DISK_FULL = "waiting: the server's disk is full ({error}); the job goes on once space is freed"
BROKER_LOST = "the broker lost its queue (restarted empty): {n} file(s) sent again"


class QueueUnavailable(RuntimeError):
    """The broker did not take a job's tasks; the job has been marked failed. `unsent`: the files not queued."""

    def __init__(self, message: str, unsent: Sequence[str] = ()) -> None:
        super().__init__(message)
        self.unsent = list(unsent)


def create_job(
    sessions: sessionmaker[Session],
    paths: Sequence[str | os.PathLike[str]],
    names: Sequence[str | None] | None = None,
) -> str:
    """Record a queued job with its files; returns its id. `names[i]`: the name `paths[i]` was sent with (an
    upload), None for a file given by its path; a path given twice is one file (the first name kept)."""
    given = names if names is not None else [None] * len(paths)
    if len(given) != len(paths):
        raise ValueError(f"{len(paths)} paths but {len(given)} names")
    files: dict[str, str | None] = {}
    for path, name in zip(paths, given, strict=True):
        files.setdefault(str(path), name)
    job_id = str(uuid.uuid4())
    with sessions() as session:
        session.add(IndexJob(id=job_id, total=len(files), state=JobState.QUEUED))
        session.add_all(JobFile(job_id=job_id, path=f, name=name) for f, name in files.items())
        session.commit()
    return job_id


def set_file_state(session: Session, job_id: str, path: str, state: FileState, error: str | None = None) -> None:
    """A file's outcome; a settled file changes only to indexed (a redelivered task never undoes a result)."""
    row = session.get(JobFile, (job_id, path)) or JobFile(job_id=job_id, path=path)
    if row.state in SETTLED and state != FileState.INDEXED:
        return
    row.state, row.error = state, error
    session.merge(row)


def recount(session: Session, job: IndexJob) -> None:
    """A job's counters from its files' states; a running job with every file settled is final: failed when
    every file failed, else done."""
    rows = session.execute(
        select(JobFile.state, func.count()).where(JobFile.job_id == job.id).group_by(JobFile.state)
    ).all()
    counts: dict[str, int] = {state: count for state, count in rows}
    job.done = counts.get(FileState.INDEXED, 0)
    job.skipped = counts.get(FileState.SKIPPED, 0)
    job.failed = counts.get(FileState.FAILED, 0)
    failed = select(JobFile.path, JobFile.error).where(JobFile.job_id == job.id, JobFile.state == FileState.FAILED)
    job.errors = {p: e or "" for p, e in session.execute(failed).all()}
    if job.state == JobState.RUNNING and job.done + job.skipped + job.failed >= job.total:
        job.state = JobState.FAILED if 0 < job.total == job.failed else JobState.DONE


def settle(session: Session, job_id: str | None, path: str, state: FileState | None, error: str | None = None) -> None:
    """Set a file's state (None: leave it) and recount its job, under the job row's lock (concurrent tasks of a
    job serialise here, on PostgreSQL; SQLite has one writer anyway). The caller commits."""
    job = session.get(IndexJob, job_id, with_for_update=True) if job_id else None
    if job is None:
        return
    if state is not None:
        set_file_state(session, job.id, path, state, error)
    recount(session, job)


def indexed(session: Session, sha: str, model_id: str) -> bool:
    """Whether this content is indexed with this model."""
    return session.scalars(indexed_videos_of(sha, model_id)).first() is not None


def outcome(session: Session, sha: str, model_id: str) -> Outcome | None:
    """What the catalog holds for this content: (SKIPPED, None) when indexed, (FAILED, error), or None."""
    if indexed(session, sha, model_id):
        return FileState.SKIPPED, None
    query = select(Video.error).where(
        Video.sha256 == sha, Video.model_id == model_id, Video.status == VideoStatus.FAILED
    )
    error = session.scalars(query).first()
    return None if error is None else (FileState.FAILED, error)


def settle_file(
    sessions: Sessions, job_id: str | None, path: str, sha: str, model_id: str, merged: Outcome | None = None
) -> None:
    """After the merge: the file takes its own encoding's outcome (`merged`), or when that encoding was not
    merged here (its content was indexed, or failed, from another path or job) the catalog's outcome for its
    content; then the job is recounted. Nothing without a job."""
    if job_id is None:
        return
    with sessions() as session:
        found = merged or outcome(session, sha, model_id)  # never overrides a settled file
        state, error = found or (None, None)
        settle(session, job_id, path, state, error)
        session.commit()


def fail_file(sessions: Sessions, job_id: str | None, path: str, exc: BaseException) -> None:
    """Record a file's failure (the exception as text) in its job, and recount the job. Nothing without a job."""
    if job_id is None:
        return
    with sessions() as session:
        settle(session, job_id, path, FileState.FAILED, f"{type(exc).__name__}: {exc}")
        session.commit()


def mark_running(sessions: sessionmaker[Session], job_id: str) -> list[str]:
    """Mark a job running; returns its files still queued (an empty job is done at once)."""
    with sessions() as session:
        job = session.get(IndexJob, job_id, with_for_update=True)
        if job is None:
            raise LookupError(f"no index job {job_id}")
        if job.state in FINAL_JOB_STATES:  # stopped (or finished) before it was dispatched
            return []
        job.state = JobState.RUNNING
        query = select(JobFile.path).where(JobFile.job_id == job_id, JobFile.state == FileState.QUEUED)
        paths = list(session.scalars(query.order_by(JobFile.path)).all())
        recount(session, job)
        session.commit()
    return paths


def fail_files(sessions: sessionmaker[Session], job_id: str, paths: Sequence[str], message: str) -> None:
    """A job that could not be dispatched: its unsent files failed with the message, the job failed."""
    with sessions() as session:
        job = session.get(IndexJob, job_id, with_for_update=True)
        if job is None:
            return
        for path in paths:
            set_file_state(session, job_id, path, FileState.FAILED, message)
        job.state = JobState.FAILED
        recount(session, job)
        session.commit()


def fail_unstarted(sessions: sessionmaker[Session], job_id: str, message: str = STOPPED) -> None:
    """A job that will not run (its process stopping): its queued files failed with `message`, the job failed."""
    with sessions() as session:
        query = select(JobFile.path).where(JobFile.job_id == job_id, JobFile.state == FileState.QUEUED)
        paths = list(session.scalars(query).all())
    fail_files(sessions, job_id, paths, message)
