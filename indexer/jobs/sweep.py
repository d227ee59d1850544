"""Sweeping what a dead or failed writer left in the data dir: partial token-store versions, temp segment files and
catalog rows of a merge that died half-way (`indexer.ingest.commit.recover`), temp files of pending encodings, the
API's uploads whose job files are settled, managed copies of uploads (`indexer.ingest.files`) that no video and no
pending encoding names, and the poster cache of videos deleted or unknown; and decode folders in $TMPDIR of processes
that are gone (`dead_decode_folders`). The supervisor runs it at start, under the merge lock (no other merger is writing
then), and the decode folders every reconcile round; temp files younger than `grace_s` may belong to a live writer
and stay.
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
import time
from pathlib import Path

from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from indexer.catalog.tables import FileState, JobFile, Video, VideoStatus
from indexer.cluster.corpus import open_corpus
from indexer.ingest import commit
from indexer.store.datadir import DataDir
from model.media import DECODE_PREFIX

log = logging.getLogger(__name__)


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


def unnamed_copies(sessions: sessionmaker[Session], data: DataDir, grace_s: float) -> list[Path]:
    """Managed copies (and their temp files) older than `grace_s` that no video still in the catalog and no
    pending encoding names: a merge that failed, or a video deleted by a process that did not remove its copy."""
    old = old_files(data.media, "*", grace_s)
    if not old:
        return []
    prefix = str(data.media.resolve()) + "/"
    query = select(Video.uri).where(Video.uri.startswith(prefix), Video.status != VideoStatus.DELETED)
    with sessions() as session:
        named = set(session.scalars(query).all())
    pending = {p.name.split(".", 1)[0] for p in old_files(data.pending, "*.npz", -1.0)}
    return [p for p in old if str(p.resolve()) not in named and p.name.split(".", 1)[0] not in pending]


def stale_poster_folders(sessions: sessionmaker[Session], data: DataDir) -> list[Path]:
    """Poster cache folders of videos deleted, or no longer in the catalog."""
    root = data.posters
    if not root.is_dir():
        return []
    folders = {int(p.name): p for p in root.iterdir() if p.is_dir() and p.name.isdigit()}
    if not folders:
        return []
    query = select(Video.id).where(Video.id.in_(list(folders)), Video.status != VideoStatus.DELETED)
    with sessions() as session:
        alive = set(session.scalars(query).all())
    return [folder for video_id, folder in folders.items() if video_id not in alive]


def sweep_data_dir(data: DataDir, sessions: sessionmaker[Session], model_id: str, grace_s: float) -> int:
    """Everything a dead writer can leave in the data dir (see the module); returns the files deleted."""
    commit.recover(open_corpus(data), sessions, model_id)
    stale = old_files(data.pending, ".*.tmp.npz", grace_s)
    wanted = unsettled_uploads(sessions, data.uploads)
    stale += [p for p in old_files(data.uploads, "*", grace_s) if str(p.resolve()) not in wanted]
    stale += unnamed_copies(sessions, data, grace_s)
    for path in stale:
        path.unlink(missing_ok=True)
    for folder in stale_poster_folders(sessions, data):
        shutil.rmtree(folder, ignore_errors=True)
    if stale:
        log.info("deleted %d leftover file(s) of dead writers and settled uploads", len(stale))
    return len(stale)


LEGACY_DECODE_GRACE_S = 6 * 3600.0  # a decode folder that names no process (older releases) goes after this


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process: alive
        return True
    return True


def dead_decode_folders(tmp: Path | None = None, legacy_grace_s: float = LEGACY_DECODE_GRACE_S) -> list[Path]:
    """Decode folders (`cavsync-<pid>-*` in $TMPDIR, `model.media`) of processes that are gone (a killed worker
    or API), and folders of the older `cavsync-<random>` form untouched for `legacy_grace_s`; removed, returned.
    Another process's folder is kept while its pid lives (a reused pid keeps it until that one exits too)."""
    root = Path(tempfile.gettempdir()) if tmp is None else tmp
    gone: list[Path] = []
    for folder in root.glob(f"{DECODE_PREFIX}*"):
        try:
            if not folder.is_dir() or folder.is_symlink() or folder.name.startswith(f"{DECODE_PREFIX}upload-"):
                continue
            pid = folder.name[len(DECODE_PREFIX) :].split("-", 1)[0]
            if pid.isdigit() and "-" in folder.name[len(DECODE_PREFIX) :]:
                dead = int(pid) != os.getpid() and not _pid_alive(int(pid))
            else:
                dead = time.time() - folder.stat().st_mtime > legacy_grace_s
        except OSError:  # gone meanwhile
            continue
        if dead:
            shutil.rmtree(folder, ignore_errors=True)
            gone.append(folder)
    if gone:
        log.info("deleted %d decode folder(s) of processes that are gone", len(gone))
    return gone
