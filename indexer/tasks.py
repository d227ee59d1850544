"""The work of one index task, as plain functions: a queue (the Celery app of `cavsync.worker`) or this
process (`run_here`) calls them. Nothing here builds a Celery app or reads the environment.

A task takes paths, never tensors, and is idempotent by content hash: the shard of a file is
`pending/<sha256>.<model>.npz`, written to a temp file and renamed, and a file already indexed with the model
is skipped. Exactly one merger at a time moves finished shards into the token store and the catalog (a Redis
lock when `TaskContext.lock_url` names one, else the store's file lock). Only transient errors (connections,
timeouts, the database) are retried, with backoff (`index_file` returns the delay; the caller waits or
re-queues); past the retries, and at once for any other error, the file is recorded failed with the error.
Every task ends by settling its file in the job (see `indexer.jobs`).

A job is `jobs.create_job` then `dispatch_job`: each queued file published through a `Publish` callable (the
broker; a broker that takes none fails the job and raises `QueueUnavailable`) or, without one, run here one
after the other.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import threading
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple, Protocol

import numpy as np
import redis.exceptions
from kombu.exceptions import OperationalError as BrokerError
from sqlalchemy import select
from sqlalchemy.exc import OperationalError
from sqlalchemy.orm import Session, sessionmaker

from indexer import files, jobs, leases, sweep
from indexer.catalog import FileState, Video, VideoStatus, new_video, open_catalog
from indexer.jobs import QueueUnavailable
from indexer.locks import renewed_lock
from indexer.pipeline import (
    MEDIA_SUFFIXES,
    Decoded,
    decode_file,
    encode_clips,
    hashed,
    model_id_of,
    needs_repair,
    repair_location,
    store_videos,
)
from indexer.store import TokenStore
from model import CAVMAESync, PreprocessConfig, load_model

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
MERGE_LOCK_WAIT_S = 600

__all__ = ["QueueUnavailable", "Resources", "TaskContext", "dispatch_job", "index_file", "run_here", "start_job"]


@dataclass(frozen=True)
class TaskContext:
    """Where a task finds everything. The first four are plain strings that cross the broker; the lock is the
    worker's own setting."""

    model_path: str
    data_dir: str
    database_url: str
    job_id: str | None = None
    lock_url: str | None = None  # a Redis URL: merges take a lock there (one merger across machines)
    merge_lock_ttl_s: float = 30.0  # a dead merger's lock frees this soon
    lease_s: float = 60.0  # a worked-on file's lease (indexer.leases), renewed every third of it
    queue_lease_s: float = 900.0  # how long a dispatched file may wait for a task before it counts as lost

    @property
    def pending(self) -> Path:
        return Path(self.data_dir) / "pending"

    @property
    def store(self) -> TokenStore:
        return TokenStore(Path(self.data_dir) / "index")

    @property
    def uploads(self) -> Path:
        return Path(self.data_dir) / files.UPLOADS_DIR

    @property
    def media(self) -> Path:
        """Managed copies of indexed uploads (`indexer.files`)."""
        return files.managed_dir(Path(self.data_dir))


@dataclass
class Resources:
    """What a process keeps between tasks: one model per checkpoint, one session factory per catalog."""

    models: dict[str, CAVMAESync] = field(default_factory=dict)
    catalogs: dict[str, sessionmaker[Session]] = field(default_factory=dict)

    def model(self, path: str) -> CAVMAESync:
        if path not in self.models:
            self.models[path] = load_model(path)
        return self.models[path]

    def sessions(self, url: str) -> sessionmaker[Session]:
        if url not in self.catalogs:
            self.catalogs[url] = open_catalog(url)
        return self.catalogs[url]


class Publish(Protocol):
    """Sends the task of one file to the workers (raises when the broker does not take it)."""

    def __call__(self, job_id: str, path: str, ctx: TaskContext) -> None: ...


class Retry(NamedTuple):
    """A transient failure of a task: run it again after `delay_s`."""

    delay_s: float
    error: BaseException


class Source(NamedTuple):
    """Where an indexed file will be read from: its real path (an upload's managed copy), the name shown and
    its identity as hashed."""

    uri: str
    name: str
    identity: files.FileIdentity


def _source(ctx: TaskContext, path: str, sha: str, identity: files.FileIdentity) -> Source:
    """An upload becomes a managed copy named by its content and shown by the name it was sent with; any other
    file is indexed where it is."""
    if not files.is_upload(path, Path(ctx.data_dir)):
        return Source(str(Path(path).resolve()), Path(path).name, identity)
    name = files.sent_name(path) or Path(path).name
    managed = files.keep_managed(Path(path), sha, ctx.media, files.managed_suffix(name, MEDIA_SUFFIXES))
    return Source(str(managed), name, files.identity_of(managed.stat()))


def encode_to_shard(ctx: TaskContext, path: str, res: Resources) -> str:
    """Decode and encode one file into `pending/<sha>.<model>.npz`, atomically; returns the content hash.

    Nothing is written for content already indexed with the model (whose video, when its file is gone, points
    at this file from now on), or whose shard is already pending. An upload that decodes is kept as a managed
    copy (`indexer.files`), the video's file.
    """
    model_id = model_id_of(ctx.model_path)
    sha, identity = hashed(Path(path))
    target = ctx.pending / f"{sha}.{model_id}.npz"
    with res.sessions(ctx.database_url)() as session:
        if jobs.indexed(session, sha, model_id):
            if needs_repair(session, sha, model_id):
                source = _source(ctx, path, sha, identity)
                repair_location(session, sha, model_id, source.uri, source.identity, source.name)
                session.commit()
            return sha
    if target.exists():
        return sha
    model = res.model(ctx.model_path)
    item = decode_file(Path(path), model.config, PreprocessConfig())
    if item.error is None:
        source = _source(ctx, path, sha, item.identity or identity)
    else:  # a failed file is not kept: recorded where it was, with the name it was sent with
        source = Source(str(Path(path).resolve()), files.sent_name(path) or Path(path).name, identity)
    ctx.pending.mkdir(parents=True, exist_ok=True)
    tmp = ctx.pending / f".{sha}.{uuid.uuid4().hex}.tmp.npz"
    try:
        _save_shard(tmp, ctx, path, source, model, item)
    except BaseException:  # a full disk: no partial temp file stays behind
        tmp.unlink(missing_ok=True)
        raise
    os.replace(tmp, target)
    return sha


def _save_shard(tmp: Path, ctx: TaskContext, path: str, source: Source, model: CAVMAESync, item: Decoded) -> None:
    arrays: dict[str, np.ndarray] = {
        "uri": np.array(source.uri),
        "name": np.array(source.name),
        "identity": np.array(source.identity, dtype=np.int64),  # (size, mtime_ns)
        "path": np.array(path),
        "job": np.array(ctx.job_id or ""),
    }
    if item.error is not None:
        arrays["error"] = np.array(item.error)
    else:
        tokens = encode_clips(model, item.clips)
        arrays |= {
            "audio": tokens.audio,  # (n, T, D)
            "visual": tokens.visual,
            "present": tokens.present,  # (n, 2)
            "starts": np.array([c.start for c in item.clips]),
            "durations": np.array([c.duration for c in item.clips]),
            "modalities": np.array([",".join(c.modalities) for c in item.clips]),
        }
    np.savez(tmp, allow_pickle=False, **arrays)


class OwnShard(NamedTuple):
    """The file of the task that merges (its path in `ctx.job_id`) and its content hash (its shard's name)."""

    path: str
    sha: str


class Merged(NamedTuple):
    """What a merge did: how many shards it merged, and the outcome of the calling task's own file (its shard merged
    last and the file left for the task to settle, once its merge is over), None when not among them."""

    shards: int
    own: tuple[FileState, str | None] | None = None


def merge_shards(ctx: TaskContext, res: Resources, own: OwnShard | None = None) -> Merged:
    """Move every finished shard into the catalog and the token store.

    Run under the merge lock. A shard is removed only after its video is marked indexed (or failed);
    a shard whose content is already indexed is just removed, so merging twice changes nothing. The shard of
    the task's own file (`own`) goes last and that file is not settled here but returned: the task settles
    it once its merge (every other shard, the sweep) is over, so its job is never final while the task still
    merges shards of earlier, failed tasks (which a test or a user would then see left in `pending/`).
    """
    model_id = model_id_of(ctx.model_path)
    try:
        merged = _merge_all(ctx, res, model_id, own)
    except BaseException:  # under the merge lock: no other merger has rows or a version half-written
        sweep.after_merge(ctx.store, res.sessions(ctx.database_url), model_id)
        raise
    if merged.shards:
        sweep.after_merge(ctx.store, res.sessions(ctx.database_url), model_id)
    return merged


def _merge_all(ctx: TaskContext, res: Resources, model_id: str, own: OwnShard | None) -> Merged:
    shards = sorted(
        ctx.pending.glob(f"*.{model_id}.npz"), key=lambda s: (own is not None and s.name.startswith(own.sha), s)
    )
    count, outcome = 0, None
    for shard in shards:
        data = dict(np.load(shard))
        sha = shard.name.split(".", 1)[0]
        with res.sessions(ctx.database_url)() as session:
            if jobs.indexed(session, sha, model_id):
                state, error = FileState.SKIPPED, None
            else:
                state, error = _merge_one(session, ctx.store, data, sha, model_id)
            if _is_own(ctx, data, own):
                outcome = (state, error)
            else:
                jobs.settle(session, str(data["job"]) or None, str(data["path"]), state, error)
            session.commit()
        shard.unlink()
        count += 1
    return Merged(count, outcome)


def _is_own(ctx: TaskContext, data: dict[str, Any], own: OwnShard | None) -> bool:
    return (
        own is not None and ctx.job_id is not None and (str(data["job"]), str(data["path"])) == (ctx.job_id, own.path)
    )


def _merge_one(
    session: Session, store: TokenStore, data: dict[str, Any], sha: str, model_id: str
) -> tuple[FileState, str | None]:
    """One shard into the catalog (committed) and the store; returns its file's state and error."""
    stale = select(Video).where(Video.sha256 == sha, Video.model_id == model_id, Video.status != VideoStatus.INDEXED)
    for video in session.scalars(stale).all():
        session.delete(video)  # a merge that died half-way, or an earlier failure: this result replaces it
    uri = str(data["uri"])
    name = str(data["name"]) if "name" in data else Path(uri).name  # shards written before names were
    identity = (int(data["identity"][0]), int(data["identity"][1])) if "identity" in data else None
    if "error" in data:
        error = str(data["error"])
        session.add(Video(uri=uri, name=name, sha256=sha, model_id=model_id, status=VideoStatus.FAILED, error=error))
        session.commit()
        return FileState.FAILED, error
    rows = zip(data["starts"], data["durations"], data["modalities"], strict=True)
    clips = [(float(s), float(d), str(m)) for s, d, m in rows]
    video = new_video(uri, sha, model_id, clips, name=name, identity=identity)
    store_videos(session, store, model_id, [video], data["audio"], data["visual"], data["present"])
    return FileState.INDEXED, None


def merge_pending(ctx: TaskContext, res: Resources, own: OwnShard | None = None) -> Merged:
    """`merge_shards` under a Redis lock (one merger across machines, see `indexer.locks`) when the context
    names one; in process the store's file lock serialises."""
    if not (ctx.lock_url or "").startswith("redis"):
        return merge_shards(ctx, res, own)
    with renewed_lock(str(ctx.lock_url), "cavsync:merge", ctx.merge_lock_ttl_s, wait_s=MERGE_LOCK_WAIT_S):
        return merge_shards(ctx, res, own)


def settle_file(
    ctx: TaskContext, path: str, sha: str, res: Resources, merged: tuple[FileState, str | None] | None = None
) -> None:
    """After the merge: the file takes its own shard's outcome (`merged`), or when that shard was not merged
    here (its content was indexed, or failed, from another path or job) the catalog's outcome for its
    content; then the job is recounted."""
    if ctx.job_id is None:
        return
    with res.sessions(ctx.database_url)() as session:
        found = merged or jobs.outcome(session, sha, model_id_of(ctx.model_path))  # never overrides a settled file
        state, error = found or (None, None)
        jobs.settle(session, ctx.job_id, path, state, error)
        session.commit()


def fail_file(ctx: TaskContext, path: str, exc: BaseException, res: Resources) -> None:
    """Record a file's failure (the exception as text) in its job, and recount the job."""
    if ctx.job_id is None:
        return
    with res.sessions(ctx.database_url)() as session:
        jobs.settle(session, ctx.job_id, path, FileState.FAILED, f"{type(exc).__name__}: {exc}")
        session.commit()


def backoff_s(attempt: int) -> float:
    """Full-jitter exponential backoff: uniform in [0, min(cap, 2 ** attempt)] seconds."""
    return float(np.random.default_rng().uniform(0, min(RETRY_BACKOFF_MAX_S, 2**attempt)))


def index_file(ctx: TaskContext, path: str, res: Resources, attempt: int = 0) -> Retry | None:
    """One task: claim the file's lease, encode the file into a shard, merge whatever is pending, settle the
    file in its job (an upload of the API is then deleted), renewing the lease meanwhile.

    A file that is settled, or leased by another live task, is left alone (a duplicate delivery). A transient
    error before the last attempt returns a `Retry` (the caller runs the task again after its delay; the lease
    is let go until then); past the retries, and at once for any other error, the file is recorded failed.
    """
    owner = uuid.uuid4().hex
    try:
        if ctx.job_id is not None and not _claimed(ctx, path, owner, res):
            return _after_lease(ctx, path, res, attempt)
    except TRANSIENT as exc:  # the database away: try again later (the lease is not taken)
        return Retry(backoff_s(attempt), exc)
    with _lease(ctx, path, owner, res):
        retry = _attempt(ctx, path, res, attempt)
    if retry is not None and ctx.job_id is not None:
        with contextlib.suppress(Exception):  # not let go: the lease expires, and the reconciler sends it again
            leases.release(res.sessions(ctx.database_url), ctx.job_id, path, owner, retry.delay_s + ctx.lease_s)
    elif retry is None:
        sweep.drop_upload(ctx.uploads, path)
    return retry


def _claimed(ctx: TaskContext, path: str, owner: str, res: Resources) -> bool:
    if leases.claim(res.sessions(ctx.database_url), str(ctx.job_id), path, owner, ctx.lease_s):
        return True
    log.info("index %s: %s is settled, or leased by another task", ctx.job_id, path)
    return False


class LeaseHeld(RuntimeError):
    """Another task holds the file's lease: this delivery runs again once that lease would have expired."""


def _after_lease(ctx: TaskContext, path: str, res: Resources, attempt: int) -> Retry | None:
    """A delivery that found its file leased by another task (the broker redelivered the task of a worker that
    died, before its lease expired) waits for the lease to expire, then tries to claim it again; a settled
    file, or one still held after the retries, is left alone."""
    left = leases.held_for(res.sessions(ctx.database_url), str(ctx.job_id), path)
    if left is None or attempt >= MAX_RETRIES:
        return None
    return Retry(left + 1.0, LeaseHeld(f"{path} is leased by another task for {left:.0f} s more"))


def _lease(ctx: TaskContext, path: str, owner: str, res: Resources) -> contextlib.AbstractContextManager[None]:
    if ctx.job_id is None:
        return contextlib.nullcontext()
    return leases.renewing(res.sessions(ctx.database_url), ctx.job_id, path, owner, ctx.lease_s)


def _attempt(ctx: TaskContext, path: str, res: Resources, attempt: int) -> Retry | None:
    try:
        sha = encode_to_shard(ctx, path, res)
        merged = merge_pending(ctx, res, OwnShard(path, sha))
        settle_file(ctx, path, sha, res, merged.own)
    except TRANSIENT as exc:
        if attempt < MAX_RETRIES:
            delay = backoff_s(attempt)
            log.warning("index %s: %s: %s; retry in %.1f s", ctx.job_id, path, exc, delay)
            return Retry(delay, exc)
        log.error("index %s: %s: %s; giving up after %d retries", ctx.job_id, path, exc, MAX_RETRIES)
        fail_file(ctx, path, exc, res)
    except Exception as exc:
        log.exception("index %s: %s failed", ctx.job_id, path)
        fail_file(ctx, path, exc, res)
    return None


def run_here(ctx: TaskContext, paths: Sequence[str], res: Resources, stop: threading.Event | None = None) -> None:
    """The tasks of a job in this process, one file after the other; a transient error waits its backoff and
    runs again. Once `stop` is set the files not begun fail with `jobs.STOPPED`."""
    for done, path in enumerate(paths):
        if stop is not None and stop.is_set():
            jobs.fail_files(res.sessions(ctx.database_url), str(ctx.job_id), paths[done:], jobs.STOPPED)
            return
        try:
            for attempt in range(MAX_RETRIES + 1):
                retry = index_file(ctx, path, res, attempt)
                if retry is None:
                    break
                time.sleep(retry.delay_s)
        except Exception as exc:  # the catalog itself failing: the next file may still go through
            log.exception("index job %s: %s failed", ctx.job_id, path)
            with contextlib.suppress(Exception):
                fail_file(ctx, path, exc, res)


def _publish(ctx: TaskContext, paths: list[str], publish: Publish, sessions: sessionmaker[Session]) -> None:
    job_id = str(ctx.job_id)
    for sent, path in enumerate(paths):
        try:
            publish(job_id, path, ctx)
        except Exception as exc:
            log.error("index job %s: the broker took %d of %d tasks: %s", job_id, sent, len(paths), exc)
            try:
                jobs.fail_files(sessions, job_id, paths[sent:], f"not queued: {type(exc).__name__}: {exc}")
            except Exception:
                log.exception("index job %s: cannot mark it failed", job_id)
            if isinstance(exc, PUBLISH_ERRORS):
                message = f"the broker did not take the tasks of job {job_id}: {exc}"
                raise QueueUnavailable(message, paths[sent:]) from exc
            raise


def dispatch_job(
    ctx: TaskContext,
    res: Resources,
    *,
    publish: Publish | None = None,
    stop: threading.Event | None = None,
) -> None:
    """Run a created job (`ctx.job_id`): one task per queued file, published, or run here one after the other
    without a publisher (until `stop` is set). Raises `QueueUnavailable` (the job marked failed) when the
    broker takes no task."""
    sessions = res.sessions(ctx.database_url)
    paths = jobs.mark_running(sessions, str(ctx.job_id))
    with sessions() as session:  # lost from here on (a dead API, a broker that forgot them): sent again
        leases.dispatched(session, str(ctx.job_id), paths, ctx.queue_lease_s)
        session.commit()
    if publish is None:
        run_here(ctx, paths, res, stop)
    else:
        _publish(ctx, paths, publish, sessions)


def start_job(
    paths: Sequence[str | os.PathLike[str]], ctx: TaskContext, res: Resources, *, publish: Publish | None = None
) -> str:
    """`jobs.create_job` then `dispatch_job`; returns the job id."""
    job_id = jobs.create_job(res.sessions(ctx.database_url), paths)
    dispatch_job(dataclasses.replace(ctx, job_id=job_id), res, publish=publish)
    return job_id
