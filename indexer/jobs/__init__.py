"""Index jobs, one subsystem: a job and its files as the catalog records them (`records`), the leases that make
every job end (`leases`), the broker behind one object (`broker`), dispatching a job (`dispatch`: published, or
run here), the body of one file's task (`task`), merging finished shards into the store (`merge`, through
`indexer.commit`), sweeping what dead writers left (`sweep`) and the supervisor that starts jobs, reconciles
lost files and stops jobs at shutdown (`supervisor`).

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
