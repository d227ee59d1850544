"""Index jobs from the API: which paths may be indexed, starting a job, and reading its state.

A job is `indexer.jobs.create_job` then `indexer.tasks.dispatch_job`: with a publisher (the Celery app the
composition root built for the broker) one task per file, published before the request returns (a broker
that takes none: 503, the job failed); without one the same tasks run in this process, in a background
thread, so the request returns the job id at once; jobs then run one after the other (queued until their
turn).
"""

from __future__ import annotations

import contextlib
import json
import logging
import threading
from concurrent.futures import Future, ThreadPoolExecutor, wait
from pathlib import Path

from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker

from indexer import files, jobs, leases, sweep, tasks
from indexer.catalog import FileState, IndexJob, JobFile, JobState, Video, VideoStatus
from indexer.locks import renewed_lock
from indexer.pipeline import content_hash, list_media, model_id_of, recorded_identity
from indexer.tasks import Publish, Resources, TaskContext
from model import PreprocessConfig
from model.features import checked_duration
from model.media import MediaError, MediaTooLongError
from model.probe import probe
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
            if not (path.is_dir() or path.is_file()):  # a FIFO would block the job that opens it
                raise InvalidInput(f"{raw}: not a regular file (a FIFO, device or socket); give media files")
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


PROBED_NAMED_FILES = 100  # files a request names that are probed before its job starts (~0.1 s each)


def check_named_files(paths: list[str], prep: PreprocessConfig) -> None:
    """The files a request names itself (the first PROBED_NAMED_FILES; not those found by walking a folder)
    are probed before the job starts, as uploads are: a decompression bomb (whatever its header says: the
    probe's decoders are bounded) or a file over the duration limit is a MediaTooLongError (413) and no job is
    made. Unreadable files are left for their task to record as failed; files found in folders (and past
    PROBED_NAMED_FILES) are checked by their tasks, which fail them with the same message."""
    named = [Path(raw).resolve() for raw in paths if Path(raw).is_file()][:PROBED_NAMED_FILES]
    for path in named:
        try:
            info = probe(path, prep.timeout_s, prep.limits)
        except MediaTooLongError:
            raise
        except MediaError:
            continue
        checked_duration(info, prep)


def reuse_indexed(kept: list[Path], sessions: sessionmaker, model_id: str) -> list[Path]:
    """Uploads kept for indexing whose content this model has indexed already, its file intact, are deleted at
    once, and the job names the indexed file instead (its task skips it by content hash): no orphan copy is left
    behind. One whose indexed file is gone stays: its task makes it that video's file (a managed copy). One path
    per upload, in order (the job counts a path given twice once)."""
    paths: list[Path] = []
    for path in kept:
        sha = content_hash(path)
        with sessions() as session:
            query = select(Video).where(
                Video.sha256 == sha, Video.model_id == model_id, Video.status == VideoStatus.INDEXED
            )
            videos = session.scalars(query).all()
            intact = [v.uri for v in videos if files.is_intact(v.uri, v.sha256, recorded_identity(v))]
        if intact and Path(intact[0]).parent.resolve() != path.parent:
            path.unlink(missing_ok=True)  # (an earlier upload is not named: uploads are dropped once settled)
            path = Path(intact[0])
        paths.append(path)
    return paths


class JobRunner:
    """Starts index jobs: through the publisher when one is given (a broker), else in a thread of this process;
    and reconciles: at `start` and every `reconcile_interval_s`, files whose lease expired (their worker, an
    earlier API process or the broker's queue lost them) are dispatched again or failed (`indexer.leases`),
    and the data dir is swept of what dead writers left (`indexer.sweep`)."""

    def __init__(self, config: ServiceConfig, sessions: sessionmaker, publish: Publish | None = None) -> None:
        self.config, self.sessions, self.publish = config, sessions, publish
        self.mode = "broker" if publish is not None else "in-process"
        self._pool = None if publish is not None else ThreadPoolExecutor(1, thread_name_prefix="cavsync-index")
        self._stop = threading.Event()  # set by close(): in-process jobs stop after their current file
        self._futures: dict[str, Future[None]] = {}  # in-process jobs this runner holds (waiting or running)
        self._resources = Resources(catalogs={config.catalog_url: sessions})  # in-process: the model loaded once
        self._reconciler: threading.Thread | None = None

    @property
    def queue_wait_s(self) -> float:
        """A dispatched file's lease until a task claims it: in process, this runner renews it every reconcile
        interval while it holds the job; on a broker nobody can, so it covers a long wait in the queue."""
        leases_ = self.config.leases
        return leases_.lease_s if self._pool is not None else leases_.queue_lease_s

    def _context(self, job_id: str | None) -> TaskContext:
        c = self.config
        return TaskContext(
            str(c.model_path.resolve()),
            str(c.data_dir.resolve()),
            c.catalog_url,
            job_id,
            lock_url=c.broker_url,
            lease_s=c.leases.lease_s,
            queue_lease_s=self.queue_wait_s,
        )

    def submit(self, paths: list[Path], uploaded: bool = False, names: list[str | None] | None = None) -> str:
        """Record the job and start it; returns its id (blocking: a few catalog writes, and with a broker the
        publishing, which fails within the broker timeout: 503, the job marked failed, and `uploaded` files no
        task was sent for deleted). `names`: the name each upload was sent with (None: a path)."""
        job_id = jobs.create_job(self.sessions, [str(p) for p in paths], names)
        leases.hold_jobs(self.sessions, [job_id], self.queue_wait_s)  # lost with this process if it dies now
        if self._pool is not None:
            self._futures[job_id] = self._pool.submit(self._run, job_id)
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
        try:  # the tasks run here, one file after the other, until close() sets the stop flag
            tasks.dispatch_job(self._context(job_id), self._resources, stop=self._stop)
        except Exception:  # a file's failure is recorded by its task; this is the catalog itself failing
            log.exception("index job %s stopped", job_id)

    def _rerun(self, job_id: str, paths: list[str]) -> None:
        try:
            tasks.run_here(self._context(job_id), paths, self._resources, self._stop)
        except Exception:
            log.exception("index job %s stopped", job_id)

    # ------------------------------------------------------------------------------------ reconciling
    def start(self) -> None:
        """Sweep the data dir, reconcile once, then keep reconciling in a daemon thread (blocking: run it off
        the event loop). Failures are logged: the next round tries again."""
        for step in (self.sweep, self.reconcile):
            try:
                step()
            except Exception:
                log.exception("index jobs: %s at start failed", step.__name__)
        self._reconciler = threading.Thread(target=self._reconcile_loop, name="cavsync-reconcile", daemon=True)
        self._reconciler.start()

    def _reconcile_loop(self) -> None:
        while not self._stop.wait(self.config.reconcile_interval_s):
            try:
                self.reconcile()
            except Exception as exc:  # the database away for a while: the next round tries again
                log.warning("index jobs: reconciling failed: %s", exc)

    def _held(self) -> list[str]:
        return [job_id for job_id, future in list(self._futures.items()) if not future.done()]

    def sweep(self) -> None:
        """What dead writers left in the data dir (under the merge lock with a broker: no merge runs then)."""
        ctx = self._context(None)
        grace = self.config.leases.lease_s

        def run() -> None:
            sweep.sweep_data_dir(Path(ctx.data_dir), self.sessions, model_id_of(ctx.model_path), grace)

        if (ctx.lock_url or "").startswith("redis"):
            with renewed_lock(str(ctx.lock_url), "cavsync:merge", 30.0, wait_s=5.0):  # busy: the next merge sweeps
                run()
        else:
            run()

    def reconcile(self) -> int:
        """One round: renew the jobs this process holds, dispatch jobs an earlier process never started, send
        lost files again (or fail them past `max_dispatches`); returns the files sent again or failed."""
        held = self._held()
        leases.hold_jobs(self.sessions, held, self.queue_wait_s)
        for job_id in leases.stale_queued_jobs(self.sessions, held):
            log.warning("index job %s was never started (its process stopped): starting it", job_id)
            self._dispatch_again(job_id, None)
        lost = leases.expired(self.sessions, held)
        if (
            self._pool is None
            and any(not f.claimed for f in lost)
            and queue_depth(self.config.broker_url, self.config.queue)
        ):
            waiting = [f for f in lost if not f.claimed]  # the broker still has tasks to hand out: maybe theirs
            leases.still_queued(self.sessions, waiting, self.queue_wait_s)
            lost = [f for f in lost if f.claimed]
        limit = self.config.leases.max_dispatches
        leases.give_up(self.sessions, [f for f in lost if f.dispatches >= limit])
        again: dict[str, list[str]] = {}
        for item in (f for f in lost if f.dispatches < limit):
            if leases.take_for_redispatch(self.sessions, item, self.queue_wait_s):
                again.setdefault(item.job_id, []).append(item.path)
        for job_id, paths in again.items():
            log.warning("index job %s: %d file(s) lost (lease expired): sent again", job_id, len(paths))
            self._dispatch_again(job_id, paths)
        return len(lost)

    def _dispatch_again(self, job_id: str, paths: list[str] | None) -> None:
        """A job never started (`paths` None) or its lost files, sent to the workers or this process's queue."""
        if self._pool is not None:
            work = (self._run, job_id) if paths is None else (self._rerun, job_id, paths)
            self._futures[job_id] = self._pool.submit(*work)
            return
        ctx = self._context(job_id)
        if paths is None:
            with contextlib.suppress(tasks.QueueUnavailable):  # the job is marked failed with the reason
                tasks.dispatch_job(ctx, self._resources, publish=self.publish)
            return
        for path in paths:
            try:
                self.publish(job_id, path, ctx)  # type: ignore[misc]  # a broker runner always has a publisher
            except Exception as exc:  # the lease expires again: the next round retries, then gives up
                log.warning("index job %s: %s not sent again: %s", job_id, path, exc)

    def close(self) -> None:
        """Stop reconciling. In-process jobs stop after their current file (waited for `shutdown_grace_s`); the
        files not done, and jobs never started, fail with jobs.STOPPED now (indexing them again skips what was
        done), since the process may be gone right after. Jobs on the workers are theirs."""
        self._stop.set()
        if self._pool is None:
            return
        held = self._held()
        self._pool.shutdown(wait=False, cancel_futures=True)
        running = [f for f in self._futures.values() if f.running()]
        wait(running, timeout=self.config.shutdown_grace_s)
        for job_id in held:
            try:
                jobs.fail_unstarted(self.sessions, job_id)
            except Exception:
                log.exception("index job %s: cannot mark it stopped", job_id)


def queue_depth(broker_url: str | None, queue: str) -> int:
    """Tasks waiting in the broker's `queue` (Redis brokers; 0 when unknown or unreachable). A file whose queue
    lease expired while tasks still wait there may be one of them: it is not sent again until the queue
    drains, so a long backlog is not mistaken for lost tasks."""
    if not (broker_url or "").startswith(("redis://", "rediss://")):
        return 0
    import redis

    try:
        client = redis.Redis.from_url(str(broker_url), socket_connect_timeout=2, socket_timeout=2)
        return int(client.llen(queue))
    except redis.RedisError as exc:
        log.warning("queue depth unknown: %s", exc)
        return 0


def shown_error(error: str | None, path: str, name: str | None) -> str | None:
    """A file's error as its user knows the file: an upload's server path and kept name replaced by the name it
    was sent with (`817e490bbb18-mine_a.mp4: ...` -> `mine_a.mp4: ...`)."""
    if error is None or name is None:
        return error
    return error.replace(path, name).replace(Path(path).name, name)


def _file_info(row: JobFile) -> JobFileInfo:
    return JobFileInfo(
        path=row.path,
        name=row.name or row.path,
        uploaded=row.name is not None,
        state=row.state,
        error=shown_error(row.error, row.path, row.name),
    )


def _summary(job: IndexJob, failures: list[JobFileInfo]) -> dict:
    names = ("id", "state", "total", "done", "failed", "skipped", "created_at", "updated_at")
    shown = {f.path: f.error or "" for f in failures}
    errors = {path: shown.get(path, error) for path, error in (job.errors or {}).items()}
    partial = job.state == JobState.DONE and job.failed > 0
    return {name: getattr(job, name) for name in names} | {"errors": errors, "partial": partial, "failures": failures}


def _failures(session: Session, job_ids: list[str]) -> dict[str, list[JobFileInfo]]:
    """The failed files of these jobs (one query), by job, in path order."""
    query = (
        select(JobFile)
        .where(JobFile.job_id.in_(job_ids), JobFile.state == FileState.FAILED)
        .order_by(JobFile.job_id, JobFile.path)
    )
    found: dict[str, list[JobFileInfo]] = {job_id: [] for job_id in job_ids}
    for row in session.scalars(query).all():
        found[row.job_id].append(_file_info(row))
    return found


def job_info(sessions: sessionmaker, job_id: str) -> JobInfo:
    """A job as the catalog has it (each task recounts its job when its file is settled), with its files."""
    with sessions() as session:
        job = session.get(IndexJob, job_id)
        if job is None:
            raise NotFound(f"no index job {job_id}")
        rows = session.scalars(select(JobFile).where(JobFile.job_id == job_id).order_by(JobFile.path)).all()
        files = [_file_info(row) for row in rows]
        failures = [f for f in files if f.state == FileState.FAILED]
        return JobInfo(**_summary(job, failures), files=files)


def job_page(sessions: sessionmaker, limit: int, offset: int) -> JobPage:
    """Jobs newest first, `limit` at a time from `offset`, with their counts and failed files."""
    with sessions() as session:
        total = session.scalar(select(func.count()).select_from(IndexJob)) or 0
        query = select(IndexJob).order_by(IndexJob.created_at.desc(), IndexJob.id).limit(limit).offset(offset)
        found = list(session.scalars(query).all())
        failures = _failures(session, [job.id for job in found])
        items = [JobSummary(**_summary(job, failures[job.id])) for job in found]
    return JobPage(total=total, limit=limit, offset=offset, items=items)
