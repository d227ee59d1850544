"""Celery tasks for batch indexing: a job fans out one task per media file to any number of workers
on any number of machines (sharing the media and the data dir), and exactly one merger at a time
moves finished token shards into the token store and the catalog (a Redis lock).

A task takes paths, never tensors, and is idempotent by content hash: the shard of a file is
`pending/<sha256>.<model>.npz`, written to a temp file and renamed, and a file already indexed with
the model is skipped. Tasks are acknowledged late with a prefetch of 1, so the task of a killed
worker is delivered again; only transient errors (connections, timeouts, the database) are retried,
with backoff. Every task ends by settling its file in the job (indexed, skipped, or failed with the
error, for any other exception and for a transient one past its retries) and recounting the job, so
the job is done once its last file is settled, whatever that file's outcome.

A job is `create_job` (the job and its files, queued) then `dispatch_job` (running; one task per file).
Without a broker URL the same tasks run in process (the embedded default). With one, a broker that
does not take the tasks fails the job (its unsent files failed with the error) and raises
`QueueUnavailable`; broker connections time out after CAVSYNC_BROKER_TIMEOUT_S (5 s).

    CAVSYNC_BROKER_URL=redis://127.0.0.1:6379/0 celery -A indexer.tasks worker --concurrency 2
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from functools import cache
from pathlib import Path

import numpy as np
import redis.exceptions
from celery import Celery
from celery.exceptions import Retry
from celery.utils.time import get_exponential_backoff_interval
from kombu.exceptions import OperationalError as BrokerError
from sqlalchemy import func, select
from sqlalchemy.exc import OperationalError
from sqlalchemy.orm import Session, sessionmaker

from indexer.catalog import IndexJob, JobFile, JobState, Video, VideoStatus, new_video, open_catalog
from indexer.locks import renewed_lock
from indexer.pipeline import content_hash, decode_file, encode_clips, model_id_of, store_videos
from indexer.store import TokenStore
from model import CAVMAESync, PreprocessConfig

log = logging.getLogger(__name__)

# redis' own errors are no builtin ConnectionError; LockError: the merge lock not had within its timeout
TRANSIENT = (
    ConnectionError,
    TimeoutError,
    OperationalError,
    redis.exceptions.ConnectionError,
    redis.exceptions.TimeoutError,
    redis.exceptions.LockError,
)
PUBLISH_ERRORS = (BrokerError, OSError, redis.exceptions.RedisError)
MAX_RETRIES, RETRY_BACKOFF_MAX_S = 8, 300
SETTLED = ("indexed", "skipped", "failed")
# The longest a task may run, and how long the broker waits before handing the task of a worker that
# died to another one: above the longest task (a task still running when it expires runs twice,
# which idempotency makes harmless but wasteful).
TASK_TIME_LIMIT_S = int(os.environ.get("CAVSYNC_TASK_TIME_LIMIT_S", "1800"))
MERGE_LOCK_TTL_S = float(os.environ.get("CAVSYNC_MERGE_LOCK_TTL_S", "30"))  # a dead merger's lock frees this soon
VISIBILITY_TIMEOUT_S = int(os.environ.get("CAVSYNC_VISIBILITY_TIMEOUT_S", str(2 * TASK_TIME_LIMIT_S)))
# Connecting to the broker, and each command on it (a publish): a broker that is down, or gone without
# closing the connection, fails a publish within seconds instead of hanging the request that starts a job.
BROKER_TIMEOUT_S = float(os.environ.get("CAVSYNC_BROKER_TIMEOUT_S", "5"))


class QueueUnavailable(RuntimeError):
    """The broker did not take a job's tasks; the job has been marked failed. `unsent`: the files not queued."""

    def __init__(self, message: str, unsent: Sequence[str] = ()) -> None:
        super().__init__(message)
        self.unsent = list(unsent)


def make_app(broker_url: str | None = None) -> Celery:
    broker = broker_url or os.environ.get("CAVSYNC_BROKER_URL")
    celery = Celery("cavsync", broker=broker or "memory://", backend=None)
    celery.conf.update(
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        worker_prefetch_multiplier=1,
        task_time_limit=TASK_TIME_LIMIT_S,
        broker_connection_timeout=BROKER_TIMEOUT_S,
        broker_transport_options={
            "visibility_timeout": VISIBILITY_TIMEOUT_S,
            "socket_connect_timeout": BROKER_TIMEOUT_S,
            "socket_timeout": BROKER_TIMEOUT_S,  # above the workers' 1 s BRPOP
        },
        task_publish_retry_policy={"max_retries": 2, "interval_start": 0, "interval_step": 0.5, "interval_max": 1},
        task_always_eager=broker is None,  # embedded default: run in process
        task_eager_propagates=True,
        broker_connection_retry_on_startup=True,
    )
    return celery


app = make_app()


def configure(broker_url: str | None) -> None:
    """Point the module's app at a broker (None: run tasks in process)."""
    if app.conf.broker_url == (broker_url or "memory://") and app.conf.task_always_eager == (broker_url is None):
        return
    app.conf.update(broker_url=broker_url or "memory://", task_always_eager=broker_url is None)
    # the app keeps the pools made for the broker of the time: drop them, as Celery does after a fork (kombu
    # keeps its pools per broker, for whoever points at that broker again)
    app._pool = None
    app.amqp._producer_pool = None


@dataclass(frozen=True)
class Context:
    """Where a task finds everything: plain strings, so that it crosses the broker."""

    model_path: str
    data_dir: str
    database_url: str
    job_id: str | None = None

    @property
    def pending(self) -> Path:
        return Path(self.data_dir) / "pending"

    @property
    def store(self) -> TokenStore:
        return TokenStore(Path(self.data_dir) / "index")


@cache
def _model(model_path: str) -> CAVMAESync:  # one model per worker process
    from model import load_model

    return load_model(model_path)


@cache
def _sessions(database_url: str) -> sessionmaker:
    return open_catalog(database_url)


def _indexed(session: Session, sha: str, model_id: str) -> bool:
    query = select(Video.id).where(Video.sha256 == sha, Video.model_id == model_id, Video.status == VideoStatus.INDEXED)
    return session.scalars(query).first() is not None


def _set_file_state(session: Session, job_id: str, path: str, state: str, error: str | None = None) -> None:
    """A file's outcome; a settled file changes only to indexed (a redelivered task never undoes a result)."""
    row = session.get(JobFile, (job_id, path)) or JobFile(job_id=job_id, path=path)
    if row.state in SETTLED and state != "indexed":
        return
    row.state, row.error = state, error
    session.merge(row)


def _recount(session: Session, job: IndexJob) -> None:
    """A job's counters from its files' states; a running job with every file settled is done."""
    counts = dict(
        session.execute(
            select(JobFile.state, func.count()).where(JobFile.job_id == job.id).group_by(JobFile.state)
        ).all()
    )
    job.done, job.skipped, job.failed = counts.get("indexed", 0), counts.get("skipped", 0), counts.get("failed", 0)
    failed = select(JobFile.path, JobFile.error).where(JobFile.job_id == job.id, JobFile.state == "failed")
    job.errors = {p: e or "" for p, e in session.execute(failed).all()}
    if job.state == JobState.RUNNING and job.done + job.skipped + job.failed >= job.total:
        job.state = JobState.DONE


def _settle(session: Session, job_id: str | None, path: str, state: str | None, error: str | None = None) -> None:
    """Set a file's state (None: leave it) and recount its job, under the job row's lock (concurrent tasks of a
    job serialise here, on PostgreSQL; SQLite has one writer anyway). The caller commits."""
    job = session.get(IndexJob, job_id, with_for_update=True) if job_id else None
    if job is None:
        return
    if state is not None:
        _set_file_state(session, job.id, path, state, error)
    _recount(session, job)


def _outcome(session: Session, sha: str, model_id: str) -> tuple[str, str | None] | None:
    """What the catalog holds for this content: ("skipped", None) when indexed, ("failed", error), or None."""
    if _indexed(session, sha, model_id):
        return "skipped", None
    query = select(Video.error).where(
        Video.sha256 == sha, Video.model_id == model_id, Video.status == VideoStatus.FAILED
    )
    error = session.scalars(query).first()
    return None if error is None else ("failed", error)


def encode_to_shard(ctx: Context, path: str) -> str:
    """Decode and encode one file into `pending/<sha>.<model>.npz`, atomically; returns the content hash.

    Nothing is written for content already indexed with the model, or whose shard is already pending.
    """
    model_id = model_id_of(ctx.model_path)
    sha = content_hash(Path(path))
    target = ctx.pending / f"{sha}.{model_id}.npz"
    with _sessions(ctx.database_url)() as session:
        if _indexed(session, sha, model_id):
            return sha
    if target.exists():
        return sha
    model = _model(ctx.model_path)
    item = decode_file(Path(path), model.config, PreprocessConfig())
    ctx.pending.mkdir(parents=True, exist_ok=True)
    tmp = ctx.pending / f".{sha}.{uuid.uuid4().hex}.tmp.npz"
    fields = {"uri": np.array(str(Path(path).resolve())), "path": np.array(path), "job": np.array(ctx.job_id or "")}
    if item.error is not None:
        np.savez(tmp, error=np.array(item.error), **fields)
    else:
        audio, visual, present = encode_clips(model, item.clips)
        np.savez(
            tmp,
            audio=audio,
            visual=visual,
            present=present,
            starts=np.array([c.start for c in item.clips]),
            durations=np.array([c.duration for c in item.clips]),
            modalities=np.array([",".join(c.modalities) for c in item.clips]),
            **fields,
        )
    os.replace(tmp, target)
    return sha


def merge_shards(ctx: Context) -> int:
    """Move every finished shard into the catalog and the token store; returns how many were merged.

    Run under the merge lock. A shard is removed only after its video is marked indexed (or failed);
    a shard whose content is already indexed is just removed, so merging twice changes nothing.
    """
    model_id, merged = model_id_of(ctx.model_path), 0
    for shard in sorted(ctx.pending.glob(f"*.{model_id}.npz")):
        data = dict(np.load(shard))
        sha = shard.name.split(".", 1)[0]
        with _sessions(ctx.database_url)() as session:
            if _indexed(session, sha, model_id):
                state, error = "skipped", None
            else:
                state, error = _merge_one(session, ctx.store, data, sha, model_id)
            _settle(session, str(data["job"]) or None, str(data["path"]), state, error)
            session.commit()
        shard.unlink()
        merged += 1
    return merged


def _merge_one(session: Session, store: TokenStore, data: dict, sha: str, model_id: str) -> tuple[str, str | None]:
    """One shard into the catalog (committed) and the store; returns its file's state and error."""
    stale = select(Video).where(Video.sha256 == sha, Video.model_id == model_id, Video.status != VideoStatus.INDEXED)
    for video in session.scalars(stale).all():
        session.delete(video)  # a merge that died half-way, or an earlier failure: this result replaces it
    uri = str(data["uri"])
    if "error" in data:
        session.add(Video(uri=uri, sha256=sha, model_id=model_id, status=VideoStatus.FAILED, error=str(data["error"])))
        session.commit()
        return "failed", str(data["error"])
    rows = zip(data["starts"], data["durations"], data["modalities"], strict=True)
    video = new_video(uri, sha, model_id, [(float(s), float(d), str(m)) for s, d, m in rows])
    store_videos(session, store, model_id, [video], data["audio"], data["visual"], data["present"])
    return "indexed", None


def merge_pending(ctx: Context) -> int:
    """Merge under a Redis lock (one merger across machines, see `indexer.locks`); in process the store's
    file lock serialises."""
    broker = app.conf.broker_url or ""
    if not broker.startswith("redis"):
        return merge_shards(ctx)
    with renewed_lock(broker, "cavsync:merge", MERGE_LOCK_TTL_S, wait_s=600):
        return merge_shards(ctx)


def settle_file(ctx: Context, path: str, sha: str) -> None:
    """After the merge: a file whose own shard was not merged (its content was indexed, or failed, from another
    path or job) takes the catalog's outcome for its content; then the job is recounted."""
    if ctx.job_id is None:
        return
    with _sessions(ctx.database_url)() as session:
        found = _outcome(session, sha, model_id_of(ctx.model_path))  # never overrides a settled file
        _settle(session, ctx.job_id, path, *(found or (None, None)))
        session.commit()


def fail_file(ctx: Context, path: str, exc: BaseException) -> None:
    """Record a file's failure (the exception as text) in its job, and recount the job."""
    if ctx.job_id is None:
        return
    with _sessions(ctx.database_url)() as session:
        _settle(session, ctx.job_id, path, "failed", f"{type(exc).__name__}: {exc}")
        session.commit()


@app.task(bind=True, max_retries=MAX_RETRIES)
def index_file(self, job_id: str, path: str, model_path: str, data_dir: str, database_url: str) -> str:  # noqa: ANN001
    """Encode one file into a shard, merge whatever is pending, settle the file in its job.

    Transient errors are retried with exponential backoff; past the retries, and at once for any other
    error, the file is recorded failed with the error (the task itself ends normally: its outcome is the
    catalog's, like a file the decoder rejects).
    """
    ctx = Context(model_path, data_dir, database_url, job_id or None)
    try:
        sha = encode_to_shard(ctx, path)
        merge_pending(ctx)
        settle_file(ctx, path, sha)
    except TRANSIENT as exc:
        if self.request.retries < self.max_retries:
            countdown = get_exponential_backoff_interval(1, self.request.retries, RETRY_BACKOFF_MAX_S, full_jitter=True)
            log.warning("index %s: %s: %s; retry in %d s", job_id, path, exc, countdown)
            raise self.retry(exc=exc, countdown=countdown) from exc
        log.error("index %s: %s: %s; giving up after %d retries", job_id, path, exc, self.max_retries)
        fail_file(ctx, path, exc)
    except Exception as exc:
        log.exception("index %s: %s failed", job_id, path)
        fail_file(ctx, path, exc)
    return path


# ---------------------------------------------------------------------------------------------- jobs
def create_job(catalog: sessionmaker | str, paths: Sequence[str | os.PathLike[str]]) -> str:
    """Record a queued job with its files (a session factory, or the catalog's URL); returns its id."""
    sessions = _sessions(catalog) if isinstance(catalog, str) else catalog
    files = list(dict.fromkeys(str(p) for p in paths))
    job_id = str(uuid.uuid4())
    with sessions() as session:
        session.add(IndexJob(id=job_id, total=len(files), state=JobState.QUEUED))
        session.add_all(JobFile(job_id=job_id, path=f) for f in files)
        session.commit()
    return job_id


def _start(database_url: str, job_id: str) -> list[str]:
    """Mark a job running; returns its files still queued (an empty job is done at once)."""
    with _sessions(database_url)() as session:
        job = session.get(IndexJob, job_id, with_for_update=True)
        if job is None:
            raise LookupError(f"no index job {job_id}")
        job.state = JobState.RUNNING
        query = select(JobFile.path).where(JobFile.job_id == job_id, JobFile.state == "queued").order_by(JobFile.path)
        paths = list(session.scalars(query).all())
        _recount(session, job)
        session.commit()
    return paths


STOPPED = "not indexed: the server stopped first; index it again (indexed files are skipped)"


def _fail_job(database_url: str, job_id: str, paths: list[str], message: str) -> None:
    """A job that could not be dispatched: its unsent files failed with the message, the job failed."""
    with _sessions(database_url)() as session:
        job = session.get(IndexJob, job_id, with_for_update=True)
        if job is None:
            return
        for path in paths:
            _set_file_state(session, job_id, path, "failed", message)
        job.state = JobState.FAILED
        _recount(session, job)
        session.commit()


def dispatch_job(
    job_id: str, model_path: str, data_dir: str, database_url: str, stop: threading.Event | None = None
) -> None:
    """Run a created job: one `index_file` task per queued file, published to the broker, or run here, one after
    the other, without one (until `stop` is set: the files not begun then fail with STOPPED). Raises
    `QueueUnavailable` (the job marked failed) when the broker takes no task."""
    paths = _start(database_url, job_id)
    args = (model_path, data_dir, database_url)
    if app.conf.task_always_eager:
        _run_here(job_id, paths, args, stop)
    else:
        _publish(job_id, paths, args)


def fail_unstarted(database_url: str, job_id: str, message: str = STOPPED) -> None:
    """A job that will not run (its process stopping): its queued files failed with `message`, the job failed."""
    with _sessions(database_url)() as session:
        query = select(JobFile.path).where(JobFile.job_id == job_id, JobFile.state == "queued")
        paths = list(session.scalars(query).all())
    _fail_job(database_url, job_id, paths, message)


def _run_here(job_id: str, paths: list[str], args: tuple[str, str, str], stop: threading.Event | None) -> None:
    """The tasks in this process, one file after the other; a transient error waits its backoff and runs again."""
    ctx = Context(*args, job_id)
    for done, path in enumerate(paths):
        if stop is not None and stop.is_set():
            _fail_job(args[2], job_id, paths[done:], STOPPED)
            return
        try:
            _run_with_retries(job_id, path, args)
        except Exception as exc:  # the catalog itself failing: the next file may still go through
            log.exception("index job %s: %s failed", job_id, path)
            with contextlib.suppress(Exception):
                fail_file(ctx, path, exc)


def _run_with_retries(job_id: str, path: str, args: tuple[str, str, str]) -> None:
    for attempt in range(MAX_RETRIES + 1):
        try:
            index_file.apply((job_id, path, *args), retries=attempt, throw=True)
            return
        except Retry as retry:  # eager tasks raise their retry instead of queueing it
            time.sleep(float(retry.when or 0))


def _publish(job_id: str, paths: list[str], args: tuple[str, str, str]) -> None:
    for sent, path in enumerate(paths):
        try:
            index_file.delay(job_id, path, *args)
        except Exception as exc:
            log.error("index job %s: the broker took %d of %d tasks: %s", job_id, sent, len(paths), exc)
            try:
                _fail_job(args[2], job_id, paths[sent:], f"not queued: {type(exc).__name__}: {exc}")
            except Exception:
                log.exception("index job %s: cannot mark it failed", job_id)
            if isinstance(exc, PUBLISH_ERRORS):
                message = f"the broker did not take the tasks of job {job_id}: {exc}"
                raise QueueUnavailable(message, paths[sent:]) from exc
            raise


def start_job(paths: Sequence[str | os.PathLike[str]], model_path: str, data_dir: str, database_url: str) -> str:
    """`create_job` then `dispatch_job` (the CLI, the tests); returns the job id."""
    job_id = create_job(database_url, paths)
    dispatch_job(job_id, model_path, data_dir, database_url)
    return job_id
