"""Merging finished tasks' pending encodings (`pending/<sha256>.<model>.npz`, one per file) into the catalog and
the token store: one merger at a time (the broker's merge lock; in process the store's file lock), through the one
commit path (`indexer.ingest.commit`, which `cavsync index` uses too); after each merge what a dead merger left is
recovered. A task merges after encoding its own file (`indexer.jobs.task`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
from sqlalchemy.orm import Session

from indexer.catalog.tables import FileState, new_video
from indexer.cluster.corpus import Corpus, open_corpus
from indexer.ingest import commit
from indexer.jobs import records
from indexer.jobs.broker import merge_lock
from indexer.jobs.context import TaskRun
from indexer.jobs.records import Outcome


class OwnEncoding(NamedTuple):
    """The file of the task that merges (its path in the run's job) and its content hash (its encoding's name)."""

    path: str
    sha: str


class Merged(NamedTuple):
    """What a merge did: how many encodings it merged, and the outcome of the calling task's own file (its
    encoding merged last and the file left for the task to settle, once its merge is over), None when not among
    them."""

    encodings: int
    own: Outcome | None = None


def merge_pending(run: TaskRun, own: OwnEncoding | None = None) -> Merged:
    """`merge_encodings` under the broker's merge lock (one merger across machines, `indexer.jobs.broker`); in
    process (no broker) the store's file lock serialises."""
    with merge_lock(run.ctx.broker):
        return merge_encodings(run, own)


def merge_encodings(run: TaskRun, own: OwnEncoding | None = None) -> Merged:
    """Move every finished encoding into the catalog and the token store.

    Run under the merge lock. An encoding is removed only after its video is marked indexed (or failed); one
    whose content is already indexed is just removed, so merging twice changes nothing. The encoding of the
    task's own file (`own`) goes last and that file is not settled here but returned: the task settles it once
    its merge (every other encoding, the sweep) is over, so its job is never final while the task still merges
    encodings of earlier, failed tasks (which a test or a user would then see left in `pending/`).
    """
    store = open_corpus(run.data)
    try:
        merged = _merge_all(run, store, own)
    except BaseException:  # under the merge lock: no other merger has rows or a version half-written
        commit.recover(store, run.sessions, run.model_id)
        raise
    if merged.encodings:
        commit.recover(store, run.sessions, run.model_id)
    return merged


def _merge_all(run: TaskRun, store: Corpus, own: OwnEncoding | None) -> Merged:
    found = sorted(
        run.data.pending.glob(f"*.{run.model_id}.npz"),
        key=lambda e: (own is not None and e.name.startswith(own.sha), e),
    )
    count, outcome = 0, None
    for encoding in found:
        data = dict(np.load(encoding))
        sha = encoding.name.split(".", 1)[0]
        is_own = _is_own(run, data, own)  # settled by its task once the merge is over
        with run.sessions() as session:
            if records.indexed(session, sha, run.model_id):
                state, error = FileState.SKIPPED, None
            else:
                state, error = _merge_one(session, store, data, sha, run.model_id)
            if is_own:
                outcome = (state, error)
            else:
                records.settle(session, str(data["job"]) or None, str(data["path"]), state, error)
            session.commit()
        encoding.unlink()
        count += 1
    return Merged(count, outcome)


def _is_own(run: TaskRun, data: dict[str, Any], own: OwnEncoding | None) -> bool:
    return (
        own is not None and run.job_id is not None and (str(data["job"]), str(data["path"])) == (run.job_id, own.path)
    )


def _merge_one(session: Session, store: Corpus, data: dict[str, Any], sha: str, model_id: str) -> Outcome:
    """One encoding into the catalog and the store (`indexer.ingest.commit`); returns its file's state and error."""
    uri = str(data["uri"])
    name = str(data["name"]) if "name" in data else Path(uri).name  # encodings written before names were
    identity = (int(data["identity"][0]), int(data["identity"][1])) if "identity" in data else None
    if "error" in data:
        error = str(data["error"])
        commit.commit_failure(session, uri, sha, model_id, error, name=name)
        return FileState.FAILED, error
    rows = zip(data["starts"], data["durations"], data["modalities"], strict=True)
    clips = [(float(s), float(d), str(m)) for s, d, m in rows]
    video = new_video(uri, sha, model_id, clips, name=name, identity=identity)
    commit.commit_videos(session, store, model_id, [video], data["audio"], data["visual"], data["present"])
    return FileState.INDEXED, None
