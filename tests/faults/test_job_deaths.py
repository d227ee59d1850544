"""Index jobs survive deaths (issue 13): the API SIGKILLed or stopped with SIGTERM (in-process jobs), a Celery
worker SIGKILLed (main process and child), Redis killed without persistence. Every job reaches done or failed
within 2 minutes of the fault, and after its retry every file is indexed exactly once (one indexed catalog row
per content, as many live clips in the store as indexed clips in the catalog)."""

from __future__ import annotations

import json
import signal
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import create_engine, func, select
from sqlalchemy.orm import Session

from indexer.catalog.tables import Clip, Video, VideoStatus

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

pytestmark = [pytest.mark.slow, pytest.mark.integration, pytest.mark.timeout(420)]
FAULT_DEADLINE_S = 120  # the bound: a final state within 2 minutes of the fault
FAST_LEASES = {"lease_s": 6, "reconcile_interval_s": 1, "queue_lease_s": 20}


def embed_dim(api: Api) -> int:
    return int(httpx.get(f"{api.base}/health", timeout=10).json()["model"]["embed_dim"])


def submit(api: Api, paths: list[Path]) -> str:
    response = httpx.post(f"{api.base}/index", json={"paths": [str(p) for p in paths]}, timeout=60)
    assert response.status_code == 202, response.text
    return str(response.json()["job_id"])


def until_settled(api: Api, job_id: str, count: int) -> dict[str, Any]:
    return dict(wait_for(lambda: (info := job(api, job_id)) and settled(info) >= count and info, 180, "progress"))


def until_final(api: Api, job_id: str, since: float) -> dict[str, Any]:
    left = FAULT_DEADLINE_S - (time.monotonic() - since)
    info = wait_for(lambda: (info := job(api, job_id))["state"] in FINAL and info, left, f"job {job_id} final")
    return dict(info)


def report(fault: str, info: dict[str, Any], since: float, load: SearchLoad | None = None) -> None:
    searches = {"searches": len(load.statuses), "failed": len(load.failed) + len(load.errors)} if load else {}
    states = {s: sum(f["state"] == s for f in info["files"]) for s in ("indexed", "skipped", "failed")}
    record(fault, final_after_s=round(time.monotonic() - since, 1), job=info["state"], files=states, **searches)


def assert_exactly_once(api: Api, catalog_url: str, media: list[Path]) -> None:
    """Re-submitting indexes what was not (skips the rest): one indexed row per content, no clip twice in the
    store, no pending row left."""
    again = until_final(api, submit(api, media), time.monotonic())
    assert (again["state"], again["done"] + again["skipped"], again["failed"]) == ("done", len(media), 0), again
    engine = create_engine(catalog_url)
    indexed = Video.status == VideoStatus.INDEXED
    with Session(engine) as session:
        rows = session.execute(select(Video.sha256, func.count()).where(indexed).group_by(Video.sha256)).all()
        clips = session.scalar(select(func.count()).select_from(Clip).join(Video).where(indexed))
        pending = session.scalar(select(func.count()).select_from(Video).where(Video.status == VideoStatus.PENDING))
    engine.dispose()
    assert len(rows) == len(media) and all(count == 1 for _, count in rows), rows
    assert pending == 0
    health = httpx.get(f"{api.base}/health", timeout=10).json()
    assert health["index"]["clips"] == clips, (health, clips)


def in_process_env(tmp_path: Path, media: list[Path]) -> tuple[dict[str, str], str]:
    url = f"sqlite:///{tmp_path / 'catalog.db'}"
    roots = json.dumps([str(media[0].parent)])
    return environment(tmp_path / "data", media_roots=roots, database_url=url, **FAST_LEASES), url


def test_api_sigkill_in_process(tmp_path: Path, media: list[Path], processes: list[Any]) -> None:
    env, url = in_process_env(tmp_path, media)
    api = Api(env, tmp_path / "api.log").start()
    processes.append(api)
    job_id = submit(api, media)
    until_settled(api, job_id, 2)
    api.signal(signal.SIGKILL)
    killed = time.monotonic()
    assert job(api.start(), job_id)["state"] == "running"  # what the field report saw, before the reconciler
    info = until_final(api, job_id, killed)
    report("API SIGKILL (in-process jobs)", info, killed)
    assert (info["state"], info["failed"]) == ("done", 0), info  # its lost files were run again
    assert_exactly_once(api, url, media)


def test_api_sigterm_in_process(tmp_path: Path, media: list[Path], processes: list[Any]) -> None:
    env, url = in_process_env(tmp_path, media)
    api = Api(env, tmp_path / "api.log").start()
    processes.append(api)
    job_id = submit(api, media)
    until_settled(api, job_id, 2)
    stopped = time.monotonic()
    api.signal(signal.SIGTERM)
    api.start()
    info = job(api, job_id)  # marked before the process went: final at once
    report("API SIGTERM (in-process jobs)", info, stopped)
    assert info["state"] == "failed" and time.monotonic() - stopped < FAULT_DEADLINE_S, info
    assert all("index it again" in e for e in info["errors"].values()) and info["failed"] > 0, info["errors"]
    assert_exactly_once(api, url, media)


def celery_stack(
    tmp_path: Path, media: list[Path], postgres: Postgres, redis_server: Redis, processes: list[Any]
) -> tuple[Api, Worker, str]:
    url = fresh_database(postgres)
    roots = json.dumps([str(media[0].parent)])
    env = environment(
        tmp_path / "data", media_roots=roots, database_url=url, broker_url=redis_server.url, **FAST_LEASES
    )
    worker = Worker(env, tmp_path / "worker.log").start()
    processes.append(worker)
    api = Api(env, tmp_path / "api.log").start()
    processes.append(api)
    return api, worker, url


@pytest.mark.parametrize(
    "fault",
    [
        "Celery worker SIGKILL (main and child)",  # its task stays unacknowledged in Redis
        "Redis killed without persistence",  # the queued tasks are gone with it; an empty Redis on the same port
    ],
)
def test_celery_stack_part_killed(
    tmp_path: Path, media: list[Path], postgres: Postgres, redis_server: Redis, processes: list[Any], fault: str
) -> None:
    api, worker, url = celery_stack(tmp_path, media, postgres, redis_server, processes)
    victim = worker if fault.startswith("Celery worker") else redis_server
    load = SearchLoad(api.base, embed_dim(api)).start()
    job_id = submit(api, media)
    until_settled(api, job_id, 2)
    victim.kill()
    killed = time.monotonic()
    victim.start()
    info = until_final(api, job_id, killed)
    load.stop()
    report(fault, info, killed, load)
    assert load.failed == [] and load.errors == []
    assert (info["state"], info["failed"]) == ("done", 0), info
    assert_exactly_once(api, url, media)
