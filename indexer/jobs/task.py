"""The body of one index task, as plain functions: the Celery task of `cavsync.worker` or this process
(`indexer.jobs.supervisor.run_here`) calls `index_file`. Nothing here builds a Celery app or reads the environment.

A task takes paths, never tensors, and is idempotent by content hash: it claims its file's lease
(`indexer.jobs.records`), encodes the file into `pending/<sha256>.<model>.npz` (a temp file renamed; content
already indexed with the model is skipped), merges what is pending (`merge_pending`, below) and settles its file in
its job (`indexer.jobs.records`). Only transient errors (connections, timeouts, the database) are retried, with
backoff (`index_file` returns the delay; the caller waits or re-queues); past the retries, and at once for any
other error, the file is recorded failed with the error.

Merging: finished tasks' pending shards (`pending/<sha256>.<model>.npz`) into the catalog and the token
store, one merger at a time (the broker's merge lock; in process the store's file lock), through the one commit
path (`indexer.ingest.commit`, which `cavsync index` uses too); after each merge what a dead merger left is recovered.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
from sqlalchemy.exc import DBAPIError, OperationalError
from sqlalchemy.orm import Session, sessionmaker

from indexer.catalog.tables import FileIdentity, FileState, new_video, open_catalog
from indexer.cluster.corpus import Corpus, open_corpus
from indexer.ingest import commit, files
from indexer.ingest.pipeline import (
    MEDIA_SUFFIXES,
    Decoded,
    decode_hashed,
    encode_clips,
    model_id_of,
    needs_repair,
    repair_location,
)
from indexer.jobs import records
from indexer.jobs.broker import TRANSIENT_ERRORS, Broker, merge_lock
from indexer.jobs.sweep import drop_upload
from indexer.store.datadir import DataDir
from model import CAVMAESync, PreprocessConfig, load_model

log = logging.getLogger(__name__)

TRANSIENT: tuple[type[Exception], ...] = (
    ConnectionError,
    TimeoutError,
    OperationalError,
    *TRANSIENT_ERRORS,
)  # retried with backoff
MAX_RETRIES, RETRY_BACKOFF_MAX_S = 8, 300
DISK_FULL_RETRY_S = 10.0  # a catalog on a full disk cannot record anything: its file waits, tried this often


def disk_full(exc: BaseException) -> bool:
    """An error of a full disk (or quota): the OS's, or the database's saying so (SQLite's "database or disk is
    full", PostgreSQL's "could not extend file ... No space left on device")."""
    if isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return True
    return isinstance(exc, DBAPIError) and any(s in str(exc.orig).lower() for s in ("full", "no space left"))


@dataclass(frozen=True)
class TaskContext:
    """Where a task finds everything. The first four are plain strings that cross the broker; the broker (its
    merge lock) and the leases are the process's own settings."""

    model_path: str
    data_dir: str
    database_url: str
    job_id: str | None = None
    broker: Broker | None = field(default=None, compare=False)  # merges take its lock (one merger); None: in process
    lease_s: float = 60.0  # a worked-on file's lease (indexer.jobs.records), renewed every third of it
    queue_lease_s: float = 900.0  # how long a dispatched file may wait for a task before it counts as lost
    shards: int = 1  # the token store's shards (the process's own setting; a store of another count is refused)

    @property
    def data(self) -> DataDir:
        """The data dir's layout (the catalog's URL as given)."""
        return DataDir(Path(self.data_dir), self.database_url, self.shards)


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


class Retry(NamedTuple):
    """A transient failure of a task: run it again after `delay_s`."""

    delay_s: float
    error: BaseException

    @property
    def disk_full(self) -> bool:
        """The catalog's disk is full: nothing could be recorded, the file waits for space (attempts not counted)."""
        return disk_full(self.error)


class Source(NamedTuple):
    """Where an indexed file will be read from: its real path (an upload's managed copy), the name shown and
    its identity as hashed."""

    uri: str
    name: str
    identity: FileIdentity


def _source(ctx: TaskContext, path: str, sha: str, identity: FileIdentity, decoded: bool = True) -> Source:
    """An upload that decodes becomes a managed copy named by its content and shown by the name it was sent with;
    one that failed is not kept: recorded by that name alone, no path (`uri` empty: its temporary file goes once
    its job file is settled). Any other file is indexed, or recorded failed, where it is."""
    if not files.is_upload(path, ctx.data.uploads):
        return Source(str(Path(path).resolve()), Path(path).name, identity)
    name = files.sent_name(path) or Path(path).name
    if not decoded:
        return Source("", name, identity)
    managed = files.keep_managed(Path(path), sha, ctx.data.media, files.managed_suffix(name, MEDIA_SUFFIXES))
    return Source(str(managed), name, files.identity_of(managed.stat()))


def encode_to_shard(ctx: TaskContext, path: str, res: Resources) -> str:
    """Decode and encode one file into `pending/<sha>.<model>.npz`, atomically; returns the content hash.

    Nothing is written for content already indexed with the model (whose video, when its file is gone, points
    at this file from now on), or whose shard is already pending. An upload that decodes is kept as a managed
    copy (`indexer.ingest.files`), the video's file.
    """
    model_id = model_id_of(ctx.model_path)
    sha, identity = files.hash_with_identity(Path(path))
    target = ctx.data.pending / f"{sha}.{model_id}.npz"
    with res.sessions(ctx.database_url)() as session:
        if records.indexed(session, sha, model_id):
            if needs_repair(session, sha, model_id):
                source = _source(ctx, path, sha, identity)
                repair_location(session, sha, model_id, source.uri, source.identity, source.name)
                session.commit()
            return sha
    if target.exists():
        return sha
    model = res.model(ctx.model_path)
    item = decode_hashed(Path(path), sha, identity, model.config, PreprocessConfig())
    source = _source(ctx, path, sha, identity, decoded=item.error is None)
    if item.error is not None and not source.uri:  # a failed upload: named as it was sent, never by its temp file
        item.error = files.named_as_sent(item.error, path, source.name)
    ctx.data.pending.mkdir(parents=True, exist_ok=True)
    tmp = ctx.data.pending / f".{sha}.{uuid.uuid4().hex}.tmp.npz"
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


def settle_file(
    ctx: TaskContext, path: str, sha: str, res: Resources, merged: tuple[FileState, str | None] | None = None
) -> None:
    """After the merge: the file takes its own shard's outcome (`merged`), or when that shard was not merged
    here (its content was indexed, or failed, from another path or job) the catalog's outcome for its
    content; then the job is recounted."""
    if ctx.job_id is None:
        return
    with res.sessions(ctx.database_url)() as session:
        found = merged or records.outcome(session, sha, model_id_of(ctx.model_path))  # never overrides a settled file
        state, error = found or (None, None)
        records.settle(session, ctx.job_id, path, state, error)
        session.commit()


def fail_file(ctx: TaskContext, path: str, exc: BaseException, res: Resources) -> None:
    """Record a file's failure (the exception as text) in its job, and recount the job."""
    if ctx.job_id is None:
        return
    with res.sessions(ctx.database_url)() as session:
        records.settle(session, ctx.job_id, path, FileState.FAILED, f"{type(exc).__name__}: {exc}")
        session.commit()


def backoff_s(attempt: int) -> float:
    """Full-jitter exponential backoff: uniform in [0, min(cap, 2 ** attempt)] seconds."""
    return float(np.random.default_rng().uniform(0, min(RETRY_BACKOFF_MAX_S, 2**attempt)))


def _retry(exc: BaseException, attempt: int) -> Retry:
    return Retry(DISK_FULL_RETRY_S if disk_full(exc) else backoff_s(attempt), exc)


def index_file(ctx: TaskContext, path: str, res: Resources, attempt: int = 0, owner: str | None = None) -> Retry | None:
    """One task: claim the file's lease, encode the file into a shard, merge whatever is pending, settle the
    file in its job (an upload of the API is then deleted), renewing the lease meanwhile.

    A file that is settled, or leased by another live task, is left alone (a duplicate delivery). A transient
    error before the last attempt returns a `Retry` (the caller runs the task again after its delay; the lease
    is let go until then); past the retries, and at once for any other error, the file is recorded failed. A
    catalog on a full disk can record nothing: the task returns a `Retry` whose `disk_full` is set, whatever the
    attempt, every DISK_FULL_RETRY_S. `owner`: the lease's owner (a caller retrying in process passes the same
    one, so a lease it could not let go of is its own again); default a new one.
    """
    owner = owner or uuid.uuid4().hex
    try:
        if ctx.job_id is not None and not _claimed(ctx, path, owner, res):
            return _after_lease(ctx, path, res, attempt)
    except TRANSIENT as exc:  # the database away: try again later (the lease is not taken)
        return _retry(exc, attempt)
    with _lease(ctx, path, owner, res):
        retry = _attempt(ctx, path, res, attempt)
    if retry is not None and ctx.job_id is not None:
        with contextlib.suppress(Exception):  # not let go: the lease expires, and the reconciler sends it again
            records.release(res.sessions(ctx.database_url), ctx.job_id, path, owner, retry.delay_s + ctx.lease_s)
    elif retry is None:
        drop_upload(ctx.data.uploads, path)
    return retry


def _claimed(ctx: TaskContext, path: str, owner: str, res: Resources) -> bool:
    if records.claim(res.sessions(ctx.database_url), str(ctx.job_id), path, owner, ctx.lease_s):
        return True
    log.info("index %s: %s is settled, or leased by another task", ctx.job_id, path)
    return False


class LeaseHeld(RuntimeError):
    """Another task holds the file's lease: this delivery runs again once that lease would have expired."""


def _after_lease(ctx: TaskContext, path: str, res: Resources, attempt: int) -> Retry | None:
    """A delivery that found its file leased by another task (the broker redelivered the task of a worker that
    died, before its lease expired) waits for the lease to expire, then tries to claim it again; a settled
    file, or one still held after the retries, is left alone."""
    left = records.held_for(res.sessions(ctx.database_url), str(ctx.job_id), path)
    if left is None or attempt >= MAX_RETRIES:
        return None
    return Retry(left + 1.0, LeaseHeld(f"{path} is leased by another task for {left:.0f} s more"))


def _lease(ctx: TaskContext, path: str, owner: str, res: Resources) -> contextlib.AbstractContextManager[None]:
    if ctx.job_id is None:
        return contextlib.nullcontext()
    return records.renewing(res.sessions(ctx.database_url), ctx.job_id, path, owner, ctx.lease_s)


def _attempt(ctx: TaskContext, path: str, res: Resources, attempt: int) -> Retry | None:
    try:
        sha = encode_to_shard(ctx, path, res)
        merged = merge_pending(ctx, res, OwnShard(path, sha))
        settle_file(ctx, path, sha, res, merged.own)
    except TRANSIENT as exc:
        if attempt < MAX_RETRIES or disk_full(exc):
            retry = _retry(exc, attempt)
            log.warning("index %s: %s: %s; retry in %.1f s", ctx.job_id, path, exc, retry.delay_s)
            return retry
        log.error("index %s: %s: %s; giving up after %d retries", ctx.job_id, path, exc, MAX_RETRIES)
        return _recorded_failure(ctx, path, exc, res)
    except Exception as exc:
        log.exception("index %s: %s failed", ctx.job_id, path)
        return _recorded_failure(ctx, path, exc, res)
    return None


def _recorded_failure(ctx: TaskContext, path: str, exc: BaseException, res: Resources) -> Retry | None:
    """Record the file failed; a catalog on a full disk cannot: the file waits for space (a disk-full Retry)."""
    try:
        fail_file(ctx, path, exc, res)
    except Exception as failure:
        if not disk_full(failure):
            raise
        log.error("index %s: %s: %s; not recorded: %s", ctx.job_id, path, exc, failure)
        return Retry(DISK_FULL_RETRY_S, failure)
    return None


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
    model_id, store = model_id_of(ctx.model_path), open_corpus(ctx.data)
    try:
        merged = _merge_all(ctx, res, store, model_id, own)
    except BaseException:  # under the merge lock: no other merger has rows or a version half-written
        commit.recover(store, res.sessions(ctx.database_url), model_id)
        raise
    if merged.shards:
        commit.recover(store, res.sessions(ctx.database_url), model_id)
    return merged


def _merge_all(ctx: TaskContext, res: Resources, store: Corpus, model_id: str, own: OwnShard | None) -> Merged:
    shards = sorted(
        ctx.data.pending.glob(f"*.{model_id}.npz"), key=lambda s: (own is not None and s.name.startswith(own.sha), s)
    )
    count, outcome = 0, None
    for shard in shards:
        data = dict(np.load(shard))
        sha = shard.name.split(".", 1)[0]
        with res.sessions(ctx.database_url)() as session:
            if records.indexed(session, sha, model_id):
                state, error = FileState.SKIPPED, None
            else:
                state, error = _merge_one(session, store, data, sha, model_id)
            if _is_own(ctx, data, own):
                outcome = (state, error)
            else:
                records.settle(session, str(data["job"]) or None, str(data["path"]), state, error)
            session.commit()
        shard.unlink()
        count += 1
    return Merged(count, outcome)


def _is_own(ctx: TaskContext, data: dict[str, Any], own: OwnShard | None) -> bool:
    return (
        own is not None and ctx.job_id is not None and (str(data["job"]), str(data["path"])) == (ctx.job_id, own.path)
    )


def _merge_one(
    session: Session, store: Corpus, data: dict[str, Any], sha: str, model_id: str
) -> tuple[FileState, str | None]:
    """One shard into the catalog and the store (`indexer.ingest.commit`); returns its file's state and error."""
    uri = str(data["uri"])
    name = str(data["name"]) if "name" in data else Path(uri).name  # shards written before names were
    identity = (int(data["identity"][0]), int(data["identity"][1])) if "identity" in data else None
    if "error" in data:
        error = str(data["error"])
        commit.commit_failure(session, uri, sha, model_id, error, name=name)
        return FileState.FAILED, error
    rows = zip(data["starts"], data["durations"], data["modalities"], strict=True)
    clips = [(float(s), float(d), str(m)) for s, d, m in rows]
    video = new_video(uri, sha, model_id, clips, name=name, identity=identity)
    commit.commit_videos(session, store, model_id, [video], data["audio"], data["visual"], data["present"])
    return FileState.INDEXED, None


def merge_pending(ctx: TaskContext, res: Resources, own: OwnShard | None = None) -> Merged:
    """`merge_shards` under the broker's merge lock (one merger across machines, `indexer.jobs.broker`); in
    process (no broker) the store's file lock serialises."""
    with merge_lock(ctx.broker):
        return merge_shards(ctx, res, own)
