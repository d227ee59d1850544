"""Index jobs, one subsystem: a job and its files as the catalog records them, with the leases that make every
job end (`records`), the broker behind one object (`broker`), the supervisor that starts jobs (published, or
run here), reconciles lost files and stops jobs at shutdown (`supervisor`), the body of one file's task with
the merge of finished shards into the store through `indexer.ingest.commit` (`task`), and the sweep of what dead
writers left (`sweep`).

The records' functions are re-exported here: `from indexer import jobs; jobs.create_job(...)`.
"""

from indexer.jobs.records import (
    BROKER_LOST,
    DISK_FULL,
    STOPPED,
    QueueUnavailable,
    create_job,
    fail_files,
    fail_unstarted,
    indexed,
    mark_running,
    outcome,
    recount,
    set_file_state,
    settle,
)

__all__ = [
    "BROKER_LOST",
    "DISK_FULL",
    "STOPPED",
    "QueueUnavailable",
    "create_job",
    "fail_files",
    "fail_unstarted",
    "indexed",
    "mark_running",
    "outcome",
    "recount",
    "set_file_state",
    "settle",
]
