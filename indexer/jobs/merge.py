"""Merging: finished tasks' pending shards (`pending/<sha256>.<model>.npz`) into the catalog and the token
store, one merger at a time (the broker's merge lock; in process the store's file lock), through the one commit
path (`indexer.commit`, which `cavsync index` uses too); after each merge what a dead merger left is recovered.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

import numpy as np
from sqlalchemy.orm import Session

from indexer import commit
from indexer.catalog import FileState, new_video
from indexer.jobs import records
from indexer.jobs.broker import merge_lock
from indexer.pipeline import model_id_of
from indexer.store import TokenStore

if TYPE_CHECKING:
    from indexer.jobs.task import Resources, TaskContext


class OwnShard(NamedTuple):
    """The file of the task that merges (its path in `ctx.job_id`) and its content hash (its shard's name)."""

    path: str
    sha: str


class Merged(NamedTuple):
    """What a merge did: how many shards it merged, and the outcome of the calling task's own file (its shard merged
    last and the file left for the task to settle, once its merge is over), None when not among them."""

    shards: int
    own: tuple[FileState, str | None] | None = None


def merge_shards(ctx: TaskContext, res: Resources, own: OwnShard | None = None) -> Merged:
    """Move every finished shard into the catalog and the token store.

    Run under the merge lock. A shard is removed only after its video is marked indexed (or failed);
    a shard whose content is already indexed is just removed, so merging twice changes nothing. The shard of
    the task's own file (`own`) goes last and that file is not settled here but returned: the task settles
    it once its merge (every other shard, the sweep) is over, so its job is never final while the task still
    merges shards of earlier, failed tasks (which a test or a user would then see left in `pending/`).
    """
    model_id = model_id_of(ctx.model_path)
    try:
        merged = _merge_all(ctx, res, model_id, own)
    except BaseException:  # under the merge lock: no other merger has rows or a version half-written
        commit.recover(TokenStore(ctx.data.index), res.sessions(ctx.database_url), model_id)
        raise
    if merged.shards:
        commit.recover(TokenStore(ctx.data.index), res.sessions(ctx.database_url), model_id)
    return merged


def _merge_all(ctx: TaskContext, res: Resources, model_id: str, own: OwnShard | None) -> Merged:
    shards = sorted(
        ctx.data.pending.glob(f"*.{model_id}.npz"), key=lambda s: (own is not None and s.name.startswith(own.sha), s)
    )
    count, outcome = 0, None
    for shard in shards:
        data = dict(np.load(shard))
        sha = shard.name.split(".", 1)[0]
        with res.sessions(ctx.database_url)() as session:
            if records.indexed(session, sha, model_id):
                state, error = FileState.SKIPPED, None
            else:
                state, error = _merge_one(session, TokenStore(ctx.data.index), data, sha, model_id)
            if _is_own(ctx, data, own):
                outcome = (state, error)
            else:
                records.settle(session, str(data["job"]) or None, str(data["path"]), state, error)
            session.commit()
        shard.unlink()
        count += 1
    return Merged(count, outcome)


def _is_own(ctx: TaskContext, data: dict[str, Any], own: OwnShard | None) -> bool:
    return (
        own is not None and ctx.job_id is not None and (str(data["job"]), str(data["path"])) == (ctx.job_id, own.path)
    )


def _merge_one(
    session: Session, store: TokenStore, data: dict[str, Any], sha: str, model_id: str
) -> tuple[FileState, str | None]:
    """One shard into the catalog and the store (`indexer.commit`); returns its file's state and error."""
    uri = str(data["uri"])
    name = str(data["name"]) if "name" in data else Path(uri).name  # shards written before names were
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


def merge_pending(ctx: TaskContext, res: Resources, own: OwnShard | None = None) -> Merged:
    """`merge_shards` under the broker's merge lock (one merger across machines, `indexer.jobs.broker`); in
    process (no broker) the store's file lock serialises."""
    with merge_lock(ctx.broker):
        return merge_shards(ctx, res, own)
