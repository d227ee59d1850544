"""Index jobs from the API: which paths may be indexed, starting a job, and reading its state.

A job is `indexer.jobs.create_job` then `indexer.tasks.dispatch_job`: with a publisher (the Celery app the
composition root built for the broker) one task per file, published before the request returns (a broker
that takes none: 503, the job failed); without one the same tasks run in this process, in a background
thread, so the request returns the job id at once; jobs then run one after the other (queued until their
turn).
"""

from __future__ import annotations

import json
import logging
import threading
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

from sqlalchemy import func, select
from sqlalchemy.orm import sessionmaker

from indexer import jobs, tasks
from indexer.catalog import IndexJob, JobFile, Video, VideoStatus
from indexer.pipeline import content_hash, list_media
from indexer.tasks import Publish, Resources, TaskContext
from service.config import ServiceConfig
from service.errors import Forbidden, InvalidInput, NotFound, Unavailable
from service.schemas import JobFileInfo, JobInfo, JobPage, JobSummary

log = logging.getLogger(__name__)


def _inside(path: Path, roots: list[Path]) -> bool:
    return any(path == root or path.is_relative_to(root) for root in roots)


def resolve_media_paths(paths: list[str], media_roots: tuple[Path, ...]) -> list[Path]:
    """Absolute paths of files or folders under the media roots -> the media files to index.

    403 for anything outside the roots (after resolving symlinks and `..`), 404 for a missing path,
    422 for an invalid one or when no media file is found. Folders are walked for media files.
    """
    if not media_roots:
        raise Forbidden("indexing by path is disabled: no media roots are configured (CAVSYNC_MEDIA_ROOTS is empty)")
    roots = [root.resolve() for root in media_roots]
    setting = f"CAVSYNC_MEDIA_ROOTS={json.dumps([str(root) for root in media_roots])}"
    found: dict[Path, None] = {}
    for raw in paths:
        if not raw or "\x00" in raw or not Path(raw).is_absolute():
            raise InvalidInput(f"{raw!r}: give an absolute path under a media root")
        try:
            path = Path(raw).resolve()
            if not _inside(path, roots):
                raise Forbidden(f"{raw}: outside the media roots ({setting}); add its folder there to index it")
            if not path.exists():
                raise NotFound(f"{raw}: no such file or folder")
            files = [f.resolve() for f in list_media(path)] if path.is_dir() else [path]
        except OSError as exc:
            raise InvalidInput(f"{raw}: {exc.strerror or exc}") from exc
        except RuntimeError as exc:  # Path.resolve() on a symlink loop (Python < 3.13)
            raise InvalidInput(f"{raw}: {exc}") from exc
        outside = [f for f in files if not _inside(f, roots)]
        if outside:
            raise Forbidden(f"{outside[0]}: a link out of the media roots ({setting})")
        found.update(dict.fromkeys(files))
    if not found:
        raise InvalidInput("no media file under the given paths")
    return list(found)


def reuse_indexed(kept: list[Path], sessions: sessionmaker, model_id: str) -> list[Path]:
    """Uploads kept for indexing whose content this model has indexed already are deleted at once, and the job
    names the indexed file instead (its task skips it by content hash): no orphan copy is left behind."""
    paths: dict[Path, None] = {}
    for path in kept:
        sha = content_hash(path)
        with sessions() as session:
            query = select(Video.uri).where(
                Video.sha256 == sha, Video.model_id == model_id, Video.status == VideoStatus.INDEXED
            )
            uri = session.scalars(query).first()
        if uri is not None and Path(uri).is_file():
            path.unlink(missing_ok=True)
            path = Path(uri)
        paths[path] = None
    return list(paths)


class JobRunner:
    """Starts index jobs: through the publisher when one is given (a broker), else in a thread of this process."""

    def __init__(self, config: ServiceConfig, sessions: sessionmaker, publish: Publish | None = None) -> None:
        self.config, self.sessions, self.publish = config, sessions, publish
        self.mode = "broker" if publish is not None else "in-process"
        self._pool = None if publish is not None else ThreadPoolExecutor(1, thread_name_prefix="cavsync-index")
        self._stop = threading.Event()  # in-process jobs stop after their current file once it is set
        self._waiting: dict[str, Future[None]] = {}  # in-process jobs not started yet, by id
        self._resources = Resources(catalogs={config.catalog_url: sessions})  # in-process: the model loaded once

    def _context(self, job_id: str) -> TaskContext:
        c = self.config
        return TaskContext(str(c.model_path.resolve()), str(c.data_dir.resolve()), c.catalog_url, job_id)

    def submit(self, paths: list[Path], uploaded: bool = False) -> str:
        """Record the job and start it; returns its id (blocking: a few catalog writes, and with a broker the
        publishing, which fails within the broker timeout: 503, the job marked failed, and `uploaded` files no
        task was sent for deleted)."""
        job_id = jobs.create_job(self.sessions, [str(p) for p in paths])
        if self._pool is not None:
            self._waiting[job_id] = self._pool.submit(self._run, job_id)
            return job_id
        try:
            tasks.dispatch_job(self._context(job_id), self._resources, publish=self.publish)
        except tasks.QueueUnavailable as exc:
            for path in exc.unsent if uploaded else ():
                Path(path).unlink(missing_ok=True)
            raise Unavailable(
                f"the indexing queue is unreachable: {exc}", {"Retry-After": str(self.config.retry_after_s)}
            ) from exc
        return job_id

    def _run(self, job_id: str) -> None:
        self._waiting.pop(job_id, None)
        try:  # the tasks run here, one file after the other, until close() sets the stop flag
            tasks.dispatch_job(self._context(job_id), self._resources, stop=self._stop)
        except Exception:  # a file's failure is recorded by its task; this is the catalog itself failing
            log.exception("index job %s stopped", job_id)

    def close(self) -> None:
        """In-process jobs stop after their current file; the files not begun, and jobs never started, fail
        with jobs.STOPPED (indexing them again skips what was done). Jobs on the workers are theirs."""
        if self._pool is None:
            return
        self._stop.set()
        self._pool.shutdown(wait=False, cancel_futures=True)
        for job_id, future in list(self._waiting.items()):
            if future.cancelled():
                try:
                    jobs.fail_unstarted(self.sessions, job_id)
                except Exception:
                    log.exception("index job %s: cannot mark it stopped", job_id)


def _summary(job: IndexJob) -> dict:
    names = ("id", "state", "total", "done", "failed", "skipped", "created_at", "updated_at")
    return {name: getattr(job, name) for name in names} | {"errors": dict(job.errors or {})}


def job_info(sessions: sessionmaker, job_id: str) -> JobInfo:
    """A job as the catalog has it (each task recounts its job when its file is settled), with its files."""
    with sessions() as session:
        job = session.get(IndexJob, job_id)
        if job is None:
            raise NotFound(f"no index job {job_id}")
        files = session.scalars(select(JobFile).where(JobFile.job_id == job_id).order_by(JobFile.path)).all()
        return JobInfo(**_summary(job), files=[JobFileInfo(path=f.path, state=f.state, error=f.error) for f in files])


def job_page(sessions: sessionmaker, limit: int, offset: int) -> JobPage:
    """Jobs newest first, `limit` at a time from `offset`, with their counts and per-file errors."""
    with sessions() as session:
        total = session.scalar(select(func.count()).select_from(IndexJob)) or 0
        query = select(IndexJob).order_by(IndexJob.created_at.desc(), IndexJob.id).limit(limit).offset(offset)
        items = [JobSummary(**_summary(job)) for job in session.scalars(query).all()]
    return JobPage(total=total, limit=limit, offset=offset, items=items)
