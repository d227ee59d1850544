"""The catalog's read side for the service: every query the HTTP layer makes of videos and clips, here and only
here (the routes hold no SQL; import-linter forbids `service.routes` to import SQLAlchemy).

Each function takes the catalog's `sessionmaker` (`indexer.catalog.tables.open_catalog`), runs its statements in one
short session of its own, and returns plain frozen values, never ORM rows: nothing lazy-loads after the session
closed, and callers cannot write through what they read. "Not there" is `None` (or absent from a mapping); what
that means for a request (404, and its message) is the caller's to say. Writes of the index path (new videos,
repairs, deletions) stay with the indexer (`indexer.ingest.commit`, `indexer.ingest.pipeline`,
`indexer.jobs.task`); jobs' tables with the jobs code.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import TypeAlias

from sqlalchemy import func, select, update
from sqlalchemy.orm import Session, sessionmaker

from indexer.catalog.tables import (
    Clip,
    FileIdentity,
    Video,
    VideoStatus,
    display_name,
    original_name,
    recorded_identity,
)

Sessions: TypeAlias = sessionmaker[Session]  # the catalog's session factory (`indexer.catalog.tables.open_catalog`)


@dataclass(frozen=True)
class ClipRow:
    """One clip of a video as the catalog holds it (seconds; `modalities` e.g. "audio,visual")."""

    id: int  # the token store's clip id
    start: float
    duration: float
    modalities: str


@dataclass(frozen=True)
class VideoRow:
    """One video as the catalog holds it (the API's `VideoInfo` is built from it)."""

    id: int
    uri: str
    name: str | None  # as recorded; None for rows indexed before names were (see `display_name`)
    original_name: str  # exactly as sent or found, for export (`indexer.catalog.tables.original_name`)
    status: VideoStatus
    model_id: str
    duration: float | None
    modalities: str
    error: str | None
    created_at: datetime
    updated_at: datetime


@dataclass(frozen=True)
class VideoDetailRow(VideoRow):
    """A video with its clips, by start time."""

    clips: tuple[ClipRow, ...]


@dataclass(frozen=True)
class VideoFile:
    """What the catalog records of a video's file (to open it as the one indexed:
    `indexer.ingest.files.open_indexed`)."""

    video_id: int
    status: VideoStatus
    uri: str
    name: str  # shown: the name it was sent with (an upload), else its file's name
    sha256: str
    identity: FileIdentity | None  # None: indexed before it was recorded (checked by hash once)
    duration: float | None  # seconds, as indexed
    has_pictures: bool  # a visual track was indexed


@dataclass(frozen=True)
class VideoClips:
    """A video's state and its clips' (id, start, duration), by start time."""

    status: VideoStatus
    clips: tuple[tuple[int, float, float], ...]


@dataclass(frozen=True)
class VideoRef:
    """What a search answer needs of a video."""

    id: int
    uri: str
    duration: float | None
    name: str  # shown: the name an upload was sent with, else the file's name


def _row(video: Video) -> VideoRow:
    return VideoRow(
        id=video.id,
        uri=video.uri,
        name=video.name,
        original_name=original_name(video),
        status=video.status,
        model_id=video.model_id,
        duration=video.duration,
        modalities=video.modalities,
        error=video.error,
        created_at=video.created_at,
        updated_at=video.updated_at,
    )


def count_videos(sessions: Sessions, status: VideoStatus | None = None) -> int:
    """Videos of the catalog (in `status`, when given)."""
    where = [Video.status == status] if status is not None else []
    with sessions() as session:
        return session.scalar(select(func.count()).select_from(Video).where(*where)) or 0


def video_page(
    sessions: Sessions, limit: int, offset: int, status: VideoStatus | None = None
) -> tuple[int, list[VideoRow]]:
    """(videos in all, `limit` of them from `offset` by id), `status` ones only when given; one session."""
    where = [Video.status == status] if status is not None else []
    with sessions() as session:
        total = session.scalar(select(func.count()).select_from(Video).where(*where)) or 0
        rows = session.scalars(select(Video).where(*where).order_by(Video.id).limit(limit).offset(offset)).all()
        return total, [_row(v) for v in rows]


def video_detail(sessions: Sessions, video_id: int) -> VideoDetailRow | None:
    """One video in any state, with its clips; None when unknown."""
    with sessions() as session:
        video = session.get(Video, video_id)
        if video is None:
            return None
        clips = tuple(ClipRow(c.id, c.start, c.duration, c.modalities) for c in video.clips)
        return VideoDetailRow(**vars(_row(video)), clips=clips)


def video_status(sessions: Sessions, video_id: int) -> VideoStatus | None:
    """A video's state; None when unknown."""
    with sessions() as session:
        return session.scalar(select(Video.status).where(Video.id == video_id))


def video_clips(sessions: Sessions, video_id: int) -> VideoClips | None:
    """A video's state and its clips (any state); None when unknown."""
    with sessions() as session:
        video = session.get(Video, video_id)
        if video is None:
            return None
        return VideoClips(video.status, tuple((c.id, c.start, c.duration) for c in video.clips))


def video_file(sessions: Sessions, video_id: int) -> VideoFile | None:
    """The catalog's record of a video's file (any state); None when unknown."""
    with sessions() as session:
        video = session.get(Video, video_id)
        if video is None:
            return None
        recorded = recorded_identity(video)
        return VideoFile(
            video_id=video.id,
            status=video.status,
            uri=video.uri,
            name=display_name(video.name, video.uri),
            sha256=video.sha256,
            identity=recorded,
            duration=video.duration,
            has_pictures="visual" in video.modalities.split(","),
        )


def record_file_identity(sessions: Sessions, video_id: int, identity: FileIdentity) -> None:
    """Record the identity (size, mtime) a video's file was found with, its content checked by hash: the next
    open compares it instead of hashing again."""
    with sessions() as session:
        session.execute(
            update(Video).where(Video.id == video_id).values(file_size=identity.size, file_mtime_ns=identity.mtime_ns)
        )
        session.commit()


def indexed_videos_of_clips(sessions: Sessions, clip_ids: Sequence[int]) -> dict[int, VideoRef]:
    """clip id -> its video, for the given clips whose video is indexed (one query); the retrieval
    core's hits name a track by its first clip, and pending, failed or deleted videos drop out here."""
    query = (
        select(Clip.id, Video.id, Video.uri, Video.duration, Video.name)
        .join(Video, Clip.video_id == Video.id)
        .where(Clip.id.in_(list(clip_ids)), Video.status == VideoStatus.INDEXED)
    )
    with sessions() as session:
        rows = session.execute(query).all()
    return {clip: VideoRef(video, uri, duration, display_name(name, uri)) for clip, video, uri, duration, name in rows}
