"""Index jobs as the catalog records them: a job and its files, each file's state, the job's counters.

A job is created queued (`create_job`), marked running when dispatched (`mark_running`), and each file is
settled (indexed, skipped, or failed with its error) by the task that ran it, which recounts the job: once its
last file is settled the job is `done`, or `failed` when every one of its files failed (`JobState`). A job that
cannot run (the broker took no task, the process stopped) fails with its unsent files (`fail_files`,
`fail_unstarted`). A file sent as an upload keeps the name it was sent with (`JobFile.name`).

Leases make every job reach a final state whatever dies (a worker, the API, the broker). A file not yet settled
carries `lease_until` (epoch seconds) and the `owner` working on it. Dispatching it (publishing its task, or
queueing it in process) gives it a queue lease; the task that starts on it claims it (`claim`: only a file still
queued whose lease is free or expired) and renews the lease while it works (`renewing`). A file whose lease expired
was lost with its worker, its API process or the broker's queue: the reconciler (`expired`, `take_for_redispatch`,
`give_up`; `unclaimed` after a broker lost its queue) sends it again (tasks are idempotent by content hash) up to
`LeaseConfig.max_dispatches` times, then fails it with a message that says what to do. Clocks of the machines are
assumed to agree to well within a lease.
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
import time
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import NamedTuple

from sqlalchemy import ColumnElement, func, or_, select, update
from sqlalchemy.orm import Session, sessionmaker

from indexer.catalog.tables import FINAL_JOB_STATES, SETTLED, FileState, IndexJob, JobFile, JobState, Video, VideoStatus

Sessions = sessionmaker[Session]  # the catalog's session factory, as the API holds it

STOPPED = "not indexed: the server stopped first; index it again (indexed files are skipped)"
DISK_FULL = "waiting: the server's disk is full ({error}); the job goes on once space is freed"
BROKER_LOST = "the broker lost its queue (restarted empty): {n} file(s) sent again"

log = logging.getLogger(__name__)


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
    query = select(Video.id).where(Video.sha256 == sha, Video.model_id == model_id, Video.status == VideoStatus.INDEXED)
    return session.scalars(query).first() is not None


def outcome(session: Session, sha: str, model_id: str) -> tuple[FileState, str | None] | None:
    """What the catalog holds for this content: (SKIPPED, None) when indexed, (FAILED, error), or None."""
    if indexed(session, sha, model_id):
        return FileState.SKIPPED, None
    query = select(Video.error).where(
        Video.sha256 == sha, Video.model_id == model_id, Video.status == VideoStatus.FAILED
    )
    error = session.scalars(query).first()
    return None if error is None else (FileState.FAILED, error)


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


class JobView(NamedTuple):
    """A job as read for its views (detached rows): the job, and its files (all, or only the failed ones)."""

    job: IndexJob
    files: list[JobFile]


def read_job(sessions: sessionmaker[Session], job_id: str) -> JobView | None:
    """A job with all its files in path order; None when there is no such job."""
    with sessions() as session:
        job = session.get(IndexJob, job_id)
        if job is None:
            return None
        rows = session.scalars(select(JobFile).where(JobFile.job_id == job_id).order_by(JobFile.path)).all()
        return JobView(job, list(rows))


def read_jobs(sessions: sessionmaker[Session], limit: int, offset: int) -> tuple[int, list[JobView]]:
    """How many jobs there are, and `limit` of them newest first from `offset`, each with its failed files."""
    with sessions() as session:
        total = session.scalar(select(func.count()).select_from(IndexJob)) or 0
        query = select(IndexJob).order_by(IndexJob.created_at.desc(), IndexJob.id).limit(limit).offset(offset)
        found = list(session.scalars(query).all())
        failed: dict[str, list[JobFile]] = {job.id: [] for job in found}
        failures = (
            select(JobFile)
            .where(JobFile.job_id.in_(list(failed)), JobFile.state == FileState.FAILED)
            .order_by(JobFile.job_id, JobFile.path)
        )
        for row in session.scalars(failures).all():
            failed[row.job_id].append(row)
    return total, [JobView(job, failed[job.id]) for job in found]


def indexed_videos(sessions: sessionmaker[Session], sha: str, model_id: str) -> list[Video]:
    """The indexed videos of this content with this model (detached rows)."""
    query = select(Video).where(Video.sha256 == sha, Video.model_id == model_id, Video.status == VideoStatus.INDEXED)
    with sessions() as session:
        return list(session.scalars(query).all())


LOST = (
    "not indexed: its task was lost {n} time(s) (a worker, the API or the broker stopped while it was queued "
    "or running); index it again (indexed files are skipped)"
)


@dataclass(frozen=True)
class LeaseConfig:
    """How long a worked-on file's lease lasts (renewed every third of it), how long a dispatched file may wait
    in the broker's queue before it counts as lost, and how many dispatches a file gets before it fails."""

    lease_s: float = 60.0
    queue_lease_s: float = 900.0
    max_dispatches: int = 3


def _free(now: float) -> ColumnElement[bool]:
    return or_(JobFile.owner.is_(None), JobFile.lease_until.is_(None), JobFile.lease_until < now)


def _file(job_id: str, path: str) -> tuple[ColumnElement[bool], ...]:
    return (JobFile.job_id == job_id, JobFile.path == path, JobFile.state == FileState.QUEUED)


def dispatched(session: Session, job_id: str, paths: Sequence[str], wait_s: float) -> None:
    """Files sent (again) to run: no owner, a queue lease of `wait_s`, one more dispatch. The caller commits."""
    if not paths:
        return
    session.execute(
        update(JobFile)
        .where(JobFile.job_id == job_id, JobFile.path.in_(list(paths)), JobFile.state == FileState.QUEUED)
        .values(owner=None, lease_until=time.time() + wait_s, dispatches=JobFile.dispatches + 1)
    )


def claim(sessions: sessionmaker[Session], job_id: str, path: str, owner: str, lease_s: float) -> bool:
    """Take a queued file whose lease is free, expired or already `owner`'s (a task starting on it, or trying
    again); False: settled, or another live task holds it (a duplicate delivery, which then does nothing)."""
    now = time.time()
    mine = or_(_free(now), JobFile.owner == owner)
    with sessions() as session:
        result = session.execute(
            update(JobFile).where(*_file(job_id, path), mine).values(owner=owner, lease_until=now + lease_s)
        )
        session.commit()
        return bool(result.rowcount)  # type: ignore[attr-defined]  # CursorResult of an UPDATE


def held_for(sessions: sessionmaker[Session], job_id: str, path: str) -> float | None:
    """Seconds left on the lease another task holds on this unsettled file; None when settled or free."""
    now = time.time()
    query = select(JobFile.lease_until).where(*_file(job_id, path), JobFile.owner.is_not(None))
    with sessions() as session:
        until = session.scalars(query).first()
    return until - now if until is not None and until >= now else None


def renew(sessions: sessionmaker[Session], job_id: str, path: str, owner: str, until: float) -> bool:
    """Extend the lease its owner holds; False when the file is settled or someone else took it."""
    with sessions() as session:
        result = session.execute(
            update(JobFile).where(*_file(job_id, path), JobFile.owner == owner).values(lease_until=until)
        )
        session.commit()
        return bool(result.rowcount)  # type: ignore[attr-defined]  # CursorResult of an UPDATE


def release(sessions: sessionmaker[Session], job_id: str, path: str, owner: str, wait_s: float) -> None:
    """Let go of a file that will be retried after `wait_s` (its retry claims it again)."""
    with sessions() as session:
        session.execute(
            update(JobFile)
            .where(*_file(job_id, path), JobFile.owner == owner)
            .values(owner=None, lease_until=time.time() + wait_s)
        )
        session.commit()


@contextlib.contextmanager
def renewing(sessions: sessionmaker[Session], job_id: str, path: str, owner: str, lease_s: float) -> Iterator[None]:
    """Renew the lease every third of `lease_s` while the body runs (a failed renewal is logged: the lease may
    then expire and the file run again, which idempotency makes harmless)."""
    stop = threading.Event()

    def beat() -> None:
        while not stop.wait(lease_s / 3):
            try:
                renew(sessions, job_id, path, owner, time.time() + lease_s)
            except Exception as exc:  # the database away for a moment: the next beat tries again
                log.warning("lease of %s in job %s not renewed: %s", path, job_id, exc)

    thread = threading.Thread(target=beat, name="cavsync-lease", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join(timeout=5)


def hold_jobs(sessions: sessionmaker[Session], job_ids: Sequence[str], lease_s: float) -> None:
    """Renew the queue leases of the unclaimed files of these jobs (an API process keeping the jobs it holds
    in its own queue alive: when it dies they expire)."""
    if not job_ids:
        return
    with sessions() as session:
        session.execute(
            update(JobFile)
            .where(JobFile.job_id.in_(list(job_ids)), JobFile.state == FileState.QUEUED, JobFile.owner.is_(None))
            .values(lease_until=time.time() + lease_s)
        )
        session.commit()


@dataclass(frozen=True)
class Lost:
    """A file whose lease expired, how many times it has been dispatched, and whether a task had claimed it
    (False: it expired waiting in the queue)."""

    job_id: str
    path: str
    dispatches: int
    claimed: bool = False


def expired(sessions: sessionmaker[Session], skip_jobs: Sequence[str] = ()) -> list[Lost]:
    """Unsettled files of running jobs whose lease expired (or that never had one), but those of `skip_jobs`."""
    now = time.time()
    query = (
        select(JobFile.job_id, JobFile.path, JobFile.dispatches, JobFile.owner)
        .join(IndexJob, IndexJob.id == JobFile.job_id)
        .where(IndexJob.state == JobState.RUNNING, JobFile.state == FileState.QUEUED)
        .where(or_(JobFile.lease_until.is_(None), JobFile.lease_until < now))
        .order_by(JobFile.job_id, JobFile.path)
    )
    if skip_jobs:
        query = query.where(JobFile.job_id.not_in(list(skip_jobs)))
    with sessions() as session:
        return [Lost(j, p, d or 0, o is not None) for j, p, d, o in session.execute(query).all()]


def still_queued(sessions: sessionmaker[Session], lost: Sequence[Lost], wait_s: float) -> None:
    """Unclaimed files that may only be waiting behind others in a busy queue: their queue lease extended,
    no dispatch counted."""
    for item in lost:
        with sessions() as session:
            session.execute(
                update(JobFile)
                .where(*_file(item.job_id, item.path), JobFile.owner.is_(None))
                .values(lease_until=time.time() + wait_s)
            )
            session.commit()


def stale_queued_jobs(sessions: sessionmaker[Session], skip_jobs: Sequence[str] = ()) -> list[str]:
    """Jobs still `queued` (never dispatched: the process that had them died first) whose files' queue leases
    all expired (or never were given)."""
    now = time.time()
    held = select(JobFile.job_id).where(JobFile.job_id == IndexJob.id, JobFile.lease_until >= now).exists()
    query = select(IndexJob.id).where(IndexJob.state == JobState.QUEUED, ~held).order_by(IndexJob.created_at)
    if skip_jobs:
        query = query.where(IndexJob.id.not_in(list(skip_jobs)))
    with sessions() as session:
        return list(session.scalars(query).all())


def unclaimed(sessions: sessionmaker[Session], skip_jobs: Sequence[str] = ()) -> list[Lost]:
    """Unsettled files of running jobs that no task has claimed (dispatched, waiting in a queue), but those of
    `skip_jobs`: what a broker that lost its queue will never hand out."""
    query = (
        select(JobFile.job_id, JobFile.path, JobFile.dispatches)
        .join(IndexJob, IndexJob.id == JobFile.job_id)
        .where(IndexJob.state == JobState.RUNNING, JobFile.state == FileState.QUEUED, JobFile.owner.is_(None))
        .order_by(JobFile.job_id, JobFile.path)
    )
    if skip_jobs:
        query = query.where(JobFile.job_id.not_in(list(skip_jobs)))
    with sessions() as session:
        return [Lost(j, p, d or 0) for j, p, d in session.execute(query).all()]


def take_for_redispatch(sessions: sessionmaker[Session], lost: Lost, wait_s: float, expired_only: bool = True) -> bool:
    """Mark a lost file dispatched again, unless another reconciler or a task got to it first (its lease
    renewed or claimed). `expired_only=False`: an unclaimed file whatever its queue lease (the broker lost it)."""
    now = time.time()
    free = or_(JobFile.lease_until.is_(None), JobFile.lease_until < now) if expired_only else JobFile.owner.is_(None)
    with sessions() as session:
        result = session.execute(
            update(JobFile)
            .where(*_file(lost.job_id, lost.path), free)
            .values(owner=None, lease_until=now + wait_s, dispatches=JobFile.dispatches + 1)
        )
        session.commit()
        return bool(result.rowcount)  # type: ignore[attr-defined]  # CursorResult of an UPDATE


def give_up(sessions: sessionmaker[Session], lost: Sequence[Lost], message: str | None = None) -> None:
    """Fail files lost too often (or that could not be sent again) with a message that says what to do."""
    for item in lost:
        with sessions() as session:
            settle(session, item.job_id, item.path, FileState.FAILED, message or LOST.format(n=item.dispatches))
            session.commit()
