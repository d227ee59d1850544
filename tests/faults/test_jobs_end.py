"""Jobs end on a full disk and after broker loss (issue 20), with the DEFAULT leases and reconcile interval:
the SQLite catalog in a data dir whose disk fills up mid-job (in-process queue): the job says so within 2
minutes (`blocked`, never a silent `running`) and is final within 2 minutes of space returning; Redis killed
and started again empty mid-job: its lost files are sent again within 60 s (the supervisor notices the broker
lost its data, not waiting for the 900-s queue lease) and the job is final within 2 minutes."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import create_engine, func, select
from sqlalchemy.orm import Session

from indexer.catalog.tables import JobFile

from .conftest import (
    FINAL,
    Api,
    Postgres,
    Redis,
    SearchLoad,
    Worker,
    environment,
    fresh_database,
    job,
    record,
    settled,
    wait_for,
)
from .test_infrastructure import fill, small_disk  # noqa: F401 - the fixture
from .test_job_deaths import FAULT_DEADLINE_S, assert_exactly_once, report, submit, until_final

pytestmark = [pytest.mark.slow, pytest.mark.integration, pytest.mark.timeout(600)]


def test_a_full_disk_under_the_sqlite_catalog_is_reported_and_the_job_ends(
    media: list[Path],
    small_disk: Path,  # noqa: F811 - the fixture
    tmp_path: Path,
    processes: list[Any],
) -> None:
    data = small_disk / "data"  # the default layout: the SQLite catalog in the data dir, jobs in process
    env = environment(data, media_roots=json.dumps([str(media[0].parent)]))
    api = Api(env, tmp_path / "api.log").start()
    processes.append(api)
    assert until_final(api, submit(api, media[:1]), time.monotonic())["state"] == "done"  # the model loaded
    job_id = submit(api, media[1:])
    wait_for(lambda: settled(job(api, job_id)) >= 1, 120, "a first file settled")
    filler = fill(small_disk, 0)
    full = time.monotonic()
    info = wait_for(lambda: (i := job(api, job_id))["blocked"] and i, 120, "the job saying the disk is full")
    reported_s = time.monotonic() - full
    assert info["state"] == "running" and "disk is full" in info["blocked"], info
    listed = httpx.get(f"{api.base}/jobs", timeout=10).json()["items"]
    assert [j["blocked"] for j in listed if j["id"] == job_id] == [info["blocked"]]
    time.sleep(30)  # an outage: the job waits, saying why
    during = job(api, job_id)
    assert during["state"] == "running" and during["blocked"], during
    filler.unlink()  # space returns
    back = time.monotonic()
    final = until_final(api, job_id, back)
    final_s = time.monotonic() - back
    record(
        "disk full under the SQLite catalog (defaults)",
        reported_after_s=round(reported_s, 1),
        blocked=info["blocked"],
        final_after_space_s=round(final_s, 1),
        job=final["state"],
        files={s: sum(f["state"] == s for f in final["files"]) for s in ("indexed", "skipped", "failed")},
    )
    assert final["blocked"] is None and final["state"] in FINAL, final
    assert (final["state"], final["failed"]) == ("done", 0), final
    assert reported_s < FAULT_DEADLINE_S and final_s < FAULT_DEADLINE_S


def _first_resent(catalog_url: str, job_id: str) -> bool:
    engine = create_engine(catalog_url)
    try:
        with Session(engine) as session:
            query = select(func.max(JobFile.dispatches)).where(JobFile.job_id == job_id)
            return (session.scalar(query) or 0) >= 2
    finally:
        engine.dispose()


def test_redis_restarted_empty_is_noticed_and_its_files_sent_again(
    tmp_path: Path, media: list[Path], postgres: Postgres, redis_server: Redis, processes: list[Any]
) -> None:
    url = fresh_database(postgres)
    roots = json.dumps([str(media[0].parent)])
    env = environment(tmp_path / "data", media_roots=roots, database_url=url, broker_url=redis_server.url)
    worker = Worker(env, tmp_path / "worker.log").start()
    processes.append(worker)
    api = Api(env, tmp_path / "api.log").start()
    processes.append(api)
    load = SearchLoad(api.base, int(httpx.get(f"{api.base}/health", timeout=10).json()["model"]["embed_dim"]))
    load.start()
    job_id = submit(api, media)
    wait_for(lambda: settled(job(api, job_id)) >= 2, 180, "two files settled")
    redis_server.kill()
    redis_server.start()  # empty: no persistence
    back = time.monotonic()
    wait_for(lambda: _first_resent(url, job_id), 60, "the lost files sent again")
    resent_s = time.monotonic() - back
    info = until_final(api, job_id, back)
    final_s = time.monotonic() - back
    load.stop()
    report("Redis restarted empty (default leases)", info, back, load)
    record("Redis restarted empty (default leases): re-sent", resent_after_s=round(resent_s, 1))
    assert load.failed == [] and load.errors == []
    assert (info["state"], info["failed"]) == ("done", 0), info
    assert resent_s < 60 and final_s < FAULT_DEADLINE_S
    assert_exactly_once(api, url, media)
