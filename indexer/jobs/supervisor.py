"""The supervisor of index jobs: it starts them (published through the broker, or run in a thread of this
process), keeps them alive and stops them.

At `start` and every `reconcile_interval_s` it sweeps (`indexer.jobs.sweep`; at start the data dir, every round
the decode folders of dead processes) and reconciles: the leases of the jobs it runs are renewed, jobs an earlier
process never started are dispatched, files whose lease expired (their worker, an earlier API process or the
broker's queue lost them) are sent again or failed (`indexer.jobs.leases`), and a broker that came back empty
(`Broker.kept_data`) has every file it held sent again at once. At `close` in-process jobs stop after their
current file and the files not done fail with `records.STOPPED`.

It also knows why a job it supervises is not progressing (`blocked`): a catalog on a full disk records nothing,
so the job cannot say so itself; the API shows it with the job.

Dispatching a job (`dispatch_job`, given the job's `TaskRun`): its queued files marked running
(`indexer.jobs.records`) and given a queue lease (`indexer.jobs.leases`), then each file's task published through
the broker (`Send`, with the run's `TaskMessage`: a broker that takes none fails the job and raises
`QueueUnavailable`) or, without one, run here one after the other (`run_here`).
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor, wait
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy.orm import Session, sessionmaker

from indexer.ingest.pipeline import model_id_of
from indexer.jobs import leases, records, sweep
from indexer.jobs.broker import PUBLISH_ERRORS, Broker, Send, TaskMessage
from indexer.jobs.context import Resources, TaskContext, TaskRun
from indexer.jobs.leases import LeaseConfig
from indexer.jobs.records import QueueUnavailable
from indexer.jobs.task import MAX_RETRIES, disk_full, index_file
from indexer.store.datadir import DataDir

log = logging.getLogger(__name__)

SWEEP_LOCK_WAIT_S = 5.0  # the merge lock busy at start: the next merge sweeps


@dataclass(frozen=True)
class SupervisorConfig:
    """What the supervisor needs: the model (its path resolved), the data dir, the leases, how often it
    reconciles and how long stopping waits for the file being indexed in process."""

    model_path: Path
    data: DataDir
    leases: LeaseConfig = LeaseConfig()
    reconcile_interval_s: float = 15.0
    shutdown_grace_s: float = 10.0


class Supervisor:
    """Starts index jobs: through the broker when one is given, else in a thread of this process; reconciles
    and sweeps at `start` and every `reconcile_interval_s`; stops its in-process jobs at `close`."""

    def __init__(self, config: SupervisorConfig, sessions: sessionmaker[Session], broker: Broker | None = None) -> None:
        self.config, self.sessions, self.broker = config, sessions, broker
        self.mode = "broker" if broker is not None else "in-process"
        self._pool = None if broker is not None else ThreadPoolExecutor(1, thread_name_prefix="cavsync-index")
        self._stop = threading.Event()  # set by close(): in-process jobs stop after their current file
        self._futures: dict[str, Future[None]] = {}  # in-process jobs this supervisor holds (waiting or running)
        self._resources = Resources(catalogs={config.data.catalog_url: sessions})  # the model loaded once
        self._reconciler: threading.Thread | None = None
        self._blocked: dict[str, str] = {}  # in-process jobs that cannot progress, and why
        self._problem: str | None = None  # the last reconciling round's failure, when the disk is full

    @property
    def queue_wait_s(self) -> float:
        """A dispatched file's lease until a task claims it: in process, this supervisor renews it every
        reconcile interval while it holds the job; on a broker nobody can, so it covers a long wait in the queue."""
        leases_ = self.config.leases
        return leases_.lease_s if self._pool is not None else leases_.queue_lease_s

    def run(self, job_id: str) -> TaskRun:
        """The run of a job's tasks: its context (this process's data dir, leases and broker), the catalog's
        sessions and the model's id."""
        c = self.config
        ctx = TaskContext(
            str(c.model_path.resolve()),
            dataclasses.replace(c.data, root=c.data.root.resolve()),  # as sent: the folder wherever a task runs
            job_id,
            broker=self.broker,
            lease_s=c.leases.lease_s,
            queue_lease_s=self.queue_wait_s,
        )
        return TaskRun.open(ctx, self._resources)

    def blocked(self, job_id: str) -> str | None:
        """Why this unfinished job is not progressing now (the server's disk is full), None when nothing stops it."""
        return self._blocked.get(job_id) or self._problem

    def _note_blocked(self, job_id: str, why: str | None) -> None:
        if why is None:
            self._blocked.pop(job_id, None)
        else:
            if job_id not in self._blocked:
                log.error("index job %s: %s", job_id, why)
            self._blocked[job_id] = why

    def submit(self, paths: list[Path], uploaded: bool = False, names: list[str | None] | None = None) -> str:
        """Record the job and start it; returns its id (blocking: a few catalog writes, and with a broker the
        publishing, which fails within the broker timeout: `records.QueueUnavailable`, the job marked failed,
        and `uploaded` files no task was sent for deleted). `names`: the name each upload was sent with."""
        job_id = records.create_job(self.sessions, [str(p) for p in paths], names)
        leases.hold_jobs(self.sessions, [job_id], self.queue_wait_s)  # lost with this process if it dies now
        if self._pool is not None:
            self._futures[job_id] = self._pool.submit(self._run, job_id)
            return job_id
        try:
            dispatch_job(self.run(job_id), publish=self._publish)
        except records.QueueUnavailable as exc:
            for path in exc.unsent if uploaded else ():
                Path(path).unlink(missing_ok=True)
            raise
        return job_id

    def _publish(self, job_id: str, path: str, message: TaskMessage) -> None:
        assert self.broker is not None  # only a broker supervisor publishes
        self.broker.publish(job_id, path, message)

    def _run(self, job_id: str) -> None:
        try:  # the tasks run here, one file after the other, until close() sets the stop flag
            dispatch_job(self.run(job_id), stop=self._stop, blocked=self._note_blocked)
        except Exception:  # a file's failure is recorded by its task; this is the catalog itself failing
            log.exception("index job %s stopped", job_id)

    def _rerun(self, job_id: str, paths: list[str]) -> None:
        try:
            run_here(self.run(job_id), paths, self._stop, self._note_blocked)
        except Exception:
            log.exception("index job %s stopped", job_id)

    # ------------------------------------------------------------------------------------ reconciling
    def start(self) -> None:
        """Sweep the data dir, reconcile once, then keep reconciling in a daemon thread (blocking: run it off
        the event loop). Failures are logged: the next round tries again."""
        for step in (self.sweep, self.reconcile):
            try:
                step()
            except Exception as exc:
                log.exception("index jobs: %s at start failed", step.__name__)
                self._problem = _disk_problem(exc)
        self._reconciler = threading.Thread(target=self._reconcile_loop, name="cavsync-reconcile", daemon=True)
        self._reconciler.start()

    def _reconcile_loop(self) -> None:
        while not self._stop.wait(self.config.reconcile_interval_s):
            try:
                self.reconcile()
                self._problem = None
            except Exception as exc:  # the database away for a while: the next round tries again
                log.warning("index jobs: reconciling failed: %s", exc)
                self._problem = _disk_problem(exc)
            with contextlib.suppress(Exception):
                sweep.dead_decode_folders()

    def _held(self) -> list[str]:
        return [job_id for job_id, future in list(self._futures.items()) if not future.done()]

    def sweep(self) -> None:
        """What dead writers left in the data dir (under the merge lock with a broker: no merge runs then), and
        the decode folders of processes that are gone."""
        c = self.config
        model_id = model_id_of(c.model_path)
        if self.broker is not None:
            with self.broker.merge_lock(SWEEP_LOCK_WAIT_S):
                sweep.sweep_data_dir(c.data, self.sessions, model_id, c.leases.lease_s)
        else:
            sweep.sweep_data_dir(c.data, self.sessions, model_id, c.leases.lease_s)
        sweep.dead_decode_folders()

    def reconcile(self) -> int:
        """One round: renew the jobs this process holds, dispatch jobs an earlier process never started, send
        again what a broker that came back empty lost, send lost files again (or fail them past
        `max_dispatches`); returns the files sent again or failed."""
        held = self._held()
        leases.hold_jobs(self.sessions, held, self.queue_wait_s)
        for job_id in leases.stale_queued_jobs(self.sessions, held):
            log.warning("index job %s was never started (its process stopped): starting it", job_id)
            self._dispatch_again(job_id, None)
        resent = self._after_broker_loss(held)
        lost = leases.expired(self.sessions, held)
        if self.broker is not None and any(not f.claimed for f in lost) and self.broker.queue_depth():
            waiting = [f for f in lost if not f.claimed]  # the broker still has tasks to hand out: maybe theirs
            leases.still_queued(self.sessions, waiting, self.queue_wait_s)
            lost = [f for f in lost if f.claimed]
        return resent + self._send_again(lost, expired_only=True)

    def _after_broker_loss(self, held: list[str]) -> int:
        """A broker that answers without the data it had (restarted empty) lost every queued task: the files
        no task has claimed are sent again now rather than when their queue lease expires."""
        if self.broker is None or self.broker.kept_data() is not False:
            return 0
        unclaimed = leases.unclaimed(self.sessions, held)
        if unclaimed:
            log.warning("index jobs: %s", records.BROKER_LOST.format(n=len(unclaimed)))
        return self._send_again(unclaimed, expired_only=False)

    def _send_again(self, lost: list[leases.Lost], *, expired_only: bool) -> int:
        limit = self.config.leases.max_dispatches
        leases.give_up(self.sessions, [f for f in lost if f.dispatches >= limit])
        again: dict[str, list[str]] = {}
        for item in (f for f in lost if f.dispatches < limit):
            if leases.take_for_redispatch(self.sessions, item, self.queue_wait_s, expired_only=expired_only):
                again.setdefault(item.job_id, []).append(item.path)
        for job_id, paths in again.items():
            log.warning("index job %s: %d file(s) lost: sent again", job_id, len(paths))
            self._dispatch_again(job_id, paths)
        return len(lost)

    def _dispatch_again(self, job_id: str, paths: list[str] | None) -> None:
        """A job never started (`paths` None) or its lost files, sent to the workers or this process's queue."""
        if self._pool is not None:
            work = (self._run, job_id) if paths is None else (self._rerun, job_id, paths)
            self._futures[job_id] = self._pool.submit(*work)
            return
        run = self.run(job_id)
        if paths is None:
            with contextlib.suppress(records.QueueUnavailable):  # the job is marked failed with the reason
                dispatch_job(run, publish=self._publish)
            return
        message = run.ctx.message
        for path in paths:
            try:
                self._publish(job_id, path, message)
            except Exception as exc:  # the lease expires again: the next round retries, then gives up
                log.warning("index job %s: %s not sent again: %s", job_id, path, exc)

    def close(self) -> None:
        """Stop reconciling. In-process jobs stop after their current file (waited for `shutdown_grace_s`); the
        files not done, and jobs never started, fail with records.STOPPED now (indexing them again skips what
        was done), since the process may be gone right after. Jobs on the workers are theirs."""
        self._stop.set()
        if self._pool is None:
            return
        held = self._held()
        self._pool.shutdown(wait=False, cancel_futures=True)
        running = [f for f in self._futures.values() if f.running()]
        wait(running, timeout=self.config.shutdown_grace_s)
        for job_id in held:
            try:
                records.fail_unstarted(self.sessions, job_id)
            except Exception:
                log.exception("index job %s: cannot mark it stopped", job_id)


def _disk_problem(exc: BaseException) -> str | None:
    """What a job shows while the catalog's disk is full; None for any other failure."""
    if not disk_full(exc):
        return None
    return records.DISK_FULL.format(error=_first_line(exc))


Blocked = Callable[[str, str | None], None]  # (job id, why it cannot progress, None once it does again)


def run_here(
    run: TaskRun,
    paths: Sequence[str],
    stop: threading.Event | None = None,
    blocked: Blocked | None = None,
) -> None:
    """The tasks of a job in this process, one file after the other; a transient error waits its backoff and
    runs again. A catalog on a full disk records nothing: the file is tried again every DISK_FULL_RETRY_S
    (attempts not counted) and `blocked(job_id, why)` told, then `blocked(job_id, None)` once a file settles.
    Once `stop` is set the files not begun fail with `records.STOPPED`."""
    job_id = str(run.job_id)
    for done, path in enumerate(paths):
        if stop is not None and stop.is_set():
            records.fail_files(run.sessions, job_id, paths[done:], records.STOPPED)
            return
        owner, attempt = uuid.uuid4().hex, 0  # one owner: a lease it could not let go of is its own again
        try:
            while True:
                retry = index_file(run, path, attempt, owner)
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
            log.exception("index job %s: %s failed", job_id, path)
            with contextlib.suppress(Exception):
                records.fail_file(run.sessions, run.job_id, path, exc)
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


def _publish(run: TaskRun, paths: list[str], publish: Send) -> None:
    job_id, sent_with = str(run.job_id), run.ctx.message
    for sent, path in enumerate(paths):
        try:
            publish(job_id, path, sent_with)
        except Exception as exc:
            log.error("index job %s: the broker took %d of %d tasks: %s", job_id, sent, len(paths), exc)
            try:
                records.fail_files(run.sessions, job_id, paths[sent:], f"not queued: {type(exc).__name__}: {exc}")
            except Exception:
                log.exception("index job %s: cannot mark it failed", job_id)
            if isinstance(exc, PUBLISH_ERRORS):
                message = f"the broker did not take the tasks of job {job_id}: {exc}"
                raise QueueUnavailable(message, paths[sent:]) from exc
            raise


def dispatch_job(
    run: TaskRun,
    *,
    publish: Send | None = None,
    stop: threading.Event | None = None,
    blocked: Blocked | None = None,
) -> None:
    """Run a created job (`run.job_id`): one task per queued file, published, or run here one after the other
    without a publisher (until `stop` is set; `blocked`: see `run_here`). Raises `QueueUnavailable` (the job
    marked failed) when the broker takes no task."""
    paths = records.mark_running(run.sessions, str(run.job_id))
    with run.sessions() as session:  # lost from here on (a dead API, a broker that forgot them): sent again
        leases.dispatched(session, str(run.job_id), paths, run.ctx.queue_lease_s)
        session.commit()
    if publish is None:
        run_here(run, paths, stop, blocked)
    else:
        _publish(run, paths, publish)
