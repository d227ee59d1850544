"""The Celery app of the indexing workers, built from `Settings` (nothing is built at import):

    CAVSYNC_BROKER_URL=redis://127.0.0.1:6379/0 celery -A cavsync.worker worker --concurrency 2

The task is a thin shell over `indexer.jobs.task.index_file`, given the `TaskRun` of the message it received
(`indexer.jobs.context`: the data dir and catalog the message names, this process's shard count, leases and
broker): acknowledged late with a prefetch of 1 (the task
of a killed worker is delivered again), retried with backoff only for the transient errors that function
reports. `broker(settings, app)` is the one broker object (`indexer.jobs.broker.RedisBroker`: publish through
this app, queue depth, whether the broker kept its data, the merge lock with `CAVSYNC_MERGE_LOCK_TTL_S`) that
the API and the workers use; broker connections and publishes time out after `CAVSYNC_BROKER_TIMEOUT_S`.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any

from celery import Celery, Task

from cavsync.settings import Settings
from indexer.jobs import task as tasks
from indexer.jobs.broker import RedisBroker, Send, TaskMessage
from indexer.jobs.context import Resources, TaskContext, TaskRun
from indexer.jobs.sweep import dead_decode_folders
from model.media import use_ffmpeg

TASK_NAME = "cavsync.index_file"
REDIS_SCHEMES = ("redis://", "rediss://", "unix://")


def make_app(settings: Settings) -> Celery:
    """A Celery app for `settings.broker_url` with the index task registered."""
    use_ffmpeg(settings.ffmpeg)
    timeout = settings.broker_timeout_s
    celery = Celery("cavsync", broker=settings.broker_url or "memory://", backend=None)
    celery.conf.update(
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        worker_prefetch_multiplier=1,
        task_time_limit=settings.task_time_limit_s,
        broker_connection_timeout=timeout,
        broker_transport_options={
            "visibility_timeout": settings.visibility_timeout_s,
            "socket_connect_timeout": timeout,
            "socket_timeout": timeout,  # above the workers' 1 s BRPOP
        },
        task_default_queue=settings.queue,  # deployments sharing a broker keep to their own queue
        task_publish_retry_policy={"max_retries": 2, "interval_start": 0, "interval_step": 0.5, "interval_max": 1},
        broker_connection_retry_on_startup=True,
    )
    resources = Resources()  # one model and one catalog engine per worker process
    own = TaskContext(
        str(settings.model_path), settings.data(), lease_s=settings.lease_s, queue_lease_s=settings.queue_lease_s
    )
    dead_decode_folders()  # decode folders of killed workers on this machine

    @celery.task(bind=True, name=TASK_NAME, max_retries=tasks.MAX_RETRIES, shared=False)  # this app only
    def index_file(self: Task, job_id: str, path: str, model_path: str, data_dir: str, database_url: str) -> str:
        """Encode one file, merge whatever is pending, settle the file in its job."""
        ctx = own.received(TaskMessage(model_path, data_dir, database_url), job_id or None)
        retry = tasks.index_file(TaskRun.open(ctx, resources), path, self.request.retries)
        if retry is not None:
            raise self.retry(exc=retry.error, countdown=retry.delay_s)
        return path

    if (settings.broker_url or "").startswith(REDIS_SCHEMES):  # another broker: merges take the store's lock only
        own = dataclasses.replace(own, broker=broker(settings, celery))  # built once the task is registered
    return celery


def broker(settings: Settings, celery: Celery | None = None) -> RedisBroker:
    """The broker object of `settings.broker_url` (a Redis URL) publishing through `celery` (default: a new
    app of the settings): what the API's supervisor and the workers' merges are given."""
    if not (settings.broker_url or "").startswith(REDIS_SCHEMES):
        raise ValueError(f"CAVSYNC_BROKER_URL={settings.broker_url!r}: the broker must be Redis (redis://...)")
    return RedisBroker(
        settings.broker_url or "",
        publisher(celery or make_app(settings)),
        queue=settings.queue,
        lock_ttl_s=settings.merge_lock_ttl_s,
        timeout_s=settings.broker_timeout_s,
    )


def publisher(celery: Celery) -> Send:
    """Publishes one index task per call on the app's broker (`RedisBroker`'s `send`)."""
    task = celery.tasks[TASK_NAME]

    def publish(job_id: str, path: str, message: TaskMessage) -> None:
        task.delay(job_id, path, message.model_path, message.data_dir, message.database_url)

    return publish


@functools.cache
def default_app() -> Celery:
    return make_app(Settings())


def __getattr__(name: str) -> Any:
    """`celery -A cavsync.worker` looks up `app`: built from the environment's settings on first use."""
    if name in ("app", "celery"):
        return default_app()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
