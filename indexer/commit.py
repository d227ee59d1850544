"""The one way into the token store and the catalog: the offline `Indexer` (`cavsync index`) and the workers'
merge (`indexer.jobs.task`) commit and recover through these functions.

A commit writes the catalog rows first (pending, which allots the clip ids), then the tokens, then marks the
rows indexed; a writer killed in between leaves pending rows that `recover` settles (indexed when all their
clips are live in the store, else removed, to be written again) after removing the partial versions and temp
shards of the store. Rows of the same content left by an earlier failure or a dead writer are replaced.
"""

from __future__ import annotations

import logging
import math
from datetime import UTC, datetime

import numpy as np
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from indexer.catalog import Video, VideoStatus
from indexer.sharding import Corpus
from model import PreprocessConfig

log = logging.getLogger(__name__)

ORPHAN_GRACE_S = 600.0  # a pending row younger than this may be a live writer's (a merge, `cavsync index`)


def commit_videos(
    session: Session,
    store: Corpus,
    model_id: str,
    videos: list[Video],
    audio: np.ndarray,
    visual: np.ndarray,
    present: np.ndarray,
    *,
    frame_s: float | None = None,
) -> None:
    """Videos (new rows with their clips) and their tokens (n, T, D) in clip order into the catalog and the
    store: rows of the same content not indexed (an earlier failure, a dead writer's) removed, the rows
    committed pending, the tokens added, the rows marked indexed. Each video is one track (its clips back to
    back, frame_s apart: the store's default, clip_s / T). A full disk (OSError) removes the rows again."""
    for video in videos:
        _drop_unindexed(session, video.sha256, model_id)
    session.add_all(videos)
    session.commit()
    ids = np.array([c.id for v in videos for c in v.clips], dtype=np.int64)
    tracks = np.array([v.id for v in videos for _ in v.clips], dtype=np.int64)
    frames = audio.shape[1]
    step = PreprocessConfig().frame_s(frames) if frame_s is None else frame_s
    valid = np.concatenate([track_valid_frames([c.duration for c in v.clips], frames, step) for v in videos])
    try:
        store.add(ids, audio, visual, model_id, present, tracks=tracks, valid=valid, frame_s=step)
    except OSError:  # a full disk: the rows go too (nothing of them is in the store); a kill leaves them pending
        for video in videos:
            session.delete(video)
        session.commit()
        raise
    for video in videos:
        video.status = VideoStatus.INDEXED
    session.commit()


def commit_failure(session: Session, uri: str, sha: str, model_id: str, error: str, name: str | None = None) -> None:
    """A file that could not be indexed, recorded (failed, with its error) in place of any unindexed row of the
    same content; committed."""
    _drop_unindexed(session, sha, model_id)
    session.add(Video(uri=uri, name=name, sha256=sha, model_id=model_id, status=VideoStatus.FAILED, error=error))
    session.commit()


def _drop_unindexed(session: Session, sha: str, model_id: str) -> None:
    if not sha:
        return
    stale = select(Video).where(Video.sha256 == sha, Video.model_id == model_id, Video.status != VideoStatus.INDEXED)
    for video in session.scalars(stale).all():
        session.delete(video)  # a writer that died half-way, or an earlier failure: this result replaces it
    session.flush()


def track_valid_frames(durations: list[float], frames: int, frame_s: float) -> np.ndarray:
    """Frames of each clip of a video that lie inside the media: all T for a video of one clip (kept as
    the official preprocessing pads it), else those of each clip starting before its real end."""
    if len(durations) <= 1:
        return np.full(len(durations), frames, dtype=np.int16)
    inside = [min(frames, max(1, math.ceil(d / frame_s - 1e-3))) for d in durations]
    return np.array(inside, dtype=np.int16)


def recover(store: Corpus, sessions: sessionmaker[Session], model_id: str, grace_s: float = ORPHAN_GRACE_S) -> int:
    """What a dead or failed writer left: the store's partial versions and temp shards, then its pending rows
    (`settle_orphan_rows`). Run by the one writer (the offline indexer, grace_s=0: the killed run it finishes
    was the only writer) or under the merge lock (after each merge). Returns the rows settled."""
    store.sweep_partial()
    return settle_orphan_rows(store, sessions, model_id, grace_s)


def _older_than(when: datetime | None, seconds: float) -> bool:
    if when is None or seconds <= 0:
        return True
    when = when if when.tzinfo is not None else when.replace(tzinfo=UTC)  # SQLite hands back naive UTC
    return (datetime.now(UTC) - when).total_seconds() > seconds


def settle_orphan_rows(
    store: Corpus, sessions: sessionmaker[Session], model_id: str, grace_s: float = ORPHAN_GRACE_S
) -> int:
    """Pending videos of `model_id` older than `grace_s` (a writer died between its catalog rows and its
    tokens): indexed when all their clips are live in the store, else removed (their shard or a retried task
    merges them again; a retried commit of the same content also replaces them at once). Returns how many."""
    fixed = 0
    with sessions() as session:
        query = select(Video).where(Video.status == VideoStatus.PENDING, Video.model_id == model_id)
        stale = [v for v in session.scalars(query).all() if _older_than(v.updated_at, grace_s)]
        if not stale:
            return 0
        version = store.open(gpu=False, indexes=False)  # only now: it maps every shard
        live = set(version.clip_ids[version.live].tolist()) if version is not None else set()
        for video in stale:
            if video.clips and all(c.id in live for c in video.clips):
                video.status = VideoStatus.INDEXED
            else:
                session.delete(video)
            fixed += 1
        session.commit()
    if fixed:
        log.info("settled %d catalog row(s) a dead writer left pending", fixed)
    return fixed
