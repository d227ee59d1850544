"""Index jobs as the API reads them: a job with its files, a page of jobs with their failed files, and the indexed
videos of a content (detached rows; the API shapes them, `service.jobs`)."""

from __future__ import annotations

from typing import NamedTuple

from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker

from indexer.catalog.content import indexed_videos_of
from indexer.catalog.tables import FileState, IndexJob, JobFile, Video


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
    with sessions() as session:
        return list(session.scalars(indexed_videos_of(sha, model_id)).all())
