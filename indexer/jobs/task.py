"""The body of one index task, as plain functions: the Celery task of `cavsync.worker` or this process
(`indexer.jobs.supervisor.run_here`) calls `index_file` with a `TaskRun` (`indexer.jobs.context`). Nothing here
builds a Celery app or reads the environment.

A task takes paths, never tensors, and is idempotent by content hash: it takes its file's lease
(`indexer.jobs.leases.FileLease`), encodes the file into `pending/<sha256>.<model>.npz` (`encode_file`: a temp
file renamed; content already indexed with the model is skipped), merges what is pending
(`indexer.jobs.merge.merge_pending`) and settles its file in its job (`indexer.jobs.records`); an upload of the
API is then deleted. Only transient errors (connections, timeouts, the database) are retried, with backoff
(`index_file` returns the delay; the caller waits or re-queues); past the retries, and at once for any other
error, the file is recorded failed with the error.
"""

from __future__ import annotations

import errno
import logging
import uuid
from pathlib import Path
from typing import NamedTuple

import numpy as np
from sqlalchemy.exc import DBAPIError, OperationalError

from indexer.ingest import files
from indexer.ingest.pending import write_encoding
from indexer.ingest.pipeline import MEDIA_SUFFIXES, decode_hashed, encode_clips, relocate
from indexer.jobs import records
from indexer.jobs.broker import TRANSIENT_ERRORS
from indexer.jobs.context import TaskRun
from indexer.jobs.leases import FileLease
from indexer.jobs.merge import OwnEncoding, merge_pending
from model import PreprocessConfig

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


class Retry(NamedTuple):
    """A transient failure of a task: run it again after `delay_s`."""

    delay_s: float
    error: BaseException

    @property
    def disk_full(self) -> bool:
        """The catalog's disk is full: nothing could be recorded, the file waits for space (attempts not counted)."""
        return disk_full(self.error)


def encode_file(run: TaskRun, path: str) -> str:
    """Decode and encode one file into its pending encoding `pending/<sha>.<model>.npz`, atomically; returns the
    content hash.

    Nothing is written for content already indexed with the model (whose video, when its file is gone, points
    at this file from now on), or whose encoding is already pending. An upload that decodes is kept as a managed
    copy (`indexer.ingest.files`), the video's file.
    """
    sha, identity = files.hash_with_identity(Path(path))
    target = run.data.pending / f"{sha}.{run.model_id}.npz"
    with run.sessions() as session:
        if records.indexed(session, sha, run.model_id):
            relocate(session, run.data, path, sha, identity, run.model_id)
            session.commit()
            return sha
    if target.exists():
        return sha
    model = run.model()
    item = decode_hashed(Path(path), sha, identity, model.config, PreprocessConfig())
    source = files.source_of(path, sha, identity, run.data, MEDIA_SUFFIXES, decoded=item.error is None)
    if item.error is not None and not source.uri:  # a failed upload: named as it was sent, never by its temp file
        item.error = files.named_as_sent(item.error, path, source.name)
    tokens = None if item.error is not None else encode_clips(model, item.clips)
    write_encoding(target, run.job_id, path, source, item, tokens)
    return sha


def backoff_s(attempt: int) -> float:
    """Full-jitter exponential backoff: uniform in [0, min(cap, 2 ** attempt)] seconds."""
    return float(np.random.default_rng().uniform(0, min(RETRY_BACKOFF_MAX_S, 2**attempt)))


def _retry(exc: BaseException, attempt: int) -> Retry:
    return Retry(DISK_FULL_RETRY_S if disk_full(exc) else backoff_s(attempt), exc)


def index_file(run: TaskRun, path: str, attempt: int = 0, owner: str | None = None) -> Retry | None:
    """One task: take the file's lease, encode the file, merge whatever is pending, settle the file in its job
    (an upload of the API is then deleted), holding the lease meanwhile.

    A file that is settled, or leased by another live task, is left alone (a duplicate delivery). A transient
    error before the last attempt returns a `Retry` (the caller runs the task again after its delay; the lease
    is let go until then); past the retries, and at once for any other error, the file is recorded failed. A
    catalog on a full disk can record nothing: the task returns a `Retry` whose `disk_full` is set, whatever the
    attempt, every DISK_FULL_RETRY_S. `owner`: the lease's owner (a caller retrying in process passes the same
    one, so a lease it could not let go of is its own again); default a new one.
    """
    if run.job_id is None:
        retry = _attempt(run, path, attempt)
    else:
        lease = FileLease(run.sessions, run.job_id, path, owner or uuid.uuid4().hex, run.ctx.lease_s)
        try:
            taken = lease.take()
        except TRANSIENT as exc:  # the database away: try again later (the lease is not taken)
            return _retry(exc, attempt)
        if not taken.taken:
            return _after_lease(path, taken.held_for, attempt)
        with lease.held() as hold:
            retry = _attempt(run, path, attempt)
            hold.let_go_after_s = None if retry is None else retry.delay_s + run.ctx.lease_s
    if retry is None:
        files.drop_upload(run.data.uploads, path)
    return retry


class LeaseHeld(RuntimeError):
    """Another task holds the file's lease: this delivery runs again once that lease would have expired."""


def _after_lease(path: str, held_for: float | None, attempt: int) -> Retry | None:
    """A delivery that found its file leased by another task (the broker redelivered the task of a worker that
    died, before its lease expired) waits for the lease to expire, then tries to take it again; a settled
    file, or one still held after the retries, is left alone."""
    if held_for is None or attempt >= MAX_RETRIES:
        return None
    return Retry(held_for + 1.0, LeaseHeld(f"{path} is leased by another task for {held_for:.0f} s more"))


def _attempt(run: TaskRun, path: str, attempt: int) -> Retry | None:
    try:
        sha = encode_file(run, path)
        merged = merge_pending(run, OwnEncoding(path, sha))
        records.settle_file(run.sessions, run.job_id, path, sha, run.model_id, merged.own)
    except TRANSIENT as exc:
        if attempt < MAX_RETRIES or disk_full(exc):
            retry = _retry(exc, attempt)
            log.warning("index %s: %s: %s; retry in %.1f s", run.job_id, path, exc, retry.delay_s)
            return retry
        log.error("index %s: %s: %s; giving up after %d retries", run.job_id, path, exc, MAX_RETRIES)
        return _recorded_failure(run, path, exc)
    except Exception as exc:
        log.exception("index %s: %s failed", run.job_id, path)
        return _recorded_failure(run, path, exc)
    return None


def _recorded_failure(run: TaskRun, path: str, exc: BaseException) -> Retry | None:
    """Record the file failed; a catalog on a full disk cannot: the file waits for space (a disk-full Retry)."""
    try:
        records.fail_file(run.sessions, run.job_id, path, exc)
    except Exception as failure:
        if not disk_full(failure):
            raise
        log.error("index %s: %s: %s; not recorded: %s", run.job_id, path, exc, failure)
        return Retry(DISK_FULL_RETRY_S, failure)
    return None
