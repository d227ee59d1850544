"""A Redis lock for work that must run alone across machines, which frees soon after its holder dies.

The lock lives `ttl_s` and a thread of the holder renews it every third of that while the work runs,
so a killed holder blocks the others for at most `ttl_s`, while a live one keeps it however long it
works (a lock with a long fixed timeout would stay taken for all of it after a crash).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator
from contextlib import contextmanager

import redis

log = logging.getLogger(__name__)


@contextmanager
def renewed_lock(url: str, name: str, ttl_s: float, wait_s: float) -> Iterator[None]:
    """Hold the Redis lock `name` (waiting up to `wait_s`: redis.exceptions.LockError past it) while the
    body runs, renewing it every ttl_s / 3."""
    lock = redis.Redis.from_url(url).lock(
        name, timeout=ttl_s, blocking_timeout=wait_s, thread_local=False
    )  # # the renewer uses the holder's token
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
