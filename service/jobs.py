"""Index jobs from the API: which paths may be indexed, starting a job, and reading its state.

With a broker URL a job is `indexer.tasks.start_job` (one Celery task per file, run by the workers).
Without one the same tasks run in this process, in a background thread, so the request returns the
job id at once; jobs then run one after the other.
"""

from __future__ import annotations

import logging
import uuid
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from kombu.exceptions import OperationalError
from sqlalchemy import select
from sqlalchemy.orm import sessionmaker

from indexer import tasks
from indexer.catalog import IndexJob, JobFile, JobState
from indexer.pipeline import list_media
from service.errors import Forbidden, InvalidInput, NotFound, Unavailable
from service.schemas import JobFileInfo, JobInfo
from service.settings import Settings

log = logging.getLogger(__name__)
SETTLED = ("indexed", "skipped", "failed")


def _inside(path: Path, roots: list[Path]) -> bool:
    return any(path == root or path.is_relative_to(root) for root in roots)


def resolve_media_paths(paths: list[str], media_roots: list[Path]) -> list[Path]:
    """Absolute paths of files or folders under the media roots -> the media files to index.

    403 for anything outside the roots (after resolving symlinks and `..`), 404 for a missing path,
    422 for an invalid one or when no media file is found. Folders are walked for media files.
    """
    if not media_roots:
        raise Forbidden("indexing by path is disabled: no media roots are configured (CAVSYNC_MEDIA_ROOTS)")
    roots = [root.resolve() for root in media_roots]
    found: dict[Path, None] = {}
    for raw in paths:
        if not raw or "\x00" in raw or not Path(raw).is_absolute():
            raise InvalidInput(f"{raw!r}: give an absolute path under a media root")
        try:
            path = Path(raw).resolve()
            if not _inside(path, roots):
                raise Forbidden(f"{raw}: outside the media roots")
            if not path.exists():
                raise NotFound(f"{raw}: no such file or folder")
            files = [f.resolve() for f in list_media(path)] if path.is_dir() else [path]
        except OSError as exc:
            raise InvalidInput(f"{raw}: {exc.strerror or exc}") from exc
        outside = [f for f in files if not _inside(f, roots)]
        if outside:
            raise Forbidden(f"{outside[0]}: a link out of the media roots")
        found.update(dict.fromkeys(files))
    if not found:
        raise InvalidInput("no media file under the given paths")
    return list(found)


def refresh_job(sessions: sessionmaker, job_id: str) -> None:
    """Recount a job from its files' states; done once every file is settled."""
    with sessions() as session:
        job = session.get(IndexJob, job_id)
        if job is None:
            return
        files = session.scalars(select(JobFile).where(JobFile.job_id == job_id)).all()
        counts = Counter(f.state for f in files)
        job.done, job.skipped, job.failed = counts["indexed"], counts["skipped"], counts["failed"]
        job.errors = {f.path: f.error or "" for f in files if f.state == "failed"}
        if sum(counts[s] for s in SETTLED) >= job.total:
            job.state = JobState.DONE
        session.commit()


def _record_failure(sessions: sessionmaker, job_id: str, path: str, message: str) -> None:
    with sessions() as session:
        row = session.get(JobFile, (job_id, path)) or JobFile(job_id=job_id, path=path)
        if row.state not in SETTLED:
            row.state, row.error = "failed", message
            session.merge(row)
            session.commit()


class JobRunner:
    """Starts index jobs: through the broker when one is configured, else in a thread of this process."""

    def __init__(self, settings: Settings, sessions: sessionmaker) -> None:
        self.settings, self.sessions = settings, sessions
        self.mode = "broker" if settings.broker_url else "in-process"
        self._pool = None if settings.broker_url else ThreadPoolExecutor(1, thread_name_prefix="cavsync-index")
        tasks.configure(settings.broker_url)

    def _task_args(self) -> tuple[str, str, str]:
        s = self.settings
        return str(s.model_path.resolve()), str(s.data_dir.resolve()), s.catalog_url

    def submit(self, paths: list[Path]) -> str:
        """Record the job and start it; returns its id (blocking: a few catalog writes)."""
        files = [str(p) for p in paths]
        if self._pool is None:
            try:
                return tasks.start_job(files, *self._task_args())
            except (OperationalError, ConnectionError, TimeoutError) as exc:
                raise Unavailable(f"the indexing queue is unreachable: {exc}") from exc
        job_id = self._create(files)
        self._pool.submit(self._run, job_id, files)
        return job_id

    def _create(self, files: list[str]) -> str:
        job_id = str(uuid.uuid4())
        with self.sessions() as session:
            session.add(IndexJob(id=job_id, total=len(files), state=JobState.RUNNING))
            session.add_all(JobFile(job_id=job_id, path=f) for f in files)
            session.commit()
        return job_id

    def _run(self, job_id: str, files: list[str]) -> None:
        for path in files:
            try:
                tasks.index_file.delay(job_id, path, *self._task_args())  # eager: runs here
            except Exception as exc:  # one file's failure never stops the job
                log.exception("index job %s: %s failed", job_id, path)
                _record_failure(self.sessions, job_id, path, f"{type(exc).__name__}: {exc}")
            refresh_job(self.sessions, job_id)

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=False, cancel_futures=True)


def job_info(sessions: sessionmaker, job_id: str) -> JobInfo:
    """A job with its files; counts are read off the files (a job whose files are all settled is done)."""
    with sessions() as session:
        job = session.get(IndexJob, job_id)
        if job is None:
            raise NotFound(f"no index job {job_id}")
        files = session.scalars(select(JobFile).where(JobFile.job_id == job_id).order_by(JobFile.path)).all()
        counts = Counter(f.state for f in files)
        settled = sum(counts[s] for s in SETTLED) >= job.total
        return JobInfo(
            id=job.id, state=JobState.DONE if settled else job.state, total=job.total, done=counts["indexed"],
            failed=counts["failed"], skipped=counts["skipped"],
            errors={f.path: f.error or "" for f in files if f.state == "failed"},
            files=[JobFileInfo(path=f.path, state=f.state, error=f.error) for f in files],
            created_at=job.created_at, updated_at=job.updated_at,
        )  # fmt: skip
