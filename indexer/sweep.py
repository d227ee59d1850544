"""Sweeping what a dead or failed writer left in the data dir: partial token-store versions and temp shard
files (`TokenStore.sweep_partial`), temp files of pending shards, catalog rows of a merge that died half-way
(pending videos: indexed when their clips are all in the store, else removed, to be merged again), the
API's uploads once their job files are settled, managed copies of uploads (`indexer.files`) that no video and
no pending shard names, and the poster cache of videos deleted or unknown. Run at API start and after each merge,
under the merge lock (no other merger is writing then); temp files younger than `grace_s` may belong to a live
writer and stay.
"""

from __future__ import annotations

import logging
import shutil
import time
from datetime import UTC, datetime
from pathlib import Path

from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from indexer import files
from indexer.catalog import FileState, JobFile, Video, VideoStatus
from indexer.store import TokenStore

log = logging.getLogger(__name__)


def drop_upload(uploads: Path, path: str) -> None:
    """Delete a file of a settled job when it is one of the API's uploads (kept only to be indexed)."""
    file = Path(path)
    if file.parent.resolve() == uploads.resolve():
        file.unlink(missing_ok=True)


ORPHAN_GRACE_S = 600.0  # a pending row younger than this may be a live writer's (a merge, `cavsync index`)


def _older_than(when: datetime | None, seconds: float) -> bool:
    if when is None or seconds <= 0:
        return True
    when = when if when.tzinfo is not None else when.replace(tzinfo=UTC)  # SQLite hands back naive UTC
    return (datetime.now(UTC) - when).total_seconds() > seconds


def settle_orphan_rows(
    store: TokenStore, sessions: sessionmaker[Session], model_id: str, grace_s: float = ORPHAN_GRACE_S
) -> int:
    """Pending videos of `model_id` older than `grace_s` (a merge died between its catalog rows and its
    tokens): indexed when all their clips are live in the store, else removed (their shard or a retried task
    merges them again; a retried merge of the same content also replaces them at once). `Indexer.recover`
    passes grace_s=0: the killed run it finishes is the only writer. Returns how many rows it settled."""
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
        log.info("settled %d catalog row(s) a dead merge left pending", fixed)
    return fixed


def old_files(folder: Path, pattern: str, grace_s: float) -> list[Path]:
    """Files of `folder` matching `pattern` not modified for `grace_s` seconds."""
    if not folder.is_dir():
        return []
    now = time.time()
    found = []
    for path in folder.glob(pattern):
        try:
            if path.is_file() and now - path.stat().st_mtime > grace_s:
                found.append(path)
        except OSError:  # gone meanwhile
            continue
    return found


def unsettled_uploads(sessions: sessionmaker[Session], uploads: Path) -> set[str]:
    """Paths of uploads some job still has to index."""
    prefix = str(uploads.resolve()) + "/"
    query = select(JobFile.path).where(JobFile.state == FileState.QUEUED, JobFile.path.startswith(prefix))
    with sessions() as session:
        return set(session.scalars(query).all())


def unnamed_copies(sessions: sessionmaker[Session], data_dir: Path, grace_s: float) -> list[Path]:
    """Managed copies (and their temp files) older than `grace_s` that no video still in the catalog and no
    pending shard names: a merge that failed, or a video deleted by a process that did not remove its copy."""
    media = files.managed_dir(data_dir)
    old = old_files(media, "*", grace_s)
    if not old:
        return []
    prefix = str(media.resolve()) + "/"
    query = select(Video.uri).where(Video.uri.startswith(prefix), Video.status != VideoStatus.DELETED)
    with sessions() as session:
        named = set(session.scalars(query).all())
    pending = {p.name.split(".", 1)[0] for p in old_files(data_dir / "pending", "*.npz", -1.0)}
    return [p for p in old if str(p.resolve()) not in named and p.name.split(".", 1)[0] not in pending]


POSTERS_DIR = "posters"  # under the data dir: the API's poster cache, a folder per video id


def stale_poster_folders(sessions: sessionmaker[Session], data_dir: Path) -> list[Path]:
    """Poster cache folders of videos deleted, or no longer in the catalog."""
    root = data_dir / POSTERS_DIR
    if not root.is_dir():
        return []
    folders = {int(p.name): p for p in root.iterdir() if p.is_dir() and p.name.isdigit()}
    if not folders:
        return []
    query = select(Video.id).where(Video.id.in_(list(folders)), Video.status != VideoStatus.DELETED)
    with sessions() as session:
        alive = set(session.scalars(query).all())
    return [folder for video_id, folder in folders.items() if video_id not in alive]


def after_merge(store: TokenStore, sessions: sessionmaker[Session], model_id: str) -> None:
    """After a merge published (or failed to): partial versions and temp shards, then orphan rows."""
    store.sweep_partial()
    settle_orphan_rows(store, sessions, model_id)


def sweep_data_dir(data_dir: Path, sessions: sessionmaker[Session], model_id: str, grace_s: float) -> int:
    """Everything a dead writer can leave in `data_dir` (see the module); returns the files deleted."""
    store = TokenStore(data_dir / "index")
    after_merge(store, sessions, model_id)
    stale = old_files(data_dir / "pending", ".*.tmp.npz", grace_s)
    uploads = data_dir / "uploads"
    wanted = unsettled_uploads(sessions, uploads)
    stale += [p for p in old_files(uploads, "*", grace_s) if str(p.resolve()) not in wanted]
    stale += unnamed_copies(sessions, data_dir, grace_s)
    for path in stale:
        path.unlink(missing_ok=True)
    for folder in stale_poster_folders(sessions, data_dir):
        shutil.rmtree(folder, ignore_errors=True)
    if stale:
        log.info("deleted %d leftover file(s) of dead writers and settled uploads", len(stale))
    return len(stale)
