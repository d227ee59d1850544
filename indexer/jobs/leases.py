"""Leases make every index job reach a final state whatever dies (a worker, the API, the broker).

A file not yet settled carries `lease_until` (epoch seconds) and the `owner` working on it. Dispatching it
(publishing its task, or queueing it in process) gives it a queue lease (`dispatched`); the task that starts on it
takes it (`FileLease.take`: only a file still queued whose lease is free or expired) and holds it while it works
(`FileLease.held`: renewed every third of the lease, let go on exit when the task will be retried). A file whose
lease expired was lost with its worker, its API process or the broker's queue: the reconciler (`expired`,
`take_for_redispatch`, `give_up`; `unclaimed` after a broker lost its queue) sends it again (tasks are idempotent
by content hash) up to `LeaseConfig.max_dispatches` times, then fails it with a message that says what to do.
Clocks of the machines are assumed to agree to well within a lease.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import NamedTuple

from sqlalchemy import ColumnElement, or_, select, update
from sqlalchemy.orm import Session, sessionmaker

from indexer.catalog.tables import FileState, IndexJob, JobFile, JobState
from indexer.jobs.records import settle

log = logging.getLogger(__name__)

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


class Taken(NamedTuple):
    """Whether a task took its file's lease; when not, the seconds left on another task's lease (None: the file
    is settled, or free again)."""

    taken: bool
    held_for: float | None = None


@dataclass
class Hold:
    """A lease being held (`FileLease.held`): a holder that will be retried sets `let_go_after_s`, and the lease
    is let go on exit, claimable by that retry (or any task) after those seconds."""

    let_go_after_s: float | None = None


@dataclass(frozen=True)
class FileLease:
    """A task's lease on one file of its job, its whole life: taken (`take`), then held while the task works
    (`held`: renewed, and let go on exit when the task is to run again)."""

    sessions: sessionmaker[Session]
    job_id: str
    path: str
    owner: str
    lease_s: float

    def take(self) -> Taken:
        """Claim the file (`claim`); when another task holds it, how long for (`held_for`)."""
        if claim(self.sessions, self.job_id, self.path, self.owner, self.lease_s):
            return Taken(True)
        log.info("index %s: %s is settled, or leased by another task", self.job_id, self.path)
        return Taken(False, held_for(self.sessions, self.job_id, self.path))

    @contextlib.contextmanager
    def held(self) -> Iterator[Hold]:
        """Renew the lease while the body runs (`renewing`); then let it go when the body set `let_go_after_s`
        (a failure to: the lease expires, and the reconciler sends the file again)."""
        hold = Hold()
        with renewing(self.sessions, self.job_id, self.path, self.owner, self.lease_s):
            yield hold
        if hold.let_go_after_s is not None:
            with contextlib.suppress(Exception):
                release(self.sessions, self.job_id, self.path, self.owner, hold.let_go_after_s)


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
