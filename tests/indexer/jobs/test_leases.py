"""Leases of job files (indexer.jobs.leases): a claim is exclusive, a duplicate delivery does nothing, an expired
lease is found and taken once for a new dispatch, and a file lost too often fails with what to do."""

from __future__ import annotations

import time

from sqlalchemy import update

from indexer.catalog.tables import IndexJob, JobFile, open_catalog
from indexer.jobs import leases
from indexer.jobs.records import create_job, mark_running


def test_claims_expiry_redispatch_and_giving_up(catalog_url: str) -> None:
    sessions = open_catalog(catalog_url)
    job_id = create_job(sessions, ["/m/a.mp4", "/m/b.mp4"])
    paths = mark_running(sessions, job_id)
    with sessions() as session:
        leases.dispatched(session, job_id, paths, wait_s=60)
        session.commit()
    assert leases.expired(sessions) == []  # sent a moment ago: not lost
    assert leases.claim(sessions, job_id, "/m/a.mp4", "task-1", lease_s=60)
    assert not leases.claim(sessions, job_id, "/m/a.mp4", "task-2", lease_s=60)  # a duplicate delivery
    assert leases.renew(sessions, job_id, "/m/a.mp4", "task-1", time.time() + 60)
    assert not leases.renew(sessions, job_id, "/m/a.mp4", "task-2", time.time() + 60)

    with sessions() as session:  # both leases run out: the worker and the queue lost them
        session.execute(update(JobFile).where(JobFile.job_id == job_id).values(lease_until=time.time() - 1))
        session.commit()
    lost = leases.expired(sessions)
    assert [(f.path, f.dispatches, f.claimed) for f in lost] == [("/m/a.mp4", 1, True), ("/m/b.mp4", 1, False)]
    leases.still_queued(sessions, lost, wait_s=60)  # a busy queue may still hold b's task: not lost yet
    assert [f.path for f in leases.expired(sessions)] == ["/m/a.mp4"]
    with sessions() as session:
        session.execute(update(JobFile).where(JobFile.job_id == job_id).values(lease_until=time.time() - 1))
        session.commit()
    assert leases.expired(sessions, skip_jobs=[job_id]) == []  # a job this process still holds
    assert leases.take_for_redispatch(sessions, lost[0], wait_s=60)
    assert not leases.take_for_redispatch(sessions, lost[0], wait_s=60)  # another reconciler was first
    assert leases.claim(sessions, job_id, "/m/a.mp4", "task-3", lease_s=60)  # the new delivery takes it

    leases.give_up(sessions, [lost[1]])
    with sessions() as session:
        job = session.get(IndexJob, job_id)
        assert job is not None and job.failed == 1 and "index it again" in job.errors["/m/b.mp4"]
    assert not leases.claim(sessions, job_id, "/m/b.mp4", "task-4", lease_s=60)  # settled: left alone


def test_a_job_never_started_is_found(catalog_url: str) -> None:
    sessions = open_catalog(catalog_url)
    held = create_job(sessions, ["/m/c.mp4"])
    leases.hold_jobs(sessions, [held], lease_s=60)
    orphan = create_job(sessions, ["/m/d.mp4"])  # its process died before it was held or dispatched
    assert leases.stale_queued_jobs(sessions) == [orphan]
