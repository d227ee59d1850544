"""Starting an index job in a test as the supervisor does: `create_job`, then `dispatch_job` with the job's run."""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Sequence

from indexer.jobs.broker import Send
from indexer.jobs.context import Resources, TaskContext, TaskRun
from indexer.jobs.records import create_job
from indexer.jobs.supervisor import dispatch_job


def job_run(ctx: TaskContext, res: Resources, job_id: str) -> TaskRun:
    """The run of job `job_id` in `ctx`'s data dir."""
    return TaskRun.open(dataclasses.replace(ctx, job_id=job_id), res)


def start_job(
    paths: Sequence[str | os.PathLike[str]], ctx: TaskContext, res: Resources, *, publish: Send | None = None
) -> str:
    """Record a job of these files and dispatch it (run here without `publish`); returns its id."""
    job_id = create_job(res.sessions(ctx.data.catalog_url), paths)
    dispatch_job(job_run(ctx, res, job_id), publish=publish)
    return job_id
