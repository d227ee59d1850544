"""Celery tasks for batch indexing: a job fans out one task per media file to any number of workers
on any number of machines (sharing the media and the data dir), and exactly one merger at a time
moves finished token shards into the token store and the catalog (a Redis lock).

A task takes paths, never tensors, and is idempotent by content hash: the shard of a file is
`pending/<sha256>.<model>.npz`, written to a temp file and renamed, and a file already indexed with
the model is skipped. Tasks are acknowledged late with a prefetch of 1, so the task of a killed
worker is delivered again; only transient errors (connections, I/O) are retried, with backoff.
Without a broker URL the same tasks run in process (the embedded default).

    CAVSYNC_BROKER_URL=redis://127.0.0.1:6379/0 celery -A indexer.tasks worker --concurrency 2
"""

from __future__ import annotations

import logging
import os
import uuid
from dataclasses import dataclass
from functools import cache
from pathlib import Path

import numpy as np
from celery import Celery
from sqlalchemy import func, select
from sqlalchemy.exc import OperationalError
from sqlalchemy.orm import Session, sessionmaker

from indexer.catalog import IndexJob, JobFile, JobState, Video, VideoStatus, new_video, open_catalog
from indexer.pipeline import content_hash, decode_file, encode_clips, model_id_of, store_videos
from indexer.store import TokenStore
from model import CAVMAESync, PreprocessConfig

log = logging.getLogger(__name__)

TRANSIENT = (ConnectionError, TimeoutError, OperationalError)
# The longest a task may run, and how long the broker waits before handing the task of a worker that
# died to another one: above the longest task (a task still running when it expires runs twice,
# which idempotency makes harmless but wasteful).
TASK_TIME_LIMIT_S = int(os.environ.get("CAVSYNC_TASK_TIME_LIMIT_S", "1800"))
VISIBILITY_TIMEOUT_S = int(os.environ.get("CAVSYNC_VISIBILITY_TIMEOUT_S", str(2 * TASK_TIME_LIMIT_S)))


def make_app(broker_url: str | None = None) -> Celery:
    broker = broker_url or os.environ.get("CAVSYNC_BROKER_URL")
    celery = Celery("cavsync", broker=broker or "memory://", backend=None)
    celery.conf.update(
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        worker_prefetch_multiplier=1,
        task_time_limit=TASK_TIME_LIMIT_S,
        broker_transport_options={"visibility_timeout": VISIBILITY_TIMEOUT_S},
        task_always_eager=broker is None,  # embedded default: run in process
        task_eager_propagates=True,
        broker_connection_retry_on_startup=True,
    )
    return celery


app = make_app()


def configure(broker_url: str | None) -> None:
    """Point the module's app at a broker (None: run tasks in process)."""
    app.conf.update(broker_url=broker_url or "memory://", task_always_eager=broker_url is None)


@dataclass(frozen=True)
class Context:
    """Where a task finds everything: plain strings, so that it crosses the broker."""

    model_path: str
    data_dir: str
    database_url: str

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


def _set_file_state(session: Session, job_id: str | None, path: str, state: str, error: str | None = None) -> None:
    if job_id is None:
        return
    row = session.get(JobFile, (job_id, path)) or JobFile(job_id=job_id, path=path)
    if state == "skipped" and row.state in ("indexed", "failed"):
        return  # a redelivered task of a file this job already settled
    row.state, row.error = state, error
    session.merge(row)


def encode_to_shard(ctx: Context, job_id: str | None, path: str) -> None:
    """Decode and encode one file into `pending/<sha>.<model>.npz`, atomically (skipped if known)."""
    model_id = model_id_of(ctx.model_path)
    sha = content_hash(Path(path))
    target = ctx.pending / f"{sha}.{model_id}.npz"
    with _sessions(ctx.database_url)() as session:
        if _indexed(session, sha, model_id):
            _set_file_state(session, job_id, path, "skipped")
            session.commit()
            return
    if target.exists():
        return
    model = _model(ctx.model_path)
    item = decode_file(Path(path), model.config, PreprocessConfig())
    ctx.pending.mkdir(parents=True, exist_ok=True)
    tmp = ctx.pending / f".{sha}.{uuid.uuid4().hex}.tmp.npz"
    fields = {"uri": np.array(str(Path(path).resolve())), "path": np.array(path), "job": np.array(job_id or "")}
    if item.error is not None:
        np.savez(tmp, error=np.array(item.error), **fields)
    else:
        audio, visual, present = encode_clips(model, item.clips)
        np.savez(tmp, audio=audio, visual=visual, present=present, starts=np.array([c.start for c in item.clips]),
                 durations=np.array([c.duration for c in item.clips]),
                 modalities=np.array([",".join(c.modalities) for c in item.clips]), **fields)  # fmt: skip
    os.replace(tmp, target)


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
                _set_file_state(session, str(data["job"]) or None, str(data["path"]), "skipped")
            else:
                _merge_one(session, ctx.store, data, sha, model_id)
            _refresh_jobs(session)
            session.commit()
        shard.unlink()
        merged += 1
    return merged


def _merge_one(session: Session, store: TokenStore, data: dict, sha: str, model_id: str) -> None:
    uri, path, job_id = str(data["uri"]), str(data["path"]), str(data["job"]) or None
    stale = select(Video).where(Video.sha256 == sha, Video.model_id == model_id, Video.status != VideoStatus.INDEXED)
    for video in session.scalars(stale).all():
        session.delete(video)  # a merge that died half-way, or an earlier failure: this result replaces it
    if "error" in data:
        session.add(Video(uri=uri, sha256=sha, model_id=model_id, status=VideoStatus.FAILED, error=str(data["error"])))
        _set_file_state(session, job_id, path, "failed", str(data["error"]))
        return
    rows = zip(data["starts"], data["durations"], data["modalities"], strict=True)
    video = new_video(uri, sha, model_id, [(float(s), float(d), str(m)) for s, d, m in rows])
    store_videos(session, store, model_id, [video], data["audio"], data["visual"], data["present"])
    _set_file_state(session, job_id, path, "indexed")


def _refresh_jobs(session: Session) -> None:
    """Counters of running jobs from their files' states; a job with every file settled is done."""
    for job in session.scalars(select(IndexJob).where(IndexJob.state == JobState.RUNNING)).all():
        counts = dict(session.execute(select(JobFile.state, func.count()).where(JobFile.job_id == job.id)
                                      .group_by(JobFile.state)).all())  # fmt: skip
        job.done, job.skipped, job.failed = counts.get("indexed", 0), counts.get("skipped", 0), counts.get("failed", 0)
        failed = select(JobFile.path, JobFile.error).where(JobFile.job_id == job.id, JobFile.state == "failed")
        job.errors = {p: e for p, e in session.execute(failed).all()}
        if job.done + job.skipped + job.failed >= job.total:
            job.state = JobState.DONE


def merge_pending(ctx: Context) -> int:
    """Merge under a Redis lock (one merger across machines); in process the store's file lock serialises."""
    broker = app.conf.broker_url or ""
    if broker.startswith("redis"):
        import redis

        lock = redis.Redis.from_url(broker).lock("cavsync:merge", timeout=TASK_TIME_LIMIT_S, blocking_timeout=600)
        with lock:
            return merge_shards(ctx)
    return merge_shards(ctx)


@app.task(bind=True, autoretry_for=TRANSIENT, retry_backoff=True, retry_backoff_max=300, max_retries=8)
def index_file(self, job_id: str, path: str, model_path: str, data_dir: str, database_url: str) -> str:  # noqa: ANN001, ARG001
    """Encode one file into a shard, then merge whatever is pending."""
    ctx = Context(model_path, data_dir, database_url)
    encode_to_shard(ctx, job_id, path)
    merge_pending(ctx)
    return path


def start_job(paths: list[str], model_path: str, data_dir: str, database_url: str) -> str:
    """Record a job with its files and fan out one task per file; returns the job id."""
    job_id = str(uuid.uuid4())
    with _sessions(database_url)() as session:
        session.add(IndexJob(id=job_id, total=len(paths), state=JobState.RUNNING))
        session.add_all(JobFile(job_id=job_id, path=str(p)) for p in paths)
        session.commit()
    for path in paths:
        index_file.delay(job_id, str(path), model_path, data_dir, database_url)
    return job_id
