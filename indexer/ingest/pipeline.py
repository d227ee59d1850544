"""Offline indexing: media files -> clips -> per-frame global tokens -> token store + catalog.

Files are hashed (sha256) and decoded in worker processes while the encoder runs batches in the main
process (GPU with bf16 autocast when there is one). Content already indexed with the same model is
skipped; a file that fails is recorded with its error and never stops the run. The catalog row of a
video is written (pending, with its clip ids) before its tokens go into the store and marked indexed
after, so a run that is killed and started again finishes the job with no duplicate and no lost item.
"""

from __future__ import annotations

import csv
import functools
import json
import logging
import multiprocessing
import os
import threading
import time
from collections import deque
from collections.abc import Sequence
from concurrent.futures import Future, ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple, cast

import numpy as np
import torch
from sqlalchemy import CursorResult, select, update
from sqlalchemy.orm import Session, sessionmaker
from tqdm import tqdm

from indexer.catalog.content import indexed_videos_of
from indexer.catalog.tables import Clip, FileIdentity, Video, VideoStatus, new_video, recorded_identity
from indexer.cluster.corpus import Corpus
from indexer.ingest import commit, files
from indexer.store.datadir import PENDING_DIR, DataDir
from model import CAVMAESync, MediaError, Modality, ModelConfig, PreprocessConfig, load_clips
from model.features import Clip as MediaClip
from model.inference import clip_tokens
from model.media import NotRegularFileError, configured_ffmpeg, use_ffmpeg

log = logging.getLogger(__name__)

PARENT_POLL_S = 1.0  # how often a decode worker checks that the process it works for is alive
MEDIA_SUFFIXES = {
    ".mp4",
    ".m4v",
    ".mkv",
    ".webm",
    ".mov",
    ".avi",
    ".mpg",
    ".mpeg",
    ".ts",
    ".wav",
    ".flac",
    ".mp3",
    ".ogg",
    ".oga",
    ".opus",
    ".m4a",
    ".aac",
}


def list_media(target: str | os.PathLike[str]) -> list[Path]:
    """A file, a folder (walked for media files) or a manifest (.csv with a `path` column, .jsonl, .txt)."""
    target = Path(target)
    if target.is_dir():
        return sorted(p for p in target.rglob("*") if p.is_file() and p.suffix.lower() in MEDIA_SUFFIXES)
    if target.suffix == ".jsonl":
        rows = [json.loads(line)["path"] for line in target.read_text().splitlines() if line.strip()]
    elif target.suffix == ".csv":
        with target.open(newline="") as handle:
            rows = [row["path"] for row in csv.DictReader(handle)]
    elif target.suffix == ".txt":
        rows = [line.strip() for line in target.read_text().splitlines() if line.strip()]
    else:
        return [target]
    return [p if p.is_absolute() else target.parent / p for p in map(Path, rows)]


def content_hash(path: Path) -> str:
    """The sha256 of a regular file's bytes (`files.hash_with_identity`: a FIFO or device raises
    NotRegularFileError without blocking)."""
    return files.hash_with_identity(path)[0]


def repair_location(
    session: Session, sha: str, model_id: str, uri: str, identity: FileIdentity, name: str | None = None
) -> int:
    """Indexed videos of this content whose file is gone or no longer the indexed one now point at `uri` (the
    same content, found again; `name` shown, default its file's name). The caller commits; returns how many."""
    videos = session.scalars(indexed_videos_of(sha, model_id)).all()
    return _repoint(videos, _intact(videos, other_than=uri), uri, identity, name)


def relocate(session: Session, data: DataDir, path: str, sha: str, identity: FileIdentity, model_id: str) -> int:
    """Content indexed with this model, found (again) at `path`: when one of its videos has lost its file (gone,
    or something else at its path), the videos whose file is gone now point at where this file is indexed from
    (`files.source_of`: an upload is kept as a managed copy only then). The caller commits; returns how many."""
    videos = session.scalars(indexed_videos_of(sha, model_id)).all()
    intact = _intact(videos)  # each file checked once (a check may hash it)
    if len(intact) == len(videos):
        return 0
    source = files.source_of(path, sha, identity, data, MEDIA_SUFFIXES)
    return _repoint(videos, intact, source.uri, source.identity, source.name)


def _intact(videos: Sequence[Video], other_than: str | None = None) -> set[int]:
    """The ids of the videos whose file is still the indexed one (those at `other_than` not checked)."""
    return {v.id for v in videos if v.uri != other_than and files.is_intact(v.uri, v.sha256, recorded_identity(v))}


def _repoint(videos: Sequence[Video], intact: set[int], uri: str, identity: FileIdentity, name: str | None) -> int:
    repaired = 0
    for video in videos:
        if video.uri == uri:  # the same file, just hashed: its identity now
            video.file_size, video.file_mtime_ns = identity
            continue
        if video.id in intact:
            continue
        log.info("video %d: its file is no longer at %s; it is at %s now", video.id, video.uri, uri)
        video.uri, video.name = uri, name or Path(uri).name  # stored as shown (`Video._shown`)
        video.file_size, video.file_mtime_ns = identity
        repaired += 1
    return repaired


def model_id_of(checkpoint: str | os.PathLike[str]) -> str:
    """A model's identity: the first 16 hex digits of its checkpoint file's sha256."""
    stat = Path(checkpoint).stat()
    return _model_id(str(Path(checkpoint).resolve()), stat.st_size, stat.st_mtime_ns)


@functools.cache
def _model_id(path: str, size: int, mtime_ns: int) -> str:  # hashed once per file version, not per task
    return content_hash(Path(path))[:16]


class ClipTokens(NamedTuple):
    """Normalised per-frame tokens of n clips; zeros where a clip lacks the modality."""

    audio: np.ndarray  # (n, T, D) float32
    visual: np.ndarray  # (n, T, D) float32
    present: np.ndarray  # (n, 2) bool: audio, visual


@torch.no_grad()
def encode_clips(model: CAVMAESync, clips: list[MediaClip]) -> ClipTokens:
    """Clips -> normalised audio and visual tokens (n, T, D) and presence (n, 2); zeros where absent.

    Runs on the model's device, with bf16 autocast on CUDA (`model.inference`).
    """
    cfg = model.config
    out = {m: np.zeros((len(clips), cfg.frames_per_clip, cfg.embed_dim), np.float32) for m in ("audio", "visual")}
    present = np.array([[c.audio_segments is not None, c.frames is not None] for c in clips], dtype=bool)
    modalities: tuple[tuple[Modality, str], ...] = (("audio", "audio_segments"), ("visual", "frames"))
    for k, (modality, attr) in enumerate(modalities):
        rows = np.flatnonzero(present[:, k])
        if len(rows):
            batch = torch.stack([getattr(clips[r], attr) for r in rows])  # (n, T, ...)
            out[modality][rows] = clip_tokens(model, modality, batch).cpu().numpy()
    return ClipTokens(out["audio"], out["visual"], present)


@dataclass
class Decoded:
    path: Path
    sha256: str | None
    clips: list[MediaClip] = field(default_factory=list)
    error: str | None = None
    known: bool = False  # already indexed with this model: not decoded
    identity: FileIdentity | None = None  # the file as hashed


def start_decoder(ffmpeg: str | None, parent: int) -> None:
    """A decode worker's start: the ffmpeg its parent was configured with, and a watch that ends it once the
    parent is gone (a parent killed outright, SIGKILL or the OOM killer, never shuts its pool down: its
    workers would wait for work forever, each holding its memory)."""
    use_ffmpeg(ffmpeg)
    threading.Thread(target=_exit_without, args=(parent,), daemon=True, name="parent-watch").start()


def _exit_without(parent: int) -> None:
    """Poll the parent process id; exit this worker at once when it changes (the parent died: re-parented)."""
    while os.getppid() == parent:
        time.sleep(PARENT_POLL_S)
    os._exit(1)


def decode_file(
    path: Path, config: ModelConfig, prep: PreprocessConfig, known: frozenset[str] = frozenset()
) -> Decoded:
    """Worker-process side: hash and decode one file; errors come back as text, never raised."""
    try:
        sha, identity = files.hash_with_identity(path)
    except (OSError, NotRegularFileError) as exc:
        return Decoded(path, None, error=f"cannot read: {exc}")
    if sha in known:
        return Decoded(path, sha, known=True, identity=identity)
    return decode_hashed(path, sha, identity, config, prep)


def decode_hashed(path: Path, sha: str, identity: FileIdentity, config: ModelConfig, prep: PreprocessConfig) -> Decoded:
    """Decode a file whose content hash and identity are known; a media error comes back as text."""
    try:
        return Decoded(path, sha, load_clips(path, config, prep), identity=identity)
    except MediaError as exc:
        return Decoded(path, sha, error=str(exc), identity=identity)


@dataclass
class IndexSummary:
    total: int = 0
    indexed: int = 0
    skipped: int = 0
    failed: int = 0
    clips: int = 0
    errors: dict[str, str] = field(default_factory=dict)


class Indexer:
    """Index media with one model into one token store and catalog."""

    def __init__(
        self,
        model: CAVMAESync,
        model_id: str,
        store: Corpus,
        sessions: sessionmaker[Session],
        prep: PreprocessConfig | None = None,
        workers: int = 2,
        batch_clips: int = 32,
    ) -> None:
        self.model, self.model_id, self.store, self.sessions = model.eval(), model_id, store, sessions
        self.prep, self.workers, self.batch_clips = prep or PreprocessConfig(), max(1, workers), batch_clips

    # ------------------------------------------------------------------------------------ catalog
    def indexed_hashes(self) -> frozenset[str]:
        with self.sessions() as session:
            query = select(Video.sha256).where(Video.model_id == self.model_id, Video.status == VideoStatus.INDEXED)
            return frozenset(session.scalars(query).all())

    def recover(self) -> int:
        """Finish what a killed run left: pending videos whose clips are all in the store become indexed,
        the others are removed from the catalog (and indexed again by this run)."""
        return commit.recover(self.store, self.sessions, self.model_id, grace_s=0.0)

    # ------------------------------------------------------------------------------------ encoding
    def encode(self, clips: list[MediaClip]) -> ClipTokens:
        return encode_clips(self.model, clips)

    def _commit(self, batch: list[Decoded]) -> int:
        """Catalog rows (pending) -> tokens into the store -> indexed. Returns the clips added."""
        clips = [clip for item in batch for clip in item.clips]
        tokens = self.encode(clips)
        videos = [
            new_video(
                str(item.path.resolve()),
                item.sha256 or "",  # decoded items always have their hash
                self.model_id,
                [(c.start, c.duration, ",".join(c.modalities)) for c in item.clips],
                identity=item.identity,
            )
            for item in batch
        ]
        with self.sessions() as session:
            step = self.prep.frame_s(self.model.config.frames_per_clip)
            commit.commit_videos(session, self.store, self.model_id, videos, *tokens, frame_s=step)
        return len(clips)

    def _repair(self, item: Decoded) -> None:
        """Known content found at a new place: videos whose file is gone point here now."""
        if item.sha256 is None or item.identity is None:
            return
        with self.sessions() as session:
            if repair_location(session, item.sha256, self.model_id, str(item.path.resolve()), item.identity):
                session.commit()

    def _record_failure(self, item: Decoded) -> None:
        uri = str(item.path.resolve())
        with self.sessions() as session:
            known = select(Video).where(
                Video.uri == uri, Video.model_id == self.model_id, Video.status == VideoStatus.FAILED
            )
            if session.scalars(known).first() is not None:
                return
            commit.commit_failure(session, uri, item.sha256 or "", self.model_id, item.error or "")

    # ------------------------------------------------------------------------------------ the run
    def index(self, paths: list[Path], show_progress: bool = True) -> IndexSummary:
        summary = IndexSummary(total=len(paths))
        self.recover()
        config, known = self.model.config, self.indexed_hashes()
        batch: list[Decoded] = []
        pending: deque[Future[Decoded]] = deque()
        bar = tqdm(total=len(paths), disable=not show_progress, desc="index", unit="file")
        # spawn, not fork: a forked child of a process that has run torch ops can crash in its own
        # the spawned workers start with the ffmpeg this process was configured with, and end with this process
        spawn, start = multiprocessing.get_context("spawn"), (configured_ffmpeg(), os.getpid())
        with ProcessPoolExecutor(self.workers, mp_context=spawn, initializer=start_decoder, initargs=start) as pool:
            queue = deque(paths)
            while queue or pending:
                while queue and len(pending) < 2 * self.workers:  # bounded: decoded clips are big
                    pending.append(pool.submit(decode_file, queue.popleft(), config, self.prep, known))
                item: Decoded = pending.popleft().result()
                bar.update(1)
                if item.error is not None:
                    summary.failed += 1
                    summary.errors[str(item.path)] = item.error
                    self._record_failure(item)
                elif item.known or any(i.sha256 == item.sha256 for i in batch):
                    summary.skipped += 1
                    self._repair(item)
                else:
                    batch.append(item)
                if batch and (sum(len(i.clips) for i in batch) >= self.batch_clips or not (queue or pending)):
                    summary.clips += self._commit(batch)
                    summary.indexed += len(batch)
                    batch = []
                bar.set_postfix(indexed=summary.indexed, skipped=summary.skipped, failed=summary.failed)
        bar.close()
        return summary


def delete_videos(
    video_ids: list[int], store: Corpus, sessions: sessionmaker[Session], media_dir: Path | None = None
) -> int:
    """Mark videos deleted in the catalog and remove their clips from the live index; returns how many this
    call deleted. Each video is claimed by a conditional UPDATE (to deleted where it was not), so of concurrent
    deletes of one id exactly one counts it; its clips leave the store before the claim commits (a failure
    rolls the claim back). All of it under the status lock (`indexer.ingest.commit.status_lock`), ordered with the
    commits: a video whose commit holds it (its tokens being added) is deleted once that commit ends; a pending
    one claimed before keeps its claim, and its commit adds none of its tokens. A deletion is never undone.
    Then the managed copies (uploads, in `media_dir`) no other video names are deleted; files anywhere else are
    never touched."""
    with commit.status_lock(store), sessions() as session:
        claimed = []
        for video_id in dict.fromkeys(video_ids):
            result = session.execute(
                update(Video)
                .where(Video.id == video_id, Video.status != VideoStatus.DELETED)
                .values(status=VideoStatus.DELETED)
            )
            if cast(CursorResult[Any], result).rowcount:  # an UPDATE's result is a CursorResult
                claimed.append(video_id)
        clip_ids = list(session.scalars(select(Clip.id).where(Clip.video_id.in_(claimed))).all()) if claimed else []
        if clip_ids:
            store.delete(clip_ids)
        session.commit()
    if media_dir is not None and claimed:
        drop_unused_copies(sessions, claimed, media_dir)
    return len(claimed)


def drop_unused_copies(sessions: sessionmaker[Session], video_ids: list[int], media_dir: Path) -> int:
    """Delete the managed copies of these (deleted) videos that no video still in the catalog names (the same
    content indexed with another model shares its copy); returns how many were deleted."""
    with sessions() as session:
        uris = set(session.scalars(select(Video.uri).where(Video.id.in_(video_ids))).all())
        managed = [uri for uri in uris if files.is_managed(uri, media_dir)]
        if not managed:
            return 0
        used = select(Video.uri).where(Video.uri.in_(managed), Video.status != VideoStatus.DELETED)
        unused = sorted(set(managed) - set(session.scalars(used).all()))
    pending = media_dir.parent / PENDING_DIR  # an upload of the same content being indexed will name it
    unused = [uri for uri in unused if not any(pending.glob(f"{Path(uri).name[:64]}.*.npz"))]
    return files.remove_managed(unused, media_dir)
