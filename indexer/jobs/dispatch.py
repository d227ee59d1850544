"""Dispatching a job: its queued files marked running and given a queue lease (`indexer.jobs.leases`), then
each file's task published through the broker (`Send`: a broker that takes none fails the job and raises
`QueueUnavailable`) or, without one, run here one after the other (`run_here`).
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import threading
import time
import uuid
from collections.abc import Callable, Sequence

from sqlalchemy.orm import Session, sessionmaker

from indexer.jobs import leases, records
from indexer.jobs.broker import PUBLISH_ERRORS, Send
from indexer.jobs.records import QueueUnavailable
from indexer.jobs.task import MAX_RETRIES, Resources, TaskContext, fail_file, index_file

log = logging.getLogger(__name__)

Blocked = Callable[[str, str | None], None]  # (job id, why it cannot progress, None once it does again)


def run_here(
    ctx: TaskContext,
    paths: Sequence[str],
    res: Resources,
    stop: threading.Event | None = None,
    blocked: Blocked | None = None,
) -> None:
    """The tasks of a job in this process, one file after the other; a transient error waits its backoff and
    runs again. A catalog on a full disk records nothing: the file is tried again every DISK_FULL_RETRY_S
    (attempts not counted) and `blocked(job_id, why)` told, then `blocked(job_id, None)` once a file settles.
    Once `stop` is set the files not begun fail with `records.STOPPED`."""
    job_id = str(ctx.job_id)
    for done, path in enumerate(paths):
        if stop is not None and stop.is_set():
            records.fail_files(res.sessions(ctx.database_url), job_id, paths[done:], records.STOPPED)
            return
        owner, attempt = uuid.uuid4().hex, 0  # one owner: a lease it could not let go of is its own again
        try:
            while True:
                retry = index_file(ctx, path, res, attempt, owner)
                if retry is None or (attempt >= MAX_RETRIES and not retry.disk_full):
                    break
                if retry.disk_full:
                    if blocked is not None:
                        blocked(job_id, records.DISK_FULL.format(error=_first_line(retry.error)))
                else:
                    attempt += 1
                if _waited_stopped(stop, retry.delay_s):
                    break
        except Exception as exc:  # the catalog itself failing: the next file may still go through
            log.exception("index job %s: %s failed", ctx.job_id, path)
            with contextlib.suppress(Exception):
                fail_file(ctx, path, exc, res)
        if blocked is not None:
            blocked(job_id, None)


def _first_line(error: BaseException) -> str:
    return f"{type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''}"


def _waited_stopped(stop: threading.Event | None, delay_s: float) -> bool:
    """Wait `delay_s` (cut short by `stop`); whether `stop` is set."""
    if stop is None:
        time.sleep(delay_s)
        return False
    return stop.wait(delay_s)


def _publish(ctx: TaskContext, paths: list[str], publish: Send, sessions: sessionmaker[Session]) -> None:
    job_id = str(ctx.job_id)
    for sent, path in enumerate(paths):
        try:
            publish(job_id, path, ctx)
        except Exception as exc:
            log.error("index job %s: the broker took %d of %d tasks: %s", job_id, sent, len(paths), exc)
            try:
                records.fail_files(sessions, job_id, paths[sent:], f"not queued: {type(exc).__name__}: {exc}")
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
    publish: Send | None = None,
    stop: threading.Event | None = None,
    blocked: Blocked | None = None,
) -> None:
    """Run a created job (`ctx.job_id`): one task per queued file, published, or run here one after the other
    without a publisher (until `stop` is set; `blocked`: see `run_here`). Raises `QueueUnavailable` (the job
    marked failed) when the broker takes no task."""
    sessions = res.sessions(ctx.database_url)
    paths = records.mark_running(sessions, str(ctx.job_id))
    with sessions() as session:  # lost from here on (a dead API, a broker that forgot them): sent again
        leases.dispatched(session, str(ctx.job_id), paths, ctx.queue_lease_s)
        session.commit()
    if publish is None:
        run_here(ctx, paths, res, stop, blocked)
    else:
        _publish(ctx, paths, publish, sessions)


def start_job(
    paths: Sequence[str | os.PathLike[str]], ctx: TaskContext, res: Resources, *, publish: Send | None = None
) -> str:
    """`records.create_job` then `dispatch_job`; returns the job id."""
    job_id = records.create_job(res.sessions(ctx.database_url), paths)
    dispatch_job(dataclasses.replace(ctx, job_id=job_id), res, publish=publish)
    return job_id
