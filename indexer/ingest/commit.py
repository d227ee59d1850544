"""The one way into the token store and the catalog: the offline `Indexer` (`cavsync index`) and the workers'
merge of pending encodings (`indexer.jobs.merge`) commit and recover through these functions.

A commit writes the catalog rows first (pending, which allots the clip ids), then the tokens, then marks the
rows indexed; a writer killed in between leaves pending rows that `recover` settles (indexed when all their
clips are live in the store, else removed, to be written again) after removing the partial versions and temp
segment files of the store. Rows of the same content left by an earlier failure or a dead writer are replaced; a
deleted one stays (its ids are never given to another row).

Deletes and commits are ordered by the status lock (`status_lock`, a file lock beside the store): a commit
holds it from reading which of its rows are still pending, through adding their tokens, to marking them
indexed; a delete (`indexer.ingest.pipeline.delete_videos`) from claiming its rows to taking their tokens out; the
settling of orphan rows while it settles. A video deleted while its commit runs therefore stays deleted: a
delete that came before the tokens leaves the row deleted and the commit adds none of its tokens; one that
came after waits for the commit, then deletes an indexed video. The mark indexed is conditional too
(`... WHERE status = 'pending'`): a row a writer that does not take the lock (an older version's) deleted
meanwhile keeps its state, and the commit takes its tokens out of the store again.
"""

from __future__ import annotations

import fcntl
import logging
import math
import os
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import Any, cast

import numpy as np
from sqlalchemy import CursorResult, select, update
from sqlalchemy.orm import Session, sessionmaker
from sqlalchemy.orm.attributes import set_committed_value

from indexer.catalog.tables import Video, VideoStatus
from indexer.cluster.corpus import Corpus
from model import PreprocessConfig

log = logging.getLogger(__name__)

ORPHAN_GRACE_S = 600.0  # a pending row younger than this may be a live writer's (a merge, `cavsync index`)
STATUS_LOCK = ".status.lock"  # in the store's root (`index/`), beside the store writers' `.lock`


@contextmanager
def status_lock(store: Corpus) -> Iterator[None]:
    """Hold the lock under which videos' states and their tokens in the store change together (see the module):
    a flock on `<store root>/.status.lock`, so every thread and process of the data dir (the API, `cavsync`,
    Celery workers; on other machines too where the data dir's file system shares flocks, as the store's writer
    lock already needs) takes turns. Taken before any catalog transaction of its holder and before the store's
    own writer lock, never inside them (a holder of either waiting for it could deadlock). A holder that has to
    wait logs it."""
    with open(store.root / STATUS_LOCK, "w") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            log.info("process %d waits for another commit or delete of videos to finish", os.getpid())
            fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


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
) -> list[int]:
    """Videos (new rows with their clips) and their tokens (n, T, D) in clip order into the catalog and the
    store: rows of the same content not indexed (an earlier failure, a dead writer's) removed, the rows
    committed pending; then, under the status lock, the tokens of those still pending (a delete may have
    claimed some meanwhile) added and those rows marked indexed. Each video is one track (its clips back to
    back, frame_s apart: the store's default, clip_s / T). A full disk (OSError) removes the pending rows again.
    Returns the ids of the videos indexed; every video's `status` is then the catalog's."""
    for video in videos:
        _drop_unindexed(session, video.sha256, model_id)
    session.add_all(videos)
    session.commit()
    with status_lock(store):
        pending = _still_pending(session, videos)
        if pending:
            _add_tokens(session, store, model_id, videos, pending, (audio, visual, present), frame_s)
        indexed = _mark_indexed(session, store, [v for v in videos if v.id in pending])
        _sync_status(session, videos)
        session.commit()
    deleted = len(videos) - len(indexed)
    if deleted:
        log.info(
            "%d of %d video(s) were deleted while being committed: their tokens are not kept", deleted, len(videos)
        )
    return indexed


def _still_pending(session: Session, videos: list[Video]) -> set[int]:
    """(Status lock held.) Which of these videos' rows are still pending (not claimed by a delete since)."""
    query = select(Video.id).where(Video.id.in_([v.id for v in videos]), Video.status == VideoStatus.PENDING)
    return set(session.scalars(query).all())


def _add_tokens(
    session: Session,
    store: Corpus,
    model_id: str,
    videos: list[Video],
    pending: set[int],
    tokens: tuple[np.ndarray, np.ndarray, np.ndarray],
    frame_s: float | None,
) -> None:
    """(Status lock held.) The clips of the videos whose ids are in `pending` into the store, taken from the
    tokens of all `videos` (audio, visual (n, T, D), present (n, 2), in clip order); a full disk (OSError)
    removes those rows again."""
    keep = np.array([v.id in pending for v in videos for _ in v.clips], dtype=bool)
    kept = [v for v in videos if v.id in pending]
    audio, visual, present = (np.asarray(t)[keep] for t in tokens)
    ids = np.array([c.id for v in kept for c in v.clips], dtype=np.int64)
    tracks = np.array([v.id for v in kept for _ in v.clips], dtype=np.int64)
    frames = audio.shape[1]
    step = PreprocessConfig().frame_s(frames) if frame_s is None else frame_s
    valid = np.concatenate([track_valid_frames([c.duration for c in v.clips], frames, step) for v in kept])
    try:
        store.add(ids, audio, visual, model_id, present, tracks=tracks, valid=valid, frame_s=step)
    except OSError:  # a full disk: the rows go too (nothing of them is in the store); a kill leaves them pending
        for video in kept:
            session.delete(video)
        session.commit()
        raise


def _mark_indexed(session: Session, store: Corpus, videos: list[Video]) -> list[int]:
    """(Status lock held, tokens added.) Each row that is still pending marked indexed (a conditional UPDATE);
    one that is not (a writer without the lock deleted it) has its clips taken out of the store again. The
    caller commits; returns the ids marked."""
    marked: list[Video] = []
    lost: list[Video] = []
    for video in videos:
        result = session.execute(
            update(Video)
            .where(Video.id == video.id, Video.status == VideoStatus.PENDING)
            .values(status=VideoStatus.INDEXED),
            execution_options={"synchronize_session": False},
        )
        (marked if cast(CursorResult[Any], result).rowcount else lost).append(video)
    if lost:
        log.warning("videos %s changed state while their tokens were added: their tokens go", [v.id for v in lost])
        store.delete([c.id for v in lost for c in v.clips])
    return [v.id for v in marked]


def _sync_status(session: Session, videos: list[Video]) -> None:
    """The videos' `status` attributes set to their rows' (as this transaction sees them)."""
    query = select(Video.id, Video.status).where(Video.id.in_([v.id for v in videos]))
    states = {video_id: status for video_id, status in session.execute(query)}
    for video in videos:
        set_committed_value(video, "status", states.get(video.id, video.status))


def commit_failure(session: Session, uri: str, sha: str, model_id: str, error: str, name: str | None = None) -> None:
    """A file that could not be indexed, recorded (failed, with its error) in place of any unindexed row of the
    same content; committed."""
    _drop_unindexed(session, sha, model_id)
    session.add(Video(uri=uri, name=name, sha256=sha, model_id=model_id, status=VideoStatus.FAILED, error=error))
    session.commit()


def _drop_unindexed(session: Session, sha: str, model_id: str) -> None:
    """Remove the pending and failed rows of this content (flushed). Deleted rows stay: a deleted video keeps its
    id and its clips' ids, so a new row never takes them (SQLite gives a new row the largest id plus one: the
    deleted newest row's again), as the store's dead rows of the deleted video still carry them (a track is a
    run of rows of one id: the re-indexed video's rows would join the dead ones, and never be searched)."""
    if not sha:
        return
    replaced = (VideoStatus.PENDING, VideoStatus.FAILED)
    stale = select(Video).where(Video.sha256 == sha, Video.model_id == model_id, Video.status.in_(replaced))
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
    """What a dead or failed writer left: the store's partial versions and temp segment files, then its pending
    rows
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
    tokens): indexed when all their clips are live in the store, else removed (their pending encoding or a retried task
    merges them again; a retried commit of the same content also replaces them at once). Under the status lock:
    no delete claims one of them meanwhile. Returns how many."""
    fixed = 0
    with status_lock(store), sessions() as session:  # no delete claims one of them meanwhile
        query = select(Video).where(Video.status == VideoStatus.PENDING, Video.model_id == model_id)
        stale = [v for v in session.scalars(query).all() if _older_than(v.updated_at, grace_s)]
        if not stale:
            return 0
        version = store.open(gpu=False, indexes=False)  # only now: it maps the whole corpus
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
