"""The broker behind one small object: what the job subsystem needs of a queue (publish a file's task, the
queue's depth, whether the broker kept its data, the merge lock). The composition root builds it
(`cavsync.worker.broker`) and passes it down; nothing else in the job subsystem talks to Redis or Celery.

`Broker` is the protocol; `RedisBroker` is a Redis-backed one: Celery publishes (the `send` callable the root
gives it), the rest is plain Redis. Without a broker (`None`) jobs run in the API process and merges are
serialised by the token store's file lock.

The merge lock (`RedisBroker.merge_lock`) lives `lock_ttl_s` (`CAVSYNC_MERGE_LOCK_TTL_S`) and a thread of the
holder renews it every third of that while the work runs, so a killed holder blocks the others for at most
`lock_ttl_s`, while a live one keeps it however long it works.

Broker loss: `kept_data` sets a marker key once; a broker that answers without it lost its data (a Redis
restarted without persistence) and the supervisor sends the files it had queued there again at once.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import threading
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass
from typing import NamedTuple, Protocol

import redis
from kombu.exceptions import OperationalError as KombuOperationalError

log = logging.getLogger(__name__)

# errors of the broker: a publish that failed; transient ones (a task retries): redis' own errors are no
# builtin ConnectionError, LockError: the merge lock not had within its wait
PUBLISH_ERRORS: tuple[type[Exception], ...] = (KombuOperationalError, OSError, redis.exceptions.RedisError)
TRANSIENT_ERRORS: tuple[type[Exception], ...] = (
    redis.exceptions.ConnectionError,
    redis.exceptions.TimeoutError,
    redis.exceptions.LockError,
)

MERGE_LOCK = "cavsync:merge"  # the one name of the merge lock
MERGE_LOCK_WAIT_S = 600.0  # a task waits this long for the merge lock (then retries)
PROBE_TIMEOUT_S = 2.0  # a health check's ping


class TaskMessage(NamedTuple):
    """What crosses the broker with one file's task besides its job and path: plain strings (the model's
    checkpoint, the data dir and the catalog's URL as the sender sees them; `indexer.jobs.context.TaskContext`)."""

    model_path: str
    data_dir: str
    database_url: str


class Send(Protocol):
    """Sends the task of one file to the workers (raises when the broker does not take it)."""

    def __call__(self, job_id: str, path: str, message: TaskMessage) -> None: ...


class Broker(Protocol):
    """What the job subsystem needs of a queue."""

    def publish(self, job_id: str, path: str, message: TaskMessage) -> None:
        """Send one file's task (raises when the broker does not take it)."""
        ...

    def queue_depth(self) -> int:
        """Tasks waiting in the queue (0 when unknown or unreachable)."""
        ...

    def kept_data(self) -> bool | None:
        """Whether the broker still holds what it held at the last call: True; False when it answers but lost
        its data (restarted empty: this call marks it again, so exactly one caller sees False); None when
        unreachable."""
        ...

    def ping(self) -> bool:
        """Whether the broker answers (within a couple of seconds)."""
        ...

    def merge_lock(self, wait_s: float = MERGE_LOCK_WAIT_S) -> AbstractContextManager[None]:
        """Hold the merge lock while the body runs (one merger across machines); raises
        `redis.exceptions.LockError` when not had within `wait_s`."""
        ...


@dataclass(frozen=True)
class RedisBroker:
    """A Redis broker: Celery publishes through `send`; the queue `queue`, the marker and the lock are plain
    Redis keys. Every command times out after `timeout_s`."""

    url: str
    send: Send
    queue: str = "cavsync"
    lock_ttl_s: float = 30.0
    timeout_s: float = 5.0

    def _client(self) -> redis.Redis[bytes]:
        return _redis(self.url, self.timeout_s)

    def publish(self, job_id: str, path: str, message: TaskMessage) -> None:
        self.send(job_id, path, message)

    def queue_depth(self) -> int:
        """Tasks waiting in the queue. A file whose queue lease expired while tasks still wait there may be one
        of them: it is not sent again until the queue drains, so a long backlog is not taken for lost tasks."""
        try:
            return int(self._client().llen(self.queue))
        except redis.RedisError as exc:
            log.warning("queue depth unknown: %s", exc)
            return 0

    @property
    def marker(self) -> str:
        return f"cavsync:{self.queue}:alive"

    def kept_data(self) -> bool | None:
        try:
            return not self._client().set(self.marker, "1", nx=True)
        except redis.RedisError as exc:
            log.warning("broker unreachable: %s", exc)
            return None

    def ping(self) -> bool:
        try:
            return bool(_redis(self.url, PROBE_TIMEOUT_S).ping())
        except redis.RedisError as exc:  # any failure to reach it is the answer
            log.warning("broker %s unreachable: %s", self.url.split("@")[-1], exc)
            return False

    def merge_lock(self, wait_s: float = MERGE_LOCK_WAIT_S) -> AbstractContextManager[None]:
        return renewed_lock(self.url, MERGE_LOCK, self.lock_ttl_s, wait_s)


@functools.lru_cache(maxsize=8)
def _redis(url: str, timeout_s: float) -> redis.Redis[bytes]:
    """One client (and connection pool, thread-safe) per URL and timeout, not one per call: `/health` pings."""
    return redis.Redis.from_url(url, socket_connect_timeout=timeout_s, socket_timeout=timeout_s)


def queue_state(broker: Broker | None) -> str:
    """`in-process` without a broker, else whether the broker answers: `reachable` or `unreachable`."""
    if broker is None:
        return "in-process"
    return "reachable" if broker.ping() else "unreachable"


def merge_lock(broker: Broker | None, wait_s: float = MERGE_LOCK_WAIT_S) -> AbstractContextManager[None]:
    """The broker's merge lock; without a broker none (the store's file lock serialises in one process)."""
    return contextlib.nullcontext() if broker is None else broker.merge_lock(wait_s)


@contextmanager
def renewed_lock(url: str, name: str, ttl_s: float, wait_s: float) -> Iterator[None]:
    """Hold the Redis lock `name` (waiting up to `wait_s`: redis.exceptions.LockError past it) while the
    body runs, renewing it every ttl_s / 3."""
    lock = redis.Redis.from_url(url).lock(
        name, timeout=ttl_s, blocking_timeout=wait_s, thread_local=False
    )  # the renewer uses the holder's token
    with lock:
        stop = threading.Event()
        renewer = threading.Thread(target=_renew, args=(lock, stop, ttl_s / 3), name=f"renew {name}", daemon=True)
        renewer.start()
        try:
            yield
        finally:
            stop.set()
            renewer.join()


def _renew(lock: redis.lock.Lock, stop: threading.Event, every_s: float) -> None:
    while not stop.wait(every_s):
        try:
            lock.reacquire()
        except redis.exceptions.RedisError as exc:  # lost (it expired while this process stalled): say so
            log.error("lock %s could not be renewed: %s", lock.name, exc)
            return
