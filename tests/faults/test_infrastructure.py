"""The database stopped under load, and the disk filling up (issue 13): JSON 503 with Retry-After (never a
500, never a reset connection) and recovery without restart; a full disk answers 507 and leaves nothing
behind once space returns."""

from __future__ import annotations

import json
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from .conftest import Api, Postgres, SearchLoad, environment, fresh_database, job, record, wait_for
from .test_job_deaths import FAST_LEASES, submit, until_final

pytestmark = [pytest.mark.slow, pytest.mark.integration, pytest.mark.timeout(420)]


def test_database_down_answers_503_and_recovers(
    tmp_path: Path, media: list[Path], postgres: Postgres, processes: list[Any]
) -> None:
    url = fresh_database(postgres)
    roots = json.dumps([str(media[0].parent)])
    env = environment(tmp_path / "data", media_roots=roots, database_url=url, **FAST_LEASES)
    api = Api(env, tmp_path / "api.log").start()
    processes.append(api)
    first = until_final(api, submit(api, media[:2]), time.monotonic())
    assert first["state"] == "done", first
    dim = httpx.get(f"{api.base}/health", timeout=10).json()["model"]["embed_dim"]
    load = SearchLoad(api.base, dim).start()
    wait_for(lambda: len(load.statuses) > 20, 60, "searches before the fault")
    postgres.stop()
    try:
        down, stopped = len(load.statuses), time.monotonic()
        wait_for(  # an outage of 10 s, as in the field report, with 503s seen
            lambda: time.monotonic() - stopped >= 10 and any(s == 503 for s, _ in load.statuses[down:]),
            60,
            "10 s of outage with 503s",
        )
    finally:
        postgres.start()
    back = len(load.statuses)
    wait_for(lambda: any(s == 200 for s, _ in load.statuses[back:]), 60, "answers again without a restart")
    load.stop()
    during = load.statuses[down:back]
    record(
        "PostgreSQL stopped",
        searches=len(load.statuses),
        failed=len(load.failed),
        resets=len(load.errors),
        answered_503=sum(s == 503 for s, _ in during),
    )
    assert load.errors == [], load.errors[:5]  # no reset, no refused connection
    assert load.failed == [], load.failed[:5]  # no 500: 503 with Retry-After
    assert any(s == 503 and r for s, r in during)


@pytest.fixture()
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A 24 MB tmpfs of its own, mounted for the test (the test runs as root) and unmounted after."""
    mount = tmp_path / "disk"
    mount.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=24m", "tmpfs", str(mount)], check=True, timeout=30)
    yield mount
    subprocess.run(["umount", "-l", str(mount)], check=False, timeout=30)


def fill(disk: Path, leave_bytes: int) -> Path:
    """A file taking all the space of `disk` but `leave_bytes`."""
    filler = disk / "filler"
    with filler.open("wb") as handle:
        try:
            while True:
                handle.write(b"\0" * (1 << 20))
                handle.flush()
        except OSError:
            pass
    with filler.open("r+b") as handle:
        size = filler.stat().st_size
        handle.truncate(max(0, size - leave_bytes))
    return filler


def leftovers(data: Path) -> list[str]:
    """What a writer that failed could leave: staging versions, temp shards, pending shards, uploads."""
    patterns = ["index/versions/.v*", "index/shards/.*", "index/.CURRENT.*", "pending/*", "pending/.*", "uploads/*"]
    return sorted(str(p.relative_to(data)) for pattern in patterns for p in data.glob(pattern))


def test_disk_full(tmp_path: Path, media: list[Path], small_disk: Path, processes: list[Any]) -> None:
    data = small_disk / "data"
    roots = json.dumps([str(media[0].parent)])
    env = environment(data, media_roots=roots, database_url=f"sqlite:///{tmp_path / 'catalog.db'}", **FAST_LEASES)
    api = Api(env, tmp_path / "api.log").start()
    processes.append(api)
    assert until_final(api, submit(api, media[:2]), time.monotonic())["state"] == "done"
    dim = httpx.get(f"{api.base}/health", timeout=10).json()["model"]["embed_dim"]
    load = SearchLoad(api.base, dim).start()
    filler = fill(small_disk, 0)
    upload = httpx.post(f"{api.base}/index", files={"files": (media[2].name, media[2].read_bytes())}, timeout=60)
    assert upload.status_code == 507 and "disk is full" in upload.json()["detail"], upload.text
    filler.unlink()
    filler = fill(small_disk, 60_000)  # room for a shard or two, not for a version
    nearly = until_final(api, submit(api, media[2:5]), time.monotonic())
    filler.unlink()  # space returns
    after = until_final(api, submit(api, media[5:6]), time.monotonic())  # a publish: sweeps what failed
    load.stop()
    states = {f["state"] for f in nearly["files"]}
    record(
        "disk full",
        searches=len(load.statuses),
        failed=len(load.failed) + len(load.errors),
        upload_status=upload.status_code,
        job_states=[nearly["state"], after["state"]],
        file_states=sorted(f["state"] for f in nearly["files"]),
        errors=sorted(nearly["errors"].values())[:2],
        left_behind=leftovers(data),
    )
    assert nearly["state"] in {"done", "failed"} and states <= {"indexed", "failed"}, nearly
    assert after["state"] == "done", after
    assert leftovers(data) == [], leftovers(data)
    pending = httpx.get(f"{api.base}/videos", params={"status": "pending"}, timeout=10).json()
    assert pending["total"] == 0, pending
    assert load.failed == [] and load.errors == [], (load.failed[:5], load.errors[:5])
    again = until_final(api, submit(api, media[:6]), time.monotonic())  # what failed is indexed now, once
    assert (again["state"], again["failed"]) == ("done", 0), again
    assert job(api, again["id"])["done"] + again["skipped"] == 6
